//! Dead-letter entries: messages that could not be processed, kept with the reason so
//! they can be inspected and replayed (`jetrun dlq list|show|replay`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// One dead letter (`dev.jetrun.dlq.entry.v1`), published on `<prefix>.dlq.<origin>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The component that gave up: `ingest`, `route`, `dispatch`, `settle`, ...
    pub origin: String,
    /// Why, as a stable kind (`invalid_event`, `schema`, `attempts_exhausted`, ...).
    pub reason_kind: String,
    /// Why, for people.
    pub reason: String,
    /// The subject the message was on; a replay republishes there.
    pub subject: String,
    /// The stream it came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Its sequence in that stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_seq: Option<u64>,
    /// How many times it was delivered before this.
    #[serde(default)]
    pub deliveries: u64,
    /// Its headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Its body, base64 (it may not be valid UTF-8 or JSON).
    pub payload_base64: String,
    /// The job concerned, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// When it was dead-lettered.
    pub failed_at: Timestamp,
}

impl DeadLetter {
    /// The original body.
    pub fn payload(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(&self.payload_base64)
    }

    /// Encodes a body for [`DeadLetter::payload_base64`].
    pub fn encode_payload(body: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(body)
    }
}
