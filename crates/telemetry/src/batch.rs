//! The batch span processor for OTLP/HTTP protobuf: a span is encoded by the thread that
//! ends it, and only its bytes wait for export.
//!
//! The SDK's `BatchSpanProcessor` sends each `SpanData` (a dozen heap allocations: the
//! name, the attributes and their strings) through a channel to its export thread, which
//! encodes it there and frees it, so every span's memory crosses cores and is freed by a
//! thread that did not allocate it. Here `on_end` encodes the span into the open batch
//! while its data is still in the ending thread's cache and frees it where it was made;
//! the export thread only takes whole batches and posts them (decision 52).
//!
//! Behaviour follows the SDK's processor and its `OTEL_BSP_*` settings
//! ([`BatchSettings`]): a batch is exported when it holds `max_export_batch_size` spans or
//! its first span has waited `schedule_delay`; with `max_queue_size` spans waiting, new
//! ones are dropped, counted and reported in the log; `force_flush` exports everything
//! ended before it and waits; `shutdown` does that once and stops the thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};

use crate::config::BatchSettings;
use crate::otlp::{self, ProtoExporter};

/// Encoded spans, grouped by scope (in practice one, "jetrun").
#[derive(Debug, Default)]
struct Batch {
    scopes: Vec<(InstrumentationScope, Vec<u8>)>,
    spans: usize,
    /// When its first span was added.
    since: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    /// Batches that reached `max_export_batch_size`, oldest first.
    full: VecDeque<Batch>,
    /// The batch spans are added to.
    open: Batch,
    /// Spans in `full` and `open`.
    waiting: usize,
    /// Spans refused because `max_queue_size` were waiting.
    dropped: u64,
    /// Flush rounds asked for, and the last one the export thread has finished.
    flush_asked: u64,
    flushed: u64,
    /// Shutdown asked for; the export thread has finished.
    stopping: bool,
    stopped: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the export thread: a batch is full, or a flush or the shutdown is asked for.
    work: Condvar,
    /// Wakes those waiting for a flush round or the shutdown.
    done: Condvar,
    settings: BatchSettings,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters and buffers behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The processor ([module docs](self)).
#[derive(Debug)]
pub(crate) struct EncodingBatcher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// How long `force_flush` and `shutdown` wait for the export thread at most.
    wait_limit: Duration,
}

thread_local! {
    /// Where a span is encoded before it is copied into the batch under the lock.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(2048));
}

impl EncodingBatcher {
    /// Starts the export thread posting through `exporter` with `resource` on every
    /// request. `timeout` is the exporter's own (a flush waits a little longer).
    pub(crate) fn new(
        mut exporter: ProtoExporter,
        resource: &Resource,
        settings: BatchSettings,
        timeout: Duration,
    ) -> Result<Self, String> {
        exporter.set_resource(resource);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            settings,
        });
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("jetrun-otlp-export".into())
            .spawn(move || export_loop(&theirs, exporter))
            .map_err(|e| format!("cannot start the export thread: {e}"))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
            wait_limit: timeout + Duration::from_secs(1),
        })
    }

    /// Encodes `span` in `b` and adds it to the open batch (or drops it, queue full).
    fn add(&self, b: &mut Vec<u8>, span: &SpanData) {
        let s = &self.shared.settings;
        b.clear();
        otlp::encode_span(b, span);
        let mut st = self.shared.lock();
        if st.stopping {
            return;
        }
        if st.waiting >= s.max_queue_size {
            st.dropped += 1;
            return;
        }
        st.waiting += 1;
        let open = &mut st.open;
        open.since.get_or_insert_with(Instant::now);
        open.spans += 1;
        let room = b.len() * s.max_export_batch_size.min(1024);
        otlp::scope_buffer(&mut open.scopes, &span.instrumentation_scope, room).extend_from_slice(b);
        if open.spans >= s.max_export_batch_size {
            let full = std::mem::take(&mut st.open);
            st.full.push_back(full);
            self.shared.work.notify_one();
        }
    }

    /// Waits (at most `limit`) until `ready` holds for the state.
    fn wait_for(&self, limit: Duration, ready: impl Fn(&State) -> bool) -> OTelSdkResult {
        let deadline = Instant::now() + limit;
        let mut st = self.shared.lock();
        while !ready(&st) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(OTelSdkError::Timeout(limit));
            };
            st = self
                .shared
                .done
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }
}

