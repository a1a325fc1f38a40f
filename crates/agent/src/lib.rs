//! # jetrun-agent
//!
//! The node agent: one per worker process, it supervises the tasks this node launched.
//!
//! - **Supervision** ([`supervise`]): dispatch launches through [`Agent::launch`] and
//!   hands every launched task over with [`Agent::supervise`]; the agent waits for it
//!   through the [`Runner`], enforces the job timeout (`runner.stop`: SIGTERM,
//!   `stop_grace`, SIGKILL) and stops it when the job is cancelled.
//! - **Lease and heartbeat** ([`heartbeat`]): it renews the job's lease every
//!   `renew_every` (TTL `lease_ttl`) and re-reads the record then, so a missed cancel
//!   message only delays the stop; and it keeps this node's entry in the `nodes` bucket
//!   (per-key TTL), so the fleet is discoverable.
//! - **Events** ([`events`]): it publishes `dev.jetrun.task.lifecycle.v1` on
//!   `<prefix>.task.<phase>.<job_id>` (`exited` with the exit code and the
//!   job's result, `timed_out`, `stopped`, `lost`), each signed with the attempt's key
//!   ([`signing`]: `Jetrun-Task-Signature`, over the whole body), so settle accepts only
//!   the events of the node that runs the attempt. A final event is published before the
//!   lease is released, so a crash in between shows up as a lease expiry, never as a
//!   silently forgotten task.
//! - **Cancel**: it listens on `<prefix>.job.cancel.*` (core NATS).
//! - **Crash recovery** ([`adopt`]): at start it asks the runner for the tasks it knows
//!   (including ones from a previous process with the same data directory): a task of a
//!   job still assigned to this node is supervised again (or, if it ended meanwhile, its
//!   final event is published); anything else is stopped and removed (reaped).
//! - **Services** ([`services`]): `logs` (through [`Runner::log_tail`], so ECS tasks'
//!   CloudWatch logs too; followed by offset where the runner keeps log files) and
//!   `describe` over NATS request/reply on `<prefix>.node.<node_id>.<service>`.
//!
//! The wire side of all this (request and reply bodies, signatures, publishing a task
//! event, asking a node) is the `jetrun-node` crate, re-exported here as [`protocol`]
//! and [`signing`]; settle and the CLI use that crate and never depend on the agent or a
//! runner.

pub mod adopt;
pub mod config;
pub mod events;
pub mod heartbeat;
pub mod services;
pub mod supervise;
pub mod tail;

pub use config::Config;
pub use jetrun_node::{nodes, protocol, publish_task_event, request_describe, request_logs, signing};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jetrun_core::Timestamp;
use jetrun_core::task::AttemptKey;
use jetrun_host::Context;
use jetrun_nats::EventPublisher;
use jetrun_nats::lifecycle::lock;
use jetrun_runner::Runner;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::supervise::{StopReason, Supervised};

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
#[error("node agent: {what}: {kind:?}")]
pub struct AgentError {
    /// What kind of failure.
    pub kind: AgentErrorKind,
    /// What was being done.
    pub what: String,
    /// The underlying error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl AgentError {
    fn new(
        kind: AgentErrorKind,
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            what: what.into(),
            source: Box::new(source),
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

pub(crate) struct Inner {
    pub(crate) ctx: Context,
    pub(crate) runner: Arc<dyn Runner>,
    pub(crate) config: Config,
    pub(crate) publisher: EventPublisher,
    /// The supervised tasks, by job id.
    pub(crate) tasks: Mutex<HashMap<String, Supervised>>,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

pub use adopt::Adoption;

/// A handle on the running node agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node_id", &self.inner.ctx.node_id)
            .finish_non_exhaustive()
    }
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
        let subscribe = |subject: String| {
            let client = ctx.client.clone();
            async move {
                client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| AgentError::new(AgentErrorKind::Nats, format!("subscribe {subject}"), e))
            }
        };
        let cancels = subscribe(names.job_cancel("*")).await?;
        let services = services::Subscriptions {
            logs: subscribe(names.node_service(&node, protocol::SERVICE_LOGS)).await?,
            describe: subscribe(names.node_service(&node, protocol::SERVICE_DESCRIBE)).await?,
        };
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
        let handle = tokio::spawn(async move { a.run(cancels, services).await });
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

    /// The main loop: heartbeats, cancels and service requests until shutdown; then
    /// every task is stopped (reported `lost`) and the node entry removed.
    async fn run(
        self,
        mut cancels: async_nats::Subscriber,
        mut svc: services::Subscriptions,
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
                Some(m) = svc.logs.next() => {
                    let a = self.clone();
                    tokio::spawn(async move { a.serve_logs(m).await });
                }
                Some(m) = svc.describe.next() => {
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
        self.deregister().await;
        Ok(())
    }
}
