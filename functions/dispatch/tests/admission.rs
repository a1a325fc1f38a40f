//! Dispatch against a real nats-server, with the node agent and settle in-process and a
//! test runner whose tasks run until the test lets them exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jetrun_core::{JobSpec, JobStatus, Names};
use jetrun_nats::{EventPublisher, Topology};
use jetrun_runner::{LaunchRequest, Runner, RunnerError, RunnerErrorKind, TaskInfo, TaskStatus};
use tokio::sync::watch;

/// A held task and the channel its exit code arrives on.
type Held = (TaskInfo, watch::Sender<Option<i32>>);

/// Tasks run until [`HoldRunner::finish_all`]; every launch is counted.
#[derive(Default)]
struct HoldRunner {
    tasks: Mutex<HashMap<String, Held>>,
    launches: Mutex<Vec<String>>,
}

impl HoldRunner {
    fn finish_all(&self, code: i32) {
        for (_, tx) in self.tasks.lock().unwrap().values() {
            let _ = tx.send(Some(code));
        }
    }
    fn launches(&self) -> usize {
        self.launches.lock().unwrap().len()
    }
}

#[async_trait::async_trait]
impl Runner for HoldRunner {
    fn name(&self) -> &'static str {
        "hold"
    }
    async fn launch(&self, req: &LaunchRequest) -> Result<String, RunnerError> {
        if req.spec.image == "missing" {
            return Err(RunnerError::new(RunnerErrorKind::InvalidSpec, "no image missing"));
        }
        let mut t = self.tasks.lock().unwrap();
        if !t.contains_key(&req.token) {
            self.launches.lock().unwrap().push(req.token.clone());
            let info = TaskInfo {
                task_ref: req.token.clone(),
                job_id: req.job_id.clone(),
                attempt: req.attempt,
                status: TaskStatus::Running,
            };
            t.insert(req.token.clone(), (info, watch::channel(None).0));
        }
        Ok(req.token.clone())
    }
    async fn wait(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        let mut rx = match self.tasks.lock().unwrap().get(task_ref) {
            Some((_, tx)) => tx.subscribe(),
            None => return Ok(TaskStatus::NotFound),
        };
        let code = *rx.wait_for(|c| c.is_some()).await.unwrap();
        Ok(TaskStatus::Exited {
            exit_code: code.unwrap_or(0),
        })
    }
    async fn describe(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        Ok(match self.tasks.lock().unwrap().get(task_ref) {
            Some((_, tx)) => match *tx.borrow() {
                Some(c) => TaskStatus::Exited { exit_code: c },
                None => TaskStatus::Running,
            },
            None => TaskStatus::NotFound,
        })
    }
    async fn stop(&self, task_ref: &str, _grace: Duration) -> Result<(), RunnerError> {
        if let Some((_, tx)) = self.tasks.lock().unwrap().get(task_ref) {
            let _ = tx.send(Some(143));
        }
        Ok(())
    }
    async fn list(&self) -> Result<Vec<TaskInfo>, RunnerError> {
        Ok(self
            .tasks
            .lock()
            .unwrap()
            .values()
            .map(|(i, _)| i.clone())
            .collect())
    }
    async fn remove(&self, _task_ref: &str) -> Result<(), RunnerError> {
        Ok(())
    }
    fn log_paths(&self, _task_ref: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        None
    }
}

struct Pipeline {
    _server: jetrun_harness::NatsServer,
    ctx: jetrun_host::Context,
    runner: Arc<HoldRunner>,
    publisher: EventPublisher,
    shutdown: tokio_util::sync::CancellationToken,
}

