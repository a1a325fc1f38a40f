//! # jetrun-settle
//!
//! Settle brings every job to a terminal state, whatever fails. It is level-triggered:
//! it never assumes it saw every event.
//!
//! - **Task events** (durable consumer `settle` on the TASKS stream): `exited` →
//!   `succeeded`/`failed` with the exit code; `timed_out` → `timed_out`; `stopped` of a
//!   job whose cancel was asked → `cancelled`; `launch_failed`, `lost` (and a `stopped`
//!   nobody asked for) → retry. Events of another attempt, or of a terminal job, are
//!   stale and ignored. Only the attempt's own node can end it: an event needs the
//!   lifecycle `ce-type`, a subject matching its body, the record's node and a
//!   `Jetrun-Task-Signature` made with the attempt's key; anything else is dead-lettered
//!   as `forged_task_event` (`task_auth`).
//! - **Lease expiry** (a watch on the leases bucket): the job's node agent is asked to
//!   describe the task (it may still supervise it after a stall, and takes its lease
//!   back); if it does not answer, the TASKS stream is checked for a final event of that
//!   attempt; else the job is retried.
//! - **Retry**: the one lifecycle policy ([`jetrun_nats::lifecycle`], shared with
//!   dispatch): `Transition::Retry` with exponential backoff and full jitter in
//!   `not_before`, and the submission is re-published (dispatch holds it until
//!   `not_before`); once `max_attempts` are used a dead letter is stored and the job is
//!   `failed` (`attempts_exhausted`); its replay submits the same spec again as a new job.
//!   A dead letter that cannot be stored leaves the job as it was and its event for
//!   redelivery.
//! - **Sweep** (every `sweep_every`): a running job past its timeout by `timeout_grace`
//!   is `timed_out` (the backstop for vanished agents); a launching or running job with no
//!   lease for `lease_grace` is handled as a lease expiry.
//! - **Callbacks** (durable consumer `settle-callbacks` on `<p>.job.callback.>` in the job
//!   events stream, where the store publishes the terminal state change of a job with
//!   `spec.callback` and nothing else): the state-change event is
//!   published on the NATS subject (only under `callbacks.<tenant>.>`), or POSTed to the
//!   HTTP URL (signed; never to loopback, private or metadata addresses unless
//!   allow-listed). See the `callback` module. A change that does not decode is
//!   dead-lettered with the reason, never acknowledged unseen.
//!
//! Modules by concern: `task_events`, `lease` (expiry), `sweep`, `callbacks` (the
//! consumer glue around `callback`), `config`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use futures::StreamExt;
use jetrun_core::task::TaskPhase;
use jetrun_core::{JobError, JobRecord};
pub(crate) use jetrun_host::transient;
use jetrun_host::{ConsumerHost, Context, HostConfig};
use jetrun_nats::lifecycle::{AttemptOutcome, Lifecycle, LifecycleError};
use jetrun_nats::{EventPublisher, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod callback;
mod callbacks;
mod config;
mod lease;
mod sweep;
mod task_auth;
mod task_events;

pub use callback::{
    CALLBACK_CONSUMER, MAX_RESPONSE_BODY, REFUSED as CALLBACK_REFUSED, SIGNATURE_HEADER, sign,
};
pub use config::Config;

/// Kinds of settle failure (outside the handling of one event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettleErrorKind {
    /// A consumer could not be created or bound.
    Consumer,
    /// The job store failed.
    Store,
    /// A dead letter could not be stored (the job was left as it was).
    DeadLetter,
}

/// Settle failed; the cause is its [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[error("settle: {kind:?}")]
pub struct SettleError {
    /// What kind of failure.
    pub kind: SettleErrorKind,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SettleError {
    fn new(kind: SettleErrorKind, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            kind,
            source: e.into(),
        }
    }
}

impl From<StoreError> for SettleError {
    fn from(e: StoreError) -> Self {
        Self::new(SettleErrorKind::Store, e)
    }
}

