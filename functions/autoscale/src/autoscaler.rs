//! The autoscaler: the tick loop (leader only), the spec cache and the scale-request
//! consumer (every replica; requests are compare-and-set writes, safe from anywhere).

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt;
use jetrun_core::Names;
use jetrun_core::scale::{BackendKind, Burst, ScaleRequest, ScaleSignal, ScaleSpec, ScaleState};
use jetrun_core::schema::types;
use jetrun_host::{ConsumerHost, Decode, Event, HandlerError, HostConfig, Subscription};
use jetrun_nats::EventPublisher;
use tokio::sync::RwLock;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::{Backend, SignalBackend, local::LocalBackend};
use crate::config::Config;
use crate::decide::{Decider, Decision, Inputs};
use crate::leader::{Elector, Leadership};
use crate::observe::Observer;
use crate::spec;

/// What failed while starting or running the autoscaler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AutoscaleErrorKind {
    /// A stream, bucket or consumer is missing: has `jetrun init` run?
    Setup,
    /// The request consumer's host failed.
    Host,
}

/// The autoscaler could not start or stopped with an error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("autoscale: {kind:?}: {message}")]
pub struct AutoscaleError {
    /// What kind of failure.
    pub kind: AutoscaleErrorKind,
    /// Details.
    pub message: String,
}

fn setup(e: impl std::fmt::Display) -> AutoscaleError {
    AutoscaleError {
        kind: AutoscaleErrorKind::Setup,
        message: e.to_string(),
    }
}

/// What a scale request must be, checked by the host before [`request_handler`] runs:
/// exactly a `dev.jetrun.scale.requested.v1` event whose body matches that schema. A
/// missing or foreign `ce-type` (a signal, a job, anything else that happens to parse)
/// is dead-lettered as `invalid_event`, a body that does not match as `schema`; neither
/// is ever applied.
pub const SCALE_REQUEST: Decode = Decode::event(types::SCALE_REQUESTED);

