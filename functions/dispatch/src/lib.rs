//! # jetrun-dispatch
//!
//! Dispatch turns job submissions (`dev.jetrun.job.submitted.v1` on
//! `<prefix>.job.submit.<queue>`, one durable work-queue consumer per queue) into running
//! tasks:
//!
//! 1. **validate** the CloudEvent and the body against the submission schema; an invalid
//!    message is dead-lettered with its reason (`invalid_event`, `schema`);
//! 2. **admit**: the job id is the envelope's `ce-id` when it is a valid job id (as
//!    `jetrun submit` sets it), else derived from the idempotency key (or the `ce-id`);
//!    KV create; a job that exists and is no longer queued makes the message a no-op;
//! 3. **admission control**: `not_before` (retry backoff), the per-instance
//!    `max_concurrent_jobs`, a per-tenant running quota and start rate; over a limit the
//!    job stays queued and the message comes back after a delay (never dropped);
//! 4. **claim** by compare-and-set (`queued → launching` with this worker's id and node),
//!    take the job's **lease**, **launch** through the runner (token
//!    `<job_id>-<attempt>`), record the task (`launching → running`) and hand it to the
//!    node agent, which supervises it from then on.
//!
//! A launch that cannot work (`InvalidSpec`) fails the job; a transient launch failure
//! (or a lease it could not take) ends the attempt through the one lifecycle policy
//! ([`jetrun_nats::lifecycle`], shared with settle): back to `queued` with backoff, or a
//! dead letter and `failed` once its attempts are used. A periodic [`Dispatcher::reconcile`] re-publishes jobs that are
//! queued in the store but have no message (a producer crashed between admit and
//! publish).

pub mod control;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use jetrun_agent::{Agent, EndGuard, Task};
use jetrun_core::job::Transition;
use jetrun_core::schema::types;
use jetrun_core::{Envelope, JobError, JobRecord, JobSpec, JobStatus};
use jetrun_host::{ConsumerHost, Context, Decode, Event, HandlerError, HostConfig, transient};
use jetrun_nats::lifecycle::{AttemptOutcome, Lifecycle, RetryPolicy, error_chain, lock};
use jetrun_nats::store::Lease;
use jetrun_nats::{EventPublisher, StoreError, StoreErrorKind, Topology};
use jetrun_runner::{LaunchRequest, RunnerErrorKind};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What a submission must be: a `job.submitted` CloudEvent whose body matches the job
/// submission schema (checked once, by the host).
pub const SUBMISSION: Decode = Decode::event(types::JOB_SUBMITTED);

/// Dispatch configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Jobs this instance runs at once (default 4). Over it, jobs wait in the queue.
    pub max_concurrent_jobs: usize,
    /// Jobs one tenant may run at once on this instance (default: no limit).
    pub tenant_max_running: Option<usize>,
    /// Job starts per second per tenant on this instance (default: no limit).
    pub tenant_starts_per_second: Option<f64>,
    /// Burst of starts a tenant may make above its rate (default 10).
    pub tenant_start_burst: u32,
    /// Delay before a job held back by a limit is looked at again (default 500 ms,
    /// plus up to 50% jitter).
    #[serde(with = "humantime_serde")]
    pub capacity_retry_delay: Duration,
    /// Base of the backoff after a transient launch failure (default 2 s).
    #[serde(with = "humantime_serde")]
    pub launch_retry_base: Duration,
    /// Cap of that backoff (default 5 min).
    #[serde(with = "humantime_serde")]
    pub launch_retry_cap: Duration,
    /// How often to look for queued jobs whose submission message is missing (default 15 s).
    #[serde(with = "humantime_serde")]
    pub reconcile_every: Duration,
    /// A queued job must be at least this old to be re-published (default 10 s).
    #[serde(with = "humantime_serde")]
    pub reconcile_min_age: Duration,
    /// Submissions handled at once (default 64).
    pub concurrency: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_concurrent_jobs: 4,
            tenant_max_running: None,
            tenant_starts_per_second: None,
            tenant_start_burst: 10,
            capacity_retry_delay: Duration::from_millis(500),
            launch_retry_base: Duration::from_secs(2),
            launch_retry_cap: Duration::from_secs(300),
            reconcile_every: Duration::from_secs(15),
            reconcile_min_age: Duration::from_secs(10),
            concurrency: 64,
        }
    }
}

