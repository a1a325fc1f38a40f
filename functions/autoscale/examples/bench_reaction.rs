#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Reaction time: from a backlog crossing a service's activation threshold (the PubAck
//! of the message that crosses it) to the scale signal asking for replicas, at the
//! default 250 ms tick. Baseline in the same run on the same server: a raw JetStream
//! publish round-trip (publish + PubAck).
//!
//! `cargo run --release -p jetrun-autoscale --example bench_reaction [TRIALS]`

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use jetrun_autoscale::{Autoscaler, Config, declare};
use jetrun_core::Names;
use jetrun_core::scale::{BackendKind, ScaleSignal, ScaleSpec, Strategy};
use jetrun_harness::NatsServer;
use jetrun_nats::Topology;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    println!(
        "{name:<44} n={:<5} p50={:>9.3?} p99={:>9.3?} max={:>9.3?} mean={:>9.3?}",
        v.len(),
        pct(&v, 0.50),
        pct(&v, 0.99),
        v[v.len() - 1],
        mean
    );
}

async fn until_signal(sub: &mut async_nats::Subscriber, pred: impl Fn(&ScaleSignal) -> bool) -> Instant {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("no signal in 10 s")
            .unwrap();
        let s: ScaleSignal = serde_json::from_slice(&m.payload).unwrap();
        if pred(&s) {
            return Instant::now();
        }
    }
}

#[tokio::main]
async fn main() {
    let trials: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(40);
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let kv = js.get_key_value(names.bucket_scale()).await.unwrap();

    // Baseline: raw publish round-trips on the same server.
    let mut raw = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        js.publish("jetrun.scale.request.bench-baseline", Bytes::from_static(b"{}"))
            .await
            .unwrap()
            .await
            .unwrap();
        raw.push(t.elapsed());
    }

    let activation = 50u64;
    let mut spec = ScaleSpec::new("bench", "default", 0, 10, 10);
    spec.backend = BackendKind::Signal;
    spec.strategy = Strategy::Infra;
    spec.activation = activation;
    spec.stabilization_seconds = 0;
    spec.idle_seconds = 0;
    declare(&kv, &spec).await.unwrap();

    let cfg = Config::default();
    let tick = cfg.tick;
    let scaler = Autoscaler::with_parts(&js, &names, "bench", cfg).await.unwrap();
    let stop = CancellationToken::new();
    let h = tokio::spawn(scaler.run(stop.clone()));
    let mut sub = client.subscribe(names.scale_signal("bench")).await.unwrap();
    until_signal(&mut sub, |_| true).await;

    let mut stream = js.get_stream(names.stream_jobs()).await.unwrap();
    let mut reaction = Vec::new();
    for i in 0..trials {
        // De-phase from the tick so every point of it is sampled.
        tokio::time::sleep(tick.mul_f64((i as f64 * 0.618_034) % 1.0)).await;
        // Just under the threshold: nothing happens.
        for _ in 0..activation - 1 {
            js.publish(names.job_submit("default"), Bytes::from_static(b"{}"))
                .await
                .unwrap()
                .await
                .unwrap();
        }
        // The message that crosses it.
        js.publish(names.job_submit("default"), Bytes::from_static(b"{}"))
            .await
            .unwrap()
            .await
            .unwrap();
        let crossed = Instant::now();
        let seen = until_signal(&mut sub, |s| s.desired > 0).await;
        reaction.push(seen - crossed);
        // Drain and wait to be back at zero.
        stream.purge().await.unwrap();
        until_signal(&mut sub, |s| s.desired == 0).await;
    }
    let _ = stream.info().await;
    stop.cancel();
    let _ = h.await;

    println!("autoscale reaction benchmark (tick {tick:?}, activation {activation}, {trials} trials)");
    report("baseline: raw JetStream publish round-trip", raw);
    report("backlog crosses threshold -> signal", reaction);
}
