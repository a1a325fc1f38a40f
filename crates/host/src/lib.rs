//! # jetrun-host
//!
//! Where functions run. A function is a plain async [`Handler`] over an [`Incoming`]
//! message; it never acks, never sets up tracing, never catches panics. The host does:
//!
//! - pull from a durable JetStream consumer with bounded concurrency (a continuous pull
//!   with at most `concurrency` messages buffered; one is taken only when a slot is free);
//! - one tracing span per message, with the CloudEvent id, type and trace id;
//! - `Progress` acks while slow work runs, so the server does not redeliver it;
//! - ack only after the handler returned `Ok` (its effect is durable by then);
//! - `Nak(delay)` on [`HandlerError::Retry`];
//! - a dead-letter entry and then `Term` on [`HandlerError::Permanent`] (if the dead
//!   letter cannot be stored, the message is `Nak`ed instead: nothing is lost);
//! - a caught panic is retried a few times, then dead-lettered;
//! - the consumer's last delivery (`max_deliver`) that fails in any way is dead-lettered
//!   (`attempts_exhausted`), so no message is left undeliverable and unseen;
//! - on shutdown (SIGTERM, Ctrl-C) it stops fetching and drains in-flight work.
//!
//! A function declares what it reads as [`Subscription`]s (created by `jetrun init`, bound
//! with [`ConsumerHost::bind_to`]) and what each message must be as a [`Decode`]; wrapped
//! with [`typed`], its handler receives only checked, decoded [`Event`]s.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message, consumer::PullConsumer};
use futures::{FutureExt, StreamExt};
use jetrun_core::{Envelope, Names};
use jetrun_nats::EventPublisher;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

pub use tokio_util::sync::CancellationToken as Shutdown;

mod typed;
pub use typed::{Decode, Event, Invalid, Subscription, Typed, typed};

/// A message handed to a handler.
#[derive(Debug)]
pub struct Incoming {
    /// The subject it was published on.
    pub subject: String,
    /// Its CloudEvent envelope, if the headers carry a valid one.
    pub envelope: Result<Envelope, jetrun_core::EnvelopeError>,
    /// The body.
    pub payload: bytes::Bytes,
    /// How many times it has been delivered (1 the first time).
    pub delivered: u64,
    /// Its stream sequence.
    pub stream_seq: u64,
    /// The raw JetStream message (headers, reply subject).
    pub message: Message,
}

/// How a handler failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerError {
    /// Try again after `delay` (a transient failure, or a limit that will free up).
    Retry {
        /// Why.
        reason: String,
        /// How long to wait before redelivery.
        delay: Duration,
    },
    /// Never going to work: dead-letter it with this reason.
    Permanent {
        /// A stable snake_case kind (`invalid_event`, `schema`, ...).
        kind: String,
        /// Why, for people.
        reason: String,
    },
}

impl HandlerError {
    /// A retry after `delay`.
    pub fn retry(reason: impl Into<String>, delay: Duration) -> Self {
        Self::Retry {
            reason: reason.into(),
            delay,
        }
    }
    /// A permanent failure.
    pub fn permanent(kind: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Permanent {
            kind: kind.into(),
            reason: reason.into(),
        }
    }
}

/// A transient failure: retried after a second. The reason is the error with its causes.
pub fn transient(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::retry(e.to_string(), Duration::from_secs(1))
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerError::Retry { reason, delay } => write!(f, "retry in {delay:?}: {reason}"),
            HandlerError::Permanent { kind, reason } => write!(f, "{kind}: {reason}"),
        }
    }
}

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

/// A function: an async handler over one message.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message.
    fn handle(&self, msg: Incoming) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle(&self, msg: Incoming) -> HandlerFuture {
        Box::pin(self(msg))
    }
}

