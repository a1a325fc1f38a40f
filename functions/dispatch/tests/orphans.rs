//! No orphan records (issue 14): a submission admitted whose publish then failed — for
//! real: the JOBS stream stopped capturing the submit subjects, so the publish has no
//! stream to land in — is listed, and dispatch's reconcile re-publishes it, whether the
//! queue is idle or busy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use jetrun_core::{JobSpec, JobStatus, Names};
use jetrun_nats::submit::SubmitError;
use jetrun_nats::{EventPublisher, Topology};
use jetrun_runner::null::NullRunner;
use jetrun_runner::{LaunchRequest, Runner, RunnerError, TaskInfo, TaskStatus};

/// The null runner, but each task takes `secs` to "exit 0".
struct Slow(NullRunner, Duration);

#[async_trait::async_trait]
impl Runner for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }
    async fn launch(&self, req: &LaunchRequest) -> Result<String, RunnerError> {
        self.0.launch(req).await
    }
    async fn wait(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        tokio::time::sleep(self.1).await;
        self.0.wait(task_ref).await
    }
    async fn describe(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        self.0.describe(task_ref).await
    }
    async fn stop(&self, task_ref: &str, grace: Duration) -> Result<(), RunnerError> {
        self.0.stop(task_ref, grace).await
    }
    async fn list(&self) -> Result<Vec<TaskInfo>, RunnerError> {
        self.0.list().await
    }
    async fn remove(&self, task_ref: &str) -> Result<(), RunnerError> {
        self.0.remove(task_ref).await
    }
    fn log_paths(&self, _task_ref: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        None
    }
}

struct Env {
    _server: jetrun_harness::NatsServer,
    js: async_nats::jetstream::Context,
    ctx: jetrun_host::Context,
    publisher: EventPublisher,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn env() -> Env {
    let server = jetrun_harness::NatsServer::start().unwrap();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    Topology::new(Names::default()).apply(&js).await.unwrap();
    let ctx = jetrun_host::Context::from_client(client, Names::default())
        .await
        .unwrap();
    Env {
        _server: server,
        publisher: EventPublisher::new(js.clone(), "/test"),
        js,
        ctx,
        shutdown: tokio_util::sync::CancellationToken::new(),
    }
}

impl Env {
    /// Starts the lifecycle (dispatch with `cfg`, agent, settle) on `runner`.
    async fn lifecycle(
        &self,
        runner: Arc<dyn Runner>,
        cfg: jetrun_dispatch::Config,
    ) -> jetrun_dispatch::Dispatcher {
        let (agent, _, _) = jetrun_agent::Agent::start(
            self.ctx.clone(),
            runner,
            jetrun_agent::Config::default(),
            self.shutdown.clone(),
        )
        .await
        .unwrap();
        let d = jetrun_dispatch::Dispatcher::new(self.ctx.clone(), agent, cfg);
        d.ensure_consumer("default").await.unwrap();
        tokio::spawn(d.clone().run("default".into(), self.shutdown.clone()));
        let s = jetrun_settle::Settle::new(self.ctx.clone(), jetrun_settle::Config::default());
        s.ensure_consumers().await.unwrap();
        tokio::spawn(s.run(self.shutdown.clone()));
        d
    }

    /// Makes the next publishes to the submit subjects fail for real: the JOBS stream
    /// captures another subject until [`Env::heal`].
    async fn break_publishes(&self) {
        let mut cfg = self
            .js
            .get_stream("JETRUN_JOBS")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .clone();
        cfg.subjects = vec!["jetrun.elsewhere.>".into()];
        self.js.update_stream(cfg).await.unwrap();
    }

    async fn heal(&self) {
        Topology::new(Names::default()).apply(&self.js).await.unwrap();
    }

    async fn submit(&self, i: usize) -> Result<String, SubmitError> {
        let spec = JobSpec::new("default", "img", vec![format!("job-{i}")]);
        jetrun_nats::submit::submit(&self.ctx.store, &self.publisher, spec, None, None)
            .await
            .map(|a| a.record().id.clone())
    }

    async fn wait_terminal(&self, ids: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut pending = Vec::new();
            for id in ids {
                let (r, _) = self.ctx.store.get(id).await.unwrap().unwrap();
                if r.status != JobStatus::Succeeded {
                    pending.push((id.clone(), r.status));
                }
            }
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not succeeded after {timeout:?}: {pending:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A submission whose publish failed after the admit, and its job id.
async fn orphan(env: &Env, i: usize) -> String {
    env.break_publishes().await;
    let spec = JobSpec::new("default", "img", vec![format!("orphan-{i}")]);
    let id = jetrun_nats::submit::job_id_for(&spec);
    let err = jetrun_nats::submit::submit_as(&env.ctx.store, &env.publisher, id.clone(), spec, None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, SubmitError::Publish(_)), "{err:?}");
    env.heal().await;
    // Admitted and listed: visible to `jobs list` and to the reconcile.
    let listed = env
        .ctx
        .store
        .list("default", Some(JobStatus::Queued), 100)
        .await
        .unwrap();
    assert!(
        listed.iter().any(|r| r.id == id),
        "the orphan is listed: {listed:?}"
    );
    id
}

fn fast_reconcile() -> jetrun_dispatch::Config {
    jetrun_dispatch::Config {
        reconcile_every: Duration::from_millis(300),
        reconcile_min_age: Duration::from_millis(500),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submission_admitted_but_never_published_runs_once_the_queue_is_idle() {
    let env = env().await;
    let id = orphan(&env, 0).await;
    env.lifecycle(Arc::new(NullRunner::new()), fast_reconcile()).await;
    env.wait_terminal(&[id], Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphans_are_re_published_while_the_queue_is_busy() {
    let env = env().await;
    // One job at a time, a second each: the queue stays busy for the whole test.
    let d = env
        .lifecycle(
            Arc::new(Slow(NullRunner::new(), Duration::from_millis(700))),
            jetrun_dispatch::Config {
                max_concurrent_jobs: 1,
                capacity_retry_delay: Duration::from_millis(100),
                reconcile_every: Duration::from_secs(3600),
                reconcile_min_age: Duration::from_millis(200),
                ..Default::default()
            },
        )
        .await;
    let mut ids = Vec::new();
    for i in 0..2 {
        ids.push(env.submit(i).await.unwrap());
    }
    let orphans = [orphan(&env, 1).await, orphan(&env, 2).await];
    for i in 2..8 {
        ids.push(env.submit(i).await.unwrap());
    }
    // Reconcile by hand while the queue is busy (its consumer has messages pending).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut republished = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        republished += d.reconcile("default").await.unwrap();
        let mut done = 0;
        for id in &orphans {
            let (r, _) = env.ctx.store.get(id).await.unwrap().unwrap();
            done += usize::from(r.status == JobStatus::Succeeded);
        }
        if done == orphans.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphans not run; republished {republished}"
        );
    }
    assert!(republished >= orphans.len(), "republished {republished}");
    ids.extend(orphans);
    env.wait_terminal(&ids, Duration::from_secs(30)).await;
}
