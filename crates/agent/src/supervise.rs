//! Supervision: launching a task, waiting for it, enforcing its timeout, stopping it on a
//! cancel, at shutdown or when its job moved on, then reporting how it ended.

use std::sync::Arc;
use std::time::Duration;

use jetrun_core::task::TaskPhase;
use jetrun_nats::lifecycle::lock;
use jetrun_runner::{LaunchRequest, RunnerError, TaskStatus};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::events::{Attempt, Ending};
use crate::heartbeat::Keep;
use crate::{Agent, Inner, Task};

/// Why a supervisor is told to stop its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    Cancel,
    Shutdown,
}

/// A task under supervision, as the agent's table keeps it.
pub(crate) struct Supervised {
    pub(crate) attempt: u32,
    pub(crate) task_ref: String,
    pub(crate) stop: mpsc::Sender<StopReason>,
}

impl Agent {
    /// Launches a task through this node's runner (idempotent on `req.token`) and
    /// returns its reference; hand it to [`Agent::supervise`] once recorded.
    pub async fn launch(&self, req: &LaunchRequest) -> Result<String, RunnerError> {
        self.inner.runner.launch(req).await
    }

    /// Supervises a launched task until it ends, renewing the lease, then publishes its
    /// final event. No `started` event: dispatch has recorded `running` (with the task's
    /// reference) before it hands the task over, and nothing reads one (issue 13).
    pub fn supervise(&self, task: Task) {
        self.spawn_supervisor(task);
    }

    /// Stops the task of `job_id` as cancelled, if this agent runs it.
    pub async fn cancel(&self, job_id: &str) -> bool {
        let tx = lock(&self.inner.tasks).get(job_id).map(|s| s.stop.clone());
        match tx {
            Some(tx) => tx.send(StopReason::Cancel).await.is_ok(),
            None => false,
        }
    }

    /// Starts a supervisor of `task` (launched now, or adopted after a restart).
    pub(crate) fn spawn_supervisor(&self, task: Task) {
        let (tx, rx) = mpsc::channel(2);
        lock(&self.inner.tasks).insert(
            task.job_id.clone(),
            Supervised {
                attempt: task.attempt,
                task_ref: task.task_ref.clone(),
                stop: tx,
            },
        );
        let inner = self.inner.clone();
        let span = tracing::info_span!(
            "task",
            job_id = task.job_id.as_str(),
            attempt = i64::from(task.attempt),
            task_ref = task.task_ref.as_str()
        );
        self.inner.tracker.spawn(tracing::Instrument::instrument(
            async move { inner.supervise(task, rx).await },
            span,
        ));
    }
}

impl Inner {
    async fn supervise(self: Arc<Self>, task: Task, mut stop: mpsc::Receiver<StopReason>) {
        // Dropped when this function returns: dispatch's slot frees last.
        let _guard = task.guard;
        let (timeout, started_at) = (task.timeout, task.started_at);
        let (lease_revision, cancel_requested) = (task.lease_revision, task.cancel_requested);
        let task = Attempt {
            job_id: task.job_id,
            attempt: task.attempt,
            task_ref: task.task_ref,
            traceparent: task.traceparent,
            key: task.attempt_key,
        };
        let lease = self.lease_for(&task.job_id, task.attempt);
        let mut lease_rev = lease_revision;
        let elapsed = (jetrun_core::now() - started_at).to_std().unwrap_or_default();
        let deadline = tokio::time::Instant::now() + timeout.saturating_sub(elapsed);
        let runner = self.runner.clone();
        let mut wait = runner.wait(&task.task_ref);
        let period = self.config.renew_every.max(Duration::from_millis(100));
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut cancel_now = cancel_requested;
        let task_ref = task.task_ref.as_str();
        let ending = loop {
            if cancel_now {
                self.stop_task(task_ref, self.config.stop_grace).await;
                break Ending::new(TaskPhase::Stopped, None, Some("cancelled".into()));
            }
            tokio::select! {
                st = &mut wait => break ended(st),
                _ = tokio::time::sleep_until(deadline) => {
                    info!(job_id = %task.job_id, timeout = ?timeout, "task timed out; stopping it");
                    self.stop_task(task_ref, self.config.stop_grace).await;
                    break Ending::new(TaskPhase::TimedOut, None, Some(format!("timed out after {} s", timeout.as_secs())));
                }
                r = stop.recv() => match r {
                    Some(StopReason::Cancel) => cancel_now = true,
                    Some(StopReason::Shutdown) | None => {
                        self.stop_task(task_ref, self.config.shutdown_grace).await;
                        break Ending::new(TaskPhase::Lost, None, Some("node agent shut down".into()));
                    }
                },
                _ = renew.tick() => match self.keep(&lease, &mut lease_rev).await {
                    Keep::Run => {}
                    Keep::Cancel => cancel_now = true,
                    Keep::Superseded => {
                        info!(job_id = %task.job_id, attempt = task.attempt, "job moved on without this task; stopping it");
                        self.stop_task(task_ref, Duration::from_secs(1)).await;
                        let _ = self.runner.remove(task_ref).await;
                        self.forget(&task.job_id, task.attempt);
                        return;
                    }
                },
            }
        };
        drop(wait);
        debug!(job_id = %task.job_id, phase = ending.phase.as_str(), exit_code = ?ending.exit_code, "task ended");
        // Before `remove`: the result lives with the task.
        let ev = self.final_event(&task, ending).await;
        // The final event goes out before the lease is given up: if it fails for good the
        // lease expires and settle retries the job.
        if self.publish_final(&ev, &task).await
            && let Err(e) = self.ctx.store.release_lease(&task.job_id).await
        {
            debug!(job_id = %task.job_id, error = %e, "lease not released; it will expire");
        }
        if let Err(e) = self.runner.remove(task_ref).await {
            debug!(task_ref = %task_ref, error = %e, "task not removed");
        }
        self.forget(&task.job_id, task.attempt);
    }

    /// Drops this attempt's entry, never a newer attempt's of the same job (an ECS Spot
    /// retry may run here while the old attempt's supervisor winds down): dropping that
    /// entry would close the new supervisor's stop channel and so stop its task.
    fn forget(&self, job_id: &str, attempt: u32) {
        let mut tasks = lock(&self.tasks);
        if tasks.get(job_id).is_some_and(|s| s.attempt == attempt) {
            tasks.remove(job_id);
        }
    }

    pub(crate) async fn stop_task(&self, task_ref: &str, grace: Duration) {
        if let Err(e) = self.runner.stop(task_ref, grace).await {
            warn!(task_ref = %task_ref, error = %e, "stopping the task failed");
        }
    }
}

/// How the runner's answer to `wait` ends the attempt.
fn ended(st: Result<TaskStatus, RunnerError>) -> Ending {
    match st {
        Ok(TaskStatus::Exited { exit_code }) => Ending::new(TaskPhase::Exited, Some(exit_code), None),
        Ok(TaskStatus::Killed { signal }) => Ending::new(
            TaskPhase::Exited,
            Some(128 + signal),
            Some(format!("killed by signal {signal}")),
        ),
        // No status anywhere: it died with its node; retried, never an exit code.
        Ok(TaskStatus::Lost) => Ending::new(
            TaskPhase::Lost,
            None,
            Some("the task ended with no status recorded: it died with its node".into()),
        ),
        Ok(other) => Ending::new(TaskPhase::Lost, None, Some(format!("runner reported {other:?}"))),
        Err(e) => Ending::new(
            TaskPhase::Lost,
            None,
            Some(format!("waiting for the task failed: {e}")),
        ),
    }
}
