//! Recovery time: from the SIGKILL of a worker's node (worker, shims, `runc run` and
//! containers) to every one of its jobs terminal, with the default settings and with the
//! fastest safe ones, in two scenarios:
//!
//! - `takeover`: the node does not come back; another worker, already running, runs the
//!   jobs again once their leases expire;
//! - `restart`: the node comes back at once over the same data directory; its agent finds
//!   the dead tasks (`lost`, no status anywhere) and the jobs are retried without waiting
//!   for a lease.
//!
//! Each job's first attempt hangs (`sleep 600`) so it is surely mid-flight at the kill; its
//! second exits 0 at once, so the time measured is recovery, not the job's own work.
//!
//! ```sh
//! cargo build -p jetrun && cargo run --release -p jetrun-e2e --example bench_recovery
//! # JETRUN_BENCH_JOBS (8), JETRUN_BENCH_RUNS (3), JETRUN_BENCH_RUNNER (oci)
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/node/mod.rs"]
mod node;

use std::time::{Duration, Instant};

use common::Env;
use jetrun_core::{JobSpec, JobStatus};
use node::Node;

/// `jetrun worker` defaults: lease 10 s renewed every 3 s, sweep 5 s, retry base 2 s.
const DEFAULTS: &[&str] = &[];
/// The fastest settings we call safe: a 3 s lease renewed every second survives two missed
/// renewals (a 2 s stall); sweeps every second; retries after 100–200 ms.
const FASTEST: &[&str] = &[
    "--lease-ttl",
    "3s",
    "--lease-renew",
    "1s",
    "--sweep-every",
    "1s",
    "--retry-base",
    "200ms",
];

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One run: seconds from the kill to every job terminal.
async fn run(scenario: &str, flags: &[&str], jobs: usize, runner: &str) -> f64 {
    let env = Env::start().await;
    let dir_a = env.dir.path().join("a");
    let mut a = Node::spawn(&env, &dir_a, runner, "node-a", flags);
    let image = if runner == "oci" { "busybox" } else { "host" };
    let mut ids = Vec::new();
    for _ in 0..jobs {
        let spec = JobSpec::new(
            "default",
            image,
            vec![
                "sh".into(),
                "-c".into(),
                r#"if [ "$JETRUN_ATTEMPT" = 1 ]; then sleep 600; fi; exit 0"#.into(),
            ],
        );
        ids.push(env.submit(spec).await);
    }
    for id in &ids {
        env.wait_for(id, Duration::from_secs(60), "running", |r| {
            r.status == JobStatus::Running
        })
        .await;
    }
    let _b = (scenario == "takeover")
        .then(|| Node::spawn(&env, &env.dir.path().join("b"), runner, "node-b", flags));
    let t0 = Instant::now();
    a.kill_all();
    if scenario == "restart" {
        a.start();
    }
    let recs = env.wait_terminal(&ids, Duration::from_secs(180)).await;
    let took = t0.elapsed().as_secs_f64();
    for r in &recs {
        assert_eq!(
            (r.status, r.attempt),
            (JobStatus::Succeeded, 2),
            "every job succeeds on its second attempt: {r:?}"
        );
    }
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let jobs = env_num("JETRUN_BENCH_JOBS", 8);
    let runs = env_num("JETRUN_BENCH_RUNS", 3);
    let runner = std::env::var("JETRUN_BENCH_RUNNER").unwrap_or_else(|_| "oci".into());
    println!("recovery of {jobs} jobs after the SIGKILL of their node ({runner} runner), {runs} runs each");
    println!(
        "{:<10} {:<9} {:>8} {:>8} {:>8}",
        "scenario", "settings", "min s", "median s", "max s"
    );
    for scenario in ["takeover", "restart"] {
        for (name, flags) in [("default", DEFAULTS), ("fastest", FASTEST)] {
            let mut t = Vec::new();
            for _ in 0..runs {
                t.push(run(scenario, flags, jobs, &runner).await);
            }
            t.sort_by(f64::total_cmp);
            println!(
                "{scenario:<10} {name:<9} {:>8.2} {:>8.2} {:>8.2}",
                t[0],
                t[t.len() / 2],
                t[t.len() - 1]
            );
        }
    }
}
