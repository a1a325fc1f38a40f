#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Security issue #8, part C, in the runners: a `network: true` container has its own
//! network namespace (slirp4netns) and cannot reach the host's loopback (where NATS
//! listens in `jetrun dev`); `network: false` has loopback only; the scratch dir and /tmp
//! are size-limited tmpfs; process tasks do not inherit the worker's secrets.
//!
//! Real runc containers (as root) and a real slirp4netns. These tests do not skip: a
//! machine that cannot run them fails them.

#[path = "support/scratch.rs"]
mod scratch;

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jetrun_core::JobSpec;
use jetrun_runner::{
    LaunchRequest, OciConfig, OciRunner, ProcessRunner, Runner, RunnerErrorKind, TaskStatus,
};

fn runner_with(dir: &Path, f: impl FnOnce(&mut OciConfig)) -> OciRunner {
    let mut c = OciConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    f(&mut c);
    OciRunner::new(c).unwrap()
}

fn req(job: &str, cmd: &str, network: bool) -> LaunchRequest {
    let mut spec = JobSpec::new("q", "busybox", vec!["sh".into(), "-c".into(), cmd.into()]);
    spec.network = network;
    LaunchRequest::new(job, 1, spec, None)
}

async fn run(r: &dyn Runner, q: &LaunchRequest) -> (TaskStatus, String, String) {
    let t = r.launch(q).await.unwrap();
    let s = tokio::time::timeout(Duration::from_secs(30), r.wait(&t))
        .await
        .expect("task finished")
        .unwrap();
    let (o, e) = r.log_paths(&t).unwrap();
    let out = (
        s,
        std::fs::read_to_string(o).unwrap_or_default(),
        std::fs::read_to_string(e).unwrap_or_default(),
    );
    r.remove(&t).await.unwrap();
    out
}

/// A listener on every address counting connections.
fn listener() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            if c.is_ok() {
                h.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (port, hits)
}

/// The host's routed (non-loopback) IPv4 address; a UDP connect sends nothing.
fn host_ip() -> String {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:9")
        .or_else(|_| s.connect("10.255.255.1:9"))
        .unwrap();
    let ip = s.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "{ip}");
    ip.to_string()
}

fn host_netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test]
async fn a_network_task_has_its_own_namespace_and_cannot_reach_host_loopback() {
    let d = scratch::tempdir();
    let r = runner_with(d.path(), |_| {});
    let (port, hits) = listener();
    // The host's loopback, directly and through slirp's gateway: refused.
    for target in ["127.0.0.1", "10.0.2.2"] {
        let cmd = format!("echo x | nc -w 3 {target} {port}");
        let (s, _, _) = run(&r, &req(&format!("lo-{}", target.replace('.', "-")), &cmd, true)).await;
        assert!(
            matches!(s, TaskStatus::Exited { exit_code } if exit_code != 0),
            "{target}: {s:?}"
        );
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "{target} reached the host's loopback"
        );
    }
    // Outbound access works (the host's routed address stands for "the outside").
    let cmd = format!(
        "readlink /proc/self/ns/net; cat /etc/resolv.conf; ip -4 addr show tap0; echo x | nc -w 3 {} {port}",
        host_ip()
    );
    let (s, out, err) = run(&r, &req("out", &cmd, true)).await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 }, "{out}\n{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "outbound connection");
    let ns = out.lines().next().unwrap();
    assert!(ns.starts_with("net:["), "{out}");
    assert_ne!(ns, host_netns(), "the task shares the host's network namespace");
    assert!(out.contains("nameserver 10.0.2.3"), "{out}");
    assert!(out.contains("inet 10.0.2.100/24"), "{out}");
    // The cloud metadata address (link-local) is prohibited inside.
    let (s, out, err) = run(
        &r,
        &req(
            "meta",
            "ip route get 169.254.169.254 2>&1; echo x | nc -w 2 169.254.169.254 80",
            true,
        ),
    )
    .await;
    assert!(
        matches!(s, TaskStatus::Exited { exit_code } if exit_code != 0),
        "{s:?} {out} {err}"
    );
}

#[tokio::test]
async fn a_task_without_network_has_only_loopback() {
    let d = scratch::tempdir();
    let r = runner_with(d.path(), |_| {});
    let (s, out, err) = run(
        &r,
        &req("nonet", "ls /sys/class/net; readlink /proc/self/ns/net", false),
    )
    .await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 }, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "lo", "{out}");
    assert!(lines[1].starts_with("net:["), "{out}");
    assert_ne!(lines[1], host_netns());
}

