//! Configuration of the autoscaler (every field has a default).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The autoscaler's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How often the loop reads queue depth and decides (default 250 ms).
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// How often a signal and the state are re-sent although nothing changed, so a
    /// consumer that missed one catches up (default 30 s).
    #[serde(with = "humantime_serde")]
    pub resync: Duration,
    /// Leader election.
    pub leader: LeaderConfig,
    /// Durable consumer of scale requests on the scale stream (default
    /// `autoscale-requests`).
    pub request_consumer: String,
    /// The `local` backend.
    pub local: LocalConfig,
    /// The `ecs-service` backend (used only when built with the `ecs` feature).
    pub ecs: EcsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(250),
            resync: Duration::from_secs(30),
            leader: LeaderConfig::default(),
            request_consumer: "autoscale-requests".into(),
            local: LocalConfig::default(),
            ecs: EcsConfig::default(),
        }
    }
}

/// Leader election through a KV lease in the nodes bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderConfig {
    /// Key of the lease in the nodes bucket (default `leader.autoscale`).
    pub key: String,
    /// Lease TTL, whole seconds (default 5 s). A dead leader is replaced within about
    /// this time.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How often the leader renews and a follower tries to take over (default 1 s).
    #[serde(with = "humantime_serde")]
    pub renew_every: Duration,
    /// A leader stops acting this long before its lease could expire if it has not
    /// renewed it, so two never act at once even with some clock drift (default 1.5 s).
    #[serde(with = "humantime_serde")]
    pub safety_margin: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        Self {
            key: "leader.autoscale".into(),
            ttl: Duration::from_secs(5),
            renew_every: Duration::from_secs(1),
            safety_margin: Duration::from_millis(1500),
        }
    }
}

/// The `local` backend: N child processes per service on this host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Program to run (default: this executable, i.e. `jetrun`).
    pub program: Option<PathBuf>,
    /// Arguments; `{queue}`, `{service}`, `{index}`, `{data_dir}`, `{port}` and
    /// `{nats_url}` are replaced (default `worker --queue {queue} --data-dir {data_dir}`).
    pub args: Vec<String>,
    /// Root of the replicas' data directories: `<root>/<service>/<index>` (default
    /// `.jetrun/workers`).
    pub data_root: PathBuf,
    /// First port handed to replicas (default 20000); replica slot `k` gets
    /// `base_port + k * ports_per_replica` (also in `JETRUN_PORT_BASE`).
    pub base_port: u16,
    /// Ports reserved per replica (default 10).
    pub ports_per_replica: u16,
    /// Time a stopping replica gets between SIGTERM and SIGKILL (default 30 s).
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// NATS URL passed to replicas as `{nats_url}` and `JETRUN_NATS_URL` (default: none).
    pub nats_url: Option<String>,
    /// More environment variables for every replica (e.g. `JETRUN_PREFIX`).
    pub env: std::collections::BTreeMap<String, String>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            program: None,
            args: ["worker", "--queue", "{queue}", "--data-dir", "{data_dir}"]
                .map(String::from)
                .to_vec(),
            data_root: PathBuf::from(".jetrun/workers"),
            base_port: 20_000,
            ports_per_replica: 10,
            stop_grace: Duration::from_secs(30),
            nats_url: None,
            env: Default::default(),
        }
    }
}

/// The `ecs-service` backend. Per service, `backend_config` in the spec names the
/// `cluster` and `service` (and optionally `region` and `endpoint_url`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EcsConfig {
    /// Region, if not taken from the environment.
    pub region: Option<String>,
    /// Endpoint override (e.g. a moto server in tests).
    pub endpoint_url: Option<String>,
}
