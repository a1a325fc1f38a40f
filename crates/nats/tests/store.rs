//! The job store and topology against a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jetrun_core::job::{Transition, TransitionErrorKind};
use jetrun_core::{JobRecord, JobSpec, JobStatus, Names};
use jetrun_harness::NatsServer;
use jetrun_nats::store::{Admission, Lease};
use jetrun_nats::topology::Change;
use jetrun_nats::{JobStore, StoreErrorKind, Topology};

async fn setup(server: &NatsServer) -> (async_nats::jetstream::Context, JobStore) {
    let js = async_nats::jetstream::new(server.client().await);
    Topology::new(Names::default()).apply(&js).await.unwrap();
    let store = JobStore::open(&js, &Names::default(), "/test").await.unwrap();
    (js, store)
}

fn job(id: &str, queue: &str) -> JobRecord {
    JobRecord::new(
        id.into(),
        JobSpec::new(queue, "busybox", vec!["true".into()]),
        None,
        None,
    )
}

#[tokio::test]
async fn init_is_idempotent_and_applies_changes() {
    let server = NatsServer::start().unwrap();
    let js = async_nats::jetstream::new(server.client().await);
    let topo = Topology::new(Names::default());
    let first = topo.apply(&js).await.unwrap();
    assert!(first.iter().all(|a| a.change == Change::Created), "{first:?}");
    let second = topo.apply(&js).await.unwrap();
    assert!(second.iter().all(|a| a.change == Change::Unchanged), "{second:?}");

    // A changed setting is applied, not ignored.
    let mut changed = topo.clone();
    changed.queues.push("gpu".into());
    let third = changed.apply(&js).await.unwrap();
    assert_eq!(third.iter().filter(|a| a.change == Change::Created).count(), 1);
    let mut s = js.get_stream("JETRUN_DLQ").await.unwrap();
    assert_eq!(
        s.info().await.unwrap().config.max_age,
        Duration::from_secs(30 * 86400)
    );

    // Two deployments share one server under different prefixes.
    let staging = Topology::new(Names::new("staging").unwrap());
    let r = staging.apply(&js).await.unwrap();
    assert!(r.iter().all(|a| a.change == Change::Created));
    js.get_stream("STAGING_JOBS").await.unwrap();
}

#[tokio::test]
async fn init_updates_a_drifted_setting() {
    let server = NatsServer::start().unwrap();
    let js = async_nats::jetstream::new(server.client().await);
    let topo = Topology::new(Names::default());
    topo.apply(&js).await.unwrap();
    // Someone shortened the webhook retention by hand.
    let mut cfg = js
        .get_stream("JETRUN_WEBHOOKS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    cfg.max_age = Duration::from_secs(600);
    js.update_stream(cfg).await.unwrap();
    let report = topo.apply(&js).await.unwrap();
    let webhooks = report.iter().find(|a| a.name == "JETRUN_WEBHOOKS").unwrap();
    assert_eq!(webhooks.change, Change::Updated);
    let mut s = js.get_stream("JETRUN_WEBHOOKS").await.unwrap();
    assert_eq!(
        s.info().await.unwrap().config.max_age,
        Duration::from_secs(7 * 86400)
    );
}

#[tokio::test]
async fn admit_is_create_if_absent() {
    let server = NatsServer::start().unwrap();
    let (_js, store) = setup(&server).await;
    let a = store.admit(job("j1", "q")).await.unwrap();
    assert!(matches!(a, Admission::New(..)));
    let b = store.admit(job("j1", "q")).await.unwrap();
    assert!(matches!(b, Admission::Existing(..)));
    assert_eq!(b.record().id, "j1");
    let (rec, _) = store.get("j1").await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Queued);
    assert!(store.get("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn of_32_concurrent_claimers_exactly_one_wins() {
    let server = NatsServer::start().unwrap();
    let (_js, store) = setup(&server).await;
    store.admit(job("contended", "q")).await.unwrap();
    let store = Arc::new(store);
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = Vec::new();
    for i in 0..32 {
        let store = store.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let (rec, rev) = store.get("contended").await.unwrap().unwrap();
            barrier.wait().await;
            let claim = Transition::Claim {
                worker_id: format!("w{i}"),
                node_id: "n".into(),
            };
            match store.transition_at(&rec, rev, &claim).await {
                Ok(_) => Ok(i),
                Err(e) => Err(e.kind),
            }
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => winners += 1,
            Err(kind) => assert_eq!(kind, StoreErrorKind::Conflict),
        }
    }
    assert_eq!(winners, 1);
    let (rec, _) = store.get("contended").await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Launching);

    // With re-reading retries, the losers see an illegal transition, not a second win.
    let claim = Transition::Claim {
        worker_id: "late".into(),
        node_id: "n".into(),
    };
    let e = store.transition("contended", &claim).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Transition(TransitionErrorKind::Illegal));
}

