//! CloudEvents over NATS: the envelope in headers, the JSON data in the body.
//!
//! Trace context: every publish gets a producer span (`otel.kind = producer`, the
//! OpenTelemetry messaging attributes) and carries *that* span's W3C context, so the
//! consumer's span is its child and one job is one trace ([`jetrun_telemetry::outgoing`]
//! decides between the current span and the context the envelope names). Incoming
//! headers are read strictly: a `traceparent` that breaks the W3C rules is dropped, the
//! message is still processed and its span starts a new trace.
//!
//! Metrics: the state changes and dead letters published here are counted
//! ([`jetrun_telemetry::metrics`]) by the process that committed them.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use jetrun_core::{Envelope, EnvelopeError, envelope, schema};
use serde::Serialize;
use tracing::Instrument;

/// What went wrong publishing an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The body does not match its type's schema: a producer bug, never retried.
    Invalid,
    /// The body could not be serialised.
    Encode,
    /// JetStream did not acknowledge (unavailable, timed out, no stream): retryable.
    Unavailable,
}

/// Publishing failed.
#[derive(Debug, thiserror::Error)]
#[error("publish {subject}: {kind:?}: {message}")]
pub struct PublishError {
    /// What kind of failure.
    pub kind: PublishErrorKind,
    /// The subject.
    pub subject: String,
    /// Details: the cause's own text (callers and [`crate::store::is_store_full`]
    /// match on it); the typed cause is [`PublishError::source`].
    pub message: String,
    /// What failed underneath (the client's publish error, a schema or encode error).
    #[source]
    pub source: Option<crate::store::Cause>,
}

impl PublishError {
    /// A failure of `kind` publishing on `subject`, caused by `source`.
    pub fn caused(
        kind: PublishErrorKind,
        subject: impl Into<String>,
        source: impl Into<crate::store::Cause>,
    ) -> Self {
        let source = source.into();
        Self {
            kind,
            subject: subject.into(),
            message: source.to_string(),
            source: Some(source),
        }
    }
}

/// Inserts the header `name: value` unless either is not a valid NATS header (async-nats
/// panics on a CR, LF or other control byte in a `&str` it is given): returns whether it
/// was inserted. Every header built from data goes through here.
pub fn insert_header(h: &mut HeaderMap, name: &str, value: &str) -> bool {
    match (
        name.parse::<async_nats::header::HeaderName>(),
        value.parse::<async_nats::HeaderValue>(),
    ) {
        (Ok(n), Ok(v)) => {
            h.insert(n, v);
            true
        }
        _ => false,
    }
}

/// Converts an envelope to NATS headers. Its trace context is replaced by the current
/// span's when that is in the same trace or the envelope has none
/// ([`jetrun_telemetry::outgoing`]).
pub fn to_header_map(env: &Envelope) -> HeaderMap {
    header_map_with(
        env,
        jetrun_telemetry::outgoing(env.traceparent.as_deref(), env.tracestate.as_deref()),
    )
}

/// [`to_header_map`] with the outgoing trace context already decided.
fn header_map_with(env: &Envelope, trace: Option<jetrun_telemetry::TraceContext>) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in env.to_headers() {
        // With a context decided, it replaces the envelope's. Without one (none valid,
        // none current), what the envelope had is passed on (never worse than before):
        // the consumer starts a new trace if it is invalid.
        if trace.is_some() && (k == envelope::H_TRACEPARENT || k == envelope::H_TRACESTATE) {
            continue;
        }
        insert_header(&mut h, &k, &v);
    }
    if let Some(t) = trace {
        insert_header(&mut h, envelope::H_TRACEPARENT, &t.traceparent);
        if let Some(ts) = &t.tracestate {
            insert_header(&mut h, envelope::H_TRACESTATE, ts);
        }
    }
    h
}

