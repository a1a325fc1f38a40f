//! # jetrun-agent
//!
//! The node agent: one per worker process, it supervises the tasks this node launched.
//!
//! - **Supervision**: dispatch hands every launched task over with [`Agent::supervise`];
//!   the agent waits for it through the [`Runner`], renews the job's lease every
//!   `renew_every` (TTL `lease_ttl`), enforces the job timeout (`runner.stop`: SIGTERM,
//!   `stop_grace`, SIGKILL) and stops it when the job is cancelled.
//! - **Events**: it publishes `dev.jetrun.task.lifecycle.v1` on
//!   `<prefix>.task.<phase>.<job_id>` (`started`, `exited` with the exit code,
//!   `timed_out`, `stopped`, `lost`), each signed with the attempt's key
//!   ([`signing`]: `Jetrun-Task-Signature`), so settle accepts only the events of the node
//!   that runs the attempt. Settle turns them into job transitions. A final
//!   event is published before the lease is released, so a crash in between shows up as a
//!   lease expiry, never as a silently forgotten task.
//! - **Cancel**: it listens on `<prefix>.job.cancel.*` (core NATS) and also re-reads each
//!   job's record at every renewal, so a missed cancel message only delays the stop.
//! - **Crash recovery**: at start it asks the runner for the tasks it knows (including ones
//!   from a previous process with the same data directory): a task of a job still
//!   assigned to this node is supervised again (or, if it ended meanwhile, its final event
//!   is published); anything else is stopped and removed (reaped).
//! - **Services**: `logs` and `describe` over NATS request/reply on
//!   `<prefix>.node.<node_id>.<service>`, and a heartbeat entry in the `nodes` bucket
//!   with a per-key TTL, so the fleet is discoverable.

pub mod protocol;
pub mod signing;
pub mod tail;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use jetrun_core::schema::types;
use jetrun_core::task::{AttemptKey, TaskEvent, TaskPhase};
use jetrun_core::{JobStatus, Timestamp};
use jetrun_host::Context;
use jetrun_nats::store::Lease;
use jetrun_nats::{EventPublisher, StoreErrorKind};
use jetrun_runner::{Runner, TaskStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::protocol::{DescribeReply, DescribeRequest, LogsReply, LogsRequest, NodeInfo};

/// Node agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Lease TTL of a running job (default 10 s). A worker that stops renewing for this
    /// long is presumed dead and its job is retried.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often leases are renewed and records re-read for cancels (default 3 s).
    #[serde(with = "humantime_serde")]
    pub renew_every: Duration,
    /// Time between SIGTERM and SIGKILL when stopping a task (default 10 s).
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// TTL of this node's entry in the `nodes` bucket (default 15 s).
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// How often that entry is refreshed (default 5 s).
    #[serde(with = "humantime_serde")]
    pub heartbeat_every: Duration,
    /// At shutdown, the grace given to tasks that are stopped (default 3 s); they are
    /// reported `lost` and settle retries them elsewhere.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Queues whose jobs may ask for `network: true` (outbound access through the
    /// runner's own network namespace); `*` allows every queue. Default: none (the
    /// operator opts queues in; `jetrun dev` allows all). A job asking for network on
    /// another queue fails with `network_not_allowed`.
    pub network_queues: Vec<String>,
    /// The queues this node's worker dispatches (`*`: every queue), advertised in the
    /// node's heartbeat so producers can say when no worker serves a queue.
    pub queues: Vec<String>,
}

impl Config {
    /// Whether jobs of `queue` may have a network.
    pub fn network_allowed(&self, queue: &str) -> bool {
        self.network_queues.iter().any(|q| q == "*" || q == queue)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(3),
            stop_grace: Duration::from_secs(10),
            node_ttl: Duration::from_secs(15),
            heartbeat_every: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(3),
            network_queues: Vec::new(),
            queues: Vec::new(),
        }
    }
}

/// Kinds of agent failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentErrorKind {
    /// NATS could not be reached (subscribing, publishing).
    Nats,
    /// The runner failed.
    Runner,
    /// The job store failed.
    Store,
}

