//! One active autoscaler: a lease on one key of the nodes bucket (per-key TTL).
//!
//! - **Take**: a compare-and-set write expecting the key absent (revision 0) or ended
//!   (the revision of its delete or expiry marker), carrying `Nats-TTL`.
//! - **Renew**: a compare-and-set write on the revision we last wrote, restarting the TTL.
//!   A lost compare-and-set means someone else took it: we stop at once.
//! - **Safety**: the leader acts only until `start of its last successful write + ttl -
//!   safety_margin`. The server cannot expire the key before `ttl` after that write, and
//!   nobody can take it before it expires, so a leader cut off from NATS stops acting
//!   before anyone else can start: two never act at once.
//! - **Release**: at shutdown the leader deletes the key (CAS), so a successor takes over
//!   at its next attempt instead of after the TTL.
//!
//! The `async-nats` `create_with_ttl` is not used because, on a key that has a delete
//! marker, it falls back to a write without the TTL, and such a lease would never expire.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use jetrun_core::Names;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::LeaderConfig;

/// Leader election failed to start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("leader election: {message}")]
pub struct LeaderError {
    /// Details.
    pub message: String,
}

/// The lease's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// Who holds it.
    pub holder: String,
    /// Since when (RFC 3339).
    pub since: jetrun_core::Timestamp,
}

/// A cheap handle telling whether this replica may act now.
#[derive(Debug, Clone, Default)]
pub struct Leadership {
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Whether this replica holds the lease and may act now.
    pub fn is_leader(&self) -> bool {
        self.valid_until().is_some_and(|t| Instant::now() < t)
    }

    /// How long this replica may still act without another renewal (zero if not leader).
    pub fn remaining(&self) -> std::time::Duration {
        self.valid_until()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    fn valid_until(&self) -> Option<Instant> {
        match self.valid_until.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }

    fn set(&self, v: Option<Instant>) {
        match self.valid_until.lock() {
            Ok(mut g) => *g = v,
            Err(p) => *p.into_inner() = v,
        }
    }
}

enum Renewal {
    Renewed(u64),
    Kept(u64),
    Lost,
}

/// Competes for the lease and keeps it while alive.
#[derive(Debug, Clone)]
pub struct Elector {
    js: jetstream::Context,
    kv: kv::Store,
    bucket: String,
    id: String,
    cfg: LeaderConfig,
    leadership: Leadership,
}

impl Elector {
    /// An elector for replica `id` on the nodes bucket of `names`.
    pub async fn new(
        js: &jetstream::Context,
        names: &Names,
        id: impl Into<String>,
        cfg: LeaderConfig,
    ) -> Result<Self, LeaderError> {
        let bucket = names.bucket_nodes();
        let kv = js.get_key_value(&bucket).await.map_err(|e| LeaderError {
            message: format!("bucket {bucket}: {e}"),
        })?;
        Ok(Self {
            js: js.clone(),
            kv,
            bucket,
            id: id.into(),
            cfg,
            leadership: Leadership::default(),
        })
    }

    /// The handle to check before acting.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The current holder of the lease, if any.
    pub async fn holder(&self) -> Option<LeaderRecord> {
        match self.kv.entry(&self.cfg.key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => serde_json::from_slice(&e.value).ok(),
            _ => None,
        }
    }

    /// Competes and renews until `shutdown`, then releases the lease if held.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut revision: Option<u64> = None;
        let mut since = jetrun_core::now();
        loop {
            let started = Instant::now();
            let outcome = match revision {
                Some(rev) => self.renew(rev, since).await,
                None => {
                    since = jetrun_core::now();
                    match self.take(since).await {
                        Some(rev) => Renewal::Renewed(rev),
                        None => Renewal::Lost,
                    }
                }
            };
            revision = match outcome {
                Renewal::Renewed(rev) => {
                    // Valid from when the write was sent, not when it was acknowledged.
                    self.leadership.set(Some(
                        started + self.cfg.ttl.saturating_sub(self.cfg.safety_margin),
                    ));
                    Some(rev)
                }
                // Validity is not extended: it runs out unless a later renewal lands.
                Renewal::Kept(rev) => Some(rev),
                Renewal::Lost => {
                    self.leadership.set(None);
                    None
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.cfg.renew_every) => {}
            }
        }
        self.leadership.set(None);
        if let Some(rev) = revision {
            match self.kv.delete_expect_revision(&self.cfg.key, Some(rev)).await {
                Ok(()) => info!(id = %self.id, "autoscaler leadership released"),
                Err(e) => debug!(error = %e, "releasing leadership failed; it will expire"),
            }
        }
    }

    async fn take(&self, since: jetrun_core::Timestamp) -> Option<u64> {
        let expected = match self.kv.entry(&self.cfg.key).await {
            Ok(None) => 0,
            Ok(Some(e)) if e.operation != kv::Operation::Put => e.revision,
            Ok(Some(_)) => return None,
            Err(e) => {
                debug!(error = %e, "reading the leader lease failed");
                return None;
            }
        };
        let rev = self.write(expected, since).await?;
        info!(id = %self.id, revision = rev, "became the active autoscaler");
        Some(rev)
    }

    async fn renew(&self, rev: u64, since: jetrun_core::Timestamp) -> Renewal {
        if let Some(r) = self.write(rev, since).await {
            return Renewal::Renewed(r);
        }
        // Not renewed: find out why. If the key is still ours at `rev` it was a transient
        // failure (keep trying while the lease lasts); otherwise someone else has it.
        match self.kv.entry(&self.cfg.key).await {
            Ok(Some(e)) if e.revision == rev && e.operation == kv::Operation::Put => Renewal::Kept(rev),
            Ok(_) => {
                warn!(id = %self.id, "lost autoscaler leadership");
                Renewal::Lost
            }
            Err(_) if self.leadership.is_leader() => Renewal::Kept(rev),
            Err(_) => Renewal::Lost,
        }
    }

    async fn write(&self, expected: u64, since: jetrun_core::Timestamp) -> Option<u64> {
        let body = serde_json::to_vec(&LeaderRecord {
            holder: self.id.clone(),
            since,
        })
        .ok()?;
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        let ttl = self.cfg.ttl.as_secs().max(1);
        headers.insert(async_nats::header::NATS_MESSAGE_TTL, format!("{ttl}s").as_str());
        let subject = format!("$KV.{}.{}", self.bucket, self.cfg.key);
        let ack = match self.js.publish_with_headers(subject, headers, body.into()).await {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "leader lease write not sent");
                return None;
            }
        };
        // Never wait for an ack past the lease: a late success is treated as a failure.
        match tokio::time::timeout(self.cfg.renew_every.max(Duration::from_millis(100)), ack).await {
            Ok(Ok(a)) => Some(a.sequence),
            Ok(Err(e)) => {
                debug!(error = %e, expected, "leader lease write refused");
                None
            }
            Err(_) => None,
        }
    }
}
