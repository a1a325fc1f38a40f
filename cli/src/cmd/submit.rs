//! `jetrun submit`

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use jetrun_core::JobSpec;

use crate::GlobalOpts;

/// Submit a job and print its id (alone, on stdout).
///
/// Example: `jetrun submit --queue default --image busybox -- sh -c 'echo hi'`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue.
    #[arg(long, short, default_value = "default")]
    pub queue: String,
    /// The image (a name in the local image store, e.g. `busybox` or `host`).
    #[arg(long, required_unless_present = "file")]
    pub image: Option<String>,
    /// Environment variables, `K=V` (repeatable).
    #[arg(long = "env", short = 'e', value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Timeout, e.g. `30s`, `10m` (default 30m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Attempts before failing for good (default 3).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Tenant for quotas.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Idempotency key: resubmitting with the same key returns the same job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Read the whole job spec (JSON, as in schemas/job-submission.json) from a file, `-` for stdin.
    #[arg(long, conflicts_with_all = ["image", "command"])]
    pub file: Option<String>,
    /// Wait until the job ends and exit with its outcome: 0 if it succeeded, the job's
    /// own exit code if it exited non-zero, 124 timed out, 125 failed without an exit
    /// code, 130 cancelled (see `jetrun --help`).
    #[arg(long)]
    pub wait: bool,
    /// With `--wait`: stop waiting after this long (e.g. `5m`) and exit 75; the job goes on.
    #[arg(long, value_parser = humantime::parse_duration, requires = "wait")]
    pub wait_timeout: Option<Duration>,
    /// Run the image's own default command (its `Cmd`/`Entrypoint`) instead of one given
    /// after `--`.
    #[arg(long, conflicts_with = "command")]
    pub image_command: bool,
    /// Print the job record as JSON instead of the id alone.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected K=V, got {s:?}"))
}

/// Builds the spec from the arguments.
pub fn spec_from(a: &Args) -> anyhow::Result<JobSpec> {
    if let Some(f) = &a.file {
        let text = if f == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?
        };
        let spec: JobSpec = serde_json::from_str(&text).with_context(|| format!("{f} is not a job spec"))?;
        return Ok(spec);
    }
    let image = a.image.clone().context("--image is required")?;
    if a.command.is_empty() && !a.image_command {
        anyhow::bail!(
            "no command: give it after `--` (e.g. `jetrun submit --image {image} -- sh -c 'echo hi'`), \
             or pass --image-command to run the image's default command"
        );
    }
    let mut spec = JobSpec::new(a.queue.clone(), image, a.command.clone());
    spec.env = a.env.iter().cloned().collect();
    spec.timeout_seconds = a.timeout.map(|d| d.as_secs().max(1));
    spec.max_attempts = a.max_attempts;
    spec.tenant = a.tenant.clone();
    spec.idempotency_key = a.idempotency_key.clone();
    Ok(spec)
}

/// Submits, prints the id (or the record with `--json`), optionally waits.
pub async fn run(g: &GlobalOpts, a: Args) -> anyhow::Result<()> {
    let spec = spec_from(&a)?;
    let ctx = g.context("jetrun-submit").await?;
    let queue = spec.queue.clone();
    let admission =
        jetrun_nats::submit::submit(&ctx.store, &ctx.publisher("cli"), spec, None, Some("cli".into()))
            .await?;
    let id = admission.record().id.clone();
    warn_if_unserved(&ctx, &queue).await;
    if a.json {
        println!("{}", serde_json::to_string(admission.record())?);
    } else {
        println!("{id}");
    }
    if !a.wait {
        return Ok(());
    }
    let wait = wait_terminal(&ctx, &queue, &id);
    let rec = match a.wait_timeout {
        Some(limit) => match tokio::time::timeout(limit, wait).await {
            Ok(r) => r?,
            Err(_) => {
                eprintln!(
                    "job {id} still running after {}; it goes on (`jetrun jobs get {id}`)",
                    humantime::format_duration(limit)
                );
                return Err(crate::Exit(crate::exit::WAIT_TIMEOUT).into());
            }
        },
        None => wait.await?,
    };
    let code = exit_code_of(&rec);
    match (&rec.error, rec.exit_code) {
        (_, Some(c)) => eprintln!("job {id} {} (exit code {c})", rec.status),
        (Some(e), None) => eprintln!("job {id} {}: {}: {}", rec.status, e.kind, e.message),
        (None, None) => eprintln!("job {id} {}", rec.status),
    }
    if code == crate::exit::OK {
        Ok(())
    } else {
        Err(crate::Exit(code).into())
    }
}

/// Says on stderr, at once, when no worker serves `queue`: the job is safe but waits.
pub async fn warn_if_unserved(ctx: &jetrun_host::Context, queue: &str) {
    if let Ok(s) = jetrun_nats::queues::serving(&ctx.js, &ctx.names, queue).await
        && !s.is_served()
    {
        eprintln!(
            "warning: no worker serves queue {queue:?} now; the job waits until one does \
             (`jetrun worker --queue {queue}`, or `jetrun dev`, which serves every queue)"
        );
    }
}

/// The exit code `submit --wait` ends with for a terminal job (documented in `--help`).
pub fn exit_code_of(rec: &jetrun_core::JobRecord) -> u8 {
    use jetrun_core::JobStatus;
    match rec.status {
        JobStatus::Succeeded => crate::exit::OK,
        JobStatus::TimedOut => crate::exit::TIMED_OUT,
        JobStatus::Cancelled => crate::exit::CANCELLED,
        _ => match rec.exit_code {
            // Exit statuses are 0-255 on Unix; a code that truncates to 0 must not
            // report success.
            Some(c) if (c & 0xff) != 0 => (c & 0xff) as u8,
            _ => crate::exit::JOB_FAILED,
        },
    }
}

/// Waits until job `id` is terminal (watching its KV key), returning the final record.
pub async fn wait_terminal(
    ctx: &jetrun_host::Context,
    _queue: &str,
    id: &str,
) -> anyhow::Result<jetrun_core::JobRecord> {
    let kv = ctx.js.get_key_value(ctx.names.bucket_jobs()).await?;
    let mut watch = kv.watch_with_history(id).await?;
    while let Some(e) = watch.next().await {
        let e = e?;
        if let Ok(rec) = serde_json::from_slice::<jetrun_core::JobRecord>(&e.value)
            && rec.status.is_terminal()
        {
            return Ok(rec);
        }
    }
    anyhow::bail!("watch of job {id} ended")
}
