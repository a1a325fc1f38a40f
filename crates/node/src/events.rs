//! Publishing task lifecycle events (`dev.jetrun.task.lifecycle.v1` on
//! `<prefix>.task.<phase>.<job_id>`), signed with the attempt's key ([`crate::signing`]).
//!
//! The signature covers the exact published body, so every field of the event (the exit
//! code, the job's `result` or `result_error`) is as the node sent it or settle refuses it.

use bytes::Bytes;
use jetrun_core::schema::types;
use jetrun_core::task::{AttemptKey, TaskEvent};
use jetrun_nats::EventPublisher;

use crate::{NodeError, NodeErrorKind, signing};

/// The event's `ce-id` (and `Nats-Msg-Id`): deduplicated by job, attempt and phase, with a
/// tag only the key's holder can compute (a forger who published first under the plain id
/// would otherwise make JetStream drop the real event as a duplicate).
pub fn event_id(ev: &TaskEvent, key: Option<&AttemptKey>) -> String {
    let phase = ev.phase.as_str();
    match key {
        Some(k) => format!(
            "{}-{}.{phase}.{}",
            ev.job_id,
            ev.attempt,
            signing::id_tag(k, &ev.job_id, ev.attempt, phase)
        ),
        None => format!("{}-{}.{phase}", ev.job_id, ev.attempt),
    }
}

/// Publishes a task lifecycle event on `<prefix>.task.<phase>.<job_id>`, deduplicated by
/// job, attempt and phase ([`event_id`]), in the job's trace, signed with the attempt's
/// `key`. Without a key it goes unsigned (and settle will refuse it). Returns once
/// JetStream has stored it.
pub async fn publish_task_event(
    publisher: &EventPublisher,
    names: &jetrun_core::Names,
    ev: &TaskEvent,
    traceparent: Option<&str>,
    key: Option<&AttemptKey>,
) -> Result<(), NodeError> {
    let subject = names.task(ev.phase.as_str(), &ev.job_id);
    let what = || format!("publish {subject}");
    let env = publisher
        .envelope(types::TASK_LIFECYCLE)
        .with_id(event_id(ev, key))
        .with_subject(ev.job_id.clone())
        .with_trace(traceparent.map(str::to_string), None);
    let value =
        serde_json::to_value(ev).map_err(|e| NodeError::with_source(NodeErrorKind::Encode, what(), e))?;
    jetrun_core::schema::validate_value(types::TASK_LIFECYCLE, &value)
        .map_err(|e| NodeError::with_source(NodeErrorKind::Invalid, what(), e))?;
    // Signed over the exact bytes sent.
    let body =
        serde_json::to_vec(&value).map_err(|e| NodeError::with_source(NodeErrorKind::Encode, what(), e))?;
    let mut headers = jetrun_nats::events::to_header_map(&env);
    if let Some(k) = key {
        let sig = signing::sign(k, types::TASK_LIFECYCLE, &subject, &body);
        headers.insert(jetrun_core::task::SIGNATURE_HEADER, sig.as_str());
    }
    let ack = publisher
        .jetstream()
        .publish_with_headers(subject.clone(), headers, Bytes::from(body))
        .await
        .map_err(|e| NodeError::with_source(NodeErrorKind::Unavailable, what(), e))?;
    ack.await
        .map_err(|e| NodeError::with_source(NodeErrorKind::Unavailable, what(), e))?;
    Ok(())
}
