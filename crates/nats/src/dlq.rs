//! Dead letters: publish with the reason, list, show, replay.

use async_nats::jetstream::{self, Message};
use bytes::Bytes;
use jetrun_core::Names;
use jetrun_core::dlq::DeadLetter;
use jetrun_core::schema::types;

use crate::events::{EventPublisher, PublishError, headers_to_map};

/// Builds the dead-letter entry for a JetStream message. The entry always fits a
/// message: the body is kept whole up to [`jetrun_core::dlq::PAYLOAD_EXCERPT_BYTES`],
/// else as an excerpt with `payload_truncated` (the original stream and sequence let
/// [`replay`] fetch the whole body), and headers are bounded.
pub fn entry_for(
    origin: &str,
    reason_kind: &str,
    reason: &str,
    msg: &Message,
    job_id: Option<String>,
) -> DeadLetter {
    let info = msg.info().ok();
    let mut entry = DeadLetter {
        origin: origin.to_string(),
        reason_kind: reason_kind.to_string(),
        reason: bound_reason(reason),
        subject: msg.subject.to_string(),
        stream: info.as_ref().map(|i| i.stream.to_string()),
        stream_seq: info.as_ref().map(|i| i.stream_sequence),
        deliveries: info.as_ref().map(|i| i.delivered as u64).unwrap_or(0),
        headers: DeadLetter::bound_headers(headers_to_map(msg.headers.as_ref())),
        payload_base64: String::new(),
        payload_truncated: false,
        payload_bytes: None,
        job_id,
        failed_at: jetrun_core::now(),
    };
    entry.set_payload(&msg.payload);
    entry
}

/// Reasons can quote the input (a schema error citing a huge value): keep them short.
fn bound_reason(reason: &str) -> String {
    const MAX: usize = 4096;
    if reason.len() <= MAX {
        return reason.to_string();
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
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
    /// The entry holds only an excerpt and its original is no longer in its stream
    /// (expired, or removed from a work queue), so it cannot be replayed whole.
    #[error(
        "dead letter {seq} holds only the first {excerpt} of {bytes} bytes and the original \
         ({stream} #{stream_seq}) is no longer retained: {why}; `jetrun dlq show {seq}` prints the excerpt"
    )]
    OriginalGone {
        /// The dead letter.
        seq: u64,
        /// Bytes the entry holds.
        excerpt: usize,
        /// Bytes of the original.
        bytes: u64,
        /// The original stream.
        stream: String,
        /// The original sequence.
        stream_seq: u64,
        /// What the server said.
        why: String,
    },
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
/// it from the DLQ. Returns the new stream sequence. An entry holding only an excerpt is
/// replayed with the whole original, read from its stream by sequence (a direct get);
/// if that stream no longer has it, [`DlqError::OriginalGone`] says so and nothing is
/// published.
pub async fn replay(js: &jetstream::Context, names: &Names, seq: u64) -> Result<u64, DlqError> {
    let entry = show(js, names, seq).await?;
    let excerpt = entry
        .payload()
        .map_err(|e| DlqError::Corrupt(seq, e.to_string()))?;
    let body = if entry.payload_truncated {
        original(js, seq, &entry, excerpt.len()).await?
    } else {
        excerpt
    };
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in &entry.headers {
        if !k.eq_ignore_ascii_case("Nats-Msg-Id") && !k.starts_with("Nats-") {
            // An entry is data anyone with DLQ write access could have shaped: a header
            // NATS would refuse is dropped, never a panic.
            crate::events::insert_header(&mut headers, k, v);
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

/// The whole body of a truncated entry, from its original stream position.
async fn original(
    js: &jetstream::Context,
    seq: u64,
    entry: &DeadLetter,
    excerpt: usize,
) -> Result<Vec<u8>, DlqError> {
    let gone = |why: String| DlqError::OriginalGone {
        seq,
        excerpt,
        bytes: entry.payload_bytes.unwrap_or_default(),
        stream: entry.stream.clone().unwrap_or_else(|| "?".into()),
        stream_seq: entry.stream_seq.unwrap_or_default(),
        why,
    };
    let (Some(stream), Some(stream_seq)) = (&entry.stream, entry.stream_seq) else {
        return Err(gone("the entry names no stream position".into()));
    };
    let s = js.get_stream(stream).await.map_err(|e| gone(e.to_string()))?;
    let m = match s.direct_get(stream_seq).await {
        Ok(m) => m,
        Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
            return Err(gone("not found".into()));
        }
        Err(e) => return Err(DlqError::Unavailable(e.to_string())),
    };
    // Same position, different message (a purge and reuse cannot happen, but a subject
    // mismatch must never replay something else).
    if m.subject.as_str() != entry.subject || entry.payload_bytes.is_some_and(|b| b != m.payload.len() as u64)
    {
        return Err(gone(format!("sequence {stream_seq} now holds another message")));
    }
    Ok(m.payload.to_vec())
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
