//! Header and body parsing fuzzed with proptest: no input panics, and a forged or
//! altered signature is never accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use jetrun_ingest::api::parse_cloudevent;
use jetrun_ingest::auth::{ApiTokens, WebhookSecrets, parse_signature, sign};
use jetrun_ingest::github::{Verdict, inspect};
use jetrun_ingest::{Config, ProblemKind};
use proptest::prelude::*;

fn headers(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_bytes(v)) {
            h.append(k, v);
        }
    }
    h
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("x-hub-signature-256".to_string()),
        Just("x-github-event".to_string()),
        Just("x-github-delivery".to_string()),
        Just("x-github-hook-id".to_string()),
        "[a-z-]{1,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn signature_header_parsing_never_panics(h in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = parse_signature(&h);
        let s = WebhookSecrets::parse("a,b");
        let _ = s.verify(Some(&h), b"{}");
    }

    #[test]
    fn inspect_never_panics_and_never_accepts_a_bad_signature(
        pairs in proptest::collection::vec((header_name(), proptest::collection::vec(any::<u8>(), 0..80)), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        sign_it in any::<bool>(),
    ) {
        let secrets = WebhookSecrets::parse("s3cret");
        let mut h = headers(&pairs);
        if sign_it {
            h.insert("x-hub-signature-256", HeaderValue::from_str(&sign(b"s3cret", &body)).unwrap());
        }
        let signed = h.get("x-hub-signature-256").map(|v| v.as_bytes().to_vec()) == Some(sign(b"s3cret", &body).into_bytes());
        match inspect(&Config::default(), &secrets, &h, Bytes::from(body.clone())) {
            Ok(v) => {
                prop_assert!(signed, "accepted without a valid signature");
                if let Verdict::Publish(d) = v {
                    prop_assert_eq!(&d.body[..], &body[..]);
                }
            }
            Err(p) => {
                if !signed {
                    prop_assert!(matches!(p.kind, ProblemKind::MissingSignature | ProblemKind::MalformedSignature | ProblemKind::InvalidSignature));
                }
            }
        }
    }

    #[test]
    fn json_bodies_behind_a_valid_signature_never_panic(body in "\\PC{0,300}") {
        let secrets = WebhookSecrets::parse("s3cret");
        let mut h = HeaderMap::new();
        h.insert("x-github-event", HeaderValue::from_static("issues"));
        h.insert("x-github-delivery", HeaderValue::from_static("d-1"));
        h.insert("x-hub-signature-256", HeaderValue::from_str(&sign(b"s3cret", body.as_bytes())).unwrap());
        if let Err(p) = inspect(&Config::default(), &secrets, &h, Bytes::from(body.clone())) {
            prop_assert!(matches!(p.kind, ProblemKind::InvalidJson | ProblemKind::ValidationFailed));
        }
    }

    #[test]
    fn cloudevent_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_cloudevent(&body);
    }

    #[test]
    fn structured_cloudevents_with_arbitrary_attributes_never_panic(
        attrs in proptest::collection::btree_map("[a-z_]{1,24}", prop_oneof![
            any::<String>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ], 0..10),
    ) {
        let mut v = serde_json::json!({"specversion": "1.0", "id": "x", "type": "t", "source": "s", "data": {}});
        for (k, x) in attrs {
            v[k] = x;
        }
        let _ = parse_cloudevent(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn token_lists_never_panic(list in "\\PC{0,200}", token in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(t) = ApiTokens::parse(&list) {
            let _ = t.tenant_of(&token);
        }
    }
}

fn schema_accepts(body: &[u8]) -> bool {
    jetrun_core::schema::validate(jetrun_core::schema::types::GITHUB_WEBHOOK, body).is_ok()
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i32>().prop_map(serde_json::Value::from),
        "[a-z/]{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("action".to_string()),
                    Just("repository".to_string()),
                    Just("sender".to_string()),
                    Just("installation".to_string()),
                    Just("organization".to_string()),
                    Just("full_name".to_string()),
                    Just("login".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// The one-pass payload check accepts exactly what the github-webhook schema accepts.
    #[test]
    fn payload_peek_agrees_with_the_schema(v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap();
        let peeked = jetrun_ingest::github::peek(&body);
        prop_assert_eq!(peeked.is_ok(), schema_accepts(&body), "{}", v);
        if let Ok(p) = peeked {
            prop_assert_eq!(p.action.as_deref(), v.get("action").and_then(|a| a.as_str()));
            prop_assert_eq!(p.repository_full_name.as_deref(), v.pointer("/repository/full_name").and_then(|a| a.as_str()));
        }
    }

    #[test]
    fn payload_peek_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = jetrun_ingest::github::peek(&body);
    }
}

#[test]
fn payload_peek_agrees_with_the_schema_on_every_fixture() {
    for dir in std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/github-webhooks"
    ))
    .unwrap()
    {
        let dir = dir.unwrap();
        if !dir.file_type().unwrap().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let body = std::fs::read(f.unwrap().path()).unwrap();
            assert!(jetrun_ingest::github::peek(&body).is_ok());
            assert!(schema_accepts(&body));
        }
    }
    for bad in [
        &b"[]"[..],
        b"null",
        b"{\"action\":null}",
        b"{\"repository\":[]}",
        b"{\"sender\":null}",
        b"{} x",
        b"{\"a\":1,}",
    ] {
        assert_eq!(
            jetrun_ingest::github::peek(bad).is_ok(),
            schema_accepts(bad),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