#[tokio::test]
async fn terminal_states_never_change_and_index_follows() {
    let server = NatsServer::start().unwrap();
    let (_js, store) = setup(&server).await;
    for i in 0..5 {
        store.admit(job(&format!("j{i}"), "q")).await.unwrap();
    }
    store.admit(job("other", "q2")).await.unwrap();
    let t = |w: &str| Transition::Claim {
        worker_id: w.into(),
        node_id: "n".into(),
    };
    store.transition("j0", &t("w")).await.unwrap();
    store
        .transition(
            "j0",
            &Transition::Started {
                task_ref: "t0".into(),
            },
        )
        .await
        .unwrap();
    store
        .transition("j0", &Transition::Exited { exit_code: 0 })
        .await
        .unwrap();
    store
        .transition(
            "j1",
            &Transition::Cancel {
                reason: "user".into(),
            },
        )
        .await
        .unwrap();

    let e = store
        .transition(
            "j0",
            &Transition::Cancel {
                reason: "late".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Transition(TransitionErrorKind::Terminal));

    let queued = store.list("q", Some(JobStatus::Queued), 100).await.unwrap();
    let mut ids: Vec<_> = queued.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["j2", "j3", "j4"]);
    let done = store.list("q", Some(JobStatus::Succeeded), 100).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, "j0");
    assert_eq!(store.list("q", None, 100).await.unwrap().len(), 5);
    let counts = store.counts("q").await.unwrap();
    assert_eq!(counts.get("active"), Some(&3));
    assert_eq!(counts.get("succeeded"), Some(&1));
    assert_eq!(counts.get("cancelled"), Some(&1));
    assert_eq!(store.queues().await.unwrap(), ["q", "q2"]);
}

#[tokio::test]
async fn state_changes_are_published() {
    let server = NatsServer::start().unwrap();
    let (js, store) = setup(&server).await;
    store.admit(job("ev", "q")).await.unwrap();
    store
        .transition("ev", &Transition::Cancel { reason: "x".into() })
        .await
        .unwrap();
    let mut s = js.get_stream("JETRUN_JOB_EVENTS").await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 2);
    let m = s
        .get_last_raw_message_by_subject("jetrun.job.event.q.ev")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["to"], "cancelled");
    jetrun_core::schema::validate_value(jetrun_core::schema::types::JOB_STATE_CHANGED, &v).unwrap();
}

#[tokio::test]
async fn lease_expiry_arrives_as_an_event() {
    let server = NatsServer::start().unwrap();
    let (_js, store) = setup(&server).await;
    let mut expiries = Box::pin(store.lease_expiries().await.unwrap());
    let lease = |id: &str| Lease {
        job_id: id.into(),
        attempt: 1,
        worker_id: "w".into(),
        node_id: "n".into(),
    };

    // A renewed lease outlives its TTL; a released one is not an expiry; an abandoned one expires.
    let kept = store
        .acquire_lease(&lease("kept"), Duration::from_secs(1))
        .await
        .unwrap();
    store
        .acquire_lease(&lease("released"), Duration::from_secs(1))
        .await
        .unwrap();
    store
        .acquire_lease(&lease("dead"), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        store
            .acquire_lease(&lease("dead"), Duration::from_secs(1))
            .await
            .unwrap_err()
            .kind,
        StoreErrorKind::Conflict
    );
    store.release_lease("released").await.unwrap();
    let renewer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut rev = kept;
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                rev = store
                    .renew_lease(&lease("kept"), rev, Duration::from_secs(1))
                    .await
                    .unwrap();
            }
        })
    };
    let expired = tokio::time::timeout(Duration::from_secs(5), expiries.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(expired, "dead");
    renewer.await.unwrap();
    assert!(store.lease("kept").await.unwrap().is_some());
    // Once no longer renewed, it expires too.
    let expired = tokio::time::timeout(Duration::from_secs(5), expiries.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(expired, "kept");
}

#[tokio::test]
async fn topology_works_on_a_three_node_cluster() {
    let cluster = jetrun_harness::Cluster::start().await.unwrap();
    let js = async_nats::jetstream::new(cluster.client().await);
    let mut topo = Topology::new(Names::default());
    topo.replicas = Some(3);
    topo.apply(&js).await.unwrap();
    let mut s = js.get_stream("JETRUN_JOBS").await.unwrap();
    assert_eq!(s.info().await.unwrap().config.num_replicas, 3);
    let store = JobStore::open(&js, &Names::default(), "/test").await.unwrap();
    store.admit(job("r3", "q")).await.unwrap();

    // The worst single failure for the job store: its bucket's stream leader dies.
    let mut kv_stream = js.get_stream("KV_jetrun-jobs").await.unwrap();
    let info = kv_stream.info().await.unwrap();
    let leader = info.cluster.clone().and_then(|c| c.leader).expect("a leader");
    let mut nodes = cluster.nodes;
    let victim = nodes
        .iter()
        .position(|n| n.name() == leader)
        .expect("leader is a node");
    let killed_at = std::time::Instant::now();
    nodes[victim].kill();

    // Reads ride out the election (the store retries them); R3 state is intact.
    let (rec, rev) = store.get("r3").await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Queued);
    // Writes resume once a new leader is elected; callers retry transient errors.
    let claim = Transition::Claim {
        worker_id: "w".into(),
        node_id: "n".into(),
    };
    let claimed = loop {
        match store.transition_at(&rec, rev, &claim).await {
            Ok((rec, _)) => break rec,
            Err(e)
                if e.kind == StoreErrorKind::Unavailable && killed_at.elapsed() < Duration::from_secs(30) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // A claim whose answer was lost with the old leader may have committed.
            Err(e) if e.kind == StoreErrorKind::Conflict => break store.get("r3").await.unwrap().unwrap().0,
            Err(e) => panic!("claim after failover: {e:?}"),
        }
    };
    assert_eq!(claimed.status, JobStatus::Launching);
    eprintln!(
        "failover: a write succeeded {} ms after the leader died",
        killed_at.elapsed().as_millis()
    );
}

