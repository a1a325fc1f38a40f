//! Queue depth, read from the JetStream API (the leader of the stream answers consumer
//! info, so it is never a follower's stale copy).
//!
//! - `pending` = the dispatch consumer's `num_pending` (not yet delivered);
//! - `in_flight` = the larger of its `num_ack_pending` and the queue's active jobs not
//!   counted in `pending`. Jobs admitted through the store are both in the index (as
//!   active) and in the stream until dispatched, so adding the two would count a job
//!   twice; the larger of the two counts each job once whether it was admitted first
//!   (`jetrun submit`, ingest) or published raw.
//!
//! If the queue has no dispatch consumer yet, the stream's message count on the queue's
//! subject stands in for `pending` (a work queue keeps a message until it is acked).

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use jetrun_core::Names;

/// What could not be observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObserveErrorKind {
    /// JetStream did not answer: skip this tick.
    Unavailable,
}

/// Observing a queue failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("observing queue {queue}: {message}")]
pub struct ObserveError {
    /// What kind of failure.
    pub kind: ObserveErrorKind,
    /// The queue.
    pub queue: String,
    /// Details.
    pub message: String,
}

/// The load of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Messages not yet delivered.
    pub pending: u64,
    /// Messages delivered and not acknowledged.
    pub ack_pending: u64,
    /// Jobs of the queue in the index's `active` group (queued, launching or running).
    pub active: u64,
}

impl Load {
    /// Work being done: see the module docs.
    pub fn in_flight(&self) -> u64 {
        self.ack_pending.max(self.active.saturating_sub(self.pending))
    }
}

/// Reads queue load.
#[derive(Debug, Clone)]
pub struct Observer {
    names: Names,
    jobs: stream::Stream,
    index: stream::Stream,
}

impl Observer {
    /// Opens the jobs stream and the job index's stream.
    pub async fn new(js: &jetstream::Context, names: &Names) -> Result<Self, ObserveError> {
        let err = |e: String| ObserveError {
            kind: ObserveErrorKind::Unavailable,
            queue: "*".into(),
            message: e,
        };
        let jobs = js
            .get_stream(names.stream_jobs())
            .await
            .map_err(|e| err(e.to_string()))?;
        let index = js
            .get_stream(format!("KV_{}", names.bucket_index()))
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            names: names.clone(),
            jobs,
            index,
        })
    }

    /// The load of `queue` now.
    pub async fn load(&self, queue: &str) -> Result<Load, ObserveError> {
        let err = |e: String| ObserveError {
            kind: ObserveErrorKind::Unavailable,
            queue: queue.into(),
            message: e,
        };
        let consumer = self.jobs.consumer_info(self.names.consumer_dispatch(queue));
        let active = self.count_subjects(
            &self.index,
            format!("$KV.{}.{queue}.active.*", self.names.bucket_index()),
        );
        let (consumer, active) = tokio::join!(consumer, active);
        let active = active.map_err(err)?;
        match consumer {
            Ok(info) => Ok(Load {
                pending: info.num_pending,
                ack_pending: info.num_ack_pending as u64,
                active,
            }),
            Err(e) if is_not_found(&e) => {
                let pending = self
                    .count_messages(&self.jobs, self.names.job_submit(queue))
                    .await
                    .map_err(err)?;
                Ok(Load {
                    pending,
                    ack_pending: 0,
                    active,
                })
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    async fn count_subjects(&self, s: &stream::Stream, filter: String) -> Result<u64, String> {
        let mut subjects = s.info_with_subjects(filter).await.map_err(|e| e.to_string())?;
        let mut n = 0u64;
        while let Some(x) = subjects.next().await {
            x.map_err(|e| e.to_string())?;
            n += 1;
        }
        Ok(n)
    }

    async fn count_messages(&self, s: &stream::Stream, filter: String) -> Result<u64, String> {
        let mut subjects = s.info_with_subjects(filter).await.map_err(|e| e.to_string())?;
        let mut n = 0u64;
        while let Some(x) = subjects.next().await {
            let (_, count) = x.map_err(|e| e.to_string())?;
            n += count as u64;
        }
        Ok(n)
    }
}

fn is_not_found(e: &jetstream::context::ConsumerInfoError) -> bool {
    e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound
}
