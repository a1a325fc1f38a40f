//! # jetrun-ecs-bridge
//!
//! Turns ECS task state changes into jetrun task events (`<prefix>.task.<phase>.<job_id>`,
//! `dev.jetrun.task.lifecycle.v1`), so settle ends jobs that run as ECS tasks without
//! polling:
//!
//! - [`event`]: the pure mapping from an EventBridge "ECS Task State Change" event (or a
//!   `DescribeTasks` task) to a [`event::Report`]: `RUNNING` → `started`; `STOPPED` with
//!   the job container's exit code → `exited`; `SpotInterruption`, `TaskFailedToStart`,
//!   ... → `lost` (retried, not failed); a `StopTask` by someone else → `stopped`; a stop
//!   by jetrun is left to its stopper. Tasks not started by this deployment are ignored.
//! - [`Bridge::handle`]: reads the job record and publishes only for the record's current,
//!   non-terminal attempt (an event for an old attempt never changes a newer one), as from
//!   the record's node and signed with the attempt's key through the [`Publish`] step
//!   (the same id, signature and dedupe as the node agent's own events).
//! - [`reconcile`]: a periodic `DescribeTasks` pass that reports stopped tasks whose
//!   events were lost and stops tasks of attempts that moved on.
//!
//! Hosts: in-process ([`Bridge::handle`] on a `serde_json::Value`) and, with the `lambda`
//! feature, the `jetrun-ecs-bridge` binary for AWS Lambda (an EventBridge rule's target).

pub mod event;
pub mod reconcile;

use std::sync::Arc;

use jetrun_core::task::TaskEvent;
use jetrun_core::{JobRecord, JobStatus};
use serde::{Deserialize, Serialize};
use tracing::{Instrument, debug, info};

pub use event::{Mapping, Report, map_event, map_view};
pub use reconcile::{ReconcileReport, reconcile};

/// Bridge configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The deployment whose tasks are reported: the ECS runner's `deployment` (default
    /// `jetrun`).
    pub deployment: String,
    /// The job's container: the ECS runner's `container` (default `job`).
    pub container: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            deployment: "jetrun".into(),
            container: "job".into(),
        }
    }
}

/// Kinds of bridge failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BridgeErrorKind {
    /// The input is not an event we can read (not retried: it never will be).
    Parse,
    /// The job store could not be read (retry).
    Store,
    /// The task event could not be published (retry).
    Publish,
    /// ECS could not be asked (reconcile; retry).
    Ecs,
}

