//! Job store throughput: transitions per second (admit → claim → running → succeeded,
//! 64 jobs in flight) beside raw KV puts per second on the same server in the same run.
//!
//! `cargo run --release -p jetrun-nats --example bench_store [-- JOBS [IN_FLIGHT]]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jetrun_core::job::Transition;
use jetrun_core::{JobRecord, JobSpec, Names};
use jetrun_harness::NatsServer;
use jetrun_nats::{JobStore, Topology};

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, ops: usize, elapsed: Duration, lat: Vec<Duration>) -> f64 {
    let rate = ops as f64 / elapsed.as_secs_f64();
    println!(
        "{name:<34} {ops:>7} ops in {:>6.2}s = {rate:>9.0} ops/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        elapsed.as_secs_f64(),
        pct(lat.clone(), 0.50).as_secs_f64() * 1e3,
        pct(lat, 0.99).as_secs_f64() * 1e3
    );
    rate
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let jobs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5_000);
    let in_flight: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let server = NatsServer::start().unwrap();
    let js = async_nats::jetstream::new(server.client().await);
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let store = JobStore::open(&js, &names, "/bench").await.unwrap();
    let spec = JobSpec::new("bench", "busybox", vec!["true".into()]);
    let sample = serde_json::to_vec(&JobRecord::new("x".into(), spec.clone(), None, None)).unwrap();
    println!("jobs={jobs} in_flight={in_flight} record_bytes={}", sample.len());

    // Baseline: raw KV puts of a record-sized value, same concurrency, same server.
    let kv = js.get_key_value(names.bucket_jobs()).await.unwrap();
    let ops = jobs * 4;
    let start = Instant::now();
    let lat: Vec<Duration> = futures::stream::iter(0..ops)
        .map(|i| {
            let kv = kv.clone();
            let body = bytes::Bytes::from(sample.clone());
            async move {
                let t = Instant::now();
                kv.put(format!("raw-{}", i % jobs), body).await.unwrap();
                t.elapsed()
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let raw = report("baseline: raw KV put", ops, start.elapsed(), lat);

    for (label, store) in [
        ("store transitions (+events)", store.clone()),
        ("store transitions (no events)", store.clone().without_events()),
    ] {
        let store = Arc::new(store);
        let prefix = label.len();
        let start = Instant::now();
        let lat: Vec<Vec<Duration>> = futures::stream::iter(0..jobs)
            .map(|i| {
                let store = store.clone();
                let spec = spec.clone();
                async move {
                    let id = format!("b{prefix}-{i}");
                    let mut l = Vec::with_capacity(4);
                    let t = Instant::now();
                    let adm = store.admit(JobRecord::new(id, spec, None, None)).await.unwrap();
                    l.push(t.elapsed());
                    let (mut rec, mut rev) = (adm.record().clone(), adm.revision());
                    for tr in [
                        Transition::Claim {
                            worker_id: "w".into(),
                            node_id: "n".into(),
                        },
                        Transition::Started { task_ref: "t".into() },
                        Transition::Exited { exit_code: 0 },
                    ] {
                        let t = Instant::now();
                        (rec, rev) = store.transition_at(&rec, rev, &tr).await.unwrap();
                        l.push(t.elapsed());
                    }
                    l
                }
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
        let rate = report(
            label,
            jobs * 4,
            start.elapsed(),
            lat.into_iter().flatten().collect(),
        );
        println!("{:<34} ratio to raw KV puts: {:.2}", "", rate / raw);
    }
}