async fn pipeline(cfg: jetrun_dispatch::Config) -> Pipeline {
    let server = jetrun_harness::NatsServer::start().unwrap();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    Topology::new(Names::default()).apply(&js).await.unwrap();
    let ctx = jetrun_host::Context::from_client(client, Names::default())
        .await
        .unwrap();
    let runner = Arc::new(HoldRunner::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (agent, _, _) = jetrun_agent::Agent::start(
        ctx.clone(),
        runner.clone(),
        jetrun_agent::Config::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let d = jetrun_dispatch::Dispatcher::new(ctx.clone(), agent, cfg);
    d.ensure_consumer("default").await.unwrap();
    tokio::spawn(d.run("default".into(), shutdown.clone()));
    let s = jetrun_settle::Settle::new(ctx.clone(), jetrun_settle::Config::default());
    s.ensure_consumers().await.unwrap();
    tokio::spawn(s.run(shutdown.clone()));
    let publisher = EventPublisher::new(js, "/test");
    Pipeline {
        _server: server,
        ctx,
        runner,
        publisher,
        shutdown,
    }
}

impl Pipeline {
    async fn submit(&self, spec: JobSpec) -> String {
        jetrun_nats::submit::submit(&self.ctx.store, &self.publisher, spec, None, None)
            .await
            .unwrap()
            .record()
            .id
            .clone()
    }
    async fn statuses(&self, ids: &[String]) -> Vec<JobStatus> {
        let mut out = Vec::new();
        for id in ids {
            out.push(self.ctx.store.get(id).await.unwrap().unwrap().0.status);
        }
        out
    }
    async fn wait_until(
        &self,
        ids: &[String],
        what: &str,
        pred: impl Fn(&[JobStatus]) -> bool,
    ) -> Vec<JobStatus> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.statuses(ids).await;
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "not {what}: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn count(s: &[JobStatus], st: JobStatus) -> usize {
    s.iter().filter(|x| **x == st).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_concurrent_jobs_holds_jobs_queued_and_never_drops_them() {
    let p = pipeline(jetrun_dispatch::Config {
        max_concurrent_jobs: 2,
        capacity_retry_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(p.submit(JobSpec::new("default", "img", vec!["x".into()])).await);
    }
    p.wait_until(&ids, "2 running", |s| count(s, JobStatus::Running) == 2)
        .await;
    // Held: still exactly two after several retry rounds.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = p.statuses(&ids).await;
    assert_eq!(
        (count(&s, JobStatus::Running), count(&s, JobStatus::Queued)),
        (2, 3),
        "{s:?}"
    );
    // As tasks end, the queued ones start; all end succeeded.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        p.runner.finish_all(0);
        let s = p.statuses(&ids).await;
        if count(&s, JobStatus::Succeeded) == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p.runner.launches(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_quota_limits_one_tenant_not_the_other() {
    let p = pipeline(jetrun_dispatch::Config {
        max_concurrent_jobs: 10,
        tenant_max_running: Some(1),
        capacity_retry_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let spec = |tenant: &str| {
        let mut s = JobSpec::new("default", "img", vec!["x".into()]);
        s.tenant = Some(tenant.into());
        s
    };
    let a: Vec<String> = vec![p.submit(spec("a")).await, p.submit(spec("a")).await];
    let b: Vec<String> = vec![p.submit(spec("b")).await];
    p.wait_until(&b, "b running", |s| s[0] == JobStatus::Running)
        .await;
    p.wait_until(&a, "one of a running", |s| count(s, JobStatus::Running) == 1)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&p.statuses(&a).await, JobStatus::Queued),
        1,
        "tenant a is held at its quota"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_do_not_relaunch_and_invalid_specs_fail() {
    let p = pipeline(jetrun_dispatch::Config::default()).await;
    let mut spec = JobSpec::new("default", "img", vec!["x".into()]);
    spec.idempotency_key = Some("delivery-1".into());
    let id = p.submit(spec.clone()).await;
    p.wait_until(std::slice::from_ref(&id), "running", |s| {
        s[0] == JobStatus::Running
    })
    .await;
    // The same submission again (same idempotency key, hence the same job): a no-op.
    let again = p.submit(spec).await;
    assert_eq!(again, id);
    let mut spec2 = JobSpec::new("default", "img", vec!["x".into()]);
    spec2.idempotency_key = Some("delivery-1".into());
    // A producer publishing straight to NATS with a non-job-id ce-id: the key decides.
    let env = p
        .publisher
        .envelope(jetrun_core::schema::types::JOB_SUBMITTED)
        .with_id("not a job id!");
    p.publisher
        .publish(p.ctx.names.job_submit("default"), &env, &spec2)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.runner.finish_all(0);
    p.wait_until(std::slice::from_ref(&id), "succeeded", |s| {
        s[0] == JobStatus::Succeeded
    })
    .await;
    assert_eq!(p.runner.launches(), 1, "a duplicate relaunched the job");

    let bad = p
        .submit(JobSpec::new("default", "missing", vec!["x".into()]))
        .await;
    p.wait_until(std::slice::from_ref(&bad), "failed", |s| {
        s[0] == JobStatus::Failed
    })
    .await;
    let r = p.ctx.store.get(&bad).await.unwrap().unwrap().0;
    assert_eq!(r.error.unwrap().kind, "invalid_spec");
}
