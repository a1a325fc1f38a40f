//! The job-control service (decision 16) against a real nats-server: submit and cancel
//! through the lifecycle, tenants confined, and what happens with no worker at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream;
use jetrun_core::{JobSpec, JobStatus, Names};
use jetrun_harness::NatsServer;
use jetrun_nats::Topology;
use jetrun_nats::control::{CancelErrorKind, ControlClient};
use jetrun_nats::submit::SubmitError;
use tokio_util::sync::CancellationToken;

fn spec(tenant: &str, key: Option<&str>) -> JobSpec {
    let mut s: JobSpec = serde_json::from_value(serde_json::json!({
        "queue": "idle", "image": "busybox", "command": ["true"], "tenant": tenant
    }))
    .unwrap();
    s.idempotency_key = key.map(str::to_string);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_cancel_go_through_the_lifecycle_and_tenants_stay_apart() {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let ctx = jetrun_host::Context::from_client(client.clone(), names.clone())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(jetrun_dispatch::control::serve(ctx.clone(), shutdown.clone()));
    let cc = ControlClient::new(client.clone(), names.clone(), "test");
    // The subscription is set up asynchronously: wait until the service answers.
    let mut first = None;
    for _ in 0..50 {
        let s = cc
            .submit(spec("acme", Some("k1")), None, Some("http:acme".into()))
            .await
            .unwrap();
        if s.admitted {
            first = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = first.expect("the service answered");
    let id = first.admission.record().id.clone();
    let (rec, _) = ctx
        .store
        .get(&id)
        .await
        .unwrap()
        .expect("admitted by the service");
    assert_eq!(rec.status, JobStatus::Queued);
    assert_eq!(rec.spec.tenant(), "acme");

    // The same idempotency key is the same job (a duplicate).
    let again = cc.submit(spec("acme", Some("k1")), None, None).await.unwrap();
    assert!(again.admitted);
    assert!(matches!(
        again.admission,
        jetrun_nats::store::Admission::Existing(..)
    ));
    assert_eq!(again.admission.record().id, id);

    // An invalid spec is refused with its schema errors.
    let mut bad = spec("acme", None);
    bad.image = String::new();
    assert!(matches!(
        cc.submit(bad, None, None).await,
        Err(SubmitError::Invalid(_))
    ));

    // Another tenant cannot cancel it (and cannot tell it exists).
    let e = cc.cancel("globex", &id).await.unwrap_err();
    assert_eq!(e.kind, CancelErrorKind::NotFound);
    assert_eq!(
        ctx.store.get(&id).await.unwrap().unwrap().0.status,
        JobStatus::Queued
    );
    // Its own tenant can; the operator can cancel anyone's.
    assert_eq!(cc.cancel("acme", &id).await.unwrap(), JobStatus::Cancelled);
    let other = cc.submit(spec("globex", None), None, None).await.unwrap();
    assert_eq!(
        cc.cancel("*", &other.admission.record().id).await.unwrap(),
        JobStatus::Cancelled
    );
    assert_eq!(
        cc.cancel("acme", "no-such-job").await.unwrap_err().kind,
        CancelErrorKind::NotFound
    );

    // No worker: submitting still works (published for dispatch to admit), cancelling is
    // a clear "unavailable".
    shutdown.cancel();
    service.await.unwrap().unwrap();
    let cc = cc.with_timeout(Duration::from_millis(500));
    let late = cc.submit(spec("acme", Some("k2")), None, None).await.unwrap();
    assert!(!late.admitted);
    let late_id = late.admission.record().id.clone();
    assert!(
        ctx.store.get(&late_id).await.unwrap().is_none(),
        "not admitted without a worker"
    );
    let m = js
        .get_stream(names.stream_jobs())
        .await
        .unwrap()
        .direct_get_last_for_subject(names.job_submit("idle"))
        .await
        .unwrap();
    let env = jetrun_nats::events::from_header_map(&m.headers).unwrap();
    assert_eq!(
        env.id, late_id,
        "dispatch admits it under the id the client answered with"
    );
    let e = cc.cancel("acme", &late_id).await.unwrap_err();
    assert_eq!(e.kind, CancelErrorKind::Unavailable);
    assert!(e.message.contains("no worker"), "{}", e.message);
}
