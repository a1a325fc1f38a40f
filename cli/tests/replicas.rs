//! Redundancy is never lowered silently (issue 14): on a real 3-node cluster,
//! `jetrun init --replicas 3` then `jetrun dev --nats-url <cluster>` leaves every stream
//! and bucket at R3; `init --replicas 1` is refused, naming the stream and both numbers,
//! and changes nothing; `--force-replicas` lowers with a warning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_jetrun");

fn jetrun(urls: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("JETRUN_NATS_URL", urls)
        .env_remove("JETRUN_REPLICAS")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Replicas of every jetrun stream and bucket, by stream name.
async fn replicas(js: &async_nats::jetstream::Context) -> Vec<(String, usize)> {
    use futures::StreamExt;
    let mut names = js.stream_names();
    let mut out = Vec::new();
    while let Some(n) = names.next().await {
        let n = n.unwrap();
        if n.starts_with("JETRUN_") || n.starts_with("KV_jetrun-") {
            let r = js
                .get_stream(&n)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .config
                .num_replicas;
            out.push((n, r));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_r3_then_dev_on_the_cluster_stays_r3_and_lowering_needs_force() {
    let cluster = jetrun_harness::Cluster::start().await.unwrap();
    let urls = cluster.urls();
    let js = async_nats::jetstream::new(cluster.client().await);

    let (ok, _, err) = jetrun(&urls, &["init", "--replicas", "3"]);
    assert!(ok, "{err}");
    let r3 = replicas(&js).await;
    assert_eq!(r3.len(), 14, "{r3:?}");
    assert!(r3.iter().all(|(_, r)| *r == 3), "{r3:?}");

    // `jetrun dev --nats-url <cluster>` without --replicas keeps R3.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dev = Command::new(BIN)
        .args([
            "dev",
            "--nats-url",
            &urls,
            "--runner",
            "process",
            "--queue",
            "default",
        ])
        .arg("--http")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("JETRUN_REPLICAS")
        .env_remove("JETRUN_API_TOKENS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = dev.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("ready") {
                let _ = tx.send(());
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(60));
    let pid = nix::unistd::Pid::from_raw(dev.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = dev.wait();
    assert!(ready.is_ok(), "dev did not come up on the cluster");
    assert_eq!(replicas(&js).await, r3, "dev changed the replicas");

    // A lower count is refused, naming the resource and both numbers; nothing changes.
    let (ok, _, err) = jetrun(&urls, &["init", "--replicas", "1"]);
    assert!(!ok, "lowering without --force-replicas must fail");
    assert!(
        err.contains("JETRUN_WEBHOOKS")
            && err.contains("has 3 replicas, 1 asked for")
            && err.contains("--force-replicas"),
        "{err}"
    );
    assert_eq!(replicas(&js).await, r3);

    // Forced: lowered, with a warning per resource.
    let (ok, _, err) = jetrun(&urls, &["init", "--replicas", "1", "--force-replicas"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: stream JETRUN_JOBS: replicas lowered from 3 to 1"),
        "{err}"
    );
    assert!(replicas(&js).await.iter().all(|(_, r)| *r == 1));

    // And raising again needs no force.
    let (ok, _, err) = jetrun(&urls, &["init", "--replicas", "3"]);
    assert!(ok, "{err}");
    assert!(replicas(&js).await.iter().all(|(_, r)| *r == 3));
}
