//! Task events: building them (with the job's result on `exited`), signing and
//! publishing them ([`jetrun_node::publish_task_event`]: the signature covers the whole
//! body, result included), the final one with retries.

use std::time::Duration;

use jetrun_core::task::{TaskEvent, TaskPhase};
use jetrun_nats::lifecycle::Doubling;
use jetrun_node::NodeError;
use tracing::warn;

use jetrun_core::task::AttemptKey;

use crate::Inner;

/// Tries of the final event, 200 ms doubling to 5 s (≈ 30 s in all): past that the lease
/// expires and settle decides without it.
const FINAL_EVENT_RETRY: Doubling = Doubling::new(10, Duration::from_millis(200), Duration::from_secs(5));

/// The attempt a task event is about: what it says and what signs it.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub(crate) job_id: String,
    pub(crate) attempt: u32,
    pub(crate) task_ref: String,
    pub(crate) traceparent: Option<String>,
    pub(crate) key: Option<AttemptKey>,
}

/// How a supervised task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ending {
    pub(crate) phase: TaskPhase,
    pub(crate) exit_code: Option<i32>,
    pub(crate) message: Option<String>,
}

impl Ending {
    pub(crate) fn new(phase: TaskPhase, exit_code: Option<i32>, message: Option<String>) -> Self {
        Self {
            phase,
            exit_code,
            message,
        }
    }
}

impl Inner {
    /// The event for `task` ending (or starting) as `e`, from this node, now.
    pub(crate) fn event(&self, task: &Attempt, e: Ending) -> TaskEvent {
        TaskEvent {
            job_id: task.job_id.clone(),
            attempt: task.attempt,
            phase: e.phase,
            task_ref: task.task_ref.clone(),
            node_id: self.ctx.node_id.clone(),
            exit_code: e.exit_code,
            message: e.message,
            result: None,
            result_error: None,
            at: jetrun_core::now(),
        }
    }

    /// The final event; for `exited`, with the result the task left (or why it was
    /// refused). A bad result never changes how the task ended.
    pub(crate) async fn final_event(&self, task: &Attempt, e: Ending) -> TaskEvent {
        let mut ev = self.event(task, e);
        if ev.phase == TaskPhase::Exited {
            match self.runner.result(&task.task_ref).await {
                Ok(None) => {}
                Ok(Some(raw)) => match jetrun_core::result::parse(&raw) {
                    Ok(r) => ev.result = Some(r),
                    Err(err) => {
                        warn!(job_id = %task.job_id, error = %err, "the task's result is refused");
                        ev.result_error = Some(err.to_string());
                    }
                },
                Err(err) => {
                    warn!(job_id = %task.job_id, error = %err, "the task's result could not be read");
                    ev.result_error = Some(format!("the result could not be read: {err}"));
                }
            }
        }
        ev
    }

    /// Publishes `ev`, signed with `task`'s attempt key, in its trace.
    pub(crate) async fn publish(&self, ev: &TaskEvent, task: &Attempt) -> Result<(), NodeError> {
        jetrun_node::publish_task_event(
            &self.publisher,
            &self.ctx.names,
            ev,
            task.traceparent.as_deref(),
            task.key.as_ref(),
        )
        .await
    }

    /// Publishes the final event, retrying (it is deduplicated by id); whether it was
    /// stored.
    pub(crate) async fn publish_final(&self, ev: &TaskEvent, task: &Attempt) -> bool {
        let r = FINAL_EVENT_RETRY
            .run("publishing the final task event", || self.publish(ev, task))
            .await;
        if let Err(e) = &r {
            warn!(job_id = %task.job_id, error = %e, "final task event not published; the lease will expire");
        }
        r.is_ok()
    }
}
