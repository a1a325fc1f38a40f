//! Security issue #8, part C, end to end: only the attempt's own node can end it.
//!
//! A real nats-server and `jetrun worker` (dispatch + node agent + settle, as `jetrun dev`
//! wires them). A victim job runs; an attacker who can publish on the task subjects
//! (a job that reached NATS, a stolen credential) publishes `jetrun.task.exited.<victim>`
//! with exit 0 in every way we could think of. Each forgery must be refused (the victim
//! keeps running) and dead-lettered as `forged_task_event` with its reason; the real
//! completion must still settle the job. Also: the attempt key never leaves the store
//! (API, state-change events, the task's environment), and network jobs are the
//! operator's decision per queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use common::{Env, Worker, sh};
use hmac::{KeyInit, Mac};
use jetrun_core::JobStatus;
use jetrun_core::schema::types;
use jetrun_core::task::{TaskEvent, TaskPhase};

const SIG: &str = "Jetrun-Task-Signature";

/// The signature as docs/runner.md defines it, computed independently of the agent:
/// `v1=<hex HMAC-SHA256(key, "jetrun-task-v1\n" + ce-type + "\n" + subject + "\n" + body)>`.
fn sign(key: &[u8], ce_type: &str, subject: &str, body: &[u8]) -> String {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(format!("jetrun-task-v1\n{ce_type}\n{subject}\n").as_bytes());
    m.update(body);
    format!("v1={}", hex::encode(m.finalize().into_bytes()))
}

fn ce_headers(ty: &str, id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("ce-specversion", "1.0");
    h.insert("ce-id", id);
    h.insert("ce-type", ty);
    h.insert("ce-source", "/attacker");
    h.insert("ce-time", jetrun_core::now().to_rfc3339().as_str());
    h
}

fn exited(job_id: &str, attempt: u32, node: &str, task_ref: &str) -> TaskEvent {
    TaskEvent {
        job_id: job_id.into(),
        attempt,
        phase: TaskPhase::Exited,
        task_ref: task_ref.into(),
        node_id: node.into(),
        exit_code: Some(0),
        message: None,
        result: None,
        result_error: None,
        at: jetrun_core::now(),
    }
}

/// Publishes to JetStream (the TASKS stream stores it) and returns its stream sequence.
async fn publish(env: &Env, subject: &str, headers: Option<HeaderMap>, body: Vec<u8>) -> u64 {
    let ack = match headers {
        Some(h) => {
            env.js
                .publish_with_headers(subject.to_string(), h, body.into())
                .await
        }
        None => env.js.publish(subject.to_string(), body.into()).await,
    }
    .unwrap()
    .await
    .unwrap();
    ack.sequence
}

