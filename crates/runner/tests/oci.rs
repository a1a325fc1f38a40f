#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The OCI runner against real runc containers. Each test skips (with a printed reason)
//! when not root or when runc is missing, and fails instead with `JETRUN_REQUIRE_OCI=1`
//! (scripts/test.sh sets it where runc works); CI runs as root with runc installed.

#[path = "support/scratch.rs"]
mod scratch;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use jetrun_core::JobSpec;
use jetrun_runner::{LaunchRequest, OciConfig, OciRunner, Runner, RunnerErrorKind, TaskStatus};

/// Whether to run: root and runc here. Without them the test skips with a printed
/// reason, unless `JETRUN_REQUIRE_OCI=1` (set by scripts/test.sh where runc works): then
/// it fails.
fn oci_here() -> bool {
    let skip = |why: &str| {
        assert!(
            std::env::var("JETRUN_REQUIRE_OCI").as_deref() != Ok("1"),
            "JETRUN_REQUIRE_OCI=1 but {why}"
        );
        eprintln!("SKIP: {why}");
        false
    };
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) != 0 {
        return skip("the OCI runner needs root");
    }
    if !std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join("runc").is_file())
    {
        return skip("runc is not installed");
    }
    true
}

fn runner(dir: &Path) -> OciRunner {
    OciRunner::new(OciConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    })
    .unwrap()
}

fn req(job: &str, image: &str, cmd: &str) -> LaunchRequest {
    let spec = JobSpec::new("q", image, vec!["sh".into(), "-c".into(), cmd.into()]);
    LaunchRequest::new(
        job,
        1,
        spec,
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    )
}

async fn run(r: &OciRunner, q: &LaunchRequest) -> (TaskStatus, String, String) {
    let t = r.launch(q).await.unwrap();
    let s = tokio::time::timeout(Duration::from_secs(20), r.wait(&t))
        .await
        .expect("task finished")
        .unwrap();
    let (o, e) = r.log_paths(&t).unwrap();
    (
        s,
        std::fs::read_to_string(o).unwrap_or_default(),
        std::fs::read_to_string(e).unwrap_or_default(),
    )
}

#[tokio::test]
async fn probe_passes_and_exit_codes_env_are_kept() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let r = jetrun_runner::oci::probe(OciConfig {
        data_dir: d.path().to_path_buf(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        r.list().await.unwrap().is_empty(),
        "the probe leaves nothing behind"
    );
    for code in [0, 3, 42] {
        let (s, _, _) = run(
            &r,
            &req(&format!("code{code}"), "busybox", &format!("exit {code}")),
        )
        .await;
        assert_eq!(s, TaskStatus::Exited { exit_code: code });
    }
    let mut q = req(
        "envjob",
        "busybox",
        "echo $JETRUN_JOB_ID $JETRUN_ATTEMPT $TRACEPARENT $FOO; echo oops >&2",
    );
    q.spec.env.insert("FOO".into(), "bar".into());
    let (s, out, err) = run(&r, &q).await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 });
    assert_eq!(
        out.trim(),
        "envjob 1 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 bar"
    );
    assert_eq!(err.trim(), "oops");
    let e = r
        .launch(&req("noimage", "no-such-image", "true"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::InvalidSpec);
}

#[tokio::test]
async fn cannot_read_host_files_outside_rootfs() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let secret = d.path().join("secret.txt");
    std::fs::write(&secret, "s3cr3t").unwrap();
    assert!(std::fs::read_to_string("/etc/hostname").is_ok() || Path::new("/etc/passwd").exists());
    let r = runner(d.path());
    for image in ["busybox", "host"] {
        let cmd = format!("cat {} /etc/shadow; cat /etc/passwd", secret.display());
        let (s, out, _) = run(&r, &req(&format!("read-{image}"), image, &cmd)).await;
        assert!(matches!(s, TaskStatus::Exited { .. }), "{image}: {s:?}");
        assert!(!out.contains("s3cr3t"), "{image} read a host file: {out}");
        let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        assert_ne!(
            out.trim(),
            host_passwd.trim(),
            "{image} sees the host's /etc/passwd"
        );
    }
    // The host image runs host tools (bound read-only).
    let (s, out, _) = run(
        &r,
        &req("hosttools", "host", "ls / >/dev/null && tar --version | head -1"),
    )
    .await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 });
    assert!(out.contains("tar"), "{out}");
}

