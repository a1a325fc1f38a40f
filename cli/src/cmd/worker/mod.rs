//! `jetrun worker`: the job lifecycle of one node in one process — dispatch for the given
//! queues, the node agent and settle. Several workers can run side by side on one host,
//! each with its own `--data-dir` (and so its own node id); the autoscaler's `local`
//! backend spawns them. Every component setting is reachable from `--config FILE`
//! ([`WorkerConfig`]), the flags override it.

mod config;

pub use config::WorkerConfig;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use jetrun_runner::Runner;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::GlobalOpts;

/// Which runner launches tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    /// OCI (runc) when a probe container runs on this machine, else the process runner.
    Auto,
    /// OCI containers through runc (isolated).
    Oci,
    /// Plain child processes: NO isolation.
    Process,
    /// Launches nothing; every task "exits 0" at once. For benchmarks only.
    Null,
    /// One ECS/Fargate task per attempt (needs a build with the `ecs` feature and
    /// `--ecs-config`).
    Ecs,
}

/// Lifecycle settings shared by `jetrun worker` and `jetrun dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct LifecycleArgs {
    /// Runner: auto (oci when a probe container runs, else process), oci, process, null,
    /// ecs [default: auto].
    #[arg(long, env = "JETRUN_RUNNER", value_enum)]
    pub runner: Option<RunnerKind>,
    /// This node's id (default: host name plus a hash of the data directory, so it is
    /// stable across restarts and distinct between workers on one host).
    #[arg(long, env = "JETRUN_NODE_ID")]
    pub node_id: Option<String>,
    /// Jobs this worker runs at once [default: 4].
    #[arg(long, env = "JETRUN_MAX_CONCURRENT_JOBS")]
    pub max_concurrent_jobs: Option<usize>,
    /// Jobs one tenant may run at once on this worker (default: no limit).
    #[arg(long, env = "JETRUN_TENANT_MAX_RUNNING")]
    pub tenant_max_running: Option<usize>,
    /// Job starts per second per tenant on this worker (default: no limit).
    #[arg(long, env = "JETRUN_TENANT_STARTS_PER_SECOND")]
    pub tenant_starts_per_second: Option<f64>,
    /// Lease TTL of running jobs: a worker silent this long is presumed dead; settle
    /// calls a job lost after three TTLs without a lease [default: 10s].
    #[arg(long, env = "JETRUN_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// How often leases are renewed [default: 3s].
    #[arg(long, env = "JETRUN_LEASE_RENEW", value_parser = humantime::parse_duration)]
    pub lease_renew: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when a task is stopped (timeout, cancel)
    /// [default: 10s].
    #[arg(long, env = "JETRUN_STOP_GRACE", value_parser = humantime::parse_duration)]
    pub stop_grace: Option<Duration>,
    /// Base of the retry backoff of launches and attempts (exponential with jitter,
    /// capped at 5 min) [default: 2s].
    #[arg(long, env = "JETRUN_RETRY_BASE", value_parser = humantime::parse_duration)]
    pub retry_base: Option<Duration>,
    /// How often settle sweeps active jobs (timeout backstop, leaseless jobs)
    /// [default: 5s].
    #[arg(long, env = "JETRUN_SWEEP_EVERY", value_parser = humantime::parse_duration)]
    pub sweep_every: Option<Duration>,
    /// Secret keying HTTP completion callbacks (HMAC-SHA256); without it HTTP callbacks
    /// are refused.
    #[arg(long, env = "JETRUN_CALLBACK_SECRET", hide_env_values = true)]
    pub callback_secret: Option<String>,
    /// Host names and address ranges (CIDR, e.g. `10.1.0.0/16`) HTTP callbacks may reach
    /// although they are loopback, private or link-local (repeat or comma-separate).
    /// Default: none; such callbacks are refused and dead-lettered.
    #[arg(long, env = "JETRUN_CALLBACK_ALLOW_HOSTS", value_delimiter = ',')]
    pub callback_allow_hosts: Vec<String>,
    /// Do not run settle in this process (run it elsewhere).
    #[arg(long)]
    pub no_settle: bool,
    /// Queues whose jobs may ask for `network: true` (repeat or comma-separate; `*` =
    /// every queue). Such a task gets outbound access through slirp4netns in its own
    /// network namespace, never the host's network. A network job on another queue fails
    /// with `network_not_allowed`. Default: none for `jetrun worker`, `*` for `jetrun dev`.
    #[arg(long, env = "JETRUN_NETWORK_QUEUES", value_delimiter = ',')]
    pub network_queues: Option<Vec<String>>,
    /// Size limit in MiB of an OCI task's scratch dir (`/work`, a tmpfs): writes past it
    /// fail with ENOSPC instead of filling the host's disk [default: 1024].
    #[arg(long, env = "JETRUN_TASK_SCRATCH_MB")]
    pub task_scratch_mb: Option<u64>,
    /// The ECS runner's configuration (`--runner ecs`): JSON, or a path to a JSON file
    /// (cluster, task definitions per queue, subnets, security groups, capacity
    /// providers, pacer; see docs/runner.md).
    #[arg(long, env = "JETRUN_ECS_CONFIG")]
    pub ecs_config: Option<String>,
    /// Let `--runner auto` fall back to the process runner (NO isolation) when runc
    /// cannot run containers here. Without it a worker refuses to start instead; `jetrun
    /// dev` always allows it, with a warning.
    #[arg(long, env = "JETRUN_ALLOW_UNISOLATED")]
    pub allow_unisolated: bool,
}

