//! What `jetrun top` and `jetrun nodes` show, read from NATS: one [`Frame`] per refresh.
//! Every read is stream or bucket metadata, direct gets and the job index: no consumer is
//! created, so any number of viewers can watch a deployment.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::StreamExt;
use jetrun_core::{JobRecord, JobStatus, Timestamp};
use serde::Serialize;

/// Most recent dead letters read to attribute them to queues.
pub const DLQ_SCAN: usize = 1000;

/// How much one frame reads.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Recent failures (and recent dead letters) kept.
    pub failures: usize,
    /// Latest started jobs per queue the queue-wait percentiles are taken from.
    pub sample: usize,
    /// Running jobs kept, the oldest first.
    pub jobs: usize,
}

/// One queue's line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueRow {
    /// The queue.
    pub queue: String,
    /// Submissions not yet delivered to dispatch (consumer `num_pending`): the depth.
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

impl QueueRow {
    /// Terminal jobs with `status`.
    pub fn finished(&self, status: &str) -> u64 {
        self.finished.get(status).copied().unwrap_or(0)
    }
}

/// A job running (or launching) now.
#[derive(Debug, Clone, Serialize)]
pub struct RunningJob {
    /// The job.
    pub job_id: String,
    /// Its queue.
    pub queue: String,
    /// `running` or `launching`.
    pub status: String,
    /// Its tenant, if it has one.
    pub tenant: Option<String>,
    /// The node whose agent supervises it.
    pub node_id: Option<String>,
    /// The current attempt.
    pub attempt: u32,
    /// Its image.
    pub image: String,
    /// When the current attempt started (none while launching).
    pub started_at: Option<Timestamp>,
    /// Seconds since it started (since it was admitted while launching).
    pub age_seconds: f64,
}

impl RunningJob {
    /// The row of a record.
    pub fn of(r: &JobRecord, now: Timestamp) -> Self {
        Self {
            job_id: r.id.clone(),
            queue: r.queue.clone(),
            status: r.status.as_str().to_string(),
            tenant: r.spec.tenant.clone(),
            node_id: r.node_id.clone(),
            attempt: r.attempt,
            image: r.spec.image.clone(),
            started_at: r.started_at,
            age_seconds: secs_between(r.started_at.unwrap_or(r.created_at), now),
        }
    }
}

/// A scalable service: replicas desired against current.
#[derive(Debug, Clone, Serialize)]
pub struct Replicas {
    /// The service.
    pub service: String,
    /// The queue whose depth drives it.
    pub queue: String,
    /// Declared lower bound.
    pub min: u32,
    /// Declared upper bound.
    pub max: u32,
    /// Replicas the autoscaler decided (none before its first decision).
    pub desired: Option<u32>,
    /// Replicas the backend reported at that decision.
    pub current: Option<u32>,
    /// Why that number.
    pub reason: Option<String>,
    /// The burst in force: at least this many.
    pub burst: Option<u32>,
    /// The backend's last error, if applying failed.
    pub backend_error: Option<String>,
    /// Seconds since the decision was recorded.
    pub updated_seconds_ago: Option<f64>,
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
    pub at: Option<Timestamp>,
}

/// A recent dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterRow {
    /// Its sequence in the DLQ stream (`jetrun dlq show SEQ`).
    pub seq: u64,
    /// The function that gave up on the message.
    pub origin: String,
    /// Why, as a kind.
    pub reason_kind: String,
    /// Why (first line, cut).
    pub reason: String,
    /// The message's subject.
    pub subject: String,
    /// The job it concerns, if known.
    pub job_id: Option<String>,
    /// When it was dead-lettered.
    pub at: Timestamp,
}