#[tokio::test]
async fn a_lease_taken_again_after_release_or_expiry_still_expires() {
    let server = NatsServer::start().unwrap();
    let (_js, store) = setup(&server).await;
    let mut expiries = Box::pin(store.lease_expiries().await.unwrap());
    let lease = |attempt| Lease {
        job_id: "again".into(),
        attempt,
        worker_id: "w".into(),
        node_id: "n".into(),
    };
    // Attempt 1 ends normally: released. Attempt 2 takes it over the delete marker.
    store
        .acquire_lease(&lease(1), Duration::from_secs(1))
        .await
        .unwrap();
    store.release_lease("again").await.unwrap();
    store
        .acquire_lease(&lease(2), Duration::from_secs(1))
        .await
        .unwrap();
    let expired = tokio::time::timeout(Duration::from_secs(5), expiries.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        expired, "again",
        "attempt 2's lease expires although it was written over a marker"
    );
    // Attempt 3 takes it over the expiry marker; it expires too.
    store
        .acquire_lease(&lease(3), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(store.lease("again").await.unwrap().unwrap().0.attempt, 3);
    let expired = tokio::time::timeout(Duration::from_secs(5), expiries.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(expired, "again");
}

#[tokio::test]
async fn a_lease_released_at_a_stale_revision_stays_with_its_new_holder() {
    let server = NatsServer::start().unwrap();
    let (_js, store) = setup(&server).await;
    let lease = |worker: &str| Lease {
        job_id: "contested".into(),
        attempt: 1,
        worker_id: worker.into(),
        node_id: "n".into(),
    };
    // A dispatcher whose claim lost took the lease first; the winner took it over.
    let loser = store
        .acquire_lease(&lease("loser"), Duration::from_secs(30))
        .await
        .unwrap();
    store.release_lease("contested").await.unwrap();
    store
        .acquire_lease(&lease("winner"), Duration::from_secs(30))
        .await
        .unwrap();
    // The loser's clean-up must not take the winner's lease away.
    let e = store.release_lease_at("contested", loser).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Conflict);
    let (held, rev) = store.lease("contested").await.unwrap().unwrap();
    assert_eq!(held.worker_id, "winner");
    // At its own revision the holder releases it.
    store.release_lease_at("contested", rev).await.unwrap();
    assert!(store.lease("contested").await.unwrap().is_none());
}

#[tokio::test]
async fn a_duplicate_admission_finds_the_job_and_leaves_one_index_entry() {
    let server = NatsServer::start().unwrap();
    let (_js, store) = setup(&server).await;
    assert!(matches!(
        store.admit(job("dup", "q")).await.unwrap(),
        Admission::New(..)
    ));
    assert!(matches!(
        store.admit(job("dup", "q")).await.unwrap(),
        Admission::Existing(..)
    ));
    store
        .transition("dup", &Transition::Cancel { reason: "x".into() })
        .await
        .unwrap();
    // A late duplicate of a finished job: found, and its `active` entry taken back.
    let again = store.admit(job("dup", "q")).await.unwrap();
    assert!(matches!(again, Admission::Existing(..)));
    assert_eq!(again.record().status, JobStatus::Cancelled);
    let counts = store.counts("q").await.unwrap();
    assert_eq!(counts.get("active"), None, "{counts:?}");
    assert_eq!(counts.get("cancelled"), Some(&1));
}
