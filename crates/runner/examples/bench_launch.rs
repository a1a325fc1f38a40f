//! Container launch benchmark: launch-to-exit of busybox `true` through [`OciRunner`]
//! (launch + wait + remove) beside `runc run` invoked directly on an equivalent bundle, in
//! the same run, interleaved so both see the same machine load.
//!
//! ```text
//! cargo run --release -p jetrun-runner --example bench_launch [N]   # as root, N=50
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jetrun_core::JobSpec;
use jetrun_runner::{LaunchRequest, OciConfig, OciRunner, Runner, TaskStatus};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(name: &str, mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let total: Duration = v.iter().sum();
    let (p50, p99) = (pct(&v, 0.5), pct(&v, 0.99));
    println!(
        "{name:<28} n={:<4} p50={:>7.2} ms  p99={:>7.2} ms  mean={:>7.2} ms  throughput={:>6.1}/s",
        v.len(),
        ms(p50),
        ms(p99),
        ms(total / v.len() as u32),
        v.len() as f64 / total.as_secs_f64()
    );
    (p50, p99)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let runner = OciRunner::new(OciConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    runner
        .probe()
        .await
        .expect("OCI works here (run as root with runc installed)");

    // The baseline bundle: the very config jetrun writes, with its own /work.
    let mut req = LaunchRequest::new(
        "bench-template",
        1,
        JobSpec::new("bench", "busybox", vec!["true".into()]),
        None,
    );
    req.token = "bench-template".into();
    let t = runner.launch(&req).await.unwrap();
    runner.wait(&t).await.unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(runner.tasks_dir().join(&t).join("bundle/config.json")).unwrap(),
    )
    .unwrap();
    runner.remove(&t).await.unwrap();
    let base = dir.path().join("baseline");
    std::fs::create_dir_all(base.join("work")).unwrap();
    for m in config["mounts"].as_array_mut().unwrap() {
        if m["destination"] == "/work" {
            m["source"] = serde_json::json!(base.join("work"));
        }
    }
    // The baseline is bare runc running `true` as PID 1: without jetrun's init, status
    // wrapper and status tmpfs, whose cost is part of what is measured.
    config["mounts"].as_array_mut().unwrap().retain(|m| {
        !m["destination"]
            .as_str()
            .unwrap_or("")
            .starts_with("/dev/.jetrun")
    });
    config["process"]["args"] = serde_json::json!(["true"]);
    config["linux"]["cgroupsPath"] = serde_json::json!("jetrun/bench-baseline");
    std::fs::write(
        base.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let runc_root = dir.path().join("runc-baseline");
    let out = std::fs::File::create(base.join("out.log")).unwrap();

    let (mut ours, mut bare) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Warm-up of both paths (page cache, runc binary).
    for i in 0..n + 3 {
        let t0 = Instant::now();
        let st = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["run", "--bundle"])
            .arg(&base)
            .arg(format!("bare-{i}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out.try_clone().unwrap())
            .status()
            .unwrap();
        let d = t0.elapsed();
        assert!(st.success());

        let mut req = LaunchRequest::new(
            "bench",
            i as u32 + 1,
            JobSpec::new("bench", "busybox", vec!["true".into()]),
            None,
        );
        req.token = format!("bench-{i}");
        let t0 = Instant::now();
        let t = runner.launch(&req).await.unwrap();
        let s = runner.wait(&t).await.unwrap();
        runner.remove(&t).await.unwrap();
        let d2 = t0.elapsed();
        assert_eq!(s, TaskStatus::Exited { exit_code: 0 });
        if i >= 3 {
            bare.push(d);
            ours.push(d2);
        }
    }
    println!("container launch-to-exit of busybox `true`, N={n}, interleaved");
    let (b50, b99) = report("runc run (bare, baseline)", bare);
    let (o50, o99) = report("jetrun OciRunner", ours);
    println!(
        "overhead: p50 {:+.1} %  p99 {:+.1} %  (goal <= 20 %)",
        (ms(o50) / ms(b50) - 1.0) * 100.0,
        (ms(o99) / ms(b99) - 1.0) * 100.0
    );
}
