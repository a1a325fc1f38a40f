//! Settle's settings: retry backoff, sweep, lease and timeout graces, callbacks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settle configuration.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Base of the retry backoff (default 2 s): attempt n waits a random time in
    /// `[base/2, min(cap, base·2^(n-1))]`.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Cap of the retry backoff (default 5 min).
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// How often the sweep runs (default 5 s).
    #[serde(with = "humantime_serde")]
    pub sweep_every: Duration,
    /// A launching or running job without a lease for this long is lost (default 30 s).
    #[serde(with = "humantime_serde")]
    pub lease_grace: Duration,
    /// A running job past its timeout by this much is timed out by settle itself
    /// (default 60 s; the agent normally does it at the timeout).
    #[serde(with = "humantime_serde")]
    pub timeout_grace: Duration,
    /// How long a node agent has to answer a describe request (default 1 s).
    #[serde(with = "humantime_serde")]
    pub describe_timeout: Duration,
    /// Secret keying HTTP callback signatures (default none: HTTP callbacks refused).
    /// Never logged.
    pub callback_secret: Option<String>,
    /// Timeout of one HTTP callback (default 10 s).
    #[serde(with = "humantime_serde")]
    pub callback_timeout: Duration,
    /// Deliveries of a callback before it is dead-lettered (default 8).
    pub callback_max_deliveries: u64,
    /// Root of NATS callback subjects: a job may only ask for
    /// `<root>.<tenant>.<token>...` (default `callbacks`).
    pub callback_subject_root: String,
    /// Host names (exact) and address ranges (CIDR such as `10.1.0.0/16`, or a bare
    /// address) that HTTP callbacks may reach although they are loopback, private,
    /// link-local or otherwise refused by default (default none).
    pub callback_allow_hosts: Vec<String>,
    /// Events handled at once (default 64).
    pub concurrency: usize,
    /// Whether this instance delivers completion callbacks (default true). Turn it off
    /// to deliver them from another settle instance only.
    pub callbacks: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .field("sweep_every", &self.sweep_every)
            .field("lease_grace", &self.lease_grace)
            .field("timeout_grace", &self.timeout_grace)
            .field(
                "callback_secret",
                &self.callback_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("callback_subject_root", &self.callback_subject_root)
            .field("callback_allow_hosts", &self.callback_allow_hosts)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The retry backoff these settings give.
    pub fn retry_policy(&self) -> jetrun_nats::lifecycle::RetryPolicy {
        jetrun_nats::lifecycle::RetryPolicy {
            base: self.backoff_base,
            cap: self.backoff_cap,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(300),
            sweep_every: Duration::from_secs(5),
            lease_grace: Duration::from_secs(30),
            timeout_grace: Duration::from_secs(60),
            describe_timeout: Duration::from_secs(1),
            callback_secret: None,
            callback_timeout: Duration::from_secs(10),
            callback_max_deliveries: 8,
            callback_subject_root: jetrun_core::callback::DEFAULT_SUBJECT_ROOT.into(),
            callback_allow_hosts: Vec::new(),
            concurrency: 64,
            callbacks: true,
        }
    }
}
