//! `jetrun init`: create or upgrade every stream, consumer and bucket.
//!
//! Idempotent: running it twice changes nothing; a setting that differs from the desired
//! one is applied (and reported), not ignored. Names come from [`jetrun_core::Names`], so
//! several deployments can share one server.
//!
//! Redundancy is never lowered silently: without an explicit replica count
//! ([`Topology::replicas`] `None`) every existing stream and bucket keeps its replicas
//! (new ones get one); an explicit count below what a stream or bucket has is refused
//! ([`TopologyErrorKind::WouldLowerReplicas`]) unless [`Topology::force_replicas`] is set,
//! and then applied with a warning in the report and the log.

use std::time::Duration;

use async_nats::jetstream::{
    self, consumer, kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};
use jetrun_core::Names;

/// Days, as a duration.
const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 3600)
}

/// Deliveries of one submission before the host dead-letters it. High, because dispatch
/// holds a job back by `Nak` while an instance or tenant is at its limit (one delivery
/// every ~0.5–0.75 s: about 17 hours of waiting); an exhausted submission's job stays
/// `queued` and dispatch's reconcile publishes it again.
pub const DISPATCH_MAX_DELIVER: i64 = 100_000;
/// Deliveries of one webhook event to route before it is dead-lettered.
pub const ROUTE_MAX_DELIVER: i64 = 10;
/// Deliveries of one task event to settle before it is dead-lettered.
pub const SETTLE_MAX_DELIVER: i64 = 50;

/// What `init` did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// It did not exist and was created.
    Created,
    /// It existed with other settings, which were updated.
    Updated,
    /// It existed as desired.
    Unchanged,
}

/// One line of an `init` report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// `stream`, `bucket` or `consumer`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// What happened.
    pub change: Change,
    /// Set when the change lowered durability (fewer replicas, memory storage): applied
    /// because it was asked for explicitly, but worth an operator's attention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl Applied {
    fn new(kind: &'static str, name: String, change: Change) -> Self {
        Self {
            kind,
            name,
            change,
            warning: None,
        }
    }
}

/// Why `init` failed on one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopologyErrorKind {
    /// The server or client refused or failed.
    Server,
    /// The resource has more replicas than asked for, and lowering was not forced.
    WouldLowerReplicas {
        /// Replicas it has.
        have: usize,
        /// Replicas asked for.
        want: usize,
    },
}

/// `init` failed on one resource.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: {message}")]
pub struct TopologyError {
    /// `stream`, `bucket` or `consumer`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// The server's or client's explanation, or ours.
    pub message: String,
    /// What kind of failure.
    pub error: TopologyErrorKind,
}

impl TopologyError {
    fn server(kind: &'static str, name: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.to_string(),
            message: message.into(),
            error: TopologyErrorKind::Server,
        }
    }
}

/// The desired JetStream topology of one deployment.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Names (from the prefix).
    pub names: Names,
    /// Replicas of every stream and bucket (3 in production). `None`: keep what each
    /// existing stream and bucket has, 1 for new ones. `Some(n)` applies `n` everywhere,
    /// but an existing resource with more replicas is refused unless
    /// [`Self::force_replicas`].
    pub replicas: Option<usize>,
    /// Lower the replicas of existing streams and buckets to [`Self::replicas`] (a warning
    /// each). Without it a lower explicit count is refused.
    pub force_replicas: bool,
    /// Queues that get their dispatch consumer now (others get one when a dispatcher
    /// for them starts).
    pub queues: Vec<String>,
    /// File or memory storage.
    pub storage: StorageType,
    /// Buckets of optional components (the ECS launch pacer, the github function's
    /// claims), declared by them and applied like the core ones: same replica rules,
    /// same storage, same refusal to lower without force.
    pub extra_buckets: Vec<kv::Config>,
    /// Durable consumers of optional components, as `(stream, config)`: created here
    /// because the components' credentials may not create consumers.
    pub extra_consumers: Vec<(String, consumer::pull::Config)>,
}

impl Topology {
    /// The default topology for `names`: replicas kept (R1 for new resources), file
    /// storage, the `default` queue.
    pub fn new(names: Names) -> Self {
        Self {
            names,
            replicas: None,
            force_replicas: false,
            queues: vec!["default".into()],
            storage: StorageType::File,
            extra_buckets: Vec::new(),
            extra_consumers: Vec::new(),
        }
    }

