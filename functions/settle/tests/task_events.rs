//! Only the attempt's own node can end it (issue 8), on settle's lease-expiry path: when
//! settle missed the task events and a lease runs out, it looks in the TASKS stream for
//! the attempt's final event. A forged event stored there (after the real one, or alone)
//! must neither be believed nor hide the real one. Real nats-server; settle's consumers
//! are not running, so only the lease-expiry path reads the events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::HeaderMap;
use jetrun_core::job::Transition;
use jetrun_core::schema::types;
use jetrun_core::task::{AttemptKey, TaskEvent, TaskPhase};
use jetrun_core::{JobRecord, JobSpec, JobStatus, Names};
use jetrun_harness::NatsServer;
use jetrun_nats::{EventPublisher, JobStore, Topology};
use jetrun_settle::{Config, Settle};

struct Rig {
    _server: NatsServer,
    js: async_nats::jetstream::Context,
    names: Names,
    store: JobStore,
    publisher: EventPublisher,
    settle: Settle,
}

async fn rig() -> Rig {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let store = JobStore::open(&js, &names, "/test/tasks").await.unwrap();
    let publisher = EventPublisher::new(js.clone(), "/test/agent");
    let ctx = jetrun_host::Context::from_client(client, names.clone())
        .await
        .unwrap();
    let settle = Settle::new(
        ctx,
        Config {
            describe_timeout: Duration::from_millis(200),
            backoff_base: Duration::from_millis(10),
            ..Config::default()
        },
    );
    Rig {
        _server: server,
        js,
        names,
        store,
        publisher,
        settle,
    }
}

/// A running job claimed by `node-a` with an attempt key, as dispatch leaves it.
async fn running(r: &Rig, id: &str) -> (JobRecord, AttemptKey) {
    let rec = JobRecord::new(
        id.into(),
        JobSpec::new("q", "busybox", vec!["true".into()]),
        None,
        None,
    );
    let a = r.store.admit(rec).await.unwrap();
    let mut keyed = a.record().clone();
    let key = AttemptKey::generate();
    keyed.attempt_key = Some(key.clone());
    let claim = Transition::Claim {
        worker_id: "w".into(),
        node_id: "node-a".into(),
    };
    let (rec, rev) = r.store.transition_at(&keyed, a.revision(), &claim).await.unwrap();
    let (rec, _) = r
        .store
        .transition_at(&rec, rev, &Transition::Started { task_ref: "t".into() })
        .await
        .unwrap();
    let stored = r.store.get(id).await.unwrap().unwrap().0;
    assert_eq!(stored.attempt_key.as_ref(), Some(&key), "the store keeps the key");
    (rec, key)
}

fn exited(id: &str, code: i32) -> TaskEvent {
    TaskEvent {
        job_id: id.into(),
        attempt: 1,
        phase: TaskPhase::Exited,
        task_ref: "t".into(),
        node_id: "node-a".into(),
        exit_code: Some(code),
        message: None,
        result: None,
        result_error: None,
        at: jetrun_core::now(),
    }
}

/// An unsigned `exited 0` with valid CloudEvent headers, as an attacker would send it.
async fn forge(r: &Rig, id: &str) {
    let env = r
        .publisher
        .envelope(types::TASK_LIFECYCLE)
        .with_id(format!("forged-{id}"));
    let mut h = HeaderMap::new();
    for (k, v) in env.to_headers() {
        h.insert(k.as_str(), v.as_str());
    }
    let body = serde_json::to_vec(&exited(id, 0)).unwrap();
    r.js.publish_with_headers(r.names.task("exited", id), h, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_forged_final_event_neither_counts_nor_hides_the_real_one() {
    let r = rig().await;
    let (_, key) = running(&r, "j-real").await;
    // The real end (signed by the node), then a forgery on the same subject.
    jetrun_node::publish_task_event(&r.publisher, &r.names, &exited("j-real", 3), None, Some(&key))
        .await
        .unwrap();
    forge(&r, "j-real").await;
    // Past the expiry's freshness guard; no lease, no agent answers: the stream decides.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(r.settle.on_lease_expired("j-real").await.unwrap());
    let rec = r.store.get("j-real").await.unwrap().unwrap().0;
    assert_eq!(
        (rec.status, rec.exit_code),
        (JobStatus::Failed, Some(3)),
        "{rec:?}"
    );

    // A forgery alone is no final event: the job is retried, not succeeded.
    running(&r, "j-forged").await;
    forge(&r, "j-forged").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(r.settle.on_lease_expired("j-forged").await.unwrap());
    let rec = r.store.get("j-forged").await.unwrap().unwrap().0;
    assert_eq!((rec.status, rec.attempt), (JobStatus::Queued, 2), "{rec:?}");
    assert_eq!(rec.error.unwrap().kind, "lease_expired");
}

/// The job's last state-change event on `<prefix>.job.event.<queue>.<id>`.
async fn last_change(r: &Rig, id: &str) -> jetrun_nats::store::StateChange {
    let stream = r.js.get_stream(r.names.stream_job_events()).await.unwrap();
    let m = stream
        .direct_get_last_for_subject(r.names.job_event("q", id))
        .await
        .unwrap();
    serde_json::from_slice(&m.payload).unwrap()
}

#[tokio::test]
async fn an_exit_with_a_result_puts_it_in_the_record_and_its_event() {
    let r = rig().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running_settle = tokio::spawn(r.settle.clone().run(shutdown.clone()));

    // Exit 0 with a result: succeeded, the result in the record and in the event.
    let (_, key) = running(&r, "j-result").await;
    let mut ev = exited("j-result", 0);
    let mut result = serde_json::Map::new();
    result.insert("coverage".into(), serde_json::json!(0.93));
    ev.result = Some(result.clone());
    jetrun_node::publish_task_event(&r.publisher, &r.names, &ev, None, Some(&key))
        .await
        .unwrap();
    // Exit 2 with a refused result: failed by its exit code, the refusal recorded.
    let (_, key) = running(&r, "j-refused").await;
    let mut ev = exited("j-refused", 2);
    ev.result_error = Some("result is 70000 bytes, more than 65536".into());
    jetrun_node::publish_task_event(&r.publisher, &r.names, &ev, None, Some(&key))
        .await
        .unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (ok, refused) = loop {
        let ok = r.store.get("j-result").await.unwrap().unwrap().0;
        let refused = r.store.get("j-refused").await.unwrap().unwrap().0;
        if ok.status.is_terminal() && refused.status.is_terminal() {
            break (ok, refused);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not settled: {ok:?} {refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ok.status, JobStatus::Succeeded);
    assert_eq!(ok.result.as_ref(), Some(&result));
    assert_eq!(ok.result_error, None);
    let json = serde_json::to_value(&ok).unwrap();
    assert_eq!(json["result"]["coverage"], 0.93, "the record's JSON carries it");
    let change = last_change(&r, "j-result").await;
    assert_eq!(change.to, JobStatus::Succeeded);
    assert_eq!(change.record.result.as_ref(), Some(&result));

    assert_eq!((refused.status, refused.exit_code), (JobStatus::Failed, Some(2)));
    assert_eq!(refused.error.as_ref().unwrap().kind, "exit_code");
    assert_eq!(refused.result, None);
    assert_eq!(
        refused.result_error.as_deref(),
        Some("result is 70000 bytes, more than 65536")
    );
    let change = last_change(&r, "j-refused").await;
    assert_eq!(change.record.result_error, refused.result_error);

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), running_settle).await;
}