#[tokio::test]
async fn cannot_write_rootfs_but_work_and_tmp() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let r = runner(d.path());
    for image in ["busybox", "host"] {
        let cmd = "if touch /bin/x || touch /x || touch /usr/x; then exit 1; fi; echo hi > /work/out && touch /tmp/t && cat /work/out || exit 2";
        let q = req(&format!("write-{image}"), image, cmd);
        let (s, out, err) = run(&r, &q).await;
        assert_eq!(s, TaskStatus::Exited { exit_code: 0 }, "{image}: {err}");
        // /work is the task's own size-limited tmpfs (`network::work_and_tmp_are_size_limited`).
        assert_eq!(out, "hi\n");
        r.remove(&q.token).await.unwrap();
        assert!(
            !r.tasks_dir().join(&q.token).join("bundle").exists(),
            "bundle removed"
        );
        assert!(r.log_paths(&q.token).unwrap().1.exists(), "logs kept");
    }
    let img = r.images().get("busybox").unwrap();
    assert!(!img.rootfs.join("x").exists());
}

#[tokio::test]
async fn cannot_reach_host_loopback_without_network() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let r = runner(d.path());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // Accept and hang up at once, counting connections.
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            if c.is_ok() {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let cmd = format!("echo hello | nc -w 2 127.0.0.1 {port}");
    let (s, _, _) = run(&r, &req("nonet", "busybox", &cmd)).await;
    assert!(
        matches!(s, TaskStatus::Exited { exit_code } if exit_code != 0),
        "{s:?}"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the listener got a connection"
    );
    // With `network` the task has its own namespace too (slirp4netns, host loopback
    // disabled): still nothing. `network::*` shows that outbound access works.
    let mut q = req("net", "busybox", &cmd);
    q.spec.network = true;
    let (s, _, _) = run(&r, &q).await;
    assert!(
        matches!(s, TaskStatus::Exited { exit_code } if exit_code != 0),
        "{s:?}"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn sees_only_its_own_processes() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let r = runner(d.path());
    let (s, out, _) = run(
        &r,
        &req(
            "ps",
            "busybox",
            "ls -d /proc/[0-9]* | wc -l; cat /proc/1/cmdline | tr '\\0' ' '",
        ),
    )
    .await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 });
    let mut lines = out.lines();
    let n: usize = lines.next().unwrap().trim().parse().unwrap();
    // init, the status wrapper, sh, ls and wc.
    assert!(n <= 6, "saw {n} processes");
    assert!(
        lines.next().unwrap().starts_with("/dev/.jetrun/init -g -- "),
        "pid 1 is the task's init"
    );
    let host = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    assert!(host > n);
}

#[tokio::test]
async fn stop_kills_and_timeouts_go_through_stop() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let r = runner(d.path());
    // The init forwards SIGTERM: the command ends at once, long before the grace.
    let t = r
        .launch(&req("sleeper", "busybox", "exec sleep 30"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.describe(&t).await.unwrap(), TaskStatus::Running);
    let t0 = Instant::now();
    r.stop(&t, Duration::from_secs(5)).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(r.wait(&t).await.unwrap(), TaskStatus::Killed { signal: 15 });
    // A command that ignores SIGTERM is killed after the grace.
    let t = r
        .launch(&req("ignorer", "busybox", "trap '' TERM; sleep 30"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    r.stop(&t, Duration::from_millis(400)).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(400));
    assert_eq!(r.wait(&t).await.unwrap(), TaskStatus::Killed { signal: 9 });
    // A task that handles SIGTERM ends by itself within the grace.
    let t = r
        .launch(&req(
            "graceful",
            "busybox",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.stop(&t, Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.wait(&t).await.unwrap(), TaskStatus::Exited { exit_code: 0 });
    // The caller's timeout: wait times out, stop ends it.
    let t = r
        .launch(&req("timeout", "busybox", "exec sleep 30"))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), r.wait(&t))
            .await
            .is_err()
    );
    r.stop(&t, Duration::from_millis(100)).await.unwrap();
    assert!(r.describe(&t).await.unwrap().is_final());
    r.stop(&t, Duration::from_millis(100)).await.unwrap();
    r.remove(&t).await.unwrap();
}

