//! The ECS launch pipeline against moto: launches/s through `EcsRunner::launch`
//! (adoption check + paced `RunTask`), and how closely the pacer holds a configured rate,
//! in-process and shared by several "workers" through a JetStream KV bucket.
//!
//! `cargo run --release -p jetrun-runner --features ecs --example bench_ecs_launch`
//! (`BENCH_JOBS`, default 300, unpaced launches; `BENCH_PACED`, default 200 launches
//! after the burst at `BENCH_RATE`, default 20/s; `BENCH_WORKERS`, default 4, sharing the
//! KV bucket). Needs `moto_server` and `nats-server` (scripts/setup.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/moto.rs"]
mod moto;
#[path = "../tests/support/proxy.rs"]
mod proxy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jetrun_core::JobSpec;
use jetrun_runner::ecs::{EcsConfig, EcsRunner, KvTokenBucket, Pacer, PacerConfig};
use jetrun_runner::{LaunchRequest, Runner};

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

/// Rate, p50/p99/max gap and the most launches in any 1 s window, of sorted times.
fn pace_stats(at: &[Instant]) -> (f64, Duration, Duration, Duration, usize) {
    let span = at[at.len() - 1].duration_since(at[0]).as_secs_f64();
    let rate = (at.len() - 1) as f64 / span;
    let mut gaps: Vec<Duration> = at.windows(2).map(|w| w[1].duration_since(w[0])).collect();
    let max = gaps.iter().copied().max().unwrap_or_default();
    let p50 = pct(&mut gaps, 0.50);
    let p99 = pct(&mut gaps, 0.99);
    let window = (0..at.len())
        .map(|i| {
            at[i..]
                .iter()
                .take_while(|b| b.duration_since(at[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    (rate, p50, p99, max, window)
}

fn cfg(url: &str, pacer: PacerConfig) -> EcsConfig {
    EcsConfig {
        cluster: "jobs".into(),
        endpoint_url: Some(url.into()),
        task_definition: Some("job".into()),
        subnets: vec!["subnet-0a".into()],
        pacer,
        ..Default::default()
    }
}

fn req(i: usize, tag: &str) -> LaunchRequest {
    let spec = JobSpec::new("default", "busybox", vec!["true".into()]);
    LaunchRequest::new(&format!("{tag}-{i}"), 1, spec, None)
}

#[tokio::main]
async fn main() {
    let jobs = env_usize("BENCH_JOBS", 300);
    let paced = env_usize("BENCH_PACED", 200);
    let rate = env_usize("BENCH_RATE", 20) as f64;
    let workers = env_usize("BENCH_WORKERS", 4).max(1);
    let m = moto::start().await;
    let p = proxy::Proxy::start(&m.url).await;
    moto::setup(&moto::client(&p.url)).await;

    // 1. Throughput: no pacing, 32 launches in flight.
    let open = PacerConfig {
        capacity: u32::MAX,
        refill_per_second: 1e9,
        shared_bucket: None,
    };
    let r = Arc::new(EcsRunner::with_client(cfg(&p.url, open), moto::client(&p.url)).unwrap());
    let t = Instant::now();
    futures::stream::iter(0..jobs)
        .map(|i| {
            let r = r.clone();
            async move { r.launch(&req(i, "open")).await.unwrap() }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let el = t.elapsed();
    let calls = p.seen("RunTask").len() + p.seen("ListTasks").len() + p.seen("DescribeTasks").len();
    println!(
        "unpaced: {jobs} launches in {:.2} s = {:.0} launches/s ({:.0} ECS calls/s; moto is the bound)",
        el.as_secs_f64(),
        jobs as f64 / el.as_secs_f64(),
        calls as f64 / el.as_secs_f64()
    );

    // 2. In-process pacer at `rate`. The burst (100) is drained first: moto needs over a
    // second for 100 launches, during which the bucket refills, which would blur the rate.
    let before = p.seen("RunTask").len();
    let pc = PacerConfig {
        capacity: 100,
        refill_per_second: rate,
        shared_bucket: None,
    };
    let bucket = Arc::new(jetrun_runner::ecs::TokenBucket::new(&pc).unwrap());
    for _ in 0..100 {
        bucket.acquire().await.unwrap();
    }
    let r = Arc::new(
        EcsRunner::with_client(cfg(&p.url, pc), moto::client(&p.url))
            .unwrap()
            .with_pacer(bucket),
    );
    let n = paced;
    futures::stream::iter(0..n)
        .map(|i| {
            let r = r.clone();
            async move { r.launch(&req(i, "paced")).await.unwrap() }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut at: Vec<Instant> = p.seen("RunTask")[before..].iter().map(|s| s.at).collect();
    at.sort();
    // The first launches find a few tokens refilled while their adoption checks ran (the
    // bucket works as it should); the steady state starts after them.
    let (got, p50, p99, max, win) = pace_stats(&at[10..]);
    let (_, _, _, _, win_all) = pace_stats(&at);
    println!("in-process pacer: most RunTasks in any 1 s including the start: {win_all}");
    println!(
        "in-process pacer at {rate}/s: {paced} launches with the burst drained at {got:.2}/s, gap p50 {:.1} ms p99 {:.1} ms max {:.1} ms, most in any 1 s: {win}",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );

    // 3. Shared KV pacer: `workers` processes' worth of buckets on one key.
    let nats = jetrun_harness::NatsServer::start().unwrap();
    let kvc = PacerConfig {
        capacity: 100,
        refill_per_second: rate,
        shared_bucket: Some("jetrun-pacer".into()),
    };
    let mut pacers = Vec::new();
    for _ in 0..workers {
        let js = async_nats::jetstream::new(nats.client().await);
        pacers.push(Arc::new(
            KvTokenBucket::open(&js, "jetrun-pacer", "ecs-launch.bench", &kvc)
                .await
                .unwrap(),
        ));
    }
    for _ in 0..100 {
        pacers[0].acquire().await.unwrap();
    }
    let mut hs = Vec::new();
    for i in 0..n {
        let pc = pacers[i % workers].clone();
        hs.push(tokio::spawn(async move {
            pc.acquire().await.unwrap();
            Instant::now()
        }));
    }
    let mut at = Vec::new();
    for h in hs {
        at.push(h.await.unwrap());
    }
    at.sort();
    let (got, p50, p99, max, win) = pace_stats(&at);
    println!(
        "KV-shared pacer at {rate}/s over {workers} workers: {paced} permits with the burst drained at {got:.2}/s, gap p50 {:.1} ms p99 {:.1} ms max {:.1} ms, most in any 1 s: {win}",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    let _ = r.list().await;
}