#[tokio::test]
async fn ports_of_a_network_task_are_forwarded_from_the_host() {
    let d = scratch::tempdir();
    let r = runner_with(d.path(), |c| {
        c.ports = jetrun_runner::PortRange {
            start: 32100,
            end: 32199,
        }
    });
    let mut q = req("srv", "echo hello-from-task | nc -l -p $JETRUN_PORT_HTTP", true);
    q.spec.ports = vec!["http".into()];
    let t = r.launch(&q).await.unwrap();
    let env = std::fs::read_to_string(r.tasks_dir().join(&t).join("bundle/config.json")).unwrap();
    let port: u16 = env
        .split("JETRUN_PORT_HTTP=")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut got = String::new();
    for _ in 0..50 {
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = c.read_to_string(&mut got);
            if !got.is_empty() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got.trim(), "hello-from-task");
    let _ = tokio::time::timeout(Duration::from_secs(10), r.wait(&t)).await;
    r.remove(&t).await.unwrap();
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[tokio::test]
async fn slirp_is_cleaned_up_when_the_task_ends_also_after_a_restart() {
    let d = scratch::tempdir();
    let r = runner_with(d.path(), |_| {});
    let t = r.launch(&req("adopt", "sleep 30", true)).await.unwrap();
    let pid = r.slirp_pid(&t).expect("slirp4netns runs");
    assert!(alive(pid));
    let ns = r.tasks_dir().join(&t).join("net/ns");
    let mounted = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .contains(&ns.display().to_string())
    };
    assert!(mounted());
    // The launching runner goes away (an agent restart); a new one over the same data
    // dir finds the task and removing it stops slirp4netns and unmounts the namespace.
    drop(r);
    let r2 = runner_with(d.path(), |_| {});
    let listed = r2.list().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i.task_ref == t && i.status == TaskStatus::Running),
        "{listed:?}"
    );
    assert!(alive(pid), "slirp4netns outlives the launcher like the task");
    r2.stop(&t, Duration::from_millis(200)).await.unwrap();
    r2.remove(&t).await.unwrap();
    for _ in 0..50 {
        if !alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(pid), "slirp4netns leaked");
    assert!(!mounted(), "network namespace mount leaked");
    assert!(!r2.tasks_dir().join(&t).join("net").exists());
}

#[tokio::test]
async fn without_slirp4netns_a_network_task_fails_to_launch() {
    let d = scratch::tempdir();
    let r = runner_with(d.path(), |c| c.slirp4netns = "/nonexistent/slirp4netns".into());
    let e = r.launch(&req("noslirp", "true", true)).await.unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::InvalidSpec, "{e}");
    assert!(e.message.contains("slirp4netns"), "{e}");
    assert!(r.list().await.unwrap().is_empty(), "nothing left behind");
    // Without network it still runs.
    let (s, _, _) = run(&r, &req("noslirp-nonet", "true", false)).await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 });
}

#[tokio::test]
async fn work_and_tmp_are_size_limited() {
    let d = scratch::tempdir();
    let r = runner_with(d.path(), |c| {
        c.work_size_mb = 8;
        c.tmp_size_mb = 8;
    });
    for dir in ["/work", "/tmp"] {
        let cmd = format!("dd if=/dev/zero of={dir}/big bs=1M count=16");
        let (s, _, err) = run(&r, &req(&format!("fill{}", &dir[1..]), &cmd, false)).await;
        assert!(
            matches!(s, TaskStatus::Exited { exit_code } if exit_code != 0),
            "{dir}: {s:?} {err}"
        );
        assert!(err.contains("No space left on device"), "{dir}: {err}");
    }
    // Within the limit, writing works (and /work is the cwd and $HOME).
    let (s, out, err) = run(
        &r,
        &req(
            "fits",
            "dd if=/dev/zero of=big bs=1M count=4 2>/dev/null && pwd && echo $HOME",
            false,
        ),
    )
    .await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 }, "{err}");
    assert_eq!(out, "/work\n/work\n");
}

/// The worker's secrets are set in this test's own child (this test binary run again
/// with them in its environment: `std::env::set_var` is unsafe, and unsafe code is
/// forbidden here); the child runs a process task that prints its environment.
#[test]
fn a_process_task_does_not_see_the_workers_secrets() {
    const SECRET: &str = "s3cret-from-the-parent";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "process_task_env_child",
            "--nocapture",
            "--include-ignored",
        ])
        .env("JETRUN_NATS_PASSWORD", SECRET)
        .env("JETRUN_API_TOKENS", format!("t:{SECRET}"))
        .env("JETRUN_TEST_ENV_CHILD", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("TASK-ENV-BEGIN"),
        "the child did not run the task: {text}"
    );
    let task_env = text
        .split("TASK-ENV-BEGIN")
        .nth(1)
        .and_then(|t| t.split("TASK-ENV-END").next())
        .unwrap();
    assert!(
        task_env.contains("MINE=yes") && task_env.contains("JETRUN_JOB_ID=env"),
        "{task_env}"
    );
    assert!(
        !task_env.contains(SECRET),
        "a secret reached the task: {task_env}"
    );
    assert!(!task_env.contains("JETRUN_NATS_PASSWORD") && !task_env.contains("JETRUN_API_TOKENS"));
}

/// Run only as the child of the test above (ignored otherwise).
#[tokio::test]
#[ignore = "run by a_process_task_does_not_see_the_workers_secrets with secrets in its env"]
async fn process_task_env_child() {
    assert_eq!(std::env::var("JETRUN_TEST_ENV_CHILD").as_deref(), Ok("1"));
    assert!(
        std::env::var("JETRUN_NATS_PASSWORD").is_ok(),
        "the parent's secret is set here"
    );
    let d = scratch::tempdir();
    let r = ProcessRunner::new(d.path()).unwrap();
    let mut q = LaunchRequest::new(
        "env",
        1,
        JobSpec::new("q", "host", vec!["sh".into(), "-c".into(), "env".into()]),
        None,
    );
    q.spec.env.insert("MINE".into(), "yes".into());
    let (s, out, _) = run(&r, &q).await;
    assert_eq!(s, TaskStatus::Exited { exit_code: 0 });
    println!("TASK-ENV-BEGIN\n{out}TASK-ENV-END");
}
