//! `jetrun worker --config FILE` against a real nats-server: the file's settings reach the
//! running components, flags override it, and a bad file fails before anything connects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_jetrun");

/// A child killed on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn jetrun(url: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env("JETRUN_NATS_URL", url)
        .env_remove("JETRUN_QUEUES")
        .env_remove("JETRUN_RUNNER")
        .env_remove("JETRUN_MAX_CONCURRENT_JOBS")
        .env_remove("JETRUN_DATA_DIR");
    c
}

/// Starts a worker and waits for its `ready` line; returns it and that line.
fn start_worker(mut cmd: Command) -> (Proc, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("ready") {
                let _ = tx.send(line);
            }
        }
    });
    let proc = Proc(child);
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the worker came up");
    (proc, line)
}

/// The live node entries (the agent's heartbeats).
async fn nodes(url: &str) -> Vec<serde_json::Value> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let kv = js.get_key_value("jetrun-nodes").await.unwrap();
    let mut out = Vec::new();
    let mut keys = kv.keys().await.unwrap();
    while let Some(k) = keys.next().await {
        if let Some(v) = kv.get(k.unwrap()).await.unwrap() {
            out.push(serde_json::from_slice(&v).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_sets_the_worker_and_flags_override_it() {
    let server = jetrun_harness::NatsServer::start().unwrap();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let init = jetrun(&url)
        .args(["init", "--queue", "from-file"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    let cfg = dir.path().join("worker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "queues: [from-file]\ndata_dir: {}\nnode_id: node-from-file\nrunner: process\n\
             dispatch: {{max_concurrent_jobs: 2}}\nagent: {{lease_ttl: 4s, renew_every: 1s}}\n",
            dir.path().join("w1").display()
        ),
    )
    .unwrap();
    let mut w = jetrun(&url);
    w.arg("worker").arg("--config").arg(&cfg);
    let (w1, ready) = start_worker(w);
    assert_eq!(ready, "ready worker queues=from-file");

    // A job on the file's queue runs on the file's runner (a plain process) to its end.
    let out = jetrun(&url)
        .args([
            "submit",
            "-q",
            "from-file",
            "--image",
            "busybox",
            "--wait",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .args(["--max-attempts", "1"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = nodes(&url).await;
    assert!(
        n.iter().any(|n| n["node_id"] == "node-from-file"
            && n["runner"] == "process"
            && n["queues"] == serde_json::json!(["from-file"])),
        "{n:?}"
    );
    drop(w1);

    // Flags win over the file: another queue and node id, same file.
    let mut w = jetrun(&url);
    w.arg("worker")
        .arg("--config")
        .arg(&cfg)
        .args(["--queue", "from-flag", "--node-id", "node-from-flag"]);
    let (_w2, ready) = start_worker(w);
    assert_eq!(ready, "ready worker queues=from-flag");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = nodes(&url).await;
        if n.iter()
            .any(|n| n["node_id"] == "node-from-flag" && n["queues"] == serde_json::json!(["from-flag"]))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn a_bad_config_file_fails_at_once_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("worker.yaml");
    std::fs::write(&cfg, "dispatch: {max_concurent_jobs: 3}\n").unwrap();
    // Nothing listens on this URL: the error must come before any connection.
    let out = jetrun("nats://127.0.0.1:1")
        .arg("worker")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("max_concurent_jobs") && err.contains("worker.yaml"),
        "{err}"
    );
    assert!(
        !err.to_lowercase().contains("connect"),
        "failed before connecting: {err}"
    );

    std::fs::write(&cfg, "runner: ecs\n").unwrap();
    let out = jetrun("nats://127.0.0.1:1")
        .arg("worker")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--ecs-config"), "{err}");
}

#[cfg(feature = "ecs")]
#[test]
fn an_unknown_field_in_the_ecs_section_fails_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("worker.yaml");
    std::fs::write(
        &cfg,
        "runner: ecs\necs:\n  cluster: jobs\n  task_definition: job\n  subnet: [subnet-0a]\n",
    )
    .unwrap();
    // Nothing listens on this URL: the error must come before any connection.
    let out = jetrun("nats://127.0.0.1:1")
        .arg("worker")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("unknown field `subnet`") && err.contains("worker.yaml"),
        "{err}"
    );
    assert!(
        !err.to_lowercase().contains("connect"),
        "failed before connecting: {err}"
    );

    // A section that cannot work is refused the same way.
    std::fs::write(&cfg, "runner: ecs\necs: {cluster: jobs}\n").unwrap();
    let out = jetrun("nats://127.0.0.1:1")
        .arg("worker")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no task definition"), "{err}");
}
