//! `jetrun dev`: the whole pipeline in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use jetrun_harness::{ServerOptions, ServerProcess};
use jetrun_ingest::{Credentials, Ingest};
use jetrun_nats::Topology;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::GlobalOpts;

/// Run nats-server (managed), `init`, every function and the HTTP endpoint.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the managed server's JetStream store and logs, and for task
    /// bundles, images and logs.
    #[arg(long, env = "JETRUN_DATA_DIR", default_value = ".jetrun/dev")]
    pub data_dir: PathBuf,
    /// Address the managed nats-server listens on (ignored with --nats-url).
    #[arg(long, env = "JETRUN_NATS_LISTEN", default_value = "127.0.0.1:4222")]
    pub nats_listen: SocketAddr,
    /// HTTP address of the webhook endpoint and API.
    #[arg(long, env = "JETRUN_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Queues to serve (comma-separated). The default `*` serves every queue, also ones
    /// that appear later (each with its own consumer, concurrency and depth).
    #[arg(
        long = "queue",
        env = "JETRUN_QUEUES",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub queues: Vec<String>,
    /// Allow listening beyond loopback (`--http`, `--nats-listen`) without a webhook
    /// secret and API tokens. On loopback dev never needs them.
    #[arg(long)]
    pub insecure_dev: bool,
    /// Replicas of every stream and bucket dev applies (with --nats-url to a cluster).
    /// Without it, existing streams and buckets keep theirs (an `init --replicas 3`
    /// deployment stays R3) and new ones get 1. Lower than existing: refused unless
    /// --force-replicas.
    #[arg(long, env = "JETRUN_REPLICAS", value_parser = clap::value_parser!(u16).range(1..=5))]
    pub replicas: Option<u16>,
    /// Lower existing streams and buckets to --replicas (less redundancy, warned).
    #[arg(long, env = "JETRUN_FORCE_REPLICAS", requires = "replicas")]
    pub force_replicas: bool,
    #[command(flatten)]
    pub ingest: crate::cmd::serve::DevArgs,
    #[command(flatten)]
    pub lifecycle: crate::cmd::worker::LifecycleArgs,
    #[command(flatten)]
    pub metrics: crate::cmd::top::MetricsArgs,
    #[command(flatten)]
    pub github: GithubArgs,
    // <<< more dev flags from functions: keep this marker >>>
}

/// The github function in dev: answers for rules with a `reply` (runs with `--rules`).
#[derive(Debug, Clone, clap::Args)]
pub struct GithubArgs {
    /// GitHub REST API base URL (GitHub Enterprise: `https://<host>/api/v3`; the bisect
    /// demo: its local stand-in).
    #[arg(long, env = "JETRUN_GITHUB_API_URL", default_value = "https://api.github.com")]
    pub github_api_url: String,
    /// File holding the GitHub token (else `JETRUN_GITHUB_TOKEN`).
    #[arg(long, env = "JETRUN_GITHUB_TOKEN_FILE")]
    pub github_token_file: Option<PathBuf>,
    /// GitHub App id (with --github-app-key-file: installation tokens instead of a
    /// token). Set it as the variable for private clones too: the worker's checkout reads
    /// `JETRUN_GITHUB_APP_ID`/`JETRUN_GITHUB_APP_KEY_FILE` from the environment.
    #[arg(long, env = "JETRUN_GITHUB_APP_ID", requires = "github_app_key_file")]
    pub github_app_id: Option<u64>,
    /// The GitHub App's private key (PEM file).
    #[arg(long, env = "JETRUN_GITHUB_APP_KEY_FILE", requires = "github_app_id")]
    pub github_app_key_file: Option<PathBuf>,
    /// The jetrun API's address as GitHub users should see it, for logs links (default:
    /// `http://<--http>`).
    #[arg(long, env = "JETRUN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Attempts per GitHub call.
    #[arg(long, env = "JETRUN_GITHUB_ATTEMPTS", default_value_t = 6)]
    pub github_attempts: u32,
    /// Longest wait between two GitHub attempts (also caps `Retry-After`).
    #[arg(long, env = "JETRUN_GITHUB_MAX_WAIT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub github_max_wait: Duration,
}

