//! State-change events carry what watchers need, not the job's environment; the
//! callback copy of a terminal change stays whole (settle and receivers read it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use jetrun_core::job::Transition;
use jetrun_core::{JobRecord, JobSpec, Names};
use jetrun_nats::store::StateChange;
use jetrun_nats::{JobStore, Topology};

#[tokio::test]
async fn events_leave_the_env_out_and_callbacks_keep_it() {
    let server = jetrun_harness::NatsServer::start().unwrap();
    let js = async_nats::jetstream::new(server.client().await);
    Topology::new(Names::default()).apply(&js).await.unwrap();
    let store = JobStore::open(&js, &Names::default(), "/test").await.unwrap();
    let mut spec = JobSpec::new("q", "busybox", vec!["true".into()]);
    spec.env.insert("BIG".into(), "x".repeat(16 * 1024));
    spec.callback =
        Some(serde_json::from_value(serde_json::json!({"nats": "callbacks.default.done"})).unwrap());
    store
        .admit(JobRecord::new("slim".into(), spec, None, None))
        .await
        .unwrap();
    store
        .transition("slim", &Transition::Cancel { reason: "x".into() })
        .await
        .unwrap();
    let s = js.get_stream("JETRUN_JOB_EVENTS").await.unwrap();
    let ev = s
        .get_last_raw_message_by_subject("jetrun.job.event.q.slim")
        .await
        .unwrap();
    assert!(ev.payload.len() < 4096, "event is {} bytes", ev.payload.len());
    let v: serde_json::Value = serde_json::from_slice(&ev.payload).unwrap();
    jetrun_core::schema::validate_value(jetrun_core::schema::types::JOB_STATE_CHANGED, &v).unwrap();
    assert_eq!(v["to"], "cancelled");
    assert!(v["record"]["spec"].get("env").is_none(), "{v}");
    assert_eq!(v["record"]["spec"]["queue"], "q");
    let cb = s
        .get_last_raw_message_by_subject("jetrun.job.callback.q.slim")
        .await
        .unwrap();
    let change: StateChange = serde_json::from_slice(&cb.payload).unwrap();
    assert_eq!(change.record.spec.env["BIG"].len(), 16 * 1024);
}
