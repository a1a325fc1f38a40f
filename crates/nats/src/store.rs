//! The job store over JetStream KV.
//!
//! - **Admit**: `create` (create-if-absent) of the record under its id; a duplicate finds
//!   the existing job and reports it.
//! - **Transitions**: the core state machine decides; the store writes with the record's
//!   revision as the expected last sequence (compare-and-set). A lost race is a normal,
//!   typed outcome ([`StoreErrorKind::Conflict`]), and [`JobStore::transition`] re-reads
//!   and re-applies until the transition either lands or becomes illegal.
//! - **Index**: `<queue>.active.<job_id>` while a job is not terminal, then
//!   `<queue>.<terminal status>.<job_id>`. Listing reads subjects of the index bucket's
//!   stream by filter, so it touches the active jobs of one queue (or the terminal jobs of
//!   one status), never every job ever run. The record stays authoritative: a stale index
//!   entry (a crash between the record write and the index write) is repaired when seen.
//! - **Events**: every committed transition is published on
//!   `<prefix>.job.event.<queue>.<job_id>` with `Nats-Msg-Id = <job_id>.<revision>`.
//! - **Leases**: one key per running job in a bucket with per-key TTL and limit markers.
//!   A renewed lease keeps the key alive; a dead worker's lease expires and the server
//!   writes a marker, which [`JobStore::lease_expiries`] delivers as an event.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use jetrun_core::job::{Transition, TransitionError};
use jetrun_core::schema::types;
use jetrun_core::{JobRecord, JobStatus, Names};
use serde::{Deserialize, Serialize};

use crate::events::EventPublisher;

/// What went wrong in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// No such job.
    NotFound,
    /// Another writer changed the record first (expected revision did not match).
    Conflict,
    /// The state machine refused the transition.
    Transition(jetrun_core::job::TransitionErrorKind),
    /// A stored record could not be decoded.
    Corrupt,
    /// An id or key is not valid.
    InvalidKey,
    /// JetStream is unavailable or timed out: retry later.
    Unavailable,
    /// JetStream refused a write for lack of space (insufficient resources, a stream's
    /// or the account's maximum bytes): retry after space is freed or added.
    StoreFull,
}

/// The cause of a store or publish failure (the client's typed error, when there is one).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", kind_prefix(kind))]
pub struct StoreError {
    /// What kind of failure.
    pub kind: StoreErrorKind,
    /// Details. For a JetStream failure this is the cause's own text (callers and
    /// [`is_store_full`] match on it); the typed cause is [`StoreError::source`].
    pub message: String,
    /// The refused transition, for [`StoreErrorKind::Transition`].
    pub transition: Option<TransitionError>,
    /// What failed underneath (a JetStream client error, a decode error), if anything.
    #[source]
    pub source: Option<Cause>,
}

impl StoreError {
    /// An error of `kind` with no underlying cause.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            transition: None,
            source: None,
        }
    }
    /// An error of `kind` caused by `source` (its text is the message).
    fn caused(kind: StoreErrorKind, source: impl Into<Cause>) -> Self {
        let source = source.into();
        Self {
            kind,
            message: source.to_string(),
            transition: None,
            source: Some(source),
        }
    }
    /// A failure of JetStream: [`StoreErrorKind::StoreFull`] when it says it is out of
    /// space, else [`StoreErrorKind::Unavailable`]. The client's error is kept as the
    /// source.
    fn unavailable(e: impl Into<Cause>) -> Self {
        let source = e.into();
        let kind = if is_store_full(&source.to_string()) {
            StoreErrorKind::StoreFull
        } else {
            StoreErrorKind::Unavailable
        };
        Self::caused(kind, source)
    }
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            StoreErrorKind::Unavailable | StoreErrorKind::Conflict | StoreErrorKind::StoreFull
        )
    }
}

