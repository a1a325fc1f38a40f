//! The lifecycle policy against a real nats-server: retry with backoff while attempts
//! remain, then a dead letter and `failed`; a dead letter that cannot be stored leaves
//! the job as it was (an error the caller keeps its message for), never dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use jetrun_core::job::Transition;
use jetrun_core::{JobError, JobRecord, JobSpec, JobStatus, Names};
use jetrun_harness::NatsServer;
use jetrun_nats::lifecycle::{AttemptOutcome, Lifecycle, LifecycleError, RetryPolicy};
use jetrun_nats::{EventPublisher, JobStore, Topology};

async fn running(store: &JobStore, id: &str, max_attempts: u32) -> (JobRecord, u64) {
    let mut spec = JobSpec::new("default", "busybox", vec!["true".into()]);
    spec.max_attempts = Some(max_attempts);
    let a = store
        .admit(JobRecord::new(id.into(), spec, None, None))
        .await
        .unwrap();
    let (r, rev) = store
        .transition_at(
            a.record(),
            a.revision(),
            &Transition::Claim {
                worker_id: "w".into(),
                node_id: "n".into(),
            },
        )
        .await
        .unwrap();
    store
        .transition_at(&r, rev, &Transition::Started { task_ref: "t".into() })
        .await
        .unwrap()
}

#[tokio::test]
async fn attempts_retry_with_backoff_then_fail_into_one_dead_letter_kept_until_it_is_stored() {
    let server = NatsServer::start().unwrap();
    let js = async_nats::jetstream::new(server.client().await);
    let names = Names::default();
    let topo = Topology::new(names.clone());
    topo.apply(&js).await.unwrap();
    let store = JobStore::open(&js, &names, "/test").await.unwrap();
    let policy = RetryPolicy {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(1),
    };
    let lifecycle = Lifecycle::new(
        store.clone(),
        EventPublisher::new(js.clone(), "/test"),
        "settle",
        policy,
    );

    // Attempt 1 of 2 fails: queued again for attempt 2, not before the backoff.
    let id = "0199a000-0000-7000-8000-000000000001";
    let (rec, rev) = running(&store, id, 2).await;
    let out = lifecycle
        .retry_or_fail(&rec, rev, JobError::new("lost", "node gone"))
        .await
        .unwrap();
    let AttemptOutcome::Retried { record, delay, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!((record.status, record.attempt), (JobStatus::Queued, 2));
    assert!(
        delay >= Duration::from_millis(100) && delay <= Duration::from_millis(200),
        "{delay:?}"
    );
    assert!(record.not_before.unwrap() > record.updated_at);

    // Attempt 2 of 2 fails while the dead-letter stream is gone: an error, and the job
    // is left running (not failed without its dead letter).
    let (r, rev) = store.get(id).await.unwrap().unwrap();
    let (r, rev) = store
        .transition_at(
            &r,
            rev,
            &Transition::Claim {
                worker_id: "w".into(),
                node_id: "n".into(),
            },
        )
        .await
        .unwrap();
    let (r, rev) = store
        .transition_at(
            &r,
            rev,
            &Transition::Started {
                task_ref: "t2".into(),
            },
        )
        .await
        .unwrap();
    js.delete_stream(names.stream_dlq()).await.unwrap();
    let err = lifecycle
        .retry_or_fail(&r, rev, JobError::new("lost", "node gone again"))
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::DeadLetter { .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some(), "the cause is kept");
    let (now, now_rev) = store.get(id).await.unwrap().unwrap();
    assert_eq!((now.status, now_rev), (JobStatus::Running, rev));

    // The stream is back (redelivery, or the sweep, comes again): dead letter, then failed.
    topo.apply(&js).await.unwrap();
    let out = lifecycle
        .retry_or_fail(&now, now_rev, JobError::new("lost", "node gone again"))
        .await
        .unwrap();
    let AttemptOutcome::Failed { record, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(record.status, JobStatus::Failed);
    let e = record.error.unwrap();
    assert_eq!(e.kind, "attempts_exhausted");
    assert!(e.message.contains("lost: node gone again"), "{}", e.message);
    let letters = jetrun_nats::dlq::list(&js, &names, 0, 10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let d = &letters[0].entry;
    assert_eq!(
        (d.origin.as_str(), d.reason_kind.as_str(), d.job_id.as_deref()),
        ("settle", "attempts_exhausted", Some(id))
    );
    assert_eq!(d.subject, names.job_submit("default"));
    // Its payload is the job's spec: a replay runs it again.
    let spec: JobSpec = serde_json::from_slice(&d.payload().unwrap()).unwrap();
    assert_eq!(spec.max_attempts, Some(2));

    // A failed job is not failed twice, nor dead-lettered twice.
    let again = lifecycle
        .retry_or_fail(&now, now_rev, JobError::new("lost", "late duplicate"))
        .await;
    assert!(
        matches!(again, Ok(AttemptOutcome::Skipped)) || again.as_ref().is_err_and(|e| e.is_conflict()),
        "{again:?}"
    );
    assert_eq!(jetrun_nats::dlq::list(&js, &names, 0, 10).await.unwrap().len(), 1);
}
