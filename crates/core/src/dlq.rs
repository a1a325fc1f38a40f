//! Dead-letter entries: messages that could not be processed, kept with the reason so
//! they can be inspected and replayed (`jetrun dlq list|show|replay`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// The most of a body an entry embeds (before base64). With the bounded headers below an
/// entry stays far under the server's 1 MiB default max payload, so any message,
/// however large, can be dead-lettered.
pub const PAYLOAD_EXCERPT_BYTES: usize = 64 * 1024;
/// Headers an entry keeps (the first, by name).
pub const MAX_HEADERS: usize = 64;
/// The longest header value an entry keeps (longer ones are cut at a char boundary).
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;

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
    /// Its body, base64 (it may not be valid UTF-8 or JSON): all of it, or the first
    /// [`PAYLOAD_EXCERPT_BYTES`] when `payload_truncated`.
    pub payload_base64: String,
    /// Whether `payload_base64` is only an excerpt: the full body is at `stream` /
    /// `stream_seq` for as long as that stream retains it (`jetrun dlq replay` fetches it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub payload_truncated: bool,
    /// The size of the original body in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<u64>,
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

    /// Encodes a body for [`DeadLetter::payload_base64`] (all of it: see
    /// [`DeadLetter::set_payload`] for the bounded form).
    pub fn encode_payload(body: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(body)
    }

    /// Stores `body` bounded: at most [`PAYLOAD_EXCERPT_BYTES`] of it, with
    /// `payload_truncated` and `payload_bytes` saying what was cut.
    pub fn set_payload(&mut self, body: &[u8]) {
        let cut = body.len() > PAYLOAD_EXCERPT_BYTES;
        let kept = if cut { &body[..PAYLOAD_EXCERPT_BYTES] } else { body };
        self.payload_base64 = Self::encode_payload(kept);
        self.payload_truncated = cut;
        self.payload_bytes = Some(body.len() as u64);
    }

    /// Bounds headers for an entry: at most [`MAX_HEADERS`], each value at most
    /// [`MAX_HEADER_VALUE_BYTES`].
    pub fn bound_headers(headers: BTreeMap<String, String>) -> BTreeMap<String, String> {
        headers
            .into_iter()
            .take(MAX_HEADERS)
            .map(|(k, mut v)| {
                if v.len() > MAX_HEADER_VALUE_BYTES {
                    let mut end = MAX_HEADER_VALUE_BYTES;
                    while !v.is_char_boundary(end) {
                        end -= 1;
                    }
                    v.truncate(end);
                }
                (k, v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> DeadLetter {
        DeadLetter {
            origin: "route".into(),
            reason_kind: "invalid_json".into(),
            reason: "r".into(),
            subject: "s".into(),
            stream: None,
            stream_seq: None,
            deliveries: 1,
            headers: BTreeMap::new(),
            payload_base64: String::new(),
            payload_truncated: false,
            payload_bytes: None,
            job_id: None,
            failed_at: crate::now(),
        }
    }

    #[test]
    fn a_large_body_is_kept_as_a_bounded_excerpt() {
        let mut e = entry();
        let body = vec![b'x'; 900 * 1024];
        e.set_payload(&body);
        assert!(e.payload_truncated);
        assert_eq!(e.payload_bytes, Some(900 * 1024));
        assert_eq!(e.payload().unwrap().len(), PAYLOAD_EXCERPT_BYTES);
        e.headers = DeadLetter::bound_headers(
            (0..1000)
                .map(|i| (format!("h{i:04}"), "é".repeat(10_000)))
                .collect(),
        );
        assert_eq!(e.headers.len(), MAX_HEADERS);
        assert!(serde_json::to_vec(&e).unwrap().len() < 512 * 1024);
    }

    #[test]
    fn a_small_body_is_kept_whole() {
        let mut e = entry();
        e.set_payload(b"{}");
        assert!(!e.payload_truncated);
        assert_eq!(e.payload().unwrap(), b"{}");
        let v = serde_json::to_value(&e).unwrap();
        assert!(v.get("payload_truncated").is_none());
    }
}
