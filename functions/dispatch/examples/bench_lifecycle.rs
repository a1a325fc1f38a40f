//! Lifecycle throughput: jobs/s from submit to `succeeded`, and p50/p99 submit→running
//! latency, with the benchmark-only `NullRunner` (launches nothing), beside raw KV put/s
//! on the same server in the same run.
//!
//! `cargo run --release -p jetrun-dispatch --example bench_lifecycle`
//! (`BENCH_JOBS`, default 5000; `BENCH_IN_FLIGHT`, default 256 concurrent submitters;
//! `BENCH_PACED`, default 200 jobs submitted one at a time for unloaded latency;
//! `BENCH_NO_CALLBACKS` turns settle's callback consumer off; `BENCH_COUNT=1` also
//! subscribes a second connection to every subject and prints the server operations per
//! job by kind — the per-stage table of docs/bench-lifecycle.md; it loads the server, so
//! its jobs/s are not the benchmark's).
//!
//! Run as is, it measures the cost of observability ([`obs`]): `BENCH_ROUNDS` (3) pairs of
//! runs as child processes, observability off and on, and their jobs/s side by side.
//! `BENCH_OBS=off` (or `on`) runs one mode alone, as the benchmark did before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod obs;

// The allocator the `jetrun` binary ships with, so the benchmark measures what runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jetrun_core::{JobSpec, Names};
use jetrun_nats::{EventPublisher, Topology};

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    match obs::mode() {
        None => obs::compare("job lifecycle (NullRunner)", "jobs/s", "job", |l| {
            l.starts_with("lifecycle")
                || l.starts_with("CPU per")
                || l.starts_with("metrics:")
                || l.starts_with("submit→running latency under")
        }),
        Some(on) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(bench(on)),
    }
}

