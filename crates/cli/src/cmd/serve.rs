//! `jetrun serve`: the HTTP endpoint alone (GitHub webhooks and the API), for
//! production; and the ingest and route components of `jetrun dev`.
//!
//! Under AWS Lambda (`AWS_LAMBDA_RUNTIME_API` set) the same router is served through
//! the Lambda runtime; that needs a build with the `lambda` feature.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use jetrun_ingest::{Config, Credentials, Ingest};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::GlobalOpts;
use crate::cmd::dev::Component;

/// Settings of the HTTP endpoint shared by `serve` and `dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// File with GitHub webhook secrets (one per line or comma-separated), in addition to
    /// JETRUN_GITHUB_WEBHOOK_SECRET (comma-separated). Several secrets are accepted at
    /// once, for rotation.
    #[arg(long, env = "JETRUN_GITHUB_SECRET_FILE")]
    pub github_secret_file: Option<PathBuf>,
    /// Largest request body in bytes; larger ones are answered 413 unread.
    #[arg(long, env = "JETRUN_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,
    /// GitHub events to publish (comma-separated; default: every known event).
    #[arg(long = "github-events", env = "JETRUN_GITHUB_EVENTS", value_delimiter = ',')]
    pub github_events: Vec<String>,
    /// API requests per second per tenant (0: unlimited). Tokens: JETRUN_API_TOKENS
    /// (`tenant:token,tenant2:token2`; tenant `*` is an operator).
    #[arg(long, env = "JETRUN_API_RATE", default_value_t = 20.0)]
    pub api_rate: f64,
    /// API requests a tenant may burst.
    #[arg(long, env = "JETRUN_API_BURST", default_value_t = 40)]
    pub api_burst: u32,
    /// Time a client has to send a request's headers, also between requests on a
    /// kept-alive connection; the connection is closed after it.
    #[arg(long, env = "JETRUN_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_header_timeout: std::time::Duration,
    /// A connection on which nothing was sent or received for this long is closed.
    #[arg(long, env = "JETRUN_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub http_idle_timeout: std::time::Duration,
    /// Most HTTP connections open at once; more are answered 503 and closed.
    #[arg(long, env = "JETRUN_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,
}

impl HttpArgs {
    fn limits(&self) -> jetrun_ingest::ServerLimits {
        jetrun_ingest::ServerLimits {
            header_read_timeout: self.http_header_timeout,
            idle_timeout: self.http_idle_timeout,
            max_connections: self.http_max_connections,
        }
    }

    fn config(&self, insecure_dev: bool) -> Config {
        Config {
            max_body_bytes: self.max_body,
            github_events: self
                .github_events
                .iter()
                .filter(|e| !e.is_empty())
                .cloned()
                .collect(),
            rate_per_second: self.api_rate,
            rate_burst: self.api_burst,
            insecure_dev,
            ..Config::default()
        }
    }
}

/// Serve the GitHub webhook endpoint and the HTTP API.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// HTTP address of the webhook endpoint and API (`--listen` is the old spelling).
    #[arg(
        long = "http",
        alias = "listen",
        env = "JETRUN_HTTP",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,
    /// Start without a webhook secret (signatures unchecked) and, without API tokens,
    /// with an open API. Never in production.
    #[arg(long)]
    pub insecure_dev: bool,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub metrics: crate::cmd::top::MetricsArgs,
}

/// Flags `jetrun dev` takes for ingest and route.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Rules file for route (YAML; see docs/rules.md). Without one, no job is submitted
    /// from webhooks.
    #[arg(long, env = "JETRUN_RULES")]
    pub rules: Option<PathBuf>,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Runs `jetrun serve`.
pub async fn run(g: &GlobalOpts, a: Args) -> anyhow::Result<()> {
    // Fail closed before touching the network.
    let creds = Credentials::from_env(a.http.github_secret_file.as_deref())?;
    if creds.webhook_secrets.is_empty() && !a.insecure_dev {
        anyhow::bail!(
            "no GitHub webhook secret: set {} (comma-separated for rotation) or --github-secret-file; \
             --insecure-dev starts without one (never in production)",
            jetrun_ingest::ENV_SECRET
        );
    }
    let ctx = g.context("jetrun-serve").await?;
    let metrics_ctx = ctx.clone();
    let ingest = Ingest::new(ctx, a.http.config(a.insecure_dev), creds).await?;
    let router = jetrun_ingest::router(ingest);
    let shutdown = jetrun_host::shutdown_on_signals();
    // Before the Lambda branch: EMF is how a Lambda function reports its metrics.
    let metrics = a.metrics.start(&metrics_ctx, shutdown.clone()).await?;
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        #[cfg(feature = "lambda")]
        {
            info!("AWS_LAMBDA_RUNTIME_API is set: serving through the Lambda runtime");
            return jetrun_ingest::run_lambda(router)
                .await
                .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"));
        }
        #[cfg(not(feature = "lambda"))]
        anyhow::bail!("AWS_LAMBDA_RUNTIME_API is set but this jetrun was built without the `lambda` feature");
    }
    let _metrics = metrics;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let addr = listener.local_addr()?;
    println!("ready http=http://{addr}");
    info!(%addr, "serving webhooks and the API");
    jetrun_ingest::serve_with(listener, router, shutdown, a.http.limits()).await?;
    Ok(())
}

/// Starts the HTTP endpoint (on `a.http`) and route as components of `jetrun dev`.
/// Dev runs in insecure mode explicitly: with no secret configured, signatures are not
/// checked (a loud warning says so); a configured secret is still enforced.
pub async fn dev_components(
    ctx: &jetrun_host::Context,
    a: &crate::cmd::dev::Args,
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
pub fn dev_insecure(a: &crate::cmd::dev::Args, creds: &Credentials) -> anyhow::Result<bool> {
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

/// Run route alone: webhook events to job submissions, by a rules file.
#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    /// The rules file (YAML; see docs/rules.md).
    #[arg(long, env = "JETRUN_RULES")]
    pub rules: PathBuf,
    /// Only check the rules file and exit (no NATS needed).
    #[arg(long)]
    pub check: bool,
    /// Webhook events handled at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

/// Runs `jetrun route`.
pub async fn run_route(g: &GlobalOpts, a: RouteArgs) -> anyhow::Result<()> {
    let rules = jetrun_route::Rules::load(&a.rules)?;
    if a.check {
        println!("{}: {} rules OK", a.rules.display(), rules.rules.len());
        return Ok(());
    }
    let ctx = g.context("jetrun-route").await?;
    let cfg = jetrun_route::Config {
        rules_file: Some(a.rules),
        concurrency: a.concurrency,
        ..Default::default()
    };
    jetrun_route::run(ctx, cfg, jetrun_host::shutdown_on_signals()).await?;
    Ok(())
}