    /// Replicas a resource gets when it is created.
    fn replicas_for_new(&self) -> usize {
        self.replicas.unwrap_or(1).max(1)
    }

    /// The replicas to apply to an existing resource that has `have`: kept when none
    /// were asked for; refused when fewer were asked for without force; else the count
    /// asked for, with a warning when it lowers durability.
    fn replicas_for_existing(
        &self,
        kind: &'static str,
        name: &str,
        have: usize,
    ) -> Result<(usize, Option<String>), TopologyError> {
        let have = have.max(1);
        let Some(want) = self.replicas.map(|r| r.max(1)) else {
            return Ok((have, None));
        };
        if want >= have {
            return Ok((want, None));
        }
        if !self.force_replicas {
            return Err(TopologyError {
                kind,
                name: name.to_string(),
                message: format!(
                    "has {have} replicas, {want} asked for: refusing to lower redundancy \
                     (pass --force-replicas to lower it, or omit --replicas to keep {have})"
                ),
                error: TopologyErrorKind::WouldLowerReplicas { have, want },
            });
        }
        let warning = format!("replicas lowered from {have} to {want} (forced): less redundancy");
        tracing::warn!(kind, name, have, want, "lowering replicas (forced)");
        Ok((want, Some(warning)))
    }

    /// Before changing anything: refuses (naming the first resource) when an explicit
    /// replica count would lower an existing stream or bucket and lowering is not forced,
    /// so a refused `init` leaves everything as it was.
    async fn refuse_lowering(&self, js: &jetstream::Context) -> Result<(), TopologyError> {
        if self.replicas.is_none() || self.force_replicas {
            return Ok(());
        }
        let streams = self
            .streams()
            .into_iter()
            .map(|c| ("stream", c.name.clone(), c.name));
        let buckets = self
            .buckets()
            .into_iter()
            .map(|c| ("bucket", format!("KV_{}", c.bucket), c.bucket));
        for (kind, stream_name, name) in streams.chain(buckets) {
            match js.get_stream(&stream_name).await {
                Ok(mut s) => {
                    let have = s
                        .info()
                        .await
                        .map_err(|e| TopologyError::server(kind, &name, e.to_string()))?
                        .config
                        .num_replicas;
                    self.replicas_for_existing(kind, &name, have)?;
                }
                Err(e) if stream_not_found(&e) => {}
                Err(e) => return Err(TopologyError::server(kind, &name, e.to_string())),
            }
        }
        Ok(())
    }

    /// The desired stream configurations.
    pub fn streams(&self) -> Vec<stream::Config> {
        let n = &self.names;
        let base =
            |name: String, subjects: Vec<String>, max_age: Duration, description: &str| stream::Config {
                name,
                description: Some(description.to_string()),
                subjects,
                max_age,
                storage: self.storage,
                num_replicas: self.replicas_for_new(),
                duplicate_window: Duration::from_secs(120),
                // Direct gets let `dlq list` and watchers read without creating consumers.
                allow_direct: true,
                ..Default::default()
            };
        vec![
            base(
                n.stream_webhooks(),
                vec![n.webhook_all()],
                days(7),
                "raw webhook deliveries: audit and replay",
            ),
            stream::Config {
                retention: RetentionPolicy::WorkQueue,
                ..base(
                    n.stream_jobs(),
                    vec![n.job_submit_all()],
                    days(14),
                    "job submissions: one work-queue consumer per queue",
                )
            },
            base(
                n.stream_tasks(),
                vec![n.task_all()],
                days(7),
                "task lifecycle events from runners",
            ),
            base(
                n.stream_job_events(),
                vec![n.job_event_all(), n.job_callback_all()],
                days(7),
                "job state changes, for watchers; terminal changes of jobs with a callback",
            ),
            base(
                n.stream_scale(),
                vec![n.scale_all()],
                days(7),
                "scale requests and signals",
            ),
            stream::Config {
                discard: DiscardPolicy::Old,
                ..base(
                    n.stream_dlq(),
                    vec![n.dlq_all()],
                    days(30),
                    "dead letters, with reasons; replayable",
                )
            },
        ]
    }