#[tokio::test]
async fn pids_limit_applies() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let r = runner(d.path());
    if !r.cgroups().pids {
        eprintln!("SKIP: no pids cgroup controller on this machine");
        return;
    }
    let cmd = "i=0; while [ $i -lt 30 ]; do sleep 3 & i=$((i+1)); done; ls -d /proc/[0-9]* | wc -l";
    let mut q = req("pids", "busybox", cmd);
    q.spec.resources.pids = Some(8);
    let (s, out, _) = run(&r, &q).await;
    // Either the shell dies on a failed fork, or fewer than 30 sleeps got started.
    let started: usize = out.trim().parse().unwrap_or(0);
    assert!(started < 30, "{s:?} {out}");
    assert!(started <= 8);
    let (s, out, _) = run(&r, &req("nopids", "busybox", cmd)).await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 });
    assert!(out.trim().parse::<usize>().unwrap() >= 30);
}

#[tokio::test]
async fn memory_limit_applies() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let r = runner(d.path());
    if !r.cgroups().memory {
        eprintln!("SKIP: no memory cgroup controller on this machine");
        return;
    }
    // Holds ~100 MB in a shell variable.
    let cmd = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}";
    let mut q = req("mem", "busybox", cmd);
    q.spec.resources.memory_mb = Some(32);
    let (s, out, _) = run(&r, &q).await;
    assert_ne!(out.trim(), "100000000", "{s:?}");
    assert!(
        matches!(
            s,
            TaskStatus::Killed { signal: 9 } | TaskStatus::Exited { exit_code: 1.. }
        ),
        "{s:?}"
    );
    let mut q = req("mem-ok", "busybox", cmd);
    q.spec.resources.memory_mb = Some(512);
    let (s, out, _) = run(&r, &q).await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 });
    assert_eq!(out.trim(), "100000000");
}

#[tokio::test]
async fn launch_is_idempotent() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let r = runner(d.path());
    // Each start of the container leaves a line in its log (its /work is a tmpfs).
    let q = req("idem", "busybox", "echo ran; sleep 0.3");
    let (a, b) = tokio::join!(r.launch(&q), r.launch(&q));
    assert_eq!(a.unwrap(), b.unwrap());
    let t = r.launch(&q).await.unwrap();
    r.wait(&t).await.unwrap();
    let t2 = r.launch(&q).await.unwrap();
    assert_eq!(t, t2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let count = std::fs::read_to_string(r.log_paths(&t).unwrap().0).unwrap();
    assert_eq!(count.lines().count(), 1, "ran once");
}

#[tokio::test]
async fn ports_unique_across_runners_and_released() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let cfg = OciConfig {
        data_dir: d.path().to_path_buf(),
        ports: "29800-29809".parse().unwrap(),
        ..Default::default()
    };
    let (r1, r2) = (OciRunner::new(cfg.clone()).unwrap(), OciRunner::new(cfg).unwrap());
    let mut handles = Vec::new();
    for i in 0..10 {
        let r = if i % 2 == 0 { r1.clone() } else { r2.clone() };
        handles.push(tokio::spawn(async move {
            let mut q = req(&format!("port{i}"), "busybox", "echo $JETRUN_PORT_HTTP");
            q.spec.ports = vec!["http".into()];
            let (s, out, _) = run(&r, &q).await;
            assert_eq!(s, TaskStatus::Exited { exit_code: 0 });
            (q.token, out.trim().parse::<u16>().unwrap())
        }));
    }
    let mut ports = BTreeSet::new();
    let mut tokens = Vec::new();
    for h in handles {
        let (t, p) = h.await.unwrap();
        assert!((29800..=29809).contains(&p));
        ports.insert(p);
        tokens.push(t);
    }
    assert_eq!(ports.len(), 10, "ports are unique");
    let mut q = req("port-extra", "busybox", "true");
    q.spec.ports = vec!["http".into()];
    assert_eq!(r1.launch(&q).await.unwrap_err().kind, RunnerErrorKind::Exhausted);
    r1.remove(&tokens[0]).await.unwrap();
    let t = r2.launch(&q).await.unwrap();
    assert_eq!(r2.wait(&t).await.unwrap(), TaskStatus::Exited { exit_code: 0 });
}

