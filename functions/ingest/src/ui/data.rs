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

fn unavailable(e: impl std::fmt::Display) -> Problem {
    Problem::unavailable(e.to_string())
}

/// Whether `tenant` may see `rec` (the same rule as the API).
pub fn may_see(tenant: &str, rec: &JobRecord) -> bool {
    tenant == OPERATOR_TENANT || rec.spec.tenant.as_deref() == Some(tenant)
}

/// Most records a job listing reads to fill its page: the index knows queues and
/// statuses, not tenants, and a non-terminal status is in the record only, so a page
/// may have to read past entries it does not show.
pub const SCAN: usize = 500;

/// Most active records the nodes page reads to find the jobs each node runs.
pub const NODE_SCAN: usize = 1000;

/// Records read at once.
const READ_AHEAD: usize = 64;

/// One entry of the index bucket, `<queue>.<group>.<id>`: the group is `active` while
/// the job is not terminal, then its terminal status (decision 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The queue.
    pub queue: String,
    /// `active` or a terminal status.
    pub group: String,
    /// The job id (a uuid v7 sorts by creation time).
    pub id: String,
}

/// The index's entries, read once per page (the subjects of its stream: metadata, no
/// record).
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// Every entry, in no particular order.
    pub entries: Vec<Entry>,
}

#[derive(Serialize)]
struct InfoRequest<'a> {
    subjects_filter: &'a str,
    offset: usize,
}

#[derive(Deserialize)]
struct InfoPage {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    state: InfoState,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize, Default)]
struct InfoState {
    #[serde(default)]
    subjects: Option<SubjectKeys>,
}

/// The keys of a stream info's `subjects` map; the counts are skipped.
#[derive(Debug, Default)]
struct SubjectKeys(Vec<String>);

impl<'de> Deserialize<'de> for SubjectKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = SubjectKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of subjects to counts")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<SubjectKeys, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some((k, serde::de::IgnoredAny)) =
                    m.next_entry::<String, serde::de::IgnoredAny>()?
                {
                    out.push(k);
                }
                Ok(SubjectKeys(out))
            }
        }
        d.deserialize_map(Keys)
    }
}

/// The subjects of `stream` matching `filter`: `STREAM.INFO` with a subjects filter,
/// one request per page of the server's (100,000 subjects), decoded into the subjects
/// alone. (async-nats' `info_with_subjects` decodes the whole info into a map, copies
/// it, and asks once more after the last page: that doubled a page's listing time.)
pub async fn subjects(ingest: &Ingest, stream: &str, filter: &str) -> Result<Vec<String>, Problem> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let req = InfoRequest {
            subjects_filter: filter,
            offset: out.len(),
        };
        let page: InfoPage = ingest
            .ctx
            .js
            .request(format!("STREAM.INFO.{stream}"), &req)
            .await
            .map_err(unavailable)?;
        if let Some(e) = page.error {
            return Err(unavailable(format!("stream {stream}: {e}")));
        }
        let got = page.state.subjects.map(|s| s.0).unwrap_or_default();
        let n = got.len();
        out.extend(got);
        if n == 0 || out.len() >= page.total {
            return Ok(out);
        }
    }
}

impl Index {
    /// Reads every entry of the index.
    pub async fn read(ingest: &Ingest) -> Result<Index, Problem> {
        let bucket = ingest.ctx.names.bucket_index();
        let prefix = format!("$KV.{bucket}.");
        let subjects = subjects(ingest, &format!("KV_{bucket}"), &format!("{prefix}>")).await?;
        let entries = subjects
            .iter()
            .filter_map(|s| {
                let mut parts = s.strip_prefix(&prefix)?.splitn(3, '.');
                Some(Entry {
                    queue: parts.next()?.to_string(),
                    group: parts.next()?.to_string(),
                    id: parts.next()?.to_string(),
                })
            })
            .collect();
        Ok(Index { entries })
    }

