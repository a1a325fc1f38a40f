//! Job operations shared by the HTTP API and the CLI.
//!
//! The HTTP API goes through the lifecycle's job-control service
//! ([`jetrun_nats::control`]): ingest's credential may not write the jobs bucket. The
//! operator's CLI may cancel directly ([`cancel`]).

use jetrun_core::JobStatus;
use jetrun_nats::control::ControlClient;

pub use jetrun_nats::control::{CancelError, CancelErrorKind};

/// Cancels a job directly in the store (needs write access to the jobs bucket: the
/// operator's CLI). See [`jetrun_nats::control::cancel`].
pub async fn cancel(ctx: &jetrun_host::Context, id: &str) -> Result<JobStatus, CancelError> {
    jetrun_nats::control::cancel(&ctx.store, &ctx.client, id).await
}

/// Cancels a job on behalf of `tenant` (`*`: any job) through the job-control service;
/// the service checks the tenant again. Without a running worker this is
/// [`CancelErrorKind::Unavailable`] (503).
pub async fn cancel_as(ctx: &jetrun_host::Context, tenant: &str, id: &str) -> Result<JobStatus, CancelError> {
    ControlClient::new(ctx.client.clone(), ctx.names.clone(), "ingest")
        .cancel(tenant, id)
        .await
}