async fn bench(observability: bool) {
    let _telemetry = obs::init(observability, "jetrun-bench-lifecycle");
    let jobs = env_usize("BENCH_JOBS", 5000);
    let in_flight = env_usize("BENCH_IN_FLIGHT", 256);
    let server = jetrun_harness::NatsServer::start().unwrap();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();

    // Baseline: raw KV puts, same concurrency, same server.
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "bench-raw".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let puts = jobs * 4;
    let t = Instant::now();
    futures::stream::iter(0..puts)
        .map(|i| {
            let kv = kv.clone();
            async move {
                kv.put(format!("k{i}"), bytes::Bytes::from_static(b"{\"v\":1}"))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<_>>()
        .await;
    let kv_rate = puts as f64 / t.elapsed().as_secs_f64();

    // The pipeline: dispatch + node agent (NullRunner) + settle, in this process.
    let ctx = jetrun_host::Context::from_client(client.clone(), names.clone())
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    if observability && obs::metrics_on() {
        // What a Prometheus scrape of `/metrics` does: gauges refreshed from NATS, then the
        // registry rendered.
        let (ctx, sd) = (ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(obs::SCRAPE_EVERY);
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tick.tick() => {
                        jetrun_host::refresh_metrics(&ctx).await;
                        std::hint::black_box(jetrun_telemetry::metrics::render());
                    }
                }
            }
        });
    }
    let runner: Arc<dyn jetrun_runner::Runner> = Arc::new(jetrun_runner::null::NullRunner::new());
    let (agent, _, agent_task) = jetrun_agent::Agent::start(
        ctx.clone(),
        runner,
        jetrun_agent::Config::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let dispatcher = jetrun_dispatch::Dispatcher::new(
        ctx.clone(),
        agent,
        jetrun_dispatch::Config {
            max_concurrent_jobs: 1_000_000,
            concurrency: 256,
            ..Default::default()
        },
    );
    let d = tokio::spawn(dispatcher.run("default".into(), shutdown.clone()));
    let callbacks = std::env::var("BENCH_NO_CALLBACKS").is_err();
    let settle = jetrun_settle::Settle::new(
        ctx.clone(),
        jetrun_settle::Config {
            concurrency: 256,
            callbacks,
            ..Default::default()
        },
    );
    let s = tokio::spawn(settle.run(shutdown.clone()));

    // Observe state changes (core NATS subscription on the event subjects).
    let submitted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let running_lat: Arc<Mutex<Vec<Duration>>> = Arc::default();
    // Submit→`queued` and submit→`launching` (the paced jobs' breakdown of the latency).
    let stage_lat: Arc<Mutex<[Vec<Duration>; 2]>> = Arc::default();
    let mut sub = client.subscribe(names.job_event_all()).await.unwrap();
    client.flush().await.unwrap();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    {
        let submitted = submitted.clone();
        let running_lat = running_lat.clone();
        let stage_lat = stage_lat.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let v: serde_json::Value = match serde_json::from_slice(&m.payload) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let id = v["job_id"].as_str().unwrap_or_default().to_string();
                match v["to"].as_str() {
                    Some(stage @ ("queued" | "launching")) => {
                        let t0 = submitted.lock().unwrap().get(&id).copied();
                        if let Some(t0) = t0 {
                            stage_lat.lock().unwrap()[usize::from(stage == "launching")].push(t0.elapsed());
                        }
                    }
                    Some("running") => {
                        let t0 = submitted.lock().unwrap().get(&id).copied();
                        if let Some(t0) = t0 {
                            running_lat.lock().unwrap().push(t0.elapsed());
                        }
                    }
                    Some("succeeded") => {
                        let _ = done_tx.send(());
                    }
                    _ => {}
                }
            }
        });
    }

    // Every operation the pipeline sends to the server, by kind (BENCH_COUNT).
    let counts: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    if std::env::var_os("BENCH_COUNT").is_some() {
        let spy = server.client().await;
        let mut all = spy.subscribe(">").await.unwrap();
        spy.flush().await.unwrap();
        let counts = counts.clone();
        tokio::spawn(async move {
            let _spy = spy;
            while let Some(m) = all.next().await {
                *counts.lock().unwrap().entry(kind_of(&m.subject)).or_insert(0) += 1;
            }
        });
    }
    let before = client.statistics();
    let (out0, in0) = (
        before.out_messages.load(std::sync::atomic::Ordering::Relaxed),
        before.in_messages.load(std::sync::atomic::Ordering::Relaxed),
    );

    let store = ctx.store.clone();
    let publisher = EventPublisher::new(js.clone(), "/bench");
    let cpu = obs::Cpu::start();
    let t = Instant::now();
    let submitter = {
        let submitted = submitted.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..jobs)
                .map(|i| {
                    let store = store.clone();
                    let publisher = publisher.clone();
                    let submitted = submitted.clone();
                    async move {
                        let id = uuid_like(i);
                        let mut spec = JobSpec::new("default", "none", vec!["true".into()]);
                        spec.idempotency_key = Some(id.clone());
                        let jid = jetrun_core::job::job_id_for_key("default", &id);
                        submitted.lock().unwrap().insert(jid, Instant::now());
                        jetrun_nats::submit::submit(&store, &publisher, spec, None, None)
                            .await
                            .unwrap();
                    }
                })
                .buffer_unordered(in_flight)
                .collect::<Vec<_>>()
                .await;
            t.elapsed()
        })
    };
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while done < jobs && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(30), done_rx.recv()).await {
            Ok(Some(())) => done += 1,
            _ => break,
        }
    }
    let elapsed = t.elapsed();
    cpu.report(done as u64, "job");
    let submit_time = submitter.await.unwrap();
    // Settle the last acks before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = client.statistics();
    let out_ops = after.out_messages.load(std::sync::atomic::Ordering::Relaxed) - out0;
    let in_ops = after.in_messages.load(std::sync::atomic::Ordering::Relaxed) - in0;
    let mut lat = running_lat.lock().unwrap().clone();
    let p50 = pct(&mut lat, 0.50);
    let p99 = pct(&mut lat, 0.99);
    let rate = done as f64 / elapsed.as_secs_f64();
    // Unloaded latency: one job at a time, each waited for until it runs.
    let paced = env_usize("BENCH_PACED", 200);
    running_lat.lock().unwrap().clear();
    *stage_lat.lock().unwrap() = Default::default();
    let publisher = EventPublisher::new(js.clone(), "/bench");
    for i in 0..paced {
        let key = format!("paced-{}-{i}", std::process::id());
        let mut spec = JobSpec::new("default", "none", vec!["true".into()]);
        spec.idempotency_key = Some(key.clone());
        submitted
            .lock()
            .unwrap()
            .insert(jetrun_core::job::job_id_for_key("default", &key), Instant::now());
        jetrun_nats::submit::submit(&ctx.store, &publisher, spec, None, None)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while running_lat.lock().unwrap().len() <= i && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let mut quiet = running_lat.lock().unwrap().clone();
    let q50 = pct(&mut quiet, 0.50);
    let q99 = pct(&mut quiet, 0.99);
    let [mut queued_lat, mut launching_lat] = stage_lat.lock().unwrap().clone();
    // One raw KV put at a time: the round trip every step above pays.
    let mut rtt = Vec::new();
    for i in 0..paced {
        let t = Instant::now();
        kv.put(format!("rtt{i}"), bytes::Bytes::from_static(b"{\"v\":1}"))
            .await
            .unwrap();
        rtt.push(t.elapsed());
    }

    println!(
        "lifecycle (NullRunner): {done}/{jobs} jobs submitted→succeeded in {elapsed:.2?}: {rate:.0} jobs/s"
    );
    println!(
        "submit→running latency under that load: p50 {p50:.2?}  p99 {p99:.2?}  ({} samples)",
        lat.len()
    );
    println!(
        "submit→running latency, one job at a time: p50 {q50:.2?}  p99 {q99:.2?}  ({} samples)",
        quiet.len()
    );
    println!(
        "  of which submit→queued p50 {:.2?}, submit→launching p50 {:.2?}; one raw KV put at a time p50 {:.2?}",
        pct(&mut queued_lat, 0.50),
        pct(&mut launching_lat, 0.50),
        pct(&mut rtt, 0.50)
    );
    println!(
        "submissions alone (admit + publish): {jobs} in {submit_time:.2?} ({:.0}/s, concurrent with the pipeline)",
        jobs as f64 / submit_time.as_secs_f64()
    );
    println!(
        "completion callbacks consumer: {}",
        if callbacks {
            "on"
        } else {
            "off (BENCH_NO_CALLBACKS)"
        }
    );
    println!(
        "pipeline client: {:.1} messages to the server and {:.1} from it per job (publishes, requests, acks; acks, replies, deliveries)",
        out_ops as f64 / done.max(1) as f64,
        in_ops as f64 / done.max(1) as f64
    );
    let counts = counts.lock().unwrap().clone();
    if !counts.is_empty() {
        println!("operations per job by kind (BENCH_COUNT):");
        for (k, n) in &counts {
            println!("  {:>6.2}  {k}", *n as f64 / done.max(1) as f64);
        }
    }
    println!("baseline raw KV put: {kv_rate:.0} puts/s ({puts} puts, {in_flight} in flight)");
    println!("ratio: one job costs {:.1} raw puts", kv_rate / rate.max(1e-9));
    if observability {
        obs::metrics_cost();
    }
    obs::result(rate, kv_rate, (done + quiet.len()) as u64);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        let _ = d.await;
        let _ = s.await;
        let _ = agent_task.await;
    })
    .await;
}

