//! Webhooks per second and latency through the whole path (HTTP, HMAC, schema check,
//! dedupe lookup, publish with ack, dedupe write) with the real GitHub payloads and 64
//! concurrent clients, beside the raw JetStream publish rate of the same payloads on the
//! same server in the same run; then p50/p99 at a fixed offered rate (open loop).
//!
//! `cargo run --release -p jetrun-ingest --example bench_ingest [-- N RATE SECONDS]`
//!
//! Run as is, it measures the cost of observability (`obs`, shared with
//! `bench_lifecycle`): `BENCH_ROUNDS` (3) pairs of runs as child processes, observability
//! off and on (span export to a local OTLP sink, `/metrics` scraped every second over
//! HTTP, EMF every second), and their webhooks/s side by side. `BENCH_OBS=off` (or `on`)
//! runs one mode alone, as the benchmark did before.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

// One copy of the comparison for both benchmarks.
#[path = "../../dispatch/examples/obs/mod.rs"]
mod obs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use jetrun_core::{Envelope, Names};
use jetrun_ingest::{ApiTokens, Config, Credentials, WebhookSecrets, auth::sign};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

const SECRET: &[u8] = b"bench-secret";
const CLIENTS: usize = 64;

struct Payload {
    event: String,
    body: bytes::Bytes,
    sig: String,
}

fn payloads() -> Vec<Payload> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/github-webhooks"
    ))
    .unwrap()
    {
        let dir = dir.unwrap();
        let event = dir.file_name().to_string_lossy().to_string();
        if !dir.file_type().unwrap().is_dir() || event == "ping" {
            continue;
        }
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let body = std::fs::read(f.unwrap().path()).unwrap();
            out.push(Payload {
                event: event.clone(),
                sig: sign(SECRET, &body),
                body: body.into(),
            });
        }
    }
    out.sort_by(|a, b| a.event.cmp(&b.event));
    out
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn report(name: &str, n: usize, elapsed: Duration, lat: &mut [Duration]) {
    println!(
        "{name:<44} {n:>7} msgs  {:>9.0} msg/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        n as f64 / elapsed.as_secs_f64(),
        pct(lat, 0.50),
        pct(lat, 0.99)
    );
}

fn main() {
    match obs::mode() {
        None => obs::compare("webhooks through ingest", "webhooks/s", "webhook", |l| {
            l.starts_with("ingest:")
                || l.starts_with("ingest at")
                || l.starts_with("CPU per")
                || l.starts_with("metrics:")
        }),
        Some(on) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(bench(on)),
    }
}

async fn bench(observability: bool) {
    let _telemetry = obs::init(observability, "jetrun-bench-ingest");
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let rate: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2_000);
    let secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);

    let server = jetrun_harness::NatsServer::start().unwrap();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    Topology::apply_default(&js).await;
    let ctx = jetrun_host::Context::from_client(client.clone(), Names::default())
        .await
        .unwrap();
    let creds = Credentials {
        webhook_secrets: WebhookSecrets::parse(std::str::from_utf8(SECRET).unwrap()),
        api_tokens: ApiTokens::default(),
        ..Credentials::default()
    };
    let shutdown = CancellationToken::new();
    if observability && obs::metrics_on() {
        // `--metrics-listen` as a deployment runs it, scraped every second over HTTP.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        tokio::spawn(jetrun_ingest::serve(
            listener,
            jetrun_ingest::metrics_router(ctx.clone()),
            shutdown.clone(),
        ));
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tick = tokio::time::interval(obs::SCRAPE_EVERY);
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tick.tick() => {
                        let r = http.get(&url).send().await.unwrap();
                        assert!(r.status().is_success());
                        std::hint::black_box(r.bytes().await.unwrap());
                    }
                }
            }
        });
    }
    let ingest = jetrun_ingest::Ingest::new(ctx, Config::default(), creds)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/github", listener.local_addr().unwrap());
    tokio::spawn(jetrun_ingest::serve(
        listener,
        jetrun_ingest::router(ingest),
        shutdown.clone(),
    ));
    let payloads = Arc::new(payloads());
    let avg = payloads.iter().map(|p| p.body.len()).sum::<usize>() / payloads.len();
    println!(
        "{} real payloads (average {avg} bytes), {CLIENTS} concurrent clients, nats-server on this machine",
        payloads.len()
    );

    // Baseline: raw JetStream publish (with ack) of the same payloads and headers.
    let names = Names::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (js, payloads, next, lat, names) = (
            js.clone(),
            payloads.clone(),
            next.clone(),
            lat.clone(),
            names.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let p = &payloads[i % payloads.len()];
                let env = Envelope::new("dev.jetrun.webhook.github.v1", "/bench").with_id(format!("raw-{i}"));
                let t = Instant::now();
                js.publish_with_headers(
                    names.webhook("github", &p.event),
                    jetrun_nats::events::to_header_map(&env),
                    p.body.clone(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
                mine.push(t.elapsed());
            }
            lat.lock().await.extend(mine);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let raw_rate = n as f64 / elapsed.as_secs_f64();
    report(
        "baseline: raw JetStream publish+ack",
        n,
        elapsed,
        &mut lat.lock().await,
    );

    // Whole path, closed loop: 64 clients as fast as they go.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // CPU per webhook over the closed loop: this process (ingest and the 64 HTTP clients
    // that load it) and its nats-server. The clients' share is the same in both modes.
    let cpu = obs::Cpu::start();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, payloads, next, lat, errors) = (
            http.clone(),
            url.clone(),
            payloads.clone(),
            next.clone(),
            lat.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let p = &payloads[i % payloads.len()];
                let t = Instant::now();
                let r = post(&http, &url, p, &format!("closed-{i}")).await;
                mine.push(t.elapsed());
                if r != 202 {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            lat.lock().await.extend(mine);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    cpu.report(n as u64, "webhook");
    let ingest_rate = n as f64 / elapsed.as_secs_f64();
    report(
        "ingest: HTTP+HMAC+schema+dedupe+publish+ack",
        n,
        elapsed,
        &mut lat.lock().await,
    );
    println!(
        "  non-202 answers: {}",
        errors.load(std::sync::atomic::Ordering::Relaxed)
    );

    // Open loop at a fixed offered rate.
    let total = (rate * secs) as usize;
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let (http, url, payloads, lat, errors) = (
            http.clone(),
            url.clone(),
            payloads.clone(),
            lat.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let p = &payloads[i % payloads.len()];
            let t = Instant::now();
            let r = post(&http, &url, p, &format!("open-{i}")).await;
            let d = t.elapsed();
            if r != 202 {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            lat.lock().await.push(d);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    report(
        &format!("ingest at {rate}/s offered (open loop, {secs} s)"),
        total,
        elapsed,
        &mut lat.lock().await,
    );
    println!(
        "  non-202 answers so far: {}",
        errors.load(std::sync::atomic::Ordering::Relaxed)
    );
    if observability {
        obs::metrics_cost();
    }
    obs::result(ingest_rate, raw_rate, (n + total) as u64);
    shutdown.cancel();
}

async fn post(http: &reqwest::Client, url: &str, p: &Payload, delivery: &str) -> u16 {
    match http
        .post(url)
        .header("X-GitHub-Event", &p.event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", &p.sig)
        .header("Content-Type", "application/json")
        .body(p.body.clone())
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

struct Topology;
impl Topology {
    async fn apply_default(js: &jetstream::Context) {
        jetrun_nats::Topology::new(Names::default())
            .apply(js)
            .await
            .unwrap();
    }
}