/// `--queue '*'`: serve every queue, including ones that appear later.
pub const ALL_QUEUES: &str = "*";

/// How often `--queue '*'` looks for queues it does not serve yet.
const QUEUE_DISCOVERY_EVERY: Duration = Duration::from_secs(1);

/// Serves every queue (`--queue '*'`): each queue with a submission waiting in the JOBS
/// stream, or with jobs in the index, gets its own dispatch consumer and dispatcher (so
/// its own concurrency and its own depth for the autoscaler) within one poll of its first
/// submission. Ends when `shutdown` fires or a dispatcher fails.
async fn serve_every_queue(
    ctx: jetrun_host::Context,
    dispatcher: jetrun_dispatch::Dispatcher,
    already: Vec<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut served: std::collections::BTreeSet<String> = already.into_iter().collect();
    let mut running = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(QUEUE_DISCOVERY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = running.join_next() => done??,
            _ = tick.tick() => {
                let mut found = match jetrun_nats::queues::pending_queues(&ctx.js, &ctx.names).await {
                    Ok(q) => q,
                    Err(e) => {
                        warn!(error = %e, "listing queues failed; trying again");
                        continue;
                    }
                };
                // Queues with admitted jobs (whose submission may be re-published later).
                if let Ok(indexed) = ctx.store.queues().await {
                    found.extend(indexed);
                }
                for q in found {
                    if jetrun_core::names::validate_token(&q).is_err() || served.contains(&q) {
                        continue;
                    }
                    if let Err(e) = dispatcher.ensure_consumer(&q).await {
                        warn!(queue = %q, error = %e, "creating the queue's consumer failed; trying again");
                        continue;
                    }
                    info!(queue = %q, "serving a new queue");
                    served.insert(q.clone());
                    let (d, sd) = (dispatcher.clone(), shutdown.clone());
                    running.spawn(async move { d.run(q, sd).await.map_err(anyhow::Error::from) });
                }
            }
        }
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    Ok(())
}