/// Reads an envelope from NATS headers. A `traceparent` that breaks the W3C rules
/// (version `ff`, all-zero ids, uppercase hex, wrong length) is dropped with its
/// `tracestate`, and an invalid `tracestate` alone is dropped: the message is read and
/// its span starts a new trace, it is not refused.
pub fn from_header_map(h: &HeaderMap) -> Result<Envelope, EnvelopeError> {
    // Names and values borrowed from the map: a message's headers are read for every
    // delivery, and each lookup used to allocate a string per header it compared.
    let entries: Vec<(&str, Option<&str>)> = h
        .iter()
        .map(|(k, v)| (k.as_ref(), v.first().map(|v| v.as_str())))
        .collect();
    let find = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| *v)
    };
    let raw = |name: &str| find(name).map(str::to_string);
    let tp_ok =
        find(envelope::H_TRACEPARENT).is_some_and(|t| jetrun_telemetry::TraceParent::parse(t).is_some());
    let ts_ok = tp_ok && find(envelope::H_TRACESTATE).is_some_and(jetrun_telemetry::w3c::valid_tracestate);
    Envelope::from_headers(
        |name| {
            if name.eq_ignore_ascii_case(envelope::H_TRACEPARENT) && !tp_ok {
                return None;
            }
            if name.eq_ignore_ascii_case(envelope::H_TRACESTATE) && !ts_ok {
                return None;
            }
            raw(name)
        },
        entries.iter().map(|(k, _)| *k),
    )
}

/// The queue and job id of a subject `<prefix>.job.<kind>.<queue>[.<id>]` or
/// `<prefix>.task.<phase>.<id>`, as far as they can be told from it.
fn job_of_subject(subject: &str) -> (Option<&str>, Option<&str>) {
    let t: Vec<&str> = subject.split('.').collect();
    match t.as_slice() {
        [_, "job", _, queue] => (Some(queue), None),
        [_, "job", _, queue, id, ..] => (Some(queue), Some(id)),
        [_, "task", _, id] => (None, Some(id)),
        _ => (None, None),
    }
}

/// `prefix` and the span name's destination: the subject without its job id (bounded
/// names).
fn destination_template(prefix: &str, subject: &str) -> String {
    let t: Vec<&str> = subject.split('.').collect();
    match t.as_slice() {
        [p, "job", k, q, _, ..] => format!("{prefix}{p}.job.{k}.{q}.{{job_id}}"),
        [p, "task", ph, _] => format!("{prefix}{p}.task.{ph}.{{job_id}}"),
        _ => format!("{prefix}{subject}"),
    }
}

/// The light view of a state-change event the metrics need.
#[derive(serde::Deserialize)]
struct ChangeView {
    queue: String,
    #[serde(default)]
    from: Option<String>,
    to: String,
    #[serde(default)]
    attempt: u32,
    #[serde(default)]
    error: Option<ErrorView>,
    record: RecordView,
}

#[derive(serde::Deserialize)]
struct ErrorView {
    kind: String,
}

#[derive(serde::Deserialize)]
struct RecordView {
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    spec: SpecView,
}

#[derive(serde::Deserialize, Default)]
struct SpecView {
    #[serde(default)]
    tenant: Option<String>,
}

#[derive(serde::Deserialize)]
struct DeadLetterView {
    origin: String,
    reason_kind: String,
}

const TERMINAL: &[&str] = &["succeeded", "failed", "timed_out", "cancelled"];

