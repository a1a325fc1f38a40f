//! Launch pacing: a token bucket in front of every `RunTask` call.
//!
//! Fargate's task launch rate is a per-account, per-Region token bucket (documented
//! default: a burst of 100, refilled at 20 per second), so the pace must hold for every
//! worker of a deployment together, not per process. Two implementations of [`Pacer`]:
//!
//! - [`TokenBucket`]: in-process, exact (tokio time; tests use `tokio::time::pause`);
//! - [`KvTokenBucket`]: one bucket shared by every process through a JetStream KV key,
//!   changed only by compare-and-set.
//!
//! Both work by *reservation*: taking a token may drive the balance below zero, and the
//! taker then sleeps until its token has been refilled. Waiters are thereby served in the
//! order they reserved and the long-run rate is exactly the refill rate.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::debug;

/// The pace of launches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PacerConfig {
    /// The burst: tokens the bucket holds when full (default 100).
    pub capacity: u32,
    /// Tokens added per second (default 20).
    pub refill_per_second: f64,
    /// Share the bucket with every worker of the deployment through this JetStream KV
    /// bucket, normally [`shared_bucket_name`]`(prefix)` = `jetrun-ecs-pacer`, which
    /// `jetrun init` creates (default: none, the bucket is per process). The key is
    /// `ecs-launch.<deployment>`. A worker creates a missing bucket only if its NATS user
    /// may (the shipped least-privilege `worker` user may not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_bucket: Option<String>,
}

impl Default for PacerConfig {
    fn default() -> Self {
        Self {
            capacity: 100,
            refill_per_second: 20.0,
            shared_bucket: None,
        }
    }
}

/// Kinds of pacer failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacerErrorKind {
    /// The configuration cannot work (zero rate or capacity).
    Config,
    /// The shared bucket could not be read or written.
    Store,
}

/// The pacer could not hand out a token.
#[derive(Debug, thiserror::Error)]
#[error("launch pacer: {kind:?}: {message}")]
pub struct PacerError {
    /// What kind of failure.
    pub kind: PacerErrorKind,
    /// Details.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl PacerError {
    fn new(kind: PacerErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }
}

/// Hands out launch permits at a bounded rate.
#[async_trait::async_trait]
pub trait Pacer: Send + Sync + 'static {
    /// Waits until one launch may be made.
    async fn acquire(&self) -> Result<(), PacerError>;
}

fn check(cfg: &PacerConfig) -> Result<(), PacerError> {
    if cfg.capacity == 0 || !(cfg.refill_per_second.is_finite() && cfg.refill_per_second > 0.0) {
        return Err(PacerError::new(
            PacerErrorKind::Config,
            format!(
                "capacity ({}) and refill_per_second ({}) must be positive",
                cfg.capacity, cfg.refill_per_second
            ),
        ));
    }
    Ok(())
}

/// Refills `tokens` (as of `elapsed` ago) and takes one; returns the new balance and how
/// long the taker must wait for its token.
fn take(tokens: f64, elapsed: Duration, capacity: f64, rate: f64) -> (f64, Duration) {
    let refilled = (tokens + elapsed.as_secs_f64() * rate).min(capacity);
    let left = refilled - 1.0;
    let wait = if left < 0.0 {
        Duration::from_secs_f64(-left / rate)
    } else {
        Duration::ZERO
    };
    (left, wait)
}

/// An in-process token bucket.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(cfg: &PacerConfig) -> Result<Self, PacerError> {
        check(cfg)?;
        let capacity = f64::from(cfg.capacity);
        Ok(Self {
            capacity,
            rate: cfg.refill_per_second,
            state: Mutex::new((capacity, Instant::now())),
        })
    }
}