    /// The queues that have jobs, sorted.
    pub fn queues(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&str> = self.entries.iter().map(|e| e.queue.as_str()).collect();
        set.into_iter().map(str::to_string).collect()
    }
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

/// Every queue's figures, from the index's entries and the dispatch consumers; a few
/// record reads per queue (at once) for the oldest queued job.
pub async fn queues(ingest: &Ingest) -> Result<Vec<QueueRow>, Problem> {
    let ctx = &ingest.ctx;
    let (index, jobs_stream) = tokio::join!(Index::read(ingest), ctx.js.get_stream(ctx.names.stream_jobs()));
    let (index, jobs_stream) = (index?, jobs_stream.map_err(unavailable)?);
    let mut rows: BTreeMap<String, (QueueRow, Vec<String>)> = BTreeMap::new();
    for e in index.entries {
        let (row, active) = rows.entry(e.queue.clone()).or_insert_with(|| {
            (
                QueueRow {
                    queue: e.queue.clone(),
                    ..Default::default()
                },
                Vec::new(),
            )
        });
        match e.group.as_str() {
            "active" => {
                row.active += 1;
                active.push(e.id);
            }
            "succeeded" => row.succeeded += 1,
            "failed" | "timed_out" => row.failed += 1,
            "cancelled" => row.cancelled += 1,
            _ => {}
        }
    }
    let jobs_stream = &jobs_stream;
    let rows = futures::future::join_all(rows.into_values().map(|(mut row, mut active)| async move {
        let pending = jobs_stream.consumer_info(ctx.names.consumer_dispatch(&row.queue));
        // uuid v7 ids sort by creation time: the first queued one is the oldest.
        active.sort_unstable();
        let oldest = futures::stream::iter(active.into_iter().take(16))
            .map(|id| async move { ctx.store.get(&id).await })
            .buffered(16)
            .filter_map(|r| async move {
                match r {
                    Ok(Some((rec, _))) if rec.status == JobStatus::Queued => Some(rec.created_at),
                    _ => None,
                }
            });
        futures::pin_mut!(oldest);
        let (pending, oldest) = tokio::join!(pending, oldest.next());
        row.pending = match pending {
            Ok(info) => info.num_pending.min(row.active),
            Err(_) => row.active,
        };
        row.running = row.active - row.pending;
        row.oldest_queued = oldest;
        row
    }))
    .await;
    Ok(rows)
}

/// A page of the jobs list.
#[derive(Debug, Clone, Default)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobRecord>,
    /// Whether the listing stopped at its bound (there may be more).
    pub truncated: bool,
}

