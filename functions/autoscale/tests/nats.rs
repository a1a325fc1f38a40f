#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The autoscaler against a real nats-server: backlog to signal, scale-down after the
//! window, scale requests over NATS, refusals, leader failover.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use jetrun_autoscale::config::LeaderConfig;
use jetrun_autoscale::leader::Elector;
use jetrun_autoscale::{Autoscaler, Config, ScaleRequestErrorKind, apply_request, declare};
use jetrun_core::Names;
use jetrun_core::scale::{BackendKind, ScaleRequest, ScaleSignal, ScaleSpec, Strategy};
use jetrun_core::schema::types;
use jetrun_harness::NatsServer;
use jetrun_nats::{EventPublisher, Topology};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

async fn setup(
    server: &NatsServer,
) -> (
    async_nats::Client,
    async_nats::jetstream::Context,
    async_nats::jetstream::kv::Store,
) {
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    Topology::new(Names::default()).apply(&js).await.unwrap();
    let kv = js.get_key_value(Names::default().bucket_scale()).await.unwrap();
    (client, js, kv)
}

fn fast_config() -> Config {
    Config {
        leader: LeaderConfig {
            ttl: Duration::from_secs(2),
            renew_every: Duration::from_millis(250),
            safety_margin: Duration::from_millis(500),
            ..LeaderConfig::default()
        },
        ..Config::default()
    }
}

fn spec(service: &str, queue: &str, min: u32, max: u32, target: u32) -> ScaleSpec {
    let mut s = ScaleSpec::new(service, queue, min, max, target);
    s.backend = BackendKind::Signal;
    s.strategy = Strategy::Infra;
    s
}

async fn start(
    js: &async_nats::jetstream::Context,
    id: &str,
    cfg: Config,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let scaler = Autoscaler::with_parts(js, &Names::default(), id, cfg)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let h = tokio::spawn(async move { scaler.run(s).await.unwrap() });
    (stop, h)
}

async fn next_signal(sub: &mut async_nats::Subscriber, within: Duration) -> Option<ScaleSignal> {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(Some(m)) => Some(serde_json::from_slice(&m.payload).unwrap()),
        _ => None,
    }
}

/// Waits for a signal matching `pred`, returning it and when it arrived.
async fn wait_signal(
    sub: &mut async_nats::Subscriber,
    within: Duration,
    pred: impl Fn(&ScaleSignal) -> bool,
) -> Option<(ScaleSignal, Instant)> {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match next_signal(sub, left).await {
            Some(s) if pred(&s) => return Some((s, Instant::now())),
            Some(_) => continue,
            None => return None,
        }
    }
    None
}