impl From<LifecycleError> for SettleError {
    fn from(e: LifecycleError) -> Self {
        let kind = match &e {
            LifecycleError::DeadLetter { .. } => SettleErrorKind::DeadLetter,
            _ => SettleErrorKind::Store,
        };
        Self::new(kind, e)
    }
}

pub(crate) use jetrun_nats::lifecycle::error_chain as chain;

struct Inner {
    ctx: Context,
    config: Config,
    publisher: EventPublisher,
    lifecycle: Lifecycle,
    callbacks: callback::Delivery,
}

/// The settle function. Cheap to clone.
#[derive(Clone)]
pub struct Settle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settle")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Why a task event was not applied.
#[derive(Debug, thiserror::Error)]
enum TaskEventError {
    /// The store failed (transient or not).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Retrying or failing the attempt failed (the job was left as it was).
    #[error(transparent)]
    Lifecycle(LifecycleError),
    /// It is not the attempt's node's event.
    #[error("forged task event: {0}")]
    Forged(String),
}

/// What became of a job settle looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Changed (terminal, or queued for a retry).
    Settled,
    /// Nothing to do (stale, or someone else did it).
    Skipped,
}

/// What settle reads, as `jetrun init` declares it: the task events that end a task
/// (consumer `settle`) and the callback subject (consumer `settle-callbacks`).
pub fn subscriptions(n: &jetrun_core::Names) -> Vec<jetrun_host::Subscription> {
    let tasks = jetrun_host::Subscription {
        stream: n.stream_tasks(),
        consumer: consumer::pull::Config {
            durable_name: Some(n.consumer_settle()),
            description: Some("settle: task lifecycle events".into()),
            // Only the phases that end a task: dispatch records `running` itself.
            filter_subjects: TaskPhase::FINAL.iter().map(|p| n.task(p.as_str(), "*")).collect(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: jetrun_nats::topology::SETTLE_MAX_DELIVER,
            max_ack_pending: 10_000,
            ..Default::default()
        },
    };
    vec![tasks, callbacks::callbacks_subscription(n)]
}

impl Settle {
    /// A settle instance.
    pub fn new(ctx: Context, config: Config) -> Self {
        let publisher = ctx.publisher("settle");
        Self {
            inner: Arc::new(Inner {
                lifecycle: Lifecycle::new(
                    ctx.store.clone(),
                    publisher.clone(),
                    "settle",
                    config.retry_policy(),
                ),
                publisher,
                callbacks: callback::Delivery::new(&config),
                ctx,
                config,
            }),
        }
    }

    /// Creates (or upgrades) settle's two durable consumers.
    pub async fn ensure_consumers(&self) -> Result<(), SettleError> {
        let js = &self.inner.ctx.js;
        for sub in subscriptions(&self.inner.ctx.names) {
            jetrun_nats::topology::ensure_consumer(js, &sub.stream, sub.consumer)
                .await
                .map_err(|e| SettleError::new(SettleErrorKind::Consumer, e))?;
        }
        Ok(())
    }

    /// Runs every part of settle until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SettleError> {
        self.ensure_consumers().await?;
        let ctx = &self.inner.ctx;
        let host = |stream: String, consumer: String, origin: &str| {
            let origin = origin.to_string();
            let concurrency = self.inner.config.concurrency.max(1);
            async move {
                ConsumerHost::bind(
                    &ctx.js,
                    &ctx.names,
                    &stream,
                    &consumer,
                    HostConfig {
                        origin,
                        concurrency,
                        ..HostConfig::default()
                    },
                )
                .await
                .map_err(|e| SettleError::new(SettleErrorKind::Consumer, e))
            }
        };
        let tasks_host = host(ctx.names.stream_tasks(), ctx.names.consumer_settle(), "settle").await?;
        let cb_host = match self.inner.config.callbacks {
            true => Some(
                host(
                    ctx.names.stream_job_events(),
                    CALLBACK_CONSUMER.to_string(),
                    "callback",
                )
                .await?,
            ),
            false => None,
        };
        let expiries = ctx
            .store
            .lease_expiries()
            .await
            .map_err(|e| SettleError::new(SettleErrorKind::Store, e))?;

        let this = self.clone();
        let t1 = tokio::spawn(tasks_host.run(
            jetrun_host::typed(task_events::TASK_EVENT, move |ev| {
                let this = this.clone();
                async move { this.on_task_message(ev).await }
            }),
            shutdown.clone(),
        ));
        let this = self.clone();
        let sd = shutdown.clone();
        let t2 = tokio::spawn(async move {
            match cb_host {
                Some(h) => {
                    h.run(
                        // A state change that does not decode is dead-lettered as
                        // `schema` with the reason by the host.
                        jetrun_host::typed(jetrun_host::Decode::body(), move |ev| {
                            let this = this.clone();
                            async move { this.on_job_event(ev).await }
                        }),
                        sd,
                    )
                    .await
                }
                None => Ok(()),
            }
        });
        let this = self.clone();
        let sd = shutdown.clone();
        let expiry_slots = Arc::new(tokio::sync::Semaphore::new(self.inner.config.concurrency.max(1)));
        let t3 = tokio::spawn(async move {
            futures::pin_mut!(expiries);
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    next = expiries.next() => match next {
                        Some(job_id) => {
                            let this = this.clone();
                            // Bounded: a node dying with many tasks expires many leases at once.
                            let Ok(permit) = expiry_slots.clone().acquire_owned().await else { break };
                            tokio::spawn(async move {
                                if let Err(e) = this.on_lease_expired(&job_id).await {
                                    warn!(job_id = %job_id, error = %chain(&e), "lease expiry not handled; the sweep will retry");
                                }
                                drop(permit);
                            });
                        }
                        None => {
                            warn!("lease expiry watch ended; relying on the sweep");
                            sd.cancelled().await;
                            break;
                        }
                    },
                }
            }
        });
        let this = self.clone();
        let sd = shutdown.clone();
        let t4 = tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(this.inner.config.sweep_every.max(Duration::from_millis(100)));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tick.tick() => match this.sweep().await {
                        Ok(0) => {}
                        Ok(n) => info!(settled = n, "sweep settled jobs"),
                        Err(e) => warn!(error = %chain(&e), "sweep failed"),
                    },
                }
            }
        });
        info!("settle started");
        let (a, b, _, _) = tokio::join!(t1, t2, t3, t4);
        for r in [a, b] {
            match r {
                Ok(Err(e)) => return Err(SettleError::new(SettleErrorKind::Consumer, e)),
                Err(e) => return Err(SettleError::new(SettleErrorKind::Consumer, e)),
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    }

    /// Ends a failed attempt through the lifecycle policy; a retry's lease is released
    /// and its submission re-published, a failed job's lease released.
    async fn retry_or_fail(
        &self,
        rec: &JobRecord,
        rev: u64,
        error: JobError,
    ) -> Result<Outcome, LifecycleError> {
        let ctx = &self.inner.ctx;
        let reason = error.kind.clone();
        match self.inner.lifecycle.retry_or_fail(rec, rev, error).await? {
            AttemptOutcome::Retried { record, delay, .. } => {
                info!(job_id = %record.id, attempt = record.attempt, delay = ?delay, reason = %reason, "retrying job");
                let _ = ctx.store.release_lease(&record.id).await;
                let msg_id = format!("{}.{}.retry", record.id, record.attempt);
                if let Err(e) =
                    jetrun_nats::submit::resubmit(&self.inner.publisher, &ctx.names, &record, &msg_id).await
                {
                    // The job is queued in the store: dispatch's reconcile re-publishes it.
                    warn!(job_id = %record.id, error = %e, "retry not re-published; reconcile will");
                }
                Ok(Outcome::Settled)
            }
            AttemptOutcome::Failed { record, .. } => {
                let _ = ctx.store.release_lease(&record.id).await;
                Ok(Outcome::Settled)
            }
            _ => Ok(Outcome::Skipped),
        }
    }
}
