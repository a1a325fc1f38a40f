//! `jetrun dev` end to end: the real binary, a managed nats-server, real clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;

mod common;

use common::{Dev, start_dev as start_dev_with};

/// `jetrun dev` serving only `default`, so a job on queue `parked` stays queued.
fn start_dev() -> Dev {
    start_dev_with(&["--queue", "default"])
}

fn jetrun(dev: &Dev, args: &[&str]) -> (bool, String, String) {
    let out = common::jetrun(dev, args);
    (out.status.success(), common::stdout(&out), common::stderr(&out))
}

#[tokio::test]
async fn dev_comes_up_with_every_stream_and_bucket_and_shuts_down_cleanly() {
    let mut dev = start_dev();
    assert!(dev.http.starts_with("http://127.0.0.1:"));
    let client = async_nats::connect(&dev.nats).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut names: Vec<String> = js.stream_names().map(|n| n.unwrap()).collect().await;
    names.sort();
    for s in [
        "JETRUN_DLQ",
        "JETRUN_JOBS",
        "JETRUN_JOB_EVENTS",
        "JETRUN_SCALE",
        "JETRUN_TASKS",
        "JETRUN_WEBHOOKS",
    ] {
        assert!(names.contains(&s.to_string()), "{s} missing from {names:?}");
    }
    for b in [
        "jetrun-jobs",
        "jetrun-index",
        "jetrun-leases",
        "jetrun-dedupe",
        "jetrun-scale",
        "jetrun-nodes",
    ] {
        js.get_key_value(b)
            .await
            .unwrap_or_else(|e| panic!("bucket {b}: {e}"));
    }

    // A job on a queue nobody serves stays queued, and `jobs get --json` shows it.
    let (ok, stdout, stderr) = jetrun(
        &dev,
        &["submit", "--queue", "parked", "--image", "busybox", "--", "true"],
    );
    assert!(ok, "submit failed: {stderr}");
    let id = stdout.trim().to_string();
    assert_eq!(
        stdout.lines().count(),
        1,
        "submit prints the id alone: {stdout:?}"
    );
    let (ok, json, stderr) = jetrun(&dev, &["jobs", "get", &id, "--json"]);
    assert!(ok, "jobs get failed: {stderr}");
    let rec: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rec["status"], "queued");
    assert_eq!(rec["queue"], "parked");
    let (ok, list, _) = jetrun(&dev, &["jobs", "list", "--queue", "parked", "--status", "queued"]);
    assert!(ok && list.contains(&id), "{list}");

    // Resubmitting with the same idempotency key returns the same job.
    let a = jetrun(
        &dev,
        &[
            "submit",
            "-q",
            "parked",
            "--image",
            "busybox",
            "--idempotency-key",
            "k1",
            "--",
            "true",
        ],
    )
    .1;
    let b = jetrun(
        &dev,
        &[
            "submit",
            "-q",
            "parked",
            "--image",
            "busybox",
            "--idempotency-key",
            "k1",
            "--",
            "true",
        ],
    )
    .1;
    assert_eq!(a, b);

    // `init` against the running deployment changes nothing.
    let (ok, report, _) = jetrun(&dev, &["init", "--json"]);
    assert!(ok);
    let report: Vec<serde_json::Value> = serde_json::from_str(&report).unwrap();
    assert!(report.iter().all(|r| r["change"] == "unchanged"), "{report:?}");

    // SIGTERM: everything stops, including the managed nats-server.
    let pid = nix::unistd::Pid::from_raw(dev.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = dev.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "jetrun dev did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    let port = dev.nats.rsplit(':').next().unwrap();
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
        "nats-server still listening after dev exited"
    );
}

#[tokio::test]
async fn a_malformed_submission_lands_in_the_dead_letter_stream_with_its_reason() {
    let dev = start_dev();
    let client = async_nats::connect(&dev.nats).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // Straight to NATS, bypassing every producer-side check: no image, unknown field.
    js.publish(
        "jetrun.job.submit.default",
        r#"{"queue":"default","surprise":true}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let start = Instant::now();
    loop {
        let (ok, out, err) = jetrun(&dev, &["dlq", "list", "--json"]);
        assert!(ok, "{err}");
        if let Some(line) = out.lines().next() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["entry"]["subject"], "jetrun.job.submit.default");
            let reason = v["entry"]["reason"].as_str().unwrap();
            assert!(!reason.is_empty());
            assert!(!v["entry"]["reason_kind"].as_str().unwrap().is_empty());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no dead letter after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
