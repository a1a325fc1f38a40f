#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Tasks run under a minimal init as PID 1 (tini, as `docker run --init`): SIGTERM reaches
//! the command, so a timeout or a cancel ends it at once and only a command that ignores
//! SIGTERM waits for the grace period; orphans are reaped. And the real exit status
//! survives the death of the shim and of `runc run`; a task that died with its node is
//! `Lost`, never an exit code. Real runc, no skips: these fail where runc cannot run.

#[path = "support/scratch.rs"]
mod scratch;

use std::path::Path;
use std::time::{Duration, Instant};

use jetrun_core::JobSpec;
use jetrun_runner::{LaunchRequest, OciConfig, OciRunner, ProcessRunner, Runner, TaskStatus};

fn runner(dir: &Path) -> OciRunner {
    OciRunner::new(OciConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    })
    .expect("the OCI runner needs root, runc, tini and busybox-static (scripts/setup.sh)")
}

fn req(job: &str, cmd: &str) -> LaunchRequest {
    let spec = JobSpec::new("q", "busybox", vec!["sh".into(), "-c".into(), cmd.into()]);
    LaunchRequest::new(job, 1, spec, None)
}

async fn wait(r: &dyn Runner, t: &str, limit: Duration) -> TaskStatus {
    tokio::time::timeout(limit, r.wait(t))
        .await
        .expect("task ended in time")
        .unwrap()
}

fn stdout(r: &dyn Runner, t: &str) -> String {
    std::fs::read_to_string(r.log_paths(t).unwrap().0).unwrap_or_default()
}

