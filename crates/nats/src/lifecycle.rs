//! The lifecycle policy, in one place: what happens when an attempt of a job fails.
//!
//! Dispatch (a launch that failed, a lease it could not take), settle (a task lost,
//! stopped unasked, a lease that expired) and the ECS path (settle handling the bridge's
//! task events: the same code) all end a failed attempt through
//! [`Lifecycle::retry_or_fail`]:
//!
//! 1. **retry**: `Transition::Retry` (one compare-and-set) — back to `queued`, the next
//!    attempt, `not_before = now +` [`RetryPolicy::delay`] (exponential with full
//!    jitter, capped); the caller delivers the retry (dispatch `Nak`s the submission it
//!    holds for that delay, settle re-publishes it);
//! 2. **attempts used**: the **dead letter** is stored first, then the job is `failed`
//!    (`attempts_exhausted`, naming the last error). The dead letter has one shape
//!    whoever writes it ([`job_dead_letter`]: the job's spec as a submission, so its
//!    replay runs the spec again as a new job) and one id per job and attempt, so storing
//!    it again after a crash or a lost race stores it once. A dead letter that cannot be
//!    stored is an error ([`LifecycleError::DeadLetter`]) and the job stays where it was:
//!    the caller leaves its message for redelivery (or the sweep comes back), nothing is
//!    dropped.
//!
//! Also here, shared by every component (the node agent included): [`Doubling`], the
//! one bounded doubling retry loop, and [`lock`], a mutex lock that survives poisoning.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use jetrun_core::dlq::DeadLetter;
use jetrun_core::job::{Transition, TransitionErrorKind};
use jetrun_core::schema::types;
use jetrun_core::{JobError, JobRecord, Names};
use serde::{Deserialize, Serialize};

use crate::events::{EventPublisher, PublishError};
use crate::store::{JobStore, StoreError, StoreErrorKind};

/// The error kind of a job that used its attempts, and of its dead letter.
pub const ATTEMPTS_EXHAUSTED: &str = "attempts_exhausted";

/// Locks `m`, taking the value even if a holder panicked (every value guarded in jetrun
/// is valid at any point a panic can happen).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error with its causes, `a: b: c`, for logs and handler reasons. A cause whose text
/// the message already ends with (a store or publish error repeats its cause's text) is
/// not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

