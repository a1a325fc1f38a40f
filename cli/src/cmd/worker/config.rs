//! `jetrun worker --config FILE`: every setting of the worker's components in one file
//! (YAML or JSON), the way `jetrun autoscale --config` works. Resolution is defaults, then
//! the file, then the flags (and their environment variables) that were given.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{LifecycleArgs, RunnerKind};

/// The worker's whole configuration. Unknown fields are refused; fields left out keep
/// their defaults.
///
/// ```yaml
/// queues: [default, gpu]
/// data_dir: /var/lib/jetrun/worker
/// runner: oci
/// dispatch: { max_concurrent_jobs: 8, tenant_max_running: 2 }
/// agent: { lease_ttl: 10s, stop_grace: 30s, network_queues: [bisect] }
/// settle: { sweep_every: 5s, callback_allow_hosts: [hooks.internal] }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Queues served (default `[default]`); `*` serves every queue, also ones that
    /// appear later.
    pub queues: Vec<String>,
    /// Task bundles, logs, images and runner state (default `.jetrun/worker`). A restart
    /// with the same directory adopts the tasks left running.
    pub data_dir: PathBuf,
    /// This node's id (default: host name plus a hash of the data directory).
    pub node_id: Option<String>,
    /// `auto` (default), `oci`, `process`, `null` or `ecs`.
    pub runner: RunnerKind,
    /// Let `auto` fall back to the process runner (NO isolation) where runc cannot run
    /// containers (default false: the worker refuses to start instead).
    pub allow_unisolated: bool,
    /// Size limit in MiB of an OCI task's scratch dir `/work` (default 1024).
    pub task_scratch_mb: u64,
    /// Run settle in this process (default true).
    pub settle_here: bool,
    /// Dispatch: concurrency, tenant quotas, launch retry (see `jetrun_dispatch::Config`).
    pub dispatch: jetrun_dispatch::Config,
    /// The node agent: leases, stop grace, heartbeat, network queues (see
    /// `jetrun_agent::Config`; `queues` is filled from the top-level `queues`).
    pub agent: jetrun_agent::Config,
    /// Settle: retry backoff, sweep, graces, callbacks (see `jetrun_settle::Config`).
    pub settle: jetrun_settle::Config,
    /// The ECS runner's configuration (`runner: ecs`; see docs/runner.md), checked when
    /// the file is read: unknown fields and settings that cannot work are refused, as
    /// `--ecs-config` refuses them.
    #[cfg_attr(feature = "ecs", serde(deserialize_with = "checked_ecs"))]
    pub ecs: Option<EcsSection>,
}

/// The `ecs` section: the ECS runner's configuration.
#[cfg(feature = "ecs")]
pub type EcsSection = jetrun_runner::ecs::EcsConfig;
/// The `ecs` section, kept as given: this build has no ECS runner to check it against
/// (`runner: ecs` is refused when the runner starts).
#[cfg(not(feature = "ecs"))]
pub type EcsSection = serde_json::Value;

/// `ecs`, deserialised and checked like `--ecs-config` ([`EcsConfig::from_json`]).
///
/// [`EcsConfig::from_json`]: jetrun_runner::ecs::EcsConfig::from_json
#[cfg(feature = "ecs")]
fn checked_ecs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<EcsSection>, D::Error> {
    #[derive(Deserialize)]
    struct Checked(#[serde(deserialize_with = "EcsSection::deserialize_checked")] EcsSection);
    Ok(Option::<Checked>::deserialize(d)?.map(|c| c.0))
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            queues: vec!["default".into()],
            data_dir: PathBuf::from(".jetrun/worker"),
            node_id: None,
            runner: RunnerKind::Auto,
            allow_unisolated: false,
            task_scratch_mb: 1024,
            settle_here: true,
            dispatch: jetrun_dispatch::Config::default(),
            agent: jetrun_agent::Config::default(),
            settle: jetrun_settle::Config::default(),
            ecs: None,
        }
    }
}

