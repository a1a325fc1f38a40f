#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The process runner against real processes.

use std::time::{Duration, Instant};

use jetrun_core::JobSpec;
use jetrun_runner::{LaunchRequest, ProcessRunner, Runner, RunnerErrorKind, TaskStatus};

fn req(job: &str, cmd: &str) -> LaunchRequest {
    let spec = JobSpec::new("q", "host", vec!["sh".into(), "-c".into(), cmd.into()]);
    LaunchRequest::new(
        job,
        1,
        spec,
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    )
}

#[tokio::test]
async fn exit_codes_env_and_logs() {
    let d = tempfile::tempdir().unwrap();
    let r = ProcessRunner::new(d.path()).unwrap();
    for code in [0, 1, 3, 42, 127] {
        let t = r
            .launch(&req(&format!("code{code}"), &format!("exit {code}")))
            .await
            .unwrap();
        assert_eq!(r.wait(&t).await.unwrap(), TaskStatus::Exited { exit_code: code });
        assert_eq!(
            r.describe(&t).await.unwrap(),
            TaskStatus::Exited { exit_code: code }
        );
    }
    let mut q = req(
        "env",
        "echo $JETRUN_JOB_ID $JETRUN_ATTEMPT $TRACEPARENT $FOO $JETRUN_PORT_HTTP; echo err >&2",
    );
    q.spec.env.insert("FOO".into(), "bar".into());
    q.spec.ports = vec!["http".into()];
    let t = r.launch(&q).await.unwrap();
    assert_eq!(r.wait(&t).await.unwrap(), TaskStatus::Exited { exit_code: 0 });
    let (out, err) = r.log_paths(&t).unwrap();
    let out = std::fs::read_to_string(out).unwrap();
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        &words[..4],
        &[
            "env",
            "1",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "bar"
        ]
    );
    let port: u16 = words[4].parse().unwrap();
    assert!((20000..=29999).contains(&port));
    assert_eq!(std::fs::read_to_string(err).unwrap(), "err\n");
    assert_eq!(r.describe("nope").await.unwrap(), TaskStatus::NotFound);
    let e = r
        .launch(&LaunchRequest::new(
            "empty",
            1,
            JobSpec::new("q", "host", vec![]),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::InvalidSpec);
}

#[tokio::test]
async fn launch_is_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let r = ProcessRunner::new(d.path()).unwrap();
    let q = req("idem", "echo ran >> $HOME/../count; sleep 0.2");
    let a = r.launch(&q).await.unwrap();
    let b = r.launch(&q).await.unwrap();
    assert_eq!(a, b);
    r.wait(&a).await.unwrap();
    let c = r.launch(&q).await.unwrap();
    assert_eq!(a, c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let count = std::fs::read_to_string(d.path().join("tasks").join(&a).join("count")).unwrap();
    assert_eq!(count.lines().count(), 1, "the task ran once");
}

#[tokio::test]
async fn stop_terms_then_kills() {
    let d = tempfile::tempdir().unwrap();
    let r = ProcessRunner::new(d.path()).unwrap();
    // Dies on SIGTERM.
    let t = r.launch(&req("term", "sleep 30")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.describe(&t).await.unwrap(), TaskStatus::Running);
    let t0 = Instant::now();
    r.stop(&t, Duration::from_secs(5)).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(r.wait(&t).await.unwrap(), TaskStatus::Killed { signal: 15 });
    // Ignores SIGTERM: killed after the grace.
    let t = r
        .launch(&req("kill", "trap '' TERM; sleep 30 & wait; sleep 30"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    r.stop(&t, Duration::from_millis(500)).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(500));
    assert_eq!(r.wait(&t).await.unwrap(), TaskStatus::Killed { signal: 9 });
    // Stopping an ended task is fine.
    r.stop(&t, Duration::from_millis(10)).await.unwrap();
    // The caller's timeout enforced through stop.
    let t = r.launch(&req("timeout", "sleep 30")).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_millis(300), r.wait(&t)).await;
    assert!(ended.is_err());
    r.stop(&t, Duration::from_secs(1)).await.unwrap();
    assert!(r.describe(&t).await.unwrap().is_final());
}