    /// The desired bucket configurations.
    pub fn buckets(&self) -> Vec<kv::Config> {
        let n = &self.names;
        let base = |bucket: String, description: &str| kv::Config {
            bucket,
            description: description.to_string(),
            history: 1,
            storage: self.storage,
            num_replicas: self.replicas_for_new(),
            ..Default::default()
        };
        vec![
            kv::Config {
                max_age: days(30),
                ..base(
                    n.bucket_jobs(),
                    "job records; every transition is a compare-and-set",
                )
            },
            base(
                n.bucket_index(),
                "job index: <queue>.<status>.<job_id>, for listing without scanning",
            ),
            kv::Config {
                // Per-key TTL; an expired key leaves a marker, so expiry is an event.
                limit_markers: Some(Duration::from_secs(300)),
                ..base(
                    n.bucket_leases(),
                    "leases of running jobs; expiry means the worker died",
                )
            },
            kv::Config {
                max_age: Duration::from_secs(72 * 3600),
                ..base(n.bucket_dedupe(), "idempotency keys (72 h)")
            },
            kv::Config {
                history: 5,
                ..base(
                    n.bucket_scale(),
                    "scale specs and state; the desired state is authoritative",
                )
            },
            kv::Config {
                limit_markers: Some(Duration::from_secs(60)),
                ..base(n.bucket_nodes(), "live nodes (per-key TTL)")
            },
        ]
        .into_iter()
        .chain(self.extra_buckets.iter().map(|c| kv::Config {
            storage: self.storage,
            num_replicas: self.replicas_for_new(),
            ..c.clone()
        }))
        .collect()
    }

    /// The dispatch consumer of `queue`.
    pub fn dispatch_consumer(&self, queue: &str) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.names.consumer_dispatch(queue)),
            description: Some(format!("dispatch for queue {queue}")),
            filter_subject: self.names.job_submit(queue),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: DISPATCH_MAX_DELIVER,
            max_ack_pending: 10_000,
            ..Default::default()
        }
    }

    /// Route's consumer of the webhooks stream (created here, by the operator: route's
    /// credential cannot create consumers).
    pub fn route_consumer(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.names.consumer_route()),
            description: Some("route: webhook events to job submissions".into()),
            filter_subject: self.names.webhook_all(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            // Bounded: a webhook that keeps failing ends in the DLQ instead of cycling forever.
            max_deliver: ROUTE_MAX_DELIVER,
            max_ack_pending: 1000,
            ..Default::default()
        }
    }

    /// Creates or upgrades everything; returns what changed.
    pub async fn apply(&self, js: &jetstream::Context) -> Result<Vec<Applied>, TopologyError> {
        self.refuse_lowering(js).await?;
        let mut report = Vec::new();
        for cfg in self.streams() {
            report.push(self.ensure_stream(js, cfg).await?);
        }
        for cfg in self.buckets() {
            report.push(self.ensure_bucket(js, cfg).await?);
        }
        for q in &self.queues {
            report.push(ensure_consumer(js, &self.names.stream_jobs(), self.dispatch_consumer(q)).await?);
        }
        report.push(ensure_consumer(js, &self.names.stream_webhooks(), self.route_consumer()).await?);
        for (stream, cfg) in &self.extra_consumers {
            report.push(ensure_consumer(js, stream, cfg.clone()).await?);
        }
        Ok(report)
    }
}

/// The settings we own, compared to decide whether an update is needed (the server fills
/// in defaults for everything else).
fn stream_differs(have: &stream::Config, want: &stream::Config) -> bool {
    let mut a = have.subjects.clone();
    let mut b = want.subjects.clone();
    a.sort();
    b.sort();
    a != b
        || have.retention != want.retention
        || have.max_age != want.max_age
        || have.storage != want.storage
        || have.num_replicas.max(1) != want.num_replicas.max(1)
        || have.duplicate_window != want.duplicate_window
        || have.max_messages_per_subject.max(0) != want.max_messages_per_subject.max(0)
        || have.discard != want.discard
        || have.allow_message_ttl != want.allow_message_ttl
        || have.description != want.description
        || have.allow_direct != want.allow_direct
}

/// A warning when `have` → `want` storage lowers durability (file to memory).
fn storage_warning(have: StorageType, want: StorageType) -> Option<String> {
    (have == StorageType::File && want == StorageType::Memory)
        .then(|| "storage changed from file to memory: contents are lost on a restart".to_string())
}

