//! Real-time updates over HTTP: job state changes as Server-Sent Events.
//!
//! - `GET /v1/jobs/{id}/events`: one job's transitions, from its admission on (or from
//!   `Last-Event-ID`); the stream ends after the terminal transition.
//! - `GET /v1/events/stream?queue=&status=`: every transition of the caller's jobs (an
//!   operator: every job), from now on (or from `Last-Event-ID`), optionally filtered by
//!   queue and by the status entered (`status=running,succeeded`).
//!
//! Each event is a CloudEvent in JSON (structured mode) whose `data` is the
//! `dev.jetrun.job.state_changed.v1` body; the SSE `id:` is the event's sequence in the
//! `JOB_EVENTS` stream, so a client that reconnects with `Last-Event-ID: N` gets every
//! later transition exactly once (an ordered consumer starting at `N + 1`, within the
//! stream's retention). A `: ping` comment every [`HEARTBEAT`] keeps proxies and the
//! server's idle timeout from closing a quiet stream. A tenant's stream carries only jobs
//! whose spec names that tenant (the record in the event decides, never the subject), and
//! a tenant holds at most [`DEFAULT_STREAMS_PER_TENANT`] streams at once (429 past it).

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use jetrun_core::JobStatus;
use jetrun_nats::store::StateChange;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::{debug, info};

use crate::Ingest;
use crate::auth::OPERATOR_TENANT;
use crate::problem::{Problem, ProblemKind};

/// Interval of the `: ping` heartbeat comments.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// Streams one tenant may hold open at once, unless [`ENV_STREAMS_PER_TENANT`] says
/// otherwise. One more is answered `429 rate-limited`.
pub const DEFAULT_STREAMS_PER_TENANT: usize = 16;
/// Environment variable overriding [`DEFAULT_STREAMS_PER_TENANT`].
pub const ENV_STREAMS_PER_TENANT: &str = "JETRUN_SSE_STREAMS_PER_TENANT";
/// A stream is closed after this long (the client reconnects with `Last-Event-ID` and
/// misses nothing), so no connection is held forever, e.g. across a shutdown.
pub const MAX_STREAM_AGE: Duration = Duration::from_secs(10 * 60);
/// Reconnection delay suggested to clients (`retry:`).
pub const RETRY: Duration = Duration::from_secs(2);
/// The `Last-Event-ID` request header.
pub const H_LAST_EVENT_ID: &str = "last-event-id";

/// Reading the events stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// The ordered consumer could not be created.
    #[error("cannot create a consumer on {stream}: {source}")]
    Consumer {
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The consumer's messages could not be read.
    #[error("cannot read {stream}: {source}")]
    Read {
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the first retained event.
    All,
    /// From events published after the stream opened.
    New,
    /// After this sequence (a client's `Last-Event-ID`).
    After(u64),
}

/// What a stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The caller's tenant (`*`: every job).
    pub tenant: String,
    /// Only this job.
    pub job: Option<String>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only changes into one of these statuses (empty: all).
    pub statuses: Vec<JobStatus>,
}

impl Filter {
    /// Whether `change` belongs on this stream. The tenant is read from the record in the
    /// event, so a subject can never smuggle another tenant's job in.
    pub fn matches(&self, change: &StateChange) -> bool {
        let tenant_ok = self.tenant == OPERATOR_TENANT
            || change.record.spec.tenant.as_deref() == Some(self.tenant.as_str());
        tenant_ok
            && self.job.as_deref().is_none_or(|j| j == change.job_id)
            && self.queue.as_deref().is_none_or(|q| q == change.queue)
            && (self.statuses.is_empty() || self.statuses.contains(&change.to))
    }
}

/// One state change read from the events stream.
#[derive(Debug, Clone)]
pub struct Change {
    /// Its sequence in the `JOB_EVENTS` stream (the SSE `id`).
    pub seq: u64,
    /// The body.
    pub change: StateChange,
    /// The whole CloudEvent in JSON (structured mode).
    pub event: Value,
}

