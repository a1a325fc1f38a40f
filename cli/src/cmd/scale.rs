//! `jetrun scale show|set|burst|reset`, and starting the autoscaler (shared by the component
//! of `jetrun dev` and `jetrun autoscale`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use jetrun_autoscale::spec::{self, Applied};
use jetrun_core::scale::{BackendKind, ScaleRequest, ScaleSpec, Strategy};
use tokio_util::sync::CancellationToken;

use crate::GlobalOpts;

/// Declare, inspect and move scalable services.
#[derive(Debug, clap::Subcommand)]
pub enum ScaleCmd {
    /// Show one service's spec, burst and recorded state, or every service.
    Show {
        /// The service (all if omitted).
        service: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create or change a service's spec (flags not given keep their current value;
    /// a new service needs --queue, --min, --max and --target).
    Set(SetArgs),
    /// Hold at least N replicas for a while ("4 for 30 minutes"); expires by itself.
    Burst {
        /// The service.
        service: String,
        /// Replicas to hold at least (at most the spec's max).
        #[arg(long)]
        to: u32,
        /// How long, e.g. `30m`, `2h`.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop any burst: back to what the spec and the load say.
    Reset {
        /// The service.
        service: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `jetrun scale set`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The service.
    service: String,
    /// Print the stored spec as JSON.
    #[arg(long)]
    json: bool,
    /// The queue whose depth drives it.
    #[arg(long)]
    queue: Option<String>,
    /// Lower bound of replicas.
    #[arg(long)]
    min: Option<u32>,
    /// Upper bound of replicas.
    #[arg(long)]
    max: Option<u32>,
    /// Jobs one replica handles at once.
    #[arg(long)]
    target: Option<u32>,
    /// Who applies decisions: local, ecs_service or signal.
    #[arg(long, value_parser = parse_backend)]
    backend: Option<BackendKind>,
    /// local (processes on one host) or infra.
    #[arg(long, value_parser = parse_strategy)]
    strategy: Option<Strategy>,
    /// Lower demand must last this long before scaling down (default 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    stabilization: Option<Duration>,
    /// No demand for this long before scaling to zero (default 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle: Option<Duration>,
    /// Depth that wakes a service at zero (default 1).
    #[arg(long)]
    activation: Option<u64>,
    /// Largest step up in one decision (default 10).
    #[arg(long)]
    max_step: Option<u32>,
    /// Whether load and requests may move it (default true).
    #[arg(long)]
    scalable: Option<bool>,
    /// Whether each replica binds fixed ports (then local replicas are limited to 1).
    #[arg(long)]
    port_bound: Option<bool>,
    /// Backend settings as JSON, e.g. '{"cluster":"c","service":"s"}' for ecs_service.
    #[arg(long)]
    backend_config: Option<String>,
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    serde_json::from_value(serde_json::Value::String(s.replace('-', "_")))
        .map_err(|_| format!("unknown backend {s:?}: local, ecs_service or signal"))
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown strategy {s:?}: local or infra"))
}

/// Runs a `scale` subcommand.
pub async fn run(g: &GlobalOpts, cmd: ScaleCmd) -> anyhow::Result<()> {
    let names = g.names()?;
    let client = jetrun_nats::connect(&g.nats_url, "jetrun-scale", Duration::from_secs(5))
        .await
        .with_context(|| format!("connecting to {}", g.nats_url))?;
    let js = async_nats::jetstream::new(client);
    let kv = js
        .get_key_value(names.bucket_scale())
        .await
        .with_context(|| format!("bucket {} (has `jetrun init` run?)", names.bucket_scale()))?;
    match cmd {
        ScaleCmd::Show { service, json } => {
            let services = match service {
                Some(s) => vec![s],
                None => spec::list_services(&kv).await?,
            };
            if services.is_empty() && !json {
                println!(
                    "no scalable services; declare one with `jetrun scale set SERVICE --queue Q --min N --max N --target N`"
                );
            }
            for s in services {
                let Some((sp, _)) = spec::get_spec(&kv, &s).await? else {
                    anyhow::bail!("no scale spec for {s}");
                };
                let burst = spec::get_burst(&kv, &s)
                    .await?
                    .filter(|b| b.active_at(jetrun_core::now()));
                let state = spec::get_state(&kv, &s).await?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"spec": sp, "burst": burst, "state": state})
                    );
                    continue;
                }
                println!(
                    "{}  queue={} min={} max={} target={} backend={:?} strategy={:?} scalable={} stabilization={}s idle={}s activation={} max_step={}{}",
                    sp.service,
                    sp.queue,
                    sp.min,
                    sp.max,
                    sp.target_per_replica,
                    sp.backend,
                    sp.strategy,
                    sp.scalable,
                    sp.stabilization_seconds,
                    sp.idle_seconds,
                    sp.activation,
                    sp.max_step,
                    if sp.port_bound { " port_bound" } else { "" },
                );
                if let Some(b) = burst {
                    println!("  burst: at least {} until {}", b.replicas, b.until.to_rfc3339());
                }
                match state {
                    Some(st) => {
                        println!(
                            "  desired={} current={} pending={} in_flight={} ({}) at {}",
                            st.desired,
                            st.current,
                            st.pending,
                            st.in_flight,
                            st.reason,
                            st.updated_at.to_rfc3339()
                        );
                        if let Some(e) = st.backend_error {
                            println!("  backend error: {e}");
                        }
                    }
                    None => println!("  no decision recorded yet (is an autoscaler running?)"),
                }
            }
        }
        ScaleCmd::Set(a) => {
            let existing = spec::get_spec(&kv, &a.service).await?.map(|(s, _)| s);
            let mut sp = match existing {
                Some(s) => s,
                None => {
                    let need = |v: Option<u32>, flag: &str| {
                        v.ok_or_else(|| anyhow::anyhow!("{flag} is needed for a new service"))
                    };
                    let queue = a
                        .queue
                        .clone()
                        .ok_or_else(|| anyhow::anyhow!("--queue is needed for a new service"))?;
                    ScaleSpec::new(
                        &a.service,
                        queue,
                        need(a.min, "--min")?,
                        need(a.max, "--max")?,
                        need(a.target, "--target")?,
                    )
                }
            };
            if let Some(v) = a.queue {
                sp.queue = v;
            }
            if let Some(v) = a.min {
                sp.min = v;
            }
            if let Some(v) = a.max {
                sp.max = v;
            }
            if let Some(v) = a.target {
                sp.target_per_replica = v;
            }
            if let Some(v) = a.backend {
                sp.backend = v;
            }
            if let Some(v) = a.strategy {
                sp.strategy = v;
            }
            if let Some(v) = a.stabilization {
                sp.stabilization_seconds = v.as_secs();
            }
            if let Some(v) = a.idle {
                sp.idle_seconds = v.as_secs();
            }
            if let Some(v) = a.activation {
                sp.activation = v;
            }
            if let Some(v) = a.max_step {
                sp.max_step = v;
            }
            if let Some(v) = a.scalable {
                sp.scalable = v;
            }
            if let Some(v) = a.port_bound {
                sp.port_bound = v;
            }
            if let Some(v) = a.backend_config {
                sp.backend_config = Some(serde_json::from_str(&v).context("--backend-config is not JSON")?);
            }
            report(spec::declare(&kv, &sp).await?, a.json)?;
        }
        ScaleCmd::Burst {
            service,
            to,
            duration,
            json,
        } => {
            let req = ScaleRequest::Burst {
                service,
                replicas: to,
                for_seconds: duration.as_secs().max(1),
            };
            report(spec::apply_request(&kv, &req).await?, json)?;
        }
        ScaleCmd::Reset { service, json } => {
            report(
                spec::apply_request(&kv, &ScaleRequest::Reset { service }).await?,
                json,
            )?;
        }
    }
    Ok(())
}

