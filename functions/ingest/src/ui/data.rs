//! What the console's pages show, read from JetStream with ingest's credential.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use jetrun_core::scale::{Burst, ScaleSpec, ScaleState};
use jetrun_core::{JobRecord, JobStatus, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Ingest;
use crate::auth::OPERATOR_TENANT;
use crate::problem::Problem;
use crate::sse::{self, Change, Start};

/// Most records a tenant's job listing reads to find its own jobs (the index knows
/// queues and statuses, not tenants).
pub const TENANT_SCAN: usize = 500;

fn unavailable(e: impl std::fmt::Display) -> Problem {
    Problem::unavailable(e.to_string())
}

/// Whether `tenant` may see `rec` (the same rule as the API).
pub fn may_see(tenant: &str, rec: &JobRecord) -> bool {
    tenant == OPERATOR_TENANT || rec.spec.tenant.as_deref() == Some(tenant)
}

/// One queue's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueRow {
    /// The queue.
    pub queue: String,
    /// Waiting for a dispatcher.
    pub pending: u64,
    /// Launching or running.
    pub running: u64,
    /// Not terminal.
    pub active: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed or timed out.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// When the oldest job still queued was admitted.
    pub oldest_queued: Option<Timestamp>,
}

/// Every queue's figures, from the index's subjects (stream metadata) and the dispatch
/// consumers; one record read per queue for the oldest queued job.
pub async fn queues(ingest: &Ingest) -> Result<Vec<QueueRow>, Problem> {
    let ctx = &ingest.ctx;
    let bucket = ctx.names.bucket_index();
    let index = ctx
        .js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(unavailable)?;
    let prefix = format!("$KV.{bucket}.");
    let mut subjects = index
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(unavailable)?;
    let mut rows: BTreeMap<String, QueueRow> = BTreeMap::new();
    let mut active: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some(s) = subjects.next().await {
        let (subject, _) = s.map_err(unavailable)?;
        let Some(rest) = subject.strip_prefix(&prefix) else {
            continue;
        };
        let mut parts = rest.splitn(3, '.');
        let (Some(q), Some(group), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let row = rows.entry(q.to_string()).or_insert_with(|| QueueRow {
            queue: q.to_string(),
            ..Default::default()
        });
        match group {
            "active" => {
                row.active += 1;
                active.entry(q.to_string()).or_default().push(id.to_string());
            }
            "succeeded" => row.succeeded += 1,
            "failed" | "timed_out" => row.failed += 1,
            "cancelled" => row.cancelled += 1,
            _ => {}
        }
    }
    let jobs_stream = ctx
        .js
        .get_stream(ctx.names.stream_jobs())
        .await
        .map_err(unavailable)?;
    for row in rows.values_mut() {
        row.pending = match jobs_stream
            .consumer_info(ctx.names.consumer_dispatch(&row.queue))
            .await
        {
            Ok(info) => info.num_pending.min(row.active),
            Err(_) => row.active,
        };
        row.running = row.active - row.pending;
        if let Some(ids) = active.get_mut(&row.queue) {
            // uuid v7 ids sort by creation time: the first queued one is the oldest.
            ids.sort_unstable();
            for id in ids.iter().take(16) {
                if let Ok(Some((rec, _))) = ctx.store.get(id).await
                    && rec.status == JobStatus::Queued
                {
                    row.oldest_queued = Some(rec.created_at);
                    break;
                }
            }
        }
    }
    Ok(rows.into_values().collect())
}

/// The queues that have jobs.
pub async fn queue_names(ingest: &Ingest) -> Result<Vec<String>, Problem> {
    ingest
        .ctx
        .store
        .queues()
        .await
        .map_err(|e| unavailable(e.message))
}

/// A page of the jobs list.
#[derive(Debug, Clone, Default)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobRecord>,
    /// Whether the listing stopped at its bound (there may be more).
    pub truncated: bool,
}

/// Jobs of `queue` (else of every queue: `known`, or read from the index) with
/// `status`, newest first, that `tenant` may see. An operator's listing reads `limit + 1`
/// records per queue; a tenant's, [`tenant_jobs`].
pub async fn jobs(
    ingest: &Ingest,
    tenant: &str,
    queue: Option<&str>,
    known: Option<Vec<String>>,
    status: Option<JobStatus>,
    limit: usize,
) -> Result<JobList, Problem> {
    let store = &ingest.ctx.store;
    let queues = match (queue, known) {
        (Some(q), _) => vec![q.to_string()],
        (None, Some(k)) => k,
        (None, None) => queue_names(ingest).await?,
    };
    if tenant != OPERATOR_TENANT {
        return tenant_jobs(ingest, tenant, queue, status, limit).await;
    }
    let read = limit + 1;
    let mut all = Vec::new();
    let mut truncated = false;
    for q in queues {
        let recs = store
            .list(&q, status, read)
            .await
            .map_err(|e| unavailable(e.message))?;
        truncated |= recs.len() >= read;
        all.extend(recs.into_iter().filter(|r| may_see(tenant, r)));
    }
    all.sort_unstable_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    truncated |= all.len() > limit;
    all.truncate(limit);
    Ok(JobList { jobs: all, truncated })
}