/// Shared state of the live endpoints: the ingest and the open streams per tenant.
#[derive(Debug)]
pub struct Live {
    /// The endpoint.
    pub ingest: Arc<Ingest>,
    max_per_tenant: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream of a tenant; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    live: Arc<Live>,
    tenant: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.live.lock();
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

impl Live {
    /// Live state with the bound from [`ENV_STREAMS_PER_TENANT`] (else the default).
    pub fn new(ingest: Arc<Ingest>) -> Arc<Self> {
        let max = std::env::var(ENV_STREAMS_PER_TENANT)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_STREAMS_PER_TENANT);
        Self::with_limit(ingest, max)
    }

    /// Live state allowing `max_per_tenant` open streams per tenant.
    pub fn with_limit(ingest: Arc<Ingest>, max_per_tenant: usize) -> Arc<Self> {
        Arc::new(Self {
            ingest,
            max_per_tenant: max_per_tenant.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // A counter map cannot be left half-updated by a panic: keep using it.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Streams `tenant` holds open now.
    pub fn open_streams(&self, tenant: &str) -> usize {
        self.lock().get(tenant).copied().unwrap_or(0)
    }

    /// Takes a stream slot of `tenant`, or `429 rate-limited` past the bound.
    pub fn acquire(self: &Arc<Self>, tenant: &str) -> Result<Slot, Problem> {
        let mut open = self.lock();
        let n = open.entry(tenant.to_string()).or_insert(0);
        if *n >= self.max_per_tenant {
            return Err(Problem::new(
                ProblemKind::RateLimited,
                format!(
                    "tenant {tenant} already holds {} event streams (the bound); close one first",
                    self.max_per_tenant
                ),
            )
            .retry_after(5));
        }
        *n += 1;
        Ok(Slot {
            live: self.clone(),
            tenant: tenant.to_string(),
        })
    }
}

/// The sequence a client asks to resume after: `Last-Event-ID` (what `EventSource`
/// sends on reconnect), else the `last_event_id` query parameter.
pub fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Result<Option<u64>, Problem> {
    let raw = match headers.get(H_LAST_EVENT_ID) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Problem::new(ProblemKind::BadHeader, "Last-Event-ID is not ASCII"))?
                .trim()
                .to_string(),
        ),
        None => query.map(|q| q.trim().to_string()),
    };
    match raw.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<u64>().map(Some).map_err(|_| {
            Problem::new(
                ProblemKind::BadHeader,
                "Last-Event-ID must be the id of an event received (a stream sequence)",
            )
        }),
    }
}

/// Refuses a request that does not accept `text/event-stream`.
pub fn require_event_stream(headers: &HeaderMap) -> Result<(), Problem> {
    let ok = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"));
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            ProblemKind::BadHeader,
            "this is a Server-Sent Events stream: send Accept: text/event-stream",
        ))
    }
}

/// Parses `status=running,succeeded`.
pub fn parse_statuses(s: Option<&str>) -> Result<Vec<JobStatus>, Problem> {
    let mut out = Vec::new();
    for part in s
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let st = part
            .parse::<JobStatus>()
            .map_err(|_| Problem::new(ProblemKind::ValidationFailed, format!("unknown status {part:?}")))?;
        out.push(st);
    }
    Ok(out)
}

/// Checks a queue name from a query (it becomes a subject token).
pub fn parse_queue(q: Option<&str>) -> Result<Option<String>, Problem> {
    match q.map(str::trim).filter(|q| !q.is_empty()) {
        None => Ok(None),
        Some(q) if jetrun_core::names::validate_token(q).is_ok() => Ok(Some(q.to_string())),
        Some(q) => Err(Problem::new(
            ProblemKind::ValidationFailed,
            format!("invalid queue name {:?}", q.escape_debug().to_string()),
        )),
    }
}

