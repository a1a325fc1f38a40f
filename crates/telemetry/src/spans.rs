//! jetrun's span layer: `tracing` spans to OpenTelemetry [`SpanData`], handed to a batch
//! processor ([`crate::batch`] for OTLP/HTTP protobuf, the SDK's for JSON) and from there
//! to the OTLP exporter.
//!
//! It replaces `tracing-opentelemetry` + the SDK tracer, which with every span sampled
//! were most of what export cost on the lifecycle benchmark (docs/benchmarks.md, "Cost of
//! observability"): a `SpanBuilder` and a parent `Context` per span, a sampling decision
//! and a fresh `Context` (an `Arc`) on every read of a span's context, and a second
//! conversion builder → SDK span → `SpanData` at the end. Here a span's ids and sampling
//! decision are made once, when it is created, and kept in the span's extensions with
//! its attributes; reading the context is a lookup; a span that is not sampled records
//! nothing; ending one moves its attributes into the `SpanData`.
//!
//! What it reads from a span, as `tracing-opentelemetry` does: `otel.name` (the span's
//! name), `otel.kind` (`server`, `client`, `producer`, `consumer`, `internal`); every
//! other field is an attribute (integers as `i64`, a `u64` above `i64::MAX` as a string).
//! A warning or error logged inside a sampled span becomes a span event, and an error
//! sets the span's status to `Error` with its message; `info` and below stay in the logs
//! (they carry the `trace_id`), not on every exported span.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, Key, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks, SpanProcessor};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::config::Sampler;

/// What a span carries from creation to its end (in its extensions).
#[derive(Debug)]
pub(crate) struct Rec {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    /// All zero for a root.
    parent_id: [u8; 8],
    parent_remote: bool,
    pub(crate) sampled: bool,
    pub(crate) trace_state: Option<String>,
    /// `None` when nothing needs recording: not sampled, and no link can change that.
    data: Option<Box<Data>>,
}

/// A sampled span's recorded parts.
#[derive(Debug)]
struct Data {
    name: Cow<'static, str>,
    kind: SpanKind,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    events: Vec<opentelemetry::trace::Event>,
    status: Status,
}

impl Data {
    /// A span named `name` starting now, with room for `fields` attributes.
    fn new(name: &'static str, fields: usize) -> Box<Self> {
        Box::new(Self {
            name: Cow::Borrowed(name),
            kind: SpanKind::Internal,
            start: SystemTime::now(),
            attributes: Vec::with_capacity(fields),
            events: Vec::new(),
            status: Status::Unset,
        })
    }
}

/// The layer (install it with a filter: it records what the filter lets through).
pub(crate) struct SpanLayer {
    sampler: Sampler,
    processor: Arc<dyn SpanProcessor>,
    scope: InstrumentationScope,
}

impl SpanLayer {
    pub(crate) fn new(sampler: Sampler, processor: Arc<dyn SpanProcessor>) -> Self {
        Self {
            sampler,
            processor,
            scope: InstrumentationScope::builder("jetrun").build(),
        }
    }
}

/// The SDK's `TraceIdRatioBased` decision over a trace id ([`crate::ratio_keeps`]).
fn by_ratio(trace_id: &[u8; 16], ratio: f64) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    crate::ratio_keeps(u64::from_be_bytes(low), ratio)
}

/// The sampling decision for a span of `trace_id`, given its parent's (`None`: a root),
/// as the SDK's samplers of the same names decide.
pub(crate) fn decide(sampler: Sampler, trace_id: &[u8; 16], parent_sampled: Option<bool>) -> bool {
    match (sampler, parent_sampled) {
        (Sampler::AlwaysOn, _) => true,
        (Sampler::AlwaysOff, _) => false,
        (Sampler::TraceIdRatio(r), _) => by_ratio(trace_id, r),
        (
            Sampler::ParentBasedAlwaysOn
            | Sampler::ParentBasedAlwaysOff
            | Sampler::ParentBasedTraceIdRatio(_),
            Some(p),
        ) => p,
        (Sampler::ParentBasedAlwaysOn, None) => true,
        (Sampler::ParentBasedAlwaysOff, None) => false,
        (Sampler::ParentBasedTraceIdRatio(r), None) => by_ratio(trace_id, r),
    }
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let mut b = [0u8; N];
        rng.fill(&mut b[..]);
        if b.iter().any(|&x| x != 0) {
            return b;
        }
    }
}