/// The durable consumer `consumer` of scale requests (`<prefix>.scale.request.>`) on the
/// scale stream.
pub fn request_subscription(names: &Names, consumer: &str) -> Subscription {
    Subscription {
        stream: names.stream_scale(),
        consumer: consumer::pull::Config {
            durable_name: Some(consumer.to_string()),
            description: Some("autoscale: scale requests".into()),
            filter_subject: format!("{}.scale.request.>", names.prefix()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: std::time::Duration::from_secs(30),
            max_deliver: 10,
            // Explicit: the server's default (1000) would otherwise read as a difference
            // on every `jetrun init` and every start, and update the consumer each time.
            max_ack_pending: 1000,
            ..Default::default()
        },
    }
}

/// What autoscale reads, as `jetrun init` declares it: the request consumer under its
/// default name (an autoscaler configured with another `request_consumer` creates that
/// one itself: its credential may).
pub fn subscriptions(names: &Names) -> Vec<Subscription> {
    vec![request_subscription(names, &Config::default().request_consumer)]
}

/// Specs and bursts, kept current by a watch on the scale bucket.
#[derive(Debug, Default)]
struct Cache {
    specs: HashMap<String, ScaleSpec>,
    bursts: HashMap<String, Burst>,
}

/// Per-service decision state of the current leadership term.
struct Tracked {
    decider: Decider,
    spec: ScaleSpec,
    last_signal: Option<Instant>,
    last_written: Option<(u32, u32, String)>,
    changed_at: jetrun_core::Timestamp,
}

/// The autoscaler. Build it with [`Autoscaler::new`], then [`Autoscaler::run`] it.
pub struct Autoscaler {
    js: jetstream::Context,
    names: Names,
    kv: kv::Store,
    observer: Observer,
    publisher: EventPublisher,
    cfg: Config,
    id: String,
    backends: HashMap<BackendKind, Arc<dyn Backend>>,
    cache: Arc<RwLock<Cache>>,
}

impl std::fmt::Debug for Autoscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoscaler")
            .field("id", &self.id)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Autoscaler {
    /// An autoscaler over the deployment of `ctx`, with the `signal` and `local`
    /// backends (and `ecs-service` when built with feature `ecs`).
    pub async fn new(ctx: &jetrun_host::Context, cfg: Config) -> Result<Self, AutoscaleError> {
        Self::with_parts(&ctx.js, &ctx.names, &format!("autoscale:{}", ctx.worker_id), cfg).await
    }

    /// The same from parts; `id` names this replica in the leader lease.
    pub async fn with_parts(
        js: &jetstream::Context,
        names: &Names,
        id: &str,
        cfg: Config,
    ) -> Result<Self, AutoscaleError> {
        let kv = js.get_key_value(names.bucket_scale()).await.map_err(setup)?;
        let observer = Observer::new(js, names).await.map_err(setup)?;
        let mut backends: HashMap<BackendKind, Arc<dyn Backend>> = HashMap::new();
        backends.insert(BackendKind::Signal, Arc::new(SignalBackend));
        backends.insert(BackendKind::Local, Arc::new(LocalBackend::new(cfg.local.clone())));
        #[cfg(feature = "ecs")]
        backends.insert(
            BackendKind::EcsService,
            Arc::new(crate::backend::ecs::EcsBackend::new(cfg.ecs.clone())),
        );
        Ok(Self {
            js: js.clone(),
            names: names.clone(),
            kv,
            observer,
            publisher: EventPublisher::new(js.clone(), "/jetrun/autoscale"),
            cfg,
            id: id.to_string(),
            backends,
            cache: Arc::default(),
        })
    }

    /// Replaces the backend of its kind (tests, embedding).
    pub fn with_backend(mut self, b: Arc<dyn Backend>) -> Self {
        self.backends.insert(b.kind(), b);
        self
    }

    /// The scale bucket.
    pub fn bucket(&self) -> &kv::Store {
        &self.kv
    }

    /// Creates the durable request consumer on the scale stream if it is missing.
    pub async fn ensure_request_consumer(&self) -> Result<(), AutoscaleError> {
        let sub = self.request_subscription();
        jetrun_nats::topology::ensure_consumer(&self.js, &sub.stream, sub.consumer)
            .await
            .map(|_| ())
            .map_err(setup)
    }

    /// The request consumer this autoscaler reads (its configured `request_consumer`).
    pub fn request_subscription(&self) -> Subscription {
        request_subscription(&self.names, &self.cfg.request_consumer)
    }

    /// Runs the election, the request consumer and the tick loop until `shutdown`;
    /// local replicas are stopped before it returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AutoscaleError> {
        self.ensure_request_consumer().await?;
        let elector = Elector::new(&self.js, &self.names, self.id.clone(), self.cfg.leader.clone())
            .await
            .map_err(setup)?;
        let leadership = elector.leadership();
        let stop_elector = CancellationToken::new();
        let election = tokio::spawn(elector.run(stop_elector.clone()));

        let sub = self.request_subscription();
        let host = ConsumerHost::bind(
            &self.js,
            &self.names,
            &sub.stream,
            sub.name(),
            HostConfig {
                origin: "autoscale".into(),
                concurrency: 4,
                ..HostConfig::default()
            },
        )
        .await
        .map_err(setup)?;
        let handler = request_handler(self.kv.clone(), self.names.clone());
        let requests = tokio::spawn(host.run(handler, shutdown.clone()));

        let watcher = tokio::spawn(watch_specs(self.kv.clone(), self.cache.clone(), shutdown.clone()));

        info!(id = %self.id, tick = ?self.cfg.tick, "autoscaler started");
        self.tick_loop(&leadership, &shutdown).await;

        // Stop acting before giving up the lease, then stop what we run ourselves.
        stop_elector.cancel();
        let _ = election.await;
        for b in self.backends.values() {
            b.shutdown().await;
        }
        let _ = watcher.await;
        match requests.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AutoscaleError {
                kind: AutoscaleErrorKind::Host,
                message: e.to_string(),
            }),
            Err(e) => Err(AutoscaleError {
                kind: AutoscaleErrorKind::Host,
                message: e.to_string(),
            }),
        }
    }

    async fn tick_loop(&self, leadership: &Leadership, shutdown: &CancellationToken) {
        let mut tracked: HashMap<String, Tracked> = HashMap::new();
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if !leadership.is_leader() {
                if !tracked.is_empty() {
                    // A new term starts with fresh windows: never act on a stale one.
                    info!(id = %self.id, "not the active autoscaler; standing by");
                    tracked.clear();
                }
                continue;
            }
            let (specs, bursts) = {
                let c = self.cache.read().await;
                (c.specs.clone(), c.bursts.clone())
            };
            // Services whose spec was deleted: stop the replicas we run ourselves.
            let gone: Vec<String> = tracked
                .keys()
                .filter(|s| !specs.contains_key(*s))
                .cloned()
                .collect();
            for s in gone {
                if let Some(t) = tracked.remove(&s)
                    && t.spec.backend == BackendKind::Local
                    && let Some(b) = self.backends.get(&BackendKind::Local)
                {
                    let _ = b.apply(&t.spec, 0).await;
                }
            }
            let mut services: Vec<&ScaleSpec> = specs.values().filter(|s| s.scalable).collect();
            services.sort_by(|a, b| a.service.cmp(&b.service));
            for s in services {
                self.tick_service(s, bursts.get(&s.service), &mut tracked, leadership)
                    .await;
            }
        }
    }

    async fn tick_service(
        &self,
        spec: &ScaleSpec,
        burst: Option<&Burst>,
        tracked: &mut HashMap<String, Tracked>,
        leadership: &Leadership,
    ) {
        let service = &spec.service;
        let Some(backend) = self.backends.get(&spec.backend).cloned() else {
            debug!(%service, backend = ?spec.backend, "backend not built in; signals only");
            let why = format!(
                "backend {:?} is not built into this binary (feature ecs)",
                spec.backend
            );
            return self
                .decide_and_act(
                    spec,
                    burst,
                    tracked,
                    leadership,
                    Arc::new(SignalBackend),
                    Some(why),
                )
                .await;
        };
        self.decide_and_act(spec, burst, tracked, leadership, backend, None)
            .await
    }

    async fn decide_and_act(
        &self,
        spec: &ScaleSpec,
        burst: Option<&Burst>,
        tracked: &mut HashMap<String, Tracked>,
        leadership: &Leadership,
        backend: Arc<dyn Backend>,
        mut backend_error: Option<String>,
    ) {
        let service = &spec.service;
        let load = match self.observer.load(&spec.queue).await {
            Ok(l) => l,
            Err(e) => {
                warn!(%service, error = %e, "cannot read queue depth; skipping this tick");
                return;
            }
        };
        let t = match tracked.get_mut(service) {
            Some(t) => t,
            None => {
                // First decision of this term: start from what was recorded.
                let recorded = spec::get_state(&self.kv, service).await.ok().flatten();
                let t = Tracked {
                    decider: Decider::new(),
                    spec: spec.clone(),
                    last_signal: None,
                    last_written: recorded
                        .as_ref()
                        .map(|r| (r.desired, r.current, r.reason.clone())),
                    changed_at: recorded
                        .as_ref()
                        .map(|r| r.changed_at)
                        .unwrap_or_else(jetrun_core::now),
                };
                tracked.entry(service.clone()).or_insert(t)
            }
        };
        t.spec = spec.clone();
        let current = match backend.current(spec).await {
            Ok(Some(n)) => n,
            Ok(None) => t
                .decider
                .desired()
                .or(t.last_written.as_ref().map(|w| w.0))
                .unwrap_or(spec.min),
            Err(e) => {
                backend_error = Some(e.to_string());
                t.decider.desired().unwrap_or(spec.min)
            }
        };
        let wall = jetrun_core::now();
        let now = Instant::now();
        let inputs = Inputs {
            pending: load.pending,
            in_flight: load.in_flight(),
            current,
            burst: burst.and_then(|b| spec::burst_remaining(b, wall).map(|left| (b.replicas, now + left))),
            busy: None,
        };
        let decision = t.decider.decide(spec, &inputs, now);
        // Check again right before acting: the lease may have run out during the reads.
        if !leadership.is_leader() {
            return;
        }
        if backend_error.is_none() {
            // An action never outlives the lease that allowed it.
            match tokio::time::timeout(leadership.remaining(), backend.apply(spec, decision.desired)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(%service, error = %e, "backend failed to apply; retrying next tick");
                    backend_error = Some(e.to_string());
                }
                Err(_) => {
                    warn!(%service, "backend still applying when the leader lease ran out; abandoned");
                    backend_error = Some("abandoned: the leader lease ran out while applying".into());
                }
            }
        }
        if !leadership.is_leader() {
            return;
        }
        let resync_due = t
            .last_signal
            .is_none_or(|at| now.duration_since(at) >= self.cfg.resync);
        if decision.changed() || resync_due {
            if decision.changed() {
                t.changed_at = wall;
                info!(%service, desired = decision.desired, previous = decision.previous, current, pending = inputs.pending, in_flight = inputs.in_flight, reason = %decision.reason, "scale decision");
            }
            match self.signal(spec, &decision, &inputs, wall).await {
                Ok(()) => t.last_signal = Some(now),
                Err(e) => warn!(%service, error = %e, "scale signal not published; retrying next tick"),
            }
        }
        let summary = (decision.desired, current, decision.reason.as_str().to_string());
        if resync_due || t.last_written.as_ref() != Some(&summary) {
            let state = ScaleState {
                service: service.clone(),
                desired: decision.desired,
                current,
                pending: inputs.pending,
                in_flight: inputs.in_flight,
                reason: decision.describe(),
                burst: burst.filter(|b| b.active_at(wall)).cloned(),
                backend: spec.backend,
                backend_error,
                decided_by: self.id.clone(),
                changed_at: t.changed_at,
                updated_at: wall,
            };
            match spec::put_state(&self.kv, &state).await {
                Ok(_) => t.last_written = Some(summary),
                Err(e) => warn!(%service, error = %e, "scale state not recorded"),
            }
        }
    }

    async fn signal(
        &self,
        spec: &ScaleSpec,
        d: &Decision,
        inputs: &Inputs,
        at: jetrun_core::Timestamp,
    ) -> Result<(), jetrun_nats::PublishError> {
        let sig = ScaleSignal {
            service: spec.service.clone(),
            desired: d.desired,
            current: inputs.current,
            pending: inputs.pending,
            in_flight: inputs.in_flight,
            reason: d.describe(),
            at,
        };
        let env = self
            .publisher
            .envelope(types::SCALE_SIGNAL)
            .with_subject(spec.service.clone());
        self.publisher
            .publish(self.names.scale_signal(&spec.service), &env, &sig)
            .await
            .map(|_| ())
    }
}

