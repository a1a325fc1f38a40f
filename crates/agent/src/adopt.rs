//! Crash recovery: at start, every task the runner knows on this node (including ones a
//! previous process left with the same data directory) is adopted if its job is still
//! this node's attempt (supervised again, or its final event published if it ended
//! meanwhile), and reaped (stopped and removed) otherwise.

use std::time::Duration;

use jetrun_core::JobStatus;
use tracing::info;

use crate::{Agent, AgentError, AgentErrorKind, Task};

/// What [`Agent::start`] found from a previous run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adoption {
    /// Tasks supervised again (still running, or ended and reported now).
    pub adopted: usize,
    /// Tasks stopped and removed because their job has moved on.
    pub reaped: usize,
}

impl Agent {
    /// Adopts or reaps the tasks the runner knows from a previous run on this node.
    pub(crate) async fn adopt(&self) -> Result<Adoption, AgentError> {
        let inner = &self.inner;
        let mut report = Adoption::default();
        let known = inner
            .runner
            .list()
            .await
            .map_err(|e| AgentError::new(AgentErrorKind::Runner, "list the runner's tasks", e))?;
        for info in known {
            let rec = match jetrun_core::job::valid_job_id(&info.job_id) {
                true => inner.ctx.store.get(&info.job_id).await.map_err(|e| {
                    AgentError::new(AgentErrorKind::Store, format!("read job {}", info.job_id), e)
                })?,
                false => None,
            };
            let ours = rec.as_ref().is_some_and(|(r, _)| {
                matches!(r.status, JobStatus::Launching | JobStatus::Running)
                    && r.attempt == info.attempt
                    && r.node_id.as_deref() == Some(inner.ctx.node_id.as_str())
            });
            let Some((rec, _)) = rec.filter(|_| ours) else {
                info!(task_ref = %info.task_ref, job_id = %info.job_id, "reaping a task whose job moved on");
                if !info.status.is_final() {
                    let _ = inner.runner.stop(&info.task_ref, Duration::from_secs(1)).await;
                }
                let _ = inner.runner.remove(&info.task_ref).await;
                report.reaped += 1;
                continue;
            };
            let mut started_at = rec.started_at.unwrap_or_else(jetrun_core::now);
            if rec.status == JobStatus::Launching {
                // The previous run died between launch and recording it.
                let t = jetrun_core::job::Transition::Started {
                    task_ref: info.task_ref.clone(),
                };
                if let Ok((r, _)) = inner.ctx.store.transition(&rec.id, &t).await {
                    started_at = r.started_at.unwrap_or(started_at);
                }
            }
            let lease = inner.lease_for(&rec.id, rec.attempt);
            let rev = match inner.ctx.store.lease(&rec.id).await {
                Ok(Some((_, rev))) => inner
                    .ctx
                    .store
                    .renew_lease(&lease, rev, inner.config.lease_ttl)
                    .await
                    .ok(),
                _ => None,
            };
            let rev = match rev {
                Some(r) => r,
                None => inner
                    .ctx
                    .store
                    .acquire_lease(&lease, inner.config.lease_ttl)
                    .await
                    .unwrap_or(0),
            };
            info!(job_id = %rec.id, attempt = rec.attempt, task_ref = %info.task_ref, status = ?info.status, "adopting a task from a previous run");
            self.spawn_supervisor(Task {
                job_id: rec.id.clone(),
                attempt: rec.attempt,
                task_ref: info.task_ref.clone(),
                timeout: rec.spec.timeout(),
                started_at,
                lease_revision: rev,
                cancel_requested: rec.cancel_requested,
                traceparent: rec.traceparent.clone(),
                // Re-read from the record: the key is not kept on disk by the runner.
                attempt_key: rec.attempt_key.clone(),
                guard: None,
            });
            report.adopted += 1;
        }
        Ok(report)
    }
}
