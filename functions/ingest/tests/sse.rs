//! The live updates API against a real nats-server: `GET /v1/jobs/{id}/events` and
//! `GET /v1/events/stream` (Server-Sent Events of job state changes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{creds, start};
use jetrun_core::job::Transition;
use jetrun_core::{JobError, JobRecord, JobSpec};
use jetrun_ingest::Config;
use serde_json::Value;

const ACME: &str = "acme-token-0123456789";
const GLOBEX: &str = "globex-token-0123456789";
const OPS: &str = "ops-token-0123456789";

fn tokens() -> String {
    format!("acme:{ACME},globex:{GLOBEX},*:{OPS}")
}

fn config() -> Config {
    Config {
        rate_per_second: 0.0,
        ..Config::default()
    }
}

/// One parsed SSE event.
#[derive(Debug, Clone)]
struct Ev {
    id: u64,
    ce: Value,
}

impl Ev {
    fn to(&self) -> String {
        self.ce["data"]["to"].as_str().unwrap().to_string()
    }
    fn job(&self) -> String {
        self.ce["data"]["job_id"].as_str().unwrap().to_string()
    }
    fn tenant(&self) -> Option<String> {
        self.ce["data"]["record"]["spec"]["tenant"]
            .as_str()
            .map(str::to_string)
    }
}

/// A minimal SSE reader over a streaming response.
struct Sse {
    resp: reqwest::Response,
    buf: String,
    comments: Vec<String>,
}

impl Sse {
    async fn open(base: &str, path: &str, token: &str, last: Option<u64>) -> reqwest::Response {
        let http = reqwest::Client::new();
        let mut req = http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .header("Accept", "text/event-stream");
        if let Some(l) = last {
            req = req.header("Last-Event-ID", l.to_string());
        }
        req.send().await.unwrap()
    }

    async fn connect(base: &str, path: &str, token: &str, last: Option<u64>) -> Sse {
        let resp = Self::open(base, path, token, last).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Sse {
            resp,
            buf: String::new(),
            comments: Vec::new(),
        }
    }

    /// The next event with data, or `None` when the stream ended or `wait` passed.
    async fn next(&mut self, wait: Duration) -> Option<Ev> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let (mut id, mut data) = (None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<u64>().unwrap());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    } else if let Some(c) = line.strip_prefix(':') {
                        self.comments.push(c.to_string());
                    }
                }
                if let Some(id) = id {
                    return Some(Ev {
                        id,
                        ce: serde_json::from_str(&data).unwrap(),
                    });
                }
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(c))) => self.buf.push_str(&String::from_utf8_lossy(&c)),
                _ => return None,
            }
        }
    }
}

async fn admit(env: &common::Env, tenant: Option<&str>) -> JobRecord {
    admit_with(&env.ingest.ctx.store, tenant).await
}

async fn admit_with(store: &jetrun_nats::JobStore, tenant: Option<&str>) -> JobRecord {
    let mut spec = JobSpec::new("default", "busybox", vec!["true".into()]);
    spec.tenant = tenant.map(str::to_string);
    let rec = JobRecord::new(uuid::Uuid::now_v7().to_string(), spec, None, None);
    store.admit(rec).await.unwrap().record().clone()
}

async fn step(env: &common::Env, id: &str, t: Transition) {
    env.ingest.ctx.store.transition(id, &t).await.unwrap();
}

fn claim() -> Transition {
    Transition::Claim {
        worker_id: "w".into(),
        node_id: "n".into(),
    }
}

fn started() -> Transition {
    Transition::Started {
        task_ref: "process:x".into(),
    }
}