impl SpanProcessor for EncodingBatcher {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let add = |b: &mut Vec<u8>| self.add(b, &span);
        // The thread's scratch buffer; a fresh one if it is in use or gone (a span ended
        // while the thread's locals are being destroyed).
        let done = SCRATCH
            .try_with(|c| c.try_borrow_mut().map(|mut b| add(&mut b)).is_ok())
            .unwrap_or(false);
        if !done {
            add(&mut Vec::new());
        }
        // `span` is freed here, by the thread that allocated it.
    }

    fn force_flush(&self) -> OTelSdkResult {
        let target = {
            let mut st = self.shared.lock();
            if st.stopped {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            st.flush_asked += 1;
            st.flush_asked
        };
        self.shared.work.notify_one();
        self.wait_for(self.wait_limit, |st| st.flushed >= target || st.stopped)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        {
            let mut st = self.shared.lock();
            if st.stopping {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            st.stopping = true;
        }
        self.shared.work.notify_one();
        self.wait_for(timeout.max(self.wait_limit), |st| st.stopped)?;
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        Ok(())
    }
}

impl Drop for EncodingBatcher {
    fn drop(&mut self) {
        // Not shut down (a test's processor): let the thread end without waiting for it.
        self.shared.lock().stopping = true;
        self.shared.work.notify_one();
    }
}

/// The export thread: waits for a full batch, a due one, a flush or the shutdown, takes
/// what is to be sent and posts it outside the lock.
fn export_loop(shared: &Shared, exporter: ProtoExporter) {
    let delay = shared.settings.schedule_delay;
    let mut reported = 0u64;
    loop {
        let mut st = shared.lock();
        let due = |st: &State| st.open.since.is_some_and(|t| t.elapsed() >= delay);
        while !(st.stopping || st.flush_asked > st.flushed || !st.full.is_empty() || due(&st)) {
            let wait = match st.open.since {
                Some(t) => delay.saturating_sub(t.elapsed()),
                // Nothing waiting: a span's arrival does not wake this thread (that would
                // cost every span a wake-up), so look again after one delay.
                None => delay,
            };
            st = shared
                .work
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let (round, stopping) = (st.flush_asked, st.stopping);
        let mut batches: Vec<Batch> = st.full.drain(..).collect();
        if (stopping || round > st.flushed || due(&st)) && st.open.spans > 0 {
            batches.push(std::mem::take(&mut st.open));
        }
        st.waiting -= batches.iter().map(|b| b.spans).sum::<usize>();
        let dropped = st.dropped;
        drop(st);
        if dropped > reported {
            tracing::warn!(
                dropped = dropped - reported,
                max_queue_size = shared.settings.max_queue_size,
                "span export queue full: spans dropped (OTEL_BSP_MAX_QUEUE_SIZE)"
            );
            reported = dropped;
        }
        for b in &batches {
            if let Err(e) = exporter.export_encoded(&b.scopes) {
                tracing::warn!(error = %e, spans = b.spans, "span export failed; the batch is dropped");
            }
        }
        drop(batches);
        let mut st = shared.lock();
        st.flushed = st.flushed.max(round);
        if stopping {
            st.stopped = true;
        }
        drop(st);
        shared.done.notify_all();
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use opentelemetry::KeyValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    use super::*;
    use crate::otlp::tests::{receiver, sample};

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_service_name("batch-test")
            .with_attribute(KeyValue::new("deployment.environment", "test"))
            .build()
    }

    fn batcher_with(url: String, settings: BatchSettings, resource: &Resource) -> EncodingBatcher {
        let exporter = ProtoExporter::new(url, &[], Duration::from_secs(5)).unwrap();
        EncodingBatcher::new(exporter, resource, settings, Duration::from_secs(5)).unwrap()
    }

    fn batcher(url: String, settings: BatchSettings) -> EncodingBatcher {
        batcher_with(url, settings, &resource())
    }

    /// Waits (at most 10 s) until `seen` holds `n` requests.
    fn wait_for_requests(seen: &crate::otlp::tests::Seen, n: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn decoded(body: &[u8]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(body).unwrap()
    }

    fn names(req: &ExportTraceServiceRequest) -> Vec<String> {
        req.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.clone())
            .collect()
    }

    #[test]
    fn a_flush_posts_every_ended_span_as_the_encoder_encodes_them_together() {
        let (url, seen) = receiver(vec![]);
        // One resource for both encodings: its attributes iterate in a per-instance order.
        let resource = resource();
        let b = batcher_with(url, BatchSettings::default(), &resource);
        let scope = InstrumentationScope::builder("jetrun").build();
        let spans: Vec<SpanData> = (0..3).map(|i| sample(i, &scope)).collect();
        for s in spans.clone() {
            b.on_end(s);
        }
        assert!(
            seen.lock().unwrap().is_empty(),
            "not yet: the batch is neither full nor due"
        );
        b.force_flush().unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one request");
        // Byte for byte what encoding the batch in one pass gives (itself checked against
        // opentelemetry-proto's conversion in crate::otlp).
        let mut whole = Vec::new();
        otlp::encode_request(&otlp::encode_resource(&resource), "", &spans, &mut whole);
        assert_eq!(seen[0].1, whole);
        let req = decoded(&seen[0].1);
        assert_eq!(names(&req).len(), 3);
        let service = req.resource_spans[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .any(|kv| kv.key == "service.name" && format!("{:?}", kv.value).contains("batch-test"));
        assert!(service, "the resource is on the request");
    }

    #[test]
    fn a_full_batch_goes_at_once_and_no_request_holds_more_than_the_batch_size() {
        let (url, seen) = receiver(vec![]);
        let settings = BatchSettings {
            schedule_delay: Duration::from_secs(3600),
            max_queue_size: 100,
            max_export_batch_size: 4,
        };
        let b = batcher(url, settings);
        let scope = InstrumentationScope::builder("jetrun").build();
        for i in 0..9 {
            b.on_end(sample(i, &scope));
        }
        // Two full batches are exported without a flush (the schedule delay is an hour).
        wait_for_requests(&seen, 2, "full batches not exported");
        b.force_flush().unwrap();
        let seen = seen.lock().unwrap();
        let sizes: Vec<usize> = seen.iter().map(|(_, body)| names(&decoded(body)).len()).collect();
        assert_eq!(sizes, vec![4, 4, 1]);
    }

    #[test]
    fn a_batch_is_sent_when_its_first_span_has_waited_the_schedule_delay() {
        let (url, seen) = receiver(vec![]);
        let settings = BatchSettings {
            schedule_delay: Duration::from_millis(100),
            ..BatchSettings::default()
        };
        let b = batcher(url, settings);
        let scope = InstrumentationScope::builder("jetrun").build();
        let t = Instant::now();
        b.on_end(sample(1, &scope));
        wait_for_requests(&seen, 1, "a due batch was not exported");
        assert!(t.elapsed() >= Duration::from_millis(100), "not before the delay");
    }

    #[test]
    fn past_the_queue_size_spans_are_dropped_and_shutdown_sends_the_rest_once() {
        let (url, seen) = receiver(vec![]);
        // A batch that never fills and a delay of an hour: nothing leaves before shutdown.
        let settings = BatchSettings {
            schedule_delay: Duration::from_secs(3600),
            max_queue_size: 5,
            max_export_batch_size: 10,
        };
        let b = batcher(url, settings);
        let scope = InstrumentationScope::builder("jetrun").build();
        for i in 0..8 {
            b.on_end(sample(i, &scope));
        }
        assert_eq!(
            b.shared.lock().dropped,
            3,
            "with 5 waiting, the next 3 are dropped"
        );
        assert!(seen.lock().unwrap().is_empty());
        b.shutdown().unwrap();
        assert!(matches!(b.shutdown(), Err(OTelSdkError::AlreadyShutdown)));
        assert!(matches!(b.force_flush(), Err(OTelSdkError::AlreadyShutdown)));
        b.on_end(sample(9, &scope));
        let seen = seen.lock().unwrap();
        let sent: Vec<usize> = seen.iter().map(|(_, body)| names(&decoded(body)).len()).collect();
        assert_eq!(sent, vec![5], "the waiting five, in one request, once");
    }
}
