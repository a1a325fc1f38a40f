//! Nothing poisons a consumer forever (issue 8), against a real nats-server:
//!
//! - a 900 KB webhook that route cannot process is dead-lettered once, as an entry that
//!   fits under the server's 1 MiB max payload (a bounded excerpt plus the original's
//!   stream and sequence), and is not redelivered; `dlq replay` republishes the whole
//!   original, and says so clearly when the original is gone;
//! - a message whose handler keeps failing is dead-lettered (`attempts_exhausted`) on
//!   its consumer's last delivery instead of being left undeliverable;
//! - every durable consumer the workspace creates has a bounded `max_deliver`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use jetrun_core::{Envelope, Names};
use jetrun_harness::NatsServer;
use jetrun_host::{ConsumerHost, HandlerError, HostConfig, Incoming};
use jetrun_nats::Topology;
use jetrun_nats::dlq::DlqError;
use tokio_util::sync::CancellationToken;

async fn publish_webhook(js: &jetstream::Context, delivery: &str, body: Vec<u8>) -> u64 {
    let env = Envelope::new("dev.jetrun.webhook.github.v1", "/jetrun/ingest").with_id(delivery);
    js.publish_with_headers(
        Names::default().webhook("github", "issue_comment"),
        jetrun_nats::events::to_header_map(&env),
        body.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap()
    .sequence
}

async fn dlq_len(js: &jetstream::Context) -> u64 {
    let mut s = js.get_stream(Names::default().stream_dlq()).await.unwrap();
    s.info().await.unwrap().state.messages
}

async fn wait_dlq(js: &jetstream::Context, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while dlq_len(js).await < n {
        assert!(Instant::now() < deadline, "nothing reached the DLQ");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_webhook_that_fails_is_dead_lettered_once_and_replays_whole() {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    assert!(
        client.server_info().max_payload <= 1024 * 1024,
        "the default 1 MiB limit"
    );
    let js = jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let ctx = jetrun_host::Context::from_client(client, names.clone())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let route = tokio::spawn(jetrun_route::run(
        ctx.clone(),
        jetrun_route::Config::default(),
        shutdown.clone(),
    ));

    // 900 KB that is not JSON: route refuses it permanently (`invalid_json`).
    let body: Vec<u8> = (0..900 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let seq = publish_webhook(&js, "big-1", body.clone()).await;
    wait_dlq(&js, 1).await;

    let stored = jetrun_nats::dlq::list(&js, &names, 0, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    let e = &stored[0].entry;
    assert_eq!(e.reason_kind, "invalid_json");
    assert!(e.payload_truncated);
    assert_eq!(e.payload_bytes, Some(body.len() as u64));
    assert_eq!(e.stream.as_deref(), Some(names.stream_webhooks().as_str()));
    assert_eq!(e.stream_seq, Some(seq));
    assert_eq!(
        e.payload().unwrap(),
        body[..jetrun_core::dlq::PAYLOAD_EXCERPT_BYTES]
    );
    let raw = js
        .get_stream(names.stream_dlq())
        .await
        .unwrap()
        .get_raw_message(stored[0].seq)
        .await
        .unwrap();
    assert!(
        raw.payload.len() < 1024 * 1024,
        "entry of {} bytes",
        raw.payload.len()
    );

    // Not redelivered: the consumer is clean and nothing more arrives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = js
        .get_stream(names.stream_webhooks())
        .await
        .unwrap()
        .consumer_info(names.consumer_route())
        .await
        .unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(dlq_len(&js).await, 1);
    shutdown.cancel();
    route.await.unwrap().unwrap();

    // Replay republishes the whole original, read from its stream by sequence.
    let new_seq = jetrun_nats::dlq::replay(&js, &names, stored[0].seq)
        .await
        .unwrap();
    let again = js
        .get_stream(names.stream_webhooks())
        .await
        .unwrap()
        .direct_get(new_seq)
        .await
        .unwrap();
    assert_eq!(again.payload.len(), body.len());
    assert!(again.payload == body, "the replayed body is the original");
    assert_eq!(dlq_len(&js).await, 0);

    // An excerpt whose original is gone is refused with a clear error, not replayed cut.
    let mut orphan = e.clone();
    orphan.stream_seq = Some(seq + 1_000_000);
    jetrun_nats::dlq::publish(&ctx.publisher("test"), &names, &orphan)
        .await
        .unwrap();
    let orphan_seq = jetrun_nats::dlq::list(&js, &names, 0, 10).await.unwrap()[0].seq;
    let err = jetrun_nats::dlq::replay(&js, &names, orphan_seq)
        .await
        .unwrap_err();
    assert!(matches!(err, DlqError::OriginalGone { .. }), "{err}");
    assert!(err.to_string().contains("no longer retained"), "{err}");
    assert_eq!(dlq_len(&js).await, 1, "the entry is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_is_dead_lettered_on_its_last_delivery() {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    jetrun_nats::topology::ensure_consumer(
        &js,
        &names.stream_webhooks(),
        consumer::pull::Config {
            durable_name: Some("flaky".into()),
            filter_subject: names.webhook_all(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(5),
            max_deliver: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let host = ConsumerHost::bind(
        &js,
        &names,
        &names.stream_webhooks(),
        "flaky",
        HostConfig {
            origin: "flaky".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(host.run(
        |_m: Incoming| async { Err(HandlerError::retry("still down", Duration::from_millis(50))) },
        shutdown.clone(),
    ));
    let seq = publish_webhook(&js, "flaky-1", b"{}".to_vec()).await;
    wait_dlq(&js, 1).await;
    let e = &jetrun_nats::dlq::list(&js, &names, 0, 10).await.unwrap()[0].entry;
    assert_eq!(e.reason_kind, "attempts_exhausted");
    assert_eq!(e.origin, "flaky");
    assert_eq!(e.stream_seq, Some(seq));
    assert_eq!(e.deliveries, 3);
    assert!(e.reason.contains("still down"), "{}", e.reason);
    let info = js
        .get_stream(names.stream_webhooks())
        .await
        .unwrap()
        .consumer_info("flaky")
        .await
        .unwrap();
    assert_eq!(info.num_ack_pending, 0, "the exhausted message is terminated");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[test]
fn every_durable_consumer_has_a_bounded_max_deliver() {
    let names = Names::default();
    let topo = Topology::new(names.clone());
    for c in [
        topo.dispatch_consumer("default"),
        topo.route_consumer(),
        jetrun_route::consumer_config(&names, &jetrun_route::Config::default()),
    ] {
        assert!(
            c.max_deliver > 0,
            "{:?} has max_deliver {}",
            c.durable_name,
            c.max_deliver
        );
    }
}