impl<S> Layer<S> for SpanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        // The nearest ancestor this layer records (a filtered-out parent is skipped).
        let parent = if let Some(p) = attrs.parent() {
            ctx.span_scope(p).and_then(|mut s| s.next())
        } else if attrs.is_contextual() {
            ctx.lookup_current()
        } else {
            None
        };
        let inherited = parent.and_then(|p| {
            p.extensions()
                .get::<Rec>()
                .map(|r| (r.trace_id, r.span_id, r.sampled, r.trace_state.clone()))
        });
        let (trace_id, parent_id, parent_sampled, trace_state) = match inherited {
            Some((t, s, sampled, ts)) => (t, s, Some(sampled), ts),
            None => (random_nonzero::<16>(), [0; 8], None, None),
        };
        let sampled = decide(self.sampler, &trace_id, parent_sampled);
        // A span not sampled now may be once it is linked to a remote parent ([`link`],
        // right after creation): a root, or any span under a sampler that does not follow
        // the parent. Those record their fields anyway (ended unsampled, they are dropped);
        // the children of an unsampled span under a parent-based sampler record nothing.
        let record = sampled
            || match self.sampler {
                Sampler::AlwaysOff => false,
                Sampler::ParentBasedAlwaysOn
                | Sampler::ParentBasedAlwaysOff
                | Sampler::ParentBasedTraceIdRatio(_) => parent_sampled.is_none(),
                Sampler::AlwaysOn | Sampler::TraceIdRatio(_) => true,
            };
        let data = record.then(|| {
            let meta = attrs.metadata();
            let mut d = Data::new(meta.name(), meta.fields().len());
            attrs.record(&mut Fields {
                data: &mut d,
                fresh: true,
            });
            d
        });
        span.extensions_mut().insert(Rec {
            trace_id,
            span_id: random_nonzero::<8>(),
            parent_id,
            parent_remote: false,
            sampled,
            trace_state,
            data,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(d) = ext.get_mut::<Rec>().and_then(|r| r.data.as_mut()) {
            values.record(&mut Fields {
                data: d,
                fresh: false,
            });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let Some(span) = ctx.event_span(event) else { return };
        let mut ext = span.extensions_mut();
        let Some(d) = ext.get_mut::<Rec>().and_then(|r| r.data.as_mut()) else {
            return;
        };
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let message = fields
            .message
            .unwrap_or_else(|| event.metadata().name().to_string());
        if level == Level::ERROR {
            d.status = Status::error(message.clone());
        }
        let mut attributes = fields.attributes;
        attributes.push(KeyValue::new("level", level.as_str()));
        d.events.push(opentelemetry::trace::Event::new(
            message,
            SystemTime::now(),
            attributes,
            0,
        ));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(rec) = span.extensions_mut().remove::<Rec>() else {
            return;
        };
        let Some(d) = rec.data.filter(|_| rec.sampled) else {
            return;
        };
        let mut events = SpanEvents::default();
        events.events = d.events;
        let state = rec
            .trace_state
            .as_deref()
            .and_then(|t| t.parse::<TraceState>().ok())
            .unwrap_or_default();
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(rec.trace_id),
                SpanId::from_bytes(rec.span_id),
                TraceFlags::SAMPLED,
                false,
                state,
            ),
            parent_span_id: SpanId::from_bytes(rec.parent_id),
            parent_span_is_remote: rec.parent_remote,
            span_kind: d.kind,
            name: d.name,
            start_time: d.start,
            end_time: SystemTime::now(),
            attributes: d.attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: d.status,
            instrumentation_scope: self.scope.clone(),
        });
    }
}

/// Makes `span` (just created) a child of the remote `parent` + `state`, re-deciding its
/// sampling with that parent. `false` when the span is not recorded by the layer.
pub(crate) fn link(
    span: &tracing::Span,
    sampler: Sampler,
    parent: &crate::TraceParent,
    state: Option<&str>,
) -> bool {
    let mut linked = false;
    with_rec(span, |rec| {
        rec.trace_id = parent.trace_id;
        rec.parent_id = parent.parent_id;
        rec.parent_remote = true;
        rec.trace_state = state.map(str::to_string);
        let sampled = decide(sampler, &parent.trace_id, Some(parent.flags & 1 == 1));
        rec.sampled = sampled;
        if sampled && rec.data.is_none() {
            // A child of an unsampled span, sampled as the remote parent's: from now on
            // (its creation fields were not recorded).
            rec.data = Some(Data::new(span.metadata().map_or("span", |m| m.name()), 0));
        }
        linked = true;
    });
    linked
}

/// The W3C context of `span`, when the layer records it.
pub(crate) fn context_of(span: &tracing::Span) -> Option<crate::TraceContext> {
    let mut out = None;
    with_rec(span, |rec| {
        let parent = crate::TraceParent {
            version: 0,
            trace_id: rec.trace_id,
            parent_id: rec.span_id,
            flags: u8::from(rec.sampled),
        };
        out = Some(crate::TraceContext::new(parent, rec.trace_state.clone()));
    });
    out
}

