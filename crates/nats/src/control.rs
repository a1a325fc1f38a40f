//! The job-control service: submit and cancel through the lifecycle.
//!
//! The jobs and index buckets belong to the lifecycle (dispatch, settle: the `worker`
//! credential). Ingest and route therefore hold no write permission on them; they ask
//! the lifecycle instead, by NATS request-reply (queue group [`QUEUE_GROUP`]):
//!
//! - `<prefix>.ctl.submit`: body = the job spec JSON, headers [`H_JOB_ID`] (the id the
//!   client chose, so a retry or the fallback below names the same job), `traceparent`
//!   and [`H_SOURCE`]. The service validates, admits and publishes the submission exactly
//!   as [`crate::submit::submit`] does and replies with a [`SubmitReply`].
//! - `<prefix>.ctl.cancel`: body = [`CancelRequest`] `{job_id, tenant}`. The service
//!   checks the record's tenant (the operator `*` may cancel any job) and cancels as
//!   [`cancel`] does; it replies with a [`CancelReply`].
//!
//! When no worker answers (no responders, or a timeout), [`ControlClient::submit`] falls
//! back to publishing the submission durably on `<prefix>.job.submit.<queue>` (dispatch
//! admits on consume, as for any plain NATS producer) and reports `admitted: false`: the
//! autoscaler may hold workers at zero, so submitting must not depend on a running one.
//! Cancelling needs the lifecycle: without a worker it fails as `Unavailable`.

use std::time::Duration;

use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use jetrun_core::job::Transition;
use jetrun_core::schema::{SchemaErrorKind, types};
use jetrun_core::{JobRecord, JobSpec, JobStatus, Names, SchemaError, ValidationError};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::events::EventPublisher;
use crate::store::{Admission, JobStore, StoreError, StoreErrorKind};
use crate::submit::SubmitError;
use crate::{PublishError, PublishErrorKind};

/// The queue group every job-control responder joins (one answer per request).
pub const QUEUE_GROUP: &str = "jetrun-ctl";
/// Request header: the job id the client chose.
pub const H_JOB_ID: &str = "jetrun-job-id";
/// Request header: where the submission came from (`http:<tenant>`, `cli`, ...).
pub const H_SOURCE: &str = "jetrun-source";
/// Request header: the W3C trace context.
pub const H_TRACEPARENT: &str = "traceparent";
/// Operator tenant: may cancel any job.
pub const OPERATOR_TENANT: &str = "*";

/// `<prefix>.ctl.submit`.
pub fn submit_subject(names: &Names) -> String {
    format!("{}.ctl.submit", names.prefix())
}

/// `<prefix>.ctl.cancel`.
pub fn cancel_subject(names: &Names) -> String {
    format!("{}.ctl.cancel", names.prefix())
}

/// `<prefix>.ctl.>`: every job-control subject.
pub fn all_subjects(names: &Names) -> String {
    format!("{}.ctl.>", names.prefix())
}

/// What kind of refusal a job-control reply carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WireErrorKind {
    /// The request (spec, id, body) is invalid.
    Invalid,
    /// No such job (or not the caller's tenant's).
    NotFound,
    /// JetStream unavailable or a lost race: retry.
    Unavailable,
    /// JetStream is out of space: retry once space is freed.
    StoreFull,
    /// Anything else (a corrupt record).
    Internal,
}

/// One schema violation on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireViolation {
    /// JSON pointer.
    pub pointer: String,
    /// What is wrong.
    pub reason: String,
}

/// A typed refusal from the job-control service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// What kind.
    pub kind: WireErrorKind,
    /// For people.
    pub message: String,
    /// Schema violations, for [`WireErrorKind::Invalid`] specs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<WireViolation>,
}

