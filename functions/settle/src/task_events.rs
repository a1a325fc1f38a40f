//! Task events: the end of a task, reported by its node agent (or the ECS bridge, the
//! same events), ends its attempt.
//!
//! `exited` → `succeeded`/`failed` by the exit code, with the task's result (or why it
//! was refused) copied into the record by the same compare-and-set; `timed_out` →
//! `timed_out`; `stopped` of a job whose cancel was asked → `cancelled`;
//! `launch_failed`, `lost` and a `stopped` nobody asked for → the lifecycle policy
//! (retry, or fail with a dead letter). Events of another attempt, of a queued job or of
//! a terminal one are stale and ignored; events that are not the attempt's node's are
//! refused ([`crate::task_auth`]).

use jetrun_core::job::{Transition, TransitionErrorKind};
use jetrun_core::schema::types;
use jetrun_core::task::{TaskEvent, TaskPhase};
use jetrun_core::{JobError, JobRecord, JobStatus};
use jetrun_host::{Decode, Event, HandlerError};
use jetrun_nats::StoreErrorKind;
use tracing::{debug, warn};

use crate::{Outcome, Settle, TaskEventError, task_auth, transient};

/// At most this many messages of one task subject are read looking for the attempt's
/// real final event (one per attempt normally; forged ones are dead-lettered but stay in
/// the stream).
const FINAL_EVENT_SCAN: usize = 256;

/// Compare-and-set races one event may lose before it is handed back for redelivery.
const MAX_RACES: usize = 16;

/// What a task event must be: a `task.lifecycle` CloudEvent matching its schema; one of
/// another type on a task subject is refused as forged, before its body is looked at.
pub const TASK_EVENT: Decode = Decode::event(types::TASK_LIFECYCLE).wrong_type_is(task_auth::FORGED);

impl Settle {
    /// Handles one task lifecycle message. Only events of the attempt's own node are
    /// applied (see [`task_auth`]); a refused one is dead-lettered as `forged_task_event`.
    pub async fn on_task_message(&self, ev: Event<TaskEvent>) -> Result<(), HandlerError> {
        let Event { event: ev, msg } = ev;
        let forged = |reason: String| {
            warn!(subject = %msg.subject, reason = %reason, "refusing a task event");
            HandlerError::permanent(task_auth::FORGED, reason)
        };
        let proof = task_auth::Proof {
            ce_type: msg.envelope.as_ref().ok().map(|e| e.ty.as_str()),
            subject: &msg.subject,
            signature: task_auth::signature_of(msg.message.headers.as_ref()),
            body: &msg.payload,
        };
        task_auth::check_message(&self.inner.ctx.names, &proof, &ev).map_err(forged)?;
        match self.on_task_event(&ev, Some(&proof)).await {
            Ok(_) => Ok(()),
            Err(TaskEventError::Forged(reason)) => Err(forged(reason)),
            Err(TaskEventError::Store(e)) => Err(match e.kind {
                StoreErrorKind::InvalidKey | StoreErrorKind::Corrupt => {
                    HandlerError::permanent("invalid_event", e.to_string())
                }
                _ => transient(e),
            }),
            // Not dead-lettered yet: the job was left as it was; redelivery tries again.
            Err(TaskEventError::Lifecycle(e)) => Err(transient(crate::chain(&e))),
        }
    }

