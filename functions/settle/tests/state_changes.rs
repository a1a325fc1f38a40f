//! A state change on the callbacks subject that does not decode is dead-lettered with
//! its reason, never acknowledged unseen. Real nats-server, settle's real consumer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use jetrun_core::Names;
use jetrun_harness::NatsServer;
use jetrun_nats::Topology;
use jetrun_settle::{Config, Settle};

#[tokio::test]
async fn an_unreadable_state_change_is_dead_lettered_with_its_reason() {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let ctx = jetrun_host::Context::from_client(client, names.clone())
        .await
        .unwrap();
    let settle = Settle::new(ctx, Config::default());
    // The consumer delivers new messages only: create it before publishing.
    settle.ensure_consumers().await.unwrap();
    js.publish(names.job_callback("q", "j-broken"), "{\"job_id\": 7".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(settle.run(shutdown.clone()));

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let letter = loop {
        let d = jetrun_nats::dlq::list(&js, &names, 0, 10).await.unwrap();
        if let Some(s) = d.into_iter().next() {
            break s.entry;
        }
        assert!(std::time::Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letter.reason_kind, "schema");
    assert!(letter.reason.contains("does not decode"), "{}", letter.reason);
    assert_eq!(letter.subject, names.job_callback("q", "j-broken"));
    assert_eq!(letter.payload().unwrap(), b"{\"job_id\": 7");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
}
