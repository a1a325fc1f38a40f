//! Fault injection against real processes: nats-server SIGKILLed mid-load, a 3-node R3
//! cluster losing its stream leader, duplicate storms over HTTP, the store filling up,
//! and (long form only) a bounded soak. Every scenario ends with the same invariant
//! checker (`common::faults::check`): every acknowledged submission ends terminal with
//! its command's true outcome, attempts ≤ max_attempts, none lost; commands that ran
//! twice are counted. Each prints a `FAULTS <scenario> <counts>` line
//! (`cargo test -p jetrun-e2e --test faults -- --nocapture`); docs/reliability.md
//! reports them.
//!
//! Short form by default (CI); `JETRUN_CHAOS=long` (`just chaos`) runs more jobs,
//! larger storms and the soak.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/faults.rs"]
mod faults;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use faults::{Ledger, Proc, Submission, check, counted_job, http, long_form, scale, worker_args};
use jetrun_core::Names;
use jetrun_harness::{ServerOptions, ServerProcess};
use jetrun_nats::{EventPublisher, JobStore, Topology};

/// A store and publisher over `client` (the topology applied with `replicas`).
async fn open(client: async_nats::Client, replicas: Option<usize>) -> (JobStore, EventPublisher) {
    let js = async_nats::jetstream::new(client);
    let names = Names::default();
    let mut topo = Topology::new(names.clone());
    topo.replicas = replicas;
    topo.apply(&js).await.unwrap();
    let store = JobStore::open(&js, &names, "/jetrun/faults").await.unwrap();
    (store, EventPublisher::new(js, "/jetrun/faults"))
}

/// Submits as `jetrun submit` does, bounded by `within`; records the outcome.
async fn submit_one(
    store: &JobStore,
    publisher: &EventPublisher,
    ledger: &mut Ledger,
    runs: &Path,
    i: usize,
    within: Duration,
) {
    let code = (i % 3) as i32;
    let secs = 0.1 + (i % 5) as f64 * 0.1;
    let spec = counted_job("default", runs, secs, code);
    let id = jetrun_nats::submit::job_id_for(&spec);
    ledger.submitted += 1;
    let res = tokio::time::timeout(
        within,
        jetrun_nats::submit::submit_as(store, publisher, id.clone(), spec, None, None),
    )
    .await;
    let s = Submission { id, exit_code: code };
    match res {
        Ok(Ok(_)) => ledger.acknowledged.push(s),
        Ok(Err(e)) => {
            println!("submission {i} refused: {e}");
            ledger.unacknowledged.push(s)
        }
        Err(_) => {
            println!("submission {i} unanswered in {within:?}");
            ledger.unacknowledged.push(s)
        }
    }
}

