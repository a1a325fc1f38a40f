//! # jetrun-nats
//!
//! jetrun's JetStream layer, over `async-nats`:
//!
//! - [`topology`]: `jetrun init` — create or upgrade every stream, consumer and bucket;
//! - [`store`]: the job store over KV — admit with create-if-absent, compare-and-set
//!   transitions through the core state machine, an index for listing by queue and status,
//!   and leases whose expiry arrives as an event;
//! - [`events`]: CloudEvents in NATS headers, publishing with acks, reading envelopes;
//! - [`dlq`]: dead-letter entries: publish, list, replay.

pub mod dlq;
pub mod events;
pub mod store;
pub mod submit;
pub mod topology;

pub use async_nats;
pub use events::{EventPublisher, PublishError, PublishErrorKind};
pub use store::{JobStore, StoreError, StoreErrorKind};
pub use topology::{Topology, TopologyError};

use std::time::Duration;

/// Connects to NATS at `url` (comma-separated for a cluster) with a client name, retrying
/// the initial connection for up to `wait`.
pub async fn connect(
    url: &str,
    name: &str,
    wait: Duration,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let start = std::time::Instant::now();
    loop {
        match async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(2))
            .connect(server_addrs(url))
            .await
        {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() >= wait => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Parses a comma-separated server list (`nats://a:4222,nats://b:4222`); invalid entries
/// are skipped (an empty list fails to connect with a clear error).
pub fn server_addrs(url: &str) -> Vec<async_nats::ServerAddr> {
    url.split(',').filter_map(|u| u.trim().parse().ok()).collect()
}