fn report(a: Applied, json: bool) -> anyhow::Result<()> {
    if json {
        let v = match &a {
            Applied::Spec { spec, revision } => {
                serde_json::json!({"applied": "spec", "spec": spec, "revision": revision})
            }
            Applied::Burst { service, burst } => {
                serde_json::json!({"applied": "burst", "service": service, "burst": burst})
            }
            Applied::Reset { service, had_burst } => {
                serde_json::json!({"applied": "reset", "service": service, "had_burst": had_burst})
            }
            _ => serde_json::json!({"applied": "other"}),
        };
        println!("{v}");
        return Ok(());
    }
    match a {
        Applied::Spec { spec, revision } => println!("spec of {} stored (revision {revision})", spec.service),
        Applied::Burst { service, burst } => {
            println!(
                "{service}: at least {} replicas until {}",
                burst.replicas,
                burst.until.to_rfc3339()
            )
        }
        Applied::Reset {
            service,
            had_burst: true,
        } => println!("{service}: burst dropped"),
        Applied::Reset { service, .. } => println!("{service}: no burst was active"),
        _ => println!("done"),
    }
    Ok(())
}

/// Starts the autoscaler for `jetrun dev`: local replicas live under `<data_dir>/workers`
/// and reach NATS at `nats_url`.
pub async fn start(
    ctx: &jetrun_host::Context,
    data_dir: &Path,
    nats_url: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let cfg = deployment_config(
        jetrun_autoscale::Config::default(),
        &ctx.names,
        nats_url,
        Some(data_dir),
    );
    spawn_autoscaler(ctx, cfg, shutdown).await
}

