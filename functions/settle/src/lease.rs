//! Lease expiry: a task's lease ran out, so its worker may be dead.
//!
//! The job's node agent is asked first (`describe`): after a stall it may still
//! supervise the task, and takes its lease back. If it does not answer, the TASKS stream
//! is read for a final event of that attempt (the agent reports the end before releasing
//! the lease, so one that died in between left it there); that event decides. Otherwise
//! the attempt is over: the lifecycle policy retries the job or fails it into the dead
//! letters (`lease_expired`).

use jetrun_core::{JobError, JobStatus};
use tracing::debug;

use crate::{Outcome, Settle, SettleError, TaskEventError};

/// Compare-and-set races one expiry may lose before it is left to the sweep.
const MAX_RACES: usize = 8;

impl Settle {
    /// A lease ran out: the worker may be dead. Returns whether the job was changed.
    pub async fn on_lease_expired(&self, job_id: &str) -> Result<bool, SettleError> {
        self.lease_lost(job_id, true).await
    }

    /// `fresh_guard`: ignore a record changed within the last second — an expiry event
    /// that arrives late may belong to the previous attempt while the next one is being
    /// claimed and has not taken its lease yet (the sweep catches genuine cases later).
    pub(crate) async fn lease_lost(&self, job_id: &str, fresh_guard: bool) -> Result<bool, SettleError> {
        let ctx = &self.inner.ctx;
        for _ in 0..MAX_RACES {
            let Some((rec, rev)) = ctx.store.get(job_id).await? else {
                return Ok(false);
            };
            if !matches!(rec.status, JobStatus::Launching | JobStatus::Running) {
                return Ok(false);
            }
            if fresh_guard && rec.updated_at + chrono::Duration::seconds(1) > jetrun_core::now() {
                return Ok(false);
            }
            if ctx.store.lease(job_id).await?.is_some() {
                return Ok(false);
            }
            if let Some(node) = &rec.node_id {
                let d = jetrun_node::request_describe(
                    &ctx.client,
                    &ctx.names,
                    node,
                    job_id,
                    rec.attempt,
                    self.inner.config.describe_timeout,
                )
                .await;
                if d.is_some_and(|d| d.supervised) {
                    debug!(job_id, node = %node, "lease expired but the agent still supervises the task");
                    return Ok(false);
                }
            }
            // The agent may have reported the end before dying: that event decides.
            if let Some(ev) = self.final_event(&rec).await {
                match self.on_task_event(&ev, None).await {
                    Ok(o) => return Ok(o == Outcome::Settled),
                    Err(TaskEventError::Store(e)) => return Err(e.into()),
                    Err(TaskEventError::Lifecycle(e)) => return Err(e.into()),
                    // Not produced without a proof; treated as no event.
                    Err(TaskEventError::Forged(_)) => {}
                }
            }
            let err = JobError::new(
                "lease_expired",
                format!(
                    "the lease of attempt {} expired (worker {})",
                    rec.attempt,
                    rec.worker_id.clone().unwrap_or_default()
                ),
            );
            match self.retry_or_fail(&rec, rev, err).await {
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
                Ok(o) => return Ok(o == Outcome::Settled),
            }
        }
        Ok(false)
    }
}