fn join_warnings(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

impl Topology {
    async fn ensure_stream(
        &self,
        js: &jetstream::Context,
        mut want: stream::Config,
    ) -> Result<Applied, TopologyError> {
        let name = want.name.clone();
        let err = |e: String| TopologyError::server("stream", &name, e);
        match js.get_stream(&name).await {
            Ok(mut s) => {
                let have = s.info().await.map_err(|e| err(e.to_string()))?.config.clone();
                let (replicas, warning) = self.replicas_for_existing("stream", &name, have.num_replicas)?;
                want.num_replicas = replicas;
                if stream_differs(&have, &want) {
                    let warning = join_warnings(warning, storage_warning(have.storage, want.storage));
                    if let Some(w) = &warning {
                        tracing::warn!(stream = %name, warning = %w, "topology change lowers durability");
                    }
                    js.update_stream(want).await.map_err(|e| err(e.to_string()))?;
                    Ok(Applied {
                        warning,
                        ..Applied::new("stream", name, Change::Updated)
                    })
                } else {
                    Ok(Applied::new("stream", name, Change::Unchanged))
                }
            }
            Err(e) if stream_not_found(&e) => {
                js.create_stream(want).await.map_err(|e| err(e.to_string()))?;
                Ok(Applied::new("stream", name, Change::Created))
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    async fn ensure_bucket(
        &self,
        js: &jetstream::Context,
        mut want: kv::Config,
    ) -> Result<Applied, TopologyError> {
        let name = want.bucket.clone();
        let err = |e: String| TopologyError::server("bucket", &name, e);
        let stream_name = format!("KV_{name}");
        match js.get_stream(&stream_name).await {
            Ok(mut s) => {
                let have = s.info().await.map_err(|e| err(e.to_string()))?.config.clone();
                let (replicas, warning) = self.replicas_for_existing("bucket", &name, have.num_replicas)?;
                want.num_replicas = replicas;
                let differs = have.max_age != want.max_age
                    || have.max_messages_per_subject != want.history
                    || have.num_replicas.max(1) != want.num_replicas.max(1)
                    || have.storage != want.storage
                    || have.allow_message_ttl != want.limit_markers.is_some()
                    || have.subject_delete_marker_ttl != want.limit_markers
                    || have.description.as_deref().unwrap_or("") != want.description;
                if differs {
                    let warning = join_warnings(warning, storage_warning(have.storage, want.storage));
                    if let Some(w) = &warning {
                        tracing::warn!(bucket = %name, warning = %w, "topology change lowers durability");
                    }
                    js.create_or_update_key_value(want)
                        .await
                        .map_err(|e| err(e.to_string()))?;
                    Ok(Applied {
                        warning,
                        ..Applied::new("bucket", name, Change::Updated)
                    })
                } else {
                    Ok(Applied::new("bucket", name, Change::Unchanged))
                }
            }
            Err(e) if stream_not_found(&e) => {
                js.create_key_value(want).await.map_err(|e| err(e.to_string()))?;
                Ok(Applied::new("bucket", name, Change::Created))
            }
            Err(e) => Err(err(e.to_string())),
        }
    }
}

/// Creates or updates a durable pull consumer on `stream`.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    stream: &str,
    want: consumer::pull::Config,
) -> Result<Applied, TopologyError> {
    let name = want.durable_name.clone().unwrap_or_default();
    let err = |e: String| TopologyError::server("consumer", &name, e);
    let s = js.get_stream(stream).await.map_err(|e| err(e.to_string()))?;
    match s.consumer_info(&name).await {
        Ok(info) => {
            let have = &info.config;
            let mut have_filters = have.filter_subjects.clone();
            let mut want_filters = want.filter_subjects.clone();
            have_filters.sort();
            want_filters.sort();
            let differs = have.filter_subject != want.filter_subject
                || have_filters != want_filters
                || have.ack_wait != want.ack_wait
                || have.max_deliver != want.max_deliver
                || have.max_ack_pending != want.max_ack_pending
                || have.description != want.description;
            if differs {
                s.update_consumer(want).await.map_err(|e| err(e.to_string()))?;
                Ok(Applied::new("consumer", name, Change::Updated))
            } else {
                Ok(Applied::new("consumer", name, Change::Unchanged))
            }
        }
        Err(_) => {
            s.create_consumer(want).await.map_err(|e| err(e.to_string()))?;
            Ok(Applied::new("consumer", name, Change::Created))
        }
    }
}

fn stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(je)
        if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}