/// The bridge could not handle an event.
#[derive(Debug, thiserror::Error)]
#[error("ecs-bridge: {kind:?}: {message}")]
pub struct BridgeError {
    /// What kind of failure.
    pub kind: BridgeErrorKind,
    /// Details.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BridgeError {
    /// A new error with a source.
    pub fn with_source(
        kind: BridgeErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether handling the same event again may succeed (Lambda then retries it, and
    /// sends it to the dead-letter queue when its retries are used).
    pub fn is_transient(&self) -> bool {
        !matches!(self.kind, BridgeErrorKind::Parse)
    }
}

/// Where job records come from.
#[async_trait::async_trait]
pub trait Records: Send + Sync {
    /// The job's record, if it exists.
    async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, BridgeError>;
}

#[async_trait::async_trait]
impl Records for jetrun_nats::JobStore {
    async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, BridgeError> {
        jetrun_nats::JobStore::get(self, job_id)
            .await
            .map(|r| r.map(|(rec, _)| rec))
            .map_err(|e| BridgeError::with_source(BridgeErrorKind::Store, format!("job {job_id}"), e))
    }
}

/// The publish step: signs and publishes a task event for the record's attempt.
#[async_trait::async_trait]
pub trait Publish: Send + Sync {
    /// Publishes `ev` (already `node_id`-ed from `rec`), signed for `rec`'s attempt.
    async fn publish(&self, ev: &TaskEvent, rec: &JobRecord) -> Result<(), BridgeError>;
}

/// Publishes on NATS exactly as the node agent does (`jetrun_node::publish_task_event`):
/// `Jetrun-Task-Signature` with the attempt's key from the record, the keyed `ce-id`, the
/// job's trace. The agent and the bridge reporting the same end thus publish one message
/// (JetStream drops the second as a duplicate).
#[derive(Debug, Clone)]
pub struct NatsPublisher {
    publisher: jetrun_nats::EventPublisher,
    names: jetrun_core::Names,
}

impl NatsPublisher {
    /// A publisher with `source` as the events' `ce-source`.
    pub fn new(js: async_nats::jetstream::Context, names: jetrun_core::Names, source: &str) -> Self {
        Self {
            publisher: jetrun_nats::EventPublisher::new(js, source),
            names,
        }
    }
}

#[async_trait::async_trait]
impl Publish for NatsPublisher {
    async fn publish(&self, ev: &TaskEvent, rec: &JobRecord) -> Result<(), BridgeError> {
        jetrun_node::publish_task_event(
            &self.publisher,
            &self.names,
            ev,
            rec.traceparent.as_deref(),
            rec.attempt_key.as_ref(),
        )
        .await
        .map_err(|e| BridgeError::with_source(BridgeErrorKind::Publish, format!("job {}", ev.job_id), e))
    }
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Handled {
    /// Nothing to do, and why.
    Ignored(String),
    /// Published.
    Published(TaskEvent),
}

/// The bridge: mapping, the record check and publishing.
#[derive(Clone)]
pub struct Bridge {
    cfg: Config,
    records: Arc<dyn Records>,
    publish: Arc<dyn Publish>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// A bridge over `records`, publishing through `publish`.
    pub fn new(cfg: Config, records: Arc<dyn Records>, publish: Arc<dyn Publish>) -> Self {
        Self {
            cfg,
            records,
            publish,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Handles one EventBridge event.
    pub async fn handle(&self, event: &serde_json::Value) -> Result<Handled, BridgeError> {
        let m = map_event(event, &self.cfg.deployment, &self.cfg.container)
            .map_err(|e| BridgeError::with_source(BridgeErrorKind::Parse, "event", e))?;
        self.apply(m).await
    }

    /// Publishes a mapped state if the record's current attempt is the task's.
    pub async fn apply(&self, m: Mapping) -> Result<Handled, BridgeError> {
        let r = match m {
            Mapping::Ignore(why) => {
                debug!(reason = %why, "ECS event ignored");
                return Ok(Handled::Ignored(why));
            }
            Mapping::Report(r) => r,
        };
        let ignore = |why: String| {
            debug!(job_id = %r.job_id, attempt = r.attempt, reason = %why, "ECS event ignored");
            Ok(Handled::Ignored(why))
        };
        let Some(rec) = self.records.get(&r.job_id).await? else {
            return ignore(format!("no job {}", r.job_id));
        };
        if rec.attempt != r.attempt {
            return ignore(format!(
                "task of attempt {} but job {} is at attempt {}",
                r.attempt, r.job_id, rec.attempt
            ));
        }
        if !matches!(rec.status, JobStatus::Launching | JobStatus::Running) {
            return ignore(format!("job {} is {}", r.job_id, rec.status.as_str()));
        }
        let Some(node) = rec.node_id.as_deref() else {
            return ignore(format!(
                "job {} has no node for attempt {}",
                r.job_id, rec.attempt
            ));
        };
        let ev = r.task_event(node);
        // The report is part of the job's trace (the record's context, which the task
        // itself received as TRACEPARENT), not of the invocation's: a Lambda invocation
        // or the reconcile pass serves any job.
        let span = tracing::info_span!(
            "ecs task state",
            otel.name = %format!("report ecs task {}", ev.phase.as_str()),
            jetrun.job_id = %ev.job_id,
            jetrun.attempt = i64::from(ev.attempt),
            jetrun.queue = %rec.queue,
            aws.ecs.task.arn = %ev.task_ref,
        );
        jetrun_telemetry::link_remote(&span, rec.traceparent.as_deref(), None);
        async {
            self.publish.publish(&ev, &rec).await?;
            info!(job_id = %ev.job_id, attempt = ev.attempt, phase = ev.phase.as_str(), exit_code = ?ev.exit_code, task_arn = %ev.task_ref, "ECS task state reported");
            Ok(Handled::Published(ev))
        }
        .instrument(span)
        .await
    }
}