/// The agent failed to start or run.
#[derive(Debug, thiserror::Error)]
#[error("node agent: {kind:?}: {message}")]
pub struct AgentError {
    /// What kind of failure.
    pub kind: AgentErrorKind,
    /// Details.
    pub message: String,
}

impl AgentError {
    fn new(kind: AgentErrorKind, e: impl std::fmt::Display) -> Self {
        Self {
            kind,
            message: e.to_string(),
        }
    }
}

/// Something held while a task runs and dropped when it ends (dispatch's concurrency
/// slot and tenant count).
pub type EndGuard = Box<dyn std::any::Any + Send>;

/// A launched task handed to the agent.
pub struct Task {
    /// The job.
    pub job_id: String,
    /// The attempt.
    pub attempt: u32,
    /// The runner's task reference.
    pub task_ref: String,
    /// The job's timeout.
    pub timeout: Duration,
    /// When the attempt started running.
    pub started_at: Timestamp,
    /// The revision of the job's lease, held by this worker.
    pub lease_revision: u64,
    /// Whether a cancel was already asked for.
    pub cancel_requested: bool,
    /// The job's W3C traceparent, carried on its task events.
    pub traceparent: Option<String>,
    /// The attempt's key from the job record: signs its task events. Without it (a record
    /// claimed by an older version) events go unsigned, settle refuses them and the job
    /// is retried when its lease ends.
    pub attempt_key: Option<AttemptKey>,
    /// Dropped when the task has ended.
    pub guard: Option<EndGuard>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("job_id", &self.job_id)
            .field("attempt", &self.attempt)
            .field("task_ref", &self.task_ref)
            .finish_non_exhaustive()
    }
}

/// Why a supervisor is told to stop its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancel,
    Shutdown,
}

struct Supervised {
    attempt: u32,
    task_ref: String,
    stop: mpsc::Sender<StopReason>,
}

struct Inner {
    ctx: Context,
    runner: Arc<dyn Runner>,
    config: Config,
    publisher: EventPublisher,
    tasks: Mutex<HashMap<String, Supervised>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// What [`Agent::start`] found from a previous run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adoption {
    /// Tasks supervised again (still running, or ended and reported now).
    pub adopted: usize,
    /// Tasks stopped and removed because their job has moved on.
    pub reaped: usize,
}

