#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Scale requests are checked by the consumer host before the autoscaler's handler runs
//! (`jetrun_autoscale::SCALE_REQUEST`): a request body published without a CloudEvent
//! envelope or with a foreign or unknown type is dead-lettered as `invalid_event`, a body
//! that is not JSON or not a scale request as `schema`, each with the host's reason, and
//! none is applied.

use std::time::Duration;

use bytes::Bytes;
use jetrun_autoscale::config::LeaderConfig;
use jetrun_autoscale::{Autoscaler, Config, declare};
use jetrun_core::scale::{BackendKind, ScaleRequest, ScaleSpec, Strategy};
use jetrun_core::schema::types;
use jetrun_core::{Envelope, Names};
use jetrun_harness::NatsServer;
use jetrun_nats::Topology;
use jetrun_nats::events::to_header_map;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn scale_requests_with_a_missing_or_foreign_ce_type_or_an_invalid_body_are_dead_lettered_by_the_host() {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let kv = js.get_key_value(names.bucket_scale()).await.unwrap();
    let mut s = ScaleSpec::new("w", "default", 0, 6, 10);
    s.backend = BackendKind::Signal;
    s.strategy = Strategy::Infra;
    declare(&kv, &s).await.unwrap();

    let cfg = Config {
        leader: LeaderConfig {
            ttl: Duration::from_secs(2),
            renew_every: Duration::from_millis(250),
            safety_margin: Duration::from_millis(500),
            ..LeaderConfig::default()
        },
        ..Config::default()
    };
    let scaler = Autoscaler::with_parts(&js, &names, "a", cfg).await.unwrap();
    let stop = CancellationToken::new();
    let st = stop.clone();
    let h = tokio::spawn(async move { scaler.run(st).await.unwrap() });

    let burst = |replicas: u32| {
        Bytes::from(
            serde_json::to_vec(&ScaleRequest::Burst {
                service: "w".into(),
                replicas,
                for_seconds: 600,
            })
            .unwrap(),
        )
    };
    let subject = names.scale_request("w");
    // 1. No headers at all.
    js.publish(subject.clone(), burst(2))
        .await
        .unwrap()
        .await
        .unwrap();
    // 2. A foreign type (a signal) with a request body.
    let foreign = to_header_map(&Envelope::new(types::SCALE_SIGNAL, "/attacker"));
    js.publish_with_headers(subject.clone(), foreign, burst(3))
        .await
        .unwrap()
        .await
        .unwrap();
    // 3. An unknown scale type.
    let unknown = to_header_map(&Envelope::new("dev.jetrun.scale.bogus.v1", "/attacker"));
    js.publish_with_headers(subject.clone(), unknown, burst(4))
        .await
        .unwrap()
        .await
        .unwrap();
    // 4. The right type, a body of another type.
    let right = to_header_map(&Envelope::new(types::SCALE_REQUESTED, "/attacker"));
    let job = Bytes::from_static(br#"{"queue":"default","image":"busybox","service":"w","action":"burst"}"#);
    js.publish_with_headers(subject.clone(), right, job.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    // 5. The right type, a body that is not JSON. Its subject names another service: had
    // the handler seen it, it would have refused it for that, with its own reason.
    let right = to_header_map(&Envelope::new(types::SCALE_REQUESTED, "/attacker"));
    let other = names.scale_request("other");
    js.publish_with_headers(other.clone(), right, Bytes::from_static(b"{\"service\": \"w\""))
        .await
        .unwrap()
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let list = jetrun_nats::dlq::list(&js, &names, 0, 10).await.unwrap();
        if list.len() >= 5 {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 5 dead-lettered",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entries.len(), 5);
    // Each by its body: (kind, what the host's reason says).
    let want: [(Bytes, &str, String); 5] = [
        (
            burst(2),
            "invalid_event",
            format!("no valid CloudEvent headers on {subject}"),
        ),
        (
            burst(3),
            "invalid_event",
            format!(
                "ce-type \"{}\" on {subject} is not {}",
                types::SCALE_SIGNAL,
                types::SCALE_REQUESTED
            ),
        ),
        (
            burst(4),
            "invalid_event",
            format!(
                "ce-type \"dev.jetrun.scale.bogus.v1\" on {subject} is not {}",
                types::SCALE_REQUESTED
            ),
        ),
        (
            job,
            "schema",
            format!("{} does not match its schema", types::SCALE_REQUESTED),
        ),
        (
            Bytes::from_static(b"{\"service\": \"w\""),
            "schema",
            format!("body of {} is not JSON", types::SCALE_REQUESTED),
        ),
    ];
    for (body, kind, reason) in &want {
        let e = entries
            .iter()
            .map(|e| &e.entry)
            .find(|e| e.payload().unwrap() == body.as_ref())
            .unwrap_or_else(|| panic!("{body:?} not dead-lettered: {entries:?}"));
        assert_eq!(e.reason_kind, *kind, "{e:?}");
        assert!(
            e.reason.contains(reason.as_str()),
            "{:?} does not say {reason:?}",
            e.reason
        );
        assert!(!e.reason.contains("published on"), "the handler saw it: {e:?}");
        assert_eq!(e.origin, "autoscale");
    }
    let on_other = entries.iter().find(|e| e.entry.subject == other).unwrap();
    assert_eq!(on_other.entry.reason_kind, "schema");
    assert!(
        jetrun_autoscale::spec::get_burst(&kv, "w")
            .await
            .unwrap()
            .is_none(),
        "a refused request was applied"
    );

    // The control: the same burst with the right type (and a fresh ce-id, so the
    // stream's duplicate window does not drop it) is applied.
    let right = to_header_map(&Envelope::new(types::SCALE_REQUESTED, "/operator"));
    js.publish_with_headers(subject, right, burst(5))
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(b) = jetrun_autoscale::spec::get_burst(&kv, "w").await.unwrap() {
            assert_eq!(b.replicas, 5);
            break;
        }
        assert!(Instant::now() < deadline, "the valid request was not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    h.await.unwrap();
}