/// The structured-mode CloudEvent of a stored state change.
fn cloudevent(headers: Option<&async_nats::HeaderMap>, seq: u64, data: Value) -> Value {
    let mut obj = Map::new();
    obj.insert("specversion".into(), Value::String("1.0".into()));
    let mut put = |k: &str, v: &str| {
        obj.insert(k.to_string(), Value::String(v.to_string()));
    };
    if let Some(h) = headers {
        for (name, values) in h.iter() {
            let name = name.to_string().to_ascii_lowercase();
            let Some(v) = values.first() else { continue };
            let v = v.as_str();
            match name.as_str() {
                "traceparent" | "tracestate" => put(&name, v),
                n => {
                    if let Some(attr) = n.strip_prefix("ce-")
                        && attr != "specversion"
                    {
                        put(attr, v);
                    }
                }
            }
        }
    }
    obj.insert("datacontenttype".into(), Value::String("application/json".into()));
    obj.insert("streamseq".into(), Value::String(seq.to_string()));
    obj.insert("data".into(), data);
    Value::Object(obj)
}

/// State changes read from the events stream, in order.
pub type Changes = Pin<Box<dyn Stream<Item = Result<Change, SseError>> + Send>>;

/// Opens an ordered consumer on the job events stream, filtered to `subject`, starting
/// at `start`. Returns the changes and how many stored events are already waiting.
pub async fn changes(ingest: &Ingest, subject: String, start: Start) -> Result<(Changes, u64), SseError> {
    let stream = ingest.ctx.names.stream_job_events();
    // Where the stream starts, as a sequence: nothing at or below it is ever sent, even
    // if the ordered consumer is recreated before its first message (it would then
    // restart from the beginning).
    let floor = match start {
        Start::All => 0,
        Start::After(seq) => seq,
        Start::New => {
            let s = ingest
                .ctx
                .js
                .get_stream(&stream)
                .await
                .map_err(|e| SseError::Consumer {
                    stream: stream.clone(),
                    source: Box::new(e),
                })?;
            s.cached_info().state.last_sequence
        }
    };
    let mut tag = [0u8; 8];
    rand::rng().fill_bytes(&mut tag);
    let config = OrderedConfig {
        name: Some(format!("sse-{}", hex::encode(tag))),
        filter_subject: subject,
        deliver_policy: match start {
            Start::All => DeliverPolicy::All,
            Start::New | Start::After(_) => DeliverPolicy::ByStartSequence {
                start_sequence: floor.saturating_add(1),
            },
        },
        ..Default::default()
    };
    let consumer = ingest
        .ctx
        .js
        .create_consumer_on_stream(config, &stream)
        .await
        .map_err(|e| SseError::Consumer {
            stream: stream.clone(),
            source: Box::new(e),
        })?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer.messages().await.map_err(|e| SseError::Read {
        stream: stream.clone(),
        source: Box::new(e),
    })?;
    let out = messages.filter_map(move |m| {
        let stream = stream.clone();
        async move {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    return Some(Err(SseError::Read {
                        stream,
                        source: Box::new(e),
                    }));
                }
            };
            let seq = m.info().ok()?.stream_sequence;
            if seq <= floor {
                return None;
            }
            let data: Value = match serde_json::from_slice(&m.payload) {
                Ok(v) => v,
                Err(e) => {
                    debug!(seq, error = %e, "undecodable state change skipped");
                    return None;
                }
            };
            let change: StateChange = match serde_json::from_value(data.clone()) {
                Ok(c) => c,
                Err(e) => {
                    debug!(seq, error = %e, "undecodable state change skipped");
                    return None;
                }
            };
            Some(Ok(Change {
                seq,
                event: cloudevent(m.headers.as_ref(), seq, data),
                change,
            }))
        }
    });
    Ok((Box::pin(out), pending))
}

fn unavailable(e: &SseError) -> Problem {
    Problem::unavailable(format!("event stream: {e}"))
}

