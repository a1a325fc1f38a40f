//! `jetrun serve`: the HTTP endpoint alone (GitHub webhooks and the API), for
//! production. Its flags ([`HttpArgs`], [`DevArgs`]) are shared with `jetrun dev`.
//!
//! Under AWS Lambda (`AWS_LAMBDA_RUNTIME_API` set) the same router is served through
//! the Lambda runtime; that needs a build with the `lambda` feature.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use jetrun_ingest::{Config, Credentials, Ingest};
use tracing::info;

use crate::GlobalOpts;

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
    /// The HTTP server's limits from these flags.
    pub fn limits(&self) -> jetrun_ingest::ServerLimits {
        jetrun_ingest::ServerLimits {
            header_read_timeout: self.http_header_timeout,
            idle_timeout: self.http_idle_timeout,
            max_connections: self.http_max_connections,
        }
    }

    /// Ingest's configuration from these flags (`insecure_dev`: only `jetrun dev`).
    pub fn config(&self, insecure_dev: bool) -> Config {
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