#[test]
fn task_outlives_dropped_runner_and_is_adopted() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = runner(d.path());
            r.launch(&req("orphan", "busybox", "sleep 1; exit 7"))
                .await
                .unwrap();
        });
        // The runner, its runtime and the reaper tasks are all gone now.
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = runner(d.path());
        let list = r.list().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].job_id, "orphan");
        assert_eq!(list[0].status, TaskStatus::Running);
        let s = tokio::time::timeout(Duration::from_secs(10), r.wait(&list[0].task_ref))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s, TaskStatus::Exited { exit_code: 7 });
        assert_eq!(
            r.list().await.unwrap()[0].status,
            TaskStatus::Exited { exit_code: 7 }
        );
    });
}

#[tokio::test]
async fn runs_as_configured_user_without_capabilities() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let cfg = OciConfig {
        data_dir: d.path().to_path_buf(),
        user: (65534, 65534),
        ..Default::default()
    };
    let r = OciRunner::new(cfg).unwrap();
    let cmd = "id -u; grep CapEff /proc/self/status; echo ok > /work/f && cat /work/f";
    let (s, out, err) = run(&r, &req("nobody", "busybox", cmd)).await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 }, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "65534");
    assert!(
        lines[1].ends_with("0000000000000000"),
        "no capabilities: {}",
        lines[1]
    );
    assert_eq!(lines[2], "ok");
    // Root in the container has no capabilities either.
    let (s, out, _) = run(
        &runner(d.path()),
        &req("root", "busybox", "grep CapEff /proc/self/status"),
    )
    .await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 });
    assert!(out.trim().ends_with("0000000000000000"), "{out}");
}

/// A local repository with three commits on `main`, tagged `v1` (first) and `v2` (last);
/// returns its path and the commit ids, oldest first.
fn local_repo(dir: &Path) -> (std::path::PathBuf, Vec<String>) {
    let repo = dir.join("repo");
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
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    git(&["init", "-q", "-b", "main"]);
    let mut ids = Vec::new();
    for i in 1..=3 {
        std::fs::write(repo.join("n.txt"), format!("{i}\n")).unwrap();
        git(&["add", "n.txt"]);
        git(&["commit", "-q", "-m", &format!("c{i}")]);
        ids.push(git(&["rev-parse", "HEAD"]));
    }
    git(&["tag", "v1", &ids[0]]);
    git(&["tag", "v2", &ids[2]]);
    (repo, ids)
}

fn checkout(repo: &Path, git_ref: &str) -> jetrun_core::job::Checkout {
    jetrun_core::job::Checkout {
        repo: repo.display().to_string(),
        git_ref: git_ref.into(),
        depth: None,
        token_env: None,
    }
}

#[tokio::test]
async fn a_result_written_to_jetrun_result_is_read_back_after_the_container_ended() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let r = runner(d.path());
    let q = req(
        "res",
        "busybox",
        r#"printf '{"first_bad":"abc123","n":2}' > "$JETRUN_RESULT"; echo "$JETRUN_RESULT""#,
    );
    let (s, out, _) = run(&r, &q).await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 });
    assert_eq!(out.trim(), "/dev/.jetrun/out/result.json");
    let raw = r.result(&q.token).await.unwrap().expect("a result");
    let m = jetrun_core::result::parse(&raw).unwrap();
    assert_eq!(m["first_bad"], "abc123");
    // Still there once the task was removed (its tmpfs is gone).
    r.remove(&q.token).await.unwrap();
    assert!(!r.tasks_dir().join(&q.token).join("out").exists());
    let again = r.result(&q.token).await.unwrap().expect("kept at remove");
    assert_eq!(again, raw);

    // A task that writes none has none.
    let q = req("nores", "busybox", "true");
    run(&r, &q).await;
    assert_eq!(r.result(&q.token).await.unwrap(), None);
    r.remove(&q.token).await.unwrap();
}

