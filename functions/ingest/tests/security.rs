//! Attacks on the HTTP edge, each against a real nats-server over real HTTP: tenants
//! reaching each other's jobs or operator actions, hostile CloudEvent attributes,
//! unbounded job specs, malformed webhooks and mistyped scale requests. Every test fails
//! on the code before issue #8.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use async_nats::jetstream::kv;
use common::*;
use jetrun_core::Names;
use jetrun_ingest::Config;
use serde_json::{Value, json};

const ACME: &str = "acme-token-0123456789";
const GLOBEX: &str = "globex-token-0123456789";
const DEFAULT: &str = "default-tenant-token-0123";
const OPS: &str = "operator-token-0123456789";

fn tokens() -> String {
    format!("acme:{ACME},globex:{GLOBEX},default:{DEFAULT},*:{OPS}")
}

/// Status, problem slug and the body.
async fn problem(r: reqwest::Response) -> (u16, String, Value) {
    let code = r.status().as_u16();
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    let slug = p["type"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://jetrun.dev/problems/")
        .to_string();
    (code, slug, p)
}

async fn messages(env: &Env, stream: &str) -> u64 {
    let mut s = env.js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.messages
}

async fn healthy(env: &Env) {
    let r = env.http.get(format!("{}/health", env.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "the server stopped answering");
}

async fn scalable(env: &Env, service: &str) {
    let kv: kv::Store = env
        .js
        .get_key_value(Names::default().bucket_scale())
        .await
        .unwrap();
    let spec = json!({"service": service, "queue": "default", "min": 0, "max": 5, "target_per_replica": 1, "scalable": true});
    kv.put(
        format!("spec.{service}"),
        serde_json::to_vec(&spec).unwrap().into(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_read_cancel_or_count_another_tenants_jobs() {
    let env = start(Config::default(), creds(&tokens())).await;
    let url = format!("{}/v1/jobs", env.base);
    let spec = json!({"queue": "default", "image": "busybox", "command": ["true"]});
    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let acme_job = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // An operator's job names no tenant: it is `default` for accounting only.
    let r = env
        .http
        .post(&url)
        .bearer_auth(OPS)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let ops_job = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    for (job, intruders) in [(&acme_job, [GLOBEX, DEFAULT]), (&ops_job, [ACME, DEFAULT])] {
        let job_url = format!("{}/v1/jobs/{job}", env.base);
        for t in intruders {
            let r = env.http.get(&job_url).bearer_auth(t).send().await.unwrap();
            assert_eq!(problem(r).await.0, 404, "{t} read {job}");
            let r = env.http.delete(&job_url).bearer_auth(t).send().await.unwrap();
            assert_eq!(problem(r).await.0, 404, "{t} cancelled {job}");
        }
        let (rec, _) = env.ingest.ctx.store.get(job).await.unwrap().unwrap();
        assert_eq!(rec.status, jetrun_core::JobStatus::Queued);
        assert!(!rec.cancel_requested);
    }
    let r = env
        .http
        .get(format!("{}/v1/jobs/{acme_job}", env.base))
        .bearer_auth(ACME)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Stats span every tenant's queues: operators only.
    let stats = format!("{}/v1/stats", env.base);
    for t in [ACME, GLOBEX, DEFAULT] {
        let r = env.http.get(&stats).bearer_auth(t).send().await.unwrap();
        let (code, slug, p) = problem(r).await;
        assert_eq!((code, slug.as_str()), (403, "forbidden"));
        assert!(p["detail"].as_str().unwrap().contains("operator"), "{p}");
    }
    let r = env.http.get(&stats).bearer_auth(OPS).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["queues"]["default"]["active"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_scale_or_post_events_other_than_job_submissions() {
    let env = start(Config::default(), creds(&tokens())).await;
    scalable(&env, "workers").await;
    let scale_stream = Names::default().stream_scale();
    let burst = json!({"action": "burst", "service": "workers", "replicas": 5, "for_seconds": 600});
    let set = json!({"action": "set", "spec": {"service": "workers", "queue": "default", "min": 0, "max": 500, "target_per_replica": 1, "backend": "local"}});
    let reset = json!({"action": "reset", "service": "workers"});
    let scale_url = format!("{}/v1/scale/workers", env.base);
    for body in [&burst, &set, &reset] {
        let r = env
            .http
            .post(&scale_url)
            .bearer_auth(ACME)
            .json(body)
            .send()
            .await
            .unwrap();
        let (code, slug, _) = problem(r).await;
        assert_eq!((code, slug.as_str()), (403, "forbidden"), "{body}");
    }
    let events = format!("{}/v1/events", env.base);
    let ev = |ty: &str, data: &Value| json!({"specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "type": ty, "source": "/x", "data": data});
    let tenant_refused = [
        ev("dev.jetrun.scale.requested.v1", &burst),
        ev("dev.jetrun.scale.requested.v1", &set),
        ev("dev.jetrun.scale.signal.v1", &json!({})),
        ev("dev.jetrun.scale.bogus.v1", &burst),
        ev("dev.jetrun.task.lifecycle.v1", &json!({})),
        ev("dev.jetrun.job.state.v1", &json!({})),
        ev("com.example.anything.v1", &json!({})),
    ];
    for e in &tenant_refused {
        let r = env
            .http
            .post(&events)
            .bearer_auth(ACME)
            .json(e)
            .send()
            .await
            .unwrap();
        let (code, slug, _) = problem(r).await;
        assert_eq!((code, slug.as_str()), (403, "forbidden"), "{}", e["type"]);
    }
    assert_eq!(
        messages(&env, &scale_stream).await,
        0,
        "a tenant's scale request was published"
    );

    // The operator may, on both paths.
    let r = env
        .http
        .post(&scale_url)
        .bearer_auth(OPS)
        .json(&burst)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let r = env
        .http
        .post(&events)
        .bearer_auth(OPS)
        .json(&ev("dev.jetrun.scale.requested.v1", &burst))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(messages(&env, &scale_stream).await, 2);

    // A tenant's job submission event is forced to its tenant.
    let r = env
        .http
        .post(&events)
        .bearer_auth(ACME)
        .json(&ev(
            "dev.jetrun.job.submitted.v1",
            &json!({"queue": "default", "image": "busybox"}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["job"]["spec"]["tenant"], "acme");
    let r = env
        .http
        .post(&events)
        .bearer_auth(ACME)
        .json(&ev(
            "dev.jetrun.job.submitted.v1",
            &json!({"queue": "default", "image": "busybox", "tenant": "globex"}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_mistyped_scale_events_are_refused_at_the_edge() {
    let env = start(Config::default(), creds(&tokens())).await;
    scalable(&env, "workers").await;
    let events = format!("{}/v1/events", env.base);
    let burst = json!({"action": "burst", "service": "workers", "replicas": 5, "for_seconds": 600});
    for ty in [
        "dev.jetrun.scale.bogus.v1",
        "dev.jetrun.scale.requested.v2",
        "dev.jetrun.scale.signal.v1",
    ] {
        let e = json!({"specversion": "1.0", "id": "e-1", "type": ty, "source": "/ops", "data": burst});
        let r = env
            .http
            .post(&events)
            .bearer_auth(OPS)
            .json(&e)
            .send()
            .await
            .unwrap();
        let (code, slug, _) = problem(r).await;
        assert_eq!((code, slug.as_str()), (400, "bad-attribute"), "{ty}");
    }
    // The right type with a body of another kind.
    let e = json!({"specversion": "1.0", "id": "e-2", "type": "dev.jetrun.scale.requested.v1", "source": "/ops",
        "data": {"queue": "default", "image": "busybox"}});
    let r = env
        .http
        .post(&events)
        .bearer_auth(OPS)
        .json(&e)
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, 422);
    // No type at all.
    let e = json!({"specversion": "1.0", "id": "e-3", "source": "/ops", "data": burst});
    let r = env
        .http
        .post(&events)
        .bearer_auth(OPS)
        .json(&e)
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, 422);
    assert_eq!(messages(&env, &Names::default().stream_scale()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_breaking_cloudevent_attributes_are_400_and_never_panic() {
    // Over a hundred requests: no rate limit in the way.
    let cfg = Config {
        rate_per_second: 0.0,
        ..Config::default()
    };
    let env = start(cfg, creds(&tokens())).await;
    scalable(&env, "workers").await;
    let events = format!("{}/v1/events", env.base);
    let job = json!({"queue": "default", "image": "busybox"});
    let burst = json!({"action": "burst", "service": "workers", "replicas": 2, "for_seconds": 60});
    let base = |ty: &str, data: &Value| json!({"specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "type": ty, "source": "/ci", "data": data});
    let hostile = [
        "a\r\nNats-Msg-Id: forged",
        "line\nfeed",
        "carriage\rreturn",
        "nul\u{0}byte",
        "bell\u{7}",
        "del\u{7f}",
        "caf\u{e9}",
    ];
    let mut tried = 0;
    for (ty, data) in [
        ("dev.jetrun.job.submitted.v1", &job),
        ("dev.jetrun.scale.requested.v1", &burst),
    ] {
        for bad in hostile {
            for attr in ["id", "source", "subject", "tracestate", "tenantref"] {
                let mut e = base(ty, data);
                e[attr] = json!(bad);
                for token in [OPS, ACME] {
                    if token == ACME && ty != "dev.jetrun.job.submitted.v1" {
                        continue;
                    }
                    let r = env
                        .http
                        .post(&events)
                        .bearer_auth(token)
                        .json(&e)
                        .send()
                        .await
                        .unwrap();
                    let (code, slug, p) = problem(r).await;
                    assert_eq!(
                        (code, slug.as_str()),
                        (400, "bad-attribute"),
                        "{attr}={bad:?}: {p}"
                    );
                    tried += 1;
                }
            }
        }
    }
    // Over-long values and invalid extension names.
    let mut e = base("dev.jetrun.job.submitted.v1", &job);
    e["subject"] = json!("x".repeat(1025));
    let r = env
        .http
        .post(&events)
        .bearer_auth(OPS)
        .json(&e)
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, 400);
    for name in ["Upper", "with-dash", "a\r\nb", "abcdefghijklmnopqrstuvwxyz"] {
        let mut e = base("dev.jetrun.job.submitted.v1", &job);
        e[name] = json!("v");
        let r = env
            .http
            .post(&events)
            .bearer_auth(OPS)
            .json(&e)
            .send()
            .await
            .unwrap();
        assert_eq!(problem(r).await.0, 400, "{name:?}");
        tried += 1;
    }
    assert!(tried > 100, "{tried}");
    // Nothing was published, nothing admitted, and the server still answers.
    assert_eq!(messages(&env, &Names::default().stream_jobs()).await, 0);
    assert_eq!(messages(&env, &Names::default().stream_scale()).await, 0);
    healthy(&env).await;
    let r = env
        .http
        .post(&events)
        .bearer_auth(ACME)
        .json(&base("dev.jetrun.job.submitted.v1", &job))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // A traceparent header that breaks the W3C rules is not an error: the job starts a
    // new trace (it does not continue the bad one).
    for tp in [
        "garbage",
        "00-zz-zz-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 x",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    ] {
        let r = env
            .http
            .post(format!("{}/v1/jobs", env.base))
            .bearer_auth(ACME)
            .header("traceparent", tp)
            .json(&job)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{tp}: {}", r.status());
        let v: serde_json::Value = r.json().await.unwrap();
        let got = v["job"]["traceparent"].as_str().unwrap_or_default().to_string();
        assert_ne!(got, tp, "a bad traceparent is not continued");
        assert!(jetrun_telemetry::w3c::TraceParent::parse(&got).is_some(), "{got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_job_specs_are_refused_with_the_pointer_of_the_field() {
    let env = start(Config::default(), creds(&tokens())).await;
    let url = format!("{}/v1/jobs", env.base);
    let with = |patch: Value| {
        let mut s = json!({"queue": "default", "image": "busybox", "command": ["true"]});
        for (k, v) in patch.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    };
    let cases = [
        (
            with(json!({"resources": {"memory_mb": u64::MAX}})),
            "/resources/memory_mb",
        ),
        (
            with(json!({"resources": {"memory_mb": 65537}})),
            "/resources/memory_mb",
        ),
        (with(json!({"resources": {"cpus": 1e308}})), "/resources/cpus"),
        (with(json!({"resources": {"cpus": 65}})), "/resources/cpus"),
        (with(json!({"resources": {"pids": u64::MAX}})), "/resources/pids"),
        (with(json!({"timeout_seconds": 86_401})), "/timeout_seconds"),
        (with(json!({"max_attempts": 21})), "/max_attempts"),
        (with(json!({"env": {"OK": "nul\u{0}inside"}})), "/env/OK"),
        (with(json!({"command": ["sh", "-c", "echo\u{0}"]})), "/command/2"),
        (with(json!({"command": vec!["x"; 257]})), "/command"),
        (
            with(
                json!({"env": (0..129).map(|i| (format!("K{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            ),
            "/env",
        ),
        (with(json!({"env": {"BIG": "x".repeat(65 * 1024)}})), "/env"),
        (with(json!({"labels": {"k": "v".repeat(257)}})), "/labels/k"),
    ];
    for (spec, pointer) in &cases {
        let r = env
            .http
            .post(&url)
            .bearer_auth(ACME)
            .json(spec)
            .send()
            .await
            .unwrap();
        let (code, slug, p) = problem(r).await;
        assert_eq!(
            (code, slug.as_str()),
            (422, "validation-failed"),
            "{pointer}: {p}"
        );
        let pointers: Vec<&str> = p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["pointer"].as_str().unwrap())
            .collect();
        assert!(pointers.contains(pointer), "{pointer} not in {pointers:?}");
    }
    // The same bound through a job submission event.
    let ev = json!({"specversion": "1.0", "id": "big-1", "type": "dev.jetrun.job.submitted.v1", "source": "/x",
        "data": with(json!({"resources": {"cpus": 1e308}}))});
    let r = env
        .http
        .post(format!("{}/v1/events", env.base))
        .bearer_auth(ACME)
        .json(&ev)
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, 422);
    // Nothing was admitted; the bounds themselves pass.
    assert_eq!(messages(&env, &Names::default().stream_jobs()).await, 0);
    let ok = with(
        json!({"resources": {"memory_mb": 65536, "cpus": 64, "pids": 32768}, "timeout_seconds": 86_400, "max_attempts": 20}),
    );
    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_that_are_not_utf8_json_within_the_depth_limit_are_400_and_not_published() {
    let env = start(Config::default(), creds(&tokens())).await;
    let mut invalid_utf8 = br#"{"action":"opened","issue":{"title":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    invalid_utf8.extend_from_slice(br#""}}"#);
    let deep = format!(
        r#"{{"action":"opened","x":{}{}}}"#,
        "[".repeat(65),
        "]".repeat(65)
    );
    for body in [invalid_utf8, deep.into_bytes()] {
        let r = env.deliver("issues", &delivery(), body).await;
        let (code, slug, _) = problem(r).await;
        assert_eq!((code, slug.as_str()), (400, "invalid-json"));
    }
    // A payload value that would become a header with CR/LF in it.
    let crlf = br#"{"action":"opened\r\nNats-Msg-Id: x","repository":{"full_name":"a/b"}}"#.to_vec();
    let r = env.deliver("issues", &delivery(), crlf).await;
    assert_eq!(problem(r).await.0, 422);
    let crlf = br#"{"action":"opened","repository":{"full_name":"a/b\r\nx"}}"#.to_vec();
    let r = env.deliver("issues", &delivery(), crlf).await;
    assert_eq!(problem(r).await.0, 422);
    assert_eq!(env.webhook_messages().await, 0);
    healthy(&env).await;
    // At the limit it is accepted.
    let ok = format!(
        r#"{{"action":"opened","x":{}{}}}"#,
        "[".repeat(63),
        "]".repeat(63)
    );
    let r = env.deliver("issues", &delivery(), ok.into_bytes()).await;
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(env.webhook_messages().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answered_before_the_body_is_read_says_connection_close() {
    let cfg = Config {
        rate_per_second: 0.01,
        rate_burst: 1,
        ..Config::default()
    };
    let env = start(cfg, creds(&tokens())).await;
    let url = format!("{}/v1/jobs", env.base);
    let spec = json!({"queue": "default", "image": "busybox"});
    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["connection"], "close");
    let r = env
        .http
        .post(&url)
        .bearer_auth("not-a-token-at-all")
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["connection"], "close");
    // Without a body the connection stays usable and is not marked.
    let r = env
        .http
        .get(format!("{}/v1/jobs/x", env.base))
        .bearer_auth(ACME)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("connection").is_none());
    healthy(&env).await;
}

proptest::proptest! {
    /// Whatever attribute strings a client sends, an accepted event's envelope is valid and
    /// becomes NATS headers without a panic (async-nats panics on CR/LF).
    #[test]
    fn an_accepted_cloudevent_always_makes_valid_nats_headers(
        id in "[a-z0-9-]{1,10}[ -~\r\n]{0,3}",
        source in "/[ -~]{0,10}[ -~\r\n\t\u{0}\u{e9}]{0,3}",
        subject in proptest::option::of("[ -~]{1,10}[ -~\r\n\u{7f}]{0,2}"),
        ext in proptest::collection::btree_map("[a-z0-9]{1,20}[A-Z_-]?", "[ -~]{0,10}[ -~\r\n\u{0}]{0,2}", 0..4),
    ) {
        let mut ev = json!({"specversion": "1.0", "id": id, "type": "dev.jetrun.job.submitted.v1",
            "source": source, "data": {"queue": "default", "image": "busybox"}});
        if let Some(s) = subject {
            ev["subject"] = json!(s);
        }
        for (k, v) in ext {
            ev[k] = json!(v);
        }
        if let Ok(parsed) = jetrun_ingest::api::parse_cloudevent(&serde_json::to_vec(&ev).unwrap()) {
            proptest::prop_assert_eq!(parsed.envelope.validate(), Ok(()));
            let _ = jetrun_nats::events::to_header_map(&parsed.envelope);
        }
    }
}