fn with_rec(span: &tracing::Span, f: impl FnOnce(&mut Rec)) {
    span.with_subscriber(|(id, dispatch)| {
        if let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>()
            && let Some(data) = registry.span(id)
            && let Some(rec) = data.extensions_mut().get_mut::<Rec>()
        {
            f(rec);
        }
    });
}

/// Records a span's fields into its [`Data`].
struct Fields<'a> {
    data: &'a mut Data,
    /// The span's creation fields: each field appears once (a span's field set has no
    /// duplicates), so there is nothing recorded yet to replace and no search to make.
    fresh: bool,
}

impl Fields<'_> {
    fn set(&mut self, field: &Field, value: Value) {
        let name = field.name();
        // The logs' copy of the span's own trace id: an exported span carries it already,
        // as its id (32 hex characters and one allocation fewer on every consumer span).
        if name == "trace_id" {
            return;
        }
        let attrs = &mut self.data.attributes;
        // A field recorded again replaces its value (`Span::record` after creation).
        if self.fresh {
            attrs.push(KeyValue::new(Key::from_static_str(name), value));
        } else if let Some(kv) = attrs.iter_mut().find(|kv| kv.key.as_str() == name) {
            kv.value = value;
        } else {
            attrs.push(KeyValue::new(Key::from_static_str(name), value));
        }
    }
}

