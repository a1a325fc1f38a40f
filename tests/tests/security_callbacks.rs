//! Issue 8, part B, end to end: completion callbacks confined. `jetrun worker` (dispatch,
//! agent and settle) as a child process against a real nats-server; hostile jobs run for
//! real and their callbacks are refused when they end.
//!
//! The hostile jobs are admitted straight into the store and their submission published,
//! as a producer that skipped the submission-time check would: settle's check right
//! before sending is the one that must hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Env, Worker, sh};
use futures::StreamExt;
use jetrun_core::job::Callback;
use jetrun_core::schema::types;
use jetrun_core::{JobRecord, JobSpec, JobStatus};

/// Admits `spec` and publishes its submission, bypassing any submission-time check.
async fn admit_unchecked(env: &Env, spec: JobSpec) -> String {
    let id = fresh_id();
    let rec = JobRecord::new(id.clone(), spec.clone(), None, None);
    env.store.admit(rec).await.unwrap();
    let e = env
        .publisher
        .envelope(types::JOB_SUBMITTED)
        .with_id(id.clone())
        .with_subject(id.clone());
    env.publisher
        .publish(env.names.job_submit(&spec.queue), &e, &spec)
        .await
        .unwrap();
    id
}

/// A fresh job id (any `[A-Za-z0-9_-]` string is one).
fn fresh_id() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("hostile-{ns}-{n}")
}

fn hostile(cb: Callback) -> JobSpec {
    let mut s = sh("default", "true");
    s.tenant = Some("mallory".into());
    s.callback = Some(cb);
    s
}

async fn dead_letter_of(env: &Env, job_id: &str, within: Duration) -> jetrun_core::dlq::DeadLetter {
    let deadline = Instant::now() + within;
    loop {
        let all = jetrun_nats::dlq::list(&env.js, &env.names, 0, 1000)
            .await
            .unwrap();
        if let Some(s) = all
            .into_iter()
            .find(|s| s.entry.subject == env.names.job_callback("default", job_id))
        {
            return s.entry;
        }
        assert!(Instant::now() < deadline, "no callback dead letter for {job_id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_callbacks_are_refused_end_to_end() {
    let env = Env::start().await;
    let _w = Worker::spawn(&env, &env.dir.path().join("w"), &["--callback-secret", "s3cret"]);

    // The victim: another tenant's job, running.
    let mut v = sh("default", "sleep 60");
    v.tenant = Some("victim".into());
    let victim = env.submit(v).await;
    let before = env
        .wait_for(&victim, Duration::from_secs(20), "running", |r| {
            r.status == JobStatus::Running
        })
        .await;
    let mut cancel_sub = env.client.subscribe(env.names.job_cancel(&victim)).await.unwrap();
    let mut own = env.client.subscribe("callbacks.mallory.done").await.unwrap();
    env.client.flush().await.unwrap();

    // A loopback listener that must never be reached.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let reached = Arc::new(Mutex::new(0usize));
    let r2 = reached.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            *r2.lock().unwrap() += 1;
        }
    });

    let attacks = [
        Callback::Nats(format!("$KV.{}.{victim}", env.names.bucket_jobs())),
        Callback::Nats(env.names.job_cancel(&victim)),
        Callback::Nats("callbacks.victim.done".into()),
        Callback::Http(format!("http://127.0.0.1:{port}/hook")),
        Callback::Http(format!("http://localhost:{port}/hook")),
        Callback::Http("http://169.254.169.254/latest/meta-data/iam/security-credentials/".into()),
    ];
    let mut ids = Vec::new();
    for cb in attacks {
        ids.push((format!("{cb:?}"), admit_unchecked(&env, hostile(cb)).await));
    }
    let legit = admit_unchecked(&env, hostile(Callback::Nats("callbacks.mallory.done".into()))).await;

    for (what, id) in &ids {
        let rec = env
            .wait_for(id, Duration::from_secs(30), "terminal", |r| {
                r.status.is_terminal()
            })
            .await;
        let dl = dead_letter_of(&env, id, Duration::from_secs(15)).await;
        assert_eq!(dl.reason_kind, "callback_refused", "{what}: {dl:?}");
        assert_eq!(dl.deliveries, 1, "{what}: retried");
        // The job's own outcome is what it was; the refusal is only the callback's.
        assert_eq!(env.get(id).await.status, rec.status, "{what}");
    }
    let m = tokio::time::timeout(Duration::from_secs(20), own.next())
        .await
        .expect("the legitimate callback")
        .unwrap();
    let change: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(change["job_id"], legit.as_str());

    // The victim is untouched: same record (it still decodes), still running, never
    // asked to cancel; nobody reached the listener.
    let (after, _) = env.store.get(&victim).await.expect("victim decodes").unwrap();
    assert_eq!(after.status, JobStatus::Running);
    assert_eq!(after.attempt, before.attempt);
    assert!(!after.cancel_requested);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), cancel_sub.next())
            .await
            .is_err(),
        "a cancel reached the victim"
    );
    env.store
        .list("default", None, 1000)
        .await
        .expect("listing works");
    assert_eq!(*reached.lock().unwrap(), 0, "a callback reached loopback");
}