/// The kind of server operation a subject is (BENCH_COUNT): job ids and inboxes left out.
fn kind_of(subject: &str) -> String {
    let t: Vec<&str> = subject.split('.').collect();
    match t.as_slice() {
        ["$KV", bucket, ..] => format!("KV write {bucket}"),
        ["$JS", "API", "DIRECT", "GET", stream, ..] => format!("direct get {stream}"),
        ["$JS", "API", "STREAM", "PURGE", stream, ..] => format!("purge {stream}"),
        ["$JS", "API", "CONSUMER", "MSG", "NEXT", stream, consumer, ..] => {
            format!("pull request {stream}/{consumer}")
        }
        ["$JS", "ACK", stream, consumer, ..] => format!("ack {stream}/{consumer}"),
        ["$JS", "API", rest @ ..] => format!("JS API {}", rest.first().unwrap_or(&"")),
        [p, "job", kind, ..] => format!("publish {p}.job.{kind}"),
        [p, "task", phase, ..] => format!("publish {p}.task.{phase}"),
        ["_INBOX", ..] => "replies and deliveries (_INBOX)".into(),
        _ => t.iter().take(2).copied().collect::<Vec<_>>().join("."),
    }
}

fn uuid_like(i: usize) -> String {
    format!("bench-{}-{i}", std::process::id())
}
