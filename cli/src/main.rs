//! # jetrun
//!
//! The `jetrun` command: `dev` brings the whole pipeline up on one machine; `init` creates
//! the JetStream topology; `submit` and `jobs` work with jobs; `dlq` inspects and replays
//! dead letters; further commands come from the functions (`serve`, `worker`, `scale`,
//! `autoscale`, `image`, `github`). Every command that talks to NATS takes `--nats-url`
//! (`JETRUN_NATS_URL`).

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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

    /// Log format: `text` or `json` (logs go to stderr; `NO_COLOR` turns colours off).
    #[arg(
        long,
        global = true,
        env = "JETRUN_LOG_FORMAT",
        default_value = "text",
        value_parser = ["text", "json"]
    )]
    pub log_format: String,
}

/// The exit codes of `jetrun`, as documented in `--help` and the README.
pub mod exit {
    /// Success (for `submit --wait`: the job succeeded).
    pub const OK: u8 = 0;
    /// An error of jetrun itself (connection, refused request, bad input).
    pub const ERROR: u8 = 1;
    /// A usage error (clap's own code).
    pub const USAGE: u8 = 2;
    /// `submit --wait`: the job failed without an exit code of its own (it could not
    /// launch, its node was lost, its attempts ran out), as `docker run` uses 125.
    pub const JOB_FAILED: u8 = 125;
    /// `submit --wait`: the job was killed at its timeout (as `timeout(1)`).
    pub const TIMED_OUT: u8 = 124;
    /// `submit --wait`: the job was cancelled (128 + SIGINT).
    pub const CANCELLED: u8 = 130;
    /// `submit --wait --wait-timeout`: the wait ended before the job did (EX_TEMPFAIL).
    pub const WAIT_TIMEOUT: u8 = 75;
}

/// Ends the command with this exit code; whatever needed saying was printed already.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// The NATS URL when neither `--nats-url` nor `JETRUN_NATS_URL` is given: `NATS_URL`,
/// then the URL of the selected `nats` CLI context (`NATS_CONTEXT`, else
/// `~/.config/nats/context.txt`), as the `nats` tools do.
fn fallback_nats_url() -> Option<String> {
    if let Some(u) = std::env::var("NATS_URL").ok().filter(|u| !u.trim().is_empty()) {
        return Some(u);
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".config")))?
        .join("nats");
    let name = match std::env::var("NATS_CONTEXT") {
        Ok(n) if !n.trim().is_empty() => n,
        _ => std::fs::read_to_string(config.join("context.txt")).ok()?,
    };
    let name = name.trim();
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return None;
    }
    let text = std::fs::read_to_string(config.join("context").join(format!("{name}.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("url")
        .and_then(|u| u.as_str())
        .filter(|u| !u.trim().is_empty())
        .map(str::to_string)
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
#[command(
    name = "jetrun",
    version,
    propagate_version = true,
    after_help = "\
NATS: --nats-url, else JETRUN_NATS_URL, else NATS_URL, else the selected `nats` CLI context's URL.

Exit codes:
  0    success (submit --wait: the job succeeded)
  1    error (connection, refused request, bad input)
  2    usage error
  N    submit --wait: the job's own exit code N
  75   submit --wait-timeout: the wait ended before the job
  124  submit --wait: the job timed out
  125  submit --wait: the job failed without an exit code (launch failed, lost, attempts exhausted)
  130  submit --wait: the job was cancelled"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
    Route(cmd::route::Args),
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
    /// Print a shell completion script: `jetrun completions bash > /etc/bash_completion.d/jetrun`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `jetrun man | man -l -`.
    Man,
    /// Live dashboard: queues (depth, oldest age, running, rates, depth sparkline),
    /// running jobs and their nodes, replicas, recent failures and dead letters, nodes.
    /// `--once` prints one plain frame (`--json` as JSON); not a terminal: plain frames.
    Top(cmd::top::Args),
    /// The live fleet: each node from the nodes bucket with its runner, queues, last
    /// heartbeat and the jobs it runs (`--watch` redraws every second, `--json` for scripts).
    ///
    /// Examples:
    ///   jetrun nodes
    ///   jetrun nodes --json | jq '.nodes[] | {node_id, running}'
    ///   jetrun nodes --watch
    #[command(verbatim_doc_comment)]
    Nodes(cmd::nodes::Args),
    /// Answer on GitHub for rules with a `reply` (production; in dev it runs inside `dev`).
    ///
    /// Reads the webhooks stream (consumer `github`) and answers refused or malformed
    /// commands; reads job state changes (consumer `github-jobs`) to acknowledge a job at
    /// admission (reaction or comment) and post its answer at its terminal state, through
    /// GitHub's REST API, retried on 5xx and rate limits, never twice per job (claims in the
    /// bucket `<prefix>-github`). Runs as the NATS user `github`; `jetrun init` creates the
    /// consumers and the bucket. Stops cleanly on SIGTERM or Ctrl-C.
    ///
    /// Examples:
    ///   jetrun github --rules rules.yaml --github-token-file /run/secrets/github-token
    ///   jetrun github --config github.yaml --public-url https://jetrun.example.com
    ///   jetrun github --rules rules.yaml --github-api-url https://ghe.example.com/api/v3
    #[command(verbatim_doc_comment)]
    Github(cmd::github::Args),
    // <<< commands from functions: one line each, keep this marker >>>
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if matches.value_source("nats_url") == Some(ValueSource::DefaultValue)
        && let Some(url) = fallback_nats_url()
    {
        cli.global.nats_url = url;
    }
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
        Command::Route(a) => cmd::route::run(&cli.global, a).await,
        Command::Autoscale(a) => cmd::autoscale::run(&cli.global, a).await,
        Command::Top(a) => cmd::top::run(&cli.global, a).await,
        Command::Nodes(a) => cmd::nodes::run(&cli.global, a).await,
        Command::Github(a) => cmd::github::run(&cli.global, a).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "jetrun", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(anyhow::Error::from),
        // <<< dispatch of commands from functions: one line each, keep this marker >>>
    };
    match result {
        Ok(()) => std::process::ExitCode::from(exit::OK),
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit(code)) => std::process::ExitCode::from(*code),
            None => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::from(exit::ERROR)
            }
        },
    }
}