#[tokio::test]
async fn a_1_mb_result_is_refused_and_the_host_side_stays_bounded() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let r = runner(d.path());
    // Tries to write 1 MB (and a second file): the result tmpfs takes 32 KiB at most.
    let q = req(
        "big",
        "busybox",
        r#"head -c 1000000 /dev/zero | tr '\0' a > "$JETRUN_RESULT"; echo "rc=$?";
           head -c 1000000 /dev/zero > /dev/.jetrun/out/more; du -k /dev/.jetrun/out | tail -1"#,
    );
    let (s, out, _) = run(&r, &q).await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 }, "{out}");
    let kb: u64 = out
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(kb <= 32, "the task's result dir holds {kb} KiB: {out}");
    let raw = r.result(&q.token).await.unwrap().expect("a result");
    assert_eq!(
        raw.len(),
        jetrun_core::result::MAX_RESULT_BYTES + 1,
        "read stops past the limit"
    );
    let e = jetrun_core::result::parse(&raw).unwrap_err();
    assert!(
        matches!(e, jetrun_core::result::ResultError::TooLarge { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("16384 allowed"), "{e}");
    r.remove(&q.token).await.unwrap();
    let kept = std::fs::metadata(r.tasks_dir().join(&q.token).join("result.json")).unwrap();
    assert_eq!(kept.len(), jetrun_core::result::MAX_RESULT_BYTES as u64 + 1);
}

#[tokio::test]
async fn a_symlinked_result_is_not_followed_to_a_host_file() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let r = runner(d.path());
    let q = req("link", "busybox", r#"ln -s /etc/shadow "$JETRUN_RESULT""#);
    let (s, _, _) = run(&r, &q).await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 });
    let e = r.result(&q.token).await.unwrap_err();
    assert!(e.message.contains("symbolic link"), "{e}");
    r.remove(&q.token).await.unwrap();
}

#[tokio::test]
async fn a_checkout_is_cloned_into_work_without_network() {
    if !oci_here() {
        return;
    }
    let d = scratch::tempdir();
    let (repo, ids) = local_repo(d.path());
    let r = OciRunner::new(OciConfig {
        data_dir: d.path().join("data"),
        checkout: jetrun_runner::CheckoutConfig {
            local_roots: vec![d.path().to_path_buf()],
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    // The host image has git (it binds the host's /usr); the job has no network.
    let mut q = req(
        "co",
        "host",
        "pwd; cat n.txt; git log --format=%H | wc -l; git rev-parse HEAD; git tag | tr '\\n' ' '; echo; \
         grep -c extraHeader .git/config; echo x > new.txt && echo writable",
    );
    q.spec.checkout = Some(checkout(&repo, "v1"));
    let (s, out, err) = run(&r, &q).await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 }, "{out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "/work");
    assert_eq!(lines[1], "1", "v1 checked out: {out}");
    assert_eq!(lines[2], "1", "history up to v1: {out}");
    assert_eq!(lines[3], ids[0]);
    assert_eq!(lines[4].trim(), "v1 v2", "tags come along: {out}");
    assert_eq!(lines[5], "0", "no credentials in the repo config");
    assert_eq!(lines[6], "writable");
    r.remove(&q.token).await.unwrap();
    assert!(!r.tasks_dir().join(&q.token).join("work").exists());

    // A commit id and a branch name work too.
    for (i, git_ref) in [(2usize, ids[1].as_str()), (3, "main")] {
        let mut q = req(&format!("co{i}"), "host", "cat n.txt");
        q.spec.checkout = Some(checkout(&repo, git_ref));
        let (s, out, err) = run(&r, &q).await;
        r.remove(&q.token).await.unwrap();
        assert_eq!(
            (s, out.trim()),
            (TaskStatus::Exited { exit_code: 0 }, i.to_string().as_str()),
            "{err}"
        );
    }
    // Shallow.
    let mut q = req("shallow", "host", "git log --format=%H | wc -l; cat n.txt");
    let mut c = checkout(&repo, "main");
    c.depth = Some(1);
    q.spec.checkout = Some(c);
    let (s, out, err) = run(&r, &q).await;
    r.remove(&q.token).await.unwrap();
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 }, "{err}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["1", "3"]);

    // A missing ref fails the launch as a bad spec; so does a path outside local_roots.
    let mut q = req("noref", "host", "true");
    q.spec.checkout = Some(checkout(&repo, "nope"));
    let e = r.launch(&q).await.unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::InvalidSpec, "{e}");
    assert!(e.message.contains("nope"), "{e}");
    assert!(
        !r.tasks_dir().join(&q.token).exists(),
        "a failed launch leaves nothing"
    );
    let mut q = req("outside", "host", "true");
    q.spec.checkout = Some(checkout(Path::new("/usr"), "main"));
    let e = r.launch(&q).await.unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::InvalidSpec);
    assert!(e.message.contains("local_roots"), "{e}");
}