/// Whether a JetStream error message says the store is out of space: the server's
/// "insufficient resources" (10023), "insufficient storage resources available"
/// (10047), "maximum bytes exceeded" (a stream's `max_bytes` with discard new) and
/// "resource limits exceeded for account". Matched on the text: the client wraps the
/// server's code differently for publishes, KV writes and API requests.
pub fn is_store_full(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "insufficient resources",
        "insufficient storage",
        "insufficient memory",
        "maximum bytes exceeded",
        "resource limits exceeded",
        "no space left",
        "store full",
        "err_code=10023",
        "err_code=10047",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// How old an index entry naming no record must be before a listing drops it. Admission
/// writes the index entry first and the record right after, so a younger entry may name
/// a record being created.
const DANGLING_INDEX_GRACE: Duration = Duration::from_secs(60);

fn kind_prefix(kind: &StoreErrorKind) -> String {
    match kind {
        StoreErrorKind::StoreFull => "job store full (JetStream has no space for this write: free space, \
             raise the server's max_file_store or the stream's max_bytes, then retry): "
            .to_string(),
        StoreErrorKind::Unavailable => "job store unavailable (retry later): ".to_string(),
        other => format!("job store: {other:?}: "),
    }
}

/// How long an idempotent read keeps retrying while JetStream is briefly unreachable.
/// Measured on a 3-node cluster after killing one node: a request in flight on the
/// killed node's connection is lost (the client reconnects in ~0.1 s, but the request
/// only times out), and when the stream leader dies direct gets answer "no responders"
/// for ~1.5 s until a new leader is elected. Seconds, not minutes: callers above have
/// their own retry with backoff.
const READ_RETRY_FOR: Duration = Duration::from_secs(10);

/// Runs an idempotent read, retrying transient failures ("no responders", timeouts)
/// with exponential backoff for up to [`READ_RETRY_FOR`]. Each attempt gets its own
/// timeout (1 s, doubling to 4 s) so a request lost with a dead connection is retried
/// well before JetStream's 5 s request timeout. Writes are not retried here: a
/// compare-and-set retried after an unknown outcome would misreport a conflict.
async fn read_with_retry<T, E, F, Fut>(mut read: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Into<Cause>,
{
    let deadline = tokio::time::Instant::now() + READ_RETRY_FOR;
    let mut delay = Duration::from_millis(25);
    let mut attempt_timeout = Duration::from_secs(1);
    loop {
        let error: Cause = match tokio::time::timeout(attempt_timeout, read()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.into(),
            Err(_) => format!("no answer within {} ms", attempt_timeout.as_millis()).into(),
        };
        let now = tokio::time::Instant::now();
        if now + delay >= deadline {
            return Err(StoreError::unavailable(error));
        }
        tracing::debug!(%error, retry_in_ms = delay.as_millis() as u64, "read failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(800));
        attempt_timeout = (attempt_timeout * 2).min(Duration::from_secs(4));
    }
}

/// Whether a write's error proves the write was not applied: no stream leader took the
/// request ("no responders", which the client reports as "no stream found for given
/// subject"), as during a leader election. Only such writes are retried inside the store;
/// a timed-out compare-and-set may have committed (decision 14).
fn not_applied(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("no stream found for given subject") || m.contains("no responders")
}

/// Runs a write, retrying for up to [`READ_RETRY_FOR`] while its error proves it was not
/// applied ([`not_applied`]), so a stream leader's election (4–8 s after its node dies)
/// costs a delay, not a failed lease, claim or job.
async fn write_with_retry<T, E, F, Fut>(mut write: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + READ_RETRY_FOR;
    let mut delay = Duration::from_millis(25);
    loop {
        match write().await {
            Err(e) if not_applied(&e.to_string()) && tokio::time::Instant::now() + delay < deadline => {
                tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "write not applied (no stream leader); retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(800));
            }
            other => return other,
        }
    }
}

impl From<TransitionError> for StoreError {
    fn from(e: TransitionError) -> Self {
        Self {
            kind: StoreErrorKind::Transition(e.kind),
            message: e.to_string(),
            transition: Some(e),
            source: None,
        }
    }
}

/// The result of admitting a job.
#[derive(Debug, Clone)]
pub enum Admission {
    /// A new job was stored at this revision.
    New(JobRecord, u64),
    /// A job with this id already existed: the submission was a duplicate.
    Existing(JobRecord, u64),
}

impl Admission {
    /// The record, new or existing.
    pub fn record(&self) -> &JobRecord {
        match self {
            Admission::New(r, _) | Admission::Existing(r, _) => r,
        }
    }
    /// Its revision.
    pub fn revision(&self) -> u64 {
        match self {
            Admission::New(_, r) | Admission::Existing(_, r) => *r,
        }
    }
}

/// The body of a `dev.jetrun.job.state_changed.v1` event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateChange {
    /// The job.
    pub job_id: String,
    /// Its queue.
    pub queue: String,
    /// The status before (absent on admission).
    pub from: Option<JobStatus>,
    /// The status after.
    pub to: JobStatus,
    /// The attempt.
    pub attempt: u32,
    /// Exit code, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<jetrun_core::JobError>,
    /// When.
    pub at: jetrun_core::Timestamp,
    /// The record after the change. On `<prefix>.job.event.…` its `spec.env` is left
    /// out (watchers do not need it, and it can be large); on the callback subject it is
    /// whole.
    pub record: JobRecord,
}

/// A lease on a job held by a worker (its agent), stored in the leases bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The job.
    pub job_id: String,
    /// The attempt the lease covers.
    pub attempt: u32,
    /// The worker holding it.
    pub worker_id: String,
    /// The node whose agent renews it.
    pub node_id: String,
}

/// The job store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobStore {
    names: Names,
    jobs: kv::Store,
    index: kv::Store,
    index_stream: stream::Stream,
    leases: kv::Store,
    events: EventPublisher,
    publish_events: bool,
}