/// A live node.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// The node id.
    pub node_id: String,
    /// The worker process running its agent (`host:pid:start-time`).
    pub worker_id: String,
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
    pub at: Timestamp,
    /// Queues.
    pub queues: Vec<QueueRow>,
    /// Running jobs, the oldest first, at most [`Limits::jobs`].
    pub running_jobs: Vec<RunningJob>,
    /// Scalable services.
    pub replicas: Vec<Replicas>,
    /// Recent failures, newest first.
    pub failures: Vec<Failure>,
    /// Dead letters stored.
    pub dead_letters: u64,
    /// The latest dead letters, newest first.
    pub recent_dead_letters: Vec<DeadLetterRow>,
    /// Live nodes.
    pub nodes: Vec<Node>,
}

/// The `q`-quantile (0..=1) of sorted `v` (nearest rank).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Seconds from `from` to `to`, never negative (clocks of other hosts may be ahead).
pub(crate) fn secs_between(from: Timestamp, to: Timestamp) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

/// The queue of a job subject `<prefix>.job.<kind>.<queue>[.<id>]`.
pub(crate) fn queue_of_subject(subject: &str) -> Option<&str> {
    let mut t = subject.split('.');
    match (t.next(), t.next(), t.next(), t.next()) {
        (Some(_), Some("job"), Some(_), Some(q)) => Some(q),
        _ => None,
    }
}

/// The first line of `s`, at most `n` characters.
pub(crate) fn first_line(s: &str, n: usize) -> String {
    s.lines().next().unwrap_or("").chars().take(n).collect()
}

/// Dead letters by queue among the latest [`DLQ_SCAN`], and the latest `recent` of them
/// (unavailable: none).
async fn dead_letters(
    ctx: &jetrun_host::Context,
    recent: usize,
) -> (BTreeMap<String, u64>, Vec<DeadLetterRow>) {
    let mut by_queue = BTreeMap::new();
    let Ok(mut stream) = ctx.js.get_stream(ctx.names.stream_dlq()).await else {
        return (by_queue, Vec::new());
    };
    let Ok(info) = stream.info().await else {
        return (by_queue, Vec::new());
    };
    let after = info.state.last_sequence.saturating_sub(DLQ_SCAN as u64);
    let Ok(all) = jetrun_nats::dlq::list(&ctx.js, &ctx.names, after, DLQ_SCAN).await else {
        return (by_queue, Vec::new());
    };
    for s in &all {
        if let Some(q) = queue_of_subject(&s.entry.subject) {
            *by_queue.entry(q.to_string()).or_default() += 1;
        }
    }
    let latest = all
        .iter()
        .rev()
        .take(recent)
        .map(|s| DeadLetterRow {
            seq: s.seq,
            origin: s.entry.origin.clone(),
            reason_kind: s.entry.reason_kind.clone(),
            reason: first_line(&s.entry.reason, 80),
            subject: s.entry.subject.clone(),
            job_id: s.entry.job_id.clone(),
            at: s.entry.failed_at,
        })
        .collect();
    (by_queue, latest)
}

/// Every scalable service with its latest decision (no scale bucket: none).
async fn replicas(ctx: &jetrun_host::Context) -> Vec<Replicas> {
    use jetrun_autoscale::spec;
    let Ok(kv) = ctx.js.get_key_value(ctx.names.bucket_scale()).await else {
        return Vec::new();
    };
    let Ok(services) = spec::list_services(&kv).await else {
        return Vec::new();
    };
    let now = jetrun_core::now();
    let mut out = Vec::new();
    for s in services {
        let Ok(Some((sp, _))) = spec::get_spec(&kv, &s).await else {
            continue;
        };
        let state = spec::get_state(&kv, &s).await.ok().flatten();
        let burst = spec::get_burst(&kv, &s)
            .await
            .ok()
            .flatten()
            .filter(|b| b.active_at(now));
        out.push(Replicas {
            service: sp.service,
            queue: sp.queue,
            min: sp.min,
            max: sp.max,
            desired: state.as_ref().map(|st| st.desired),
            current: state.as_ref().map(|st| st.current),
            reason: state.as_ref().map(|st| st.reason.clone()),
            burst: burst.map(|b| b.replicas),
            backend_error: state.as_ref().and_then(|st| st.backend_error.clone()),
            updated_seconds_ago: state.as_ref().map(|st| secs_between(st.updated_at, now)),
        });
    }
    out
}

