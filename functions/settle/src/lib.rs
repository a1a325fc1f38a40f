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
//! - **Retry**: `Transition::Retry` with exponential backoff and jitter in `not_before`,
//!   and the submission is re-published (dispatch holds it until `not_before`); once
//!   `max_attempts` are used the job is `failed` (`attempts_exhausted`) and a dead letter
//!   is stored, whose replay submits the same spec again as a new job.
//! - **Sweep** (every `sweep_every`): a running job past its timeout by `timeout_grace`
//!   is `timed_out` (the backstop for vanished agents); a launching or running job with no
//!   lease for `lease_grace` is handled as a lease expiry.
//! - **Callbacks** (durable consumer `settle-callbacks` on `<p>.job.callback.>` in the job
//!   events stream, where the store publishes the terminal state change of a job with
//!   `spec.callback` and nothing else): the state-change event is
//!   published on the NATS subject (only under `callbacks.<tenant>.>`), or POSTed to the
//!   HTTP URL (signed; never to loopback, private or metadata addresses unless
//!   allow-listed). See the `callback` module.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use futures::StreamExt;
use jetrun_core::dlq::DeadLetter;
use jetrun_core::job::{Transition, TransitionErrorKind};
use jetrun_core::schema::{self, types};
use jetrun_core::task::{TaskEvent, TaskPhase};
use jetrun_core::{JobError, JobRecord, JobStatus};
use jetrun_host::{ConsumerHost, Context, HandlerError, HostConfig, Incoming};
use jetrun_nats::{EventPublisher, StoreError, StoreErrorKind};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod task_auth;

mod callback;
pub use callback::{
    CALLBACK_CONSUMER, MAX_RESPONSE_BODY, REFUSED as CALLBACK_REFUSED, SIGNATURE_HEADER, sign,
};

/// Settle configuration.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Base of the retry backoff (default 2 s): attempt n waits a random time in
    /// `[base/2, min(cap, base·2^(n-1))]`.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Cap of the retry backoff (default 5 min).
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// How often the sweep runs (default 5 s).
    #[serde(with = "humantime_serde")]
    pub sweep_every: Duration,
    /// A launching or running job without a lease for this long is lost (default 30 s).
    #[serde(with = "humantime_serde")]
    pub lease_grace: Duration,
    /// A running job past its timeout by this much is timed out by settle itself
    /// (default 60 s; the agent normally does it at the timeout).
    #[serde(with = "humantime_serde")]
    pub timeout_grace: Duration,
    /// How long a node agent has to answer a describe request (default 1 s).
    #[serde(with = "humantime_serde")]
    pub describe_timeout: Duration,
    /// Secret keying HTTP callback signatures (default none: HTTP callbacks refused).
    /// Never logged.
    pub callback_secret: Option<String>,
    /// Timeout of one HTTP callback (default 10 s).
    #[serde(with = "humantime_serde")]
    pub callback_timeout: Duration,
    /// Deliveries of a callback before it is dead-lettered (default 8).
    pub callback_max_deliveries: u64,
    /// Root of NATS callback subjects: a job may only ask for
    /// `<root>.<tenant>.<token>...` (default `callbacks`).
    pub callback_subject_root: String,
    /// Host names (exact) and address ranges (CIDR such as `10.1.0.0/16`, or a bare
    /// address) that HTTP callbacks may reach although they are loopback, private,
    /// link-local or otherwise refused by default (default none).
    pub callback_allow_hosts: Vec<String>,
    /// Events handled at once (default 64).
    pub concurrency: usize,
    /// Whether this instance delivers completion callbacks (default true). Turn it off
    /// to deliver them from another settle instance only.
    pub callbacks: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .field("sweep_every", &self.sweep_every)
            .field("lease_grace", &self.lease_grace)
            .field("timeout_grace", &self.timeout_grace)
            .field(
                "callback_secret",
                &self.callback_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("callback_subject_root", &self.callback_subject_root)
            .field("callback_allow_hosts", &self.callback_allow_hosts)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(300),
            sweep_every: Duration::from_secs(5),
            lease_grace: Duration::from_secs(30),
            timeout_grace: Duration::from_secs(60),
            describe_timeout: Duration::from_secs(1),
            callback_secret: None,
            callback_timeout: Duration::from_secs(10),
            callback_max_deliveries: 8,
            callback_subject_root: jetrun_core::callback::DEFAULT_SUBJECT_ROOT.into(),
            callback_allow_hosts: Vec::new(),
            concurrency: 64,
            callbacks: true,
        }
    }
}