fn index_key(rec: &JobRecord) -> String {
    let bucket = if rec.status.is_terminal() {
        rec.status.as_str()
    } else {
        "active"
    };
    format!("{}.{}.{}", rec.queue, bucket, rec.id)
}

/// The KV form of a record: its public JSON plus the attempt key, which `JobRecord`'s own
/// serialization leaves out so the API and state-change events never carry it.
#[derive(Serialize)]
struct Stored<'a> {
    #[serde(flatten)]
    rec: &'a JobRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt_key: Option<&'a jetrun_core::task::AttemptKey>,
}

/// The attempt key of a stored record, read on its own (the record itself ignores it).
#[derive(Deserialize)]
struct StoredKey {
    #[serde(default)]
    attempt_key: Option<jetrun_core::task::AttemptKey>,
}

fn encode(rec: &JobRecord) -> Result<Bytes, StoreError> {
    let stored = Stored {
        rec,
        attempt_key: rec.attempt_key.as_ref(),
    };
    serde_json::to_vec(&stored)
        .map(Bytes::from)
        .map_err(|e| StoreError::caused(StoreErrorKind::Corrupt, e))
}

fn decode(id: &str, b: &[u8]) -> Result<JobRecord, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError {
        message: format!("job {id}: {e}"),
        ..StoreError::caused(StoreErrorKind::Corrupt, e)
    };
    let mut rec: JobRecord = serde_json::from_slice(b).map_err(corrupt)?;
    rec.attempt_key = serde_json::from_slice::<StoredKey>(b)
        .map_err(corrupt)?
        .attempt_key;
    Ok(rec)
}

impl JobStore {
    /// Opens the store's buckets (created by `jetrun init`).
    pub async fn open(js: &jetstream::Context, names: &Names, source: &str) -> Result<Self, StoreError> {
        let jobs = js
            .get_key_value(names.bucket_jobs())
            .await
            .map_err(StoreError::unavailable)?;
        let index = js
            .get_key_value(names.bucket_index())
            .await
            .map_err(StoreError::unavailable)?;
        let index_stream = js
            .get_stream(format!("KV_{}", names.bucket_index()))
            .await
            .map_err(StoreError::unavailable)?;
        let leases = js
            .get_key_value(names.bucket_leases())
            .await
            .map_err(StoreError::unavailable)?;
        Ok(Self {
            names: names.clone(),
            jobs,
            index,
            index_stream,
            leases,
            events: EventPublisher::new(js.clone(), source),
            publish_events: true,
        })
    }

    /// Turns state-change events off (for benchmarks that measure the store alone).
    pub fn without_events(mut self) -> Self {
        self.publish_events = false;
        self
    }

