//! The HTTP API over real HTTP against a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use async_nats::jetstream::kv;
use common::*;
use futures::StreamExt;
use jetrun_core::Names;
use jetrun_ingest::Config;
use serde_json::{Value, json};

const ACME: &str = "acme-token-0123456789";
const GLOBEX: &str = "globex-token-0123456789";
const OPS: &str = "operator-token-0123456789";

fn tokens() -> String {
    format!("acme:{ACME},globex:{GLOBEX},*:{OPS}")
}

async fn problem_type(r: reqwest::Response) -> (u16, String) {
    let code = r.status().as_u16();
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    (
        code,
        p["type"]
            .as_str()
            .unwrap()
            .trim_start_matches("https://jetrun.dev/problems/")
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_submitted_once_per_idempotency_key_read_and_cancelled_by_their_tenant() {
    let env = start(Config::default(), creds(&tokens())).await;
    let url = format!("{}/v1/jobs", env.base);
    let spec = json!({"queue": "default", "image": "busybox", "command": ["true"]});

    let r = env.http.post(&url).json(&spec).send().await.unwrap();
    assert_eq!(problem_type(r).await, (401, "unauthorized".into()));
    let r = env
        .http
        .post(&url)
        .bearer_auth("wrong-token-0000000000")
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (401, "unauthorized".into()));

    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .header("Idempotency-Key", "build-42")
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let a: Value = r.json().await.unwrap();
    let id = a["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(a["status"], "queued");
    assert_eq!(a["duplicate"], false);
    assert_eq!(a["job"]["spec"]["tenant"], "acme");

    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .header("Idempotency-Key", "build-42")
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["id"].as_str().unwrap(), b["duplicate"].as_bool().unwrap()),
        (id.as_str(), true)
    );
    // The same key from another tenant does not reach acme's job.
    let r = env
        .http
        .post(&url)
        .bearer_auth(GLOBEX)
        .header("Idempotency-Key", "build-42")
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (409, "idempotency-conflict".into()));
    // One submission message for the job.
    let mut s = env.js.get_stream(Names::default().stream_jobs()).await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 1);

    let job_url = format!("{}/v1/jobs/{id}", env.base);
    let r = env.http.get(&job_url).bearer_auth(ACME).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], id.as_str());
    let r = env.http.get(&job_url).bearer_auth(GLOBEX).send().await.unwrap();
    assert_eq!(problem_type(r).await, (404, "not-found".into()));
    let r = env.http.get(&job_url).bearer_auth(OPS).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = env
        .http
        .get(format!("{}/v1/jobs/nope", env.base))
        .bearer_auth(ACME)
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (404, "not-found".into()));

    let r = env
        .http
        .delete(&job_url)
        .bearer_auth(GLOBEX)
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (404, "not-found".into()));
    let r = env.http.delete(&job_url).bearer_auth(ACME).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");
    let (rec, _) = env.ingest.ctx.store.get(&id).await.unwrap().unwrap();
    assert_eq!(rec.status, jetrun_core::JobStatus::Cancelled);

    // Invalid specs: schema errors with pointers; another tenant's name is refused.
    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .json(&json!({"queue": "bad queue", "image": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://jetrun.dev/problems/validation-failed");
    assert!(
        p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["pointer"] == "/queue")
    );
    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (400, "invalid-json".into()));
    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .json(&json!({"queue": "default", "image": "x", "tenant": "globex"}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (403, "forbidden".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_asked_to_stop_on_its_cancel_subject() {
    let env = start(Config::default(), creds(&tokens())).await;
    let r = env
        .http
        .post(format!("{}/v1/jobs", env.base))
        .bearer_auth(ACME)
        .json(&json!({"queue": "default", "image": "busybox"}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let store = &env.ingest.ctx.store;
    use jetrun_core::job::Transition;
    store
        .transition(
            &id,
            &Transition::Claim {
                worker_id: "w".into(),
                node_id: "n".into(),
            },
        )
        .await
        .unwrap();
    store
        .transition(&id, &Transition::Started { task_ref: "t".into() })
        .await
        .unwrap();
    let mut sub = env
        .client
        .subscribe(Names::default().job_cancel(&id))
        .await
        .unwrap();
    env.client.flush().await.unwrap();
    let r = env
        .http
        .delete(format!("{}/v1/jobs/{id}", env.base))
        .bearer_auth(ACME)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "running");
    let m = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], id.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_rate_limited_with_retry_after() {
    let cfg = Config {
        rate_per_second: 1.0,
        rate_burst: 3,
        ..Config::default()
    };
    let env = start(cfg, creds(&tokens())).await;
    // Any authenticated route counts; a job nobody has is a plain 404.
    let url = format!("{}/v1/jobs/no-such-job", env.base);
    for _ in 0..3 {
        assert_eq!(
            env.http
                .get(&url)
                .bearer_auth(ACME)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            404
        );
    }
    let r = env.http.get(&url).bearer_auth(ACME).send().await.unwrap();
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(problem_type(r).await, (429, "rate-limited".into()));
    // Another tenant is not affected.
    assert_eq!(
        env.http
            .get(&url)
            .bearer_auth(GLOBEX)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_cloudevents_are_validated_and_published_on_their_subject() {
    let env = start(Config::default(), creds(&tokens())).await;
    let url = format!("{}/v1/events", env.base);
    let ev = json!({
        "specversion": "1.0", "id": "ev-1", "type": "dev.jetrun.job.submitted.v1",
        "source": "/ci/system", "datacontenttype": "application/json", "tenantref": "x",
        "data": {"queue": "default", "image": "busybox", "command": ["true"]}
    });
    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .json(&ev)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Re-sent: the event id is the idempotency key.
    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .json(&ev)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], id.as_str());

    let mut bad = ev.clone();
    bad["data"]["queue"] = json!("no spaces allowed");
    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (422, "validation-failed".into()));
    let mut bad = ev.clone();
    bad.as_object_mut().unwrap().remove("source");
    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (422, "validation-failed".into()));
    let mut bad = ev.clone();
    bad["type"] = json!("com.example.nothing.v1");
    let r = env
        .http
        .post(&url)
        .bearer_auth(OPS)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (422, "unknown-event-type".into()));
    let mut bad = ev.clone();
    bad["type"] = json!("dev.jetrun.webhook.github.v1");
    bad["data"] = json!({});
    let r = env
        .http
        .post(&url)
        .bearer_auth(OPS)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (422, "event-type-not-accepted".into()));

    // Task events: operators only, published on <p>.task.<phase>.<job>.
    let task = json!({
        "specversion": "1.0", "id": "t-1", "type": "dev.jetrun.task.lifecycle.v1", "source": "/ecs/bridge",
        "data": {"job_id": id, "attempt": 1, "phase": "started", "task_ref": "arn:x", "node_id": "ecs", "at": "2026-01-01T00:00:00Z"}
    });
    let r = env
        .http
        .post(&url)
        .bearer_auth(ACME)
        .json(&task)
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (403, "forbidden".into()));
    let r = env
        .http
        .post(&url)
        .bearer_auth(OPS)
        .json(&task)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["subject"], format!("jetrun.task.started.{id}"));
    let s = env.js.get_stream(Names::default().stream_tasks()).await.unwrap();
    let m = s.get_raw_message(a["seq"].as_u64().unwrap()).await.unwrap();
    assert_eq!(m.headers.get("ce-id").unwrap().as_str(), "t-1");
    assert_eq!(m.headers.get("ce-source").unwrap().as_str(), "/ecs/bridge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_requests_need_a_scalable_spec() {
    let env = start(Config::default(), creds(&tokens())).await;
    let url = |s: &str| format!("{}/v1/scale/{s}", env.base);
    let burst = |s: &str| json!({"action": "burst", "service": s, "replicas": 4, "for_seconds": 600});
    let r = env
        .http
        .post(url("ghost"))
        .bearer_auth(OPS)
        .json(&burst("ghost"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (404, "unknown-service".into()));

    let kv: kv::Store = env
        .js
        .get_key_value(Names::default().bucket_scale())
        .await
        .unwrap();
    let spec = |s: &str, scalable: bool| json!({"service": s, "queue": "default", "min": 0, "max": 5, "target_per_replica": 1, "scalable": scalable});
    kv.put(
        "spec.fixed",
        serde_json::to_vec(&spec("fixed", false)).unwrap().into(),
    )
    .await
    .unwrap();
    kv.put(
        "spec.workers",
        serde_json::to_vec(&spec("workers", true)).unwrap().into(),
    )
    .await
    .unwrap();
    let r = env
        .http
        .post(url("fixed"))
        .bearer_auth(OPS)
        .json(&burst("fixed"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (409, "not-scalable".into()));
    let r = env
        .http
        .post(url("workers"))
        .bearer_auth(OPS)
        .json(&burst("other"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (422, "validation-failed".into()));
    let r = env
        .http
        .post(url("workers"))
        .bearer_auth(OPS)
        .json(&json!({"action": "burst", "service": "workers"}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (422, "validation-failed".into()));

    let r = env
        .http
        .post(url("workers"))
        .bearer_auth(OPS)
        .json(&burst("workers"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["subject"], "jetrun.scale.request.workers");
    let s = env.js.get_stream(Names::default().stream_scale()).await.unwrap();
    let m = s.get_raw_message(a["seq"].as_u64().unwrap()).await.unwrap();
    assert_eq!(
        m.headers.get("ce-type").unwrap().as_str(),
        "dev.jetrun.scale.requested.v1"
    );
    assert_eq!(m.headers.get("ce-subject").unwrap().as_str(), "workers");
    let body: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body, burst("workers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_health_and_readiness() {
    let env = start(Config::default(), creds(&tokens())).await;
    for _ in 0..2 {
        env.http
            .post(format!("{}/v1/jobs", env.base))
            .bearer_auth(ACME)
            .json(&json!({"queue": "default", "image": "busybox"}))
            .send()
            .await
            .unwrap();
    }
    env.deliver("push", &delivery(), fixture("push", "payload.json"))
        .await;
    let r = env
        .http
        .get(format!("{}/v1/stats", env.base))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["queues"]["default"]["pending"], 2, "{s}");
    assert_eq!(s["queues"]["default"]["active"], 2, "{s}");
    assert_eq!(s["queues"]["default"]["running"], 0, "{s}");
    assert_eq!(s["instance"]["webhooks_accepted"], 1);
    assert_eq!(s["instance"]["jobs_submitted"], 2);
    assert_eq!(
        env.http
            .get(format!("{}/health", env.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        env.http
            .get(format!("{}/ready", env.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let r = env
        .http
        .get(format!("{}/nowhere", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(r).await, (404, "not-found".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_exactly_the_served_routes() {
    let doc: Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                documented.push((method.to_string(), path.clone()));
            }
        }
    }
    let mut served: Vec<(String, String)> = jetrun_ingest::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    // And the router really serves each of them (no fallback, no 405).
    let env = start(Config::default(), creds(&tokens())).await;
    for (method, path) in jetrun_ingest::ROUTES {
        let url = format!(
            "{}{}",
            env.base,
            path.replace("{id}", "some-job").replace("{service}", "svc")
        );
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = env
            .http
            .request(m, &url)
            .bearer_auth(OPS)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_ne!(r.status().as_u16(), 405, "{method} {path}");
        let text = r.text().await.unwrap();
        assert!(!text.contains("no such route"), "{method} {path}: {text}");
    }
}

#[tokio::test]
async fn a_submission_says_whether_a_worker_serves_its_queue() {
    let env = start(Config::default(), creds(&tokens())).await;
    let submit = |queue: &'static str| {
        let env = &env;
        async move {
            let spec = json!({"queue": queue, "image": "busybox", "command": ["true"]});
            let r = env
                .http
                .post(format!("{}/v1/jobs", env.base))
                .bearer_auth(ACME)
                .json(&spec)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201, "{queue}");
            r.json::<Value>().await.unwrap()
        }
    };
    // No worker anywhere: the job is accepted, and the answer says it will wait.
    let a = submit("nobody").await;
    assert_eq!(a["status"], "queued");
    assert_eq!(a["served"], false);
    let warning = a["warning"].as_str().expect("a warning");
    assert!(warning.contains("no worker serves queue \"nobody\""), "{warning}");
    assert!(warning.contains("waits"), "{warning}");

    // A worker pulling from the queue's dispatch consumer (as `jetrun worker --queue
    // builds` does: one pull request always open).
    let topology = jetrun_nats::Topology::new(Names::default());
    let stream = env.js.get_stream(Names::default().stream_jobs()).await.unwrap();
    let consumer = stream
        .get_or_create_consumer(
            &Names::default().consumer_dispatch("builds"),
            topology.dispatch_consumer("builds"),
        )
        .await
        .unwrap();
    let mut pull = consumer.messages().await.unwrap();
    let puller = tokio::spawn(async move { while pull.next().await.is_some() {} });
    let info_waiting = async {
        for _ in 0..100 {
            let mut c = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                    &Names::default().consumer_dispatch("builds"),
                )
                .await
                .unwrap();
            if c.info().await.unwrap().num_waiting > 0 {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    };
    assert!(info_waiting.await, "the pull request is waiting");
    let b = submit("builds").await;
    assert_eq!(b["served"], true, "{b}");
    assert!(b.get("warning").is_none_or(Value::is_null), "{b}");

    // A live node serving every queue (`jetrun dev`, `--queue '*'`) serves a queue that
    // has no consumer yet; until then the same queue was not served.
    let c = submit("fresh").await;
    assert_eq!(c["served"], false);
    let nodes = env
        .js
        .get_key_value(Names::default().bucket_nodes())
        .await
        .unwrap();
    nodes
        .put(
            "node-1",
            json!({"node_id": "node-1", "queues": ["*"]}).to_string().into(),
        )
        .await
        .unwrap();
    // The answer is reused for a second per queue.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let d = submit("fresh").await;
    assert_eq!(d["served"], true, "{d}");
    assert!(d.get("warning").is_none_or(Value::is_null), "{d}");
    puller.abort();
}
