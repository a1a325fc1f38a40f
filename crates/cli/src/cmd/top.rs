//! `jetrun top`: a live view of the deployment, redrawn every `--interval` (1 s) — per
//! queue: depth, age of the oldest submission, running, jobs finished per second over the
//! last interval (from the finished counts), submit-to-start p50/p99 of the latest
//! started jobs and dead letters; recent failures; live nodes. On a terminal each frame
//! is drawn in place with plain ANSI sequences (cursor home, clear to end; no alternate
//! screen, so it works over SSH and the last frame stays on screen); elsewhere frames
//! follow one another. `--once` prints one frame and exits; `--json` writes frames as
//! JSON (one document per line when live).
//!
//! Also the metrics flags the long-running commands share ([`MetricsArgs`]).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jetrun_core::JobStatus;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::GlobalOpts;
use crate::cmd::supervise::Component;

/// Metrics flags of `serve`, `worker`, `autoscale` and `dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Serve `GET /metrics` (Prometheus/OpenMetrics text, no token) on this address, e.g.
    /// `0.0.0.0:9090`. `serve` and `dev` also answer `/metrics` on their HTTP port (with an
    /// operator token when tokens are configured).
    #[arg(long, env = "JETRUN_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Write the metrics as CloudWatch Embedded Metric Format JSON lines to `stdout` or
    /// `stderr` (ECS `awslogs` and Lambda turn them into CloudWatch metrics).
    #[arg(long, env = "JETRUN_METRICS_EMF", value_parser = ["stdout", "stderr"])]
    pub metrics_emf: Option<String>,
    /// How often EMF lines are written.
    #[arg(long, env = "JETRUN_METRICS_EMF_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub metrics_emf_interval: Duration,
}

impl MetricsArgs {
    /// Starts what the flags ask for: the EMF writer, and the metrics listener as a
    /// component (bound before this returns).
    pub async fn start(
        &self,
        ctx: &jetrun_host::Context,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Vec<Component>> {
        if let Some(t) = &self.metrics_emf {
            let target: jetrun_telemetry::emf::Target = t.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            jetrun_telemetry::emf::start(target, self.metrics_emf_interval);
            // Gauges (queue depth, replicas) are read from NATS; keep them fresh for EMF.
            let (ctx, sd, every) = (ctx.clone(), shutdown.clone(), self.metrics_emf_interval);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)) / 2);
                loop {
                    tokio::select! {
                        _ = sd.cancelled() => break,
                        _ = tick.tick() => jetrun_host::refresh_metrics(&ctx).await,
                    }
                }
                jetrun_telemetry::emf::flush(target);
            });
        }
        let mut out: Vec<Component> = Vec::new();
        if let Some(addr) = self.metrics_listen {
            let h = jetrun_ingest::spawn_metrics_listener(addr, ctx.clone(), shutdown).await?;
            out.push(("metrics", tokio::spawn(async move { Ok(h.await??) })));
        }
        Ok(out)
    }
}

/// Live view of queues, failures and nodes.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one frame and exit.
    #[arg(long)]
    pub once: bool,
    /// Frames as JSON: one pretty document with --once, else one line per frame.
    #[arg(long)]
    pub json: bool,
    /// Time between frames.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Recent failures shown.
    #[arg(long, default_value_t = 8)]
    pub failures: usize,
    /// Latest started jobs per queue the queue-wait percentiles are taken from.
    #[arg(long, default_value_t = 100)]
    pub sample: usize,
}

/// Most recent dead letters read to attribute them to queues.
pub const DLQ_SCAN: usize = 1000;

/// One queue's line.
#[derive(Debug, Clone, Serialize)]
pub struct QueueRow {
    /// The queue.
    pub queue: String,
    /// Submissions not yet delivered to dispatch (consumer `num_pending`).
    pub pending: u64,
    /// Delivered, not yet acknowledged (`num_ack_pending`).
    pub ack_pending: u64,
    /// Jobs not terminal.
    pub active: u64,
    /// Jobs running now.
    pub running: u64,
    /// Age in seconds of the oldest submission still in the queue.
    pub oldest_age_seconds: Option<f64>,
    /// Terminal jobs by status.
    pub finished: BTreeMap<String, u64>,
    /// Jobs finished per second since the previous frame (none on the first).
    pub finished_per_second: Option<f64>,
    /// Submit-to-start median of the latest started jobs (seconds), if any started.
    pub queue_wait_p50_seconds: Option<f64>,
    /// Submit-to-start 99th percentile of the same jobs.
    pub queue_wait_p99_seconds: Option<f64>,
    /// How many started jobs the percentiles come from.
    pub queue_wait_sample: usize,
    /// Dead letters of this queue's subjects among the latest [`DLQ_SCAN`].
    pub dead_letters: u64,
}