/// Run dispatch, the node agent and settle for some queues.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Queues to serve (repeat or comma-separate); `*` serves every queue, also ones
    /// that appear later, each with its own consumer and concurrency.
    /// [default: default]
    #[arg(long = "queue", short, env = "JETRUN_QUEUES", value_delimiter = ',')]
    pub queues: Vec<String>,
    /// This worker's directory: task bundles, logs, images and runner state. A restart
    /// with the same directory adopts the tasks left running [default: .jetrun/worker].
    #[arg(long, env = "JETRUN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A YAML or JSON file with every setting of the worker's components
    /// (`WorkerConfig`: queues, data_dir, runner, dispatch, agent, settle, ecs; see
    /// docs/operations.md). Unknown fields are refused; fields left out keep their
    /// defaults; flags given (or their environment variables) override it.
    #[arg(long, env = "JETRUN_WORKER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
    #[command(flatten)]
    pub metrics: crate::cmd::top::MetricsArgs,
}

pub use super::supervise::Component;

/// A stable id for this host and data directory.
fn default_node_id(data_dir: &Path) -> String {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.to_string_lossy().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}-{:08x}", jetrun_host::hostname(), h as u32)
}

/// Builds the runner `cfg.runner` over `cfg.data_dir` for node `ctx.node_id`.
pub async fn make_runner(ctx: &jetrun_host::Context, cfg: &WorkerConfig) -> anyhow::Result<Arc<dyn Runner>> {
    let data_dir = cfg.data_dir.as_path();
    let oci = || {
        jetrun_runner::oci::OciRunner::new(jetrun_runner::oci::OciConfig {
            data_dir: data_dir.to_path_buf(),
            work_size_mb: cfg.task_scratch_mb,
            ..Default::default()
        })
    };
    let process = || -> anyhow::Result<Arc<dyn Runner>> {
        warn!("using the PROCESS runner: tasks run as plain child processes with NO isolation");
        Ok(Arc::new(jetrun_runner::process::ProcessRunner::new(data_dir)?))
    };
    // `auto` may fall back to no isolation only where the operator allowed it.
    let fallback = |why: String| -> anyhow::Result<Arc<dyn Runner>> {
        if !cfg.allow_unisolated {
            anyhow::bail!(
                "{why}: this machine cannot isolate jobs, and a worker does not run them unisolated \
                 unless told to. Install runc (and run as root), use `--runner ecs`, or pass \
                 --allow-unisolated (JETRUN_ALLOW_UNISOLATED=true) to run jobs as plain processes"
            );
        }
        warn!("{why}; falling back to the process runner (--allow-unisolated)");
        process()
    };
    Ok(match cfg.runner {
        RunnerKind::Null => {
            warn!("using the NULL runner: nothing is launched, every task exits 0 at once (benchmarks only)");
            Arc::new(jetrun_runner::null::NullRunner::new())
        }
        RunnerKind::Process => process()?,
        RunnerKind::Oci => {
            let r = oci()?;
            r.probe()
                .await
                .context("the OCI runner's probe container failed")?;
            Arc::new(r)
        }
        RunnerKind::Auto => match oci() {
            Ok(r) => match r.probe().await {
                Ok(()) => {
                    info!("OCI probe passed: tasks run in runc containers");
                    Arc::new(r)
                }
                Err(e) => fallback(format!("the OCI probe failed ({e})"))?,
            },
            Err(e) => fallback(format!("the OCI runner is unavailable ({e})"))?,
        },
        RunnerKind::Ecs => ecs_runner(ctx, cfg).await?,
    })
}

#[cfg(feature = "ecs")]
async fn ecs_runner(ctx: &jetrun_host::Context, cfg: &WorkerConfig) -> anyhow::Result<Arc<dyn Runner>> {
    // Checked when the configuration was read (`WorkerConfig`).
    let ecs = cfg
        .ecs
        .clone()
        .context("--runner ecs needs --ecs-config (JETRUN_ECS_CONFIG) or `ecs` in --config")?;
    let runner = jetrun_runner::ecs::EcsRunner::from_config_shared(ecs, &ctx.js)
        .await?
        // Only this node's tasks: every worker of a deployment shares one cluster.
        .with_node(ctx.node_id.clone());
    info!("ECS runner: every job is one ECS task");
    Ok(Arc::new(runner))
}