/// The SSE answer carrying `changes` that pass `filter`. With `end_on_terminal`, the
/// stream ends after the first terminal change (a job's own stream).
pub fn respond(changes: Changes, filter: Filter, slot: Slot, end_on_terminal: bool) -> Response {
    struct St {
        changes: Changes,
        filter: Filter,
        _slot: Slot,
        deadline: tokio::time::Instant,
        first: bool,
        done: bool,
        end_on_terminal: bool,
    }
    let st = St {
        changes,
        filter,
        _slot: slot,
        deadline: tokio::time::Instant::now() + MAX_STREAM_AGE,
        first: true,
        done: false,
        end_on_terminal,
    };
    let events = futures::stream::unfold(st, |mut st| async move {
        if st.first {
            st.first = false;
            return Some((Ok::<_, Infallible>(Event::default().retry(RETRY)), st));
        }
        if st.done {
            return None;
        }
        loop {
            match tokio::time::timeout_at(st.deadline, st.changes.next()).await {
                Err(_) | Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    // The client reconnects with Last-Event-ID and resumes.
                    info!(error = %e, "event stream ended");
                    return None;
                }
                Ok(Some(Ok(c))) => {
                    if !st.filter.matches(&c.change) {
                        continue;
                    }
                    if st.end_on_terminal && c.change.to.is_terminal() {
                        st.done = true;
                    }
                    let data = serde_json::to_string(&c.event).unwrap_or_default();
                    let ev = Event::default().id(c.seq.to_string()).data(data);
                    return Some((Ok(ev), st));
                }
            }
        }
    });
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("ping"))
        .into_response();
    // Proxies (nginx) must not buffer the stream.
    resp.headers_mut()
        .insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    resp
}

/// A stream checked and opened, not yet answered: what SSE ([`respond`]) and the
/// WebSocket endpoint (`ws`) both send.
pub struct Opened {
    /// The changes, from the start asked for.
    pub changes: Changes,
    /// What of them the caller may see and asked for.
    pub filter: Filter,
    /// The tenant's stream slot, held while the stream is open.
    pub slot: Slot,
    /// A job's own stream: it ends after the terminal change.
    pub end_on_terminal: bool,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("filter", &self.filter)
            .field("end_on_terminal", &self.end_on_terminal)
            .finish_non_exhaustive()
    }
}

/// Opens a job's own stream for `tenant`: 404 if the job is not the tenant's; `None`
/// once it is terminal and nothing after `last` is left to send.
pub async fn open_job(
    live: &Arc<Live>,
    tenant: &str,
    id: &str,
    last: Option<u64>,
) -> Result<Option<Opened>, Problem> {
    let ingest = &live.ingest;
    let not_found = || Problem::new(ProblemKind::NotFound, format!("no job {id}"));
    if !jetrun_core::job::valid_job_id(id) {
        return Err(not_found());
    }
    let rec = match ingest.ctx.store.get(id).await {
        Ok(Some((rec, _))) => rec,
        Ok(None) => return Err(not_found()),
        Err(e) => return Err(Problem::unavailable(e.message)),
    };
    if tenant != OPERATOR_TENANT && rec.spec.tenant.as_deref() != Some(tenant) {
        return Err(not_found());
    }
    let slot = live.acquire(tenant)?;
    let start = last.map_or(Start::All, Start::After);
    let subject = ingest.ctx.names.job_event(&rec.queue, &rec.id);
    let (changes, pending) = changes(ingest, subject, start)
        .await
        .map_err(|e| unavailable(&e))?;
    if pending == 0 && rec.status.is_terminal() && last.is_some() {
        return Ok(None);
    }
    let filter = Filter {
        tenant: tenant.to_string(),
        job: Some(rec.id.clone()),
        queue: None,
        statuses: Vec::new(),
    };
    info!(job_id = %id, tenant, ?start, "job event stream opened");
    Ok(Some(Opened {
        changes,
        filter,
        slot,
        end_on_terminal: true,
    }))
}