/// The retry backoff of failed attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Base of the backoff (default 2 s).
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// Cap of the backoff (default 5 min).
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` after attempt `attempt` (1-based) failed:
    /// exponential with full jitter, a random delay in `[base/2, min(cap, base·2^(attempt-1))]`
    /// ([`jetrun_core::job::backoff`], the one backoff function).
    pub fn delay(&self, attempt: u32) -> Duration {
        jetrun_core::job::backoff(attempt, self.base, self.cap)
    }
}

/// A bounded doubling retry: `tries` attempts, waiting `first`, then twice as long each
/// time up to `cap`. For work that is safe to repeat (an idempotent publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doubling {
    /// Tries in all (at least 1).
    pub tries: u32,
    /// The first wait.
    pub first: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Doubling {
    /// `tries` tries from `first`, doubling to `cap`.
    pub const fn new(tries: u32, first: Duration, cap: Duration) -> Self {
        Self { tries, first, cap }
    }

    /// Runs `op` until it succeeds or the tries are used; returns the last error. Each
    /// failure but the last is logged at `warn` with `what`.
    pub async fn run<T, E, F, Fut>(&self, what: &str, mut op: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut delay = self.first;
        let mut left = self.tries.max(1);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if left > 1 => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.cap);
                    left -= 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// What became of a failed attempt.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// Queued again for the next attempt, not before `delay` from now.
    Retried {
        /// The record after the retry.
        record: JobRecord,
        /// Its revision.
        revision: u64,
        /// The backoff chosen.
        delay: Duration,
    },
    /// Out of attempts: its dead letter is stored and the job is `failed`.
    Failed {
        /// The failed record.
        record: JobRecord,
        /// Its revision.
        revision: u64,
    },
    /// Nothing to do: the job moved on (terminal, or no longer in a retryable state).
    Skipped,
}

/// Ending a failed attempt went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The job store failed; a [`StoreErrorKind::Conflict`] means the record changed
    /// first: re-read and decide again.
    #[error("job store")]
    Store(#[from] StoreError),
    /// The dead letter of a job out of attempts could not be stored; the job was left as
    /// it was (not failed), so the caller must keep its message for redelivery.
    #[error("dead letter of job {job_id} not stored")]
    DeadLetter {
        /// The job.
        job_id: String,
        /// Why.
        #[source]
        source: PublishError,
    },
}

impl LifecycleError {
    /// Whether another writer changed the record first (re-read and decide again).
    pub fn is_conflict(&self) -> bool {
        matches!(self, LifecycleError::Store(e) if e.kind == StoreErrorKind::Conflict)
    }
}

/// The dead letter of a job that used its attempts — the one shape, whoever writes it:
/// the job's spec as a submission on `<prefix>.job.submit.<queue>` (a replay runs it again
/// as a new job: the headers carry a fresh `ce-id`), `deliveries` = the attempts made.
pub fn job_dead_letter(
    publisher: &EventPublisher,
    names: &Names,
    origin: &str,
    rec: &JobRecord,
    reason: &str,
) -> Result<DeadLetter, PublishError> {
    let env = publisher
        .envelope(types::JOB_SUBMITTED)
        .with_trace(rec.traceparent.clone(), None);
    let subject = names.job_submit(&rec.queue);
    let body = serde_json::to_vec(&rec.spec)
        .map_err(|e| PublishError::caused(crate::PublishErrorKind::Encode, subject.clone(), e))?;
    let mut entry = DeadLetter {
        origin: origin.to_string(),
        reason_kind: ATTEMPTS_EXHAUSTED.into(),
        reason: reason.to_string(),
        subject,
        stream: None,
        stream_seq: None,
        deliveries: u64::from(rec.attempt),
        headers: env.to_headers().into_iter().collect(),
        payload_base64: String::new(),
        payload_truncated: false,
        payload_bytes: None,
        job_id: Some(rec.id.clone()),
        failed_at: jetrun_core::now(),
    };
    entry.set_payload(&body);
    Ok(entry)
}

/// How long storing a dead letter is retried before the caller is told (and keeps its
/// message): a few quick tries ride out a blip; an outage goes back to redelivery.
const DEAD_LETTER_TRIES: Doubling = Doubling::new(4, Duration::from_millis(100), Duration::from_secs(1));

/// The policy, bound to a store and a publisher. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    store: JobStore,
    publisher: EventPublisher,
    origin: String,
    policy: RetryPolicy,
}

impl Lifecycle {
    /// The policy for component `origin` (the dead letters' origin).
    pub fn new(store: JobStore, publisher: EventPublisher, origin: &str, policy: RetryPolicy) -> Self {
        Self {
            store,
            publisher,
            origin: origin.to_string(),
            policy,
        }
    }

    /// The backoff in use.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Ends a failed attempt of `rec` (at `revision`) with `error`: retried with backoff,
    /// or, once its attempts are used, dead-lettered and failed. See the module docs.
    pub async fn retry_or_fail(
        &self,
        rec: &JobRecord,
        revision: u64,
        error: JobError,
    ) -> Result<AttemptOutcome, LifecycleError> {
        let delay = self.policy.delay(rec.attempt);
        let not_before = jetrun_core::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        let retry = Transition::Retry {
            error: error.clone(),
            not_before,
        };
        match self.store.transition_at(rec, revision, &retry).await {
            Ok((record, revision)) => Ok(AttemptOutcome::Retried {
                record,
                revision,
                delay,
            }),
            Err(e) if e.kind == StoreErrorKind::Transition(TransitionErrorKind::AttemptsExhausted) => {
                let reason = format!(
                    "{} attempts used; last error: {}: {}",
                    rec.max_attempts, error.kind, error.message
                );
                self.store_dead_letter(rec, &reason).await?;
                let fail = Transition::Fail {
                    error: JobError::new(ATTEMPTS_EXHAUSTED, reason.clone()),
                };
                match self.store.transition_at(rec, revision, &fail).await {
                    Ok((record, revision)) => {
                        tracing::warn!(job_id = %record.id, reason = %reason, "job failed for good; dead-lettered");
                        Ok(AttemptOutcome::Failed { record, revision })
                    }
                    Err(e) if matches!(e.kind, StoreErrorKind::Transition(_)) => Ok(AttemptOutcome::Skipped),
                    Err(e) => Err(LifecycleError::Store(e)),
                }
            }
            Err(e) if matches!(e.kind, StoreErrorKind::Transition(_)) => Ok(AttemptOutcome::Skipped),
            Err(e) => Err(LifecycleError::Store(e)),
        }
    }

    /// Stores the dead letter of `rec`'s last attempt, once per job and attempt
    /// (`ce-id` = `Nats-Msg-Id` = `dlq.job.<id>.<attempt>`: a repeat within the stream's
    /// dedupe window is dropped by the server).
    async fn store_dead_letter(&self, rec: &JobRecord, reason: &str) -> Result<u64, LifecycleError> {
        let dead = |source| LifecycleError::DeadLetter {
            job_id: rec.id.clone(),
            source,
        };
        let names = self.store.names();
        let entry = job_dead_letter(&self.publisher, names, &self.origin, rec, reason).map_err(dead)?;
        let env = self
            .publisher
            .envelope(types::DEAD_LETTER)
            .with_id(format!("dlq.job.{}.{}", rec.id, rec.attempt))
            .with_subject(rec.id.clone())
            .with_trace(rec.traceparent.clone(), None);
        DEAD_LETTER_TRIES
            .run("storing a dead letter", || {
                self.publisher.publish(names.dlq(&self.origin), &env, &entry)
            })
            .await
            .map_err(dead)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn the_backoff_doubles_within_full_jitter_and_stops_at_its_cap() {
        let p = RetryPolicy {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(20),
        };
        for _ in 0..200 {
            let d1 = p.delay(1);
            assert!(
                d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
                "{d1:?}"
            );
            let d3 = p.delay(3);
            assert!(
                d3 >= Duration::from_secs(1) && d3 <= Duration::from_secs(8),
                "{d3:?}"
            );
            // Far past the cap (and past any shift overflow): never above it.
            let d40 = p.delay(40);
            assert!(
                d40 >= Duration::from_secs(1) && d40 <= Duration::from_secs(20),
                "{d40:?}"
            );
        }
        // Jitter: not one fixed value.
        let seen: std::collections::BTreeSet<_> = (0..50).map(|_| p.delay(4).as_millis()).collect();
        assert!(seen.len() > 5, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_doubling_retry_waits_twice_as_long_each_time_up_to_its_cap_then_gives_up() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let policy = Doubling::new(5, Duration::from_millis(100), Duration::from_millis(300));
        let got: Result<(), String> = policy
            .run("test", || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err("down".to_string()) }
            })
            .await;
        assert_eq!(got.unwrap_err(), "down");
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        // 100 + 200 + 300 + 300 ms between the five tries, none after the last.
        assert_eq!(started.elapsed(), Duration::from_millis(900));

        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let got = policy
            .run("test", || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move { if n < 2 { Err("blip") } else { Ok(n) } }
            })
            .await;
        assert_eq!(got.unwrap(), 2);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