/// Waits until the command itself runs (it printed `up`), not just its shim.
async fn until_up(r: &dyn Runner, t: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stdout(r, t).contains("up") {
        assert!(Instant::now() < deadline, "task {t} never printed `up`");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn shim_pid(dir: &Path, t: &str) -> i32 {
    let s = std::fs::read_to_string(dir.join("tasks").join(t).join("pid")).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn killpg9(pgid: i32) {
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[tokio::test]
async fn pid_1_is_the_init_and_exit_codes_are_kept() {
    let d = scratch::tempdir();
    let r = runner(d.path());
    let t = r
        .launch(&req("pid1", "tr '\\0' ' ' < /proc/1/cmdline; echo; exit 7"))
        .await
        .unwrap();
    assert_eq!(
        wait(&r, &t, Duration::from_secs(20)).await,
        TaskStatus::Exited { exit_code: 7 }
    );
    let out = stdout(&r, &t);
    assert!(out.starts_with("/dev/.jetrun/init -g -- "), "pid 1: {out}");
    // The command is found on the image's PATH, not as a busybox applet of the wrapper.
    let t = r.launch(&req("missing", "exit 0")).await.unwrap();
    assert_eq!(
        wait(&r, &t, Duration::from_secs(20)).await,
        TaskStatus::Exited { exit_code: 0 }
    );
    let spec = JobSpec::new("q", "busybox", vec!["no-such-command".into()]);
    let t = r
        .launch(&LaunchRequest::new("nocmd", 1, spec, None))
        .await
        .unwrap();
    assert_eq!(
        wait(&r, &t, Duration::from_secs(20)).await,
        TaskStatus::Exited { exit_code: 127 }
    );
    r.remove(&t).await.unwrap();
    assert_eq!(
        r.describe(&t).await.unwrap(),
        TaskStatus::Exited { exit_code: 127 },
        "the status is kept after remove"
    );
}

#[tokio::test]
async fn a_timeout_ends_sleep_60_within_2_s() {
    let d = scratch::tempdir();
    let r = runner(d.path());
    let t = r.launch(&req("timeout", "echo up; sleep 60")).await.unwrap();
    let t0 = Instant::now();
    // The agent's timeout: wait at most 1 s, then stop with the default grace (10 s).
    assert!(
        tokio::time::timeout(Duration::from_secs(1), r.wait(&t))
            .await
            .is_err()
    );
    r.stop(&t, Duration::from_secs(10)).await.unwrap();
    let took = t0.elapsed();
    assert_eq!(r.describe(&t).await.unwrap(), TaskStatus::Killed { signal: 15 });
    assert!(took < Duration::from_secs(2), "timed out after {took:?}");
    eprintln!("timeout 1 s: ended {took:?} after launch");
}

#[tokio::test]
async fn a_cancel_ends_a_running_sleep_60_within_2_s() {
    let d = scratch::tempdir();
    let r = runner(d.path());
    // Also when the command is a shell waiting for a child (the group gets SIGTERM).
    let t = r
        .launch(&req("cancel", "echo up; sleep 60; echo never"))
        .await
        .unwrap();
    until_up(&r, &t).await;
    let t0 = Instant::now();
    r.stop(&t, Duration::from_secs(10)).await.unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    assert!(matches!(
        r.describe(&t).await.unwrap(),
        TaskStatus::Killed { signal: 15 }
    ));
    assert!(!stdout(&r, &t).contains("never"));
    eprintln!("cancel: stop took {took:?}");
}

#[tokio::test]
async fn a_command_that_ignores_sigterm_gets_the_full_grace() {
    let d = scratch::tempdir();
    let r = runner(d.path());
    let t = r
        .launch(&req("stubborn", "trap '' TERM; echo up; sleep 60"))
        .await
        .unwrap();
    until_up(&r, &t).await;
    let grace = Duration::from_secs(2);
    let t0 = Instant::now();
    r.stop(&t, grace).await.unwrap();
    let took = t0.elapsed();
    assert!(took >= grace, "killed before the grace ended: {took:?}");
    assert!(took < grace + Duration::from_secs(2), "stop took {took:?}");
    assert_eq!(r.describe(&t).await.unwrap(), TaskStatus::Killed { signal: 9 });
}

#[tokio::test]
async fn a_command_handling_sigterm_ends_by_itself() {
    let d = scratch::tempdir();
    let r = runner(d.path());
    let t = r
        .launch(&req(
            "graceful",
            "trap 'echo bye; exit 3' TERM; echo up; while true; do sleep 0.1; done",
        ))
        .await
        .unwrap();
    until_up(&r, &t).await;
    let t0 = Instant::now();
    r.stop(&t, Duration::from_secs(10)).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(r.describe(&t).await.unwrap(), TaskStatus::Exited { exit_code: 3 });
    assert!(stdout(&r, &t).contains("bye"));
}

#[tokio::test]
async fn orphans_are_reaped() {
    let d = scratch::tempdir();
    let r = runner(d.path());
    // 30 orphans (their parent exits at once), then count zombies in the container.
    let script = "for i in $(seq 30); do sh -c 'sleep 0.1 &'; done; sleep 1; \
                  z=0; for f in /proc/[0-9]*/stat; do read -r l < $f && case $l in *') Z '*) z=$((z+1));; esac; done; echo zombies=$z";
    let t = r.launch(&req("orphans", script)).await.unwrap();
    assert_eq!(
        wait(&r, &t, Duration::from_secs(20)).await,
        TaskStatus::Exited { exit_code: 0 }
    );
    assert_eq!(stdout(&r, &t).trim(), "zombies=0");
}

#[tokio::test]
async fn the_status_survives_the_death_of_the_shim_and_runc_run() {
    let d = scratch::tempdir();
    {
        let r = runner(d.path());
        // The shim alone is killed: `runc run` lives on, deletes the container at its end
        // and exits to nobody.
        let a = r
            .launch(&req("shim-only", "echo up; sleep 1; exit 7"))
            .await
            .unwrap();
        // The shim's whole group: the shim and `runc run`; the container lives on.
        let b = r.launch(&req("group", "echo up; sleep 1; exit 0")).await.unwrap();
        until_up(&r, &a).await;
        until_up(&r, &b).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim_pid(d.path(), &a)),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        killpg9(shim_pid(d.path(), &b));
        drop(r);
    }
    let r = runner(d.path());
    for (t, code) in [("shim-only-1", 7), ("group-1", 0)] {
        assert_eq!(
            wait(&r, t, Duration::from_secs(20)).await,
            TaskStatus::Exited { exit_code: code },
            "{t}"
        );
        r.remove(t).await.unwrap();
        assert_eq!(
            r.describe(t).await.unwrap(),
            TaskStatus::Exited { exit_code: code }
        );
    }
}

#[tokio::test]
async fn a_task_that_died_with_its_node_is_lost() {
    let d = scratch::tempdir();
    let r = runner(d.path());
    let t = r.launch(&req("gone", "echo up; sleep 60")).await.unwrap();
    until_up(&r, &t).await;
    // Everything dies at once, as with the node: shim, `runc run` and the container.
    let st = std::process::Command::new("runc")
        .arg("--root")
        .arg(d.path().join("runc"))
        .args(["kill", &t, "KILL"])
        .status()
        .unwrap();
    assert!(st.success());
    killpg9(shim_pid(d.path(), &t));
    drop(r);
    let r = runner(d.path());
    assert_eq!(wait(&r, &t, Duration::from_secs(20)).await, TaskStatus::Lost);
    assert_eq!(r.list().await.unwrap()[0].status, TaskStatus::Lost);
    r.remove(&t).await.unwrap();
    // A stopped task whose shim died with it is our SIGKILL, not lost.
    let t = r
        .launch(&req("stopped", "trap '' TERM; echo up; sleep 60"))
        .await
        .unwrap();
    until_up(&r, &t).await;
    r.stop(&t, Duration::from_millis(200)).await.unwrap();
    assert_eq!(r.describe(&t).await.unwrap(), TaskStatus::Killed { signal: 9 });
}

#[tokio::test]
async fn a_process_task_whose_shim_died_is_running_then_lost() {
    let d = scratch::tempdir();
    let r = ProcessRunner::new(d.path()).unwrap();
    let spec = JobSpec::new(
        "q",
        "host",
        vec!["sh".into(), "-c".into(), "echo up; sleep 1".into()],
    );
    let t = r
        .launch(&LaunchRequest::new("orphan", 1, spec, None))
        .await
        .unwrap();
    until_up(&r, &t).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid(d.path(), &t)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = ProcessRunner::new(d.path()).unwrap();
    assert_eq!(
        r.describe(&t).await.unwrap(),
        TaskStatus::Running,
        "its command still runs"
    );
    assert_eq!(wait(&r, &t, Duration::from_secs(10)).await, TaskStatus::Lost);
}

#[tokio::test]
async fn without_its_init_the_runner_refuses_to_start() {
    let d = scratch::tempdir();
    let e = OciRunner::new(OciConfig {
        data_dir: d.path().to_path_buf(),
        init: "/nonexistent/tini-static".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.message.contains("apt-get install tini"), "{e}");
    let e = jetrun_runner::oci::probe(OciConfig {
        data_dir: d.path().to_path_buf(),
        init: "/nonexistent/tini-static".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(e.message.contains("init"), "{e}");
}