/// Kinds of dispatch failure (outside the handling of one message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DispatchErrorKind {
    /// The consumer could not be created or bound.
    Consumer,
    /// The job store failed.
    Store,
    /// Publishing failed.
    Publish,
}

/// Dispatch failed; the cause is its [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[error("dispatch: {kind:?}")]
pub struct DispatchError {
    /// What kind of failure.
    pub kind: DispatchErrorKind,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl DispatchError {
    fn new(kind: DispatchErrorKind, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            kind,
            source: e.into(),
        }
    }
}

#[derive(Debug)]
struct Tenant {
    running: usize,
    tokens: f64,
    refilled: std::time::Instant,
}

type Tenants = Arc<Mutex<HashMap<String, Tenant>>>;

/// Gives a tenant's running slot back when the task ends.
struct TenantSlot {
    tenants: Tenants,
    tenant: String,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.tenants).get_mut(&self.tenant) {
            t.running = t.running.saturating_sub(1);
        }
    }
}

/// What a running task holds: an instance slot and a tenant slot.
struct Slots {
    _instance: OwnedSemaphorePermit,
    _tenant: TenantSlot,
}

struct Inner {
    ctx: Context,
    agent: Agent,
    config: Config,
    slots: Arc<Semaphore>,
    tenants: Tenants,
    publisher: EventPublisher,
    lifecycle: Lifecycle,
}

/// The dispatch function. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The job id a submission stands for: its `ce-id` if that is a valid job id, else one
/// derived from the idempotency key, else one derived from the `ce-id`.
pub fn job_id_of(env: &Envelope, spec: &JobSpec) -> String {
    if jetrun_core::job::valid_job_id(&env.id) {
        env.id.clone()
    } else if let Some(k) = &spec.idempotency_key {
        jetrun_core::job::job_id_for_key(&spec.queue, k)
    } else {
        jetrun_core::job::job_id_for_key(&spec.queue, &env.id)
    }
}

fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let extra = rand::rng().random_range(0..=d.as_millis() as u64 / 2);
    d + Duration::from_millis(extra)
}