/// A job's own SSE stream for `tenant`: 404 if the job is not the tenant's, 204 (which
/// tells `EventSource` to stop reconnecting) once it is terminal and nothing after
/// `last` is left to send.
pub async fn job_stream(
    live: &Arc<Live>,
    tenant: &str,
    id: &str,
    last: Option<u64>,
) -> Result<Response, Problem> {
    Ok(match open_job(live, tenant, id, last).await? {
        Some(o) => respond(o.changes, o.filter, o.slot, o.end_on_terminal),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// The query of `GET /v1/events/stream`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamQuery {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only changes into these statuses (comma-separated).
    pub status: Option<String>,
    /// Resume after this sequence (for clients that cannot send `Last-Event-ID`).
    pub last_event_id: Option<String>,
}

/// Opens the tenant's stream of every job (filtered by `q`).
pub async fn open_tenant(
    live: &Arc<Live>,
    tenant: &str,
    q: &StreamQuery,
    last: Option<u64>,
) -> Result<Opened, Problem> {
    let ingest = &live.ingest;
    let queue = parse_queue(q.queue.as_deref())?;
    let statuses = parse_statuses(q.status.as_deref())?;
    let slot = live.acquire(tenant)?;
    let names = &ingest.ctx.names;
    let subject = match &queue {
        Some(q) => format!("{}.job.event.{q}.*", names.prefix()),
        None => names.job_event_all(),
    };
    let start = last.map_or(Start::New, Start::After);
    let (changes, _) = changes(ingest, subject, start)
        .await
        .map_err(|e| unavailable(&e))?;
    let filter = Filter {
        tenant: tenant.to_string(),
        job: None,
        queue,
        statuses,
    };
    info!(tenant, ?start, "event stream opened");
    Ok(Opened {
        changes,
        filter,
        slot,
        end_on_terminal: false,
    })
}

/// The tenant's SSE stream of every job (filtered by `q`).
pub async fn tenant_stream(
    live: &Arc<Live>,
    tenant: &str,
    q: &StreamQuery,
    last: Option<u64>,
) -> Result<Response, Problem> {
    let o = open_tenant(live, tenant, q, last).await?;
    Ok(respond(o.changes, o.filter, o.slot, o.end_on_terminal))
}

/// `GET /v1/jobs/{id}/events`
pub async fn job_events(
    State(live): State<Arc<Live>>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let tenant = crate::api::authenticate(&live.ingest, &headers)?;
    require_event_stream(&headers)?;
    let last = last_event_id(&headers, q.last_event_id.as_deref())?;
    job_stream(&live, &tenant, &id, last).await
}

/// `GET /v1/events/stream?queue=&status=`
pub async fn events_stream(
    State(live): State<Arc<Live>>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let tenant = crate::api::authenticate(&live.ingest, &headers)?;
    require_event_stream(&headers)?;
    let last = last_event_id(&headers, q.last_event_id.as_deref())?;
    tenant_stream(&live, &tenant, &q, last).await
}

/// The SSE routes, with their state.
pub fn routes<S: Clone + Send + Sync + 'static>(live: Arc<Live>) -> axum::Router<S> {
    axum::Router::new()
        .route("/v1/jobs/{id}/events", axum::routing::get(job_events))
        .route("/v1/events/stream", axum::routing::get(events_stream))
        .route("/v1/jobs/{id}/ws", axum::routing::get(crate::ws::job_ws))
        .route("/v1/events/ws", axum::routing::get(crate::ws::events_ws))
        .with_state(live)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn last_event_id_comes_from_the_header_or_the_query() {
        let mut h = HeaderMap::new();
        assert_eq!(last_event_id(&h, None).unwrap(), None);
        assert_eq!(last_event_id(&h, Some("7")).unwrap(), Some(7));
        h.insert(H_LAST_EVENT_ID, "42".parse().unwrap());
        assert_eq!(last_event_id(&h, Some("7")).unwrap(), Some(42));
        h.insert(H_LAST_EVENT_ID, "x".parse().unwrap());
        assert!(last_event_id(&h, None).is_err());
    }

    #[test]
    fn queues_and_statuses_are_checked() {
        assert!(parse_queue(Some(">")).is_err());
        assert!(parse_queue(Some("a.b")).is_err());
        assert_eq!(parse_queue(Some("default")).unwrap().as_deref(), Some("default"));
        assert_eq!(
            parse_statuses(Some("running, succeeded")).unwrap(),
            vec![JobStatus::Running, JobStatus::Succeeded]
        );
        assert!(parse_statuses(Some("nope")).is_err());
    }

    #[test]
    fn accept_must_name_event_streams() {
        let mut h = HeaderMap::new();
        assert!(require_event_stream(&h).is_err());
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        assert!(require_event_stream(&h).is_err());
        h.insert(header::ACCEPT, "text/event-stream".parse().unwrap());
        assert!(require_event_stream(&h).is_ok());
    }
}