    /// The names this store uses.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Admits a job: stores it if no job has its id, else reports the existing one.
    ///
    /// The index entry (`<queue>.active.<id>`) is sent **before** the record, on the same
    /// connection and without waiting for its answer (one round trip for both): the
    /// server receives the entry first, so a caller that dies right after still leaves
    /// every stored record listed and reachable by dispatch's reconcile. Admission only
    /// succeeds once both are stored; if the server refused the entry but stored the
    /// record, the entry is written again before anything is reported, and an error
    /// (the caller retries; a retry finds the job and writes its entry) if it still
    /// cannot be. If the record's create fails, the entry names no record: listings
    /// ignore it, and drop it once older than a minute.
    pub async fn admit(&self, rec: JobRecord) -> Result<Admission, StoreError> {
        if !jetrun_core::job::valid_job_id(&rec.id) {
            return Err(StoreError::new(
                StoreErrorKind::InvalidKey,
                format!("invalid job id {:?}", rec.id),
            ));
        }
        let key = index_key(&rec);
        let body = encode(&rec)?;
        let index_put = || write_with_retry(|| self.index.put(&key, Bytes::new()));
        // `join!` polls the entry's put first: it is on the wire before the create.
        let (indexed, created) = tokio::join!(
            index_put(),
            write_with_retry(|| self.jobs.create(&rec.id, body.clone()))
        );
        let indexed = match (&indexed, &created) {
            // Refused while the record was stored: one more try, the record must be listed.
            (Err(_), Ok(_)) => index_put().await,
            _ => indexed,
        };
        match (created, indexed) {
            (Ok(rev), Ok(_)) => {
                self.after_commit(None, &rec, rev).await?;
                Ok(Admission::New(rec, rev))
            }
            // Stored but not listed: not admitted; the caller's retry writes the entry.
            (Ok(_), Err(e)) => Err(StoreError::unavailable(e)),
            (Err(e), Ok(_)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let (existing, rev) = self.get(&rec.id).await?.ok_or_else(|| {
                    StoreError::new(StoreErrorKind::Conflict, "job vanished during admission")
                })?;
                if index_key(&existing) != key {
                    // A duplicate of a job that has moved on: take back the entry just
                    // written (its own entry is already there).
                    self.purge_index_key(&key).await?;
                }
                Ok(Admission::Existing(existing, rev))
            }
            (Err(e), Ok(_)) => Err(StoreError::unavailable(e)),
            // The entry first: a refused entry is the reason to retry either way.
            (Err(_), Err(e)) => Err(StoreError::unavailable(e)),
        }
    }

