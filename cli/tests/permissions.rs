//! The shipped least-privilege NATS configuration (`infra/nats/jetrun.conf`: one user per
//! function) against the real binary and a real nats-server:
//!
//! - the happy path: `init` as the operator, `serve` as `ingest`, `route` as `route`,
//!   `worker` as `worker`; a job submitted over HTTP (before any worker runs: the
//!   submission must not depend on one) runs to `succeeded` with a NATS completion
//!   callback, a webhook becomes a job through route, and a running job is cancelled over
//!   HTTP through the lifecycle's job-control service. A permission missing from the
//!   config fails it.
//! - the attacks: each credential tries what a thief would (rewrite a job record or the
//!   index, forge a task event, delete, purge or reconfigure streams, delete consumers,
//!   stop another job) and is refused; the server state is checked as the operator after
//!   every attempt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use jetrun_harness::{ShippedNats, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_jetrun");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/github-webhooks");

/// A child killed on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn jetrun(nats: &ShippedNats, user: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env("JETRUN_NATS_URL", nats.url())
        .env("JETRUN_NATS_USER", user)
        .env("JETRUN_NATS_PASSWORD", nats.password(user))
        .env_remove("JETRUN_NATS_TOKEN")
        .env_remove("JETRUN_NATS_CREDS");
    c
}

/// Starts a long-running command and waits for its `ready` line on stdout.
fn start(mut cmd: Command, dir: &std::path::Path, name: &str) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let proc = Proc(child);
    match lines.next() {
        Some(Ok(l)) if l.starts_with("ready") => proc,
        other => panic!(
            "{name} did not come up ({other:?}): {}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        ),
    }
}