/// Counts what a published event records (state changes, dead letters) and names the job
/// on `span` (the producer span; for a notification, the current span).
fn observe(span: &tracing::Span, env: &Envelope, body: &[u8]) {
    if env.ty == schema::types::JOB_STATE_CHANGED {
        let Ok(c) = serde_json::from_slice::<ChangeView>(body) else {
            return;
        };
        /// The job's fields are on the span (its first state change put them there).
        #[derive(Default)]
        struct JobFields;
        if jetrun_telemetry::mark_once::<JobFields>(span) {
            span.record("jetrun.queue", c.queue.as_str());
            span.record("jetrun.attempt", i64::from(c.attempt));
            span.record(
                "jetrun.tenant",
                c.record.spec.tenant.as_deref().unwrap_or("default"),
            );
        }
        // The callback copy of a terminal change is the same transition.
        if env.id.ends_with(".callback") {
            return;
        }
        let secs = |a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>| {
            (b - a).num_microseconds().map(|us| us as f64 / 1e6)
        };
        let at = c.record.updated_at;
        let terminal = TERMINAL.contains(&c.to.as_str());
        jetrun_telemetry::metrics::job_transition(&jetrun_telemetry::metrics::Transition {
            queue: &c.queue,
            from: c.from.as_deref(),
            to: &c.to,
            terminal,
            error_kind: c.error.as_ref().map(|e| e.kind.as_str()),
            queue_wait: (c.to == "running")
                .then(|| secs(c.record.created_at, at))
                .flatten(),
            run: if terminal {
                c.record.started_at.and_then(|s| secs(s, at))
            } else {
                None
            },
            end_to_end: terminal.then(|| secs(c.record.created_at, at)).flatten(),
        });
    } else if env.ty == schema::types::DEAD_LETTER
        && let Ok(d) = serde_json::from_slice::<DeadLetterView>(body)
    {
        jetrun_telemetry::metrics::dead_letter(&d.origin, &d.reason_kind);
    }
}

/// Headers as a plain map (first value of each), for dead letters and logs.
pub fn headers_to_map(h: Option<&HeaderMap>) -> std::collections::BTreeMap<String, String> {
    h.map(|h| {
        h.iter()
            .filter_map(|(k, v)| v.first().map(|v| (k.to_string(), v.as_str().to_string())))
            .collect()
    })
    .unwrap_or_default()
}

/// Publishes validated CloudEvents to JetStream and waits for the ack.
#[derive(Debug, Clone)]
pub struct EventPublisher {
    js: jetstream::Context,
    source: String,
}

