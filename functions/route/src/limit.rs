//! Per-repository concurrency: `guard.max_running_per_repository: N` (decision 41).
//!
//! A rule's repository has N **slots**, keys `limit.slot.<repository>.<rule>.<k>` in the
//! GitHub bot's bucket (`<prefix>-github`), each holding the id of the job that took it.
//! Route takes a slot before publishing a job: create-if-absent, or, when the holder has
//! ended (its record is terminal), a compare-and-set on the slot's revision. Both are
//! atomic on the server, so two route handlers (or replicas) racing for the last slot
//! cannot both win. Slots are never released explicitly: a slot is free once its holder
//! is terminal (or, never admitted, older than [`UNADMITTED_GRACE`]).
//!
//! Route then writes its **verdict** for the delivery and rule (`limit.verdict.<delivery>.
//! <rule>`, create-if-absent: the first decision stands for every redelivery), which the
//! github function reads to answer a refusal on the issue: one decision, made once, by
//! route; the github function never counts on its own.

use std::time::Duration;

use async_nats::jetstream::kv;
use jetrun_core::Names;
use jetrun_nats::JobStore;

/// A slot whose holder has no record yet (route published it, dispatch has not admitted
/// it) counts as taken for this long after it was taken; then the submission is taken for
/// lost (a route that gave up on the event) and the slot for free.
pub const UNADMITTED_GRACE: Duration = Duration::from_secs(15 * 60);

/// The bucket holding slots and verdicts: the GitHub bot's state bucket, `<prefix>-github`
/// (made by `jetrun init`; its claims are the github function's).
pub fn state_bucket(names: &Names) -> String {
    format!("{}-github", names.prefix())
}

/// What route decided for a delivery and rule with a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A slot is held by the job: submit it.
    Admitted,
    /// Every slot is held by an active job: no job; the answer.
    Refused(String),
}

impl Verdict {
    fn encode(&self, job_id: &str) -> String {
        match self {
            Verdict::Admitted => format!("admitted {job_id}"),
            Verdict::Refused(why) => format!("refused {why}"),
        }
    }

    /// A stored verdict (`None`: not a verdict).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let s = String::from_utf8_lossy(b);
        if s.starts_with("admitted") {
            Some(Verdict::Admitted)
        } else {
            s.strip_prefix("refused ")
                .map(|w| Verdict::Refused(w.to_string()))
        }
    }
}

/// A key token for arbitrary text, injective: `[A-Za-z0-9_-]` kept, every other byte
/// `=XX` (so `a.b/c` and `a_b/c` cannot share a slot).
pub fn key_token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() { "=".into() } else { out }
}

/// The verdict key of `delivery` and `rule`.
pub fn verdict_key(delivery: &str, rule: &str) -> String {
    format!("limit.verdict.{}.{}", key_token(delivery), key_token(rule))
}

fn slot_key(repository: &str, rule: &str, k: u32) -> String {
    // GitHub names are case-insensitive: `Octo/App` and `octo/app` share slots.
    format!(
        "limit.slot.{}.{}.{k}",
        key_token(&repository.to_ascii_lowercase()),
        key_token(rule)
    )
}

/// The decision could not be made now (NATS, the job store): retry the event.
#[derive(Debug, thiserror::Error)]
#[error("per-repository limit: {0}")]
pub struct LimitError(String);

fn err(what: &str, e: impl std::fmt::Display) -> LimitError {
    LimitError(format!("{what}: {e}"))
}

/// Decides (once per delivery and rule) whether `job_id` may start: takes one of the
/// `max` slots of `repository` for `rule`, or refuses naming the jobs holding them.
pub async fn decide(
    kv: &kv::Store,
    store: &JobStore,
    rule: &str,
    repository: &str,
    max: u32,
    delivery: &str,
    job_id: &str,
) -> Result<Verdict, LimitError> {
    let vkey = verdict_key(delivery, rule);
    if let Some(v) = kv.get(&vkey).await.map_err(|e| err("read verdict", e))?
        && let Some(v) = Verdict::decode(&v)
    {
        return Ok(v);
    }
    let mut holders = Vec::new();
    let mut admitted = false;
    for k in 0..max.max(1) {
        let key = slot_key(repository, rule, k);
        if take(kv, store, &key, job_id, &mut holders).await? {
            admitted = true;
            break;
        }
    }
    let verdict = if admitted {
        Verdict::Admitted
    } else {
        Verdict::Refused(format!(
            "`{rule}` is already running for {repository} (at most {max} at a time; job {}): \
             try again when it has finished.",
            holders
                .iter()
                .map(|h| format!("`{h}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    match kv.create(&vkey, verdict.encode(job_id).into()).await {
        Ok(_) => Ok(verdict),
        // A concurrent handler of the same delivery decided first: its decision stands
        // (the job id is the same, so a slot we took is held for that job either way).
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let v = kv.get(&vkey).await.map_err(|e| err("read verdict", e))?;
            v.as_deref()
                .and_then(Verdict::decode)
                .ok_or_else(|| LimitError("verdict vanished".into()))
        }
        Err(e) => Err(err("write verdict", e)),
    }
}

/// Tries to take slot `key` for `job_id`; a slot held by an active job is pushed to
/// `holders`.
async fn take(
    kv: &kv::Store,
    store: &JobStore,
    key: &str,
    job_id: &str,
    holders: &mut Vec<String>,
) -> Result<bool, LimitError> {
    match kv.create(key, job_id.to_string().into()).await {
        Ok(_) => return Ok(true),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(err("take slot", e)),
    }
    let Some(entry) = kv.entry(key).await.map_err(|e| err("read slot", e))? else {
        // Gone between the create and the read (expired): the next event takes it.
        return Ok(false);
    };
    let holder = String::from_utf8_lossy(&entry.value).to_string();
    if holder == job_id {
        return Ok(true); // ours: a redelivery, or a retry after publishing failed
    }
    let active = match store.get(&holder).await.map_err(|e| err("read holder", e))? {
        Some((rec, _)) => !rec.status.is_terminal(),
        None => {
            let age = chrono::Utc::now().timestamp() - entry.created.unix_timestamp();
            age < UNADMITTED_GRACE.as_secs() as i64
        }
    };
    if active {
        holders.push(holder);
        return Ok(false);
    }
    match kv.update(key, job_id.to_string().into(), entry.revision).await {
        Ok(_) => Ok(true),
        // Someone else took the freed slot first.
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
        Err(e) => Err(err("take freed slot", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_tokens_are_injective_and_valid() {
        assert_eq!(key_token("octo/app"), "octo=2Fapp");
        assert_ne!(key_token("a.b/c"), key_token("a_b/c"));
        assert_ne!(key_token("a/b_c"), key_token("a_b/c"));
        assert_eq!(key_token(""), "=");
        assert_eq!(
            slot_key("Octo/App", "bisect", 0),
            "limit.slot.octo=2Fapp.bisect.0"
        );
    }

    #[test]
    fn verdicts_round_trip() {
        assert_eq!(
            Verdict::decode(Verdict::Admitted.encode("j").as_bytes()),
            Some(Verdict::Admitted)
        );
        let r = Verdict::Refused("busy: x".into());
        assert_eq!(Verdict::decode(r.encode("j").as_bytes()), Some(r));
        assert_eq!(Verdict::decode(b"junk"), None);
    }
}