/// A recent failure.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The job.
    pub job_id: String,
    /// Its queue.
    pub queue: String,
    /// `failed` or `timed_out`.
    pub status: String,
    /// The error kind.
    pub kind: Option<String>,
    /// The error message (first line, cut).
    pub message: Option<String>,
    /// When it ended.
    pub at: Option<jetrun_core::Timestamp>,
}

/// A live node.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// The node id.
    pub node_id: String,
    /// Its runner.
    pub runner: String,
    /// Tasks it supervises.
    pub tasks: u64,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Seconds since it last reported.
    pub seen_seconds_ago: f64,
}

/// One frame.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    /// When it was read.
    pub at: jetrun_core::Timestamp,
    /// Queues.
    pub queues: Vec<QueueRow>,
    /// Recent failures, newest first.
    pub failures: Vec<Failure>,
    /// Dead letters stored.
    pub dead_letters: u64,
    /// Live nodes.
    pub nodes: Vec<Node>,
}

/// The `q`-quantile (0..=1) of sorted `v` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The queue of a job subject `<prefix>.job.<kind>.<queue>[.<id>]`.
fn queue_of_subject(subject: &str) -> Option<&str> {
    let mut t = subject.split('.');
    match (t.next(), t.next(), t.next(), t.next()) {
        (Some(_), Some("job"), Some(_), Some(q)) => Some(q),
        _ => None,
    }
}

/// Dead letters by queue among the latest [`DLQ_SCAN`] (unavailable: none).
async fn dead_letters_by_queue(ctx: &jetrun_host::Context) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(mut stream) = ctx.js.get_stream(ctx.names.stream_dlq()).await else {
        return out;
    };
    let Ok(info) = stream.info().await else {
        return out;
    };
    let after = info.state.last_sequence.saturating_sub(DLQ_SCAN as u64);
    if let Ok(all) = jetrun_nats::dlq::list(&ctx.js, &ctx.names, after, DLQ_SCAN).await {
        for s in all {
            if let Some(q) = queue_of_subject(&s.entry.subject) {
                *out.entry(q.to_string()).or_default() += 1;
            }
        }
    }
    out
}

