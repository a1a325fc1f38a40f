//! Which queues exist and whether anyone serves them, read from JetStream metadata alone
//! (no consumer is created, nothing is written).
//!
//! - [`pending_queues`]: the queues that have submissions waiting in the JOBS stream, so a
//!   worker started with `--queue '*'` (the default of `jetrun dev`) finds a new queue
//!   within one poll;
//! - [`serving`]: whether a worker pulls from a queue's dispatch consumer now, so `jetrun
//!   submit` and `POST /v1/jobs` can say at once that a job will wait.

use std::collections::BTreeSet;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use jetrun_core::Names;

/// Reading queue metadata failed.
#[derive(Debug, thiserror::Error)]
#[error("reading queue metadata of {what}: {source}")]
pub struct QueuesError {
    /// The stream or consumer read.
    pub what: String,
    /// The JetStream error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl QueuesError {
    fn new(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// The queues with at least one submission stored in the JOBS stream (pending or in
/// flight), from the stream's per-subject counts.
pub async fn pending_queues(js: &jetstream::Context, names: &Names) -> Result<Vec<String>, QueuesError> {
    let stream_name = names.stream_jobs();
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| QueuesError::new(&stream_name, e))?;
    let prefix = format!("{}.job.submit.", names.prefix());
    let mut subjects = stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(|e| QueuesError::new(&stream_name, e))?;
    let mut queues = BTreeSet::new();
    while let Some(s) = subjects.next().await {
        let (subject, _) = s.map_err(|e| QueuesError::new(&stream_name, e))?;
        if let Some(q) = subject.strip_prefix(&prefix)
            && jetrun_core::names::validate_token(q).is_ok()
        {
            queues.insert(q.to_string());
        }
    }
    Ok(queues.into_iter().collect())
}

/// Whether a queue is served right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Serving {
    /// A worker has a pull request waiting on the queue's dispatch consumer.
    Served,
    /// The queue has no dispatch consumer, or nobody pulls from it: its jobs wait until a
    /// worker serves it (`jetrun worker --queue Q`, or the autoscaler starts one).
    NotServed,
}

impl Serving {
    /// Whether the queue is served.
    pub fn is_served(self) -> bool {
        self == Serving::Served
    }
}

/// Whether a worker serves `queue` now: a worker pulls from the queue's consumer (workers
/// keep one pull request open at all times, renewed every 30 s, so `num_waiting > 0`
/// means a live worker pulled within that window), or a live node advertises the queue
/// or `*` in its heartbeat in the nodes bucket (a worker serving every queue makes a
/// queue's consumer only when its first job arrives).
pub async fn serving(js: &jetstream::Context, names: &Names, queue: &str) -> Result<Serving, QueuesError> {
    if pulling(js, names, queue).await? {
        return Ok(Serving::Served);
    }
    // The nodes' keys from the bucket stream's subjects (stream metadata, no consumer:
    // least-privilege users may not create one), then one direct get each.
    let bucket = names.bucket_nodes();
    let stream_name = format!("KV_{bucket}");
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| QueuesError::new(&stream_name, e))?;
    let mut subjects = stream
        .info_with_subjects(format!("$KV.{bucket}.>"))
        .await
        .map_err(|e| QueuesError::new(&stream_name, e))?;
    let mut keys = Vec::new();
    while let Some(s) = subjects.next().await {
        let (subject, _) = s.map_err(|e| QueuesError::new(&stream_name, e))?;
        keys.push(subject);
    }
    for subject in keys {
        let Ok(m) = stream.direct_get_last_for_subject(&subject).await else {
            continue;
        };
        if let Ok(node) = serde_json::from_slice::<serde_json::Value>(&m.payload)
            && node["queues"]
                .as_array()
                .is_some_and(|qs| qs.iter().any(|q| q == "*" || q == queue))
        {
            return Ok(Serving::Served);
        }
    }
    Ok(Serving::NotServed)
}

async fn pulling(js: &jetstream::Context, names: &Names, queue: &str) -> Result<bool, QueuesError> {
    let stream_name = names.stream_jobs();
    let consumer_name = names.consumer_dispatch(queue);
    let consumer: Result<PullConsumer, _> = js.get_consumer_from_stream(&consumer_name, &stream_name).await;
    let mut consumer = match consumer {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                jetstream::stream::ConsumerErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
            ) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(QueuesError::new(&consumer_name, e)),
    };
    let info = consumer
        .info()
        .await
        .map_err(|e| QueuesError::new(&consumer_name, e))?;
    Ok(info.num_waiting > 0)
}