fn server(dir: &Path, name: &str, extra: Vec<String>) -> ServerProcess {
    let port = jetrun_harness::free_port().unwrap();
    ServerProcess::spawn(ServerOptions {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        store_dir: dir.join(name).join("jetstream"),
        name: name.into(),
        cluster: None,
        log_file: dir.join(format!("{name}.log")),
        extra_args: extra,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_server_sigkilled_mid_load_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = server(dir.path(), "n", vec![]);
    let url = nats.url();
    let (store, publisher) = open(jetrun_harness::connect(&url).await, None).await;
    let runs = dir.path().join("runs.txt");
    let args = worker_args(&dir.path().join("w"), 16);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _w = Proc::spawn(&url, &args, &dir.path().join("w.log"), &[]);
    let n = scale(60, 600);
    let mut ledger = Ledger::default();
    let started = Instant::now();
    for i in 0..n {
        if i == n / 3 {
            nats.kill();
            // Submissions during the outage: refused or unanswered, never acknowledged
            // falsely.
            for j in 0..5 {
                submit_one(
                    &store,
                    &publisher,
                    &mut ledger,
                    &runs,
                    n + j,
                    Duration::from_millis(400),
                )
                .await;
            }
            nats.restart().unwrap();
        }
        submit_one(&store, &publisher, &mut ledger, &runs, i, Duration::from_secs(15)).await;
    }
    let c = check("nats_sigkill", &store, &ledger, &runs, Duration::from_secs(90)).await;
    assert_eq!(c.lost, 0);
    println!("nats_sigkill took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r3_cluster_loses_its_stream_leader_mid_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = jetrun_harness::Cluster::start().await.unwrap();
    let urls = cluster.urls();
    let client = cluster.client().await;
    let (store, publisher) = open(client.clone(), Some(3)).await;
    let js = async_nats::jetstream::new(client);
    let runs = dir.path().join("runs.txt");
    let args = worker_args(&dir.path().join("w"), 16);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _w = Proc::spawn(&urls, &args, &dir.path().join("w.log"), &[]);
    let n = scale(45, 450);
    let mut ledger = Ledger::default();
    let mut killed = None;
    for i in 0..n {
        if i == n / 3 {
            let info = js
                .get_stream("JETRUN_JOBS")
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .clone();
            let leader = info.cluster.and_then(|c| c.leader).expect("a leader");
            let idx = cluster
                .nodes
                .iter()
                .position(|p| p.name() == leader)
                .expect("the leader is one of ours");
            cluster.nodes[idx].kill();
            killed = Some(leader);
        }
        submit_one(&store, &publisher, &mut ledger, &runs, i, Duration::from_secs(20)).await;
    }
    let c = check("r3_leader_loss", &store, &ledger, &runs, Duration::from_secs(120)).await;
    assert!(killed.is_some());
    // With R3 the loss of one node costs a leader election, not submissions.
    assert!(
        c.acknowledged + 3 >= c.submitted,
        "most submissions acknowledged through the failover: {c}"
    );
}

/// `jetrun dev --nats-url URL` with the process runner and its HTTP address.
fn dev(url: &str, dir: &Path, name: &str) -> (Proc, String) {
    let port = jetrun_harness::free_port().unwrap();
    let http_addr = format!("127.0.0.1:{port}");
    let data = dir.join(name);
    let args = [
        "dev",
        "--http",
        &http_addr,
        "--data-dir",
        &data.display().to_string(),
        "--runner",
        "process",
        "--queue",
        "default",
        "--max-concurrent-jobs",
        "16",
        "--lease-ttl",
        "2s",
        "--lease-renew",
        "500ms",
        "--retry-base",
        "200ms",
        // The storms test idempotency, not the per-tenant rate limit.
        "--api-rate",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::spawn(url, &args, &dir.join(format!("{name}.log")), &[]);
    (p, http_addr)
}

fn job_body(runs: &Path, code: i32) -> Vec<u8> {
    serde_json::to_vec(&counted_job("default", runs, 0.1, code)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_storms_over_http_make_one_job_and_one_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let nats = server(dir.path(), "n", vec![]);
    let url = nats.url();
    let (store, _publisher) = open(jetrun_harness::connect(&url).await, None).await;
    let (_dev, addr) = dev(&url, dir.path(), "dev");
    let runs = dir.path().join("runs.txt");

    // 5,000 (short: 500) POST /v1/jobs with one Idempotency-Key, 32 at a time.
    let n = scale(500, 5000);
    let body = job_body(&runs, 0);
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (addr, body, sem) = (addr.clone(), body.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            http(
                &addr,
                "POST",
                "/v1/jobs",
                &[
                    ("Content-Type", "application/json"),
                    ("Idempotency-Key", "storm-1"),
                ],
                &body,
            )
            .await
        }));
    }
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let a = t.await.unwrap();
        *by_status.entry(a.status).or_default() += 1;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&a.body)
            && let Some(id) = v["id"].as_str()
        {
            ids.insert(id.to_string());
        }
    }
    println!(
        "idempotency storm: {n} requests, answers {by_status:?}, distinct ids {}",
        ids.len()
    );
    assert_eq!(ids.len(), 1, "one job for one key: {ids:?}");
    assert_eq!(by_status.get(&201).copied().unwrap_or(0), 1, "{by_status:?}");
    let ok = by_status.get(&200).copied().unwrap_or(0) + 1;
    assert_eq!(ok, n, "every duplicate answered 200: {by_status:?}");
    let id = ids.into_iter().next().unwrap();
    let ledger = Ledger {
        submitted: n,
        acknowledged: vec![Submission {
            id: id.clone(),
            exit_code: 0,
        }],
        unacknowledged: vec![],
    };
    let c = check(
        "idempotency_storm",
        &store,
        &ledger,
        &runs,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        c.ran_twice, 0,
        "a duplicate submission never runs the command again"
    );

    // 2,000 (short: 200) deliveries of one GitHub webhook.
    let m = scale(200, 2000);
    let payload = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/github-webhooks/issue_comment/created.payload.json"),
    )
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..m {
        let (addr, payload, sem) = (addr.clone(), payload.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            http(
                &addr,
                "POST",
                "/webhooks/github",
                &[
                    ("Content-Type", "application/json"),
                    ("X-GitHub-Event", "issue_comment"),
                    ("X-GitHub-Delivery", "6f1a3c1e-0000-4000-8000-000000000001"),
                ],
                &payload,
            )
            .await
        }));
    }
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for t in tasks {
        *by_status.entry(t.await.unwrap().status).or_default() += 1;
    }
    let js = async_nats::jetstream::new(jetrun_harness::connect(&url).await);
    let stored = js
        .get_stream("JETRUN_WEBHOOKS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    println!("FAULTS webhook_storm deliveries={m} answers={by_status:?} stored={stored}");
    assert_eq!(stored, 1, "one stored webhook for one delivery id: {by_status:?}");
    assert!(
        by_status.keys().all(|s| (200..300).contains(s)),
        "every delivery acknowledged: {by_status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_fills_up_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("small.conf");
    // 24 MiB of file store for the whole server.
    std::fs::write(&conf, "jetstream { max_file_store: 25165824 }\n").unwrap();
    let nats = server(dir.path(), "n", vec!["-c".into(), conf.display().to_string()]);
    let url = nats.url();
    let client = jetrun_harness::connect(&url).await;
    let (store, _publisher) = open(client.clone(), None).await;
    let (_dev, addr) = dev(&url, dir.path(), "dev");
    let runs = dir.path().join("runs.txt");
    let js = async_nats::jetstream::new(client);

    // Fill it: raw webhook events (the WEBHOOKS stream keeps them 7 days).
    let chunk = bytes::Bytes::from(vec![b'x'; 256 * 1024]);
    let mut filled = false;
    for i in 0..400 {
        let ack = js
            .publish(format!("jetrun.webhook.github.fill{i}"), chunk.clone())
            .await
            .unwrap()
            .await;
        if let Err(e) = ack {
            println!("store full after {i} chunks of 256 KiB: {e}");
            filled = true;
            break;
        }
    }
    assert!(filled, "the store never filled");

    // Full: /ready says so, and a submission is `store-full` (503 + Retry-After).
    let ready = http(&addr, "GET", "/ready", &[], b"").await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.body.contains("store-full"), "{ready:?}");
    let sub = http(
        &addr,
        "POST",
        "/v1/jobs",
        &[("Content-Type", "application/json")],
        &job_body(&runs, 0),
    )
    .await;
    assert_eq!(sub.status, 503, "{sub:?}");
    assert!(sub.body.contains("store-full"), "{sub:?}");
    assert!(
        sub.headers.to_ascii_lowercase().contains("retry-after: 30"),
        "{sub:?}"
    );

    // Space comes back: everything works again.
    js.get_stream("JETRUN_WEBHOOKS")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http(&addr, "GET", "/ready", &[], b"").await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not ready after the purge: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut ledger = Ledger::default();
    for i in 0..scale(20, 200) {
        let code = (i % 3) as i32;
        let a = http(
            &addr,
            "POST",
            "/v1/jobs",
            &[("Content-Type", "application/json")],
            &job_body(&runs, code),
        )
        .await;
        ledger.submitted += 1;
        let id = serde_json::from_str::<serde_json::Value>(&a.body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string));
        match (a.status, id) {
            (201 | 202, Some(id)) => ledger.acknowledged.push(Submission { id, exit_code: code }),
            _ => panic!("submission after recovery refused: {a:?}"),
        }
    }
    check(
        "store_full_recovery",
        &store,
        &ledger,
        &runs,
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bounded_soak_memory_and_fds_stay_flat() {
    if !long_form() {
        println!("soak: long form only (JETRUN_CHAOS=long)");
        return;
    }
    let secs: u64 = std::env::var("JETRUN_CHAOS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let nats = server(dir.path(), "n", vec![]);
    let url = nats.url();
    let (store, publisher) = open(jetrun_harness::connect(&url).await, None).await;
    let runs = dir.path().join("runs.txt");
    let args = worker_args(&dir.path().join("w"), 16);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let w = Proc::spawn(&url, &args, &dir.path().join("w.log"), &[]);
    let (wpid, npid) = (w.pid().unwrap(), nats.pid().unwrap());
    let mut ledger = Ledger::default();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        for _ in 0..10 {
            submit_one(&store, &publisher, &mut ledger, &runs, i, Duration::from_secs(10)).await;
            i += 1;
        }
        if i % 100 == 0 {
            let s = (
                started.elapsed().as_secs(),
                faults::sample(wpid),
                faults::sample(npid),
            );
            println!("soak t={}s worker(rss KiB, fds)={:?} nats={:?}", s.0, s.1, s.2);
            samples.push(s);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    check("soak", &store, &ledger, &runs, Duration::from_secs(120)).await;
    // After a warm-up tenth, memory grows by less than 64 MiB and fds by less than 64.
    let warm = samples.len() / 10;
    if let (Some((_, Some(w0), Some(n0))), Some((_, Some(w1), Some(n1)))) =
        (samples.get(warm), samples.last())
    {
        println!("FAULTS soak worker {w0:?} -> {w1:?}; nats-server {n0:?} -> {n1:?}");
        assert!(
            w1.0 < w0.0 + 65536 && w1.1 < w0.1 + 64,
            "worker grows: {w0:?} -> {w1:?}"
        );
        assert!(n1.1 < n0.1 + 64, "nats-server fds grow: {n0:?} -> {n1:?}");
    }
}
