//! The topology never lowers replicas unless forced (against a real 3-node cluster).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use jetrun_core::Names;
use jetrun_nats::Topology;
use jetrun_nats::topology::{Change, TopologyErrorKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_kept_by_default_and_lowered_only_when_forced() {
    let cluster = jetrun_harness::Cluster::start().await.unwrap();
    let js = async_nats::jetstream::new(cluster.client().await);
    let names = Names::default();
    let mut r3 = Topology::new(names.clone());
    r3.replicas = Some(3);
    r3.apply(&js).await.unwrap();
    let jobs_replicas = || async {
        js.get_stream("KV_jetrun-jobs")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .num_replicas
    };
    assert_eq!(jobs_replicas().await, 3);

    // Not given: kept (what `jetrun dev --nats-url` does).
    let report = Topology::new(names.clone()).apply(&js).await.unwrap();
    assert!(report.iter().all(|a| a.change == Change::Unchanged), "{report:?}");
    assert_eq!(jobs_replicas().await, 3);

    // Lower, not forced: refused before anything changes.
    let mut r1 = Topology::new(names.clone());
    r1.replicas = Some(1);
    let err = r1.apply(&js).await.unwrap_err();
    assert_eq!(
        err.error,
        TopologyErrorKind::WouldLowerReplicas { have: 3, want: 1 }
    );
    assert_eq!(err.kind, "stream");
    assert!(err.to_string().contains("has 3 replicas, 1 asked for"), "{err}");
    assert_eq!(jobs_replicas().await, 3);

    // Forced: lowered, each with a warning.
    r1.force_replicas = true;
    let report = r1.apply(&js).await.unwrap();
    let warned = report.iter().filter(|a| a.warning.is_some()).count();
    assert_eq!(warned, 12, "{report:?}");
    assert_eq!(jobs_replicas().await, 1);
}
