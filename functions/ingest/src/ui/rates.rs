//! Per-queue job rates over the last minute (submitted/s and finished/s), for the queues
//! page, counted from the state-change stream.
//!
//! One ordered consumer per ingest process reads `<prefix>.job.event.>` from a minute
//! ago on, started by the first queues page: an admission (`from` absent) counts as a
//! submission, a change into a terminal status as a finish, each in the second of the
//! event's own time. Memory is bounded: 60 one-second buckets per queue, at most
//! [`MAX_QUEUES`] queues.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use jetrun_nats::store::StateChange;
use rand::RngCore;
use tracing::{debug, info};

use crate::Ingest;

/// The window, in seconds.
pub const WINDOW: i64 = 60;
/// Most queues counted (one more and the counts start over).
pub const MAX_QUEUES: usize = 1024;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: i64,
    submitted: u32,
    finished: u32,
}

/// One queue's rates.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    /// Jobs submitted in the window.
    pub submitted: u32,
    /// Jobs that reached a terminal status in the window.
    pub finished: u32,
}

impl Rate {
    /// Submitted per second.
    pub fn submitted_per_s(&self) -> f64 {
        f64::from(self.submitted) / WINDOW as f64
    }
    /// Finished per second.
    pub fn finished_per_s(&self) -> f64 {
        f64::from(self.finished) / WINDOW as f64
    }
}

#[derive(Debug, Default)]
struct State {
    queues: HashMap<String, [Bucket; WINDOW as usize]>,
    /// The backlog of the last minute has been read.
    ready: bool,
    /// The last stream sequence counted (a restarted consumer goes on after it).
    last_seq: u64,
}

/// The counters, and whether the reader runs.
#[derive(Debug, Default)]
pub struct Rates {
    state: Mutex<State>,
    started: std::sync::atomic::AtomicBool,
}

impl Rates {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Counters: a panic cannot leave them worse than a miscount.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one change at its stream sequence.
    fn count(&self, seq: u64, change: &StateChange) {
        let submitted = change.from.is_none();
        let finished = change.to.is_terminal();
        let mut st = self.lock();
        if seq <= st.last_seq {
            return;
        }
        st.last_seq = seq;
        if !submitted && !finished {
            return;
        }
        if !st.queues.contains_key(&change.queue) && st.queues.len() >= MAX_QUEUES {
            st.queues.clear();
        }
        let second = change.at.timestamp();
        let buckets = st
            .queues
            .entry(change.queue.clone())
            .or_insert([Bucket::default(); WINDOW as usize]);
        let b = &mut buckets[second.rem_euclid(WINDOW) as usize];
        if b.second != second {
            *b = Bucket {
                second,
                ..Bucket::default()
            };
        }
        b.submitted += u32::from(submitted);
        b.finished += u32::from(finished);
    }

    /// The rates of every queue over the minute before `now` (unix seconds), or `None`
    /// while the last minute is still being read.
    pub fn snapshot(&self, now: i64) -> Option<HashMap<String, Rate>> {
        let st = self.lock();
        if !st.ready {
            return None;
        }
        let mut out = HashMap::new();
        for (q, buckets) in &st.queues {
            let mut r = Rate::default();
            for b in buckets
                .iter()
                .filter(|b| b.second > now - WINDOW && b.second <= now)
            {
                r.submitted += b.submitted;
                r.finished += b.finished;
            }
            out.insert(q.clone(), r);
        }
        Some(out)
    }

    /// Starts the reader once; the first call waits (at most 1 s) for the last minute
    /// to be read, so the first page already shows rates.
    pub async fn ensure_started(self: &Arc<Self>, ingest: &Ingest) {
        if self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        let js = ingest.ctx.js.clone();
        let stream = ingest.ctx.names.stream_job_events();
        let subject = ingest.ctx.names.job_event_all();
        tokio::spawn(read(weak, js, stream, subject));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while !self.lock().ready && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Reads the state changes into `rates` for as long as the counters exist.
async fn read(rates: Weak<Rates>, js: async_nats::jetstream::Context, stream: String, subject: String) {
    let mut first = true;
    loop {
        let Some(r) = rates.upgrade() else { return };
        let last = r.lock().last_seq;
        drop(r);
        let deliver_policy = if first {
            DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::now_utc() - time::Duration::seconds(WINDOW),
            }
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: last + 1,
            }
        };
        let mut tag = [0u8; 8];
        rand::rng().fill_bytes(&mut tag);
        let config = OrderedConfig {
            name: Some(format!("rates-{}", hex::encode(tag))),
            filter_subject: subject.clone(),
            deliver_policy,
            ..Default::default()
        };
        let consumer = match js.create_consumer_on_stream(config, &stream).await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "rates: cannot create the consumer; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        first = false;
        if consumer.cached_info().num_pending == 0
            && let Some(r) = rates.upgrade()
        {
            r.lock().ready = true;
        }
        let Ok(mut messages) = consumer.messages().await else {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        };
        info!("job rates: reading state changes");
        loop {
            // A quiet stream: wake up now and then to see whether the counters still exist.
            let m = match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
                Err(_) => {
                    if rates.strong_count() == 0 {
                        return;
                    }
                    continue;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    debug!(error = %e, "rates: read failed; reopening");
                    break;
                }
                Ok(Some(Ok(m))) => m,
            };
            let Some(r) = rates.upgrade() else { return };
            let Ok(info) = m.info() else { continue };
            let (seq, pending) = (info.stream_sequence, info.pending);
            if let Ok(change) = serde_json::from_slice::<StateChange>(&m.payload) {
                r.count(seq, &change);
            }
            if pending == 0 {
                r.lock().ready = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use jetrun_core::{JobRecord, JobSpec, JobStatus};

    fn change(queue: &str, from: Option<JobStatus>, to: JobStatus, at: i64) -> StateChange {
        let rec = JobRecord::new(
            "j".into(),
            JobSpec::new(queue, "busybox", vec!["true".into()]),
            None,
            None,
        );
        StateChange {
            job_id: "j".into(),
            queue: queue.into(),
            from,
            to,
            attempt: 1,
            exit_code: None,
            error: None,
            at: chrono::DateTime::from_timestamp(at, 0).unwrap(),
            record: rec,
        }
    }

    #[test]
    fn rates_count_the_last_minute_once_per_event() {
        let r = Rates::default();
        r.lock().ready = true;
        let now = 1_000_000;
        r.count(1, &change("a", None, JobStatus::Queued, now - 120));
        r.count(2, &change("a", None, JobStatus::Queued, now - 30));
        r.count(3, &change("a", None, JobStatus::Queued, now - 1));
        r.count(3, &change("a", None, JobStatus::Queued, now - 1));
        r.count(
            4,
            &change("a", Some(JobStatus::Queued), JobStatus::Launching, now),
        );
        r.count(
            5,
            &change("a", Some(JobStatus::Running), JobStatus::Succeeded, now),
        );
        r.count(
            6,
            &change("b", Some(JobStatus::Running), JobStatus::Failed, now - 59),
        );
        let s = r.snapshot(now).unwrap();
        assert_eq!(
            s["a"],
            Rate {
                submitted: 2,
                finished: 1
            },
            "the old one and the repeat are not counted"
        );
        assert_eq!(
            s["b"],
            Rate {
                submitted: 0,
                finished: 1
            }
        );
        assert!((s["a"].submitted_per_s() - 2.0 / 60.0).abs() < 1e-9);
        assert_eq!(
            r.snapshot(now + 60).unwrap()["a"],
            Rate::default(),
            "a minute later"
        );
    }
}
