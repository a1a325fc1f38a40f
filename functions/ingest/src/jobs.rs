//! Job operations shared by the HTTP API and the CLI.

use jetrun_core::JobStatus;
use jetrun_core::job::Transition;
use jetrun_nats::{StoreError, StoreErrorKind};

/// What kind of cancel failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelErrorKind {
    /// No such job.
    NotFound,
    /// JetStream unavailable: retry.
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
}

/// Cancels a job: queued → cancelled at once; launching/running → marked
/// (`RequestCancel`) and the agent running it is told on `<prefix>.job.cancel.<id>` to
/// stop it (it then settles as cancelled). A terminal job is left alone. Returns the
/// status after the call.
pub async fn cancel(ctx: &jetrun_host::Context, id: &str) -> Result<JobStatus, CancelError> {
    let (rec, _) = ctx
        .store
        .get(id)
        .await
        .map_err(|e| CancelError::store(id, e))?
        .ok_or_else(|| CancelError {
            kind: CancelErrorKind::NotFound,
            job_id: id.into(),
            message: "no such job".into(),
        })?;
    if rec.status.is_terminal() {
        return Ok(rec.status);
    }
    if rec.status == JobStatus::Queued {
        match ctx
            .store
            .transition(
                id,
                &Transition::Cancel {
                    reason: "cancelled by user".into(),
                },
            )
            .await
        {
            Ok((r, _)) => return Ok(r.status),
            // It left `queued` meanwhile: fall through to stopping it.
            Err(e) if matches!(e.kind, StoreErrorKind::Transition(_)) => {}
            Err(e) => return Err(CancelError::store(id, e)),
        }
    }
    let (r, _) = match ctx.store.transition(id, &Transition::RequestCancel).await {
        Ok(x) => x,
        // Finished meanwhile: nothing to stop.
        Err(e) if matches!(e.kind, StoreErrorKind::Transition(_)) => {
            let (r, rev) = ctx
                .store
                .get(id)
                .await
                .map_err(|e| CancelError::store(id, e))?
                .ok_or_else(|| CancelError {
                    kind: CancelErrorKind::NotFound,
                    job_id: id.into(),
                    message: "vanished".into(),
                })?;
            (r, rev)
        }
        Err(e) => return Err(CancelError::store(id, e)),
    };
    if !r.status.is_terminal() {
        let unavailable = |e: &dyn std::fmt::Display| CancelError {
            kind: CancelErrorKind::Unavailable,
            job_id: id.into(),
            message: e.to_string(),
        };
        ctx.client
            .publish(ctx.names.job_cancel(id), id.to_string().into())
            .await
            .map_err(|e| unavailable(&e))?;
        ctx.client.flush().await.map_err(|e| unavailable(&e))?;
    }
    Ok(r.status)
}
