//! Dead letters: publish with the reason, list, show, replay.

use async_nats::jetstream::{self, Message};
use bytes::Bytes;
use jetrun_core::Names;
use jetrun_core::dlq::DeadLetter;
use jetrun_core::schema::types;

use crate::events::{EventPublisher, PublishError, headers_to_map};

/// Builds the dead-letter entry for a JetStream message.
pub fn entry_for(
    origin: &str,
    reason_kind: &str,
    reason: &str,
    msg: &Message,
    job_id: Option<String>,
) -> DeadLetter {
    let info = msg.info().ok();
    DeadLetter {
        origin: origin.to_string(),
        reason_kind: reason_kind.to_string(),
        reason: reason.to_string(),
        subject: msg.subject.to_string(),
        stream: info.as_ref().map(|i| i.stream.to_string()),
        stream_seq: info.as_ref().map(|i| i.stream_sequence),
        deliveries: info.as_ref().map(|i| i.delivered as u64).unwrap_or(0),
        headers: headers_to_map(msg.headers.as_ref()),
        payload_base64: DeadLetter::encode_payload(&msg.payload),
        job_id,
        failed_at: jetrun_core::now(),
    }
}

/// Publishes `entry` on `<prefix>.dlq.<origin>` and waits for the ack. Its id is derived
/// from the original stream position, so dead-lettering the same message twice stores it
/// once.
pub async fn publish(
    publisher: &EventPublisher,
    names: &Names,
    entry: &DeadLetter,
) -> Result<u64, PublishError> {
    let mut env = publisher.envelope(types::DEAD_LETTER);
    if let (Some(stream), Some(seq)) = (&entry.stream, entry.stream_seq) {
        env = env.with_id(format!("dlq.{stream}.{seq}"));
    }
    if let Some(j) = &entry.job_id {
        env = env.with_subject(j.clone());
    }
    publisher.publish(names.dlq(&entry.origin), &env, entry).await
}

/// A stored dead letter and its sequence in the DLQ stream.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Sequence in the DLQ stream (what `dlq show` and `dlq replay` take).
    pub seq: u64,
    /// The entry.
    pub entry: DeadLetter,
}

/// Errors reading or replaying dead letters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlqError {
    /// No entry at that sequence.
    #[error("no dead letter at sequence {0}")]
    NotFound(u64),
    /// The stored entry does not decode.
    #[error("dead letter {0} is corrupt: {1}")]
    Corrupt(u64, String),
    /// JetStream trouble.
    #[error("jetstream: {0}")]
    Unavailable(String),
}

/// Reads up to `limit` dead letters, oldest first, starting after sequence `after`.
pub async fn list(
    js: &jetstream::Context,
    names: &Names,
    after: u64,
    limit: usize,
) -> Result<Vec<Stored>, DlqError> {
    let stream = js
        .get_stream(names.stream_dlq())
        .await
        .map_err(|e| DlqError::Unavailable(e.to_string()))?;
    let mut out = Vec::new();
    let mut seq = after + 1;
    while out.len() < limit {
        // direct_get_next_for_subject walks forward without a consumer.
        match stream
            .direct_get_next_for_subject(names.dlq_all(), Some(seq))
            .await
        {
            Ok(m) => {
                let s = m.sequence;
                let entry =
                    serde_json::from_slice(&m.payload).map_err(|e| DlqError::Corrupt(s, e.to_string()))?;
                out.push(Stored { seq: s, entry });
                seq = s + 1;
            }
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => break,
            Err(e) => return Err(DlqError::Unavailable(e.to_string())),
        }
    }
    Ok(out)
}

/// One dead letter by its sequence.
pub async fn show(js: &jetstream::Context, names: &Names, seq: u64) -> Result<DeadLetter, DlqError> {
    let stream = js
        .get_stream(names.stream_dlq())
        .await
        .map_err(|e| DlqError::Unavailable(e.to_string()))?;
    let m = stream
        .get_raw_message(seq)
        .await
        .map_err(|_| DlqError::NotFound(seq))?;
    serde_json::from_slice(&m.payload).map_err(|e| DlqError::Corrupt(seq, e.to_string()))
}

/// Republishes dead letter `seq` to its original subject with its original headers
/// (minus `Nats-Msg-Id`, so JetStream's dedupe window does not swallow it) and removes
/// it from the DLQ. Returns the new stream sequence.
pub async fn replay(js: &jetstream::Context, names: &Names, seq: u64) -> Result<u64, DlqError> {
    let entry = show(js, names, seq).await?;
    let body = entry
        .payload()
        .map_err(|e| DlqError::Corrupt(seq, e.to_string()))?;
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in &entry.headers {
        if !k.eq_ignore_ascii_case("Nats-Msg-Id") && !k.starts_with("Nats-") {
            headers.insert(k.as_str(), v.as_str());
        }
    }
    headers.insert("jetrun-replayed-from", seq.to_string().as_str());
    let ack = js
        .publish_with_headers(entry.subject.clone(), headers, Bytes::from(body))
        .await
        .map_err(|e| DlqError::Unavailable(e.to_string()))?
        .await
        .map_err(|e| DlqError::Unavailable(e.to_string()))?;
    let stream = js
        .get_stream(names.stream_dlq())
        .await
        .map_err(|e| DlqError::Unavailable(e.to_string()))?;
    stream
        .delete_message(seq)
        .await
        .map_err(|e| DlqError::Unavailable(e.to_string()))?;
    Ok(ack.sequence)
}

/// Number of dead letters currently stored.
pub async fn count(js: &jetstream::Context, names: &Names) -> Result<u64, DlqError> {
    let mut stream = js
        .get_stream(names.stream_dlq())
        .await
        .map_err(|e| DlqError::Unavailable(e.to_string()))?;
    let info = stream
        .info()
        .await
        .map_err(|e| DlqError::Unavailable(e.to_string()))?;
    Ok(info.state.messages)
}
