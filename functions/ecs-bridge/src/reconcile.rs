//! The periodic `DescribeTasks` pass: events can be lost (a Lambda whose retries ran out,
//! a rule changed during a deploy), so every task of the deployment that ECS still shows
//! is looked at again:
//!
//! - a stopped task is mapped and handed to [`Bridge::apply`] exactly like its event
//!   (publishing twice is harmless: the event's id is the same, JetStream drops the copy,
//!   and settle ignores an attempt that already ended);
//! - a running task whose job has moved on (terminal, or at a newer attempt) is stopped,
//!   since no node supervises it any more.
//!
//! ECS shows stopped tasks for about an hour, so run it well within that (every minute).

use jetrun_core::JobStatus;
use jetrun_runner::ecs::{EcsOutcome, EcsRunner};
use tracing::{info, warn};

use crate::{Bridge, BridgeError, BridgeErrorKind, Handled, map_view};

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Tasks of the deployment seen.
    pub seen: usize,
    /// Task events published for stopped tasks.
    pub reported: usize,
    /// Orphaned tasks stopped.
    pub stopped: usize,
}

/// One pass over the deployment's tasks. `runner` must be built without a node (it then
/// lists every task of the deployment).
pub async fn reconcile(runner: &EcsRunner, bridge: &Bridge) -> Result<ReconcileReport, BridgeError> {
    let cfg = bridge.config();
    let tasks = runner.tasks().await.map_err(|e| BridgeError {
        kind: BridgeErrorKind::Ecs,
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    let mut report = ReconcileReport {
        seen: tasks.len(),
        ..Default::default()
    };
    for t in tasks {
        match t.outcome(&cfg.container) {
            EcsOutcome::Pending | EcsOutcome::Running => {
                let Some((job_id, attempt)) = t.identity(&cfg.deployment) else {
                    continue;
                };
                let Some(rec) = bridge.records.get(&job_id).await? else {
                    continue;
                };
                let moved_on = rec.status.is_terminal()
                    || rec.attempt > attempt
                    || (rec.status == JobStatus::Queued && rec.attempt == attempt);
                if moved_on {
                    let why = format!(
                        "superseded: job is {} at attempt {}",
                        rec.status.as_str(),
                        rec.attempt
                    );
                    match runner.stop_with_reason(&t.task_arn, &why).await {
                        Ok(()) => {
                            info!(job_id = %job_id, attempt, task_arn = %t.task_arn, "stopped an orphaned ECS task");
                            report.stopped += 1;
                        }
                        Err(e) => warn!(task_arn = %t.task_arn, error = %e, "orphaned ECS task not stopped"),
                    }
                }
            }
            _ => {
                let m = map_view(&t, jetrun_core::now(), &cfg.deployment, &cfg.container);
                if let Handled::Published(_) = bridge.apply(m).await? {
                    report.reported += 1;
                }
            }
        }
    }
    Ok(report)
}
