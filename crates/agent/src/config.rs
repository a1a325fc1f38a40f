//! The agent's settings: lease timing, stop graces, the node entry's TTL, and which
//! queues may ask for a network.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Node agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Lease TTL of a running job (default 10 s). A worker that stops renewing for this
    /// long is presumed dead and its job is retried.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often leases are renewed and records re-read for cancels (default 3 s).
    #[serde(with = "humantime_serde")]
    pub renew_every: Duration,
    /// Time between SIGTERM and SIGKILL when stopping a task (default 10 s).
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// TTL of this node's entry in the `nodes` bucket (default 15 s).
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// How often that entry is refreshed (default 5 s).
    #[serde(with = "humantime_serde")]
    pub heartbeat_every: Duration,
    /// At shutdown, the grace given to tasks that are stopped (default 3 s); they are
    /// reported `lost` and settle retries them elsewhere.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Queues whose jobs may ask for `network: true` (outbound access through the
    /// runner's own network namespace); `*` allows every queue. Default: none (the
    /// operator opts queues in; `jetrun dev` allows all). A job asking for network on
    /// another queue fails with `network_not_allowed`.
    pub network_queues: Vec<String>,
    /// The queues this node's worker dispatches (`*`: every queue), advertised in the
    /// node's heartbeat so producers can say when no worker serves a queue.
    pub queues: Vec<String>,
}

impl Config {
    /// Whether jobs of `queue` may have a network.
    pub fn network_allowed(&self, queue: &str) -> bool {
        self.network_queues.iter().any(|q| q == "*" || q == queue)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(3),
            stop_grace: Duration::from_secs(10),
            node_ttl: Duration::from_secs(15),
            heartbeat_every: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(3),
            network_queues: Vec::new(),
            queues: Vec::new(),
        }
    }
}