#[cfg(not(feature = "ecs"))]
async fn ecs_runner(_ctx: &jetrun_host::Context, _cfg: &WorkerConfig) -> anyhow::Result<Arc<dyn Runner>> {
    anyhow::bail!("--runner ecs needs a jetrun built with the `ecs` feature (the shipped image has it)")
}

/// Starts the node agent, dispatch for each queue and settle; returns their tasks.
pub async fn components(
    ctx: &jetrun_host::Context,
    cfg: &WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<Component>> {
    cfg.validate()?;
    let (data_dir, queues) = (cfg.data_dir.as_path(), cfg.queues.as_slice());
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let mut ctx = ctx.clone();
    ctx.node_id = cfg.node_id.clone().unwrap_or_else(|| default_node_id(data_dir));
    let runner = make_runner(&ctx, cfg).await?;
    let agent_cfg = jetrun_agent::Config {
        queues: queues.to_vec(),
        ..cfg.agent.clone()
    };
    let (agent, adoption, agent_task) =
        jetrun_agent::Agent::start(ctx.clone(), runner, agent_cfg, shutdown.clone()).await?;
    info!(node_id = %ctx.node_id, adopted = adoption.adopted, reaped = adoption.reaped, "node agent up");
    let mut out: Vec<Component> = vec![("agent", tokio::spawn(async move { Ok(agent_task.await??) }))];
    let dispatcher = jetrun_dispatch::Dispatcher::new(ctx.clone(), agent, cfg.dispatch.clone());
    let every_queue = queues.iter().any(|q| q == ALL_QUEUES);
    for q in queues.iter().filter(|q| *q != ALL_QUEUES) {
        dispatcher.ensure_consumer(q).await?;
        let d = dispatcher.clone();
        let q = q.clone();
        let sd = shutdown.clone();
        out.push(("dispatch", tokio::spawn(async move { Ok(d.run(q, sd).await?) })));
    }
    if every_queue {
        let explicit: Vec<String> = queues.iter().filter(|q| *q != ALL_QUEUES).cloned().collect();
        let (ctx, d, sd) = (ctx.clone(), dispatcher.clone(), shutdown.clone());
        out.push((
            "dispatch",
            tokio::spawn(async move { serve_every_queue(ctx, d, explicit, sd).await }),
        ));
    }
    if cfg.settle_here {
        let s = jetrun_settle::Settle::new(ctx.clone(), cfg.settle.clone());
        s.ensure_consumers().await?;
        let sd = shutdown.clone();
        out.push(("settle", tokio::spawn(async move { Ok(s.run(sd).await?) })));
    }
    Ok(out)
}

impl Args {
    /// The configuration: --config (or the defaults), then the flags given.
    pub fn config(&self) -> anyhow::Result<WorkerConfig> {
        let mut cfg = match &self.config {
            Some(path) => WorkerConfig::load(path)?,
            None => WorkerConfig::default(),
        };
        if !self.queues.is_empty() {
            cfg.queues = self.queues.clone();
        }
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        cfg.apply(&self.lifecycle)?;
        Ok(cfg)
    }
}

/// Runs a worker until SIGTERM or Ctrl-C.
pub async fn run(g: &GlobalOpts, a: Args) -> anyhow::Result<()> {
    // A bad configuration fails before anything connects.
    let cfg = a.config()?;
    let shutdown = jetrun_host::shutdown_on_signals();
    let ctx = g.context("jetrun-worker").await?;
    let mut comps = components(&ctx, &cfg, shutdown.clone()).await?;
    comps.extend(a.metrics.start(&ctx, shutdown.clone()).await?);
    println!("ready worker queues={}", cfg.queues.join(","));
    let _ = std::io::stdout().flush();
    super::supervise::supervise(comps, shutdown).await
}