pub use super::supervise::Component;

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(g: &GlobalOpts, a: Args) -> anyhow::Result<()> {
    let shutdown = jetrun_host::shutdown_on_signals();
    // Fail closed before starting anything that listens.
    let creds = jetrun_ingest::Credentials::from_env(a.ingest.http.github_secret_file.as_deref())?;
    dev_insecure(&a, &creds)?;
    std::fs::create_dir_all(&a.data_dir).with_context(|| format!("creating {}", a.data_dir.display()))?;

    // The NATS server: an existing one if --nats-url was given explicitly, else managed.
    let explicit_url = std::env::args().any(|x| x == "--nats-url" || x.starts_with("--nats-url="))
        || std::env::var("JETRUN_NATS_URL").is_ok();
    let mut managed: Option<ServerProcess> = None;
    let nats_url = if explicit_url {
        g.nats_url.clone()
    } else {
        if std::net::TcpListener::bind(a.nats_listen).is_err() {
            anyhow::bail!(
                "{} is in use: pass --nats-url to use the server there, or --nats-listen to pick another address",
                a.nats_listen
            );
        }
        let store_dir = a.data_dir.join("jetstream");
        let p = tokio::task::spawn_blocking({
            let opts = ServerOptions {
                addr: a.nats_listen,
                store_dir,
                name: "jetrun-dev".into(),
                cluster: None,
                log_file: a.data_dir.join("nats-server.log"),
                extra_args: vec![],
            };
            move || ServerProcess::spawn(opts)
        })
        .await??;
        info!(url = %p.url(), pid = ?p.pid(), "managed nats-server started");
        let url = p.url();
        managed = Some(p);
        url
    };

    let result = run_pipeline(g, &a, &nats_url, shutdown.clone()).await;
    if let Err(e) = &result {
        error!(error = %format!("{e:#}"), "dev failed");
    }
    if let Some(mut p) = managed {
        info!("stopping managed nats-server");
        tokio::task::spawn_blocking(move || p.shutdown(Duration::from_secs(10))).await?;
    }
    result
}