/// Reads one frame; `previous` (with its read time) gives the rates. `sample`: latest
/// started jobs per queue for the queue-wait percentiles.
pub async fn snapshot(
    ctx: &jetrun_host::Context,
    failures: usize,
    sample: usize,
    previous: Option<(&Frame, Instant)>,
) -> anyhow::Result<Frame> {
    let stream = ctx.js.get_stream(ctx.names.stream_jobs()).await?;
    let dlq_by_queue = dead_letters_by_queue(ctx).await;
    let mut queues = Vec::new();
    let mut failed = Vec::new();
    for q in ctx.store.queues().await? {
        let counts = ctx.store.counts(&q).await?;
        let (pending, ack_pending) = match stream.consumer_info(ctx.names.consumer_dispatch(&q)).await {
            Ok(i) => (i.num_pending, i.num_ack_pending as u64),
            Err(_) => (0, 0),
        };
        let oldest_age_seconds = match stream
            .direct_get_first_for_subject(ctx.names.job_submit(&q))
            .await
        {
            Ok(m) => m
                .headers
                .get(jetrun_core::envelope::H_TIME)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.as_str()).ok())
                .map(|t| {
                    (jetrun_core::now() - t.with_timezone(&chrono::Utc))
                        .num_milliseconds()
                        .max(0) as f64
                        / 1000.0
                }),
            Err(_) => None,
        };
        let running_jobs = ctx.store.list(&q, Some(JobStatus::Running), 10_000).await?;
        let running = running_jobs.len() as u64;
        // Submit to start of the latest started jobs: running ones, then the newest
        // finished (a job that never started has no start).
        let mut started = running_jobs;
        for status in [JobStatus::Succeeded, JobStatus::Failed, JobStatus::TimedOut] {
            if started.len() >= sample {
                break;
            }
            started.extend(ctx.store.list(&q, Some(status), sample - started.len()).await?);
        }
        let mut waits: Vec<f64> = started
            .iter()
            .filter_map(|r| {
                let s = r.started_at?;
                Some((s - r.created_at).num_milliseconds().max(0) as f64 / 1000.0)
            })
            .take(sample)
            .collect();
        waits.sort_by(f64::total_cmp);
        let finished: BTreeMap<String, u64> = counts
            .iter()
            .filter(|(k, _)| k.as_str() != "active")
            .map(|(k, v)| (k.clone(), *v as u64))
            .collect();
        let total: u64 = finished.values().sum();
        let finished_per_second = previous.and_then(|(p, at)| {
            // A queue the previous frame did not have is new: it had finished nothing.
            let before: u64 = p
                .queues
                .iter()
                .find(|r| r.queue == q)
                .map(|r| r.finished.values().sum())
                .unwrap_or(0);
            let secs = at.elapsed().as_secs_f64();
            (secs > 0.0).then(|| total.saturating_sub(before) as f64 / secs)
        });
        for status in [JobStatus::Failed, JobStatus::TimedOut] {
            for r in ctx.store.list(&q, Some(status), failures).await? {
                failed.push(Failure {
                    job_id: r.id.clone(),
                    queue: q.clone(),
                    status: r.status.as_str().to_string(),
                    kind: r.error.as_ref().map(|e| e.kind.clone()),
                    message: r
                        .error
                        .as_ref()
                        .map(|e| e.message.lines().next().unwrap_or("").chars().take(80).collect()),
                    at: r.finished_at.or(Some(r.updated_at)),
                });
            }
        }
        queues.push(QueueRow {
            queue: q.clone(),
            pending,
            ack_pending,
            active: counts.get("active").copied().unwrap_or(0) as u64,
            running,
            oldest_age_seconds,
            finished,
            finished_per_second,
            queue_wait_p50_seconds: quantile(&waits, 0.5),
            queue_wait_p99_seconds: quantile(&waits, 0.99),
            queue_wait_sample: waits.len(),
            dead_letters: dlq_by_queue.get(&q).copied().unwrap_or(0),
        });
    }
    failed.sort_by_key(|f| std::cmp::Reverse(f.at));
    failed.truncate(failures);
    let dead_letters = jetrun_nats::dlq::count(&ctx.js, &ctx.names).await.unwrap_or(0);
    let mut nodes = Vec::new();
    if let Ok(kv) = ctx.js.get_key_value(ctx.names.bucket_nodes()).await
        && let Ok(mut keys) = kv.keys().await
    {
        while let Some(Ok(k)) = keys.next().await {
            if let Ok(Some(v)) = kv.get(&k).await
                && let Ok(n) = serde_json::from_slice::<serde_json::Value>(&v)
            {
                let updated = n
                    .get("updated_at")
                    .and_then(|t| t.as_str())
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                nodes.push(Node {
                    node_id: k.clone(),
                    runner: n
                        .get("runner")
                        .and_then(|r| r.as_str())
                        .unwrap_or("?")
                        .to_string(),
                    tasks: n.get("tasks").and_then(|t| t.as_u64()).unwrap_or(0),
                    queues: n
                        .get("queues")
                        .and_then(|q| q.as_array())
                        .map(|a| a.iter().filter_map(|q| q.as_str().map(str::to_string)).collect())
                        .unwrap_or_default(),
                    seen_seconds_ago: updated
                        .map(|t| {
                            (jetrun_core::now() - t.with_timezone(&chrono::Utc))
                                .num_milliseconds()
                                .max(0) as f64
                                / 1000.0
                        })
                        .unwrap_or(0.0),
                });
            }
        }
    }
    Ok(Frame {
        at: jetrun_core::now(),
        queues,
        failures: failed,
        dead_letters,
        nodes,
    })
}

