#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The bridge with the real lifecycle: a real nats-server (`jetrun init` topology), moto's
//! ECS (through the runner tests' proxy, which also fixes one moto answer the SDK cannot
//! parse), dispatch + node agent with the ECS runner, and settle — all in this process.
//! Events are "posted" to the bridge as EventBridge would deliver them to the Lambda.

#[path = "../../../crates/runner/tests/support/moto.rs"]
mod moto;
#[path = "../../../crates/runner/tests/support/proxy.rs"]
mod proxy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jetrun_core::job::{Callback, Transition};
use jetrun_core::task::AttemptKey;
use jetrun_core::{JobRecord, JobSpec, JobStatus, Names};
use jetrun_ecs_bridge::{Bridge, Config, Handled, NatsPublisher, reconcile};
use jetrun_nats::{EventPublisher, JobStore, Topology};
use jetrun_runner::Runner;
use jetrun_runner::ecs::{EcsConfig, EcsRunner, RetryConfig};

struct Rig {
    _nats: jetrun_harness::NatsServer,
    _moto: moto::Moto,
    proxy: proxy::Proxy,
    client: async_nats::Client,
    ctx: jetrun_host::Context,
    store: JobStore,
    bridge: Bridge,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn ecs_cfg(url: &str) -> EcsConfig {
    EcsConfig {
        cluster: "jobs".into(),
        endpoint_url: Some(url.into()),
        task_definition: Some("job".into()),
        poll_interval: Duration::from_millis(100),
        retry: RetryConfig {
            attempts: 4,
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        ..Default::default()
    }
}

async fn rig() -> Rig {
    let nats = jetrun_harness::NatsServer::start().unwrap();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let ctx = jetrun_host::Context::from_client(client.clone(), names.clone())
        .await
        .unwrap();
    let store = JobStore::open(&js, &names, "/test/bridge").await.unwrap();
    let m = moto::start().await;
    let proxy = proxy::Proxy::start(&m.url).await;
    moto::setup(&moto::client(&proxy.url)).await;
    let bridge = Bridge::new(
        Config::default(),
        Arc::new(store.clone()),
        Arc::new(NatsPublisher::new(js, names, "jetrun/ecs-bridge")),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let settle = jetrun_settle::Settle::new(ctx.clone(), jetrun_settle::Config::default());
    settle.ensure_consumers().await.unwrap();
    tokio::spawn(settle.run(shutdown.clone()));
    Rig {
        _nats: nats,
        _moto: m,
        proxy,
        client,
        ctx,
        store,
        bridge,
        shutdown,
    }
}

/// The "ECS Task State Change" event ECS sends for `arn` (the documented shape, with the
/// task's `startedBy`, `group` and overrides as moto holds them).
async fn state_change(
    r: &Rig,
    arn: &str,
    last_status: &str,
    stop_code: Option<&str>,
    exit_code: Option<i32>,
) -> serde_json::Value {
    let c = moto::client(&r.proxy.url);
    let out = c
        .describe_tasks()
        .cluster("jobs")
        .tasks(arn)
        .send()
        .await
        .unwrap();
    let t = &out.tasks()[0];
    let o = &t.overrides().unwrap().container_overrides()[0];
    let env: Vec<_> = o
        .environment()
        .iter()
        .map(|kv| serde_json::json!({"name": kv.name(), "value": kv.value()}))
        .collect();
    serde_json::json!({
        "version": "0",
        "id": "3317b2af-7005-947d-b652-f55e762e571a",
        "detail-type": "ECS Task State Change",
        "source": "aws.ecs",
        "account": "123456789012",
        "time": "2026-12-01T12:00:00Z",
        "region": "us-east-1",
        "resources": [arn],
        "detail": {
            "clusterArn": t.cluster_arn(),
            "containers": [{
                "containerArn": format!("{arn}/job"),
                "lastStatus": last_status,
                "name": "job",
                "exitCode": exit_code,
                "taskArn": arn
            }],
            "desiredStatus": "STOPPED",
            "group": t.group(),
            "lastStatus": last_status,
            "launchType": "FARGATE",
            "overrides": {"containerOverrides": [{"name": "job", "environment": env}]},
            "startedBy": t.started_by(),
            "stopCode": stop_code,
            "stoppedReason": "Essential container in task exited",
            "stoppedAt": "2026-12-01T12:00:00Z",
            "taskArn": arn,
            "taskDefinitionArn": t.task_definition_arn(),
            "version": 5
        }
    })
}

async fn wait_for<F>(what: &str, secs: u64, mut f: F) -> JobRecord
where
    F: AsyncFnMut() -> Option<JobRecord>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(r) = f().await {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_is(store: &JobStore, id: &str, want: fn(JobStatus) -> bool) -> Option<JobRecord> {
    store
        .get(id)
        .await
        .unwrap()
        .map(|(r, _)| r)
        .filter(|r| want(r.status))
}

#[tokio::test]
async fn a_task_stopped_by_ecs_settles_the_job_with_its_exit_code_and_callback() {
    let r = rig().await;
    let runner = Arc::new(
        EcsRunner::with_client(ecs_cfg(&r.proxy.url), moto::client(&r.proxy.url))
            .unwrap()
            .with_node(r.ctx.node_id.clone()),
    );
    let (agent, _, _) = jetrun_agent::Agent::start(
        r.ctx.clone(),
        runner.clone(),
        jetrun_agent::Config {
            renew_every: Duration::from_millis(200),
            ..Default::default()
        },
        r.shutdown.clone(),
    )
    .await
    .unwrap();
    let d = jetrun_dispatch::Dispatcher::new(r.ctx.clone(), agent, jetrun_dispatch::Config::default());
    d.ensure_consumer("default").await.unwrap();
    tokio::spawn(d.run("default".into(), r.shutdown.clone()));

    let mut callbacks = r.client.subscribe("callbacks.default.ecs").await.unwrap();
    r.client.flush().await.unwrap();
    let mut spec = JobSpec::new(
        "default",
        "busybox",
        vec!["sh".into(), "-c".into(), "exit 3".into()],
    );
    spec.callback = Some(Callback::Nats("callbacks.default.ecs".into()));
    let publisher = EventPublisher::new(r.ctx.js.clone(), "/test");
    let id = jetrun_nats::submit::submit(&r.store, &publisher, spec, None, None)
        .await
        .unwrap()
        .record()
        .id
        .clone();

    let rec = wait_for("running", 20, async || {
        status_is(&r.store, &id, |s| s == JobStatus::Running).await
    })
    .await;
    let arn = rec.task_ref.clone().unwrap();
    assert!(arn.starts_with("arn:aws:ecs:"), "{arn}");
    let c = moto::client(&r.proxy.url);
    assert_eq!(
        moto::tasks_started_by(&c, &id).await,
        vec![arn.clone()],
        "one task"
    );

    // ECS reports the end: the job's container exited 3.
    let ev = state_change(&r, &arn, "STOPPED", Some("EssentialContainerExited"), Some(3)).await;
    match r.bridge.handle(&ev).await.unwrap() {
        Handled::Published(e) => {
            assert_eq!((e.exit_code, e.attempt), (Some(3), 1));
            assert_eq!(e.node_id, r.ctx.node_id, "as from the attempt's node");
        }
        h => panic!("{h:?}"),
    }
    let done = wait_for("failed", 20, async || {
        status_is(&r.store, &id, JobStatus::is_terminal).await
    })
    .await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(done.error.as_ref().unwrap().kind, "exit_code");
    // Settle accepted the bridge's event, so its signature verified: a forged one is
    // dead-lettered instead and changes nothing.
    let cb = tokio::time::timeout(Duration::from_secs(10), callbacks.next())
        .await
        .expect("the completion callback")
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&cb.payload).unwrap();
    assert_eq!(body["job_id"], id.as_str());
    assert_eq!(body["to"], "failed");
    // The same event again (EventBridge delivers at least once) changes nothing.
    assert!(matches!(r.bridge.handle(&ev).await.unwrap(), Handled::Ignored(_)));
    // The agent lets go of the ended job's task (moto keeps tasks running until stopped).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = runner.describe_task(&arn).await.unwrap().unwrap();
        if v.last_status == "STOPPED" {
            break;
        }
        assert!(Instant::now() < deadline, "the ended job's task was not stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A job claimed by `node-x` with a key and started on a real (moto) task, as dispatch
/// leaves it, without an agent supervising it (so only the bridge reports its end).
async fn running_unsupervised(r: &Rig, runner: &EcsRunner, id: &str) -> (JobRecord, String) {
    let rec = JobRecord::new(
        id.into(),
        JobSpec::new("default", "busybox", vec!["true".into()]),
        None,
        None,
    );
    let a = r.store.admit(rec).await.unwrap();
    let mut keyed = a.record().clone();
    keyed.attempt_key = Some(AttemptKey::generate());
    let claim = Transition::Claim {
        worker_id: "w".into(),
        node_id: "node-x".into(),
    };
    let (rec, rev) = r.store.transition_at(&keyed, a.revision(), &claim).await.unwrap();
    let arn = runner
        .launch(&jetrun_runner::LaunchRequest::new(
            id,
            rec.attempt,
            rec.spec.clone(),
            None,
        ))
        .await
        .unwrap();
    let (rec, _) = r
        .store
        .transition_at(
            &rec,
            rev,
            &Transition::Started {
                task_ref: arn.clone(),
            },
        )
        .await
        .unwrap();
    (rec, arn)
}

#[tokio::test]
async fn an_event_for_an_old_attempt_never_changes_a_newer_one() {
    let r = rig().await;
    let runner = EcsRunner::with_client(ecs_cfg(&r.proxy.url), moto::client(&r.proxy.url)).unwrap();
    let (rec, old_arn) = running_unsupervised(&r, &runner, "job-old").await;
    // Attempt 1 is lost and retried; attempt 2 is claimed and runs elsewhere.
    let retry = Transition::Retry {
        error: jetrun_core::JobError::new("lease_expired", "node died"),
        not_before: jetrun_core::now(),
    };
    let (rec, rev) = r
        .store
        .transition_at(&rec, r.store.get(&rec.id).await.unwrap().unwrap().1, &retry)
        .await
        .unwrap();
    let mut keyed = rec.clone();
    keyed.attempt_key = Some(AttemptKey::generate());
    let claim = Transition::Claim {
        worker_id: "w2".into(),
        node_id: "node-y".into(),
    };
    let (rec, _) = r.store.transition_at(&keyed, rev, &claim).await.unwrap();
    assert_eq!(rec.attempt, 2);
    let ev = state_change(&r, &old_arn, "STOPPED", Some("EssentialContainerExited"), Some(0)).await;
    match r.bridge.handle(&ev).await.unwrap() {
        Handled::Ignored(why) => assert!(why.contains("attempt 1") && why.contains("attempt 2"), "{why}"),
        h => panic!("{h:?}"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = r.store.get("job-old").await.unwrap().unwrap().0;
    assert_eq!((now.status, now.attempt), (JobStatus::Launching, 2));
    // The reconcile stops the old attempt's task: no node supervises it any more.
    let report = reconcile(&runner, &r.bridge).await.unwrap();
    assert_eq!(report.stopped, 1, "{report:?}");
    let v = runner.describe_task(&old_arn).await.unwrap().unwrap();
    assert_eq!(v.last_status, "STOPPED");
    assert!(v.stopped_reason.unwrap().starts_with("jetrun: superseded"));
}

#[tokio::test]
async fn a_lost_event_is_recovered_by_the_reconcile() {
    let r = rig().await;
    let runner = EcsRunner::with_client(ecs_cfg(&r.proxy.url), moto::client(&r.proxy.url)).unwrap();
    let (_, arn) = running_unsupervised(&r, &runner, "job-lost").await;
    let (_, other) = running_unsupervised(&r, &runner, "job-still").await;
    // The task ends (moto: the container's exit code is 0) and its event never arrives.
    let c = moto::client(&r.proxy.url);
    c.stop_task()
        .cluster("jobs")
        .task(&arn)
        .reason("Essential container in task exited")
        .send()
        .await
        .unwrap();
    let report = reconcile(&runner, &r.bridge).await.unwrap();
    assert_eq!(
        (report.seen, report.reported, report.stopped),
        (2, 1, 0),
        "{report:?}"
    );
    let done = wait_for("succeeded", 20, async || {
        status_is(&r.store, "job-lost", JobStatus::is_terminal).await
    })
    .await;
    assert_eq!((done.status, done.exit_code), (JobStatus::Succeeded, Some(0)));
    // The running one is untouched; a second pass reports nothing new.
    assert_eq!(
        r.store.get("job-still").await.unwrap().unwrap().0.status,
        JobStatus::Running
    );
    assert_eq!(
        runner.describe(&other).await.unwrap(),
        jetrun_runner::TaskStatus::Running
    );
    let again = reconcile(&runner, &r.bridge).await.unwrap();
    assert_eq!(again.reported, 0, "{again:?}");
}