/// Jobs of `queue` (else of every queue) with `status`, newest first, that `tenant`
/// may see, from `index`.
///
/// The entries that can match (the queue's, and for a terminal status that status's
/// group, for another status the active group) are sorted newest first across queues
/// and groups, and records are read [`READ_AHEAD`] at a time only until `limit + 1`
/// shown ones are found, at most [`SCAN`]: an operator's page reads about `limit + 1`
/// records, a tenant's as many as it takes to find its own. (The store's
/// `JobStore::list`, one listing per queue and group and `limit + 1` records per
/// queue, plus another listing for the filter's queue names, was 70–300 ms at p90.)
pub async fn jobs(
    ingest: &Ingest,
    index: &Index,
    tenant: &str,
    queue: Option<&str>,
    status: Option<JobStatus>,
    limit: usize,
) -> Result<JobList, Problem> {
    let mut entries: Vec<&Entry> = index
        .entries
        .iter()
        .filter(|e| {
            queue.is_none_or(|q| q == e.queue)
                && match status {
                    Some(s) if s.is_terminal() => e.group == s.as_str(),
                    Some(_) => e.group == "active",
                    None => true,
                }
        })
        .collect();
    entries.sort_unstable_by(|a, b| b.id.cmp(&a.id));
    let total = entries.len();
    let store = &ingest.ctx.store;
    // Owned ids: a stream of futures borrowing the entries would not be `Send`.
    let page: Vec<(String, String)> = entries
        .into_iter()
        .take(SCAN)
        .map(|e| (e.id.clone(), e.queue.clone()))
        .collect();
    let reads = futures::stream::iter(page)
        .map(|(id, q)| async move { (q, store.get(&id).await) })
        .buffered(READ_AHEAD);
    futures::pin_mut!(reads);
    let (mut found, mut scanned) = (Vec::<JobRecord>::new(), 0usize);
    let mut seen = std::collections::HashSet::new();
    while let Some((q, r)) = reads.next().await {
        scanned += 1;
        match r {
            // An entry whose record moved on (or is gone) since the index was read: the
            // record decides, as in `JobStore::list`; a record listed under a stale entry
            // and its fresh one is shown once.
            Ok(Some((rec, _)))
                if may_see(tenant, &rec)
                    && rec.queue == q
                    && status.is_none_or(|s| s == rec.status)
                    && seen.insert(rec.id.clone()) =>
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
    let truncated = found.len() > limit || (scanned >= SCAN && total > scanned);
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
    // Every service's three keys at once.
    let out = futures::future::join_all(names.into_iter().map(|name| async move {
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
        Service {
            name,
            spec,
            state: state_b.and_then(|b| serde_json::from_slice(&b).ok()),
            burst: burst_b.and_then(|b| serde_json::from_slice(&b).ok()),
            spec_error,
        }
    }))
    .await;
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
///
/// The jobs are found in the active entries of the index, read oldest first (jobs
/// are dispatched in the order they came, so the running ones are mostly the oldest
/// active ones) until as many launching or running jobs as the nodes report tasks are
/// found, at most [`NODE_SCAN`] records.
pub async fn nodes(ingest: &Ingest, tenant: &str) -> Result<Vec<Node>, Problem> {
    let ctx = &ingest.ctx;
    let bucket = ctx.names.bucket_nodes();
    let prefix = format!("$KV.{bucket}.");
    let operator = tenant == OPERATOR_TENANT;
    let (stream, filter) = (format!("KV_{bucket}"), format!("{prefix}>"));
    let (kv, keys, index) = tokio::join!(
        ctx.js.get_key_value(&bucket),
        subjects(ingest, &stream, &filter),
        async {
            if operator {
                Index::read(ingest).await.map(Some)
            } else {
                Ok(None)
            }
        }
    );
    let (kv, keys, index) = (kv.map_err(unavailable)?, keys?, index?);
    let mut keys: Vec<&str> = keys
        .iter()
        .filter_map(|s| s.strip_prefix(&prefix))
        .filter(|k| !k.contains('.'))
        .collect();
    keys.sort_unstable();
    let kv = &kv;
    let mut out: Vec<Node> = futures::future::join_all(keys.into_iter().map(|k| async move {
        let b = kv.get(k).await.ok().flatten()?;
        let v = serde_json::from_slice::<Value>(&b).ok()?;
        v.get("worker_id")?;
        serde_json::from_value::<Node>(v).ok()
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    let Some(index) = index.filter(|_| !out.is_empty()) else {
        return Ok(out);
    };
    let mut active: Vec<&Entry> = index.entries.iter().filter(|e| e.group == "active").collect();
    active.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let tasks: usize = out.iter().map(|n| n.tasks).sum();
    let store = &ctx.store;
    let ids: Vec<String> = active.into_iter().take(NODE_SCAN).map(|e| e.id.clone()).collect();
    let reads = futures::stream::iter(ids)
        .map(|id| async move { store.get(&id).await })
        .buffered(READ_AHEAD);
    futures::pin_mut!(reads);
    let mut found = 0usize;
    while found < tasks
        && let Some(r) = reads.next().await
    {
        let Some((rec, _)) = r.map_err(|e| unavailable(e.message))? else {
            continue;
        };
        if !matches!(rec.status, JobStatus::Launching | JobStatus::Running) {
            continue;
        }
        if let Some(n) = out
            .iter_mut()
            .find(|n| Some(n.node_id.as_str()) == rec.node_id.as_deref())
            && !n.running.contains(&rec.id)
        {
            n.running.push(rec.id);
            found += 1;
        }
    }
    Ok(out)
}

/// Dead letters, oldest first, after sequence `after`: one batched direct get
/// (nats-server 2.11+), else one direct get per entry (`jetrun_nats::dlq::list`).
pub async fn dead_letters(
    ingest: &Ingest,
    after: u64,
    limit: usize,
) -> Result<Vec<jetrun_nats::dlq::Stored>, Problem> {
    match dead_letters_batched(ingest, after, limit).await? {
        Some(items) => Ok(items),
        None => jetrun_nats::dlq::list(&ingest.ctx.js, &ingest.ctx.names, after, limit)
            .await
            .map_err(unavailable),
    }
}

/// `None` when the server does not batch (it answered with one plain message).
async fn dead_letters_batched(
    ingest: &Ingest,
    after: u64,
    limit: usize,
) -> Result<Option<Vec<jetrun_nats::dlq::Stored>>, Problem> {
    let ctx = &ingest.ctx;
    let mut out = Vec::new();
    let mut next = after + 1;
    // The server may end a batch early (its byte bound): ask again after the last one.
    while out.len() < limit {
        let inbox = ctx.client.new_inbox();
        let mut replies = ctx.client.subscribe(inbox.clone()).await.map_err(unavailable)?;
        let req = serde_json::json!({
            "seq": next,
            "next_by_subj": ctx.names.dlq_all(),
            "batch": limit - out.len(),
        });
        let body = serde_json::to_vec(&req).map_err(unavailable)?;
        ctx.js
            .send_request(
                format!("DIRECT.GET.{}", ctx.names.stream_dlq()),
                async_nats::Request::new().payload(body.into()).inbox(inbox),
            )
            .await
            .map_err(unavailable)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let (mut got, mut more) = (0usize, false);
        loop {
            let m = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => {
                    return Err(unavailable("the dead-letter stream did not answer in time"));
                }
            };
            match m.status {
                // The end of the batch, or nothing (more) to read.
                Some(s) if s == 204 || s == 404 => break,
                Some(s) => {
                    return Err(unavailable(format!(
                        "dead-letter stream: {s} {:?}",
                        m.description
                    )));
                }
                None => {}
            }
            let header = |k: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(k))
                    .map(|v| v.as_str().to_string())
            };
            let Some(pending) = header("Nats-Num-Pending") else {
                // Not a batch reply: this server does not batch.
                return Ok(None);
            };
            let seq: u64 = header("Nats-Sequence")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| unavailable("a dead letter without its sequence"))?;
            let entry = serde_json::from_slice(&m.payload)
                .map_err(|e| unavailable(format!("dead letter {seq} is corrupt: {e}")))?;
            out.push(jetrun_nats::dlq::Stored { seq, entry });
            next = seq + 1;
            got += 1;
            more = pending.parse::<u64>().is_ok_and(|p| p > 0);
            if out.len() >= limit {
                break;
            }
        }
        if got == 0 || !more {
            break;
        }
    }
    Ok(Some(out))
}