impl WireError {
    fn new(kind: WireErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    fn from_store(e: &StoreError) -> Self {
        let kind = match e.kind {
            StoreErrorKind::NotFound => WireErrorKind::NotFound,
            StoreErrorKind::InvalidKey => WireErrorKind::Invalid,
            StoreErrorKind::Unavailable | StoreErrorKind::Conflict => WireErrorKind::Unavailable,
            StoreErrorKind::StoreFull => WireErrorKind::StoreFull,
            _ => WireErrorKind::Internal,
        };
        Self::new(kind, e.message.clone())
    }

    fn from_submit(e: &SubmitError) -> Self {
        match e {
            SubmitError::Invalid(s) => Self {
                kind: WireErrorKind::Invalid,
                message: s.to_string(),
                errors: s
                    .errors
                    .iter()
                    .map(|v| WireViolation {
                        pointer: v.pointer.clone(),
                        reason: v.reason.clone(),
                    })
                    .collect(),
            },
            SubmitError::Store(s) => Self::from_store(s),
            SubmitError::Publish(p) if p.kind == PublishErrorKind::Invalid => {
                Self::new(WireErrorKind::Invalid, p.message.clone())
            }
            SubmitError::Publish(p) if crate::store::is_store_full(&p.message) => {
                Self::new(WireErrorKind::StoreFull, p.message.clone())
            }
            SubmitError::Publish(p) => Self::new(WireErrorKind::Unavailable, p.message.clone()),
        }
    }

    /// The error as the [`SubmitError`] a direct [`crate::submit::submit`] would return.
    fn into_submit(self) -> SubmitError {
        let store = |kind| {
            SubmitError::Store(StoreError {
                kind,
                message: self.message.clone(),
                transition: None,
                source: None,
            })
        };
        match self.kind {
            WireErrorKind::Invalid if !self.errors.is_empty() => SubmitError::Invalid(SchemaError {
                kind: SchemaErrorKind::Invalid,
                event_type: types::JOB_SUBMITTED.into(),
                errors: self
                    .errors
                    .into_iter()
                    .map(|v| ValidationError {
                        pointer: v.pointer,
                        reason: v.reason,
                    })
                    .collect(),
            }),
            WireErrorKind::Invalid => store(StoreErrorKind::InvalidKey),
            WireErrorKind::NotFound => store(StoreErrorKind::NotFound),
            WireErrorKind::Unavailable => store(StoreErrorKind::Unavailable),
            // Unavailable to callers that only know that kind (retry later), with the
            // server's words kept so `store::is_store_full` (ingest's `store-full`
            // problem) still tells it apart.
            WireErrorKind::StoreFull => SubmitError::Store(StoreError {
                kind: StoreErrorKind::Unavailable,
                message: format!("store full: {}", self.message),
                transition: None,
                source: None,
            }),
            WireErrorKind::Internal => store(StoreErrorKind::Corrupt),
        }
    }
}

/// The reply to `<prefix>.ctl.submit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SubmitReply {
    /// Admitted (or found: `duplicate`) and, if queued, published.
    Admitted {
        /// The record.
        job: Box<JobRecord>,
        /// Its KV revision.
        revision: u64,
        /// Whether the job already existed.
        duplicate: bool,
    },
    /// Refused.
    Refused {
        /// Why.
        error: WireError,
    },
}

/// The body of `<prefix>.ctl.cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The job.
    pub job_id: String,
    /// The caller's tenant (`*`: the operator, any job).
    pub tenant: String,
}

/// The reply to `<prefix>.ctl.cancel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CancelReply {
    /// Done: the status after the request.
    Done {
        /// The status.
        status: JobStatus,
    },
    /// Refused.
    Refused {
        /// Why.
        error: WireError,
    },
}

/// What kind of cancel failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelErrorKind {
    /// No such job (or another tenant's).
    NotFound,
    /// JetStream unavailable, or no worker answers the job-control service: retry.
    Unavailable,
    /// The store refused (corrupt record, invalid id).
    Store,
}

