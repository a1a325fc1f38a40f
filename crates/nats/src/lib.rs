//! # jetrun-nats
//!
//! jetrun's JetStream layer, over `async-nats`:
//!
//! - [`topology`]: `jetrun init` — create or upgrade every stream, consumer and bucket;
//! - [`store`]: the job store over KV — admit with create-if-absent, compare-and-set
//!   transitions through the core state machine, an index for listing by queue and status,
//!   and leases whose expiry arrives as an event;
//! - [`events`]: CloudEvents in NATS headers, publishing with acks, reading envelopes;
//! - [`control`]: the job-control service (submit, cancel through the lifecycle) and its
//!   client, for producers that may not write the jobs bucket;
//! - [`dlq`]: dead-letter entries: publish, list, replay;
//! - [`lifecycle`]: the one lifecycle policy — retry with backoff, attempts, fail, dead
//!   letter — used by dispatch and settle, and the shared retry and lock helpers;
//! - [`queues`]: which queues have submissions waiting and whether a worker serves them;
//! - [`auth`] and [`connect`]: credentials and TLS from `JETRUN_NATS_*`, one connect path
//!   for every command.

pub mod auth;
pub mod control;
pub mod dlq;
pub mod events;
pub mod lifecycle;
pub mod queues;
pub mod store;
pub mod submit;
pub mod topology;

pub use async_nats;
pub use auth::{AuthError, AuthErrorKind, NatsAuth};
pub use events::{EventPublisher, PublishError, PublishErrorKind};
pub use store::{JobStore, StoreError, StoreErrorKind};
pub use topology::{Topology, TopologyError};

use std::time::Duration;

/// Why a connection could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The authentication settings are unusable (see [`auth`]).
    Config,
    /// The server refused our credentials (not retried: it will not change its mind).
    Authentication,
    /// No server answered within the wait.
    Unreachable,
}

/// A failed connection to NATS.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    /// What kind of failure.
    pub kind: ConnectErrorKind,
    /// What exactly.
    pub message: String,
}

/// Connects to NATS at `url` (comma-separated for a cluster) with a client name, retrying
/// the initial connection for up to `wait`. Credentials and TLS come from the
/// `JETRUN_NATS_*` variables or the URL (see [`auth`]).
pub async fn connect(url: &str, name: &str, wait: Duration) -> Result<async_nats::Client, ConnectError> {
    let auth = NatsAuth::from_env().map_err(|e| ConnectError {
        kind: ConnectErrorKind::Config,
        message: e.to_string(),
    })?;
    connect_with(url, name, wait, &auth.or_from_url(url)).await
}

/// [`connect`] with explicit authentication settings.
pub async fn connect_with(
    url: &str,
    name: &str,
    wait: Duration,
    auth: &NatsAuth,
) -> Result<async_nats::Client, ConnectError> {
    let start = std::time::Instant::now();
    loop {
        let opts = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(2));
        let opts = auth.apply(opts).await.map_err(|e| ConnectError {
            kind: ConnectErrorKind::Config,
            message: e.to_string(),
        })?;
        match opts.connect(server_addrs(url)).await {
            Ok(c) => return Ok(c),
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::Authentication
                        | async_nats::ConnectErrorKind::AuthorizationViolation
                ) =>
            {
                return Err(ConnectError {
                    kind: ConnectErrorKind::Authentication,
                    message: format!("NATS refused our credentials ({e}); check JETRUN_NATS_* settings"),
                });
            }
            Err(e) if start.elapsed() >= wait => {
                return Err(ConnectError {
                    kind: ConnectErrorKind::Unreachable,
                    message: format!("no NATS server answered within {wait:?}: {e}"),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Parses a comma-separated server list (`nats://a:4222,nats://b:4222`); invalid entries
/// are skipped (an empty list fails to connect with a clear error).
pub fn server_addrs(url: &str) -> Vec<async_nats::ServerAddr> {
    url.split(',').filter_map(|u| u.trim().parse().ok()).collect()
}