    /// Applies a task event to its job (retrying lost compare-and-set races). `proof`:
    /// what the message came with, checked against the record; `None` only for an event
    /// the caller has already checked ([`Settle::final_event`]).
    pub(crate) async fn on_task_event(
        &self,
        ev: &TaskEvent,
        proof: Option<&task_auth::Proof<'_>>,
    ) -> Result<Outcome, TaskEventError> {
        let store = &self.inner.ctx.store;
        if ev.phase == TaskPhase::Started {
            // Not delivered by settle's consumer (its filter leaves `started` out); a
            // consumer made by an older version may still deliver some: dispatch
            // records `running` itself, so there is nothing to read or write.
            return Ok(Outcome::Skipped);
        }
        for _ in 0..MAX_RACES {
            let Some((rec, rev)) = store.get(&ev.job_id).await? else {
                return Ok(Outcome::Skipped);
            };
            if rec.status.is_terminal() || rec.status == JobStatus::Queued || rec.attempt != ev.attempt {
                debug!(job_id = %ev.job_id, phase = ev.phase.as_str(), "stale task event");
                return Ok(Outcome::Skipped);
            }
            if let Some(p) = proof {
                task_auth::check_attempt(&rec, p, ev).map_err(TaskEventError::Forged)?;
            }
            let res = match ev.phase {
                TaskPhase::Started => return Ok(Outcome::Skipped),
                TaskPhase::Exited => {
                    let t = Transition::ExitedWith {
                        exit_code: ev.exit_code.unwrap_or(-1),
                        result: ev.result.clone(),
                        result_error: ev.result_error.clone(),
                    };
                    self.terminal(rec, rev, t, Some(&ev.task_ref), false)
                        .await
                        .map_err(TaskEventError::from)
                }
                TaskPhase::TimedOut => self
                    .terminal(rec, rev, Transition::TimedOut, None, false)
                    .await
                    .map_err(TaskEventError::from),
                TaskPhase::Stopped if rec.cancel_requested => {
                    let t = Transition::Cancel {
                        reason: "cancelled by user".into(),
                    };
                    self.terminal(rec, rev, t, None, false)
                        .await
                        .map_err(TaskEventError::from)
                }
                _ => {
                    let what = format!(
                        "task {} on node {}: {}",
                        ev.phase.as_str(),
                        ev.node_id,
                        ev.message.clone().unwrap_or_default()
                    );
                    self.retry_or_fail(&rec, rev, JobError::new(ev.phase.as_str(), what))
                        .await
                        .map_err(TaskEventError::Lifecycle)
                }
            };
            match res {
                Err(TaskEventError::Store(e)) if e.kind == StoreErrorKind::Conflict => continue,
                Err(TaskEventError::Lifecycle(e)) if e.is_conflict() => continue,
                other => return other,
            }
        }
        // Lost every race: hand the event back for redelivery.
        Err(TaskEventError::Store(jetrun_nats::StoreError::from(
            jetrun_core::TransitionError {
                kind: TransitionErrorKind::Illegal,
                job_id: ev.job_id.clone(),
                from: JobStatus::Running,
                to: JobStatus::Running,
            },
        )))
    }

    /// A terminal transition (recording `running` first if the task's start was never
    /// recorded), then the lease is released if `release` (an agent that reported the
    /// end has released it already).
    pub(crate) async fn terminal(
        &self,
        rec: JobRecord,
        rev: u64,
        t: Transition,
        task_ref: Option<&str>,
        release: bool,
    ) -> Result<Outcome, jetrun_nats::StoreError> {
        let store = &self.inner.ctx.store;
        let (rec, rev) = match (rec.status, task_ref) {
            (JobStatus::Launching, Some(tr)) => {
                store
                    .transition_at(
                        &rec,
                        rev,
                        &Transition::Started {
                            task_ref: tr.to_string(),
                        },
                    )
                    .await?
            }
            _ => (rec, rev),
        };
        match store.transition_at(&rec, rev, &t).await {
            Ok((next, _)) => {
                debug!(job_id = %next.id, status = %next.status, exit_code = ?next.exit_code, attempt = next.attempt, "job settled");
                if release {
                    let _ = store.release_lease(&next.id).await;
                }
                Ok(Outcome::Settled)
            }
            Err(e) if matches!(e.kind, StoreErrorKind::Transition(_)) => Ok(Outcome::Skipped),
            Err(e) => Err(e),
        }
    }

    /// The final task event of the job's current attempt, if the TASKS stream has one
    /// that its node signed (a forged one there was dead-lettered and is not believed).
    pub(crate) async fn final_event(&self, rec: &JobRecord) -> Option<TaskEvent> {
        let ctx = &self.inner.ctx;
        let stream = ctx.js.get_stream(ctx.names.stream_tasks()).await.ok()?;
        for phase in [
            TaskPhase::Exited,
            TaskPhase::TimedOut,
            TaskPhase::Stopped,
            TaskPhase::Lost,
            TaskPhase::LaunchFailed,
        ] {
            let subject = ctx.names.task(phase.as_str(), &rec.id);
            // Every message of the subject, not just the last: a forged one published
            // after the real event must not hide it. A handful per job; bounded anyway.
            let mut found = None;
            let mut seq = 1;
            for _ in 0..FINAL_EVENT_SCAN {
                let Ok(m) = stream
                    .direct_get_next_for_subject(subject.as_str(), Some(seq))
                    .await
                else {
                    break;
                };
                seq = m.sequence + 1;
                let Ok(ev) = serde_json::from_slice::<TaskEvent>(&m.payload) else {
                    continue;
                };
                if ev.attempt != rec.attempt {
                    continue;
                }
                let envelope = jetrun_nats::events::from_header_map(&m.headers).ok();
                let proof = task_auth::Proof {
                    ce_type: envelope.as_ref().map(|e| e.ty.as_str()),
                    subject: &m.subject,
                    signature: task_auth::signature_of(Some(&m.headers)),
                    body: &m.payload,
                };
                match task_auth::check_message(&ctx.names, &proof, &ev)
                    .and_then(|()| task_auth::check_attempt(rec, &proof, &ev))
                {
                    Ok(()) => found = Some(ev),
                    Err(reason) => {
                        debug!(job_id = %rec.id, reason = %reason, "a task event of the attempt is not its node's; ignored")
                    }
                }
            }
            if found.is_some() {
                return found;
            }
        }
        None
    }
}