fn age(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 10.0 => format!("{s:.1}s"),
        Some(s) if s < 60.0 => format!("{s:.0}s"),
        Some(s) if s < 3600.0 => format!("{:.0}m", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
    }
}

/// The frame as plain text (what a terminal shows; no colour, no cursor control).
pub fn render(f: &Frame) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "jetrun top — {}",
        f.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<20} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "QUEUE",
        "PENDING",
        "INFLIGHT",
        "ACTIVE",
        "RUNNING",
        "OLDEST",
        "SUCCEEDED",
        "FAILED",
        "DONE/S",
        "WAIT50",
        "WAIT99",
        "DLQ"
    );
    for q in &f.queues {
        let n = |k: &str| q.finished.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "{:<20} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>6}",
            q.queue,
            q.pending,
            q.ack_pending,
            q.active,
            q.running,
            age(q.oldest_age_seconds),
            n("succeeded"),
            n("failed") + n("timed_out"),
            q.finished_per_second
                .map(|r| format!("{r:.1}"))
                .unwrap_or_else(|| "-".into()),
            age(q.queue_wait_p50_seconds),
            age(q.queue_wait_p99_seconds),
            q.dead_letters,
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "RECENT FAILURES ({} dead letters stored)", f.dead_letters);
    if f.failures.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for x in &f.failures {
        let _ = writeln!(
            o,
            "  {} {:<12} {:<10} {:<18} {}",
            x.job_id,
            x.queue,
            x.status,
            x.kind.as_deref().unwrap_or("-"),
            x.message.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<32} {:<8} {:>6} {:>6}  QUEUES",
        "NODE", "RUNNER", "TASKS", "SEEN"
    );
    for n in &f.nodes {
        let _ = writeln!(
            o,
            "{:<32} {:<8} {:>6} {:>6}  {}",
            n.node_id,
            n.runner,
            n.tasks,
            age(Some(n.seen_seconds_ago)),
            n.queues.join(",")
        );
    }
    o
}

/// Runs `jetrun top`.
pub async fn run(g: &GlobalOpts, a: Args) -> anyhow::Result<()> {
    let ctx = g.context("jetrun-top").await?;
    if a.once {
        let f = snapshot(&ctx, a.failures, a.sample, None).await?;
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&f)?)?;
        } else {
            write!(out, "{}", render(&f))?;
        }
        return Ok(());
    }
    let shutdown = jetrun_host::shutdown_on_signals();
    let tty = !a.json && std::io::stdout().is_terminal();
    if tty {
        // Hide the cursor while redrawing; shown again on the way out.
        write!(std::io::stdout(), "\x1b[?25l\x1b[2J")?;
    }
    let result = live(&ctx, &a, tty, &shutdown).await;
    if tty {
        let mut out = std::io::stdout().lock();
        write!(out, "\x1b[?25h")?;
        out.flush()?;
    }
    result
}

async fn live(
    ctx: &jetrun_host::Context,
    a: &Args,
    tty: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut previous: Option<(Frame, Instant)> = None;
    let mut tick = tokio::time::interval(a.interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let f = snapshot(
            ctx,
            a.failures,
            a.sample,
            previous.as_ref().map(|(f, at)| (f, *at)),
        )
        .await?;
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", serde_json::to_string(&f)?)?;
        } else if tty {
            // Home, then each line over the old one (erasing its rest) and the screen
            // below: redrawn in place without a blank flash.
            let mut frame = String::from("\x1b[H");
            for line in render(&f).lines() {
                frame.push_str(line);
                frame.push_str("\x1b[K\n");
            }
            frame.push_str("\x1b[J");
            write!(out, "{frame}")?;
        } else {
            // Not a terminal: one plain frame after another.
            writeln!(out, "{}", render(&f))?;
        }
        // A closed pipe (`jetrun top | head`) ends the view.
        if out.flush().is_err() {
            break;
        }
        previous = Some((f, Instant::now()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&[3.0], 0.99), Some(3.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn dead_letters_are_attributed_by_subject() {
        assert_eq!(queue_of_subject("jetrun.job.submit.builds"), Some("builds"));
        assert_eq!(queue_of_subject("jetrun.job.callback.q.0191"), Some("q"));
        assert_eq!(queue_of_subject("jetrun.task.exited.0191"), None);
    }
}
