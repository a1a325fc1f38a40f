//! Submitting jobs, shared by every producer that can admit (the CLI, the HTTP API).
//!
//! The job is admitted first (index entry, then KV create: it is visible as `queued` at
//! once and listed, so dispatch's reconcile finds it even if what follows fails), then its
//! submission is published on `<prefix>.job.submit.<queue>` with `Nats-Msg-Id` = job id.
//! A retry with the same idempotency key finds the existing job and publishes again,
//! which is harmless: JetStream dedupes within its window and dispatch ignores a
//! submission whose job is no longer queued.
//!
//! Only the lifecycle (the job-control service in dispatch, [`crate::control`]) and the
//! operator's CLI admit; ingest and route go through the service or publish the
//! submission alone ([`publish_submission`]) and let dispatch admit it.

use jetrun_core::schema::{self, types};
use jetrun_core::{JobRecord, JobSpec};

use crate::events::EventPublisher;
use crate::store::{Admission, JobStore, StoreError};

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The spec does not match the submission schema.
    #[error("invalid job spec: {0}")]
    Invalid(jetrun_core::SchemaError),
    /// The store refused or was unavailable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The submission could not be published (the job is admitted; retry to publish).
    #[error(transparent)]
    Publish(#[from] crate::PublishError),
}

/// The job id for a spec: derived from its idempotency key, else a fresh time-ordered id.
pub fn job_id_for(spec: &JobSpec) -> String {
    match &spec.idempotency_key {
        Some(k) => jetrun_core::job::job_id_for_key(&spec.queue, k),
        None => uuid::Uuid::now_v7().to_string(),
    }
}

/// Checks `spec` as every submission is checked, whoever sends it: the submission schema,
/// the hard bounds of [`jetrun_core::limits::SpecLimits::default`] (an edge may be
/// stricter, never looser), and the completion callback (a NATS callback only in the
/// tenant's own namespace, an HTTP callback an absolute URL; settle checks again before
/// sending).
pub fn validate(spec: &JobSpec, names: &jetrun_core::Names) -> Result<(), SubmitError> {
    let invalid = |errors: Vec<jetrun_core::ValidationError>| {
        SubmitError::Invalid(jetrun_core::SchemaError {
            kind: jetrun_core::schema::SchemaErrorKind::Invalid,
            event_type: types::JOB_SUBMITTED.into(),
            errors,
        })
    };
    let value = serde_json::to_value(spec).map_err(|e| {
        SubmitError::Invalid(jetrun_core::SchemaError {
            kind: jetrun_core::schema::SchemaErrorKind::NotJson,
            event_type: types::JOB_SUBMITTED.into(),
            errors: vec![jetrun_core::ValidationError {
                pointer: String::new(),
                reason: e.to_string(),
            }],
        })
    })?;
    schema::validate_value(types::JOB_SUBMITTED, &value).map_err(SubmitError::Invalid)?;
    spec.validate(&jetrun_core::limits::SpecLimits::default())
        .map_err(|e| {
            invalid(
                e.violations
                    .into_iter()
                    .map(|v| jetrun_core::ValidationError {
                        pointer: v.pointer,
                        reason: v.reason,
                    })
                    .collect(),
            )
        })?;
    jetrun_core::callback::check(spec, jetrun_core::callback::DEFAULT_SUBJECT_ROOT, names.prefix()).map_err(
        |e| {
            invalid(vec![jetrun_core::ValidationError {
                pointer: "/callback".into(),
                reason: e.to_string(),
            }])
        },
    )
}

/// Admits and publishes a job. Returns the admission (new, or the existing duplicate).
pub async fn submit(
    store: &JobStore,
    publisher: &EventPublisher,
    spec: JobSpec,
    traceparent: Option<String>,
    source: Option<String>,
) -> Result<Admission, SubmitError> {
    let id = job_id_for(&spec);
    submit_as(store, publisher, id, spec, traceparent, source).await
}

