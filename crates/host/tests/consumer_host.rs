//! The consumer host against a real nats-server: ack after success, Nak with delay,
//! dead letter + Term on permanent failures, panics caught, drain on shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use jetrun_core::Names;
use jetrun_harness::NatsServer;
use jetrun_host::{ConsumerHost, HandlerError, HostConfig, Incoming};
use jetrun_nats::Topology;
use tokio_util::sync::CancellationToken;

async fn setup(server: &NatsServer, consumer_name: &str) -> (jetstream::Context, Names) {
    let js = jetstream::new(server.client().await);
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let stream = js.get_stream(names.stream_tasks()).await.unwrap();
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(consumer_name.into()),
            ack_wait: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .unwrap();
    (js, names)
}

fn config(concurrency: usize) -> HostConfig {
    HostConfig {
        origin: "test".into(),
        concurrency,
        progress_every: Duration::from_millis(500),
        handler_timeout: Duration::from_secs(20),
        max_panics: 2,
        drain_timeout: Duration::from_secs(10),
    }
}

async fn publish(js: &jetstream::Context, subject: &str, body: &str) {
    js.publish(subject.to_string(), body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn pending(js: &jetstream::Context, names: &Names, consumer: &str) -> (u64, usize) {
    let stream = js.get_stream(names.stream_tasks()).await.unwrap();
    let info = stream.consumer_info(consumer).await.unwrap();
    (info.num_pending, info.num_ack_pending)
}

async fn wait_until<F: Fn() -> bool>(f: F, what: &str) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn acks_after_success_and_respects_concurrency() {
    let server = NatsServer::start().unwrap();
    let (js, names) = setup(&server, "c1").await;
    for i in 0..40 {
        publish(&js, &format!("jetrun.task.started.j{i}"), "{}").await;
    }
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
        move |_m: Incoming| {
            let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    };
    let shutdown = CancellationToken::new();
    let host = ConsumerHost::bind(&js, &names, &names.stream_tasks(), "c1", config(4))
        .await
        .unwrap();
    let task = tokio::spawn(host.run(handler, shutdown.clone()));
    wait_until(|| done.load(Ordering::SeqCst) == 40, "40 handled").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pending(&js, &names, "c1").await, (0, 0), "everything acked");
    assert!(
        peak.load(Ordering::SeqCst) <= 4,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn retry_naks_with_delay_then_succeeds() {
    let server = NatsServer::start().unwrap();
    let (js, names) = setup(&server, "c2").await;
    publish(&js, "jetrun.task.started.r", "{}").await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u64, Instant)>::new()));
    let handler = {
        let seen = seen.clone();
        move |m: Incoming| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((m.delivered, Instant::now()));
                if m.delivered < 3 {
                    Err(HandlerError::retry("not yet", Duration::from_millis(300)))
                } else {
                    Ok(())
                }
            }
        }
    };
    let shutdown = CancellationToken::new();
    let host = ConsumerHost::bind(&js, &names, &names.stream_tasks(), "c2", config(2))
        .await
        .unwrap();
    let task = tokio::spawn(host.run(handler, shutdown.clone()));
    wait_until(|| seen.lock().unwrap().len() == 3, "three deliveries").await;
    let s = seen.lock().unwrap().clone();
    assert_eq!(s.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2, 3]);
    // The Nak delay was honoured (not redelivered at once).
    assert!(
        s[1].1 - s[0].1 >= Duration::from_millis(250),
        "{:?}",
        s[1].1 - s[0].1
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pending(&js, &names, "c2").await, (0, 0));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn permanent_failures_and_repeated_panics_are_dead_lettered() {
    let server = NatsServer::start().unwrap();
    let (js, names) = setup(&server, "c3").await;
    publish(&js, "jetrun.task.started.bad", "not json").await;
    publish(&js, "jetrun.task.started.boom", "{}").await;
    publish(&js, "jetrun.task.started.ok", "{}").await;
    let handler = |m: Incoming| async move {
        if m.subject.ends_with("bad") {
            return Err(HandlerError::permanent("invalid_event", "body is not JSON"));
        }
        if m.subject.ends_with("boom") {
            panic!("handler bug");
        }
        Ok(())
    };
    let shutdown = CancellationToken::new();
    let host = ConsumerHost::bind(&js, &names, &names.stream_tasks(), "c3", config(2))
        .await
        .unwrap();
    let task = tokio::spawn(host.run(handler, shutdown.clone()));
    let start = Instant::now();
    loop {
        let n = jetrun_nats::dlq::count(&js, &names).await.unwrap();
        if n == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "dlq has {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let items = jetrun_nats::dlq::list(&js, &names, 0, 10).await.unwrap();
    let bad = items.iter().find(|s| s.entry.subject.ends_with("bad")).unwrap();
    assert_eq!(bad.entry.reason_kind, "invalid_event");
    assert_eq!(bad.entry.payload().unwrap(), b"not json");
    let boom = items.iter().find(|s| s.entry.subject.ends_with("boom")).unwrap();
    assert_eq!(boom.entry.reason_kind, "panic");
    assert!(boom.entry.deliveries >= 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        pending(&js, &names, "c3").await,
        (0, 0),
        "terminated, not redelivered"
    );

    // Replay puts it back on its subject.
    jetrun_nats::dlq::replay(&js, &names, bad.seq).await.unwrap();
    assert_eq!(
        jetrun_nats::dlq::count(&js, &names).await.unwrap(),
        2,
        "dead-lettered again after replay"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_drains_in_flight_work() {
    let server = NatsServer::start().unwrap();
    let (js, names) = setup(&server, "c4").await;
    for i in 0..3 {
        publish(&js, &format!("jetrun.task.started.s{i}"), "{}").await;
    }
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (started, finished) = (started.clone(), finished.clone());
        move |_m: Incoming| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                // Longer than the ack wait (2 s): progress acks must keep it ours.
                tokio::time::sleep(Duration::from_millis(2500)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    };
    let shutdown = CancellationToken::new();
    let host = ConsumerHost::bind(&js, &names, &names.stream_tasks(), "c4", config(3))
        .await
        .unwrap();
    let task = tokio::spawn(host.run(handler, shutdown.clone()));
    wait_until(|| started.load(Ordering::SeqCst) == 3, "three started").await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        finished.load(Ordering::SeqCst),
        3,
        "run() returned only after in-flight work finished"
    );
    assert_eq!(pending(&js, &names, "c4").await, (0, 0));
    // Progress kept them from being redelivered while they ran past the ack wait.
    assert_eq!(started.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn typed_handlers_get_only_checked_events_and_the_rest_is_dead_lettered() {
    #[derive(serde::Deserialize)]
    struct Body {
        n: u32,
    }
    let server = NatsServer::start().unwrap();
    let js = jetstream::new(server.client().await);
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    // Declared, not created: binding creates it (this credential may).
    let sub = jetrun_host::Subscription {
        stream: names.stream_tasks(),
        consumer: consumer::pull::Config {
            durable_name: Some("typed".into()),
            filter_subject: "jetrun.task.exited.>".into(),
            ack_wait: Duration::from_secs(2),
            ..Default::default()
        },
    };
    publish(&js, "jetrun.task.exited.ok", r#"{"n": 7}"#).await;
    publish(&js, "jetrun.task.exited.notjson", "not json").await;
    publish(&js, "jetrun.task.exited.wrongtype", r#"{"n": "seven"}"#).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = jetrun_host::typed(
        jetrun_host::Decode::body(),
        move |ev: jetrun_host::Event<Body>| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push((ev.msg.subject.clone(), ev.event.n));
                Ok(())
            }
        },
    );
    let shutdown = CancellationToken::new();
    let host = ConsumerHost::bind_to(&js, &names, &sub, config(2)).await.unwrap();
    let task = tokio::spawn(host.run(handler, shutdown.clone()));
    let start = Instant::now();
    while jetrun_nats::dlq::count(&js, &names).await.unwrap() < 2 {
        assert!(start.elapsed() < Duration::from_secs(15), "no dead letters");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let items = jetrun_nats::dlq::list(&js, &names, 0, 10).await.unwrap();
    for suffix in ["notjson", "wrongtype"] {
        let dl = items.iter().find(|s| s.entry.subject.ends_with(suffix)).unwrap();
        assert_eq!(dl.entry.reason_kind, "schema", "{suffix}");
        assert!(
            dl.entry.reason.contains(&format!("jetrun.task.exited.{suffix}")),
            "{}",
            dl.entry.reason
        );
    }
    wait_until(|| !seen.lock().unwrap().is_empty(), "the valid event").await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![("jetrun.task.exited.ok".to_string(), 7)]
    );

    // A CloudEvent type is required by `Decode::event`: none at all is the chosen kind.
    let decode =
        jetrun_host::Decode::event(jetrun_core::schema::types::TASK_LIFECYCLE).wrong_type_is("forged");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    publish(&js, "jetrun.task.exited.noheaders", r#"{"n": 1}"#).await;
    let seen2 = Arc::new(AtomicUsize::new(0));
    let s2 = seen2.clone();
    let handler = jetrun_host::typed(decode, move |_ev: jetrun_host::Event<serde_json::Value>| {
        s2.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });
    let shutdown = CancellationToken::new();
    let host = ConsumerHost::bind_to(&js, &names, &sub, config(2)).await.unwrap();
    let task = tokio::spawn(host.run(handler, shutdown.clone()));
    let start = Instant::now();
    while jetrun_nats::dlq::count(&js, &names).await.unwrap() < 3 {
        assert!(start.elapsed() < Duration::from_secs(15), "no third dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let items = jetrun_nats::dlq::list(&js, &names, 0, 10).await.unwrap();
    let dl = items
        .iter()
        .find(|s| s.entry.subject.ends_with("noheaders"))
        .unwrap();
    assert_eq!(dl.entry.reason_kind, "forged");
    assert_eq!(seen2.load(Ordering::SeqCst), 0, "the handler never saw it");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
