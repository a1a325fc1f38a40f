//! The job-control service (decision 16), hosted by dispatch: the lifecycle owns the
//! jobs and index buckets, so it answers `<prefix>.ctl.submit` and `<prefix>.ctl.cancel`
//! for ingest and route, which hold no write permission on them. The request handling
//! lives in [`jetrun_nats::control`].

use jetrun_host::Context;
use tokio_util::sync::CancellationToken;

use crate::{DispatchError, DispatchErrorKind};

/// Serves job-control requests until `shutdown`.
pub async fn serve(ctx: Context, shutdown: CancellationToken) -> Result<(), DispatchError> {
    let publisher = ctx.publisher("dispatch");
    jetrun_nats::control::serve(ctx.client, ctx.store, publisher, shutdown.cancelled_owned())
        .await
        .map_err(|e| DispatchError::new(DispatchErrorKind::Consumer, e))
}