impl WorkerConfig {
    /// Reads a YAML or JSON configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        // YAML is a superset of JSON: one parser reads both.
        serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a worker configuration", path.display()))
    }

    /// Applies the lifecycle flags that were given (each `None` leaves the file's value).
    pub fn apply(&mut self, l: &LifecycleArgs) -> anyhow::Result<()> {
        if let Some(v) = l.runner {
            self.runner = v;
        }
        if l.node_id.is_some() {
            self.node_id = l.node_id.clone();
        }
        if let Some(v) = l.max_concurrent_jobs {
            self.dispatch.max_concurrent_jobs = v;
        }
        if l.tenant_max_running.is_some() {
            self.dispatch.tenant_max_running = l.tenant_max_running;
        }
        if l.tenant_starts_per_second.is_some() {
            self.dispatch.tenant_starts_per_second = l.tenant_starts_per_second;
        }
        if let Some(v) = l.lease_ttl {
            self.agent.lease_ttl = v;
            // A lease lost for three TTLs (at least 5 s) is a lost job.
            self.settle.lease_grace = (v * 3).max(std::time::Duration::from_secs(5));
        }
        if let Some(v) = l.lease_renew {
            self.agent.renew_every = v;
        }
        if let Some(v) = l.stop_grace {
            self.agent.stop_grace = v;
        }
        if let Some(v) = l.retry_base {
            self.dispatch.launch_retry_base = v;
            self.settle.backoff_base = v;
        }
        if let Some(v) = l.sweep_every {
            self.settle.sweep_every = v;
        }
        if l.callback_secret.is_some() {
            self.settle.callback_secret = l.callback_secret.clone();
        }
        if !l.callback_allow_hosts.is_empty() {
            self.settle.callback_allow_hosts = l.callback_allow_hosts.clone();
        }
        if l.no_settle {
            self.settle_here = false;
        }
        if let Some(v) = &l.network_queues {
            self.agent.network_queues = v.clone();
        }
        if let Some(v) = l.task_scratch_mb {
            self.task_scratch_mb = v;
        }
        if let Some(raw) = &l.ecs_config {
            let json = if raw.trim_start().starts_with('{') {
                raw.clone()
            } else {
                std::fs::read_to_string(raw).with_context(|| format!("reading the ECS config {raw}"))?
            };
            #[cfg(feature = "ecs")]
            let ecs = EcsSection::from_json(&json).with_context(|| format!("the ECS config {raw}"))?;
            #[cfg(not(feature = "ecs"))]
            let ecs =
                serde_json::from_str(&json).with_context(|| format!("the ECS config {raw} is not JSON"))?;
            self.ecs = Some(ecs);
        }
        if l.allow_unisolated {
            self.allow_unisolated = true;
        }
        self.validate()
    }

    /// Refuses what cannot work, before anything connects.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.queues.is_empty(),
            "no queue to serve: give --queue or `queues`"
        );
        for q in self.queues.iter().filter(|q| *q != super::ALL_QUEUES) {
            jetrun_core::names::validate_token(q).map_err(|e| anyhow::anyhow!("queue {q:?}: {e}"))?;
        }
        anyhow::ensure!(
            self.dispatch.max_concurrent_jobs > 0,
            "max_concurrent_jobs must be at least 1"
        );
        anyhow::ensure!(
            self.agent.renew_every < self.agent.lease_ttl,
            "the lease renewal ({:?}) must be shorter than the lease TTL ({:?})",
            self.agent.renew_every,
            self.agent.lease_ttl
        );
        if self.runner == RunnerKind::Ecs {
            anyhow::ensure!(
                self.ecs.is_some(),
                "runner ecs needs its configuration: --ecs-config (JETRUN_ECS_CONFIG) or `ecs` in --config"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        l: LifecycleArgs,
    }

    fn flags(args: &[&str]) -> LifecycleArgs {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
            .l
    }

    #[test]
    fn the_file_sets_every_component_and_flags_override_it() {
        let mut cfg: WorkerConfig = serde_yaml::from_str(
            "queues: [a, b]\nrunner: process\ndispatch: {max_concurrent_jobs: 9, tenant_max_running: 2}\n\
             agent: {lease_ttl: 20s, renew_every: 5s, network_queues: [a]}\n\
             settle: {sweep_every: 7s, callback_allow_hosts: [hooks.internal]}\n",
        )
        .unwrap();
        assert_eq!(cfg.queues, ["a", "b"]);
        assert_eq!(cfg.dispatch.max_concurrent_jobs, 9);
        assert_eq!(cfg.agent.lease_ttl, std::time::Duration::from_secs(20));
        // Flags not given keep the file's values (they carry no defaults of their own).
        cfg.apply(&flags(&[])).unwrap();
        assert_eq!(cfg.dispatch.max_concurrent_jobs, 9);
        assert_eq!(cfg.runner, RunnerKind::Process);
        assert_eq!(cfg.settle.sweep_every, std::time::Duration::from_secs(7));
        // Given flags win.
        cfg.apply(&flags(&[
            "--max-concurrent-jobs",
            "3",
            "--runner",
            "null",
            "--sweep-every",
            "1s",
        ]))
        .unwrap();
        assert_eq!(cfg.dispatch.max_concurrent_jobs, 3);
        assert_eq!(cfg.runner, RunnerKind::Null);
        assert_eq!(cfg.settle.sweep_every, std::time::Duration::from_secs(1));
        assert_eq!(cfg.dispatch.tenant_max_running, Some(2), "untouched by the flags");
        assert_eq!(cfg.settle.callback_allow_hosts, ["hooks.internal"]);
    }

    #[test]
    fn unknown_fields_and_impossible_settings_are_refused() {
        let e = serde_yaml::from_str::<WorkerConfig>("dispatch: {max_concurent_jobs: 3}\n").unwrap_err();
        assert!(e.to_string().contains("max_concurent_jobs"), "{e}");
        assert!(serde_yaml::from_str::<WorkerConfig>("queue: [a]\n").is_err());
        let mut c = WorkerConfig::default();
        c.agent.renew_every = c.agent.lease_ttl;
        assert!(c.validate().unwrap_err().to_string().contains("lease renewal"));
        let c = WorkerConfig {
            runner: RunnerKind::Ecs,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("--ecs-config"));
        let c = WorkerConfig {
            queues: vec!["bad queue".into()],
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }

    #[cfg(feature = "ecs")]
    #[test]
    fn the_ecs_section_is_the_ecs_config_that_ecs_config_gives() {
        use jetrun_runner::ecs::EcsConfig;
        let json = r#"{"cluster": "jobs", "task_definition": "job", "queues": {"gpu": "gpu-job"},
            "capacity_providers": [{"name": "FARGATE_SPOT", "weight": 3}, {"name": "FARGATE", "base": 1}],
            "subnets": ["subnet-0a"], "poll_interval": "2s", "pacer": {"capacity": 50, "shared_bucket": "jetrun-ecs-pacer"},
            "logs": {"group": "/jetrun/jobs"}}"#;
        let mut from_file: WorkerConfig =
            serde_yaml::from_str(&format!("runner: ecs\necs: {json}\n")).unwrap();
        from_file.apply(&flags(&[])).unwrap();
        let mut from_flag = WorkerConfig::default();
        from_flag
            .apply(&flags(&["--runner", "ecs", "--ecs-config", json]))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecs.json");
        std::fs::write(&path, json).unwrap();
        let mut from_flag_file = WorkerConfig::default();
        from_flag_file
            .apply(&flags(&[
                "--runner",
                "ecs",
                "--ecs-config",
                path.to_str().unwrap(),
            ]))
            .unwrap();
        let want = EcsConfig::from_json(json).unwrap();
        assert_eq!(from_file.ecs.as_ref(), Some(&want));
        assert_eq!(from_flag.ecs.as_ref(), Some(&want));
        assert_eq!(from_flag_file.ecs.as_ref(), Some(&want));
        assert_eq!(want.cluster, "jobs");
        assert_eq!(want.capacity_providers[1].weight, 1);
        assert_eq!(want.poll_interval, std::time::Duration::from_secs(2));
        // The section may be written as YAML too.
        let yaml: WorkerConfig = serde_yaml::from_str(
            "ecs:\n  cluster: jobs\n  task_definition: job\n  queues: {gpu: gpu-job}\n  capacity_providers:\n    \
             - {name: FARGATE_SPOT, weight: 3}\n    - {name: FARGATE, base: 1}\n  subnets: [subnet-0a]\n  \
             poll_interval: 2s\n  pacer: {capacity: 50, shared_bucket: jetrun-ecs-pacer}\n  logs: {group: /jetrun/jobs}\n",
        )
        .unwrap();
        assert_eq!(yaml.ecs, Some(want));
    }

    #[cfg(feature = "ecs")]
    #[test]
    fn an_ecs_section_with_an_unknown_field_or_impossible_settings_is_refused() {
        let e =
            serde_yaml::from_str::<WorkerConfig>("ecs: {task_definition: job, clustr: jobs}\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `clustr`"), "{e}");
        let e = serde_yaml::from_str::<WorkerConfig>("ecs: {task_definition: job, pacer: {capasity: 5}}\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `capasity`"), "{e}");
        // What `EcsConfig::validate` refuses, as --ecs-config refuses it.
        let e = serde_yaml::from_str::<WorkerConfig>("ecs: {cluster: jobs}\n").unwrap_err();
        assert!(e.to_string().contains("no task definition"), "{e}");
        let e = serde_yaml::from_str::<WorkerConfig>("ecs: {task_definition: job, launch_type: SPACE}\n")
            .unwrap_err();
        assert!(e.to_string().contains("launch_type \"SPACE\""), "{e}");
        let e = WorkerConfig::default()
            .apply(&flags(&[
                "--ecs-config",
                r#"{"task_definition": "job", "launch_type": "SPACE"}"#,
            ]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("launch_type \"SPACE\""), "{e:#}");
        let e = WorkerConfig::default()
            .apply(&flags(&[
                "--ecs-config",
                r#"{"task_definition": "job", "clustr": "jobs"}"#,
            ]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `clustr`"), "{e:#}");
        // Left out, or null: no section.
        assert_eq!(
            serde_yaml::from_str::<WorkerConfig>("ecs: null\n").unwrap().ecs,
            None
        );
        assert_eq!(
            serde_yaml::from_str::<WorkerConfig>("runner: oci\n").unwrap().ecs,
            None
        );
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = WorkerConfig::default();
        assert_eq!(c.queues, ["default"]);
        assert_eq!(c.dispatch.max_concurrent_jobs, 4);
        assert_eq!(c.agent.lease_ttl, std::time::Duration::from_secs(10));
        assert_eq!(c.settle.lease_grace, std::time::Duration::from_secs(30));
        assert!(c.settle_here && !c.allow_unisolated);
        c.validate().unwrap();
    }
}
