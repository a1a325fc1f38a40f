//! Poison messages, lease expiry, retries, exhausted attempts and replay from the
//! dead-letter stream — through `jetrun worker` and the `jetrun` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Env, Worker, sh};
use jetrun_core::JobStatus;

/// `jetrun dlq list --json` as (seq, entry) pairs.
fn dlq(env: &Env) -> Vec<(u64, serde_json::Value)> {
    env.cli(&["dlq", "list", "--json"])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["seq"].as_u64().unwrap(), v["entry"].clone())
        })
        .collect()
}

async fn wait_dlq(env: &Env, n: usize) -> Vec<(u64, serde_json::Value)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let d = dlq(env);
        if d.len() >= n {
            return d;
        }
        assert!(Instant::now() < deadline, "expected {n} dead letters, have {d:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ce_headers(id: &str) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("ce-specversion", "1.0");
    h.insert("ce-id", id);
    h.insert("ce-type", "dev.jetrun.job.submitted.v1");
    h.insert("ce-source", "/test/poison");
    h.insert("ce-time", "2026-01-01T00:00:00Z");
    h.insert("Nats-Msg-Id", id);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_messages_land_in_the_dead_letter_stream_with_their_reason() {
    let env = Env::start().await;
    let _w = Worker::spawn(&env, &env.dir.path().join("w"), &[]);
    let subject = env.names.job_submit("default");
    let js = &env.js;
    js.publish_with_headers(
        subject.clone(),
        ce_headers("poison-json"),
        bytes::Bytes::from_static(b"{not json"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    js.publish_with_headers(
        subject.clone(),
        ce_headers("poison-schema"),
        bytes::Bytes::from_static(br#"{"queue":"default"}"#),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    js.publish(
        subject.clone(),
        bytes::Bytes::from_static(br#"{"queue":"default","image":"host","command":["true"]}"#),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let d = wait_dlq(&env, 3).await;
    let by_id = |id: &str| {
        d.iter()
            .find(|(_, e)| e["headers"]["ce-id"].as_str() == Some(id))
            .unwrap_or_else(|| panic!("no dead letter for {id}: {d:?}"))
            .clone()
    };
    let (_, json) = by_id("poison-json");
    assert_eq!(json["origin"], "dispatch");
    assert_eq!(json["reason_kind"], "schema");
    let (schema_seq, schema) = by_id("poison-schema");
    assert_eq!(schema["reason_kind"], "schema");
    assert!(
        schema["reason"].as_str().unwrap().contains("image"),
        "reason names the field: {schema}"
    );
    let bare = d
        .iter()
        .find(|(_, e)| e["headers"].get("ce-id").is_none())
        .unwrap();
    assert_eq!(bare.1["reason_kind"], "invalid_event");
    assert_eq!(bare.1["subject"], subject.as_str());

    // A replay of a message that is still poison comes back, with its reason: never lost.
    env.cli(&["dlq", "replay", &schema_seq.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let d = dlq(&env);
        let back = d.iter().any(|(s, e)| {
            *s != schema_seq && e["headers"]["ce-id"] == "poison-schema" && e["reason_kind"] == "schema"
        });
        if back && !d.iter().any(|(s, _)| *s == schema_seq) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replayed poison not dead-lettered again: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_expiry_retries_then_fails_into_the_dead_letters_and_replay_reruns() {
    let env = Env::start().await;
    let marker = env.dir.path().join("fixed");
    let script = format!("test -f {} && exit 0; sleep 20", marker.display());
    let a_dir = env.dir.path().join("a");
    let mut a = Worker::spawn(&env, &a_dir, &[]);

    let mut once = sh("default", &script);
    once.max_attempts = Some(1);
    once.labels.insert("case".into(), "once".into());
    let mut twice = sh("default", &script);
    twice.max_attempts = Some(2);
    let once = env.submit(once).await;
    let twice = env.submit(twice).await;
    for id in [&once, &twice] {
        env.wait_for(id, Duration::from_secs(10), "running", |r| {
            r.status == JobStatus::Running
        })
        .await;
    }

    // The worker dies for good: its leases expire and another worker's settle takes over.
    a.kill9();
    std::fs::write(&marker, b"").unwrap();
    let _b = Worker::spawn(&env, &env.dir.path().join("b"), &[]);

    let r = env
        .wait_for(&once, Duration::from_secs(20), "terminal", |r| {
            r.status.is_terminal()
        })
        .await;
    assert_eq!(r.status, JobStatus::Failed);
    assert_eq!(r.error.as_ref().unwrap().kind, "attempts_exhausted");
    assert!(
        r.error.as_ref().unwrap().message.contains("lease_expired"),
        "{r:?}"
    );

    let r = env
        .wait_for(&twice, Duration::from_secs(20), "terminal", |r| {
            r.status.is_terminal()
        })
        .await;
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    assert_eq!(r.attempt, 2);
    assert_eq!(
        r.error.as_ref().map(|e| e.kind.as_str()),
        Some("lease_expired"),
        "last attempt's error is kept"
    );

    let d = wait_dlq(&env, 1).await;
    let (seq, entry) = d
        .iter()
        .find(|(_, e)| e["job_id"] == once.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["reason_kind"], "attempts_exhausted");
    assert_eq!(entry["origin"], "settle");

    // The cause is fixed: replay submits the same spec again, as a new job, which succeeds.
    env.cli(&["dlq", "replay", &seq.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = env
            .store
            .list("default", Some(JobStatus::Succeeded), 100)
            .await
            .unwrap();
        if done
            .iter()
            .any(|r| r.id != once && r.spec.labels.get("case").map(String::as_str) == Some("once"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the replayed job did not succeed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        dlq(&env).iter().all(|(s, _)| *s != seq),
        "a replayed dead letter leaves the stream"
    );

    // The dead worker comes back: the tasks it left belong to jobs that moved on: reaped.
    a.restart();
    assert!(a.log_text().contains("reaped=2"), "{}", a.log_text());
}