#[tokio::test]
async fn a_client_that_reconnects_with_last_event_id_gets_every_later_transition_once() {
    let env = start(config(), creds(&tokens())).await;
    let rec = admit(&env, Some("acme")).await;
    let path = format!("/v1/jobs/{}/events", rec.id);
    let mut s = Sse::connect(&env.base, &path, ACME, None).await;
    let first = s.next(Duration::from_secs(5)).await.unwrap();
    // The tenant stream too, after the admission.
    let mut all = Sse::connect(&env.base, "/v1/events/stream?queue=default", ACME, Some(first.id)).await;
    assert_eq!(first.to(), "queued");
    assert_eq!(first.ce["specversion"], "1.0");
    assert_eq!(first.ce["type"], "dev.jetrun.job.state_changed.v1");
    assert_eq!(first.ce["subject"], rec.id.as_str());
    assert_eq!(first.ce["streamseq"], first.id.to_string());
    assert!(first.ce["id"].as_str().unwrap().starts_with(&rec.id));
    step(&env, &rec.id, claim()).await;
    let second = s.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(second.to(), "launching");
    assert!(second.id > first.id);
    // Mid-job, the client goes away; the job goes on: it starts, fails its attempt and
    // is retried, then runs again and succeeds.
    drop(s);
    step(&env, &rec.id, started()).await;
    step(
        &env,
        &rec.id,
        Transition::Retry {
            error: JobError::new("lease_expired", "lost"),
            not_before: jetrun_core::now(),
        },
    )
    .await;
    step(&env, &rec.id, claim()).await;
    step(&env, &rec.id, started()).await;
    step(&env, &rec.id, Transition::Exited { exit_code: 0 }).await;
    let mut s = Sse::connect(&env.base, &path, ACME, Some(second.id)).await;
    let mut got = Vec::new();
    while let Some(e) = s.next(Duration::from_secs(5)).await {
        got.push(e);
    }
    let tos: Vec<String> = got.iter().map(Ev::to).collect();
    assert_eq!(
        tos,
        ["running", "queued", "launching", "running", "succeeded"],
        "every later transition, exactly once, in order (then the stream ends)"
    );
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    assert!(got.iter().all(|e| e.id > second.id));
    assert_eq!(got[1].ce["data"]["attempt"], 2);
    // Reconnecting after the terminal event: 204, so EventSource stops reconnecting.
    let r = Sse::open(&env.base, &path, ACME, Some(got.last().unwrap().id)).await;
    assert_eq!(r.status(), 204);

    // The tenant stream, cut after the second change and resumed, gives the same.
    let a1 = all.next(Duration::from_secs(5)).await.unwrap();
    let a2 = all.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!((a1.to().as_str(), a2.to().as_str()), ("launching", "running"));
    drop(all);
    let mut all = Sse::connect(&env.base, "/v1/events/stream?queue=default", ACME, Some(a2.id)).await;
    let mut rest = Vec::new();
    while rest.len() < 4 {
        rest.push(
            all.next(Duration::from_secs(5))
                .await
                .expect("a later transition"),
        );
    }
    assert_eq!(
        rest.iter().map(Ev::to).collect::<Vec<_>>(),
        ["queued", "launching", "running", "succeeded"]
    );
    assert!(
        all.next(Duration::from_millis(500)).await.is_none(),
        "nothing twice"
    );
}

#[tokio::test]
async fn a_tenants_stream_never_carries_another_tenants_job() {
    let env = start(config(), creds(&tokens())).await;
    let mut acme = Sse::connect(&env.base, "/v1/events/stream", ACME, None).await;
    let mut globex = Sse::connect(&env.base, "/v1/events/stream", GLOBEX, None).await;
    let mut ops = Sse::connect(&env.base, "/v1/events/stream", OPS, None).await;
    let mut ids = Vec::new();
    for tenant in [Some("globex"), None, Some("acme"), Some("globex"), Some("acme")] {
        let r = admit(&env, tenant).await;
        step(&env, &r.id, claim()).await;
        step(&env, &r.id, started()).await;
        step(&env, &r.id, Transition::Exited { exit_code: 1 }).await;
        ids.push((tenant, r.id));
    }
    let drain = |n: usize| n * 4;
    let mut seen_acme = Vec::new();
    while let Some(e) = acme.next(Duration::from_secs(2)).await {
        seen_acme.push(e);
    }
    let mut seen_globex = Vec::new();
    while let Some(e) = globex.next(Duration::from_secs(2)).await {
        seen_globex.push(e);
    }
    let mut seen_ops = Vec::new();
    while seen_ops.len() < drain(5) {
        seen_ops.push(ops.next(Duration::from_secs(5)).await.unwrap());
    }
    assert_eq!(seen_acme.len(), drain(2));
    assert!(seen_acme.iter().all(|e| e.tenant().as_deref() == Some("acme")));
    assert_eq!(seen_globex.len(), drain(2));
    assert!(
        seen_globex
            .iter()
            .all(|e| e.tenant().as_deref() == Some("globex"))
    );
    for (tenant, id) in &ids {
        let n = |v: &[Ev]| v.iter().filter(|e| &e.job() == id).count();
        assert_eq!(n(&seen_ops), 4, "the operator sees every job");
        assert_eq!(n(&seen_acme), if *tenant == Some("acme") { 4 } else { 0 });
        assert_eq!(n(&seen_globex), if *tenant == Some("globex") { 4 } else { 0 });
    }
    // Another tenant's job stream is 404, like the job itself; a job without a tenant
    // belongs to no tenant token.
    for (tenant, id) in &ids {
        let path = format!("/v1/jobs/{id}/events");
        let r = Sse::open(&env.base, &path, ACME, None).await;
        let want = if *tenant == Some("acme") { 200 } else { 404 };
        assert_eq!(r.status(), want, "{tenant:?}");
    }
    // Filters: status, and a queue that is not a subject token.
    let mut failed = Sse::connect(&env.base, "/v1/events/stream?status=failed", OPS, Some(0)).await;
    for _ in 0..5 {
        assert_eq!(failed.next(Duration::from_secs(5)).await.unwrap().to(), "failed");
    }
    assert!(failed.next(Duration::from_millis(500)).await.is_none());
    for bad in ["/v1/events/stream?queue=%3E", "/v1/events/stream?status=nope"] {
        let r = Sse::open(&env.base, bad, OPS, None).await;
        assert_eq!(r.status(), 422, "{bad}");
    }
}