impl Dispatcher {
    /// A dispatcher launching through `agent`'s runner and handing tasks to it.
    pub fn new(ctx: Context, agent: Agent, config: Config) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_concurrent_jobs.max(1)));
        let publisher = ctx.publisher("dispatch");
        let policy = RetryPolicy {
            base: config.launch_retry_base,
            cap: config.launch_retry_cap,
        };
        Self {
            inner: Arc::new(Inner {
                lifecycle: Lifecycle::new(ctx.store.clone(), publisher.clone(), "dispatch", policy),
                publisher,
                ctx,
                agent,
                config,
                slots,
                tenants: Arc::new(Mutex::new(HashMap::new())),
            }),
        }
    }

    /// Creates (or upgrades) the durable consumer of `queue`.
    pub async fn ensure_consumer(&self, queue: &str) -> Result<(), DispatchError> {
        let ctx = &self.inner.ctx;
        let topo = Topology::new(ctx.names.clone());
        jetrun_nats::topology::ensure_consumer(
            &ctx.js,
            &ctx.names.stream_jobs(),
            topo.dispatch_consumer(queue),
        )
        .await
        .map_err(|e| DispatchError::new(DispatchErrorKind::Consumer, e))?;
        Ok(())
    }

    /// Serves `queue` until `shutdown`: the consumer host plus the periodic reconcile.
    pub async fn run(self, queue: String, shutdown: CancellationToken) -> Result<(), DispatchError> {
        self.ensure_consumer(&queue).await?;
        let ctx = &self.inner.ctx;
        let host = ConsumerHost::bind(
            &ctx.js,
            &ctx.names,
            &ctx.names.stream_jobs(),
            &ctx.names.consumer_dispatch(&queue),
            HostConfig {
                origin: "dispatch".into(),
                concurrency: self.inner.config.concurrency.max(1),
                ..HostConfig::default()
            },
        )
        .await
        .map_err(|e| DispatchError::new(DispatchErrorKind::Consumer, e))?;
        let reconcile = {
            let this = self.clone();
            let queue = queue.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval(this.inner.config.reconcile_every.max(Duration::from_millis(100)));
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tick.tick() => match this.reconcile(&queue).await {
                            Ok(0) => {}
                            Ok(n) => info!(queue = %queue, republished = n, "reconcile re-published queued jobs"),
                            Err(e) => warn!(queue = %queue, error = %e, "reconcile failed"),
                        },
                    }
                }
            })
        };
        // The job-control service (submit/cancel for ingest and route) runs with dispatch.
        let control = tokio::spawn(control::serve(ctx.clone(), shutdown.clone()));
        info!(queue = %queue, max_concurrent_jobs = self.inner.config.max_concurrent_jobs, "dispatch started");
        let this = self.clone();
        let res = host
            .run(
                jetrun_host::typed(SUBMISSION, move |ev: Event<JobSpec>| {
                    let this = this.clone();
                    async move { this.handle(ev).await }
                }),
                shutdown,
            )
            .await
            .map_err(|e| DispatchError::new(DispatchErrorKind::Consumer, e));
        let _ = reconcile.await;
        if let Ok(Err(e)) = control.await {
            warn!(error = %e, "job-control service failed");
        }
        res
    }

    /// Handles one submission (the function itself; the host acks, retries or
    /// dead-letters according to the result).
    pub async fn handle(&self, ev: Event<JobSpec>) -> Result<(), HandlerError> {
        let Event { event: spec, msg } = ev;
        // The host checked the envelope (SUBMISSION), so it is there.
        let env = msg
            .envelope
            .as_ref()
            .map_err(|e| HandlerError::permanent("invalid_event", format!("not a CloudEvent: {e}")))?;
        let subject_queue = msg.subject.rsplit('.').next().unwrap_or_default();
        if spec.queue != subject_queue {
            return Err(HandlerError::permanent(
                "invalid_event",
                format!(
                    "spec queue {:?} does not match subject queue {subject_queue:?}",
                    spec.queue
                ),
            ));
        }
        let job_id = job_id_of(env, &spec);
        if msg.delivered > 1 && self.inner.slots.available_permits() == 0 {
            // Full, and the first delivery already admitted the job: do not even read the
            // store (a backlog cycles through here).
            let c = &self.inner.config;
            return Err(HandlerError::retry(
                "at max_concurrent_jobs",
                jitter(c.capacity_retry_delay),
            ));
        }
        let store = &self.inner.ctx.store;
        let (rec, rev) = match store.get(&job_id).await.map_err(transient)? {
            Some(found) => found,
            None => {
                let rec = JobRecord::new(
                    job_id.clone(),
                    spec,
                    env.traceparent.clone(),
                    Some(env.id.clone()),
                );
                let a = store.admit(rec).await.map_err(|e| match e.kind {
                    StoreErrorKind::InvalidKey => HandlerError::permanent("invalid_event", e.to_string()),
                    _ => transient(e),
                })?;
                (a.record().clone(), a.revision())
            }
        };
        if rec.status != JobStatus::Queued {
            debug!(job_id = %rec.id, status = %rec.status, "submission of a job no longer queued; nothing to do");
            return Ok(());
        }
        if let Some(nb) = rec.not_before {
            let now = jetrun_core::now();
            if nb > now {
                let wait = (nb - now).to_std().unwrap_or_default();
                return Err(HandlerError::retry(
                    "not before its retry time",
                    wait.max(Duration::from_millis(10)),
                ));
            }
        }
        let slots = self.admission(&rec.spec)?;
        self.start(rec, rev, slots).await
    }

    /// Admission control: an instance slot, the tenant's running quota and start rate.
    fn admission(&self, spec: &JobSpec) -> Result<Slots, HandlerError> {
        let c = &self.inner.config;
        let busy = || HandlerError::retry("at max_concurrent_jobs", jitter(c.capacity_retry_delay));
        let instance = self.inner.slots.clone().try_acquire_owned().map_err(|_| busy())?;
        let tenant = spec.tenant().to_string();
        let mut tenants = lock(&self.inner.tenants);
        let burst = f64::from(c.tenant_start_burst.max(1));
        let t = tenants.entry(tenant.clone()).or_insert_with(|| Tenant {
            running: 0,
            tokens: burst,
            refilled: std::time::Instant::now(),
        });
        if let Some(max) = c.tenant_max_running
            && t.running >= max
        {
            return Err(HandlerError::retry(
                format!("tenant {tenant} at its running quota {max}"),
                jitter(c.capacity_retry_delay),
            ));
        }
        if let Some(rate) = c.tenant_starts_per_second.filter(|r| *r > 0.0) {
            let now = std::time::Instant::now();
            t.tokens = (t.tokens + now.duration_since(t.refilled).as_secs_f64() * rate).min(burst);
            t.refilled = now;
            if t.tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - t.tokens) / rate);
                return Err(HandlerError::retry(
                    format!("tenant {tenant} over its start rate"),
                    jitter(wait),
                ));
            }
            t.tokens -= 1.0;
        }
        t.running += 1;
        drop(tenants);
        Ok(Slots {
            _instance: instance,
            _tenant: TenantSlot {
                tenants: self.inner.tenants.clone(),
                tenant,
            },
        })
    }

    /// Claim, lease, launch, record, hand over.
    async fn start(&self, rec: JobRecord, rev: u64, slots: Slots) -> Result<(), HandlerError> {
        let ctx = &self.inner.ctx;
        let store = &ctx.store;
        if rec.spec.network && !self.inner.agent.config().network_allowed(&rec.queue) {
            // The operator's setting, not a transient condition: fail, do not retry.
            warn!(job_id = %rec.id, queue = %rec.queue, "the job asks for network on a queue not allowed to; failing it");
            let fail = Transition::Fail {
                error: JobError::new(
                    "network_not_allowed",
                    format!(
                        "queue {:?} may not ask for network (the operator's network_queues setting)",
                        rec.queue
                    ),
                ),
            };
            return match store.transition_at(&rec, rev, &fail).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind == StoreErrorKind::Conflict => Err(HandlerError::retry(
                    "the record changed while failing it",
                    Duration::from_millis(50),
                )),
                Err(e) if matches!(e.kind, StoreErrorKind::Transition(_)) => Ok(()),
                Err(e) => Err(transient(e)),
            };
        }
        let claim = Transition::Claim {
            worker_id: ctx.worker_id.clone(),
            node_id: ctx.node_id.clone(),
        };
        // The attempt's secret goes into the claim's own compare-and-set (no extra write):
        // the agent signs this attempt's task events with it, settle checks them.
        let mut keyed = rec.clone();
        keyed.attempt_key = Some(jetrun_core::task::AttemptKey::generate());
        let ttl = self.inner.agent.config().lease_ttl;
        // The claim does not change the attempt: the lease covers the claimed attempt.
        let lease = Lease {
            job_id: rec.id.clone(),
            attempt: rec.attempt,
            worker_id: ctx.worker_id.clone(),
            node_id: ctx.node_id.clone(),
        };
        // The claim's compare-and-set and the lease's create go out together (one round
        // trip, not two). The lease only counts if the claim landed: a lease taken for a
        // lost claim is released at its own revision (never the winner's), and one left
        // by a crash in between expires with nothing to do (the job is still `queued`,
        // which settle's expiry handling leaves alone).
        let (claimed, leased) = tokio::join!(
            store.transition_at(&keyed, rev, &claim),
            store.acquire_lease(&lease, ttl)
        );
        let (rec, rev) = match claimed {
            Ok(x) => x,
            Err(e) => {
                if let Ok(lease_rev) = leased
                    && let Err(le) = store.release_lease_at(&rec.id, lease_rev).await
                {
                    debug!(job_id = %rec.id, error = %le, "lease of a lost claim not released; it expires");
                }
                return match e.kind {
                    StoreErrorKind::Conflict => match store.get(&rec.id).await.map_err(transient)? {
                        Some((r, _)) if r.status == JobStatus::Queued => Err(HandlerError::retry(
                            "the record changed while claiming",
                            Duration::from_millis(50),
                        )),
                        _ => Ok(()),
                    },
                    StoreErrorKind::Transition(_) => Ok(()),
                    _ => Err(transient(e)),
                };
            }
        };
        let lease_rev = match leased {
            Ok(r) => Ok(r),
            Err(e) if e.kind == StoreErrorKind::Conflict => {
                // A lease left by an earlier attempt (released late): ours now.
                let _ = store.release_lease(&rec.id).await;
                store.acquire_lease(&lease, ttl).await
            }
            Err(e) => Err(e),
        };
        let lease_rev = match lease_rev {
            Ok(r) => r,
            Err(e) => {
                return self
                    .requeue(rec, rev, JobError::new("lease_unavailable", e.to_string()))
                    .await;
            }
        };
        let runner = self.inner.agent.runner();
        // The task continues this span's trace (TRACEPARENT, TRACESTATE in its env).
        let trace = jetrun_telemetry::outgoing(rec.traceparent.as_deref(), None);
        let mut req = LaunchRequest::new(
            &rec.id,
            rec.attempt,
            rec.spec.clone(),
            trace
                .as_ref()
                .map(|t| t.traceparent.clone())
                .or_else(|| rec.traceparent.clone()),
        );
        if let Some(ts) = trace.and_then(|t| t.tracestate) {
            req.env.insert("TRACESTATE".into(), ts);
        }
        let task_ref = match runner.launch(&req).await {
            Ok(t) => t,
            Err(e) if e.kind == RunnerErrorKind::InvalidSpec => {
                warn!(job_id = %rec.id, error = %e.message, "the job cannot run here; failing it");
                let fail = Transition::Fail {
                    error: JobError::new("invalid_spec", e.message.clone()),
                };
                store.transition(&rec.id, &fail).await.map_err(transient)?;
                let _ = store.release_lease(&rec.id).await;
                return Ok(());
            }
            Err(e) => {
                warn!(job_id = %rec.id, attempt = rec.attempt, error = %e, "launch failed; retrying later");
                let _ = store.release_lease(&rec.id).await;
                return self
                    .requeue(rec, rev, JobError::new("launch_failed", e.message))
                    .await;
            }
        };
        let started = Transition::Started {
            task_ref: task_ref.clone(),
        };
        // One compare-and-set at the claim's revision; re-read only if a cancel request
        // (or anything else) changed the record meanwhile.
        let recorded = match store.transition_at(&rec, rev, &started).await {
            Err(e) if e.kind == StoreErrorKind::Conflict => store.transition(&rec.id, &started).await,
            other => other,
        };
        let (rec, cancel_requested) = match recorded {
            Ok((r, _)) => {
                let c = r.cancel_requested;
                (r, c)
            }
            Err(e) if matches!(e.kind, StoreErrorKind::Transition(_)) => {
                // Cancelled or settled while launching: the task must not run.
                info!(job_id = %rec.id, error = %e, "job moved on while launching; stopping the task");
                let _ = runner.stop(&task_ref, Duration::from_secs(1)).await;
                let _ = runner.remove(&task_ref).await;
                let _ = store.release_lease(&rec.id).await;
                return Ok(());
            }
            Err(e) => {
                // The task runs and holds the lease; settle records `running` from its
                // events if this write never lands.
                warn!(job_id = %rec.id, error = %e, "could not record the task; the agent supervises it anyway");
                (rec, false)
            }
        };
        debug!(job_id = %rec.id, attempt = rec.attempt, task_ref = %task_ref, "launched");
        self.inner.agent.supervise(Task {
            job_id: rec.id.clone(),
            attempt: rec.attempt,
            task_ref,
            timeout: rec.spec.timeout(),
            started_at: rec.started_at.unwrap_or_else(jetrun_core::now),
            lease_revision: lease_rev,
            cancel_requested,
            traceparent: rec.traceparent.clone(),
            attempt_key: rec.attempt_key.clone(),
            guard: Some(Box::new(slots) as EndGuard),
        });
        Ok(())
    }

    /// Ends a failed attempt through the lifecycle policy: back to `queued` with backoff
    /// (the same message returns after the delay), or a dead letter and `failed` once the
    /// attempts are used. A dead letter that cannot be stored leaves the job as it was and
    /// the message for redelivery (settle's sweep ends a job whose message is gone).
    async fn requeue(&self, rec: JobRecord, rev: u64, error: JobError) -> Result<(), HandlerError> {
        let reason = error.message.clone();
        match self.inner.lifecycle.retry_or_fail(&rec, rev, error).await {
            Ok(AttemptOutcome::Retried { delay, .. }) => Err(HandlerError::retry(reason, delay)),
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() => Err(HandlerError::retry(
                "the record changed while retrying it",
                Duration::from_millis(50),
            )),
            // The store, or a dead letter not stored: the job was left as it was.
            Err(e) => Err(transient(error_chain(&e))),
        }
    }

    /// Re-publishes the submissions of jobs queued in the store whose message is missing
    /// (a producer died, or its publish failed, between admit and publish; a retry's
    /// re-publish failed). Admission writes the index entry before the record, so every
    /// admitted record is listed here. Level-triggered and conservative, on jobs older
    /// than `reconcile_min_age` whose `not_before` has passed:
    ///
    /// - the queue's consumer has nothing pending or in flight: every such job has lost
    ///   its message; all are re-published;
    /// - otherwise the queue's messages in the stream (pending and in flight) are
    ///   counted: each queued job has at least one, so fewer messages than queued jobs
    ///   means that many orphans; that many of the oldest eligible jobs are re-published
    ///   (a job that did have a message gets a second one, a harmless no-op once it is
    ///   claimed).
    ///
    /// Looks at up to [`RECONCILE_LIST_LIMIT`] queued jobs per tick; with more queued
    /// than that, the busy case waits until fewer are. Returns how many it re-published.
    pub async fn reconcile(&self, queue: &str) -> Result<usize, DispatchError> {
        let ctx = &self.inner.ctx;
        let stream = ctx
            .js
            .get_stream(ctx.names.stream_jobs())
            .await
            .map_err(|e| DispatchError::new(DispatchErrorKind::Consumer, e))?;
        let mut consumer: PullConsumer = stream
            .get_consumer(&ctx.names.consumer_dispatch(queue))
            .await
            .map_err(|e| DispatchError::new(DispatchErrorKind::Consumer, e))?;
        let info = consumer
            .info()
            .await
            .map_err(|e| DispatchError::new(DispatchErrorKind::Consumer, e))?;
        let idle = info.num_pending == 0 && info.num_ack_pending == 0;
        let queued = ctx
            .store
            .list(queue, Some(JobStatus::Queued), RECONCILE_LIST_LIMIT)
            .await
            .map_err(|e: StoreError| DispatchError::new(DispatchErrorKind::Store, e))?;
        let now = jetrun_core::now();
        let min_age = chrono::Duration::from_std(self.inner.config.reconcile_min_age).unwrap_or_default();
        let total_queued = queued.len();
        let mut eligible: Vec<JobRecord> = queued
            .into_iter()
            .filter(|rec| rec.updated_at + min_age <= now && rec.not_before.is_none_or(|nb| nb <= now))
            .collect();
        if eligible.is_empty() {
            return Ok(0);
        }
        if !idle {
            if total_queued >= RECONCILE_LIST_LIMIT {
                return Ok(0);
            }
            let subject = ctx.names.job_submit(queue);
            let mut subjects = stream
                .info_with_subjects(subject.clone())
                .await
                .map_err(|e| DispatchError::new(DispatchErrorKind::Consumer, e))?;
            let mut messages = 0usize;
            while let Some(entry) = futures::StreamExt::next(&mut subjects).await {
                let (subj, count) = entry.map_err(|e| DispatchError::new(DispatchErrorKind::Consumer, e))?;
                if subj == subject {
                    messages += count;
                }
            }
            let missing = total_queued.saturating_sub(messages);
            if missing == 0 {
                return Ok(0);
            }
            // Oldest first: an orphan is old, and the oldest queued jobs that do have a
            // message are the next ones the consumer hands out.
            eligible.sort_by_key(|r| r.updated_at);
            eligible.truncate(missing);
            debug!(queue = %queue, queued = total_queued, messages, missing, "queued jobs without a message while busy");
        }
        let mut n = 0;
        for rec in eligible {
            // One id per job, attempt and minute: concurrent reconcilers store it once.
            let msg_id = format!("{}.{}.reconcile.{}", rec.id, rec.attempt, now.timestamp() / 60);
            jetrun_nats::submit::resubmit(&self.inner.publisher, &ctx.names, &rec, &msg_id)
                .await
                .map_err(|e| DispatchError::new(DispatchErrorKind::Publish, e))?;
            info!(job_id = %rec.id, attempt = rec.attempt, queued_since = %rec.updated_at, "re-published the submission of a queued job that had no message");
            n += 1;
        }
        Ok(n)
    }
}

/// Queued jobs one reconcile looks at.
pub const RECONCILE_LIST_LIMIT: usize = 1000;
