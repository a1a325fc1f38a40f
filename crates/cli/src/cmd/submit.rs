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
    /// Wait until the job ends; exit non-zero unless it succeeded.
    #[arg(long)]
    pub wait: bool,
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
    let mut spec = JobSpec::new(a.queue.clone(), image, a.command.clone());
    spec.env = a.env.iter().cloned().collect();
    spec.timeout_seconds = a.timeout.map(|d| d.as_secs().max(1));
    spec.max_attempts = a.max_attempts;
    spec.tenant = a.tenant.clone();
    spec.idempotency_key = a.idempotency_key.clone();
    Ok(spec)
}

/// Submits, prints the id, optionally waits.
pub async fn run(g: &GlobalOpts, a: Args) -> anyhow::Result<()> {
    let spec = spec_from(&a)?;
    let ctx = g.context("jetrun-submit").await?;
    let queue = spec.queue.clone();
    let admission =
        jetrun_nats::submit::submit(&ctx.store, &ctx.publisher("cli"), spec, None, Some("cli".into()))
            .await?;
    let id = admission.record().id.clone();
    println!("{id}");
    if !a.wait {
        return Ok(());
    }
    let status = wait_terminal(&ctx, &queue, &id).await?;
    eprintln!("job {id} {status}");
    if status == jetrun_core::JobStatus::Succeeded {
        Ok(())
    } else {
        anyhow::bail!("job {id} ended {status}")
    }
}

/// Waits until job `id` is terminal (watching its KV key), returning the final status.
pub async fn wait_terminal(
    ctx: &jetrun_host::Context,
    _queue: &str,
    id: &str,
) -> anyhow::Result<jetrun_core::JobStatus> {
    let kv = ctx.js.get_key_value(ctx.names.bucket_jobs()).await?;
    let mut watch = kv.watch_with_history(id).await?;
    while let Some(e) = watch.next().await {
        let e = e?;
        if let Ok(rec) = serde_json::from_slice::<jetrun_core::JobRecord>(&e.value)
            && rec.status.is_terminal()
        {
            return Ok(rec.status);
        }
    }
    anyhow::bail!("watch of job {id} ended")
}