fn kind_of(s: &str) -> Option<SpanKind> {
    Some(match s {
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        "internal" => SpanKind::Internal,
        _ => return None,
    })
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "otel.name" => self.data.name = Cow::Owned(value.to_string()),
            "otel.kind" => {
                if let Some(k) = kind_of(value) {
                    self.data.kind = k;
                }
            }
            _ => self.set(field, Value::String(StringValue::from(value.to_string()))),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let s = format!("{value:?}");
        match field.name() {
            "otel.name" | "otel.kind" => self.record_str(field, &s),
            _ => self.set(field, Value::String(StringValue::from(s))),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(v) => self.set(field, Value::I64(v)),
            Err(_) => self.set(field, Value::String(StringValue::from(value.to_string()))),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, Value::Bool(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, Value::F64(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field, Value::String(StringValue::from(value.to_string())));
    }
}

/// An event's fields: its `message`, and the rest as attributes.
#[derive(Default)]
struct EventFields {
    message: Option<String>,
    attributes: Vec<KeyValue>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_string());
        } else {
            self.attributes.push(KeyValue::new(
                Key::from_static_str(field.name()),
                value.to_string(),
            ));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attributes
            .push(KeyValue::new(Key::from_static_str(field.name()), value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attributes
            .push(KeyValue::new(Key::from_static_str(field.name()), value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.attributes
            .push(KeyValue::new(Key::from_static_str(field.name()), value));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry_sdk::error::OTelSdkResult;
    use tracing_subscriber::prelude::*;

    use super::*;

    /// Keeps what is exported.
    #[derive(Debug, Clone, Default)]
    struct Keep(Arc<Mutex<Vec<SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for Keep {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// Runs `f` under a registry with the layer (`sampler`), and returns what it exported.
    fn exported(sampler: Sampler, f: impl FnOnce()) -> Vec<SpanData> {
        let keep = Keep::default();
        let processor = Arc::new(opentelemetry_sdk::trace::BatchSpanProcessor::builder(keep.clone()).build());
        let subscriber = tracing_subscriber::registry().with(SpanLayer::new(sampler, processor.clone()));
        tracing::subscriber::with_default(subscriber, f);
        processor.force_flush().unwrap();
        keep.0.lock().unwrap().drain(..).collect()
    }

    #[test]
    fn spans_become_one_tree_with_their_kind_name_attributes_and_errors() {
        let remote =
            crate::TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let mut seen = None;
        let got = exported(Sampler::ParentBasedAlwaysOn, || {
            let outer = tracing::info_span!(
                "message",
                otel.kind = "consumer",
                otel.name = "route jobs",
                messaging.system = "nats",
                count = 3u64,
                big = u64::MAX,
                later = tracing::field::Empty,
                trace_id = tracing::field::Empty,
            );
            assert!(link(&outer, Sampler::ParentBasedAlwaysOn, &remote, Some("k=v")));
            outer.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            outer.record("later", "set");
            outer.record("later", "set again");
            outer.in_scope(|| {
                let inner = tracing::info_span!("publish", otel.kind = "producer");
                inner.in_scope(|| {
                    seen = context_of(&tracing::Span::current());
                    tracing::error!(subject = "a.b", "publish failed");
                });
            });
        });
        assert_eq!(got.len(), 2, "{got:#?}");
        let (inner, outer) = (&got[0], &got[1]);
        assert_eq!(outer.name, "route jobs");
        assert_eq!(outer.span_kind, SpanKind::Consumer);
        assert_eq!(outer.span_context.trace_id().to_bytes(), remote.trace_id);
        assert_eq!(outer.parent_span_id.to_bytes(), remote.parent_id);
        assert!(outer.parent_span_is_remote);
        assert_eq!(outer.span_context.trace_state().header(), "k=v");
        let attr = |s: &SpanData, k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.clone())
        };
        assert_eq!(attr(outer, "messaging.system"), Some(Value::from("nats")));
        assert_eq!(attr(outer, "count"), Some(Value::I64(3)));
        assert_eq!(attr(outer, "big"), Some(Value::from(u64::MAX.to_string())));
        assert_eq!(attr(outer, "later"), Some(Value::from("set again")));
        assert_eq!(
            outer.attributes.len(),
            4,
            "otel.* fields and the logs' trace_id are not attributes: {:?}",
            outer.attributes
        );
        // The child: same trace, the outer span its local parent, the error on it.
        assert_eq!(inner.name, "publish");
        assert_eq!(inner.span_kind, SpanKind::Producer);
        assert_eq!(inner.span_context.trace_id(), outer.span_context.trace_id());
        assert_eq!(inner.parent_span_id, outer.span_context.span_id());
        assert!(!inner.parent_span_is_remote);
        assert_eq!(inner.status, Status::error("publish failed"));
        assert_eq!(inner.events.events.len(), 1);
        assert_eq!(inner.events.events[0].name, "publish failed");
        // The context read inside is the inner span's, sampled, with the trace state.
        let seen = seen.unwrap();
        assert_eq!(seen.parent.trace_id, remote.trace_id);
        assert_eq!(seen.parent.parent_id, inner.span_context.span_id().to_bytes());
        assert_eq!(seen.parent.flags, 1);
        assert_eq!(seen.tracestate.as_deref(), Some("k=v"));
    }

    #[test]
    fn an_unsampled_remote_parent_exports_nothing_but_propagates_its_flag() {
        let remote =
            crate::TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let mut seen = None;
        let got = exported(Sampler::ParentBasedAlwaysOn, || {
            let span = tracing::info_span!("message");
            assert!(link(&span, Sampler::ParentBasedAlwaysOn, &remote, None));
            span.in_scope(|| {
                let _child = tracing::info_span!("publish").entered();
                seen = context_of(&tracing::Span::current());
            });
        });
        assert!(got.is_empty(), "{got:#?}");
        let seen = seen.unwrap();
        assert_eq!(seen.parent.trace_id, remote.trace_id);
        assert_eq!(seen.parent.flags, 0, "downstream is told not to sample");
    }

    #[test]
    fn roots_get_new_traces_and_a_span_outside_the_layer_has_no_context() {
        let got = exported(Sampler::AlwaysOn, || {
            tracing::info_span!("a").in_scope(|| {});
            tracing::info_span!("b").in_scope(|| {});
        });
        assert_eq!(got.len(), 2);
        assert_ne!(got[0].span_context.trace_id(), got[1].span_context.trace_id());
        assert_eq!(got[0].parent_span_id, SpanId::INVALID);
        assert!(context_of(&tracing::info_span!("no subscriber")).is_none());
    }

    #[test]
    fn ratio_sampling_matches_the_sdk_bound() {
        let mut low = [0u8; 16];
        // Low 64 bits 0: always under any positive ratio.
        assert!(by_ratio(&low, 0.01));
        assert!(!by_ratio(&low, 0.0));
        // All ones: above any ratio below 1.
        low[8..].copy_from_slice(&[0xff; 8]);
        assert!(!by_ratio(&low, 0.99));
        // About the ratio of random ids.
        let kept = (0..20_000)
            .filter(|_| by_ratio(&random_nonzero::<16>(), 0.25))
            .count();
        assert!((4_400..5_600).contains(&kept), "{kept} of 20000 at 0.25");
    }

    #[test]
    fn parent_based_samplers_follow_the_parent_and_the_others_do_not() {
        let id = [7u8; 16];
        assert!(decide(Sampler::ParentBasedAlwaysOff, &id, Some(true)));
        assert!(!decide(Sampler::ParentBasedAlwaysOn, &id, Some(false)));
        assert!(decide(Sampler::ParentBasedAlwaysOn, &id, None));
        assert!(!decide(Sampler::ParentBasedAlwaysOff, &id, None));
        assert!(decide(Sampler::AlwaysOn, &id, Some(false)));
        assert!(!decide(Sampler::AlwaysOff, &id, Some(true)));
    }
}
