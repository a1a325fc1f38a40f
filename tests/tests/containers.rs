//! The lifecycle with real runc containers (the OCI runner, busybox image): exit codes,
//! a timeout, a cancel, logs. Skipped, saying so, where runc cannot run containers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Env, Worker, oci_available};
use jetrun_core::{JobSpec, JobStatus};

fn busybox(script: &str) -> JobSpec {
    JobSpec::new(
        "default",
        "busybox",
        vec!["sh".into(), "-c".into(), script.into()],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containers_settle_with_exit_codes_timeouts_and_cancels() {
    if !oci_available() {
        eprintln!("SKIPPED: runc is not usable here (needs runc and root)");
        return;
    }
    let env = Env::start().await;
    let _w = Worker::spawn_with(
        &env,
        &env.dir.path().join("w"),
        "oci",
        &["--max-concurrent-jobs", "8"],
    );
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(
            env.submit(busybox(&format!("echo job {i} in $(hostname); exit {}", i % 3)))
                .await,
        );
    }
    let mut slow = busybox("sleep 30");
    slow.timeout_seconds = Some(1);
    let timed = env.submit(slow).await;
    let cancel = env.submit(busybox("sleep 30")).await;

    let recs = env.wait_terminal(&ids, Duration::from_secs(60)).await;
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.exit_code, Some((i % 3) as i32), "{r:?}");
        let want = if i % 3 == 0 {
            JobStatus::Succeeded
        } else {
            JobStatus::Failed
        };
        assert_eq!(r.status, want);
    }
    let out = env.cli(&["jobs", "logs", &ids[4], "--tail", "1"]);
    assert_eq!(out, "job 4 in jetrun\n", "the container has its own hostname");

    env.wait_for(&cancel, Duration::from_secs(20), "running", |r| {
        r.status == JobStatus::Running
    })
    .await;
    env.cli(&["jobs", "cancel", &cancel]);
    let r = env
        .wait_for(&cancel, Duration::from_secs(20), "terminal", |r| {
            r.status.is_terminal()
        })
        .await;
    assert_eq!(r.status, JobStatus::Cancelled);
    let r = env
        .wait_for(&timed, Duration::from_secs(20), "terminal", |r| {
            r.status.is_terminal()
        })
        .await;
    assert_eq!(r.status, JobStatus::TimedOut);
}