/// Keeps `cache` equal to the bucket's `spec.*` and `burst.*` keys.
async fn watch_specs(kv: kv::Store, cache: Arc<RwLock<Cache>>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let mut watch = match kv.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch the scale bucket; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = watch.next() => n,
            };
            let Some(Ok(entry)) = next else { break };
            let put = entry.operation == kv::Operation::Put;
            let mut c = cache.write().await;
            if let Some(service) = entry.key.strip_prefix("spec.") {
                match (put, serde_json::from_slice::<ScaleSpec>(&entry.value)) {
                    (true, Ok(s)) => {
                        c.specs.insert(service.to_string(), s);
                    }
                    (true, Err(e)) => warn!(%service, error = %e, "unreadable scale spec ignored"),
                    (false, _) => {
                        c.specs.remove(service);
                    }
                }
            } else if let Some(service) = entry.key.strip_prefix("burst.") {
                match (put, serde_json::from_slice::<Burst>(&entry.value)) {
                    (true, Ok(b)) => {
                        c.bursts.insert(service.to_string(), b);
                    }
                    _ => {
                        c.bursts.remove(service);
                    }
                }
            }
        }
        debug!("scale bucket watch ended; restarting");
    }
}

/// The request consumer's handler over requests the host has checked ([`SCALE_REQUEST`]):
/// check the subject, apply.
fn request_handler(kv: kv::Store, names: Names) -> impl jetrun_host::Handler {
    jetrun_host::typed(SCALE_REQUEST, move |ev: Event<ScaleRequest>| {
        let kv = kv.clone();
        let names = names.clone();
        async move {
            let (req, msg) = (ev.event, ev.msg);
            let service = spec::request_service(&req);
            if msg.subject != names.scale_request(service) {
                return Err(HandlerError::permanent(
                    "invalid_event",
                    format!("request for {service:?} published on {}", msg.subject),
                ));
            }
            match spec::apply_request(&kv, &req).await {
                Ok(applied) => {
                    info!(%service, ?applied, "scale request applied");
                    Ok(())
                }
                Err(e) if e.kind.is_transient() => Err(HandlerError::retry(
                    e.to_string(),
                    std::time::Duration::from_secs(1),
                )),
                Err(e) => {
                    warn!(%service, kind = e.kind.as_str(), reason = %e.message, "scale request refused");
                    Err(HandlerError::permanent(e.kind.as_str(), e.message))
                }
            }
        }
    })
}