/// Host errors (setting up the consumer).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The stream or consumer could not be reached.
    #[error("consumer {consumer} on {stream}")]
    Consumer {
        /// Stream.
        stream: String,
        /// Consumer.
        consumer: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Configuration of a [`ConsumerHost`].
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The function's name: the dead-letter origin and the span name.
    pub origin: String,
    /// Messages handled at once.
    pub concurrency: usize,
    /// How often to send `Progress` while a handler runs (keep under the ack wait).
    pub progress_every: Duration,
    /// A handler running longer than this is abandoned and its message retried.
    pub handler_timeout: Duration,
    /// Deliveries after which a panicking message is dead-lettered.
    pub max_panics: u64,
    /// How long to wait for in-flight work at shutdown.
    pub drain_timeout: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            origin: "function".into(),
            concurrency: 64,
            progress_every: Duration::from_secs(10),
            handler_timeout: Duration::from_secs(300),
            max_panics: 3,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Runs a handler over a durable pull consumer.
pub struct ConsumerHost {
    consumer: PullConsumer,
    /// The consumer's `max_deliver` (≤ 0: unbounded): the last delivery that fails is
    /// dead-lettered, since the server will not deliver it again.
    max_deliver: i64,
    publisher: EventPublisher,
    names: Names,
    config: HostConfig,
    /// `process <origin>`, the spans' name, made once.
    span_name: String,
}

impl ConsumerHost {
    /// A host over the existing durable `consumer` of `stream`.
    pub async fn bind(
        js: &jetstream::Context,
        names: &Names,
        stream: &str,
        consumer: &str,
        config: HostConfig,
    ) -> Result<Self, HostError> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| HostError::Consumer {
            stream: stream.into(),
            consumer: consumer.into(),
            source: e,
        };
        let s = js.get_stream(stream).await.map_err(|e| err(e.into()))?;
        let c: PullConsumer = s.get_consumer(consumer).await.map_err(err)?;
        Ok(Self {
            max_deliver: c.cached_info().config.max_deliver,
            consumer: c,
            publisher: EventPublisher::new(js.clone(), format!("/jetrun/{}", config.origin)),
            names: names.clone(),
            span_name: format!("process {}", config.origin),
            config,
        })
    }

    /// Creates or updates `sub`'s consumer if this credential may (the operator's, as in
    /// `jetrun dev`; a least-privilege one may not, and uses what `jetrun init` made),
    /// then binds it.
    pub async fn bind_to(
        js: &jetstream::Context,
        names: &Names,
        sub: &Subscription,
        config: HostConfig,
    ) -> Result<Self, HostError> {
        if let Err(e) = jetrun_nats::topology::ensure_consumer(js, &sub.stream, sub.consumer.clone()).await {
            debug!(consumer = sub.name(), error = %e, "cannot create or update the consumer; binding it as it is");
        }
        Self::bind(js, names, &sub.stream, sub.name(), config).await
    }

    /// Runs until `shutdown` is cancelled, then drains in-flight work.
    pub async fn run<H: Handler>(self, handler: H, shutdown: CancellationToken) -> Result<(), HostError> {
        let handler = Arc::new(handler);
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let this = Arc::new(self);
        info!(origin = %this.config.origin, concurrency = this.config.concurrency, "consumer host started");
        let mut backoff = Duration::from_millis(100);
        // A continuous pull (the client re-pulls as the buffer drains) with at most
        // `concurrency` messages buffered; a message is taken from the buffer only once a
        // slot is free, so at most 2 × concurrency are held by this process at a time.
        'outer: while !shutdown.is_cancelled() {
            let stream = this
                .consumer
                .stream()
                .max_messages_per_batch(this.config.concurrency.max(1))
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await;
            let mut messages = match stream {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "cannot pull from the consumer; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                let permit = tokio::select! {
                    p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'outer },
                    _ = shutdown.cancelled() => break 'outer,
                };
                let next = tokio::select! {
                    m = messages.next() => m,
                    _ = shutdown.cancelled() => break 'outer,
                };
                let msg = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        // Missed heartbeats, a server restart: start a fresh pull.
                        warn!(error = %e, "pull interrupted; re-subscribing");
                        break;
                    }
                    None => break,
                };
                let this = this.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    this.process(handler.as_ref(), msg).await;
                    drop(permit);
                });
            }
        }
        // Drain: every slot back means every handler finished.
        info!(origin = %this.config.origin, "draining in-flight work");
        let all = this.config.concurrency.max(1) as u32;
        if tokio::time::timeout(this.config.drain_timeout, slots.acquire_many(all))
            .await
            .is_err()
        {
            warn!(origin = %this.config.origin, "drain timed out; unfinished messages will be redelivered");
        }
        info!(origin = %this.config.origin, "consumer host stopped");
        Ok(())
    }

    async fn process<H: Handler>(&self, handler: &H, msg: Message) {
        let (delivered, stream_seq) = msg
            .info()
            .map(|i| (i.delivered as u64, i.stream_sequence))
            .unwrap_or((1, 0));
        let envelope = msg
            .headers
            .as_ref()
            .ok_or(jetrun_core::EnvelopeError {
                kind: jetrun_core::EnvelopeErrorKind::Missing,
                header: jetrun_core::envelope::H_ID,
            })
            .and_then(jetrun_nats::events::from_header_map);
        let e = envelope.as_ref().ok();
        let ce_id = e.map_or("", |e| e.id.as_str());
        let ce_type = e.map_or("", |e| e.ty.as_str());
        let ce_subject = e.and_then(|e| e.subject.as_deref());
        let traceparent = e.and_then(|e| e.traceparent.as_deref());
        let tracestate = e.and_then(|e| e.tracestate.as_deref());
        let (queue, job_id) = job_of_subject(&msg.subject);
        let span = info_span!(
            "message",
            otel.kind = "consumer",
            // Strings as values, not `%`-formatted: the OpenTelemetry layer formats every
            // `Display` value into a new string, on every message.
            otel.name = self.span_name.as_str(),
            messaging.system = "nats",
            messaging.destination.name = msg.subject.as_str(),
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.message.id = ce_id,
            messaging.consumer.group.name = self.config.origin.as_str(),
            // Integers as i64: the OpenTelemetry layer has no u64 form and formats one
            // into a string attribute (an allocation, and the wrong type for the
            // convention). The stream sequence is not on the span (an attribute on every
            // message, read only when one fails): the failure logs and the dead letter
            // carry it.
            messaging.message.delivery_count = i64::try_from(delivered).unwrap_or(i64::MAX),
            cloudevents.event_type = ce_type,
            // For logs, which cannot read the span's own context: exported spans carry
            // it anyway (one attribute). The other names above are the logs' fields too:
            // short aliases of them doubled every exported span's attributes.
            trace_id = tracing::field::Empty,
            jetrun.job_id = tracing::field::Empty,
            jetrun.queue = tracing::field::Empty,
            // Recorded by the store's state-change notifications made in this span.
            jetrun.attempt = tracing::field::Empty,
            jetrun.tenant = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        if let Some(q) = queue {
            span.record("jetrun.queue", q);
        }
        let is_job_event = ce_type.contains(".job.") || ce_type.contains(".task.");
        if let Some(id) = job_id.or(ce_subject.filter(|_| is_job_event)) {
            span.record("jetrun.job_id", id);
        }
        // This span continues the producer's trace; a missing or invalid traceparent
        // starts a new one.
        let incoming = traceparent.and_then(jetrun_telemetry::TraceParent::parse);
        let linked = jetrun_telemetry::link_remote_parsed(&span, incoming, tracestate);
        // Linked, the span is in the incoming trace; else it started one of its own (or
        // nothing is exported, and the logs name the incoming trace).
        let trace_id = if linked { incoming } else { None }
            .or_else(|| span.in_scope(jetrun_telemetry::current_context).map(|c| c.parent))
            .or(incoming)
            .map(|t| t.trace_id_hex());
        if let Some(t) = trace_id {
            span.record("trace_id", t.as_str());
        }
        let started = std::time::Instant::now();
        let origin = self.config.origin.clone();
        let metric_span = span.clone();
        async {
            let incoming = Incoming {
                subject: msg.subject.to_string(),
                envelope,
                payload: msg.payload.clone(),
                delivered,
                stream_seq,
                message: msg.clone(),
            };
            let work = AssertUnwindSafe(handler.handle(incoming)).catch_unwind();
            let work = tokio::time::timeout(self.config.handler_timeout, work);
            tokio::pin!(work);
            // The first tick one period from now, not awaited at once: an interval's
            // immediate first tick still goes through the timer wheel (1 ms resolution)
            // and held every message up by about a millisecond before its handler ran.
            let mut progress = tokio::time::interval_at(
                tokio::time::Instant::now() + self.config.progress_every,
                self.config.progress_every,
            );
            let outcome = loop {
                tokio::select! {
                    r = &mut work => break r,
                    _ = progress.tick() => {
                        if let Err(e) = msg.ack_with(AckKind::Progress).await {
                            debug!(error = %e, "progress ack failed");
                        }
                    }
                }
            };
            let label = match &outcome {
                Ok(Ok(Ok(()))) => "ack",
                Ok(Ok(Err(HandlerError::Retry { .. }))) if self.last_delivery(delivered) => "dead_letter",
                Ok(Ok(Err(HandlerError::Retry { .. }))) => "retry",
                Ok(Ok(Err(HandlerError::Permanent { .. }))) => "dead_letter",
                Ok(Err(_)) => "panic",
                Err(_) => "timeout",
            };
            metric_span.record("outcome", label);
            jetrun_telemetry::metrics::message_handled(&origin, label, started.elapsed());
            match outcome {
                Ok(Ok(Ok(()))) => {
                    if let Err(e) = msg.ack().await {
                        warn!(error = %e, stream_seq, "ack failed; the message will be redelivered");
                    }
                }
                Ok(Ok(Err(HandlerError::Retry { reason, delay }))) => {
                    if self.last_delivery(delivered) {
                        self.exhausted(&msg, delivered, &reason).await;
                    } else {
                        debug!(%reason, ?delay, "retry");
                        let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                    }
                }
                Ok(Ok(Err(HandlerError::Permanent { kind, reason }))) => {
                    warn!(%kind, %reason, stream_seq, "permanent failure; dead-lettering");
                    self.dead_letter(&msg, &kind, &reason).await;
                }
                Ok(Err(panic)) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into());
                    error!(panic = %what, delivered, stream_seq, "handler panicked");
                    if delivered >= self.config.max_panics {
                        self.dead_letter(
                            &msg,
                            "panic",
                            &format!("handler panicked {delivered} times: {what}"),
                        )
                        .await;
                    } else if self.last_delivery(delivered) {
                        self.exhausted(&msg, delivered, &format!("handler panicked: {what}"))
                            .await;
                    } else {
                        let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    }
                }
                Err(_) if self.last_delivery(delivered) => {
                    let why = format!("handler timed out after {:?}", self.config.handler_timeout);
                    self.exhausted(&msg, delivered, &why).await;
                }
                Err(_) => {
                    warn!(timeout = ?self.config.handler_timeout, stream_seq, "handler timed out; retrying");
                    let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Whether this was the consumer's last delivery of the message.
    fn last_delivery(&self, delivered: u64) -> bool {
        self.max_deliver > 0 && delivered >= self.max_deliver as u64
    }

    /// The last delivery failed too: the server will not redeliver, so the message goes
    /// to the DLQ (never silently stuck unacknowledged).
    async fn exhausted(&self, msg: &Message, delivered: u64, last: &str) {
        warn!(delivered, max_deliver = self.max_deliver, reason = %last, "deliveries exhausted; dead-lettering");
        let reason = format!("delivered {delivered} times (max_deliver); last failure: {last}");
        self.dead_letter(msg, "attempts_exhausted", &reason).await;
    }

    async fn dead_letter(&self, msg: &Message, kind: &str, reason: &str) {
        let entry = jetrun_nats::dlq::entry_for(&self.config.origin, kind, reason, msg, None);
        match jetrun_nats::dlq::publish(&self.publisher, &self.names, &entry).await {
            Ok(_) => {
                if let Err(e) = msg.ack_with(AckKind::Term).await {
                    warn!(error = %e, "term failed after dead-lettering");
                }
            }
            Err(e) => {
                // Not stored in the DLQ: keep the message rather than lose it.
                error!(error = %e, "dead letter not stored; retrying the message later");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
            }
        }
    }
}

/// The queue and job id a subject names: `<p>.job.<kind>.<queue>[.<id>]`,
/// `<p>.task.<phase>.<id>`.
fn job_of_subject(subject: &str) -> (Option<&str>, Option<&str>) {
    let t: Vec<&str> = subject.split('.').collect();
    match t.as_slice() {
        [_, "job", _, queue] => (Some(queue), None),
        [_, "job", _, queue, id, ..] => (Some(queue), Some(id)),
        [_, "task", _, id] => (None, Some(id)),
        _ => (None, None),
    }
}

/// A token cancelled on SIGTERM or Ctrl-C (SIGINT).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = ctrl_c.await;
                    t.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => info!("interrupt received; shutting down"),
                _ = term.recv() => info!("SIGTERM received; shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        t.cancel();
    });
    token
}