#[tokio::test]
async fn backlog_signals_max_within_a_tick_and_drain_scales_down_only_after_the_window() {
    let server = NatsServer::start().unwrap();
    let (client, js, kv) = setup(&server).await;
    let names = Names::default();
    let mut s = spec("workers", "default", 0, 8, 10);
    s.stabilization_seconds = 2;
    s.idle_seconds = 3;
    declare(&kv, &s).await.unwrap();

    let mut signals = client.subscribe(names.scale_signal("workers")).await.unwrap();
    let (stop, h) = start(&js, "a", fast_config()).await;
    // The first decision (at zero, nothing queued) is published once the leader acts.
    let (first, _) = wait_signal(&mut signals, Duration::from_secs(5), |_| true)
        .await
        .expect("no first signal");
    assert_eq!(first.desired, 0);

    // 1,000 jobs, nobody consuming them.
    let mut acks = Vec::new();
    for i in 0..1000 {
        acks.push(
            js.publish(names.job_submit("default"), Bytes::from(format!("{{\"n\":{i}}}")))
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
    let queued = Instant::now();
    let (sig, at) = wait_signal(&mut signals, Duration::from_secs(3), |s| s.desired == 8)
        .await
        .expect("never asked for max");
    let reaction = at - queued;
    assert_eq!(sig.pending, 1000);
    assert!(sig.reason.starts_with("capped_at_max"), "{}", sig.reason);
    // One tick (250 ms), with room for a loaded machine.
    assert!(reaction <= Duration::from_millis(750), "took {reaction:?}");

    // The state is recorded (right after the signal).
    let deadline = Instant::now() + Duration::from_secs(1);
    let state = loop {
        let st = jetrun_autoscale::spec::get_state(&kv, "workers")
            .await
            .unwrap()
            .unwrap();
        if st.desired == 8 || Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((state.desired, state.pending), (8, 1000));
    assert_eq!(state.decided_by, "a");

    // Drained: nothing moves before the 2 s window is over, then it goes down.
    let mut stream = js.get_stream(names.stream_jobs()).await.unwrap();
    stream.purge().await.unwrap();
    let drained = Instant::now();
    let (down, at) = wait_signal(&mut signals, Duration::from_secs(6), |s| s.desired < 8)
        .await
        .expect("never scaled down");
    let waited = at - drained;
    assert!(
        waited >= Duration::from_millis(1700),
        "scaled down after {waited:?}, before the 2 s window"
    );
    assert_eq!(down.desired, 1, "{down:?}");
    assert!(down.reason.starts_with("idle_wait"), "{}", down.reason);
    // Then to zero once idle for 3 s.
    let (zero, _) = wait_signal(&mut signals, Duration::from_secs(5), |s| s.desired == 0)
        .await
        .expect("never went to zero");
    assert!(zero.reason.starts_with("idle"), "{}", zero.reason);
    let _ = stream.info().await;

    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn requests_are_applied_or_refused_with_their_kind() {
    let server = NatsServer::start().unwrap();
    let (_client, _js, kv) = setup(&server).await;

    let unknown = apply_request(
        &kv,
        &ScaleRequest::Reset {
            service: "ghost".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.kind, ScaleRequestErrorKind::NotFound);

    let mut fixed = spec("fixed", "default", 2, 2, 1);
    fixed.scalable = false;
    declare(&kv, &fixed).await.unwrap();
    let e = apply_request(
        &kv,
        &ScaleRequest::Burst {
            service: "fixed".into(),
            replicas: 2,
            for_seconds: 60,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ScaleRequestErrorKind::NotScalable);
    let mut more = fixed.clone();
    more.max = 5;
    let e = apply_request(&kv, &ScaleRequest::Set { spec: more })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ScaleRequestErrorKind::NotScalable);

    declare(&kv, &spec("w", "default", 0, 4, 1)).await.unwrap();
    let e = apply_request(
        &kv,
        &ScaleRequest::Burst {
            service: "w".into(),
            replicas: 9,
            for_seconds: 60,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ScaleRequestErrorKind::OutOfBounds);

    // Local replicas of a port-bound service: more than one is refused, declared or requested.
    let mut web = spec("web", "default", 0, 3, 1);
    web.backend = BackendKind::Local;
    web.strategy = Strategy::Local;
    web.port_bound = true;
    assert_eq!(
        declare(&kv, &web).await.unwrap_err().kind,
        ScaleRequestErrorKind::LocalPortBound
    );
    web.max = 1;
    declare(&kv, &web).await.unwrap();
    let mut wider = web.clone();
    wider.max = 2;
    let e = apply_request(&kv, &ScaleRequest::Set { spec: wider })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ScaleRequestErrorKind::LocalPortBound);

    let e = declare(&kv, &spec("bad", "default", 3, 1, 1)).await.unwrap_err();
    assert_eq!(e.kind, ScaleRequestErrorKind::Invalid);

    // Accepted: a burst expires by itself; reset drops it.
    let applied = apply_request(
        &kv,
        &ScaleRequest::Burst {
            service: "w".into(),
            replicas: 3,
            for_seconds: 1800,
        },
    )
    .await
    .unwrap();
    assert!(matches!(applied, jetrun_autoscale::Applied::Burst { .. }));
    let b = jetrun_autoscale::spec::get_burst(&kv, "w")
        .await
        .unwrap()
        .unwrap();
    assert!(b.until > jetrun_core::now() + chrono::TimeDelta::minutes(29));
    let reset = apply_request(&kv, &ScaleRequest::Reset { service: "w".into() })
        .await
        .unwrap();
    assert_eq!(
        reset,
        jetrun_autoscale::Applied::Reset {
            service: "w".into(),
            had_burst: true
        }
    );
    assert!(
        jetrun_autoscale::spec::get_burst(&kv, "w")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn requests_over_nats_move_replicas_and_refusals_are_dead_lettered() {
    let server = NatsServer::start().unwrap();
    let (client, js, kv) = setup(&server).await;
    let names = Names::default();
    declare(&kv, &spec("w", "default", 0, 6, 10)).await.unwrap();
    let mut fixed = spec("fixed", "default", 1, 1, 1);
    fixed.scalable = false;
    declare(&kv, &fixed).await.unwrap();

    let mut signals = client.subscribe(names.scale_signal("w")).await.unwrap();
    let (stop, h) = start(&js, "a", fast_config()).await;
    wait_signal(&mut signals, Duration::from_secs(5), |_| true)
        .await
        .expect("no first signal");

    let publisher = EventPublisher::new(js.clone(), "/test");
    let burst = ScaleRequest::Burst {
        service: "w".into(),
        replicas: 4,
        for_seconds: 600,
    };
    publisher
        .publish(
            names.scale_request("w"),
            &publisher.envelope(types::SCALE_REQUESTED),
            &burst,
        )
        .await
        .unwrap();
    let (sig, _) = wait_signal(&mut signals, Duration::from_secs(5), |s| s.desired == 4)
        .await
        .expect("burst not applied");
    assert!(sig.reason.starts_with("burst"), "{}", sig.reason);

    let reset = ScaleRequest::Reset { service: "w".into() };
    publisher
        .publish(
            names.scale_request("w"),
            &publisher.envelope(types::SCALE_REQUESTED),
            &reset,
        )
        .await
        .unwrap();
    // Reset drops the floor at once; idle time (300 s default) keeps one replica.
    wait_signal(&mut signals, Duration::from_secs(5), |s| s.desired == 1)
        .await
        .expect("reset not applied");

    let refused = ScaleRequest::Burst {
        service: "fixed".into(),
        replicas: 1,
        for_seconds: 60,
    };
    publisher
        .publish(
            names.scale_request("fixed"),
            &publisher.envelope(types::SCALE_REQUESTED),
            &refused,
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let entry = loop {
        let list = jetrun_nats::dlq::list(&js, &names, 0, 10).await.unwrap();
        if let Some(e) = list.into_iter().next() {
            break e;
        }
        assert!(Instant::now() < deadline, "refusal not dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entry.entry.reason_kind, "not_scalable", "{:?}", entry.entry);
    assert_eq!(entry.entry.origin, "autoscale");

    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_dead_leader_is_replaced_within_its_lease_and_two_never_lead_at_once() {
    let server = NatsServer::start().unwrap();
    let (_client, js, _kv) = setup(&server).await;
    let cfg = fast_config().leader;
    let names = Names::default();

    let a = Elector::new(&js, &names, "a", cfg.clone()).await.unwrap();
    let b = Elector::new(&js, &names, "b", cfg.clone()).await.unwrap();
    let (la, lb) = (a.leadership(), b.leadership());
    let stop = CancellationToken::new();
    let ha = tokio::spawn(a.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !la.is_leader() {
        assert!(Instant::now() < deadline, "a never became leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hb = tokio::spawn(b.run(stop.clone()));

    // Both compete for 1.5 s: only a leads.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert!(!(la.is_leader() && lb.is_leader()), "two leaders");
        assert!(la.is_leader());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // a dies without releasing (a crash): b takes over once the lease expires; a's own
    // handle says it is no longer leader before b starts.
    ha.abort();
    let killed = Instant::now();
    let deadline = killed + cfg.ttl + Duration::from_secs(3);
    while !lb.is_leader() {
        assert!(!(la.is_leader() && lb.is_leader()), "two leaders");
        assert!(Instant::now() < deadline, "b did not take over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = killed.elapsed();
    assert!(!la.is_leader());
    // Within the lease time plus the server's expiry and one renewal period.
    assert!(took <= cfg.ttl + Duration::from_millis(1500), "took {took:?}");

    // A graceful stop releases the lease for the next one at once.
    let c = Elector::new(&js, &names, "c", cfg.clone()).await.unwrap();
    let lc = c.leadership();
    let stop_c = CancellationToken::new();
    let hc = tokio::spawn(c.run(stop_c.clone()));
    stop.cancel();
    hb.await.unwrap();
    let released = Instant::now();
    while !lc.is_leader() {
        assert!(
            released.elapsed() < Duration::from_secs(2),
            "c did not take over after a release"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!lb.is_leader());
    stop_c.cancel();
    hc.await.unwrap();
}

#[tokio::test]
async fn only_the_leading_autoscaler_acts_and_a_standby_takes_over() {
    let server = NatsServer::start().unwrap();
    let (client, js, kv) = setup(&server).await;
    let names = Names::default();
    declare(&kv, &spec("w", "default", 1, 3, 10)).await.unwrap();
    let mut signals = client.subscribe(names.scale_signal("w")).await.unwrap();

    let (stop_a, ha) = start(&js, "a", fast_config()).await;
    wait_signal(&mut signals, Duration::from_secs(5), |_| true)
        .await
        .expect("no first signal");
    let (stop_b, hb) = start(&js, "b", fast_config()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let state = jetrun_autoscale::spec::get_state(&kv, "w")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.decided_by, "a");

    // a stops (releasing the lease); b decides from then on.
    stop_a.cancel();
    ha.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        js.publish(names.job_submit("default"), Bytes::from_static(b"{}"))
            .await
            .unwrap()
            .await
            .unwrap();
        let st = jetrun_autoscale::spec::get_state(&kv, "w")
            .await
            .unwrap()
            .unwrap();
        if st.decided_by == "b" {
            break;
        }
        assert!(Instant::now() < deadline, "b never took over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_b.cancel();
    hb.await.unwrap();
}

#[tokio::test]
async fn admitted_jobs_are_counted_once_and_dispatched_ones_stay_in_flight() {
    let server = NatsServer::start().unwrap();
    let (client, js, kv) = setup(&server).await;
    let names = Names::default();
    declare(&kv, &spec("w", "default", 0, 10, 5)).await.unwrap();
    let store = jetrun_nats::JobStore::open(&js, &names, "/test").await.unwrap();
    let publisher = EventPublisher::new(js.clone(), "/test");
    for _ in 0..30 {
        let spec = jetrun_core::JobSpec::new("default", "busybox", vec!["true".into()]);
        jetrun_nats::submit::submit(&store, &publisher, spec, None, None)
            .await
            .unwrap();
    }
    let mut signals = client.subscribe(names.scale_signal("w")).await.unwrap();
    let (stop, h) = start(&js, "a", fast_config()).await;
    let (sig, _) = wait_signal(&mut signals, Duration::from_secs(5), |s| s.desired == 6)
        .await
        .expect("no decision for 30 jobs");
    // In the index and in the stream, yet counted once.
    assert_eq!((sig.pending, sig.in_flight), (30, 0));

    // A dispatcher takes 10 (acked after launch): they leave the stream but stay active.
    let stream = js.get_stream(names.stream_jobs()).await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(&names.consumer_dispatch("default"))
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(10).messages().await.unwrap();
    while let Some(m) = batch.next().await {
        m.unwrap().double_ack().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let st = jetrun_autoscale::spec::get_state(&kv, "w")
            .await
            .unwrap()
            .unwrap();
        if st.pending == 20 {
            assert_eq!((st.in_flight, st.desired), (10, 6), "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "state never saw the dispatch: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn the_local_backend_follows_decisions() {
    let server = NatsServer::start().unwrap();
    let (_client, js, kv) = setup(&server).await;
    let names = Names::default();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.local = jetrun_autoscale::config::LocalConfig {
        program: Some("/bin/sleep".into()),
        args: vec!["60".into()],
        data_root: dir.path().to_path_buf(),
        stop_grace: Duration::from_secs(2),
        ..Default::default()
    };
    let mut s = spec("w", "default", 0, 3, 10);
    s.backend = BackendKind::Local;
    s.strategy = Strategy::Local;
    s.stabilization_seconds = 1;
    s.idle_seconds = 1;
    declare(&kv, &s).await.unwrap();
    let (stop, h) = start(&js, "a", cfg).await;

    for _ in 0..25 {
        js.publish(names.job_submit("default"), Bytes::from_static(b"{}"))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let wait_current = |want: u32| {
        let kv = kv.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(6);
            loop {
                let st = jetrun_autoscale::spec::get_state(&kv, "w").await.unwrap();
                if st
                    .as_ref()
                    .is_some_and(|st| st.current == want && st.desired == want)
                {
                    return;
                }
                assert!(Instant::now() < deadline, "never {want} replicas: {st:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_current(3).await;
    assert_eq!(
        std::fs::read_dir(dir.path().join("w")).unwrap().count(),
        3,
        "one data dir per replica"
    );

    js.get_stream(names.stream_jobs())
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    wait_current(0).await;
    stop.cancel();
    h.await.unwrap();
}