/// [`submit`] under a job id chosen by the caller (the job-control client picks it, so
/// a retry or its durable fallback names the same job).
pub async fn submit_as(
    store: &JobStore,
    publisher: &EventPublisher,
    id: String,
    spec: JobSpec,
    traceparent: Option<String>,
    source: Option<String>,
) -> Result<Admission, SubmitError> {
    validate(&spec, store.names())?;
    let traceparent = traceparent.or_else(|| Some(jetrun_telemetry::new_traceparent()));
    let record = JobRecord::new(id.clone(), spec.clone(), traceparent.clone(), source);
    // Straight to the create-if-absent (no read first: a new job, the common case, would
    // pay a round trip for nothing); a retry (the same idempotency key, or a create whose
    // answer was lost in a failover) finds its job as `Existing`.
    let admission = retry_transient(
        "admit",
        || store.admit(record.clone()),
        |e: &StoreError| e.kind == crate::store::StoreErrorKind::Unavailable,
    )
    .await?;
    if admission.record().status == jetrun_core::JobStatus::Queued {
        let tp = admission.record().traceparent.clone().or(traceparent);
        // Retried too: `Nats-Msg-Id` = job id, so a publish that did land is stored once.
        retry_transient(
            "publish",
            || publish_submission(publisher, store.names(), &id, &spec, tp.clone()),
            |e: &crate::PublishError| {
                e.kind == crate::PublishErrorKind::Unavailable && !crate::store::is_store_full(&e.message)
            },
        )
        .await?;
    }
    Ok(admission)
}

/// How long a submission's admit and publish keep retrying transient failures: a
/// stream leader's election after a node dies takes 4–8 s (decision 14). A caller that
/// gives up sooner (the HTTP API answers 503) is safe: a retried write that lands late
/// is create-if-absent or deduped by its message id.
const SUBMIT_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(8);

/// Runs an idempotent write, retrying while `transient` says so, for up to
/// [`SUBMIT_RETRY_FOR`] (25 ms doubling to 800 ms between attempts).
async fn retry_transient<T, E, F, Fut>(what: &str, mut op: F, transient: impl Fn(&E) -> bool) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + SUBMIT_RETRY_FOR;
    let mut delay = std::time::Duration::from_millis(25);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) && tokio::time::Instant::now() + delay < deadline => {
                tracing::debug!(what, error = %e, retry_in_ms = delay.as_millis() as u64, "submission write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_millis(800));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Publishes the submission of job `id` on `<prefix>.job.submit.<queue>` without
/// admitting it (`ce-id` = `Nats-Msg-Id` = job id): dispatch admits on consume. This is
/// all a producer without write access to the jobs bucket can do (route; ingest when no
/// worker answers the job-control service).
pub async fn publish_submission(
    publisher: &EventPublisher,
    names: &jetrun_core::Names,
    id: &str,
    spec: &JobSpec,
    traceparent: Option<String>,
) -> Result<u64, crate::PublishError> {
    let env = publisher
        .envelope(types::JOB_SUBMITTED)
        .with_id(id.to_string())
        .with_subject(id.to_string())
        .with_trace(traceparent, None);
    publisher.publish(names.job_submit(&spec.queue), &env, spec).await
}

/// Re-publishes the submission of an admitted job that is `queued` again (a retry, or a
/// submission lost between admit and publish). `ce-id` stays the job id, so dispatch
/// finds the job; `Nats-Msg-Id` is `msg_id`, so each distinct re-publish is stored once
/// (a plain re-publish under the job id would be swallowed by the dedupe window).
pub async fn resubmit(
    publisher: &EventPublisher,
    names: &jetrun_core::Names,
    record: &JobRecord,
    msg_id: &str,
) -> Result<u64, crate::PublishError> {
    let subject = names.job_submit(&record.queue);
    let env = publisher
        .envelope(types::JOB_SUBMITTED)
        .with_id(record.id.clone())
        .with_subject(record.id.clone())
        .with_trace(record.traceparent.clone(), None);
    let mut headers = crate::events::to_header_map(&env);
    headers.insert(jetrun_core::envelope::H_MSG_ID, msg_id);
    let body = serde_json::to_vec(&record.spec)
        .map_err(|e| crate::PublishError::caused(crate::PublishErrorKind::Encode, subject.clone(), e))?;
    let unavailable = |e: crate::store::Cause| {
        crate::PublishError::caused(crate::PublishErrorKind::Unavailable, subject.clone(), e)
    };
    let ack = publisher
        .jetstream()
        .publish_with_headers(subject.clone(), headers, body.into())
        .await
        .map_err(|e| unavailable(e.into()))?
        .await
        .map_err(|e| unavailable(e.into()))?;
    Ok(ack.sequence)
}