/// A handle on the running node agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node_id", &self.inner.ctx.node_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    /// Starts the agent: subscribes to cancels and its services, adopts or reaps the
    /// tasks a previous run left, and registers the node. The returned task runs until
    /// `shutdown`, then stops the tasks still running (reporting them `lost`) and waits
    /// for every supervisor to finish.
    pub async fn start(
        ctx: Context,
        runner: Arc<dyn Runner>,
        config: Config,
        shutdown: CancellationToken,
    ) -> Result<(Agent, Adoption, JoinHandle<Result<(), AgentError>>), AgentError> {
        let names = ctx.names.clone();
        let node = ctx.node_id.clone();
        let cancels = ctx
            .client
            .subscribe(names.job_cancel("*"))
            .await
            .map_err(|e| AgentError::new(AgentErrorKind::Nats, e))?;
        let logs = ctx
            .client
            .subscribe(names.node_service(&node, protocol::SERVICE_LOGS))
            .await
            .map_err(|e| AgentError::new(AgentErrorKind::Nats, e))?;
        let describe = ctx
            .client
            .subscribe(names.node_service(&node, protocol::SERVICE_DESCRIBE))
            .await
            .map_err(|e| AgentError::new(AgentErrorKind::Nats, e))?;
        let inner = Arc::new(Inner {
            publisher: ctx.publisher("agent"),
            ctx,
            runner,
            config,
            tasks: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            shutdown: shutdown.clone(),
        });
        let agent = Agent { inner };
        let adoption = agent.adopt().await?;
        info!(node_id = %node, runner = agent.inner.runner.name(), adopted = adoption.adopted, reaped = adoption.reaped, "node agent started");
        agent.heartbeat().await;
        let a = agent.clone();
        let handle = tokio::spawn(async move { a.run(cancels, logs, describe).await });
        Ok((agent, adoption, handle))
    }

    /// This agent's node id.
    pub fn node_id(&self) -> &str {
        &self.inner.ctx.node_id
    }

    /// The runner it supervises.
    pub fn runner(&self) -> &Arc<dyn Runner> {
        &self.inner.runner
    }

    /// Its configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Tasks supervised now.
    pub fn running(&self) -> usize {
        lock(&self.inner.tasks).len()
    }

    /// Supervises a launched task until it ends: publishes `started`, then its final
    /// event, renewing the lease in between.
    pub fn supervise(&self, task: Task) {
        self.spawn_supervisor(task, true);
    }

    /// Stops the task of `job_id` as cancelled, if this agent runs it.
    pub async fn cancel(&self, job_id: &str) -> bool {
        let tx = lock(&self.inner.tasks).get(job_id).map(|s| s.stop.clone());
        match tx {
            Some(tx) => tx.send(StopReason::Cancel).await.is_ok(),
            None => false,
        }
    }

    fn spawn_supervisor(&self, task: Task, announce: bool) {
        let (tx, rx) = mpsc::channel(2);
        lock(&self.inner.tasks).insert(
            task.job_id.clone(),
            Supervised {
                attempt: task.attempt,
                task_ref: task.task_ref.clone(),
                stop: tx,
            },
        );
        let inner = self.inner.clone();
        let span = tracing::info_span!("task", job_id = %task.job_id, attempt = task.attempt, task_ref = %task.task_ref);
        self.inner.tracker.spawn(tracing::Instrument::instrument(
            async move { inner.supervise(task, rx, announce).await },
            span,
        ));
    }

    async fn run(
        self,
        mut cancels: async_nats::Subscriber,
        mut logs: async_nats::Subscriber,
        mut describe: async_nats::Subscriber,
    ) -> Result<(), AgentError> {
        let inner = &self.inner;
        let mut beat = tokio::time::interval(inner.config.heartbeat_every);
        beat.tick().await;
        loop {
            tokio::select! {
                _ = inner.shutdown.cancelled() => break,
                _ = beat.tick() => self.heartbeat().await,
                Some(m) = cancels.next() => {
                    let job_id = m.subject.as_str().rsplit('.').next().unwrap_or_default().to_string();
                    if self.cancel(&job_id).await {
                        info!(job_id = %job_id, "cancel received; stopping the task");
                    }
                }
                Some(m) = logs.next() => {
                    let a = self.clone();
                    tokio::spawn(async move { a.serve_logs(m).await });
                }
                Some(m) = describe.next() => {
                    let a = self.clone();
                    tokio::spawn(async move { a.serve_describe(m).await });
                }
            }
        }
        info!(node_id = %inner.ctx.node_id, tasks = self.running(), "node agent shutting down");
        let senders: Vec<_> = lock(&inner.tasks).values().map(|s| s.stop.clone()).collect();
        for tx in senders {
            let _ = tx.send(StopReason::Shutdown).await;
        }
        inner.tracker.close();
        let limit = inner.config.shutdown_grace + Duration::from_secs(10);
        if tokio::time::timeout(limit, inner.tracker.wait()).await.is_err() {
            warn!("supervisors did not finish in time; their leases will expire");
        }
        if let Ok(kv) = inner.ctx.js.get_key_value(inner.ctx.names.bucket_nodes()).await {
            let _ = kv.delete(&inner.ctx.node_id).await;
        }
        Ok(())
    }

    /// Writes this node's entry with a TTL.
    async fn heartbeat(&self) {
        let inner = &self.inner;
        let info = NodeInfo {
            node_id: inner.ctx.node_id.clone(),
            worker_id: inner.ctx.worker_id.clone(),
            runner: inner.runner.name().to_string(),
            tasks: self.running(),
            queues: inner.config.queues.clone(),
            updated_at: jetrun_core::now(),
        };
        let Ok(body) = serde_json::to_vec(&info) else {
            return;
        };
        let mut h = HeaderMap::new();
        h.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            format!("{}s", inner.config.node_ttl.as_secs().max(1)).as_str(),
        );
        let subject = format!("$KV.{}.{}", inner.ctx.names.bucket_nodes(), inner.ctx.node_id);
        match inner
            .ctx
            .js
            .publish_with_headers(subject, h, Bytes::from(body))
            .await
        {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    debug!(error = %e, "heartbeat not stored");
                }
            }
            Err(e) => debug!(error = %e, "heartbeat not sent"),
        }
    }

    async fn serve_logs(&self, m: async_nats::Message) {
        let Some(reply) = m.reply.clone() else { return };
        let req: LogsRequest = match serde_json::from_slice(&m.payload) {
            Ok(r) => r,
            Err(e) => {
                let r = LogsReply {
                    error: Some(format!("bad request: {e}")),
                    ..Default::default()
                };
                self.respond(reply, &r).await;
                return;
            }
        };
        let out = self.logs(req).await;
        self.respond(reply, &out).await;
    }

    /// The logs of `req.job_id`'s current task on this node.
    pub async fn logs(&self, req: LogsRequest) -> LogsReply {
        let mut out = LogsReply {
            job_id: req.job_id.clone(),
            ..Default::default()
        };
        let local = lock(&self.inner.tasks)
            .get(&req.job_id)
            .map(|s| s.task_ref.clone());
        let task_ref = match local {
            Some(t) => Some(t),
            None => match self.inner.ctx.store.get(&req.job_id).await {
                Ok(Some((r, _))) => r.task_ref,
                Ok(None) => {
                    out.error = Some("no such job".into());
                    return out;
                }
                Err(e) => {
                    out.error = Some(e.to_string());
                    return out;
                }
            },
        };
        let Some(task_ref) = task_ref else {
            out.error = Some("the job has no task (yet)".into());
            return out;
        };
        out.task_ref = Some(task_ref.clone());
        let Some((stdout, stderr)) = self.inner.runner.log_paths(&task_ref) else {
            out.error = Some(format!(
                "runner {} keeps no logs for {task_ref}",
                self.inner.runner.name()
            ));
            return out;
        };
        let read = tokio::task::spawn_blocking(move || {
            let one = |p: &std::path::Path, from: Option<u64>| -> std::io::Result<(Vec<String>, u64)> {
                match from {
                    Some(off) => {
                        let (text, next) = tail::read_from(p, off, 1 << 20)?;
                        Ok((text.lines().map(str::to_string).collect(), next))
                    }
                    None => jetrun_runner::logs::tail_with_offset(p, req.tail),
                }
            };
            Ok::<_, std::io::Error>((one(&stdout, req.stdout_from)?, one(&stderr, req.stderr_from)?))
        })
        .await;
        match read {
            Ok(Ok(((o, oo), (e, eo)))) => {
                out.stdout = o;
                out.stdout_offset = oo;
                out.stderr = e;
                out.stderr_offset = eo;
            }
            Ok(Err(e)) => out.error = Some(e.to_string()),
            Err(e) => out.error = Some(e.to_string()),
        }
        out
    }

    async fn serve_describe(&self, m: async_nats::Message) {
        let Some(reply) = m.reply.clone() else { return };
        let Ok(req) = serde_json::from_slice::<DescribeRequest>(&m.payload) else {
            return;
        };
        let known = lock(&self.inner.tasks)
            .get(&req.job_id)
            .filter(|s| s.attempt == req.attempt)
            .map(|s| s.task_ref.clone());
        let running = match &known {
            Some(t) => matches!(
                self.inner.runner.describe(t).await,
                Ok(TaskStatus::Running | TaskStatus::Pending)
            ),
            None => false,
        };
        let r = DescribeReply {
            job_id: req.job_id,
            supervised: known.is_some(),
            running,
        };
        self.respond(reply, &r).await;
    }

    async fn respond<T: Serialize>(&self, reply: async_nats::Subject, body: &T) {
        if let Ok(b) = serde_json::to_vec(body)
            && let Err(e) = self.inner.ctx.client.publish(reply, Bytes::from(b)).await
        {
            debug!(error = %e, "reply not sent");
        }
    }

    /// Adopts or reaps the tasks the runner knows from a previous run on this node.
    async fn adopt(&self) -> Result<Adoption, AgentError> {
        let inner = &self.inner;
        let mut report = Adoption::default();
        let known = inner
            .runner
            .list()
            .await
            .map_err(|e| AgentError::new(AgentErrorKind::Runner, e))?;
        for info in known {
            let rec = match jetrun_core::job::valid_job_id(&info.job_id) {
                true => inner
                    .ctx
                    .store
                    .get(&info.job_id)
                    .await
                    .map_err(|e| AgentError::new(AgentErrorKind::Store, e))?,
                false => None,
            };
            let ours = rec.as_ref().is_some_and(|(r, _)| {
                matches!(r.status, JobStatus::Launching | JobStatus::Running)
                    && r.attempt == info.attempt
                    && r.node_id.as_deref() == Some(inner.ctx.node_id.as_str())
            });
            let Some((rec, _)) = rec.filter(|_| ours) else {
                info!(task_ref = %info.task_ref, job_id = %info.job_id, "reaping a task whose job moved on");
                if !info.status.is_final() {
                    let _ = inner.runner.stop(&info.task_ref, Duration::from_secs(1)).await;
                }
                let _ = inner.runner.remove(&info.task_ref).await;
                report.reaped += 1;
                continue;
            };
            let mut started_at = rec.started_at.unwrap_or_else(jetrun_core::now);
            if rec.status == JobStatus::Launching {
                // The previous run died between launch and recording it.
                let t = jetrun_core::job::Transition::Started {
                    task_ref: info.task_ref.clone(),
                };
                if let Ok((r, _)) = inner.ctx.store.transition(&rec.id, &t).await {
                    started_at = r.started_at.unwrap_or(started_at);
                }
            }
            let lease = inner.lease_for(&rec.id, rec.attempt);
            let rev = match inner.ctx.store.lease(&rec.id).await {
                Ok(Some((_, rev))) => inner
                    .ctx
                    .store
                    .renew_lease(&lease, rev, inner.config.lease_ttl)
                    .await
                    .ok(),
                _ => None,
            };
            let rev = match rev {
                Some(r) => r,
                None => inner
                    .ctx
                    .store
                    .acquire_lease(&lease, inner.config.lease_ttl)
                    .await
                    .unwrap_or(0),
            };
            info!(job_id = %rec.id, attempt = rec.attempt, task_ref = %info.task_ref, status = ?info.status, "adopting a task from a previous run");
            self.spawn_supervisor(
                Task {
                    job_id: rec.id.clone(),
                    attempt: rec.attempt,
                    task_ref: info.task_ref.clone(),
                    timeout: rec.spec.timeout(),
                    started_at,
                    lease_revision: rev,
                    cancel_requested: rec.cancel_requested,
                    traceparent: rec.traceparent.clone(),
                    // Re-read from the record: the key is not kept on disk by the runner.
                    attempt_key: rec.attempt_key.clone(),
                    guard: None,
                },
                false,
            );
            report.adopted += 1;
        }
        Ok(report)
    }
}

