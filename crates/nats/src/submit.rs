//! Submitting jobs, shared by every producer that can admit (the CLI, the HTTP API).
//!
//! The job is admitted first (KV create: it is visible as `queued` at once), then its
//! submission is published on `<prefix>.job.submit.<queue>` with `Nats-Msg-Id` = job id.
//! A retry with the same idempotency key finds the existing job and publishes again,
//! which is harmless: JetStream dedupes within its window and dispatch ignores a
//! submission whose job is no longer queued.

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

/// Admits and publishes a job. Returns the admission (new, or the existing duplicate).
pub async fn submit(
    store: &JobStore,
    publisher: &EventPublisher,
    spec: JobSpec,
    traceparent: Option<String>,
    source: Option<String>,
) -> Result<Admission, SubmitError> {
    let value = serde_json::to_value(&spec).map_err(|e| {
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
    let id = job_id_for(&spec);
    let traceparent = traceparent.or_else(|| Some(jetrun_core::envelope::new_traceparent()));
    let record = JobRecord::new(id.clone(), spec.clone(), traceparent.clone(), source);
    let admission = store.admit(record).await?;
    if admission.record().status == jetrun_core::JobStatus::Queued {
        let env = publisher
            .envelope(types::JOB_SUBMITTED)
            .with_id(id.clone())
            .with_subject(id)
            .with_trace(admission.record().traceparent.clone().or(traceparent), None);
        publisher
            .publish(store.names().job_submit(&spec.queue), &env, &spec)
            .await?;
    }
    Ok(admission)
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
    let body = serde_json::to_vec(&record.spec).map_err(|e| crate::PublishError {
        kind: crate::PublishErrorKind::Encode,
        subject: subject.clone(),
        message: e.to_string(),
    })?;
    let unavailable = |e: String| crate::PublishError {
        kind: crate::PublishErrorKind::Unavailable,
        subject: subject.clone(),
        message: e,
    };
    let ack = publisher
        .jetstream()
        .publish_with_headers(subject.clone(), headers, body.into())
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    Ok(ack.sequence)
}
