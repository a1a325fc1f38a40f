//! Which task events settle believes: only the attempt's own node can end it.
//!
//! A task event is applied only if its `ce-type` is the task lifecycle type, its subject
//! is `<prefix>.task.<phase>.<job_id>` for the body's phase and job, its `node_id` is the
//! node the record placed the attempt on, and its `Jetrun-Task-Signature` verifies with
//! the attempt's key (see `jetrun_node::signing`). Events of another attempt or of a
//! job that moved on stay stale and are ignored, as before. Anything else is refused:
//! dead-lettered with `reason_kind: forged_task_event`, nothing changes.

use jetrun_core::JobRecord;
use jetrun_core::schema::types;
use jetrun_core::task::{SIGNATURE_HEADER, TaskEvent};

/// The DLQ reason kind of a refused task event.
pub(crate) const FORGED: &str = "forged_task_event";

/// What a task event came with, besides its body's fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Proof<'a> {
    /// `ce-type`, if the message had a valid CloudEvent envelope.
    pub ce_type: Option<&'a str>,
    /// The subject it was published on.
    pub subject: &'a str,
    /// The `Jetrun-Task-Signature` header value.
    pub signature: Option<&'a str>,
    /// The exact body bytes.
    pub body: &'a [u8],
}

/// The signature header of a message, if any.
pub(crate) fn signature_of(h: Option<&async_nats::HeaderMap>) -> Option<&str> {
    h?.get(SIGNATURE_HEADER).map(|v| v.as_str())
}

/// Checks that need no record: the type and that the subject names the body's event.
pub(crate) fn check_message(
    names: &jetrun_core::Names,
    proof: &Proof<'_>,
    ev: &TaskEvent,
) -> Result<(), String> {
    match proof.ce_type {
        None => return Err("no valid CloudEvent headers".into()),
        Some(t) if t != types::TASK_LIFECYCLE => {
            return Err(format!(
                "ce-type {t:?} is not {} on a task subject",
                types::TASK_LIFECYCLE
            ));
        }
        Some(_) => {}
    }
    let expected = names.task(ev.phase.as_str(), &ev.job_id);
    if proof.subject != expected {
        return Err(format!(
            "subject {:?} does not match the body's phase and job ({expected:?})",
            proof.subject
        ));
    }
    Ok(())
}

/// Checks against the job's current record (same attempt already established): the node
/// and the signature.
pub(crate) fn check_attempt(rec: &JobRecord, proof: &Proof<'_>, ev: &TaskEvent) -> Result<(), String> {
    if rec.node_id.as_deref() != Some(ev.node_id.as_str()) {
        return Err(format!(
            "node_id {:?} is not the node of attempt {} ({:?})",
            ev.node_id,
            rec.attempt,
            rec.node_id.as_deref().unwrap_or("none")
        ));
    }
    let Some(key) = &rec.attempt_key else {
        return Err(format!(
            "attempt {} has no key to check a signature with (claimed by an older version)",
            rec.attempt
        ));
    };
    let ce_type = proof.ce_type.unwrap_or_default();
    jetrun_node::signing::verify(key, proof.signature, ce_type, proof.subject, proof.body)
        .map_err(|e| format!("attempt {}: {e}", rec.attempt))
}