#[tokio::test]
async fn streams_are_bounded_per_tenant_need_accept_and_send_heartbeats() {
    let env = start(config(), creds(&tokens())).await;
    let mut open = Vec::new();
    for _ in 0..jetrun_ingest::sse::DEFAULT_STREAMS_PER_TENANT {
        open.push(Sse::connect(&env.base, "/v1/events/stream", ACME, None).await);
    }
    let r = Sse::open(&env.base, "/v1/events/stream", ACME, None).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "https://jetrun.dev/problems/rate-limited");
    // Another tenant is not affected.
    let mut g = Sse::connect(&env.base, "/v1/events/stream", GLOBEX, None).await;
    // Without Accept: text/event-stream, without a token, with a bad Last-Event-ID.
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/v1/events/stream", env.base))
        .bearer_auth(GLOBEX)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{}/v1/events/stream", env.base))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{}/v1/events/stream", env.base))
        .bearer_auth(GLOBEX)
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A quiet stream carries a `: ping` comment every 15 s.
    assert!(g.next(Duration::from_secs(16)).await.is_none());
    assert!(g.comments.iter().any(|c| c == " ping"), "{:?}", g.comments);
    drop(open);
}

/// A nats-server with the shipped users, the topology applied by the operator, and an
/// ingest over the `ingest` user.
struct Deployment {
    base: String,
    /// The operator's store (the ingest user may not write records).
    store: jetrun_nats::JobStore,
    shutdown: tokio_util::sync::CancellationToken,
    nats: jetrun_harness::ShippedNats,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn deployment() -> Deployment {
    let nats = jetrun_harness::ShippedNats::start().unwrap();
    let operator = nats.client("operator").await;
    let names = jetrun_core::Names::default();
    jetrun_nats::Topology::new(names.clone())
        .apply(&async_nats::jetstream::new(operator.clone()))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(operator.clone());
    let store = jetrun_nats::JobStore::open(&js, &names, "/test").await.unwrap();
    let ctx = jetrun_host::Context::from_client(nats.client("ingest").await, names)
        .await
        .unwrap();
    let ingest = jetrun_ingest::Ingest::new(ctx, config(), creds(&tokens()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(jetrun_ingest::serve(
        listener,
        jetrun_ingest::router(ingest),
        shutdown.clone(),
    ));
    Deployment {
        base,
        store,
        shutdown,
        nats,
    }
}

fn violations(d: &Deployment) -> Vec<String> {
    d.nats.violations()
}

#[tokio::test]
async fn the_ingest_user_needs_exactly_the_listed_subjects_for_streams() {
    // The shipped ingest user (infra/nats/accounts.conf) holds exactly what streams need:
    // both streams work end to end as that user, and the server logs no violation.
    let d = deployment().await;
    let env = &d;
    let mut all = Sse::connect(&env.base, "/v1/events/stream", OPS, None).await;
    let mut queue = Sse::connect(&env.base, "/v1/events/stream?queue=default", ACME, None).await;
    let rec = admit_with(&d.store, Some("acme")).await;
    assert_eq!(all.next(Duration::from_secs(5)).await.unwrap().to(), "queued");
    assert_eq!(queue.next(Duration::from_secs(5)).await.unwrap().to(), "queued");
    let mut job = Sse::connect(&env.base, &format!("/v1/jobs/{}/events", rec.id), ACME, None).await;
    assert_eq!(job.next(Duration::from_secs(5)).await.unwrap().job(), rec.id);
    assert_eq!(violations(&d), Vec::<String>::new());
}