/// Kinds of settle failure (outside the handling of one event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettleErrorKind {
    /// A consumer could not be created or bound.
    Consumer,
    /// The job store failed.
    Store,
}

/// Settle failed.
#[derive(Debug, thiserror::Error)]
#[error("settle: {kind:?}: {message}")]
pub struct SettleError {
    /// What kind of failure.
    pub kind: SettleErrorKind,
    /// Details.
    pub message: String,
}

impl SettleError {
    fn new(kind: SettleErrorKind, e: impl std::fmt::Display) -> Self {
        Self {
            kind,
            message: e.to_string(),
        }
    }
}

struct Inner {
    ctx: Context,
    config: Config,
    publisher: EventPublisher,
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

fn transient(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::retry(e.to_string(), Duration::from_secs(1))
}

/// At most this many messages of one task subject are read looking for the attempt's
/// real final event (one per attempt normally; forged ones are dead-lettered but stay in
/// the stream).
const FINAL_EVENT_SCAN: usize = 256;

/// Why a task event was not applied.
#[derive(Debug, thiserror::Error)]
enum TaskEventError {
    /// The store failed (transient or not).
    #[error(transparent)]
    Store(#[from] StoreError),
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

impl Settle {
    /// A settle instance.
    pub fn new(ctx: Context, config: Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                publisher: ctx.publisher("settle"),
                callbacks: callback::Delivery::new(&config),
                ctx,
                config,
            }),
        }
    }