/// Starts a command that prints no `ready` line; waits until its log shows `marker`.
fn start_logging(mut cmd: Command, dir: &std::path::Path, name: &str, marker: &str) -> Proc {
    let path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&path).unwrap();
    let proc = Proc(cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains(marker) {
            return proc;
        }
        assert!(Instant::now() < deadline, "{name} did not start: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn body_of(resp: &str) -> serde_json::Value {
    serde_json::from_str(&resp[resp.find("\r\n\r\n").unwrap() + 4..]).unwrap_or_default()
}

/// A nats-server with the shipped config (passwords filled in) and `jetrun init` applied.
struct Deployment {
    /// The processes' logs and data (the server's are the harness's).
    dir: tempfile::TempDir,
    nats: ShippedNats,
}

impl Deployment {
    fn start() -> Self {
        // The users are in the included accounts.conf (the harness fills in their
        // passwords from there).
        let conf = std::fs::read_to_string(jetrun_harness::shipped_config_dir().join("jetrun.conf")).unwrap();
        assert!(conf.contains("include ./accounts.conf"), "{conf}");
        let nats = ShippedNats::start().unwrap();
        let out = jetrun(&nats, "operator").arg("init").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Self {
            dir: tempfile::tempdir().unwrap(),
            nats,
        }
    }

    /// The `jetrun` binary with `user`'s credentials.
    fn jetrun(&self, user: &str) -> Command {
        jetrun(&self.nats, user)
    }

    async fn client(&self, user: &str) -> async_nats::Client {
        self.nats.client(user).await
    }

    /// Permission violations the server logged (what a missing permission looks like).
    fn violations(&self) -> Vec<String> {
        self.nats.violations()
    }

    fn status(&self, id: &str) -> String {
        let out = self
            .jetrun("operator")
            .args(["jobs", "get", id, "--json"])
            .output()
            .unwrap();
        let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rec["status"].as_str().unwrap_or_default().to_string()
    }

    fn wait_status(&self, id: &str, want: &[&str], secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status(id);
            if want.contains(&s.as_str()) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

const TERMINAL: [&str; 4] = ["succeeded", "failed", "timed_out", "cancelled"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_function_runs_with_only_its_own_permissions() {
    let d = Deployment::start();
    let dir = d.dir.path();

    let http_addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut serve = d.jetrun("ingest");
    serve.args(["serve", "--insecure-dev", "--listen", &http_addr.to_string()]);
    let _serve = start(serve, dir, "serve");

    let rules = dir.join("rules.yaml");
    std::fs::write(
        &rules,
        r#"version: 1
rules:
  - name: perm
    match:
      event: issue_comment
      comment: '^/perm-test'
    job:
      queue: default
      image: host
      command: ["true"]
"#,
    )
    .unwrap();
    let mut route = d.jetrun("route");
    route.args(["route", "--rules", &rules.display().to_string()]);
    let _route = start_logging(route, dir, "route", "consumer host started");

    // The callback arrives on a subject the operator listens to.
    let op = d.client("operator").await;
    let mut callbacks = op.subscribe("callbacks.default.perm").await.unwrap();

    // Submitted while no worker runs (the autoscaler may hold workers at zero): the API
    // still answers with the id, and the job runs once a worker starts.
    let resp = http(
        http_addr,
        "POST",
        "/v1/jobs",
        &[],
        r#"{"queue":"default","image":"host","command":["true"],"callback":{"nats":"callbacks.default.perm"}}"#,
    );
    assert!(
        resp.starts_with("HTTP/1.1 201") || resp.starts_with("HTTP/1.1 202"),
        "{resp}"
    );
    let id = body_of(&resp)["id"].as_str().unwrap().to_string();
    // Cancelling needs the lifecycle: without a worker it is a clear 503.
    let resp = http(http_addr, "DELETE", &format!("/v1/jobs/{id}"), &[], "");
    // The job may not even be admitted yet (dispatch admits it): 404 or 503, never 2xx.
    assert!(
        resp.starts_with("HTTP/1.1 503") || resp.starts_with("HTTP/1.1 404"),
        "{resp}"
    );

    let mut worker = d.jetrun("worker");
    worker.args([
        "worker",
        "--runner",
        "process",
        "--data-dir",
        &dir.join("worker").display().to_string(),
    ]);
    let _worker = start(worker, dir, "worker");
    let mut autoscale = d.jetrun("autoscale");
    autoscale.args([
        "autoscale",
        "--data-dir",
        &dir.join("autoscale").display().to_string(),
    ]);
    let _autoscale = start(autoscale, dir, "autoscale");

    let status = d.wait_status(&id, &TERMINAL, 30);
    assert_eq!(
        status,
        "succeeded",
        "worker log: {}\nviolations: {:#?}",
        d.log("worker"),
        d.violations()
    );
    let cb = tokio::time::timeout(Duration::from_secs(10), callbacks.next())
        .await
        .expect("the completion callback")
        .unwrap();
    let change: serde_json::Value = serde_json::from_slice(&cb.payload).unwrap();
    assert_eq!(change["to"], "succeeded");
    assert_eq!(change["job_id"], id.as_str());

    // Reads as ingest: the record and the stats (queue depth from consumer info).
    let resp = http(http_addr, "GET", &format!("/v1/jobs/{id}"), &[], "");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(body_of(&resp)["status"], "succeeded");
    let resp = http(http_addr, "GET", "/v1/stats", &[], "");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // The scrape lists the JOBS stream's consumers as ingest: the queue's depth is there.
    let resp = http(http_addr, "GET", "/metrics", &[], "");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains("jetrun_queue_pending{queue=\"default\"} 0"),
        "{resp}"
    );

    // With a worker: admitted by the job-control service (201, visible at once).
    let resp = http(
        http_addr,
        "POST",
        "/v1/jobs",
        &[],
        r#"{"queue":"default","image":"host","command":["sleep","30"]}"#,
    );
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    let sleeper = body_of(&resp)["id"].as_str().unwrap().to_string();
    assert_eq!(d.wait_status(&sleeper, &["running"], 20), "running");
    let resp = http(http_addr, "DELETE", &format!("/v1/jobs/{sleeper}"), &[], "");
    assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
    assert_eq!(
        d.wait_status(&sleeper, &TERMINAL, 30),
        "cancelled",
        "{}",
        d.log("worker")
    );

    // A webhook becomes a job through route (which only publishes the submission).
    let mut payload: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{FIXTURES}/issue_comment/created.payload.json")).unwrap(),
    )
    .unwrap();
    payload["comment"]["body"] = "/perm-test".into();
    let delivery = "5d1e3f7a-0000-4000-8000-000000000001";
    let resp = http(
        http_addr,
        "POST",
        "/webhooks/github",
        &[
            ("X-GitHub-Event", "issue_comment"),
            ("X-GitHub-Delivery", delivery),
        ],
        &payload.to_string(),
    );
    assert!(resp.starts_with("HTTP/1.1 2"), "{resp}");
    let hooked =
        jetrun_core::job::job_id_for_key("default", &jetrun_route::idempotency_key(delivery, "perm"));
    assert_eq!(
        d.wait_status(&hooked, &TERMINAL, 30),
        "succeeded",
        "route log: {}\nworker log: {}",
        d.log("route"),
        d.log("worker")
    );

    assert!(
        d.violations().is_empty(),
        "the happy path needs no refused permission: {:#?}",
        d.violations()
    );
}

/// Asserts that one attack attempt was refused.
async fn refused<T, E: std::fmt::Debug>(what: &str, r: impl std::future::IntoFuture<Output = Result<T, E>>) {
    // Refused = an error or no answer at all (the server drops a denied publish); the
    // operator's checks afterwards confirm nothing changed.
    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), r.into_future()).await {
        panic!("{what}: allowed");
    }
}