/// How a supervised task ended.
struct Ending {
    phase: TaskPhase,
    exit_code: Option<i32>,
    message: Option<String>,
}

impl Ending {
    fn new(phase: TaskPhase, exit_code: Option<i32>, message: Option<String>) -> Self {
        Self {
            phase,
            exit_code,
            message,
        }
    }
}

impl Inner {
    fn lease_for(&self, job_id: &str, attempt: u32) -> Lease {
        Lease {
            job_id: job_id.to_string(),
            attempt,
            worker_id: self.ctx.worker_id.clone(),
            node_id: self.ctx.node_id.clone(),
        }
    }

    async fn supervise(self: Arc<Self>, task: Task, mut stop: mpsc::Receiver<StopReason>, announce: bool) {
        let Task {
            job_id,
            attempt,
            task_ref,
            timeout,
            started_at,
            lease_revision,
            cancel_requested,
            traceparent,
            attempt_key,
            guard,
        } = task;
        if announce {
            let ev = self.event(
                &job_id,
                attempt,
                &task_ref,
                Ending::new(TaskPhase::Started, None, None),
            );
            if let Err(e) = self
                .publisher_publish(&ev, traceparent.as_deref(), attempt_key.as_ref())
                .await
            {
                warn!(job_id = %job_id, error = %e, "started event not published");
            }
        }
        let lease = self.lease_for(&job_id, attempt);
        let mut lease_rev = lease_revision;
        let elapsed = (jetrun_core::now() - started_at).to_std().unwrap_or_default();
        let deadline = tokio::time::Instant::now() + timeout.saturating_sub(elapsed);
        let runner = self.runner.clone();
        let mut wait = runner.wait(&task_ref);
        let period = self.config.renew_every.max(Duration::from_millis(100));
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut cancel_now = cancel_requested;
        let ending = loop {
            if cancel_now {
                self.stop_task(&task_ref, self.config.stop_grace).await;
                break Ending::new(TaskPhase::Stopped, None, Some("cancelled".into()));
            }
            tokio::select! {
                st = &mut wait => break match st {
                    Ok(TaskStatus::Exited { exit_code }) => Ending::new(TaskPhase::Exited, Some(exit_code), None),
                    Ok(TaskStatus::Killed { signal }) => Ending::new(
                        TaskPhase::Exited,
                        Some(128 + signal),
                        Some(format!("killed by signal {signal}")),
                    ),
                    // No status anywhere: it died with its node; retried, never an exit code.
                    Ok(TaskStatus::Lost) => Ending::new(
                        TaskPhase::Lost,
                        None,
                        Some("the task ended with no status recorded: it died with its node".into()),
                    ),
                    Ok(other) => Ending::new(TaskPhase::Lost, None, Some(format!("runner reported {other:?}"))),
                    Err(e) => Ending::new(TaskPhase::Lost, None, Some(format!("waiting for the task failed: {e}"))),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    info!(job_id = %job_id, timeout = ?timeout, "task timed out; stopping it");
                    self.stop_task(&task_ref, self.config.stop_grace).await;
                    break Ending::new(TaskPhase::TimedOut, None, Some(format!("timed out after {} s", timeout.as_secs())));
                }
                r = stop.recv() => match r {
                    Some(StopReason::Cancel) => cancel_now = true,
                    Some(StopReason::Shutdown) | None => {
                        self.stop_task(&task_ref, self.config.shutdown_grace).await;
                        break Ending::new(TaskPhase::Lost, None, Some("node agent shut down".into()));
                    }
                },
                _ = renew.tick() => {
                    match self.keep(&lease, &mut lease_rev).await {
                        Keep::Run => {}
                        Keep::Cancel => cancel_now = true,
                        Keep::Superseded => {
                            info!(job_id = %job_id, attempt, "job moved on without this task; stopping it");
                            self.stop_task(&task_ref, Duration::from_secs(1)).await;
                            let _ = self.runner.remove(&task_ref).await;
                            lock(&self.tasks).remove(&job_id);
                            drop(guard);
                            return;
                        }
                    }
                }
            }
        };
        drop(wait);
        debug!(job_id = %job_id, phase = ending.phase.as_str(), exit_code = ?ending.exit_code, "task ended");
        let ev = self.event(&job_id, attempt, &task_ref, ending);
        // Publish the final event before giving the lease up: if this fails for good the
        // lease expires and settle retries the job.
        let mut delay = Duration::from_millis(200);
        let mut published = false;
        for _ in 0..10 {
            match self
                .publisher_publish(&ev, traceparent.as_deref(), attempt_key.as_ref())
                .await
            {
                Ok(()) => {
                    published = true;
                    break;
                }
                Err(e) => {
                    warn!(job_id = %job_id, error = %e, "final task event not published; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        if published && let Err(e) = self.ctx.store.release_lease(&job_id).await {
            debug!(job_id = %job_id, error = %e, "lease not released; it will expire");
        }
        if let Err(e) = self.runner.remove(&task_ref).await {
            debug!(task_ref = %task_ref, error = %e, "task not removed");
        }
        lock(&self.tasks).remove(&job_id);
        drop(guard);
    }

    /// Renews the lease and re-reads the record: keep running, cancel, or give up.
    async fn keep(&self, lease: &Lease, rev: &mut u64) -> Keep {
        let store = &self.ctx.store;
        let renewed = match store.renew_lease(lease, *rev, self.config.lease_ttl).await {
            Ok(r) => {
                *rev = r;
                true
            }
            Err(e) => {
                debug!(job_id = %lease.job_id, error = %e, "lease renewal failed");
                false
            }
        };
        let rec = match store.get(&lease.job_id).await {
            Ok(Some((r, _))) => r,
            Ok(None) => return Keep::Superseded,
            Err(_) => return Keep::Run,
        };
        if rec.status.is_terminal()
            || rec.attempt != lease.attempt
            || rec.node_id.as_deref() != Some(lease.node_id.as_str())
        {
            return Keep::Superseded;
        }
        if !renewed {
            // Lost the lease (it expired during a stall, or its revision moved): take it
            // back, since the job is still ours.
            match store.acquire_lease(lease, self.config.lease_ttl).await {
                Ok(r) => *rev = r,
                Err(e) if e.kind == StoreErrorKind::Conflict => {
                    if let Ok(Some((l, r))) = store.lease(&lease.job_id).await
                        && l.attempt == lease.attempt
                    {
                        *rev = r;
                    }
                }
                Err(_) => {}
            }
        }
        if rec.cancel_requested {
            Keep::Cancel
        } else {
            Keep::Run
        }
    }

    async fn stop_task(&self, task_ref: &str, grace: Duration) {
        if let Err(e) = self.runner.stop(task_ref, grace).await {
            warn!(task_ref = %task_ref, error = %e, "stopping the task failed");
        }
    }

    fn event(&self, job_id: &str, attempt: u32, task_ref: &str, e: Ending) -> TaskEvent {
        TaskEvent {
            job_id: job_id.to_string(),
            attempt,
            phase: e.phase,
            task_ref: task_ref.to_string(),
            node_id: self.ctx.node_id.clone(),
            exit_code: e.exit_code,
            message: e.message,
            result: None,
            result_error: None,
            at: jetrun_core::now(),
        }
    }

    async fn publisher_publish(
        &self,
        ev: &TaskEvent,
        traceparent: Option<&str>,
        key: Option<&AttemptKey>,
    ) -> Result<(), jetrun_nats::PublishError> {
        publish_task_event(&self.publisher, &self.ctx.names, ev, traceparent, key).await
    }
}

enum Keep {
    Run,
    Cancel,
    Superseded,
}

/// Publishes a task lifecycle event on `<prefix>.task.<phase>.<job_id>`, deduplicated by
/// job, attempt and phase, in the job's trace, signed with the attempt's `key`
/// ([`signing`]). Without a key it goes unsigned (and settle will refuse it).
pub async fn publish_task_event(
    publisher: &EventPublisher,
    names: &jetrun_core::Names,
    ev: &TaskEvent,
    traceparent: Option<&str>,
    key: Option<&AttemptKey>,
) -> Result<(), jetrun_nats::PublishError> {
    let phase = ev.phase.as_str();
    let subject = names.task(phase, &ev.job_id);
    let perr = |kind, message: String| jetrun_nats::PublishError {
        kind,
        subject: subject.clone(),
        message,
    };
    // The id carries a tag only the key's holder can compute: a forger who publishes
    // first under the plain id would otherwise make JetStream drop the real event as a
    // duplicate.
    let id = match key {
        Some(k) => format!(
            "{}-{}.{phase}.{}",
            ev.job_id,
            ev.attempt,
            signing::id_tag(k, &ev.job_id, ev.attempt, phase)
        ),
        None => format!("{}-{}.{phase}", ev.job_id, ev.attempt),
    };
    let env = publisher
        .envelope(types::TASK_LIFECYCLE)
        .with_id(id)
        .with_subject(ev.job_id.clone())
        .with_trace(traceparent.map(str::to_string), None);
    let value =
        serde_json::to_value(ev).map_err(|e| perr(jetrun_nats::PublishErrorKind::Encode, e.to_string()))?;
    jetrun_core::schema::validate_value(types::TASK_LIFECYCLE, &value)
        .map_err(|e| perr(jetrun_nats::PublishErrorKind::Invalid, e.to_string()))?;
    // Signed over the exact bytes sent.
    let body =
        serde_json::to_vec(&value).map_err(|e| perr(jetrun_nats::PublishErrorKind::Encode, e.to_string()))?;
    let mut headers = jetrun_nats::events::to_header_map(&env);
    if let Some(k) = key {
        let sig = signing::sign(k, types::TASK_LIFECYCLE, &subject, &body);
        headers.insert(jetrun_core::task::SIGNATURE_HEADER, sig.as_str());
    }
    let ack = publisher
        .jetstream()
        .publish_with_headers(subject.clone(), headers, Bytes::from(body))
        .await
        .map_err(|e| perr(jetrun_nats::PublishErrorKind::Unavailable, e.to_string()))?;
    ack.await
        .map_err(|e| perr(jetrun_nats::PublishErrorKind::Unavailable, e.to_string()))?;
    Ok(())
}

/// Asks the agent of `node_id` for the logs of a job.
pub async fn request_logs(
    client: &async_nats::Client,
    names: &jetrun_core::Names,
    node_id: &str,
    req: &LogsRequest,
    timeout: Duration,
) -> Result<LogsReply, AgentError> {
    let body = serde_json::to_vec(req).map_err(|e| AgentError::new(AgentErrorKind::Nats, e))?;
    let subject = names.node_service(node_id, protocol::SERVICE_LOGS);
    let m = tokio::time::timeout(timeout, client.request(subject, Bytes::from(body)))
        .await
        .map_err(|_| {
            AgentError::new(
                AgentErrorKind::Nats,
                format!("node {node_id} did not answer in {timeout:?}"),
            )
        })?
        .map_err(|e| AgentError::new(AgentErrorKind::Nats, format!("node {node_id}: {e}")))?;
    serde_json::from_slice(&m.payload).map_err(|e| AgentError::new(AgentErrorKind::Nats, e))
}

/// Asks the agent of `node_id` whether it still runs `attempt` of a job. `None` if it
/// does not answer in `timeout` (it is presumed dead).
pub async fn request_describe(
    client: &async_nats::Client,
    names: &jetrun_core::Names,
    node_id: &str,
    job_id: &str,
    attempt: u32,
    timeout: Duration,
) -> Option<DescribeReply> {
    let body = serde_json::to_vec(&DescribeRequest {
        job_id: job_id.to_string(),
        attempt,
    })
    .ok()?;
    let subject = names.node_service(node_id, protocol::SERVICE_DESCRIBE);
    let m = tokio::time::timeout(timeout, client.request(subject, Bytes::from(body)))
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&m.payload).ok()
}

/// Reads the `nodes` bucket: the live fleet.
pub async fn nodes(
    js: &async_nats::jetstream::Context,
    names: &jetrun_core::Names,
) -> Result<Vec<NodeInfo>, AgentError> {
    let kv = js
        .get_key_value(names.bucket_nodes())
        .await
        .map_err(|e| AgentError::new(AgentErrorKind::Nats, e))?;
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(|e| AgentError::new(AgentErrorKind::Nats, e))?
        .filter_map(|k| async move { k.ok() })
        .collect()
        .await;
    let mut out = Vec::new();
    for k in keys {
        if let Ok(Some(v)) = kv.get(&k).await
            && let Ok(n) = serde_json::from_slice::<NodeInfo>(&v)
        {
            out.push(n);
        }
    }
    Ok(out)
}