#[tokio::test]
async fn task_outlives_dropped_runner_and_is_listed() {
    let d = tempfile::tempdir().unwrap();
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = d.path().to_path_buf();
        std::thread::spawn(move || {
            rt.block_on(async {
                let r = ProcessRunner::new(&dir).unwrap();
                r.launch(&req("orphan", "sleep 0.5; exit 7")).await.unwrap();
                r.launch(&req("done", "exit 0")).await.unwrap();
            });
            drop(rt);
        })
        .join()
        .unwrap();
    }
    let r = ProcessRunner::new(d.path()).unwrap();
    let list = r.list().await.unwrap();
    assert_eq!(list.len(), 2);
    let orphan = list.iter().find(|t| t.job_id == "orphan").unwrap();
    assert_eq!(orphan.attempt, 1);
    assert_eq!(
        r.wait(&orphan.task_ref).await.unwrap(),
        TaskStatus::Exited { exit_code: 7 }
    );
    r.remove(&orphan.task_ref).await.unwrap();
    let list = r.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, TaskStatus::Exited { exit_code: 0 });
    // Logs stay after remove.
    assert!(r.log_paths(&orphan.task_ref).unwrap().0.exists());
}

#[tokio::test]
async fn ports_released_on_remove() {
    let d = tempfile::tempdir().unwrap();
    let r = ProcessRunner::with_ports(d.path(), "29700-29702".parse().unwrap()).unwrap();
    let mut q = req("p1", "exit 0");
    q.spec.ports = vec!["a".into(), "b".into()];
    let t1 = r.launch(&q).await.unwrap();
    let mut q2 = req("p2", "exit 0");
    q2.spec.ports = vec!["a".into(), "b".into()];
    let e = r.launch(&q2).await.unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::Exhausted);
    assert!(r.describe(&q2.token).await.unwrap() == TaskStatus::NotFound);
    r.wait(&t1).await.unwrap();
    r.remove(&t1).await.unwrap();
    let t2 = r.launch(&q2).await.unwrap();
    assert_eq!(r.wait(&t2).await.unwrap(), TaskStatus::Exited { exit_code: 0 });
}

#[tokio::test]
async fn stale_port_locks_are_reclaimed_at_start() {
    let d = tempfile::tempdir().unwrap();
    let range: jetrun_runner::PortRange = "29720-29721".parse().unwrap();
    let r = ProcessRunner::with_ports(d.path(), range).unwrap();
    let mut q = req("stale", "sleep 5");
    q.spec.ports = vec!["a".into(), "b".into()];
    let t = r.launch(&q).await.unwrap();
    // The task is still running: a new runner keeps its ports.
    let r2 = ProcessRunner::with_ports(d.path(), range).unwrap();
    let mut q2 = req("next", "exit 0");
    q2.spec.ports = vec!["a".into()];
    assert_eq!(r2.launch(&q2).await.unwrap_err().kind, RunnerErrorKind::Exhausted);
    // Its directory deleted by hand (not through remove): the locks are stale.
    r.stop(&t, Duration::from_millis(100)).await.unwrap();
    std::fs::remove_dir_all(d.path().join("tasks").join(&t)).unwrap();
    let r3 = ProcessRunner::with_ports(d.path(), range).unwrap();
    let t2 = r3.launch(&q2).await.unwrap();
    assert_eq!(r3.wait(&t2).await.unwrap(), TaskStatus::Exited { exit_code: 0 });
}

#[tokio::test]
async fn a_process_task_result_and_checkout() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let o = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("a.txt"), "hello\n").unwrap();
    git(&["add", "a.txt"]);
    git(&["commit", "-q", "-m", "one"]);
    let r = ProcessRunner::new(d.path().join("data"))
        .unwrap()
        .with_checkout(jetrun_runner::CheckoutConfig {
            local_roots: vec![d.path().to_path_buf()],
            ..Default::default()
        });
    let mut q = req(
        "pres",
        r#"printf '{"text":"%s"}' "$(cat a.txt)" > "$JETRUN_RESULT""#,
    );
    q.spec.checkout = Some(jetrun_core::job::Checkout {
        repo: repo.display().to_string(),
        git_ref: "main".into(),
        depth: None,
        token_env: None,
    });
    let t = r.launch(&q).await.unwrap();
    assert_eq!(r.wait(&t).await.unwrap(), TaskStatus::Exited { exit_code: 0 });
    let raw = r.result(&t).await.unwrap().expect("a result");
    assert_eq!(jetrun_core::result::parse(&raw).unwrap()["text"], "hello");
    r.remove(&t).await.unwrap();
    assert_eq!(r.result(&t).await.unwrap(), Some(raw));
    // Without local_roots a local path is refused.
    let plain = ProcessRunner::new(d.path().join("data2")).unwrap();
    let e = plain.launch(&q).await.unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::InvalidSpec, "{e}");
}