/// Cancelling failed.
#[derive(Debug, thiserror::Error)]
#[error("cancel {job_id}: {kind:?}: {message}")]
pub struct CancelError {
    /// What kind.
    pub kind: CancelErrorKind,
    /// The job.
    pub job_id: String,
    /// Details.
    pub message: String,
}

impl CancelError {
    fn store(job_id: &str, e: StoreError) -> Self {
        let kind = match e.kind {
            StoreErrorKind::NotFound | StoreErrorKind::InvalidKey => CancelErrorKind::NotFound,
            StoreErrorKind::Unavailable => CancelErrorKind::Unavailable,
            _ => CancelErrorKind::Store,
        };
        Self {
            kind,
            job_id: job_id.into(),
            message: e.message,
        }
    }

    fn not_found(job_id: &str) -> Self {
        Self {
            kind: CancelErrorKind::NotFound,
            job_id: job_id.into(),
            message: "no such job".into(),
        }
    }

    fn to_wire(&self) -> WireError {
        let kind = match self.kind {
            CancelErrorKind::NotFound => WireErrorKind::NotFound,
            CancelErrorKind::Unavailable => WireErrorKind::Unavailable,
            CancelErrorKind::Store => WireErrorKind::Internal,
        };
        WireError::new(kind, self.message.clone())
    }
}

/// Cancels a job directly (the lifecycle's own credential, or the operator's CLI):
/// queued → cancelled at once; launching/running → marked (`RequestCancel`) and the agent
/// running it is told on `<prefix>.job.cancel.<id>` to stop it (it then settles as
/// cancelled). A terminal job is left alone. Returns the status after the call.
pub async fn cancel(
    store: &JobStore,
    client: &async_nats::Client,
    id: &str,
) -> Result<JobStatus, CancelError> {
    let (rec, _) = store
        .get(id)
        .await
        .map_err(|e| CancelError::store(id, e))?
        .ok_or_else(|| CancelError::not_found(id))?;
    cancel_record(store, client, rec).await
}

async fn cancel_record(
    store: &JobStore,
    client: &async_nats::Client,
    rec: JobRecord,
) -> Result<JobStatus, CancelError> {
    let id = rec.id.as_str();
    if rec.status.is_terminal() {
        return Ok(rec.status);
    }
    if rec.status == JobStatus::Queued {
        let cancel = Transition::Cancel {
            reason: "cancelled by user".into(),
        };
        match store.transition(id, &cancel).await {
            Ok((r, _)) => return Ok(r.status),
            // It left `queued` meanwhile: fall through to stopping it.
            Err(e) if matches!(e.kind, StoreErrorKind::Transition(_)) => {}
            Err(e) => return Err(CancelError::store(id, e)),
        }
    }
    let r = match store.transition(id, &Transition::RequestCancel).await {
        Ok((r, _)) => r,
        // Finished meanwhile: nothing to stop.
        Err(e) if matches!(e.kind, StoreErrorKind::Transition(_)) => {
            store
                .get(id)
                .await
                .map_err(|e| CancelError::store(id, e))?
                .ok_or_else(|| CancelError::not_found(id))?
                .0
        }
        Err(e) => return Err(CancelError::store(id, e)),
    };
    if !r.status.is_terminal() {
        let unavailable = |e: &dyn std::fmt::Display| CancelError {
            kind: CancelErrorKind::Unavailable,
            job_id: id.into(),
            message: e.to_string(),
        };
        client
            .publish(store.names().job_cancel(id), id.to_string().into())
            .await
            .map_err(|e| unavailable(&e))?;
        client.flush().await.map_err(|e| unavailable(&e))?;
    }
    Ok(r.status)
}

