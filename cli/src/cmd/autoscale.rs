//! `jetrun autoscale`: the autoscaler as a service of its own, for production deployments
//! (inside `jetrun dev` it runs as a component). Several replicas may run; one is elected
//! through the leader lease and acts, the others stand by and take over when it dies.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tracing::warn;

use crate::GlobalOpts;

/// Run the autoscaler.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How often the active autoscaler reads queue depth and decides
    /// (default 250ms, or `tick` of --config).
    #[arg(long, env = "JETRUN_AUTOSCALE_TICK", value_parser = humantime::parse_duration)]
    pub tick: Option<Duration>,

    /// How often a signal and the recorded state are re-sent although nothing changed, so
    /// a consumer that missed one catches up (default 30s, or `resync` of --config).
    #[arg(long, env = "JETRUN_AUTOSCALE_RESYNC", value_parser = humantime::parse_duration)]
    pub resync: Option<Duration>,

    /// TTL of the leader lease, whole seconds: a dead autoscaler is replaced within about
    /// this time. Setting it also sets the renewal interval to ttl/5 and the safety margin
    /// to 3/10 of it, the proportions of the defaults (default 5s: renew every 1s, margin
    /// 1.5s; or `leader` of --config).
    #[arg(long, env = "JETRUN_AUTOSCALE_LEADER_TTL", value_parser = humantime::parse_duration)]
    pub leader_ttl: Option<Duration>,

    /// Root of the `local` backend's replicas: replica i of service S runs in
    /// `<data-dir>/workers/S/i` (default .jetrun, or `local.data_root` of --config).
    #[arg(long, env = "JETRUN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// A YAML or JSON file with the whole autoscaler configuration (`jetrun_autoscale::Config`:
    /// tick, resync, leader, request_consumer, local, ecs; see docs/autoscale.md). Unknown
    /// fields are refused; fields left out keep their defaults. Flags given on the command
    /// line or through their environment variables override it.
    #[arg(long, env = "JETRUN_AUTOSCALE_CONFIG")]
    pub config: Option<PathBuf>,

    /// AWS region of the `ecs_service` backend (default: the AWS environment, e.g.
    /// AWS_REGION; a service's `backend_config.region` wins). Only meaningful when jetrun is
    /// built with the `ecs` feature; ignored, with a warning, otherwise.
    #[arg(long, env = "JETRUN_AUTOSCALE_ECS_REGION")]
    pub ecs_region: Option<String>,

    /// Endpoint URL of the ECS API for the `ecs_service` backend (e.g. a VPC endpoint or a
    /// moto server in tests). Only meaningful with the `ecs` feature; ignored, with a
    /// warning, otherwise.
    #[arg(long, env = "JETRUN_AUTOSCALE_ECS_ENDPOINT_URL")]
    pub ecs_endpoint_url: Option<String>,

    #[command(flatten)]
    pub metrics: crate::cmd::top::MetricsArgs,
}

impl Args {
    /// The configuration: --config (or the defaults), then the flags given.
    fn config(&self) -> anyhow::Result<jetrun_autoscale::Config> {
        let mut cfg = match &self.config {
            Some(path) => load_config(path)?,
            None => jetrun_autoscale::Config::default(),
        };
        if let Some(v) = self.tick {
            cfg.tick = v;
        }
        if let Some(v) = self.resync {
            cfg.resync = v;
        }
        if let Some(ttl) = self.leader_ttl {
            cfg.leader.ttl = ttl;
            cfg.leader.renew_every = ttl / 5;
            cfg.leader.safety_margin = ttl * 3 / 10;
        }
        if self.ecs_region.is_some() {
            cfg.ecs.region = self.ecs_region.clone();
        }
        if self.ecs_endpoint_url.is_some() {
            cfg.ecs.endpoint_url = self.ecs_endpoint_url.clone();
        }
        if !cfg!(feature = "ecs") && (cfg.ecs.region.is_some() || cfg.ecs.endpoint_url.is_some()) {
            warn!("ECS settings given, but this jetrun is built without the `ecs` feature: ignored");
        }
        crate::cmd::scale::validate_config(&cfg)?;
        Ok(cfg)
    }
}

/// Reads a YAML or JSON `jetrun_autoscale::Config`.
fn load_config(path: &Path) -> anyhow::Result<jetrun_autoscale::Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // YAML is a superset of JSON: one parser reads both.
    serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not an autoscaler configuration", path.display()))
}

/// Runs the autoscaler until SIGTERM or Ctrl-C.
pub async fn run(g: &GlobalOpts, a: Args) -> anyhow::Result<()> {
    // A bad configuration fails before anything connects.
    let cfg = a.config()?;
    let shutdown = jetrun_host::shutdown_on_signals();
    let ctx = g.context("jetrun-autoscale").await?;
    let cfg = crate::cmd::scale::deployment_config(cfg, &ctx.names, &g.nats_url, a.data_dir.as_deref());
    let scaler = crate::cmd::scale::spawn_autoscaler(&ctx, cfg, shutdown.clone()).await?;
    let mut comps = vec![("autoscale", scaler)];
    comps.extend(a.metrics.start(&ctx, shutdown.clone()).await?);
    println!("ready autoscale");
    let _ = std::io::stdout().flush();
    super::supervise::supervise(comps, shutdown).await
}
