//! The job lifecycle end to end: `jetrun worker` (dispatch + node agent + settle) as a
//! child process against a real nats-server, tasks run by the process runner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Env, Worker, sh};
use jetrun_core::JobStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_jobs_reach_their_exit_codes() {
    let env = Env::start().await;
    let _w = Worker::spawn(&env, &env.dir.path().join("w"), &["--max-concurrent-jobs", "64"]);
    let mut ids = Vec::new();
    for i in 0..500 {
        ids.push(env.submit(sh("default", &format!("exit {}", i % 4))).await);
    }
    let recs = env.wait_terminal(&ids, Duration::from_secs(60)).await;
    for (i, r) in recs.iter().enumerate() {
        let code = (i % 4) as i32;
        assert_eq!(r.exit_code, Some(code), "job {i}: {r:?}");
        let want = if code == 0 {
            JobStatus::Succeeded
        } else {
            JobStatus::Failed
        };
        assert_eq!(r.status, want, "job {i}");
        assert_eq!(r.attempt, 1, "job {i} was retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_flight_every_job_ends_and_none_runs_more_than_max_attempts() {
    let env = Env::start().await;
    let counts = env.dir.path().join("runs.txt");
    // Room for every job at once: no submission is in flight (fetched, unacked) when the
    // worker dies, which would wait out the consumer's 30 s ack wait.
    let mut w = Worker::spawn(&env, &env.dir.path().join("w"), &["--max-concurrent-jobs", "64"]);
    let mut ids = Vec::new();
    for i in 0..40 {
        let secs = 0.4 + f64::from(i % 7) * 0.3;
        let script = format!(
            "echo $JETRUN_JOB_ID >> {}; sleep {secs:.1}; exit {}",
            counts.display(),
            i % 3
        );
        ids.push(env.submit(sh("default", &script)).await);
    }
    // Let some finish and some be mid-flight, then kill -9 and come back.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    w.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.restart();
    let recs = env.wait_terminal(&ids, Duration::from_secs(60)).await;
    let text = std::fs::read_to_string(&counts).unwrap();
    let mut runs: HashMap<&str, u32> = HashMap::new();
    for l in text.lines() {
        *runs.entry(l.trim()).or_default() += 1;
    }
    for r in &recs {
        let n = runs.get(r.id.as_str()).copied().unwrap_or(0);
        assert!(n >= 1, "job {} never ran: {r:?}", r.id);
        assert!(
            n <= r.max_attempts,
            "job {} ran {n} times (max {})",
            r.id,
            r.max_attempts
        );
        assert!(r.status.is_terminal());
    }
    assert!(
        w.log_text().contains("adopting a task from a previous run"),
        "the restarted worker adopted the tasks it left: {}",
        w.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_of_a_queued_and_of_a_running_job() {
    let env = Env::start().await;
    let _w = Worker::spawn(&env, &env.dir.path().join("w"), &[]);
    // Nobody serves queue `idle`: the job stays queued.
    let queued = env.submit(sh("idle", "true")).await;
    let running = env.submit(sh("default", "sleep 30")).await;
    env.wait_for(&running, Duration::from_secs(10), "running", |r| {
        r.status == JobStatus::Running
    })
    .await;

    assert!(env.cli(&["jobs", "cancel", &queued]).contains("cancelled"));
    assert_eq!(env.get(&queued).await.status, JobStatus::Cancelled);

    let t0 = std::time::Instant::now();
    env.cli(&["jobs", "cancel", &running]);
    let r = env
        .wait_for(&running, Duration::from_secs(10), "cancelled", |r| {
            r.status.is_terminal()
        })
        .await;
    assert_eq!(r.status, JobStatus::Cancelled);
    assert_eq!(r.error.unwrap().kind, "cancelled");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "cancel took {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_is_killed_at_its_timeout() {
    let env = Env::start().await;
    let _w = Worker::spawn(&env, &env.dir.path().join("w"), &[]);
    let mut spec = sh("default", "trap '' TERM; sleep 30");
    spec.timeout_seconds = Some(1);
    let id = env.submit(spec).await;
    let r = env
        .wait_for(&id, Duration::from_secs(15), "terminal", |r| {
            r.status.is_terminal()
        })
        .await;
    assert_eq!(r.status, JobStatus::TimedOut);
    assert_eq!(r.error.unwrap().kind, "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_are_served_by_the_node_agent() {
    let env = Env::start().await;
    let _w = Worker::spawn(&env, &env.dir.path().join("w"), &[]);
    let id = env
        .submit(sh(
            "default",
            "for i in $(seq 1 500); do echo line $i; done; echo oops >&2",
        ))
        .await;
    env.wait_for(&id, Duration::from_secs(10), "succeeded", |r| {
        r.status == JobStatus::Succeeded
    })
    .await;
    let out = env
        .jetrun()
        .args(["jobs", "logs", &id, "--tail", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "line 498\nline 499\nline 500\n"
    );
    assert!(String::from_utf8(out.stderr).unwrap().contains("oops"));
}

/// A one-shot HTTP server: answers 200 to one request and hands back its head and body.
fn one_http_request() -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut head = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            head.push_str(&line);
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .unwrap();
        tx.send((head, body)).unwrap();
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completion_callbacks_over_nats_and_signed_http() {
    use futures::StreamExt;
    let env = Env::start().await;
    // The HTTP receiver below is on loopback, which callbacks reach only when allowed.
    let _w = Worker::spawn(
        &env,
        &env.dir.path().join("w"),
        &[
            "--callback-secret",
            "s3cret",
            "--callback-allow-hosts",
            "127.0.0.1/32",
        ],
    );
    let mut sub = env.client.subscribe("callbacks.default.done").await.unwrap();
    env.client.flush().await.unwrap();

    let mut spec = sh("default", "exit 7");
    spec.callback = Some(jetrun_core::job::Callback::Nats("callbacks.default.done".into()));
    let id = env.submit(spec).await;
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["job_id"], id.as_str());
    assert_eq!(v["to"], "failed");
    assert_eq!(v["exit_code"], 7);

    let (url, rx) = one_http_request();
    let mut spec = sh("default", "true");
    spec.callback = Some(jetrun_core::job::Callback::Http(url));
    let id = env.submit(spec).await;
    let (head, body) = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["job_id"], id.as_str());
    assert_eq!(v["to"], "succeeded");
    let sig = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-jetrun-signature-256:")
                .map(|s| s.trim().to_string())
        })
        .expect("signature header");
    assert_eq!(sig, jetrun_settle_sign(b"s3cret", &body));
}

/// HMAC-SHA256 as a receiver computes it (independently of settle's code).
fn jetrun_settle_sign(key: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}
