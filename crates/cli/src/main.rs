//! # jetrun
//!
//! The `jetrun` command: `dev` brings the whole pipeline up on one machine; `init` creates
//! the JetStream topology; `submit` and `jobs` work with jobs; `dlq` inspects and replays
//! dead letters; further commands come from the functions (`serve`, `worker`, `scale`,
//! `autoscale`, `image`). Every command that talks to NATS takes `--nats-url`
//! (`JETRUN_NATS_URL`).

use clap::{Parser, Subcommand};

// The pipeline allocates many small, short-lived buffers (headers, JSON bodies, acks);
// glibc's malloc was ~20 % of the client's CPU in the lifecycle benchmark, mimalloc
// makes one job ≈ 10–15 % cheaper (docs/bench-lifecycle.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cmd;

/// Options every command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalOpts {
    /// NATS server URL(s), comma-separated for a cluster.
    #[arg(
        long,
        global = true,
        env = "JETRUN_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Subject prefix of this deployment (streams and buckets are named after it), so
    /// two deployments can share one server.
    #[arg(long, global = true, env = "JETRUN_PREFIX", default_value = "jetrun")]
    pub prefix: String,

    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "JETRUN_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl GlobalOpts {
    /// The deployment's names.
    pub fn names(&self) -> anyhow::Result<jetrun_core::Names> {
        Ok(jetrun_core::Names::new(&self.prefix)?)
    }

    /// Connects and opens the store.
    pub async fn context(&self, client_name: &str) -> anyhow::Result<jetrun_host::Context> {
        Ok(jetrun_host::Context::connect(&self.nats_url, self.names()?, client_name).await?)
    }
}

/// jetrun: an event-driven job pipeline on NATS JetStream.
///
/// Webhooks, job submissions and scale requests become JetStream events; each job runs in
/// its own isolated container; job state lives in KV buckets changed only by
/// compare-and-set. Start with `jetrun dev`.
#[derive(Debug, Parser)]
#[command(name = "jetrun", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline on this machine: a managed nats-server (or --nats-url),
    /// `init`, every function and the HTTP endpoint. Prints `ready http=<url> nats=<url>`.
    Dev(cmd::dev::Args),
    /// Create or upgrade every stream, consumer and bucket (idempotent).
    Init(cmd::init::Args),
    /// Submit a job; prints its id.
    ///
    /// The job id alone goes to stdout, so `id=$(jetrun submit ...)` works.
    ///
    /// Examples:
    ///   jetrun submit --queue default --image busybox -- sh -c 'echo hello'
    ///   jetrun submit --image busybox --timeout 10m --env GOOD=v1 --wait -- ./bisect.sh
    ///   jetrun submit --file job.json
    #[command(verbatim_doc_comment)]
    Submit(cmd::submit::Args),
    /// List, show and watch jobs.
    #[command(subcommand)]
    Jobs(cmd::jobs::JobsCmd),
    /// Inspect and replay dead letters.
    #[command(subcommand)]
    Dlq(cmd::dlq::DlqCmd),
    /// Serve the GitHub webhook endpoint and the HTTP API (production; Lambda-aware).
    Serve(cmd::serve::Args),
    /// Declare, inspect and move scalable services: specs, bursts, decisions.
    #[command(subcommand)]
    Scale(cmd::scale::ScaleCmd),
    /// Run dispatch, the node agent and settle for some queues (one node of the fleet).
    Worker(cmd::worker::Args),
    /// Manage the local image store of the OCI runner: import, list, setup, rm.
    #[command(subcommand)]
    Image(cmd::image::ImageCmd),
    /// Route webhook events to job submissions by a rules file (`--check` to validate one).
    Route(cmd::serve::RouteArgs),
    /// Run the autoscaler: queue depth to replicas for every declared service (production).
    ///
    /// Reads each scalable service's queue, decides within the bounds declared with
    /// `jetrun scale set`, applies it through the service's backend (local, ecs_service or
    /// signal) and publishes `<prefix>.scale.signal.<service>`. Run two or more for
    /// failover: one is elected through a lease in the nodes bucket and acts, the others
    /// stand by. Stops cleanly on SIGTERM or Ctrl-C.
    ///
    /// Examples:
    ///   jetrun autoscale --nats-url nats://nats:4222
    ///   jetrun autoscale --leader-ttl 10s --data-dir /var/lib/jetrun
    ///   jetrun autoscale --config autoscale.json --tick 1s
    #[command(verbatim_doc_comment)]
    Autoscale(cmd::autoscale::Args),
    // <<< commands from functions: one line each, keep this marker >>>
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _telemetry = jetrun_telemetry::init(&cli.global.log_format);
    let result = match cli.command {
        Command::Dev(a) => cmd::dev::run(&cli.global, a).await,
        Command::Init(a) => cmd::init::run(&cli.global, a).await,
        Command::Submit(a) => cmd::submit::run(&cli.global, a).await,
        Command::Jobs(a) => cmd::jobs::run(&cli.global, a).await,
        Command::Dlq(a) => cmd::dlq::run(&cli.global, a).await,
        Command::Serve(a) => cmd::serve::run(&cli.global, a).await,
        Command::Scale(a) => cmd::scale::run(&cli.global, a).await,
        Command::Worker(a) => cmd::worker::run(&cli.global, a).await,
        Command::Image(a) => cmd::image::run(&cli.global, a).await,
        Command::Route(a) => cmd::serve::run_route(&cli.global, a).await,
        Command::Autoscale(a) => cmd::autoscale::run(&cli.global, a).await,
        // <<< dispatch of commands from functions: one line each, keep this marker >>>
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