async fn js_as(d: &Deployment, user: &str) -> jetstream::Context {
    // Short waits: a refused request is never answered, it times out.
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .ack_timeout(Duration::from_secs(1))
        .build(d.client(user).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_credentials_cannot_rewrite_delete_purge_or_forge() {
    let d = Deployment::start();
    let names = jetrun_core::Names::default();
    let op = d.client("operator").await;
    let opjs = jetstream::new(op.clone());
    let ctx = jetrun_host::Context::from_client(op.clone(), names.clone())
        .await
        .unwrap();

    // A victim job and a dead letter, as the operator.
    let spec: jetrun_core::JobSpec =
        serde_json::from_str(r#"{"queue":"default","image":"host","command":["true"]}"#).unwrap();
    let victim = jetrun_nats::submit::submit(&ctx.store, &ctx.publisher("cli"), spec, None, None)
        .await
        .unwrap()
        .record()
        .clone();
    opjs.publish(names.dlq("test"), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let dlq_count = || async {
        opjs.get_stream(names.stream_dlq())
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages
    };
    assert_eq!(dlq_count().await, 1);

    let mut attempts = 0;
    let mut cancels = op.subscribe(names.job_cancel(&victim.id)).await.unwrap();
    for user in ["ingest", "route", "worker", "autoscale"] {
        let client = d.client(user).await;
        let js = js_as(&d, user).await;
        let lifecycle = user == "worker";
        if !lifecycle {
            // Rewrite the victim's record or its index entry.
            refused(
                &format!("{user}: $KV put of a job record"),
                js.publish(format!("$KV.{}.{}", names.bucket_jobs(), victim.id), "{}".into())
                    .await
                    .unwrap(),
            )
            .await;
            refused(
                &format!("{user}: $KV put of an index entry"),
                js.publish(
                    format!("$KV.{}.default.succeeded.{}", names.bucket_index(), victim.id),
                    "".into(),
                )
                .await
                .unwrap(),
            )
            .await;
            // Forge the victim's task result.
            refused(
                &format!("{user}: forged task event"),
                js.publish(names.task("exited", &victim.id), "{}".into())
                    .await
                    .unwrap(),
            )
            .await;
            // Stop the victim's task (core NATS: the server drops it silently).
            client
                .publish(names.job_cancel(&victim.id), victim.id.clone().into())
                .await
                .unwrap();
            client.flush().await.unwrap();
            attempts += 4;
        }
        refused(
            &format!("{user}: delete the DLQ stream"),
            js.delete_stream(names.stream_dlq()),
        )
        .await;
        refused(
            &format!("{user}: delete the jobs bucket"),
            js.delete_stream(format!("KV_{}", names.bucket_jobs())),
        )
        .await;
        refused(
            &format!("{user}: purge the DLQ"),
            js.get_stream_no_info(names.stream_dlq()).await.unwrap().purge(),
        )
        .await;
        refused(
            &format!("{user}: purge the jobs bucket"),
            js.get_stream_no_info(format!("KV_{}", names.bucket_jobs()))
                .await
                .unwrap()
                .purge(),
        )
        .await;
        let mut cfg = opjs
            .get_stream(names.stream_dlq())
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .clone();
        cfg.max_age = Duration::from_secs(1);
        refused(&format!("{user}: reconfigure the DLQ"), js.update_stream(cfg)).await;
        refused(
            &format!("{user}: create a stream"),
            js.create_stream(jetstream::stream::Config {
                name: "EVIL".into(),
                subjects: vec!["evil.>".into()],
                ..Default::default()
            }),
        )
        .await;
        refused(
            &format!("{user}: delete a dispatch consumer"),
            js.delete_consumer_from_stream(names.consumer_dispatch("default"), names.stream_jobs()),
        )
        .await;
        attempts += 7;
    }
    assert_eq!(attempts, 3 * 4 + 4 * 7);

    // Nothing changed, as the operator sees it.
    let (rec, _) = ctx
        .store
        .get(&victim.id)
        .await
        .unwrap()
        .expect("the victim's record");
    assert_eq!(rec.status, victim.status);
    assert_eq!(dlq_count().await, 1, "the DLQ was purged");
    let mut tasks = opjs.get_stream(names.stream_tasks()).await.unwrap();
    assert_eq!(
        tasks.info().await.unwrap().state.messages,
        0,
        "a task event was forged"
    );
    assert!(opjs.get_stream("EVIL").await.is_err());
    let jobs = opjs.get_stream(names.stream_jobs()).await.unwrap();
    jobs.consumer_info(names.consumer_dispatch("default"))
        .await
        .expect("the dispatch consumer");
    let idx = opjs
        .get_stream(format!("KV_{}", names.bucket_index()))
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&format!(
            "$KV.{}.default.succeeded.{}",
            names.bucket_index(),
            victim.id
        ))
        .await;
    assert!(idx.is_err(), "a forged index entry was stored");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), cancels.next())
            .await
            .is_err(),
        "a cancel of another job was delivered"
    );
    // Every refusal is a server-side permission violation, logged.
    assert!(d.violations().len() >= attempts, "{:#?}", d.violations());
}