/// The live nodes of the `<prefix>-nodes` bucket, sorted by id. Entries that are not a
/// node's (the autoscaler's leader lease shares the bucket) are left out.
pub async fn read_nodes(ctx: &jetrun_host::Context) -> Vec<Node> {
    let mut nodes = Vec::new();
    let Ok(kv) = ctx.js.get_key_value(ctx.names.bucket_nodes()).await else {
        return nodes;
    };
    let Ok(mut keys) = kv.keys().await else {
        return nodes;
    };
    let now = jetrun_core::now();
    while let Some(Ok(k)) = keys.next().await {
        if let Ok(Some(v)) = kv.get(&k).await
            && let Ok(n) = serde_json::from_slice::<jetrun_node::protocol::NodeInfo>(&v)
        {
            nodes.push(Node {
                node_id: k.clone(),
                worker_id: n.worker_id,
                runner: n.runner,
                tasks: n.tasks as u64,
                queues: n.queues,
                seen_seconds_ago: secs_between(n.updated_at, now),
            });
        }
    }
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    nodes
}

/// Reads one frame; `previous` (with its read time) gives the rates.
pub async fn snapshot(
    ctx: &jetrun_host::Context,
    limits: Limits,
    previous: Option<(&Frame, Instant)>,
) -> anyhow::Result<Frame> {
    let stream = ctx.js.get_stream(ctx.names.stream_jobs()).await?;
    let (dlq_by_queue, recent_dead_letters) = dead_letters(ctx, limits.failures).await;
    let now = jetrun_core::now();
    let mut queues = Vec::new();
    let mut failed = Vec::new();
    let mut running_all = Vec::new();
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
                .map(|t| secs_between(t.with_timezone(&chrono::Utc), now)),
            Err(_) => None,
        };
        let running_jobs = ctx.store.list(&q, Some(JobStatus::Running), 10_000).await?;
        let running = running_jobs.len() as u64;
        running_all.extend(running_jobs.iter().map(|r| RunningJob::of(r, now)));
        // Submit to start of the latest started jobs: running ones, then the newest
        // finished (a job that never started has no start).
        let mut started = running_jobs;
        for status in [JobStatus::Succeeded, JobStatus::Failed, JobStatus::TimedOut] {
            if started.len() >= limits.sample {
                break;
            }
            started.extend(
                ctx.store
                    .list(&q, Some(status), limits.sample - started.len())
                    .await?,
            );
        }
        let mut waits: Vec<f64> = started
            .iter()
            .filter_map(|r| Some(secs_between(r.created_at, r.started_at?)))
            .take(limits.sample)
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
            for r in ctx.store.list(&q, Some(status), limits.failures).await? {
                failed.push(Failure {
                    job_id: r.id.clone(),
                    queue: q.clone(),
                    status: r.status.as_str().to_string(),
                    kind: r.error.as_ref().map(|e| e.kind.clone()),
                    message: r.error.as_ref().map(|e| first_line(&e.message, 80)),
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
    failed.truncate(limits.failures);
    // The oldest first: a job running for too long is what an operator looks for.
    running_all.sort_by(|a, b| {
        b.age_seconds
            .total_cmp(&a.age_seconds)
            .then_with(|| a.job_id.cmp(&b.job_id))
    });
    running_all.truncate(limits.jobs);
    let dead_letters = jetrun_nats::dlq::count(&ctx.js, &ctx.names).await.unwrap_or(0);
    Ok(Frame {
        at: jetrun_core::now(),
        queues,
        running_jobs: running_all,
        replicas: replicas(ctx).await,
        failures: failed,
        dead_letters,
        recent_dead_letters,
        nodes: read_nodes(ctx).await,
    })
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