/// Serves one `<prefix>.ctl.submit` request (the service side): validates, admits and
/// publishes. Never fails: a refusal is a [`SubmitReply::Refused`].
pub async fn serve_submit(
    store: &JobStore,
    publisher: &EventPublisher,
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> SubmitReply {
    let header = |k: &str| headers.and_then(|h| h.get(k)).map(|v| v.as_str().to_string());
    let refused = |error| SubmitReply::Refused { error };
    let spec: JobSpec = match serde_json::from_slice(body) {
        Ok(s) => s,
        Err(e) => {
            return refused(WireError::new(
                WireErrorKind::Invalid,
                format!("not a job spec: {e}"),
            ));
        }
    };
    let id = match header(H_JOB_ID) {
        Some(id) if jetrun_core::job::valid_job_id(&id) => id,
        Some(id) => {
            return refused(WireError::new(
                WireErrorKind::Invalid,
                format!("invalid job id {id:?}"),
            ));
        }
        None => crate::submit::job_id_for(&spec),
    };
    // A server span continuing the client's trace (an invalid header starts a new one).
    let span = tracing::info_span!(
        "ctl.submit",
        otel.kind = "server",
        messaging.system = "nats",
        messaging.operation.type = "process",
        jetrun.job_id = %id,
        jetrun.queue = %spec.queue,
        jetrun.tenant = %spec.tenant(),
    );
    jetrun_telemetry::link_remote(
        &span,
        header(H_TRACEPARENT).as_deref(),
        header(jetrun_core::envelope::H_TRACESTATE).as_deref(),
    );
    let submitted = tracing::Instrument::instrument(
        crate::submit::submit_as(
            store,
            publisher,
            id,
            spec,
            header(H_TRACEPARENT),
            header(H_SOURCE),
        ),
        span,
    )
    .await;
    match submitted {
        Ok(a) => {
            let duplicate = matches!(a, Admission::Existing(..));
            let revision = a.revision();
            let job = match a {
                Admission::New(r, _) | Admission::Existing(r, _) => Box::new(r),
            };
            SubmitReply::Admitted {
                job,
                revision,
                duplicate,
            }
        }
        Err(e) => refused(WireError::from_submit(&e)),
    }
}

/// Serves one `<prefix>.ctl.cancel` request: the record's tenant must be the caller's
/// (else it is "not found", so tenants cannot probe each other's ids), then [`cancel`].
pub async fn serve_cancel(store: &JobStore, client: &async_nats::Client, body: &[u8]) -> CancelReply {
    let req: CancelRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return CancelReply::Refused {
                error: WireError::new(WireErrorKind::Invalid, format!("not a cancel request: {e}")),
            };
        }
    };
    let id = req.job_id.as_str();
    let result = async {
        if !jetrun_core::job::valid_job_id(id) {
            return Err(CancelError::not_found(id));
        }
        let (rec, _) = store
            .get(id)
            .await
            .map_err(|e| CancelError::store(id, e))?
            .ok_or_else(|| CancelError::not_found(id))?;
        if req.tenant != OPERATOR_TENANT && rec.spec.tenant() != req.tenant {
            warn!(job_id = %id, tenant = %req.tenant, "cancel of another tenant's job refused");
            return Err(CancelError::not_found(id));
        }
        cancel_record(store, client, rec).await
    }
    .await;
    match result {
        Ok(status) => CancelReply::Done { status },
        Err(e) => CancelReply::Refused { error: e.to_wire() },
    }
}

/// Why the job-control service could not start.
#[derive(Debug, thiserror::Error)]
#[error("job-control service: cannot subscribe to {subject}")]
pub struct ServeError {
    /// The subject.
    pub subject: String,
    /// The client's error.
    #[source]
    pub source: async_nats::SubscribeError,
}

/// Requests one process handles at once.
const SERVE_CONCURRENCY: usize = 64;

