//! Task event signatures: only the node that runs an attempt can end it.
//!
//! Every task event the agent publishes carries
//! `Jetrun-Task-Signature: v1=<hex HMAC-SHA256(key, input)>` where `key` is the raw 32
//! bytes of the attempt's [`AttemptKey`] (created by dispatch's claim, kept in the job
//! record, never shown to the task or the API) and `input` is
//!
//! ```text
//! "jetrun-task-v1\n" + ce-type + "\n" + subject + "\n" + body
//! ```
//!
//! (`subject` is the full NATS subject, `<prefix>.task.<phase>.<job_id>`; `body` the exact
//! published bytes). Neither a `ce-type` header value nor a subject can hold a newline, so
//! the input splits one way only. Settle recomputes it with the record's key and compares
//! in constant time.

use hmac::{KeyInit, Mac};
use jetrun_core::task::AttemptKey;

/// The signature scheme's version tag, the prefix of the header value.
pub const VERSION: &str = "v1";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn mac(key: &AttemptKey, ce_type: &str, subject: &str, body: &[u8]) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(&key.bytes()).ok()?;
    m.update(b"jetrun-task-v1\n");
    m.update(ce_type.as_bytes());
    m.update(b"\n");
    m.update(subject.as_bytes());
    m.update(b"\n");
    m.update(body);
    Some(m)
}

/// The header value signing a task event: `v1=<hex>`.
pub fn sign(key: &AttemptKey, ce_type: &str, subject: &str, body: &[u8]) -> String {
    match mac(key, ce_type, subject, body) {
        Some(m) => format!("{VERSION}={}", hex::encode(m.finalize().into_bytes())),
        // HMAC takes keys of any length; unreachable in practice, and an empty value
        // never verifies.
        None => String::new(),
    }
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No signature header.
    #[error("no {} header", jetrun_core::task::SIGNATURE_HEADER)]
    Missing,
    /// Not `v1=<64 hex digits>`.
    #[error("malformed signature (expected v1=<hex HMAC-SHA256>)")]
    Malformed,
    /// Well-formed but not made with the attempt's key over this event.
    #[error("signature does not match the attempt's key")]
    Mismatch,
}

/// Checks a header value against the event (constant-time comparison).
pub fn verify(
    key: &AttemptKey,
    header: Option<&str>,
    ce_type: &str,
    subject: &str,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_sig = header
        .trim()
        .strip_prefix("v1=")
        .ok_or(SignatureError::Malformed)?;
    let sig = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed)?;
    if sig.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    let m = mac(key, ce_type, subject, body).ok_or(SignatureError::Mismatch)?;
    m.verify_slice(&sig).map_err(|_| SignatureError::Mismatch)
}

/// A short tag derived from the key for the event's `ce-id` / `Nats-Msg-Id`, so nobody
/// without the key can publish first under the real event's id and have JetStream drop
/// the real one as a duplicate.
pub fn id_tag(key: &AttemptKey, job_id: &str, attempt: u32, phase: &str) -> String {
    match HmacSha256::new_from_slice(&key.bytes()) {
        Ok(mut m) => {
            m.update(format!("jetrun-task-id\n{job_id}\n{attempt}\n{phase}").as_bytes());
            hex::encode(&m.finalize().into_bytes()[..8])
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_key_and_input() {
        let k = AttemptKey::generate();
        let other = AttemptKey::generate();
        let t = "dev.jetrun.task.lifecycle.v1";
        let s = sign(&k, t, "jetrun.task.exited.j1", b"{}");
        assert!(s.starts_with("v1=") && s.len() == 67, "{s}");
        assert_eq!(verify(&k, Some(&s), t, "jetrun.task.exited.j1", b"{}"), Ok(()));
        assert_eq!(
            verify(&other, Some(&s), t, "jetrun.task.exited.j1", b"{}"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&k, Some(&s), t, "jetrun.task.exited.j2", b"{}"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&k, Some(&s), "x", "jetrun.task.exited.j1", b"{}"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&k, Some(&s), t, "jetrun.task.exited.j1", b"{ }"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(&k, None, t, "s", b""), Err(SignatureError::Missing));
        assert_eq!(
            verify(&k, Some("v1=zz"), t, "s", b""),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(&k, Some("sha256=00"), t, "s", b""),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn keys_round_trip_and_are_redacted() {
        let k = AttemptKey::generate();
        assert_eq!(AttemptKey::from_hex(k.as_hex()), Some(k.clone()));
        assert_eq!(k.bytes().len(), 32);
        assert!(!format!("{k:?}").contains(k.as_hex()));
        assert!(AttemptKey::from_hex("abc").is_none());
    }
}