    /// Creates (or upgrades) settle's two durable consumers.
    pub async fn ensure_consumers(&self) -> Result<(), SettleError> {
        let n = &self.inner.ctx.names;
        let js = &self.inner.ctx.js;
        let tasks = consumer::pull::Config {
            durable_name: Some(n.consumer_settle()),
            description: Some("settle: task lifecycle events".into()),
            // Only the phases that end a task: dispatch records `running` itself, so
            // `started` events (one per job) are stored for observers but never
            // delivered to settle.
            filter_subjects: TaskPhase::FINAL.iter().map(|p| n.task(p.as_str(), "*")).collect(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: jetrun_nats::topology::SETTLE_MAX_DELIVER,
            max_ack_pending: 10_000,
            ..Default::default()
        };
        jetrun_nats::topology::ensure_consumer(js, &n.stream_tasks(), tasks)
            .await
            .map_err(|e| SettleError::new(SettleErrorKind::Consumer, e))?;
        let callbacks = consumer::pull::Config {
            durable_name: Some(CALLBACK_CONSUMER.into()),
            description: Some("settle: completion callbacks".into()),
            // Only terminal changes of jobs that asked for a callback are published here,
            // so jobs without one cost this consumer nothing.
            filter_subject: n.job_callback_all(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_deliver: (self.inner.config.callback_max_deliveries as i64)
                .max(1)
                .saturating_add(8),
            max_ack_pending: 10_000,
            // Only changes from the moment settle first runs: no callbacks for history.
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        };
        jetrun_nats::topology::ensure_consumer(js, &n.stream_job_events(), callbacks)
            .await
            .map_err(|e| SettleError::new(SettleErrorKind::Consumer, e))?;
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
            move |m: Incoming| {
                let this = this.clone();
                async move { this.on_task_message(m).await }
            },
            shutdown.clone(),
        ));
        let this = self.clone();
        let sd = shutdown.clone();
        let t2 = tokio::spawn(async move {
            match cb_host {
                Some(h) => {
                    h.run(
                        move |m: Incoming| {
                            let this = this.clone();
                            async move { this.on_job_event(m).await }
                        },
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
                                    warn!(job_id = %job_id, error = %e, "lease expiry not handled; the sweep will retry");
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
                        Err(e) => warn!(error = %e, "sweep failed"),
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

    /// Handles one task lifecycle message. Only events of the attempt's own node are
    /// applied (see [`task_auth`]); a refused one is dead-lettered as `forged_task_event`.
    pub async fn on_task_message(&self, msg: Incoming) -> Result<(), HandlerError> {
        let forged = |reason: String| {
            warn!(subject = %msg.subject, reason = %reason, "refusing a task event");
            HandlerError::permanent(task_auth::FORGED, reason)
        };
        let proof = task_auth::Proof {
            ce_type: msg.envelope.as_ref().ok().map(|e| e.ty.as_str()),
            subject: &msg.subject,
            signature: task_auth::signature_of(msg.message.headers.as_ref()),
            body: &msg.payload,
        };
        if proof.ce_type != Some(types::TASK_LIFECYCLE) {
            // Before the schema: a foreign event is refused as such, whatever its body.
            let reason = match &msg.envelope {
                Err(e) => format!("no valid CloudEvent headers: {e}"),
                Ok(env) => format!("ce-type {:?} is not {}", env.ty, types::TASK_LIFECYCLE),
            };
            return Err(forged(reason));
        }
        let value = schema::validate(types::TASK_LIFECYCLE, &msg.payload)
            .map_err(|e| HandlerError::permanent("schema", e.to_string()))?;
        let ev: TaskEvent =
            serde_json::from_value(value).map_err(|e| HandlerError::permanent("schema", e.to_string()))?;
        task_auth::check_message(&self.inner.ctx.names, &proof, &ev).map_err(forged)?;
        match self.on_task_event(&ev, Some(&proof)).await {
            Ok(_) => Ok(()),
            Err(TaskEventError::Forged(reason)) => Err(forged(reason)),
            Err(TaskEventError::Store(e)) => Err(match e.kind {
                StoreErrorKind::InvalidKey | StoreErrorKind::Corrupt => {
                    HandlerError::permanent("invalid_event", e.to_string())
                }
                _ => transient(e),
            }),
        }
    }

    /// Applies a task event to its job (retrying lost compare-and-set races). `proof`:
    /// what the message came with, checked against the record; `None` only for an event
    /// the caller has already checked ([`Settle::final_event`]).
    async fn on_task_event(
        &self,
        ev: &TaskEvent,
        proof: Option<&task_auth::Proof<'_>>,
    ) -> Result<Outcome, TaskEventError> {
        let store = &self.inner.ctx.store;
        if ev.phase == TaskPhase::Started {
            // Not delivered by settle's consumer (its filter leaves `started` out); a
            // consumer made by an older version may still deliver some: dispatch
            // records `running` itself, so there is nothing to read or write.
            return Ok(Outcome::Skipped);
        }
        for _ in 0..16 {
            let Some((rec, rev)) = store.get(&ev.job_id).await? else {
                return Ok(Outcome::Skipped);
            };
            if rec.status.is_terminal() || rec.status == JobStatus::Queued || rec.attempt != ev.attempt {
                debug!(job_id = %ev.job_id, phase = ev.phase.as_str(), "stale task event");
                return Ok(Outcome::Skipped);
            }
            if let Some(p) = proof {
                task_auth::check_attempt(&rec, p, ev).map_err(TaskEventError::Forged)?;
            }
            let res = match ev.phase {
                TaskPhase::Started => return Ok(Outcome::Skipped),
                TaskPhase::Exited => {
                    let code = ev.exit_code.unwrap_or(-1);
                    self.terminal(
                        rec,
                        rev,
                        Transition::Exited { exit_code: code },
                        Some(&ev.task_ref),
                        false,
                    )
                    .await
                }
                TaskPhase::TimedOut => self.terminal(rec, rev, Transition::TimedOut, None, false).await,
                TaskPhase::Stopped if rec.cancel_requested => {
                    let t = Transition::Cancel {
                        reason: "cancelled by user".into(),
                    };
                    self.terminal(rec, rev, t, None, false).await
                }
                _ => {
                    let what = format!(
                        "task {} on node {}: {}",
                        ev.phase.as_str(),
                        ev.node_id,
                        ev.message.clone().unwrap_or_default()
                    );
                    self.retry_or_fail(rec, rev, JobError::new(ev.phase.as_str(), what))
                        .await
                }
            };
            match res {
                Err(e) if e.kind == StoreErrorKind::Conflict => continue,
                other => return Ok(other?),
            }
        }
        Err(TaskEventError::Store(StoreError::from(
            jetrun_core::TransitionError {
                kind: TransitionErrorKind::Illegal,
                job_id: ev.job_id.clone(),
                from: JobStatus::Running,
                to: JobStatus::Running,
            },
        )))
    }

    /// A terminal transition (recording `running` first if the task's start was never
    /// recorded), then the lease is released if `release` (an agent that reported the
    /// end has released it already).
    async fn terminal(
        &self,
        rec: JobRecord,
        rev: u64,
        t: Transition,
        task_ref: Option<&str>,
        release: bool,
    ) -> Result<Outcome, StoreError> {
        let store = &self.inner.ctx.store;
        let (rec, rev) = match (rec.status, task_ref) {
            (JobStatus::Launching, Some(tr)) => {
                store
                    .transition_at(
                        &rec,
                        rev,
                        &Transition::Started {
                            task_ref: tr.to_string(),
                        },
                    )
                    .await?
            }
            _ => (rec, rev),
        };
        match store.transition_at(&rec, rev, &t).await {
            Ok((next, _)) => {
                debug!(job_id = %next.id, status = %next.status, exit_code = ?next.exit_code, attempt = next.attempt, "job settled");
                if release {
                    let _ = store.release_lease(&next.id).await;
                }
                Ok(Outcome::Settled)
            }
            Err(e) if matches!(e.kind, StoreErrorKind::Transition(_)) => Ok(Outcome::Skipped),
            Err(e) => Err(e),
        }
    }

    /// Back to `queued` with backoff and a re-published submission, or `failed` with a
    /// dead letter once the attempts are used.
    async fn retry_or_fail(&self, rec: JobRecord, rev: u64, error: JobError) -> Result<Outcome, StoreError> {
        let c = &self.inner.config;
        let ctx = &self.inner.ctx;
        let delay = jetrun_core::job::backoff(rec.attempt, c.backoff_base, c.backoff_cap);
        let not_before = jetrun_core::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        let retry = Transition::Retry {
            error: error.clone(),
            not_before,
        };
        match ctx.store.transition_at(&rec, rev, &retry).await {
            Ok((next, _)) => {
                info!(job_id = %next.id, attempt = next.attempt, delay = ?delay, reason = %error.kind, "retrying job");
                let _ = ctx.store.release_lease(&next.id).await;
                let msg_id = format!("{}.{}.retry", next.id, next.attempt);
                if let Err(e) =
                    jetrun_nats::submit::resubmit(&self.inner.publisher, &ctx.names, &next, &msg_id).await
                {
                    // The job is queued in the store: dispatch's reconcile re-publishes it.
                    warn!(job_id = %next.id, error = %e, "retry not re-published; reconcile will");
                }
                Ok(Outcome::Settled)
            }
            Err(e) if e.kind == StoreErrorKind::Transition(TransitionErrorKind::AttemptsExhausted) => {
                let reason = format!(
                    "{} attempts used; last error: {}: {}",
                    rec.max_attempts, error.kind, error.message
                );
                let fail = Transition::Fail {
                    error: JobError::new("attempts_exhausted", reason.clone()),
                };
                let (failed, _) = match ctx.store.transition_at(&rec, rev, &fail).await {
                    Ok(x) => x,
                    Err(e) if matches!(e.kind, StoreErrorKind::Transition(_)) => return Ok(Outcome::Skipped),
                    Err(e) => return Err(e),
                };
                warn!(job_id = %failed.id, reason = %reason, "job failed for good; dead-lettering it");
                let _ = ctx.store.release_lease(&failed.id).await;
                self.dead_letter(&failed, &reason).await;
                Ok(Outcome::Settled)
            }
            Err(e) if matches!(e.kind, StoreErrorKind::Transition(_)) => Ok(Outcome::Skipped),
            Err(e) => Err(e),
        }
    }

    /// Stores a dead letter for a job that used its attempts. Its replay submits the same
    /// spec as a new job (a fresh `ce-id`).
    async fn dead_letter(&self, rec: &JobRecord, reason: &str) {
        let ctx = &self.inner.ctx;
        let env = self
            .inner
            .publisher
            .envelope(types::JOB_SUBMITTED)
            .with_trace(rec.traceparent.clone(), None);
        let Ok(body) = serde_json::to_vec(&rec.spec) else {
            return;
        };
        let entry = DeadLetter {
            origin: "settle".into(),
            reason_kind: "attempts_exhausted".into(),
            reason: reason.to_string(),
            subject: ctx.names.job_submit(&rec.queue),
            stream: None,
            stream_seq: None,
            deliveries: u64::from(rec.attempt),
            headers: env.to_headers().into_iter().collect(),
            payload_base64: DeadLetter::encode_payload(&body),
            payload_truncated: false,
            payload_bytes: None,
            job_id: Some(rec.id.clone()),
            failed_at: jetrun_core::now(),
        };
        let mut delay = Duration::from_millis(200);
        for _ in 0..10 {
            match jetrun_nats::dlq::publish(&self.inner.publisher, &ctx.names, &entry).await {
                Ok(_) => return,
                Err(e) => {
                    warn!(job_id = %rec.id, error = %e, "dead letter not stored; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// A lease ran out: the worker may be dead. Returns whether the job was changed.
    pub async fn on_lease_expired(&self, job_id: &str) -> Result<bool, StoreError> {
        self.lease_lost(job_id, true).await
    }

    /// `fresh_guard`: ignore a record changed within the last second — an expiry event
    /// that arrives late may belong to the previous attempt while the next one is being
    /// claimed and has not taken its lease yet (the sweep catches genuine cases later).
    async fn lease_lost(&self, job_id: &str, fresh_guard: bool) -> Result<bool, StoreError> {
        let ctx = &self.inner.ctx;
        for _ in 0..8 {
            let Some((rec, rev)) = ctx.store.get(job_id).await? else {
                return Ok(false);
            };
            if !matches!(rec.status, JobStatus::Launching | JobStatus::Running) {
                return Ok(false);
            }
            if fresh_guard && rec.updated_at + chrono::Duration::seconds(1) > jetrun_core::now() {
                return Ok(false);
            }
            if ctx.store.lease(job_id).await?.is_some() {
                return Ok(false);
            }
            if let Some(node) = &rec.node_id {
                let d = jetrun_agent::request_describe(
                    &ctx.client,
                    &ctx.names,
                    node,
                    job_id,
                    rec.attempt,
                    self.inner.config.describe_timeout,
                )
                .await;
                if d.is_some_and(|d| d.supervised) {
                    debug!(job_id, node = %node, "lease expired but the agent still supervises the task");
                    return Ok(false);
                }
            }
            // The agent may have reported the end before dying: that event decides.
            if let Some(ev) = self.final_event(&rec).await {
                match self.on_task_event(&ev, None).await {
                    Ok(o) => return Ok(o == Outcome::Settled),
                    Err(TaskEventError::Store(e)) => return Err(e),
                    // Not produced without a proof; treated as no event.
                    Err(TaskEventError::Forged(_)) => {}
                }
            }
            let err = JobError::new(
                "lease_expired",
                format!(
                    "the lease of attempt {} expired (worker {})",
                    rec.attempt,
                    rec.worker_id.clone().unwrap_or_default()
                ),
            );
            match self.retry_or_fail(rec, rev, err).await {
                Err(e) if e.kind == StoreErrorKind::Conflict => continue,
                Err(e) => return Err(e),
                Ok(o) => return Ok(o == Outcome::Settled),
            }
        }
        Ok(false)
    }

    /// The final task event of the job's current attempt, if the TASKS stream has one
    /// that its node signed (a forged one there was dead-lettered and is not believed).
    async fn final_event(&self, rec: &JobRecord) -> Option<TaskEvent> {
        let ctx = &self.inner.ctx;
        let stream = ctx.js.get_stream(ctx.names.stream_tasks()).await.ok()?;
        for phase in [
            TaskPhase::Exited,
            TaskPhase::TimedOut,
            TaskPhase::Stopped,
            TaskPhase::Lost,
            TaskPhase::LaunchFailed,
        ] {
            let subject = ctx.names.task(phase.as_str(), &rec.id);
            // Every message of the subject, not just the last: a forged one published
            // after the real event must not hide it. A handful per job; bounded anyway.
            let mut found = None;
            let mut seq = 1;
            for _ in 0..FINAL_EVENT_SCAN {
                let Ok(m) = stream
                    .direct_get_next_for_subject(subject.as_str(), Some(seq))
                    .await
                else {
                    break;
                };
                seq = m.sequence + 1;
                let Ok(ev) = serde_json::from_slice::<TaskEvent>(&m.payload) else {
                    continue;
                };
                if ev.attempt != rec.attempt {
                    continue;
                }
                let envelope = jetrun_nats::events::from_header_map(&m.headers).ok();
                let proof = task_auth::Proof {
                    ce_type: envelope.as_ref().map(|e| e.ty.as_str()),
                    subject: &m.subject,
                    signature: task_auth::signature_of(Some(&m.headers)),
                    body: &m.payload,
                };
                match task_auth::check_message(&ctx.names, &proof, &ev)
                    .and_then(|()| task_auth::check_attempt(rec, &proof, &ev))
                {
                    Ok(()) => found = Some(ev),
                    Err(reason) => {
                        debug!(job_id = %rec.id, reason = %reason, "a task event of the attempt is not its node's; ignored")
                    }
                }
            }
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// One sweep over the active jobs: timeout backstop and leaseless jobs. Returns how
    /// many jobs it changed.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let ctx = &self.inner.ctx;
        let c = &self.inner.config;
        let now = jetrun_core::now();
        let grace = chrono::Duration::from_std(c.lease_grace).unwrap_or_default();
        let tgrace = chrono::Duration::from_std(c.timeout_grace).unwrap_or_default();
        let mut changed = 0;
        for q in ctx.store.queues().await? {
            let mut active = ctx.store.list(&q, Some(JobStatus::Running), 100_000).await?;
            active.extend(ctx.store.list(&q, Some(JobStatus::Launching), 100_000).await?);
            for rec in active {
                let timeout = chrono::Duration::from_std(rec.spec.timeout()).unwrap_or_default();
                let overdue = rec.status == JobStatus::Running
                    && rec.started_at.is_some_and(|s| s + timeout + tgrace < now);
                if overdue {
                    // Re-read: act only on the attempt that is overdue.
                    let Some((fresh, rev)) = ctx.store.get(&rec.id).await? else {
                        continue;
                    };
                    if fresh.attempt == rec.attempt && fresh.status == JobStatus::Running {
                        warn!(job_id = %rec.id, "running past its timeout with no report; timing it out");
                        if self
                            .terminal(fresh, rev, Transition::TimedOut, None, true)
                            .await?
                            == Outcome::Settled
                        {
                            changed += 1;
                        }
                    }
                    continue;
                }
                if rec.updated_at + grace < now
                    && ctx.store.lease(&rec.id).await?.is_none()
                    && self.lease_lost(&rec.id, false).await?
                {
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }
}
