//! The sweep (every `sweep_every`): the level-triggered backstop over the active jobs.
//!
//! A `running` job past `started_at + timeout + timeout_grace` is `timed_out` by settle
//! itself (its agent vanished); a `launching`/`running` job that has had no lease for
//! `lease_grace` is handled as a lease expiry (a crash between claim and lease, expiries
//! missed while no settle ran, a dead letter that could not be stored last time).

use jetrun_core::JobStatus;
use jetrun_core::job::Transition;
use tracing::warn;

use crate::{Outcome, Settle, SettleError};

impl Settle {
    /// One sweep over the active jobs: timeout backstop and leaseless jobs. Returns how
    /// many jobs it changed.
    pub async fn sweep(&self) -> Result<usize, SettleError> {
        let ctx = &self.inner.ctx;
        let c = &self.inner.config;
        let now = jetrun_core::now();
        let grace = chrono::Duration::from_std(c.lease_grace).unwrap_or_default();
        let tgrace = chrono::Duration::from_std(c.timeout_grace).unwrap_or_default();
        let mut changed = 0;
        for q in ctx.store.queues().await? {
            let mut active = ctx.store.list(&q, Some(JobStatus::Running), 100_000).await?;
            active.extend(ctx.store.list(&q, Some(JobStatus::Launching), 100_000).await?);
            for rec in active {
                let timeout = chrono::Duration::from_std(rec.spec.timeout()).unwrap_or_default();
                let overdue = rec.status == JobStatus::Running
                    && rec.started_at.is_some_and(|s| s + timeout + tgrace < now);
                if overdue {
                    // Re-read: act only on the attempt that is overdue.
                    let Some((fresh, rev)) = ctx.store.get(&rec.id).await? else {
                        continue;
                    };
                    if fresh.attempt == rec.attempt && fresh.status == JobStatus::Running {
                        warn!(job_id = %rec.id, "running past its timeout with no report; timing it out");
                        if self
                            .terminal(fresh, rev, Transition::TimedOut, None, true)
                            .await?
                            == Outcome::Settled
                        {
                            changed += 1;
                        }
                    }
                    continue;
                }
                if rec.updated_at + grace < now
                    && ctx.store.lease(&rec.id).await?.is_none()
                    && self.lease_lost(&rec.id, false).await?
                {
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }
}