/// Completes an autoscaler configuration for this deployment (`jetrun dev` and
/// `jetrun autoscale`): with `data_dir`, the `local` backend's replicas live under
/// `<data_dir>/workers`; they reach NATS at `nats_url` and use this deployment's prefix
/// unless the configuration already says otherwise.
pub fn deployment_config(
    mut cfg: jetrun_autoscale::Config,
    names: &jetrun_core::Names,
    nats_url: &str,
    data_dir: Option<&Path>,
) -> jetrun_autoscale::Config {
    if let Some(d) = data_dir {
        cfg.local.data_root = d.join("workers");
    }
    cfg.local.nats_url.get_or_insert_with(|| nats_url.to_string());
    cfg.local
        .env
        .entry("JETRUN_PREFIX".into())
        .or_insert_with(|| names.prefix().to_string());
    cfg
}

/// Checks what the autoscaler cannot run with: a zero tick or resync, a leader TTL that is
/// not whole seconds (the server's per-key TTL is), or a lease that would lapse between two
/// renewals (`renew_every + safety_margin` must stay below `ttl`).
pub fn validate_config(cfg: &jetrun_autoscale::Config) -> anyhow::Result<()> {
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    anyhow::ensure!(!cfg.tick.is_zero(), "tick must be longer than 0");
    anyhow::ensure!(!cfg.resync.is_zero(), "resync must be longer than 0");
    let l = &cfg.leader;
    anyhow::ensure!(
        l.ttl >= Duration::from_secs(1) && l.ttl.subsec_nanos() == 0,
        "leader ttl must be whole seconds, at least 1s (got {})",
        fmt(l.ttl)
    );
    anyhow::ensure!(
        !l.renew_every.is_zero(),
        "leader renew_every must be longer than 0"
    );
    anyhow::ensure!(
        l.renew_every + l.safety_margin < l.ttl,
        "leader renew_every ({}) + safety_margin ({}) must be shorter than ttl ({}), or the \
         leader would stop acting between two renewals",
        fmt(l.renew_every),
        fmt(l.safety_margin),
        fmt(l.ttl)
    );
    anyhow::ensure!(
        !cfg.request_consumer.is_empty(),
        "request_consumer must not be empty"
    );
    Ok(())
}

/// Checks `cfg`, logs it, creates the scale-request consumer and runs the autoscaler in a
/// task until `shutdown` (shared by `jetrun dev` and `jetrun autoscale`).
pub async fn spawn_autoscaler(
    ctx: &jetrun_host::Context,
    cfg: jetrun_autoscale::Config,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    validate_config(&cfg)?;
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    tracing::info!(
        prefix = ctx.names.prefix(),
        tick = %fmt(cfg.tick),
        resync = %fmt(cfg.resync),
        leader_key = %cfg.leader.key,
        leader_ttl = %fmt(cfg.leader.ttl),
        leader_renew_every = %fmt(cfg.leader.renew_every),
        leader_safety_margin = %fmt(cfg.leader.safety_margin),
        request_consumer = %cfg.request_consumer,
        local_data_root = %cfg.local.data_root.display(),
        ecs_backend = cfg!(feature = "ecs"),
        ecs_region = cfg.ecs.region.as_deref().unwrap_or("(environment)"),
        ecs_endpoint_url = cfg.ecs.endpoint_url.as_deref().unwrap_or("(default)"),
        "autoscaler settings"
    );
    let scaler = jetrun_autoscale::Autoscaler::new(ctx, cfg).await?;
    scaler.ensure_request_consumer().await?;
    Ok(tokio::spawn(async move { Ok(scaler.run(shutdown).await?) }))
}