/// Runs the job-control service until `shutdown` resolves: answers
/// `<prefix>.ctl.submit` ([`serve_submit`]) and `<prefix>.ctl.cancel` ([`serve_cancel`])
/// in the queue group [`QUEUE_GROUP`]. Needs the lifecycle's permissions (the jobs and
/// index buckets); dispatch runs it.
pub async fn serve(
    client: async_nats::Client,
    store: JobStore,
    publisher: EventPublisher,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    use futures::StreamExt;
    let names = store.names().clone();
    let sub = |subject: String| {
        let client = client.clone();
        async move {
            client
                .queue_subscribe(subject.clone(), QUEUE_GROUP.to_string())
                .await
                .map_err(|source| ServeError { subject, source })
        }
    };
    let mut submits = sub(submit_subject(&names)).await?;
    let mut cancels = sub(cancel_subject(&names)).await?;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(SERVE_CONCURRENCY));
    tracing::info!("job-control service started");
    tokio::pin!(shutdown);
    loop {
        let (msg, is_submit) = tokio::select! {
            _ = &mut shutdown => break,
            m = submits.next() => match m { Some(m) => (m, true), None => break },
            m = cancels.next() => match m { Some(m) => (m, false), None => break },
        };
        let Some(reply_to) = msg.reply.clone() else {
            debug!(subject = %msg.subject, "job-control request without a reply subject; ignored");
            continue;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (client, store, publisher) = (client.clone(), store.clone(), publisher.clone());
        tokio::spawn(async move {
            let body = if is_submit {
                serde_json::to_vec(
                    &serve_submit(&store, &publisher, msg.headers.as_ref(), &msg.payload).await,
                )
            } else {
                serde_json::to_vec(&serve_cancel(&store, &client, &msg.payload).await)
            };
            match body {
                Ok(b) => {
                    if let Err(e) = client.publish(reply_to, b.into()).await {
                        warn!(error = %e, "job-control reply not sent");
                    }
                }
                Err(e) => warn!(error = %e, "job-control reply not encoded"),
            }
            drop(permit);
        });
    }
    let _ = submits.unsubscribe().await;
    let _ = cancels.unsubscribe().await;
    tracing::info!("job-control service stopped");
    Ok(())
}

/// The outcome of [`ControlClient::submit`].
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The admission: from the service, or (when `admitted` is false) the record dispatch
    /// will create from the published submission.
    pub admission: Admission,
    /// Whether the job is already in the store. `false`: no worker answered and the
    /// submission was published for dispatch to admit (answer 202 with the id).
    pub admitted: bool,
}

/// A client of the job-control service, for producers without write access to the jobs
/// bucket (ingest, route). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlClient {
    client: async_nats::Client,
    publisher: EventPublisher,
    names: Names,
    timeout: Duration,
}

impl ControlClient {
    /// A client over `client` for deployment `names`; publishes fallbacks with
    /// `ce-source: /jetrun/<component>`.
    pub fn new(client: async_nats::Client, names: Names, component: &str) -> Self {
        let js = async_nats::jetstream::new(client.clone());
        Self {
            client,
            publisher: EventPublisher::new(js, format!("/jetrun/{component}")),
            names,
            // Well under the HTTP API's 5 s publish timeout, so a slow worker still leaves
            // time for the durable fallback.
            timeout: Duration::from_secs(2),
        }
    }