/// Waits until the DLQ holds an entry for TASKS stream sequence `seq`; returns it.
async fn dead_letter_of(env: &Env, seq: u64) -> jetrun_core::dlq::DeadLetter {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = jetrun_nats::dlq::list(&env.js, &env.names, 0, 1000)
            .await
            .unwrap();
        if let Some(s) = all.into_iter().find(|s| {
            s.entry.stream.as_deref() == Some(env.names.stream_tasks().as_str())
                && s.entry.stream_seq == Some(seq)
        }) {
            return s.entry;
        }
        assert!(Instant::now() < deadline, "no dead letter for task event {seq}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_task_events_are_refused_and_dead_lettered_and_the_real_end_settles() {
    let env = Env::start().await;
    let _w = Worker::spawn(&env, &env.dir.path().join("w"), &[]);
    let gate = env.dir.path().join("go");
    let env_dump = env.dir.path().join("task.env");
    // The victim: runs until the test lets it end, then exits 3 (so a forged "exit 0"
    // that got through would show as `succeeded`).
    let script = format!(
        "env > {}; while [ ! -f {} ]; do sleep 0.1; done; exit 3",
        env_dump.display(),
        gate.display()
    );
    let victim = env.submit(sh("default", &script)).await;
    let rec = env
        .wait_for(&victim, Duration::from_secs(20), "running", |r| {
            r.status == JobStatus::Running
        })
        .await;
    let node = rec.node_id.clone().unwrap();
    let task_ref = rec.task_ref.clone().unwrap();
    let key = rec.attempt_key.clone().expect("the claim stored an attempt key");
    let real_key = hex::decode(key.as_hex()).unwrap();
    let subject = env.names.task("exited", &victim);
    let body = serde_json::to_vec(&exited(&victim, 1, &node, &task_ref)).unwrap();
    let ty = types::TASK_LIFECYCLE;

    let mut forgeries: Vec<(&str, u64, &str)> = Vec::new();
    // 1. No headers at all.
    let seq = publish(&env, &subject, None, body.clone()).await;
    forgeries.push(("no headers", seq, "no valid CloudEvent headers"));
    // 2. A foreign ce-type.
    let seq = publish(
        &env,
        &subject,
        Some(ce_headers(types::JOB_SUBMITTED, "f2")),
        body.clone(),
    )
    .await;
    forgeries.push(("foreign ce-type", seq, "is not dev.jetrun.task.lifecycle.v1"));
    // 3a. The right type, no signature.
    let seq = publish(&env, &subject, Some(ce_headers(ty, "f3a")), body.clone()).await;
    forgeries.push(("no signature", seq, "no Jetrun-Task-Signature header"));
    // 3b. The right type, a malformed signature.
    let mut h = ce_headers(ty, "f3b");
    h.insert(SIG, "sha256=deadbeef");
    let seq = publish(&env, &subject, Some(h), body.clone()).await;
    forgeries.push(("malformed signature", seq, "malformed signature"));
    // 3c. A well-formed signature of something else (another body).
    let mut h = ce_headers(ty, "f3c");
    h.insert(SIG, sign(&real_key, ty, &subject, b"{}").as_str());
    let seq = publish(&env, &subject, Some(h), body.clone()).await;
    forgeries.push(("signature of another body", seq, "does not match"));
    // 4. Signed with a wrong key.
    let mut h = ce_headers(ty, "f4");
    h.insert(SIG, sign(&[7u8; 32], ty, &subject, &body).as_str());
    let seq = publish(&env, &subject, Some(h), body.clone()).await;
    forgeries.push(("wrong key", seq, "does not match"));
    // 5. Another node (even signed with the real key: the node check stands alone).
    let other = serde_json::to_vec(&exited(&victim, 1, "attacker-node", &task_ref)).unwrap();
    let mut h = ce_headers(ty, "f5");
    h.insert(SIG, sign(&real_key, ty, &subject, &other).as_str());
    let seq = publish(&env, &subject, Some(h), other).await;
    forgeries.push(("wrong node", seq, "is not the node of attempt 1"));
    // 6. A subject that does not match the body (signed for that subject).
    let lost_subject = env.names.task("lost", &victim);
    let mut h = ce_headers(ty, "f6");
    h.insert(SIG, sign(&real_key, ty, &lost_subject, &body).as_str());
    let seq = publish(&env, &lost_subject, Some(h), body.clone()).await;
    forgeries.push((
        "subject/body mismatch",
        seq,
        "does not match the body's phase and job",
    ));
    // 7. Pre-empting the real event's dedupe id (`<job>-<attempt>.<phase>` before this
    //    change): the real event must still be stored later.
    let mut h = ce_headers(ty, &format!("{victim}-1.exited"));
    h.insert("Nats-Msg-Id", format!("{victim}-1.exited").as_str());
    let seq = publish(&env, &subject, Some(h), body.clone()).await;
    forgeries.push(("pre-empted dedupe id", seq, "no Jetrun-Task-Signature header"));

    for (what, seq, reason) in &forgeries {
        let dl = dead_letter_of(&env, *seq).await;
        assert_eq!(dl.reason_kind, "forged_task_event", "{what}: {dl:?}");
        assert!(
            dl.reason.contains(reason),
            "{what}: reason {:?} lacks {reason:?}",
            dl.reason
        );
        assert_eq!(dl.origin, "settle", "{what}");
    }
    let now = env.get(&victim).await;
    assert_eq!(
        now.status,
        JobStatus::Running,
        "a forgery changed the victim: {now:?}"
    );
    assert_eq!((now.attempt, now.exit_code), (1, None));

    // The key never leaves the store: not in the task's environment, the API's JSON or
    // the state-change events.
    let task_env = std::fs::read_to_string(&env_dump).unwrap();
    assert!(task_env.contains("JETRUN_JOB_ID="), "{task_env}");
    assert!(!task_env.contains(key.as_hex()), "the task sees its attempt key");
    let api = env.cli(&["jobs", "get", &victim, "--json"]);
    assert!(
        api.contains(&victim) && !api.contains(key.as_hex()) && !api.contains("attempt_key"),
        "{api}"
    );
    let events = env.js.get_stream(env.names.stream_job_events()).await.unwrap();
    let mut seq = 1;
    let mut seen = 0;
    while let Ok(m) = events.get_raw_message(seq).await {
        let text = String::from_utf8_lossy(&m.payload);
        assert!(
            !text.contains(key.as_hex()) && !text.contains("attempt_key"),
            "{text}"
        );
        seen += 1;
        seq += 1;
    }
    assert!(seen >= 3, "state changes read: {seen}");

    // The real end still settles, with the real exit code.
    std::fs::write(&gate, b"").unwrap();
    let done = env
        .wait_terminal(std::slice::from_ref(&victim), Duration::from_secs(20))
        .await;
    assert_eq!(done[0].status, JobStatus::Failed, "{:?}", done[0]);
    assert_eq!(done[0].exit_code, Some(3));
    assert_eq!(done[0].attempt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_network_job_on_a_queue_not_allowed_fails_with_network_not_allowed() {
    let env = Env::start().await;
    // `jetrun worker` allows network on no queue unless told.
    let _w = Worker::spawn(
        &env,
        &env.dir.path().join("w"),
        &["--queue", "default,netq", "--network-queues", "netq"],
    );
    let mut denied = sh("default", "echo should-not-run");
    denied.network = true;
    let denied = env.submit(denied).await;
    let mut allowed = sh("netq", "exit 0");
    allowed.network = true;
    let allowed = env.submit(allowed).await;
    let plain = env.submit(sh("default", "exit 0")).await;
    let recs = env
        .wait_terminal(&[denied.clone(), allowed, plain], Duration::from_secs(30))
        .await;
    assert_eq!(recs[0].status, JobStatus::Failed, "{:?}", recs[0]);
    let err = recs[0].error.clone().unwrap();
    assert_eq!(err.kind, "network_not_allowed", "{err:?}");
    assert_eq!(recs[0].attempt, 1, "not retried");
    assert!(recs[0].task_ref.is_none(), "never launched");
    assert_eq!(recs[1].status, JobStatus::Succeeded, "{:?}", recs[1]);
    assert_eq!(recs[2].status, JobStatus::Succeeded, "{:?}", recs[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_without_network_queues_refuses_every_network_job() {
    let env = Env::start().await;
    let _w = Worker::spawn(&env, &env.dir.path().join("w"), &[]);
    let mut spec = sh("default", "exit 0");
    spec.network = true;
    let id = env.submit(spec).await;
    let r = env.wait_terminal(&[id], Duration::from_secs(20)).await;
    assert_eq!(r[0].status, JobStatus::Failed);
    assert_eq!(r[0].error.as_ref().unwrap().kind, "network_not_allowed");
}

/// The attack of the issue itself: a `network: true` container tries to reach the host's
/// NATS (on 127.0.0.1, as in `jetrun dev`) to publish a forged event. With its own
/// network namespace it cannot connect at all, directly or through slirp's gateway, yet
/// it does have a network (tap0). Real runc containers; no skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_network_container_cannot_reach_the_hosts_nats() {
    let env = Env::start().await;
    let _w = Worker::spawn_with(&env, &env.dir.path().join("w"), "oci", &["--network-queues", "*"]);
    let url = env.server.url();
    let port = url.rsplit(':').next().unwrap().trim_end_matches('/');
    let script = format!(
        "ip -4 addr show tap0 | grep -q 10.0.2.100 || exit 10; \
         for h in 127.0.0.1 10.0.2.2; do \
           if echo 'PUB jetrun.task.exited.x 2\r\nhi\r\n' | nc -w 3 $h {port} | grep -q INFO; then exit 20; fi; \
         done; exit 0"
    );
    let mut spec = jetrun_core::JobSpec::new("default", "busybox", vec!["sh".into(), "-c".into(), script]);
    spec.network = true;
    let id = env.submit(spec).await;
    let r = env.wait_terminal(&[id], Duration::from_secs(60)).await;
    assert_eq!(
        (r[0].status, r[0].exit_code),
        (JobStatus::Succeeded, Some(0)),
        "exit 10: no network at all; exit 20: reached the host's NATS: {:?}",
        r[0]
    );
}

/// A restarted agent adopts the task and signs its end with the key it re-reads from the
/// record: the end settles at once on attempt 1, and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adopted_task_still_ends_with_a_valid_signature() {
    let env = Env::start().await;
    let mut w = Worker::spawn(&env, &env.dir.path().join("w"), &[]);
    let gate = env.dir.path().join("go");
    let script = format!("while [ ! -f {} ]; do sleep 0.1; done; exit 4", gate.display());
    let id = env.submit(sh("default", &script)).await;
    env.wait_for(&id, Duration::from_secs(20), "running", |r| {
        r.status == JobStatus::Running
    })
    .await;
    w.kill9();
    w.restart();
    std::fs::write(&gate, b"").unwrap();
    let r = env
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    assert_eq!(
        (r[0].status, r[0].exit_code, r[0].attempt),
        (JobStatus::Failed, Some(4), 1),
        "{:?}",
        r[0]
    );
    assert!(
        w.log_text().contains("adopting a task from a previous run"),
        "{}",
        w.log_text()
    );
    let dl = jetrun_nats::dlq::list(&env.js, &env.names, 0, 100).await.unwrap();
    assert!(
        dl.iter().all(|s| s.entry.reason_kind != "forged_task_event"),
        "{:?}",
        dl.iter().map(|s| &s.entry.reason).collect::<Vec<_>>()
    );
}

/// A task's result is untrusted output: it reaches the record only through the signed
/// `exited` event, checked (one JSON object, at most 16 KiB); a refused one is said in
/// `result_error` and never changes the job's status, which follows the exit code alone.
/// `jetrun jobs get` shows both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tasks_result_reaches_the_record_checked_and_never_changes_its_status() {
    let env = Env::start().await;
    let _w = Worker::spawn(&env, &env.dir.path().join("w"), &[]);
    let good = env
        .submit(sh(
            "default",
            r#"printf '{"first_bad":"abc123"}' > "$JETRUN_RESULT""#,
        ))
        .await;
    let bad = env
        .submit(sh("default", r#"echo 'not json' > "$JETRUN_RESULT""#))
        .await;
    let failing = env
        .submit(sh(
            "default",
            r#"printf '{"why":"flaky"}' > "$JETRUN_RESULT"; exit 3"#,
        ))
        .await;
    let r = env
        .wait_terminal(
            &[good.clone(), bad.clone(), failing.clone()],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(r[0].status, JobStatus::Succeeded, "{:?}", r[0]);
    assert_eq!(r[0].result.as_ref().unwrap()["first_bad"], "abc123");
    assert_eq!(r[0].result_error, None);
    assert_eq!(r[1].status, JobStatus::Succeeded, "{:?}", r[1]);
    assert_eq!(r[1].result, None);
    let e = r[1].result_error.as_deref().unwrap();
    assert!(e.contains("not valid JSON"), "{e}");
    assert_eq!(
        (r[2].status, r[2].exit_code),
        (JobStatus::Failed, Some(3)),
        "{:?}",
        r[2]
    );
    assert_eq!(r[2].result.as_ref().unwrap()["why"], "flaky");
    let shown = env.cli(&["jobs", "get", &good]);
    assert!(shown.contains(r#"result:    {"first_bad":"abc123"}"#), "{shown}");
    let shown = env.cli(&["jobs", "get", &bad]);
    assert!(
        shown.contains("result:    refused: result is not valid JSON"),
        "{shown}"
    );
}
