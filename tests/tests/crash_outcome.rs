//! The right outcome after a crash, end to end: `jetrun worker --runner oci` (the real
//! binary, real runc) SIGKILLed while jobs run, restarted inside the lease window.
//!
//! - the worker alone dies: shims, `runc run` and containers live on;
//! - the worker and its supervision die (a service manager killing the worker's whole
//!   cgroup): shims and `runc run` die too, the containers live on and finish;
//! - everything dies with the node, containers included.
//!
//! Jobs whose command exits 0 end `succeeded` on their first attempt (their real status
//! was kept inside the container); a job exiting 3 ends `failed` with 3; jobs whose task
//! died with the node are retried as lost and succeed on the next attempt. None ends
//! `failed` with 137. Also the init as PID 1, through the whole pipeline: a timeout or a
//! cancel ends `sleep 60` at once, a command ignoring SIGTERM gets the full grace.
//! No skips: these fail where runc cannot run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod node;

use std::time::{Duration, Instant};

use common::Env;
use jetrun_core::{JobRecord, JobSpec, JobStatus};
use node::Node;

/// A long lease (a restart lands inside it), fast sweeps and retries; the default stop
/// grace (10 s) unless a test says otherwise.
const FLAGS: &[&str] = &[
    "--lease-ttl",
    "10s",
    "--lease-renew",
    "1s",
    "--sweep-every",
    "1s",
    "--retry-base",
    "200ms",
];

fn spawn(env: &Env, extra: &[&str]) -> Node {
    let mut args = FLAGS.to_vec();
    args.extend_from_slice(extra);
    Node::spawn(env, &env.dir.path().join("w"), "oci", "crash-node", &args)
}

fn busybox(script: &str) -> JobSpec {
    JobSpec::new(
        "default",
        "busybox",
        vec!["sh".into(), "-c".into(), script.into()],
    )
}

async fn wait_running(env: &Env, ids: &[String]) {
    for id in ids {
        env.wait_for(id, Duration::from_secs(30), "running", |r| {
            r.status == JobStatus::Running
        })
        .await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Crash {
    /// The worker process alone.
    Worker,
    /// The worker, every shim and every `runc run`; containers live on.
    WorkerAndShims,
    /// Everything, containers included: the tasks die with the node.
    Node,
}

async fn crash_and_restart(crash: Crash) -> Vec<JobRecord> {
    let env = Env::start().await;
    let mut node = spawn(&env, &[]);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(env.submit(busybox("echo start; sleep 3; exit 0")).await);
    }
    ids.push(env.submit(busybox("echo start; sleep 3; exit 3")).await);
    wait_running(&env, &ids).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.kill_worker();
    match crash {
        Crash::Worker => {}
        Crash::WorkerAndShims => assert_eq!(node.kill_shims(), ids.len()),
        Crash::Node => {
            assert_eq!(node.kill_shims(), ids.len());
            assert_eq!(node.kill_containers(), ids.len());
        }
    }
    // Back well inside the 10 s lease.
    node.start();
    let recs = env.wait_terminal(&ids, Duration::from_secs(60)).await;
    for r in &recs {
        assert_ne!(r.exit_code, Some(137), "{crash:?}: a made-up SIGKILL: {r:?}");
    }
    let log = node.log_text();
    assert!(
        log.contains("adopting a task"),
        "{crash:?}: nothing adopted; log:\n{log}"
    );
    recs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_sigkilled_alone_keeps_the_real_outcomes() {
    let recs = crash_and_restart(Crash::Worker).await;
    for r in &recs[..4] {
        assert_eq!(
            (r.status, r.exit_code, r.attempt),
            (JobStatus::Succeeded, Some(0), 1),
            "{r:?}"
        );
    }
    let r = &recs[4];
    assert_eq!(
        (r.status, r.exit_code, r.attempt),
        (JobStatus::Failed, Some(3), 1),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_sigkilled_with_its_shims_and_runc_run_keeps_the_real_outcomes() {
    let recs = crash_and_restart(Crash::WorkerAndShims).await;
    for r in &recs[..4] {
        assert_eq!(
            (r.status, r.exit_code, r.attempt),
            (JobStatus::Succeeded, Some(0), 1),
            "{r:?}"
        );
    }
    let r = &recs[4];
    assert_eq!(
        (r.status, r.exit_code, r.attempt),
        (JobStatus::Failed, Some(3), 1),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_that_died_with_the_node_are_retried_as_lost_and_then_succeed() {
    let recs = crash_and_restart(Crash::Node).await;
    for r in &recs[..4] {
        assert_eq!(
            (r.status, r.exit_code, r.attempt),
            (JobStatus::Succeeded, Some(0), 2),
            "{r:?}"
        );
        let kind = r.error.as_ref().map(|e| e.kind.as_str());
        assert!(
            matches!(kind, Some("lost" | "lease_expired")),
            "attempt 1 ended as lost: {r:?}"
        );
    }
    // Its second attempt ran to its own end.
    let r = &recs[4];
    assert_eq!(
        (r.status, r.exit_code, r.attempt),
        (JobStatus::Failed, Some(3), 2),
        "{r:?}"
    );
}

/// Seconds from the job's start to its end, from its record.
fn run_time(r: &JobRecord) -> f64 {
    (r.finished_at.unwrap() - r.started_at.unwrap()).num_milliseconds() as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sleep_60_with_a_1_s_timeout_is_timed_out_within_2_s() {
    let env = Env::start().await;
    // The default stop grace (10 s): the init makes it irrelevant for `sleep`.
    let _node = spawn(&env, &[]);
    let mut spec = busybox("sleep 60");
    spec.timeout_seconds = Some(1);
    let id = env.submit(spec).await;
    let r = env
        .wait_for(&id, Duration::from_secs(20), "terminal", |r| {
            r.status.is_terminal()
        })
        .await;
    assert_eq!(r.status, JobStatus::TimedOut, "{r:?}");
    let t = run_time(&r);
    assert!(t < 2.0, "timed_out {t} s after it started");
    eprintln!("timeout 1 s: timed_out {t:.3} s after start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_of_a_running_sleep_60_ends_it_within_2_s() {
    let env = Env::start().await;
    let _node = spawn(&env, &[]);
    let id = env.submit(busybox("sleep 60")).await;
    wait_running(&env, std::slice::from_ref(&id)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    env.cli(&["jobs", "cancel", &id]);
    let r = env
        .wait_for(&id, Duration::from_secs(20), "terminal", |r| {
            r.status.is_terminal()
        })
        .await;
    let took = t0.elapsed();
    assert_eq!(r.status, JobStatus::Cancelled, "{r:?}");
    assert!(took < Duration::from_secs(2), "cancelled after {took:?}");
    eprintln!("cancel: cancelled {took:?} after the request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_that_traps_sigterm_still_gets_the_full_grace() {
    let env = Env::start().await;
    let _node = spawn(&env, &["--stop-grace", "3s"]);
    let mut spec = busybox("trap '' TERM; sleep 60");
    spec.timeout_seconds = Some(1);
    let id = env.submit(spec).await;
    let r = env
        .wait_for(&id, Duration::from_secs(30), "terminal", |r| {
            r.status.is_terminal()
        })
        .await;
    assert_eq!(r.status, JobStatus::TimedOut, "{r:?}");
    let t = run_time(&r);
    // 1 s timeout + the 3 s grace, then SIGKILL.
    assert!((4.0..6.0).contains(&t), "timed_out {t} s after it started");
}