/// A tenant's jobs of `queue` (else of every queue) with `status`, newest first.
///
/// The index knows queues and statuses, not tenants, so records must be read to find the
/// tenant's: the index entries (stream metadata, one request) are sorted newest first
/// across queues and groups, and records are read 32 at a time only until `limit + 1`
/// of the tenant's are found, at most [`TENANT_SCAN`]. (Asking the store for
/// [`TENANT_SCAN`] records and filtering afterwards read all 500 every time: 68–112 ms.)
pub async fn tenant_jobs(
    ingest: &Ingest,
    tenant: &str,
    queue: Option<&str>,
    status: Option<JobStatus>,
    limit: usize,
) -> Result<JobList, Problem> {
    let ctx = &ingest.ctx;
    let bucket = ctx.names.bucket_index();
    let index = ctx
        .js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(unavailable)?;
    let prefix = format!("$KV.{bucket}.");
    let filter = match queue {
        Some(q) => format!("{prefix}{q}.>"),
        None => format!("{prefix}>"),
    };
    let mut subjects = index.info_with_subjects(filter).await.map_err(unavailable)?;
    let mut entries: Vec<(String, String)> = Vec::new();
    while let Some(s) = subjects.next().await {
        let (subject, _) = s.map_err(unavailable)?;
        let Some(rest) = subject.strip_prefix(&prefix) else {
            continue;
        };
        let mut parts = rest.splitn(3, '.');
        let (Some(q), Some(group), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let wanted = match status {
            Some(s) if s.is_terminal() => group == s.as_str(),
            Some(_) => group == "active",
            None => true,
        };
        if wanted && queue.is_none_or(|want| want == q) {
            entries.push((id.to_string(), q.to_string()));
        }
    }
    // uuid v7 ids sort by creation time.
    entries.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    let total = entries.len();
    let store = &ctx.store;
    let reads = futures::stream::iter(entries.into_iter().take(TENANT_SCAN))
        .map(|(id, q)| async move { (q, store.get(&id).await) })
        .buffered(32);
    futures::pin_mut!(reads);
    let (mut found, mut scanned) = (Vec::new(), 0usize);
    while let Some((q, r)) = reads.next().await {
        scanned += 1;
        match r {
            // An entry whose record moved on (or is gone) since the index was read: the
            // record decides, as in `JobStore::list`.
            Ok(Some((rec, _)))
                if may_see(tenant, &rec) && rec.queue == q && status.is_none_or(|s| s == rec.status) =>
            {
                found.push(rec);
                if found.len() > limit {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => return Err(unavailable(e.message)),
        }
    }
    let truncated = found.len() > limit || (scanned >= TENANT_SCAN && total > scanned);
    found.sort_unstable_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    found.truncate(limit);
    Ok(JobList {
        jobs: found,
        truncated,
    })
}

/// A job's record if `tenant` may see it.
pub async fn job(ingest: &Ingest, tenant: &str, id: &str) -> Result<Option<JobRecord>, Problem> {
    if !jetrun_core::job::valid_job_id(id) {
        return Ok(None);
    }
    match ingest.ctx.store.get(id).await {
        Ok(Some((rec, _))) if may_see(tenant, &rec) => Ok(Some(rec)),
        Ok(_) => Ok(None),
        Err(e) => Err(unavailable(e.message)),
    }
}

/// Every retained state change of a job, oldest first (its attempts and transitions).
pub async fn history(ingest: &Ingest, rec: &JobRecord) -> Result<Vec<Change>, Problem> {
    let subject = ingest.ctx.names.job_event(&rec.queue, &rec.id);
    let (mut changes, pending) = sse::changes(ingest, subject, Start::All)
        .await
        .map_err(unavailable)?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while (out.len() as u64) < pending.min(500) {
        match tokio::time::timeout_at(deadline, changes.next()).await {
            Ok(Some(Ok(c))) => out.push(c),
            _ => break,
        }
    }
    Ok(out)
}

/// The agent's answer to a `logs` request.
pub use jetrun_node::protocol::LogsReply;

/// The last `tail` lines of a job's logs, from the agent of the node that ran it
/// (`<prefix>.node.<node>.logs`, as `jetrun jobs logs` does). `Err` says why there are none.
pub async fn logs(ingest: &Ingest, rec: &JobRecord, tail: usize) -> Result<LogsReply, String> {
    let node = rec
        .node_id
        .as_deref()
        .ok_or_else(|| format!("the job is {} and has not been placed on a node yet", rec.status))?;
    let body = serde_json::to_vec(&jetrun_node::protocol::LogsRequest {
        job_id: rec.id.clone(),
        tail,
        stdout_from: None,
        stderr_from: None,
    })
    .map_err(|e| e.to_string())?;
    let subject = ingest.ctx.names.node_service(node, "logs");
    let m = tokio::time::timeout(
        Duration::from_millis(1500),
        ingest.ctx.client.request(subject, body.into()),
    )
    .await
    .map_err(|_| format!("node {node} did not answer"))?
    .map_err(|e| format!("node {node}: {e}"))?;
    let r: LogsReply = serde_json::from_slice(&m.payload).map_err(|e| format!("node {node}: {e}"))?;
    match &r.error {
        Some(e) => Err(format!("node {node}: {e}")),
        None => Ok(r),
    }
}

/// One service on the scale page.
#[derive(Debug, Clone)]
pub struct Service {
    /// The name.
    pub name: String,
    /// Its declared spec (None: a state without spec, or an unreadable one).
    pub spec: Option<ScaleSpec>,
    /// The autoscaler's last recorded state.
    pub state: Option<ScaleState>,
    /// An active burst.
    pub burst: Option<Burst>,
    /// Why the spec could not be read.
    pub spec_error: Option<String>,
}

/// Every service in the scale bucket.
pub async fn services(ingest: &Ingest) -> Result<Vec<Service>, Problem> {
    let kv = &ingest.scale;
    let mut keys = kv.keys().await.map_err(unavailable)?;
    let mut names = std::collections::BTreeSet::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(unavailable)?;
        if let Some((kind, name)) = k.split_once('.')
            && matches!(kind, "spec" | "state" | "burst")
        {
            names.insert(name.to_string());
        }
    }
    let mut out = Vec::new();
    for name in names {
        let get = |key: String| async move { kv.get(key).await.ok().flatten() };
        let (spec_b, state_b, burst_b) = tokio::join!(
            get(jetrun_core::scale::spec_key(&name)),
            get(jetrun_core::scale::state_key(&name)),
            get(jetrun_core::scale::burst_key(&name)),
        );
        let (spec, spec_error) = match spec_b.map(|b| serde_json::from_slice::<ScaleSpec>(&b)) {
            Some(Ok(s)) => (Some(s), None),
            Some(Err(e)) => (None, Some(e.to_string())),
            None => (None, None),
        };
        out.push(Service {
            name,
            spec,
            state: state_b.and_then(|b| serde_json::from_slice(&b).ok()),
            burst: burst_b.and_then(|b| serde_json::from_slice(&b).ok()),
            spec_error,
        });
    }
    Ok(out)
}

/// A node of the live fleet (an entry of the nodes bucket).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Node {
    /// The node id.
    pub node_id: String,
    /// Its worker process.
    #[serde(default)]
    pub worker_id: String,
    /// Its runner.
    #[serde(default)]
    pub runner: String,
    /// Tasks it supervises.
    #[serde(default)]
    pub tasks: usize,
    /// Queues it dispatches.
    #[serde(default)]
    pub queues: Vec<String>,
    /// When the entry was written.
    pub updated_at: Option<Timestamp>,
    /// Jobs running there (operators only).
    #[serde(skip)]
    pub running: Vec<String>,
}

/// The live fleet; for operators, with the jobs each node runs.
pub async fn nodes(ingest: &Ingest, tenant: &str) -> Result<Vec<Node>, Problem> {
    let ctx = &ingest.ctx;
    let bucket = ctx.names.bucket_nodes();
    let kv = ctx.js.get_key_value(&bucket).await.map_err(unavailable)?;
    let stream = ctx
        .js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(unavailable)?;
    let prefix = format!("$KV.{bucket}.");
    let mut subjects = stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(unavailable)?;
    let mut keys = Vec::new();
    while let Some(s) = subjects.next().await {
        let (subject, _) = s.map_err(unavailable)?;
        if let Some(k) = subject.strip_prefix(&prefix)
            && !k.contains('.')
        {
            keys.push(k.to_string());
        }
    }
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        if let Ok(Some(b)) = kv.get(&k).await
            && let Ok(v) = serde_json::from_slice::<Value>(&b)
            && v.get("worker_id").is_some()
            && let Ok(n) = serde_json::from_value::<Node>(v)
        {
            out.push(n);
        }
    }
    if tenant == OPERATOR_TENANT && !out.is_empty() {
        for q in queue_names(ingest).await? {
            for st in [JobStatus::Launching, JobStatus::Running] {
                let recs = ctx
                    .store
                    .list(&q, Some(st), 200)
                    .await
                    .map_err(|e| unavailable(e.message))?;
                for r in recs {
                    if let Some(n) = out
                        .iter_mut()
                        .find(|n| Some(n.node_id.as_str()) == r.node_id.as_deref())
                        && !n.running.contains(&r.id)
                    {
                        n.running.push(r.id);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Dead letters, oldest first, after sequence `after`.
pub async fn dead_letters(
    ingest: &Ingest,
    after: u64,
    limit: usize,
) -> Result<Vec<jetrun_nats::dlq::Stored>, Problem> {
    jetrun_nats::dlq::list(&ingest.ctx.js, &ingest.ctx.names, after, limit)
        .await
        .map_err(unavailable)
}