#[async_trait::async_trait]
impl Pacer for TokenBucket {
    async fn acquire(&self) -> Result<(), PacerError> {
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            let (left, wait) = take(s.0, now - s.1, self.capacity, self.rate);
            *s = (left, now);
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

/// The shared pacer's KV bucket for a deployment with NATS prefix `prefix`
/// (`jetrun-ecs-pacer`; `infra/nats/accounts.conf` lets the worker use it).
pub fn shared_bucket_name(prefix: &str) -> String {
    format!("{prefix}-ecs-pacer")
}

/// The pacer bucket's configuration. `jetrun init` declares it in the topology
/// (`jetrun_nats::Topology::extra_buckets`) and creates it as the operator, so that workers
/// with least-privilege credentials never need to create a stream.
pub fn bucket_config(bucket: &str, replicas: usize) -> async_nats::jetstream::kv::Config {
    async_nats::jetstream::kv::Config {
        bucket: bucket.to_string(),
        // Only the current balance matters.
        history: 1,
        description: "jetrun: ECS launch pacer".into(),
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// The bucket's state in the KV value.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Shared {
    /// The balance (negative: reserved ahead).
    tokens: f64,
    /// When it was that, in milliseconds since the Unix epoch (the writer's clock).
    at_ms: i64,
}

/// A token bucket shared by every process through one JetStream KV key.
///
/// Each take is a read and a compare-and-set write of `{tokens, at_ms}`; a lost race is
/// re-read and retried. The refill is computed from wall clocks, so clock skew between
/// workers shifts a taker's share by the skew times the rate (NTP-synchronised hosts:
/// well under one token).
#[derive(Debug)]
pub struct KvTokenBucket {
    kv: async_nats::jetstream::kv::Store,
    key: String,
    capacity: f64,
    rate: f64,
}

impl KvTokenBucket {
    /// A bucket on `key` of `kv`.
    pub fn new(
        kv: async_nats::jetstream::kv::Store,
        key: impl Into<String>,
        cfg: &PacerConfig,
    ) -> Result<Self, PacerError> {
        check(cfg)?;
        Ok(Self {
            kv,
            key: key.into(),
            capacity: f64::from(cfg.capacity),
            rate: cfg.refill_per_second,
        })
    }

    /// Opens the KV bucket `bucket` and paces on `key` in it. A missing bucket is
    /// created (history 1, one replica) when the NATS user may; otherwise the error says
    /// to run `jetrun init`, which creates it (from [`bucket_config`]).
    pub async fn open(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        key: impl Into<String>,
        cfg: &PacerConfig,
    ) -> Result<Self, PacerError> {
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(missing) => match js.create_key_value(bucket_config(bucket, 1)).await {
                Ok(kv) => kv,
                Err(e) => {
                    return Err(PacerError {
                        kind: PacerErrorKind::Store,
                        message: format!(
                            "KV bucket {bucket} cannot be opened ({missing}) nor created ({e}); \
                             `jetrun init` creates it"
                        ),
                        source: Some(Box::new(e)),
                    });
                }
            },
        };
        Self::new(kv, key, cfg)
    }

    fn store_err(&self, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> PacerError {
        PacerError {
            kind: PacerErrorKind::Store,
            message: format!("{what} {}: {e}", self.key),
            source: Some(Box::new(e)),
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[async_trait::async_trait]
impl Pacer for KvTokenBucket {
    async fn acquire(&self) -> Result<(), PacerError> {
        use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
        let mut races = 0u32;
        loop {
            let entry = self
                .kv
                .entry(self.key.clone())
                .await
                .map_err(|e| self.store_err("reading", e))?;
            let now = now_ms();
            let (prev, revision) = match &entry {
                Some(e) if !e.value.is_empty() => match serde_json::from_slice::<Shared>(&e.value) {
                    Ok(s) => (s, Some(e.revision)),
                    // A value we cannot read is replaced by a full bucket.
                    Err(_) => (
                        Shared {
                            tokens: self.capacity,
                            at_ms: now,
                        },
                        Some(e.revision),
                    ),
                },
                _ => (
                    Shared {
                        tokens: self.capacity,
                        at_ms: now,
                    },
                    None,
                ),
            };
            // A writer whose clock is ahead leaves `at_ms` in our future: no refill then.
            let elapsed = Duration::from_millis(u64::try_from(now - prev.at_ms).unwrap_or(0));
            let (left, wait) = take(prev.tokens, elapsed, self.capacity, self.rate);
            let next = Shared {
                tokens: left,
                at_ms: now.max(prev.at_ms),
            };
            let body = bytes::Bytes::from(serde_json::to_vec(&next).unwrap_or_default());
            let written = match revision {
                Some(r) => match self.kv.update(&self.key, body, r).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(self.store_err("writing", e)),
                },
                None => match self.kv.create(&self.key, body).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(self.store_err("creating", e)),
                },
            };
            if written {
                if races > 0 {
                    debug!(key = %self.key, races, "pacer token taken after lost races");
                }
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                return Ok(());
            }
            races += 1;
            // Lost the race: another worker took a token; re-read, with a little jitter so
            // a crowd of losers does not collide again at once.
            let jitter = {
                use rand::Rng;
                rand::rng().random_range(0..=races.min(10) * 500)
            };
            tokio::time::sleep(Duration::from_micros(u64::from(jitter))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn cfg(capacity: u32, rate: f64) -> PacerConfig {
        PacerConfig {
            capacity,
            refill_per_second: rate,
            shared_bucket: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_gives_its_burst_at_once_then_the_refill_rate() {
        let b = TokenBucket::new(&cfg(100, 20.0)).unwrap();
        let t0 = Instant::now();
        for _ in 0..100 {
            b.acquire().await.unwrap();
        }
        assert_eq!(Instant::now() - t0, Duration::ZERO, "the burst is free");
        // The next 40 take 2 s at 20/s.
        for _ in 0..40 {
            b.acquire().await.unwrap();
        }
        let dt = (Instant::now() - t0).as_secs_f64();
        assert!((dt - 2.0).abs() < 0.01, "{dt}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_takers_never_exceed_the_bucket() {
        let b = std::sync::Arc::new(TokenBucket::new(&cfg(10, 20.0)).unwrap());
        let t0 = Instant::now();
        let mut hs = Vec::new();
        for _ in 0..50 {
            let b = b.clone();
            hs.push(tokio::spawn(async move {
                b.acquire().await.unwrap();
                Instant::now() - t0
            }));
        }
        let mut at = Vec::new();
        for h in hs {
            at.push(h.await.unwrap().as_secs_f64());
        }
        at.sort_by(f64::total_cmp);
        // Within any window of w seconds at most capacity + w × rate launches.
        for (i, &a) in at.iter().enumerate() {
            let n = at[i..].iter().take_while(|&&b| b <= a + 1.0).count();
            assert!(
                n as f64 <= 10.0 + 20.0 * 1.0 + 1e-9,
                "{n} launches within 1 s from {a}"
            );
        }
        // 10 free, then 40 at 20/s: the last at 2 s.
        assert!((at[49] - 2.0).abs() < 0.01, "{}", at[49]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_refills_only_to_capacity() {
        let b = TokenBucket::new(&cfg(5, 10.0)).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let t0 = Instant::now();
        for _ in 0..6 {
            b.acquire().await.unwrap();
        }
        let dt = (Instant::now() - t0).as_secs_f64();
        assert!((dt - 0.1).abs() < 0.005, "{dt}");
    }

    #[test]
    fn zero_rate_or_capacity_is_refused() {
        assert_eq!(
            TokenBucket::new(&cfg(0, 1.0)).unwrap_err().kind,
            PacerErrorKind::Config
        );
        assert_eq!(
            TokenBucket::new(&cfg(1, 0.0)).unwrap_err().kind,
            PacerErrorKind::Config
        );
    }
}