async fn run_pipeline(
    g: &GlobalOpts,
    a: &Args,
    nats_url: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let names = g.names()?;
    let client = jetrun_nats::connect(nats_url, "jetrun-dev", Duration::from_secs(20)).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut topo = Topology::new(names.clone());
    topo.replicas = a.replicas.map(usize::from);
    topo.force_replicas = a.force_replicas;
    // `*` is served by discovery (consumers are made per queue as queues appear); the
    // topology declares the named queues, and always `default`.
    topo.queues = a
        .queues
        .iter()
        .filter(|q| *q != crate::cmd::worker::ALL_QUEUES)
        .cloned()
        .chain(std::iter::once("default".to_string()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for r in crate::cmd::init::provision(&js, &topo).await? {
        match &r.warning {
            Some(w) => {
                tracing::warn!(kind = r.kind, name = %r.name, change = ?r.change, warning = %w, "topology")
            }
            None => info!(kind = r.kind, name = %r.name, change = ?r.change, "topology"),
        }
    }
    let ctx = jetrun_host::Context::from_client(client, names).await?;

    let mut components: Vec<Component> = Vec::new();
    let http_url = format!("http://{}", a.http);
    components.extend(dev_components(&ctx, a, shutdown.clone()).await?);
    components.push((
        "autoscale",
        crate::cmd::scale::start(&ctx, &a.data_dir, nats_url, shutdown.clone()).await?,
    ));
    let mut worker = crate::cmd::worker::WorkerConfig {
        queues: a.queues.clone(),
        data_dir: a.data_dir.clone(),
        // Dev runs jobs even where it cannot isolate them (it says so loudly).
        allow_unisolated: true,
        ..Default::default()
    };
    // In dev every queue may ask for network unless the flag says otherwise.
    worker.agent.network_queues = vec!["*".into()];
    worker.apply(&a.lifecycle)?;
    components.extend(crate::cmd::worker::components(&ctx, &worker, shutdown.clone()).await?);
    components.extend(a.metrics.start(&ctx, shutdown.clone()).await?);
    if a.ingest.rules.is_some() {
        let cfg = jetrun_github::Config {
            rules_file: a.ingest.rules.clone(),
            api_url: a.github.github_api_url.clone(),
            token_file: a.github.github_token_file.clone(),
            app_id: a.github.github_app_id,
            app_key_file: a.github.github_app_key_file.clone(),
            public_url: a.github.public_url.clone().unwrap_or_else(|| http_url.clone()),
            attempts: a.github.github_attempts,
            max_wait: a.github.github_max_wait,
            ..Default::default()
        };
        let (c, s) = (ctx.clone(), shutdown.clone());
        components.push((
            "github",
            tokio::spawn(async move { Ok(jetrun_github::run(c, cfg, s).await?) }),
        ));
    }
    // <<< components from functions: start each, push (name, handle); keep this marker >>>
    let _ = &ctx;

    println!("ready http={http_url} nats={nats_url}");
    info!(http = %http_url, nats = %nats_url, components = components.len(), "jetrun dev is up; Ctrl-C to stop");

    // Run until a signal, or until a component fails.
    super::supervise::supervise(components, shutdown).await
}

/// Starts the HTTP endpoint (on `a.http`) and route as components of `jetrun dev`.
/// Dev runs in insecure mode explicitly: with no secret configured, signatures are not
/// checked (a loud warning says so); a configured secret is still enforced.
pub async fn dev_components(
    ctx: &jetrun_host::Context,
    a: &Args,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<Component>> {
    let creds = Credentials::from_env(a.ingest.http.github_secret_file.as_deref())?;
    let insecure = dev_insecure(a, &creds)?;
    if creds.webhook_secrets.is_empty() {
        warn!(
            "jetrun dev: INSECURE DEV MODE, webhook signatures are not checked; set JETRUN_GITHUB_WEBHOOK_SECRET to check them"
        );
    }
    if creds.api_tokens.is_empty() {
        warn!(
            "jetrun dev: INSECURE DEV MODE, the API is open to anyone who reaches it; set JETRUN_API_TOKENS to require tokens"
        );
    }
    let ingest = Ingest::new(ctx.clone(), a.ingest.http.config(insecure), creds).await?;
    let listener = tokio::net::TcpListener::bind(a.http)
        .await
        .with_context(|| format!("binding {}", a.http))?;
    let router = jetrun_ingest::router(ingest);
    let s = shutdown.clone();
    let limits = a.ingest.http.limits();
    let http = tokio::spawn(async move { Ok(jetrun_ingest::serve_with(listener, router, s, limits).await?) });
    let route_cfg = jetrun_route::Config {
        rules_file: a.ingest.rules.clone(),
        ..Default::default()
    };
    // Refuse a bad rules file now, with its line, rather than from a background task.
    if let Some(p) = &route_cfg.rules_file {
        jetrun_route::Rules::load(p)?;
    }
    let ctx = ctx.clone();
    let route = tokio::spawn(async move { Ok(jetrun_route::run(ctx, route_cfg, shutdown).await?) });
    Ok(vec![("ingest", http), ("route", route)])
}

/// Whether dev may run without a webhook secret or API tokens: only where nobody else can
/// reach it (the HTTP endpoint and the managed nats-server on loopback), or when the
/// operator said `--insecure-dev`. Elsewhere it needs both, and says so.
pub fn dev_insecure(a: &Args, creds: &Credentials) -> anyhow::Result<bool> {
    let missing: Vec<&str> = [
        (
            creds.webhook_secrets.is_empty(),
            "a webhook secret (JETRUN_GITHUB_WEBHOOK_SECRET)",
        ),
        (creds.api_tokens.is_empty(), "API tokens (JETRUN_API_TOKENS)"),
    ]
    .into_iter()
    .filter_map(|(m, what)| m.then_some(what))
    .collect();
    let exposed: Vec<String> = [("--http", a.http), ("--nats-listen", a.nats_listen)]
        .into_iter()
        .filter(|(_, addr)| !addr.ip().is_loopback())
        .map(|(flag, addr)| format!("{flag} {addr}"))
        .collect();
    if a.insecure_dev || missing.is_empty() || exposed.is_empty() {
        if !exposed.is_empty() && a.insecure_dev && !missing.is_empty() {
            warn!(exposed = %exposed.join(", "), "jetrun dev: --insecure-dev on a non-loopback address: anyone who reaches it runs commands");
        }
        return Ok(true);
    }
    anyhow::bail!(
        "jetrun dev listens beyond loopback ({}) without {}: anyone who reaches it could run commands. \
         Set {}, listen on 127.0.0.1, or pass --insecure-dev to accept the risk",
        exposed.join(", "),
        missing.join(" and "),
        missing.join(" and ")
    )
}