/// What every function gets: connected clients and the deployment's names. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    /// The NATS client.
    pub client: async_nats::Client,
    /// JetStream over it.
    pub js: jetstream::Context,
    /// Subject, stream and bucket names.
    pub names: Names,
    /// The job store.
    pub store: jetrun_nats::JobStore,
    /// This process's worker id: `host:pid:start-time`.
    pub worker_id: String,
    /// This node's id (the host name unless configured).
    pub node_id: String,
}

/// Setting up a [`Context`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// NATS could not be reached.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        #[source]
        source: jetrun_nats::ConnectError,
    },
    /// The buckets are missing: run `jetrun init`.
    #[error("job store unavailable ({0}); has `jetrun init` run against this server?")]
    Store(#[source] jetrun_nats::StoreError),
}

impl Context {
    /// Connects to `url` and opens the store of deployment `names`.
    pub async fn connect(url: &str, names: Names, client_name: &str) -> Result<Self, ContextError> {
        let client = jetrun_nats::connect(url, client_name, Duration::from_secs(10))
            .await
            .map_err(|e| ContextError::Connect {
                url: url.to_string(),
                source: e,
            })?;
        Self::from_client(client, names).await
    }

    /// Wraps an existing client.
    pub async fn from_client(client: async_nats::Client, names: Names) -> Result<Self, ContextError> {
        let js = jetstream::new(client.clone());
        let host = hostname();
        let store = jetrun_nats::JobStore::open(&js, &names, &format!("/jetrun/{host}"))
            .await
            .map_err(ContextError::Store)?;
        Ok(Self {
            client,
            js,
            names,
            store,
            worker_id: format!(
                "{host}:{}:{}",
                std::process::id(),
                jetrun_core::now().timestamp_millis()
            ),
            node_id: std::env::var("JETRUN_NODE_ID").unwrap_or(host),
        })
    }