    /// How long to wait for the service's reply (default 2 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn request(
        &self,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Option<Message>, String> {
        let req = async_nats::Request::new()
            .headers(headers)
            .payload(body)
            .timeout(Some(self.timeout));
        match self.client.send_request(subject, req).await {
            Ok(m) => Ok(Some(m)),
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::RequestErrorKind::NoResponders | async_nats::RequestErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Submits through the lifecycle; falls back to a durable publish when no worker
    /// answers. The job id is chosen here (from the idempotency key, else a fresh one),
    /// so the service and the fallback name the same job.
    pub async fn submit(
        &self,
        spec: JobSpec,
        traceparent: Option<String>,
        source: Option<String>,
    ) -> Result<Submitted, SubmitError> {
        crate::submit::validate(&spec, &self.names)?;
        let id = crate::submit::job_id_for(&spec);
        // The current span's context when it continues this trace (or there is none).
        let trace = jetrun_telemetry::outgoing(traceparent.as_deref(), None);
        let tracestate = trace.as_ref().and_then(|t| t.tracestate.clone());
        let traceparent = trace
            .map(|t| t.traceparent)
            .or(traceparent)
            .or_else(|| Some(jetrun_telemetry::new_traceparent()));
        let body = serde_json::to_vec(&spec).map_err(|e| {
            SubmitError::Publish(PublishError::caused(
                PublishErrorKind::Encode,
                submit_subject(&self.names),
                e,
            ))
        })?;
        let mut headers = HeaderMap::new();
        crate::events::insert_header(&mut headers, H_JOB_ID, &id);
        if let Some(tp) = &traceparent {
            crate::events::insert_header(&mut headers, H_TRACEPARENT, tp);
        }
        if let Some(ts) = &tracestate {
            crate::events::insert_header(&mut headers, jetrun_core::envelope::H_TRACESTATE, ts);
        }
        if let Some(s) = &source {
            crate::events::insert_header(&mut headers, H_SOURCE, s);
        }
        let unavailable = |message: String| {
            SubmitError::Store(StoreError {
                kind: StoreErrorKind::Unavailable,
                message,
                transition: None,
                source: None,
            })
        };
        match self
            .request(submit_subject(&self.names), headers, body.into())
            .await
            .map_err(unavailable)?
        {
            Some(reply) => match serde_json::from_slice::<SubmitReply>(&reply.payload) {
                Ok(SubmitReply::Admitted {
                    job,
                    revision,
                    duplicate,
                }) => Ok(Submitted {
                    admission: if duplicate {
                        Admission::Existing(*job, revision)
                    } else {
                        Admission::New(*job, revision)
                    },
                    admitted: true,
                }),
                Ok(SubmitReply::Refused { error }) => Err(error.into_submit()),
                Err(e) => Err(unavailable(format!("unreadable job-control reply: {e}"))),
            },
            None => {
                // No worker (scaled to zero) or a slow one: publish durably with
                // `Nats-Msg-Id` = job id, so a service that did admit it meanwhile and
                // this publish store one submission.
                debug!(job_id = %id, "no job-control responder; publishing the submission for dispatch");
                crate::submit::publish_submission(
                    &self.publisher,
                    &self.names,
                    &id,
                    &spec,
                    traceparent.clone(),
                )
                .await?;
                let record = JobRecord::new(id, spec, traceparent, source);
                Ok(Submitted {
                    admission: Admission::New(record, 0),
                    admitted: false,
                })
            }
        }
    }

    /// Cancels job `id` on behalf of `tenant` (`*`: the operator) through the lifecycle.
    /// Without a worker to answer it fails as [`CancelErrorKind::Unavailable`].
    pub async fn cancel(&self, tenant: &str, id: &str) -> Result<JobStatus, CancelError> {
        let unavailable = |message: String| CancelError {
            kind: CancelErrorKind::Unavailable,
            job_id: id.into(),
            message,
        };
        let body = serde_json::to_vec(&CancelRequest {
            job_id: id.into(),
            tenant: tenant.into(),
        })
        .map_err(|e| unavailable(e.to_string()))?;
        let reply = self
            .request(cancel_subject(&self.names), HeaderMap::new(), body.into())
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                unavailable(
                    "no worker answers the job-control service; cancelling needs a running worker (retry later)"
                        .into(),
                )
            })?;
        match serde_json::from_slice::<CancelReply>(&reply.payload) {
            Ok(CancelReply::Done { status }) => Ok(status),
            Ok(CancelReply::Refused { error }) => Err(CancelError {
                kind: match error.kind {
                    WireErrorKind::NotFound | WireErrorKind::Invalid => CancelErrorKind::NotFound,
                    WireErrorKind::Unavailable | WireErrorKind::StoreFull => CancelErrorKind::Unavailable,
                    WireErrorKind::Internal => CancelErrorKind::Store,
                },
                job_id: id.into(),
                message: error.message,
            }),
            Err(e) => Err(unavailable(format!("unreadable job-control reply: {e}"))),
        }
    }
}