    /// Whether the jobs bucket can take writes, without writing (a reader such as ingest
    /// may not): its stream answers (so it has a leader), and it is not at its
    /// `max_bytes`. [`StoreErrorKind::StoreFull`] or [`StoreErrorKind::Unavailable`].
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        let mut stream = self
            .events
            .jetstream()
            .get_stream(format!("KV_{}", self.names.bucket_jobs()))
            .await
            .map_err(StoreError::unavailable)?;
        let info = stream.info().await.map_err(StoreError::unavailable)?;
        if let Some(c) = &info.cluster
            && c.leader.is_none()
        {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("bucket {}: no stream leader", self.names.bucket_jobs()),
            ));
        }
        let max = info.config.max_bytes;
        if max > 0 && info.state.bytes >= max as u64 {
            return Err(StoreError::new(
                StoreErrorKind::StoreFull,
                format!(
                    "bucket {}: {} of {max} bytes used (maximum bytes exceeded)",
                    self.names.bucket_jobs(),
                    info.state.bytes
                ),
            ));
        }
        Ok(())
    }

    /// The record and its revision, if the job exists.
    pub async fn get(&self, id: &str) -> Result<Option<(JobRecord, u64)>, StoreError> {
        if !jetrun_core::job::valid_job_id(id) {
            return Err(StoreError::new(
                StoreErrorKind::InvalidKey,
                format!("invalid job id {id:?}"),
            ));
        }
        let entry = read_with_retry(|| self.jobs.entry(id)).await?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => Ok(Some((decode(id, &e.value)?, e.revision))),
            _ => Ok(None),
        }
    }

    /// Applies `t` to the record at `revision` with one compare-and-set. Fails with
    /// [`StoreErrorKind::Conflict`] if another writer got there first.
    pub async fn transition_at(
        &self,
        current: &JobRecord,
        revision: u64,
        t: &Transition,
    ) -> Result<(JobRecord, u64), StoreError> {
        let next = current.apply(t, jetrun_core::now())?;
        let body = encode(&next)?;
        match write_with_retry(|| self.jobs.update(&current.id, body.clone(), revision)).await {
            Ok(rev) => {
                self.after_commit(Some(current), &next, rev).await?;
                Ok((next, rev))
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(StoreError::new(
                StoreErrorKind::Conflict,
                format!("job {} changed since revision {revision}", current.id),
            )),
            Err(e) => Err(StoreError::unavailable(e)),
        }
    }

    /// Applies `t` to the current record, re-reading and re-applying after lost races
    /// until it lands or the state machine refuses it.
    pub async fn transition(&self, id: &str, t: &Transition) -> Result<(JobRecord, u64), StoreError> {
        loop {
            let (rec, rev) = self
                .get(id)
                .await?
                .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound, format!("no job {id}")))?;
            match self.transition_at(&rec, rev, t).await {
                Err(e) if e.kind == StoreErrorKind::Conflict => continue,
                other => return other,
            }
        }
    }

    /// Index and event after a committed write. The record is already durable; if this
    /// fails the index is repaired on read and watchers can re-read the record.
    async fn after_commit(
        &self,
        before: Option<&JobRecord>,
        after: &JobRecord,
        rev: u64,
    ) -> Result<(), StoreError> {
        let new_key = index_key(after);
        let old_key = before.map(index_key).filter(|k| *k != new_key);
        let index_put = async {
            // On admission (`before` is none) the entry was written before the record.
            if old_key.is_some() {
                self.index
                    .put(&new_key, Bytes::new())
                    .await
                    .map_err(StoreError::unavailable)?;
            }
            Ok::<_, StoreError>(())
        };
        let index_del = async {
            if let Some(k) = &old_key {
                self.purge_index_key(k).await?;
            }
            Ok::<_, StoreError>(())
        };
        let event = async {
            if self.publish_events {
                let change = StateChange {
                    job_id: after.id.clone(),
                    queue: after.queue.clone(),
                    from: before.map(|b| b.status),
                    to: after.status,
                    attempt: after.attempt,
                    exit_code: after.exit_code,
                    error: after.error.clone(),
                    at: after.updated_at,
                    record: after.clone(),
                };
                let env = self
                    .events
                    .envelope(types::JOB_STATE_CHANGED)
                    .with_id(format!("{}.{rev}", after.id))
                    .with_subject(after.id.clone())
                    .with_trace(after.traceparent.clone(), None);
                let to_body = |c: &StateChange| {
                    serde_json::to_vec(c)
                        .map(Bytes::from)
                        .map_err(|e| StoreError::caused(StoreErrorKind::Corrupt, e))
                };
                // A job that asked for a callback also gets its terminal change on the
                // callback subject, and that one must be stored before we return: it is
                // the only trigger of the callback. (Its own message id: the stream would
                // drop a second message with the event's id as a duplicate.)
                if after.status.is_terminal() && after.spec.callback.is_some() {
                    let cb_env = env.clone().with_id(format!("{}.{rev}.callback", after.id));
                    self.events
                        .send_raw(
                            self.names.job_callback(&after.queue, &after.id),
                            &cb_env,
                            to_body(&change)?,
                        )
                        .await
                        .map_err(StoreError::unavailable)?
                        .await
                        .map_err(StoreError::unavailable)?;
                }
                // Watchers get the record without the spec's environment: a large env
                // (16 KB) would make every transition that large and fill the events
                // stream (and env values may be secrets). The callback copy above keeps
                // the whole record: receivers and settle read it.
                let mut slim = change;
                slim.record.spec.env.clear();
                // In the span of the hop that made the transition, without a span of its
                // own (decision 46); the callback copy above is a hop and keeps one.
                let ack = self
                    .events
                    .notify_raw(
                        self.names.job_event(&after.queue, &after.id),
                        &env,
                        to_body(&slim)?,
                    )
                    .await
                    .map_err(StoreError::unavailable)?;
                // The record is already committed and authoritative; the event is a
                // notification. Its ack is awaited off the caller's path (a failure is
                // logged: watchers that must not miss a change read the KV bucket).
                let job_id = after.id.clone();
                tokio::spawn(async move {
                    if let Err(e) = ack.await {
                        tracing::warn!(job_id = %job_id, error = %e, "state-change event not acknowledged");
                    }
                });
            }
            Ok::<_, StoreError>(())
        };
        let (a, b, c) = tokio::join!(index_put, index_del, event);
        a.and(b).and(c)
    }

    /// Moves a stale index entry to `fresh` (or drops it), for a listing, in the
    /// background: a reader's credential (ingest) may not write the index, and a refused
    /// write is only noticed by a timeout, which must not hold up the listing. A failure
    /// is logged; the record stays authoritative and the lifecycle repairs the entry when
    /// it lists.
    async fn repair_index(&self, fresh: Option<&str>, stale: &str) {
        let (this, fresh, stale) = (self.clone(), fresh.map(str::to_string), stale.to_string());
        tokio::spawn(async move {
            let res = async {
                if let Some(f) = &fresh {
                    this.index
                        .put(f, Bytes::new())
                        .await
                        .map_err(StoreError::unavailable)?;
                }
                this.purge_index_key(&stale).await
            }
            .await;
            if let Err(e) = res {
                tracing::debug!(key = %stale, error = %e, "stale index entry not repaired");
            }
        });
    }

    /// Drops an index entry that names no record, unless it is young enough to belong to
    /// an admission in progress (entry first, record right after).
    async fn drop_dangling(&self, key: &str) {
        let old = match self.index.entry(key).await {
            Ok(Some(e)) => {
                let age = chrono::Utc::now().timestamp() - e.created.unix_timestamp();
                age > DANGLING_INDEX_GRACE.as_secs() as i64
            }
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(key, error = %e, "index entry not read");
                false
            }
        };
        if old {
            self.repair_index(None, key).await;
        }
    }

    async fn purge_index_key(&self, key: &str) -> Result<(), StoreError> {
        // A subject purge leaves no delete marker, so the index stream's subject count
        // is exactly the number of live entries.
        self.index_stream
            .purge()
            .filter(format!("$KV.{}.{key}", self.names.bucket_index()))
            .await
            .map(|_| ())
            .map_err(StoreError::unavailable)
    }

    async fn index_ids(&self, queue: &str, group: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("$KV.{}.{queue}.{group}.", self.names.bucket_index());
        let mut subjects = self
            .index_stream
            .info_with_subjects(format!("{prefix}*"))
            .await
            .map_err(StoreError::unavailable)?;
        let mut ids = Vec::new();
        while let Some(s) = subjects.next().await {
            let (subject, _) = s.map_err(StoreError::unavailable)?;
            if let Some(id) = subject.strip_prefix(&prefix) {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }

    /// Queues that have jobs in the index.
    pub async fn queues(&self) -> Result<Vec<String>, StoreError> {
        let prefix = format!("$KV.{}.", self.names.bucket_index());
        let mut subjects = self
            .index_stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(StoreError::unavailable)?;
        let mut queues = std::collections::BTreeSet::new();
        while let Some(s) = subjects.next().await {
            let (subject, _) = s.map_err(StoreError::unavailable)?;
            if let Some(q) = subject.strip_prefix(&prefix).and_then(|r| r.split('.').next()) {
                queues.insert(q.to_string());
            }
        }
        Ok(queues.into_iter().collect())
    }

    /// Jobs of `queue` with `status`, newest first, at most `limit`. Reads only the
    /// queue's active jobs (for non-terminal statuses) or that terminal status's entries.
    pub async fn list(
        &self,
        queue: &str,
        status: Option<JobStatus>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let groups: Vec<&str> = match status {
            Some(s) if s.is_terminal() => vec![s.as_str()],
            Some(_) => vec!["active"],
            None => {
                let mut g = vec!["active"];
                g.extend(
                    JobStatus::ALL
                        .iter()
                        .filter(|s| s.is_terminal())
                        .map(|s| s.as_str()),
                );
                g
            }
        };
        let mut out = Vec::new();
        for group in groups {
            let mut ids = self.index_ids(queue, group).await?;
            // uuid v7 ids sort by creation time; newest first.
            ids.sort_unstable_by(|a, b| b.cmp(a));
            let reads = futures::stream::iter(ids)
                .map(|id| async move { (id.clone(), self.get(&id).await) })
                .buffered(32);
            futures::pin_mut!(reads);
            while let Some((id, r)) = reads.next().await {
                match r? {
                    Some((rec, _)) => {
                        let fresh = index_key(&rec);
                        let stale = format!("{queue}.{group}.{id}");
                        if fresh != stale {
                            // Repair: the record moved on after a crash before the index write.
                            // Best effort: readers without write access (ingest) still list.
                            self.repair_index(Some(&fresh), &stale).await;
                        }
                        if status.is_none_or(|s| s == rec.status) && rec.queue == queue {
                            out.push(rec);
                        }
                    }
                    None => self.drop_dangling(&format!("{queue}.{group}.{id}")).await,
                }
                if out.len() >= limit {
                    break;
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Number of index entries per group (`active` and each terminal status) of `queue`,
    /// from stream metadata alone.
    pub async fn counts(&self, queue: &str) -> Result<std::collections::BTreeMap<String, usize>, StoreError> {
        let prefix = format!("$KV.{}.{queue}.", self.names.bucket_index());
        let mut subjects = self
            .index_stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(StoreError::unavailable)?;
        let mut counts = std::collections::BTreeMap::new();
        while let Some(s) = subjects.next().await {
            let (subject, _) = s.map_err(StoreError::unavailable)?;
            if let Some(group) = subject.strip_prefix(&prefix).and_then(|r| r.split('.').next()) {
                *counts.entry(group.to_string()).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    // ---- leases ----

    /// Takes the lease of `lease.job_id` for `ttl` (whole seconds, at least 1).
    /// Fails with `Conflict` if someone else holds it.
    pub async fn acquire_lease(&self, lease: &Lease, ttl: Duration) -> Result<u64, StoreError> {
        // Not `kv::Store::create_with_ttl`: over a delete or expiry marker (a released or
        // expired lease of an earlier attempt) it falls back to a write without TTL, and
        // such a lease would never expire. Every write here carries the TTL.
        match self.write_lease(lease, 0, ttl).await {
            Err(e) if e.kind == StoreErrorKind::Conflict => {}
            other => return other,
        }
        match self
            .leases
            .entry(&lease.job_id)
            .await
            .map_err(StoreError::unavailable)?
        {
            Some(e) if e.operation != kv::Operation::Put => self.write_lease(lease, e.revision, ttl).await,
            Some(_) => Err(StoreError::new(
                StoreErrorKind::Conflict,
                format!("lease of {} is held", lease.job_id),
            )),
            // Expired between the two calls: take it from scratch.
            None => self.write_lease(lease, 0, ttl).await,
        }
    }

    /// Renews a held lease (compare-and-set on its revision), restarting its TTL.
    pub async fn renew_lease(&self, lease: &Lease, revision: u64, ttl: Duration) -> Result<u64, StoreError> {
        self.write_lease(lease, revision, ttl).await
    }

    /// Writes a lease with a per-message TTL, expecting `revision` as the key's last
    /// sequence (0: the key has no message).
    async fn write_lease(&self, lease: &Lease, revision: u64, ttl: Duration) -> Result<u64, StoreError> {
        let body = serde_json::to_vec(lease).map_err(|e| StoreError::caused(StoreErrorKind::Corrupt, e))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            revision.to_string().as_str(),
        );
        headers.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            format!("{}s", ttl_secs(ttl).as_secs()).as_str(),
        );
        let subject = format!("$KV.{}.{}", self.names.bucket_leases(), lease.job_id);
        let body = Bytes::from(body);
        let published = write_with_retry(|| async {
            self.events
                .jetstream()
                .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                .await?
                .await
        })
        .await;
        match published {
            Ok(a) => Ok(a.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(StoreError::new(
                    StoreErrorKind::Conflict,
                    format!("lease of {} is held or changed", lease.job_id),
                ))
            }
            Err(e) => Err(StoreError::unavailable(e)),
        }
    }

    /// The current lease of a job, with its revision.
    pub async fn lease(&self, job_id: &str) -> Result<Option<(Lease, u64)>, StoreError> {
        match read_with_retry(|| self.leases.entry(job_id)).await? {
            Some(e) if e.operation == kv::Operation::Put => {
                let l = serde_json::from_slice(&e.value)
                    .map_err(|e| StoreError::caused(StoreErrorKind::Corrupt, e))?;
                Ok(Some((l, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Releases a lease (the task ended normally). Not an expiry.
    pub async fn release_lease(&self, job_id: &str) -> Result<(), StoreError> {
        self.leases.delete(job_id).await.map_err(StoreError::unavailable)
    }

    /// Releases the lease only if it is still the one written at `revision` (a lease
    /// taken for a claim that then lost must not delete the winner's).
    /// [`StoreErrorKind::Conflict`] if it changed.
    pub async fn release_lease_at(&self, job_id: &str, revision: u64) -> Result<(), StoreError> {
        match self.leases.delete_expect_revision(job_id, Some(revision)).await {
            Ok(()) => Ok(()),
            Err(e) if e.to_string().to_ascii_lowercase().contains("wrong last sequence") => Err(StoreError {
                kind: StoreErrorKind::Conflict,
                ..StoreError::unavailable(e)
            }),
            Err(e) => Err(StoreError::unavailable(e)),
        }
    }

    /// Every lease expiry from now on, as the job id whose lease ran out. Releases
    /// (deletes) are not expiries and are not reported.
    pub async fn lease_expiries(&self) -> Result<impl Stream<Item = String> + Send + 'static, StoreError> {
        let watch = self.leases.watch_all().await.map_err(StoreError::unavailable)?;
        Ok(watch.filter_map(|e| async move {
            match e {
                Ok(e) if e.operation == kv::Operation::Purge => Some(e.key),
                _ => None,
            }
        }))
    }

    /// Every lease key currently held (for reconciling after missed events).
    pub async fn lease_keys(&self) -> Result<Vec<String>, StoreError> {
        let keys = self.leases.keys().await.map_err(StoreError::unavailable)?;
        Ok(keys
            .filter_map(|k| async move { k.ok() })
            .collect::<Vec<_>>()
            .await)
    }
}

fn ttl_secs(ttl: Duration) -> Duration {
    Duration::from_secs(ttl.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_read_lost_in_flight_is_retried_before_the_request_timeout() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let got = read_with_retry(|| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    // Lost with a dead connection: never answered.
                    0 => std::future::pending::<Result<u32, String>>().await,
                    // Leader election under way.
                    1 | 2 => Err("503 no responders".to_string()),
                    _ => Ok(7),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // 1 s attempt timeout + 25 + 50 + 100 ms of backoff: far below a 5 s request timeout.
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn store_full_and_not_applied_are_told_from_other_failures() {
        for m in [
            "publish failed: insufficient resources (code 503, error code 10023)",
            "maximum bytes exceeded",
            "insufficient storage resources available",
        ] {
            assert!(is_store_full(m), "{m}");
            assert_eq!(StoreError::unavailable(m).kind, StoreErrorKind::StoreFull);
        }
        for m in [
            "timed out",
            "no stream found for given subject",
            "failed getting entry",
        ] {
            assert!(!is_store_full(m), "{m}");
            assert_eq!(StoreError::unavailable(m).kind, StoreErrorKind::Unavailable);
        }
        assert!(not_applied("no stream found for given subject"));
        assert!(not_applied("503 No Responders"));
        assert!(!not_applied("timed out: didn't receive ack in time"));
        let full = StoreError::unavailable("insufficient resources").to_string();
        assert!(full.starts_with("job store full"), "{full}");
    }

    #[test]
    fn a_jetstream_failure_keeps_its_cause_as_the_source() {
        let e = StoreError::unavailable(std::io::Error::other("connection reset"));
        let src = std::error::Error::source(&e).expect("a source");
        assert!(src.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(e.message, "connection reset");
        // The cause's text is in the message already: the chain does not repeat it.
        assert_eq!(crate::lifecycle::error_chain(&e), e.to_string());
        let p = crate::PublishError::caused(
            crate::PublishErrorKind::Unavailable,
            "s",
            std::io::Error::other("gone"),
        );
        assert!(std::error::Error::source(&p).is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_is_retried_only_while_it_was_surely_not_applied() {
        let calls = AtomicU32::new(0);
        let got: Result<u32, String> = write_with_retry(|| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 | 1 => Err("no stream found for given subject".to_string()),
                    _ => Ok(5),
                }
            }
        })
        .await;
        assert_eq!(got.unwrap(), 5);
        // A timeout may have committed: returned at once, never retried.
        let calls = AtomicU32::new(0);
        let got: Result<u32, String> = write_with_retry(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err("timed out".to_string()) }
        })
        .await;
        assert!(got.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_that_keeps_failing_gives_up_as_unavailable() {
        let started = tokio::time::Instant::now();
        let err = read_with_retry(|| async { Err::<(), _>("503 no responders") })
            .await
            .unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Unavailable);
        assert!(err.is_transient());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(9) && waited <= READ_RETRY_FOR,
            "{waited:?}"
        );
    }
}