impl EventPublisher {
    /// A publisher whose events carry `ce-source: source`.
    pub fn new(js: jetstream::Context, source: impl Into<String>) -> Self {
        Self {
            js,
            source: source.into(),
        }
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// A new envelope of `ty` from this publisher's source.
    pub fn envelope(&self, ty: &str) -> Envelope {
        Envelope::new(ty, self.source.clone())
    }

    /// Validates `data` against `env.ty`'s schema, publishes and waits for the ack.
    /// Returns the stream sequence.
    pub async fn publish<T: Serialize>(
        &self,
        subject: String,
        env: &Envelope,
        data: &T,
    ) -> Result<u64, PublishError> {
        let fut = self.send(subject.clone(), env, data).await?;
        let ack = fut
            .await
            .map_err(|e| PublishError::caused(PublishErrorKind::Unavailable, subject.clone(), e))?;
        Ok(ack.sequence)
    }

    /// Validates and sends without waiting for the ack (for pipelining); await the
    /// returned future to know it is stored.
    pub async fn send<T: Serialize>(
        &self,
        subject: String,
        env: &Envelope,
        data: &T,
    ) -> Result<PublishAckFuture, PublishError> {
        let value = serde_json::to_value(data)
            .map_err(|e| PublishError::caused(PublishErrorKind::Encode, subject.clone(), e))?;
        schema::validate_value(&env.ty, &value)
            .map_err(|e| PublishError::caused(PublishErrorKind::Invalid, subject.clone(), e))?;
        let body = serde_json::to_vec(&value)
            .map_err(|e| PublishError::caused(PublishErrorKind::Encode, subject.clone(), e))?;
        self.send_raw(subject, env, Bytes::from(body)).await
    }

    /// Sends an already-validated notification **inside the current span**, without a
    /// producer span of its own: its headers carry the current span's context (the job's,
    /// by the rules of [`to_header_map`]), and its job attributes and metrics are recorded
    /// as [`Self::send_raw`] records them, on the current span when that is in the job's
    /// trace. For the job state changes the store publishes beside every transition: the
    /// span of the hop that made the transition already stands for it, and a job makes
    /// four of them, half its spans (decision 46).
    pub async fn notify_raw(
        &self,
        subject: String,
        env: &Envelope,
        body: Bytes,
    ) -> Result<PublishAckFuture, PublishError> {
        env.validate()
            .map_err(|e| PublishError::caused(PublishErrorKind::Invalid, subject.clone(), e))?;
        // The current span's context, read once: for the check and for the headers.
        let current = jetrun_telemetry::current_context();
        // The job's fields go on the current span unless it is another trace's (a sweep
        // acting for the job: metrics only). With no context to compare (spans not
        // exported) they go on it too, so the logs carry the same fields either way; a
        // span that does not declare them (a sweep's) ignores them.
        let same_trace = match (env.traceparent.as_deref(), &current) {
            (Some(tp), Some(c)) => {
                jetrun_telemetry::TraceParent::parse(tp).is_some_and(|p| p.trace_id == c.trace_id())
            }
            _ => true,
        };
        if same_trace {
            observe(&tracing::Span::current(), env, &body);
        } else {
            observe(&tracing::Span::none(), env, &body);
        }
        let trace =
            jetrun_telemetry::outgoing_from(current, env.traceparent.as_deref(), env.tracestate.as_deref());
        let headers = header_map_with(env, trace);
        self.js
            .publish_with_headers(subject.clone(), headers, body)
            .await
            .map_err(|e| PublishError::caused(PublishErrorKind::Unavailable, subject, e))
    }

    /// Sends an already-validated body.
    pub async fn send_raw(
        &self,
        subject: String,
        env: &Envelope,
        body: Bytes,
    ) -> Result<PublishAckFuture, PublishError> {
        // A value that cannot be a header (CR, LF, NUL, ...) is the producer's error, not a
        // panic deep in the client.
        env.validate()
            .map_err(|e| PublishError::caused(PublishErrorKind::Invalid, subject.clone(), e))?;
        let (queue, job_id) = job_of_subject(&subject);
        let name = destination_template("send ", &subject);
        // Strings as values, not `%`-formatted: the OpenTelemetry layer formats every
        // `Display` value into a new string.
        let span = tracing::info_span!(
            "publish",
            otel.kind = "producer",
            otel.name = name.as_str(),
            messaging.system = "nats",
            messaging.destination.name = subject.as_str(),
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.message.id = env.id.as_str(),
            cloudevents.event_type = env.ty.as_str(),
            jetrun.job_id = tracing::field::Empty,
            jetrun.queue = tracing::field::Empty,
            jetrun.attempt = tracing::field::Empty,
            jetrun.tenant = tracing::field::Empty,
        );
        if let Some(q) = queue {
            span.record("jetrun.queue", q);
        }
        if let Some(id) = job_id.or(env.subject.as_deref()) {
            span.record("jetrun.job_id", id);
        }
        // A background loop publishing for a job of another trace: continue the job's.
        let current = jetrun_telemetry::current_context();
        let current_trace = current.as_ref().map(jetrun_telemetry::TraceContext::trace_id);
        if let Some(t) =
            jetrun_telemetry::outgoing_from(current, env.traceparent.as_deref(), env.tracestate.as_deref())
            && current_trace != Some(t.trace_id())
        {
            jetrun_telemetry::link_remote(&span, Some(&t.traceparent), t.tracestate.as_deref());
        }
        observe(&span, env, &body);
        let js = self.js.clone();
        async move {
            // Inside the producer span: the headers carry its context.
            let headers = to_header_map(env);
            js.publish_with_headers(subject.clone(), headers, body)
                .await
                .map_err(|e| PublishError::caused(PublishErrorKind::Unavailable, subject, e))
        }
        .instrument(span)
        .await
    }
}
