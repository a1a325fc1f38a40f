#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Scale requests are checked by `ce-type`: a request body published without a CloudEvent
//! envelope, with a foreign or unknown type, is dead-lettered and never applied.

use std::time::Duration;

use bytes::Bytes;
use jetrun_autoscale::config::LeaderConfig;
use jetrun_autoscale::{Autoscaler, Config, declare};
use jetrun_core::scale::{BackendKind, ScaleRequest, ScaleSpec, Strategy};
use jetrun_core::schema::types;
use jetrun_core::{Envelope, Names};
use jetrun_harness::NatsServer;
use jetrun_nats::Topology;
use jetrun_nats::events::to_header_map;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn scale_requests_with_a_missing_foreign_or_unknown_ce_type_are_dead_lettered_not_applied() {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let kv = js.get_key_value(names.bucket_scale()).await.unwrap();
    let mut s = ScaleSpec::new("w", "default", 0, 6, 10);
    s.backend = BackendKind::Signal;
    s.strategy = Strategy::Infra;
    declare(&kv, &s).await.unwrap();

    let cfg = Config {
        leader: LeaderConfig {
            ttl: Duration::from_secs(2),
            renew_every: Duration::from_millis(250),
            safety_margin: Duration::from_millis(500),
            ..LeaderConfig::default()
        },
        ..Config::default()
    };
    let scaler = Autoscaler::with_parts(&js, &names, "a", cfg).await.unwrap();
    let stop = CancellationToken::new();
    let st = stop.clone();
    let h = tokio::spawn(async move { scaler.run(st).await.unwrap() });

    let burst = |replicas: u32| {
        Bytes::from(
            serde_json::to_vec(&ScaleRequest::Burst {
                service: "w".into(),
                replicas,
                for_seconds: 600,
            })
            .unwrap(),
        )
    };
    let subject = names.scale_request("w");
    // 1. No headers at all.
    js.publish(subject.clone(), burst(2))
        .await
        .unwrap()
        .await
        .unwrap();
    // 2. A foreign type (a signal) with a request body.
    let foreign = to_header_map(&Envelope::new(types::SCALE_SIGNAL, "/attacker"));
    js.publish_with_headers(subject.clone(), foreign, burst(3))
        .await
        .unwrap()
        .await
        .unwrap();
    // 3. An unknown scale type.
    let unknown = to_header_map(&Envelope::new("dev.jetrun.scale.bogus.v1", "/attacker"));
    js.publish_with_headers(subject.clone(), unknown, burst(4))
        .await
        .unwrap()
        .await
        .unwrap();
    // 4. The right type, a body of another type.
    let right = to_header_map(&Envelope::new(types::SCALE_REQUESTED, "/attacker"));
    let job = Bytes::from_static(br#"{"queue":"default","image":"busybox","service":"w","action":"burst"}"#);
    js.publish_with_headers(subject.clone(), right, job)
        .await
        .unwrap()
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let list = jetrun_nats::dlq::list(&js, &names, 0, 10).await.unwrap();
        if list.len() >= 4 {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 4 dead-lettered",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entries.len(), 4);
    for e in &entries {
        assert_eq!(e.entry.reason_kind, "invalid_event", "{:?}", e.entry);
        assert_eq!(e.entry.origin, "autoscale");
    }
    assert!(
        jetrun_autoscale::spec::get_burst(&kv, "w")
            .await
            .unwrap()
            .is_none(),
        "a refused request was applied"
    );

    // The control: the same burst with the right type (and a fresh ce-id, so the
    // stream's duplicate window does not drop it) is applied.
    let right = to_header_map(&Envelope::new(types::SCALE_REQUESTED, "/operator"));
    js.publish_with_headers(subject, right, burst(5))
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(b) = jetrun_autoscale::spec::get_burst(&kv, "w").await.unwrap() {
            assert_eq!(b.replicas, 5);
            break;
        }
        assert!(Instant::now() < deadline, "the valid request was not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    h.await.unwrap();
}