    /// An event publisher with `ce-source: /jetrun/<component>`.
    pub fn publisher(&self, component: &str) -> EventPublisher {
        EventPublisher::new(self.js.clone(), format!("/jetrun/{component}"))
    }
}

/// This machine's host name (from `/etc/hostname` or `$HOSTNAME`), or `localhost`.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .map(|h| {
            h.replace(
                |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "-",
            )
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// Reads the gauges a scrape shows from NATS — each queue's dispatch consumer
/// (`num_pending`, `num_ack_pending`, the age of its oldest submission), the
/// autoscaler's desired and current replicas per service, the connection state — into
/// [`jetrun_telemetry::metrics`]. At most once a second per process: a scrape within a
/// second of the last one reuses its figures. Failures leave the previous figures.
pub async fn refresh_metrics(ctx: &Context) {
    use std::sync::Mutex;
    static LAST: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    {
        let Ok(mut last) = LAST.lock() else { return };
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(std::time::Instant::now());
    }
    jetrun_telemetry::metrics::set_nats_connected(
        ctx.client.connection_state() == async_nats::connection::State::Connected,
    );
    let read = async {
        let stream = ctx.js.get_stream(ctx.names.stream_jobs()).await.ok()?;
        // The queues are the dispatch consumers, listed with their figures in one paged
        // request: a scrape costs O(queues), not O(jobs in the index).
        let mut consumers = stream.consumers();
        let mut depths = Vec::new();
        while let Some(info) = consumers.next().await {
            let info = info.ok()?;
            let Some(q) = ctx.names.queue_of_consumer(&info.name) else {
                continue;
            };
            let q = q.to_string();
            let oldest = match stream
                .direct_get_first_for_subject(ctx.names.job_submit(&q))
                .await
            {
                Ok(m) => m
                    .headers
                    .get(jetrun_core::envelope::H_TIME)
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.as_str()).ok())
                    .map(|t| {
                        (jetrun_core::now() - t.with_timezone(&chrono::Utc))
                            .num_milliseconds()
                            .max(0) as f64
                            / 1000.0
                    }),
                Err(_) => None,
            };
            depths.push(jetrun_telemetry::metrics::QueueDepth {
                queue: q,
                pending: info.num_pending,
                ack_pending: info.num_ack_pending as u64,
                oldest_age_seconds: oldest,
            });
        }
        Some(depths)
    };
    if let Some(d) = read.await {
        jetrun_telemetry::metrics::set_queue_depths(&d);
    }
    let scale = async {
        let kv = ctx.js.get_key_value(ctx.names.bucket_scale()).await.ok()?;
        let mut keys = kv.keys().await.ok()?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let Ok(k) = k else { continue };
            if !k.starts_with("state.") {
                continue;
            }
            if let Ok(Some(v)) = kv.get(&k).await
                && let Ok(s) = serde_json::from_slice::<jetrun_core::scale::ScaleState>(&v)
            {
                out.push((s.service, u64::from(s.desired), u64::from(s.current)));
            }
        }
        Some(out)
    };
    if let Some(s) = scale.await {
        jetrun_telemetry::metrics::set_autoscale(&s);
    }
}
