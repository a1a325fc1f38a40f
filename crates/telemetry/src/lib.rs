//! # jetrun-telemetry
//!
//! Logging, tracing and metrics for every jetrun binary.
//!
//! - **Logs**: `tracing` with key-value fields, as text or JSON lines on stderr, filtered
//!   by `RUST_LOG` (default `info,async_nats=warn`).
//! - **Traces**: with the `otel` cargo feature (on in the `jetrun` binary by default) and
//!   an OTLP endpoint in the standard `OTEL_*` variables ([`config`]), spans are built by
//!   jetrun's own `tracing` layer (`spans`: ids and sampling decided once per span) and
//!   exported through the SDK's batch processor over OTLP/HTTP (protobuf encoded by
//!   jetrun's own exporter, `otlp`, the same bytes
//!   as the upstream one at a fraction of the CPU; JSON by the upstream exporter).
//!   Context travels as W3C `traceparent`/`tracestate` ([`w3c`]): a
//!   consumer's span is made a child of the message's context ([`link_remote`]) and every
//!   publish carries the *current* span's context ([`outgoing`]), so one job is one trace.
//!   Without the feature, or without an endpoint, the trace functions pass the context
//!   given to them through unchanged. In a Lambda function with X-Ray active tracing, a
//!   span without an incoming W3C context continues the invocation's X-Ray trace
//!   ([`xray`]).
//! - **Metrics**: one registry ([`metrics`]) rendered as Prometheus/OpenMetrics text for
//!   `GET /metrics`, and as CloudWatch EMF lines ([`emf`]).

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[cfg(feature = "otel")]
mod batch;
pub mod config;
pub mod emf;
pub mod metrics;
#[cfg(feature = "otel")]
mod otlp;
#[cfg(feature = "otel")]
mod spans;
pub mod w3c;
pub mod xray;

pub use config::OtelConfig;
pub use w3c::TraceParent;

/// Keeps the exporter alive; flushes spans on drop.
#[derive(Debug, Default)]
pub struct Guard {
    #[cfg(feature = "otel")]
    processor: Option<std::sync::Arc<dyn opentelemetry_sdk::trace::SpanProcessor>>,
}

impl Guard {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otel")]
        {
            self.processor.is_some()
        }
        #[cfg(not(feature = "otel"))]
        {
            false
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.processor.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. `format` is `text` or `json`. Logs go to stderr so
/// stdout stays for command output (job ids, JSON). Span export is configured from the
/// `OTEL_*` variables ([`OtelConfig::from_env`]); a bad setting is reported on stderr and
/// leaves export off. Keep the returned guard alive.
pub fn init(format: &str) -> Guard {
    #[cfg(feature = "otel")]
    {
        let cfg = match OtelConfig::from_env("jetrun") {
            Ok(c) => c,
            Err(e) => {
                eprintln!("OpenTelemetry export disabled: {e}");
                None
            }
        };
        init_with(format, cfg)
    }
    #[cfg(not(feature = "otel"))]
    {
        init_with(format, None)
    }
}

/// [`init`] with the export settings given rather than read from `OTEL_*` (`None`: no
/// export; ignored without the `otel` feature). Tests use it to record spans into a local
/// receiver without touching the process environment.
pub fn init_with(format: &str, otel_config: Option<OtelConfig>) -> Guard {
    // RUST_LOG filters the logs only: spans are exported at `info` (or
    // JETRUN_TRACE_FILTER) whatever the log level, so quieter logs keep whole traces.
    let log_filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = (format == "json").then(|| {
        fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
    });
    let text = (format != "json").then(|| {
        fmt::layer()
            // https://no-color.org: any non-empty NO_COLOR turns colours off.
            .with_ansi(
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
    });
    #[cfg(feature = "otel")]
    {
        let (layer, processor) = match otel_config.and_then(|c| otel::layer(&c)) {
            Some((l, p)) => {
                let filter = EnvFilter::try_from_env("JETRUN_TRACE_FILTER")
                    .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
                (Some(l.with_filter(filter)), Some(p))
            }
            None => (None, None),
        };
        // Already installed (tests): keep the first.
        let _ = tracing_subscriber::registry()
            .with(json)
            .with(text)
            .with(layer)
            .try_init();
        Guard { processor }
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = otel_config;
        let _ = tracing_subscriber::registry().with(json).with(text).try_init();
        Guard::default()
    }
}

/// Exports every span ended so far and waits for the exporter (at most its timeout,
/// `OTEL_EXPORTER_OTLP_TIMEOUT`); a no-op when nothing is exported. Blocking: call it from
/// `spawn_blocking` in async code. For a process that can be frozen between units of work
/// (AWS Lambda freezes the environment once an invocation has answered), where spans left
/// in the batch would otherwise wait for the next invocation, or be lost with the
/// environment.
pub fn flush() {
    #[cfg(feature = "otel")]
    if let Some(p) = otel::PROCESSOR.get()
        && let Err(e) = opentelemetry_sdk::trace::SpanProcessor::force_flush(p.as_ref())
    {
        tracing::debug!(error = %e, "span flush failed");
    }
}

/// The log and span filter when `RUST_LOG` (or `JETRUN_TRACE_FILTER`) is not set.
pub const DEFAULT_FILTER: &str = "info,async_nats=warn";

/// A W3C trace context to put on what is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// `traceparent`.
    pub traceparent: String,
    /// `tracestate`, if any.
    pub tracestate: Option<String>,
    /// `traceparent`, parsed: for comparing traces without parsing the header again.
    pub parent: TraceParent,
}

impl TraceContext {
    /// The context of `parent` (and a `tracestate`, kept only if non-empty).
    pub fn new(parent: TraceParent, tracestate: Option<String>) -> Self {
        Self {
            traceparent: parent.to_header(),
            tracestate: tracestate.filter(|t| !t.is_empty()),
            parent,
        }
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.parent.trace_id
    }
}

/// Makes `span` a child of the W3C `traceparent` (compatibility form of [`link_remote`]).
pub fn link_parent(span: &tracing::Span, traceparent: Option<&str>) {
    link_remote(span, traceparent, None);
}

/// Makes `span` (just created, not yet entered) a child of the remote context
/// `traceparent` + `tracestate`. A header that breaks the W3C rules is ignored: the span
/// then starts a new trace, except in a Lambda function with X-Ray tracing
/// (`_X_AMZN_TRACE_ID`), where it continues the invocation's X-Ray trace ([`xray`]).
/// Returns whether the span was linked.
pub fn link_remote(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) -> bool {
    link_remote_parsed(span, traceparent.and_then(TraceParent::parse), tracestate)
}

/// [`link_remote`] with the `traceparent` already parsed (`None`: absent or invalid),
/// for a caller that needs the parsed header too.
pub fn link_remote_parsed(
    span: &tracing::Span,
    traceparent: Option<TraceParent>,
    tracestate: Option<&str>,
) -> bool {
    let (tp, ts) = match traceparent {
        Some(tp) => (tp, tracestate.filter(|t| w3c::valid_tracestate(t))),
        None => match xray::lambda_context() {
            Some(tp) => (tp, None),
            None => return false,
        },
    };
    #[cfg(feature = "otel")]
    {
        otel::link(span, &tp, ts)
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (span, tp, ts);
        false
    }
}

/// Marks `span` with `M`; returns whether it was not marked before (also when the span
/// is disabled or not in a registry: then there is nothing to repeat). For work done
/// once per span: recording a job's fields on a span that sees several of its state
/// changes (dispatch: claimed, then running), which would otherwise send each field to
/// every layer, and export it, once per change.
pub fn mark_once<M: Default + Send + Sync + 'static>(span: &tracing::Span) -> bool {
    use tracing_subscriber::registry::LookupSpan;
    let mut first = true;
    span.with_subscriber(|(id, dispatch)| {
        if let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>()
            && let Some(data) = registry.span(id)
        {
            let mut ext = data.extensions_mut();
            if ext.get_mut::<M>().is_some() {
                first = false;
            } else {
                ext.insert(M::default());
            }
        }
    });
    first
}

/// The W3C context of the current span, when spans are being recorded.
pub fn current_context() -> Option<TraceContext> {
    #[cfg(feature = "otel")]
    {
        otel::current()
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// The head-sampling ratio of new traces, set when export starts (`None`: no export).
static HEAD_RATIO: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// The probability that a new trace is sampled under `sampler` (the parent-based ones
/// decide a root as their root sampler does).
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
fn head_ratio(sampler: config::Sampler) -> f64 {
    use config::Sampler::*;
    match sampler {
        AlwaysOn | ParentBasedAlwaysOn => 1.0,
        AlwaysOff | ParentBasedAlwaysOff => 0.0,
        TraceIdRatio(r) | ParentBasedTraceIdRatio(r) => r.clamp(0.0, 1.0),
    }
}

/// A `traceparent` for a trace jetrun starts itself (a job submitted without trace
/// context): random ids, and the sampled flag decided by the configured sampler, as the
/// SDK decides a root span (`traceidratio`: by the trace id's low 64 bits). Without this
/// every such job arrived "sampled", and a parent-based sampler, the default, kept all of
/// them whatever its ratio. Without export the flag is set, as W3C's default.
pub fn new_traceparent() -> String {
    let tp = jetrun_core::envelope::new_traceparent();
    let Some(&ratio) = HEAD_RATIO.get() else {
        return tp;
    };
    sampled_by(&tp, ratio)
}

/// Whether a trace whose id ends in the 64 bits `trace_id_low` is kept at `ratio`: the
/// SDK's `TraceIdRatioBased` bound on the low 63 bits. One rule for the traces jetrun starts
/// ([`new_traceparent`]) and the spans its layer samples.
fn ratio_keeps(trace_id_low: u64, ratio: f64) -> bool {
    let bound = (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64;
    (trace_id_low >> 1) < bound
}

/// `tp` with its sampled flag decided by `ratio` over its trace id.
fn sampled_by(tp: &str, ratio: f64) -> String {
    // `00-<32 hex trace>-<16 hex span>-<flags>`: the low 64 bits are hex 16..32 of the id.
    let (Some(low), Some(head)) = (tp.get(19..35), tp.get(..52)) else {
        return tp.to_string();
    };
    let low = u64::from_str_radix(low, 16).unwrap_or(u64::MAX);
    let sampled = ratio_keeps(low, ratio);
    format!("{head}-{}", if sampled { "01" } else { "00" })
}

/// The W3C `traceparent` of the current span, when spans are being recorded.
pub fn current_traceparent() -> Option<String> {
    current_context().map(|c| c.traceparent)
}

/// The context to send with a message or request, given the one the data carries
/// (`explicit`, e.g. a job record's traceparent):
///
/// - the current span's, when there is one and `explicit` is absent, invalid or in the
///   same trace (the usual case: a handler publishing inside the message's trace);
/// - else `explicit` (a background loop acting for a job of another trace), normalised;
///   an invalid `tracestate` is dropped;
/// - else nothing (the caller may start a new trace).
pub fn outgoing(explicit: Option<&str>, explicit_state: Option<&str>) -> Option<TraceContext> {
    outgoing_from(current_context(), explicit, explicit_state)
}

/// [`outgoing`] with the current span's context already read ([`current_context`]), for
/// a caller that needs it too.
pub fn outgoing_from(
    current: Option<TraceContext>,
    explicit: Option<&str>,
    explicit_state: Option<&str>,
) -> Option<TraceContext> {
    let explicit = explicit.and_then(TraceParent::parse);
    match (current, explicit) {
        (Some(cur), None) => Some(cur),
        (Some(cur), Some(e)) if cur.parent.trace_id == e.trace_id => Some(cur),
        (_, Some(e)) => Some(TraceContext::new(
            e,
            explicit_state
                .filter(|t| w3c::valid_tracestate(t))
                .map(str::to_string),
        )),
        (None, None) => None,
    }
}

/// Whether spans are exported by this process (an OTLP endpoint is configured).
pub fn exporting() -> bool {
    #[cfg(feature = "otel")]
    {
        otel::EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(not(feature = "otel"))]
    {
        false
    }
}

#[cfg(feature = "otel")]
mod otel {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanExporter, SpanProcessor};

    use crate::config::{OtelConfig, Protocol, Sampler};
    use crate::spans::SpanLayer;

    pub(super) static EXPORTING: AtomicBool = AtomicBool::new(false);
    /// The batch processor of the installed layer, for [`super::flush`] (the
    /// [`super::Guard`] shuts it down).
    pub(super) static PROCESSOR: std::sync::OnceLock<Arc<dyn SpanProcessor>> = std::sync::OnceLock::new();
    /// The installed layer's sampler, for [`link`] (the default until one is installed).
    static SAMPLER: std::sync::OnceLock<Sampler> = std::sync::OnceLock::new();

    pub(super) fn layer(cfg: &OtelConfig) -> Option<(SpanLayer, Arc<dyn SpanProcessor>)> {
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(cfg.service_name.clone())
            .with_attributes(
                cfg.resource
                    .iter()
                    .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
            )
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let processor: Result<Arc<dyn SpanProcessor>, String> = match cfg.protocol {
            // jetrun's own encoder (crate::otlp), spans encoded as they end (crate::batch):
            // the same bytes, a fraction of the CPU.
            Protocol::HttpProtobuf => {
                crate::otlp::ProtoExporter::new(cfg.traces_endpoint.clone(), &cfg.headers, cfg.timeout)
                    .and_then(|e| crate::batch::EncodingBatcher::new(e, &resource, cfg.batch, cfg.timeout))
                    .map(|p| Arc::new(p) as Arc<dyn SpanProcessor>)
            }
            Protocol::HttpJson => {
                use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(cfg.traces_endpoint.clone())
                    .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
                    .with_timeout(cfg.timeout)
                    .with_headers(cfg.headers.iter().cloned().collect::<HashMap<_, _>>())
                    .build()
                    .map(|e| Arc::new(batch(e, &resource, cfg)) as Arc<dyn SpanProcessor>)
                    .map_err(|e| e.to_string())
            }
        };
        let processor = match processor {
            Ok(p) => p,
            Err(e) => {
                eprintln!("OpenTelemetry export disabled: cannot build the OTLP exporter: {e}");
                return None;
            }
        };
        let _ = super::HEAD_RATIO.set(super::head_ratio(cfg.sampler));
        let _ = SAMPLER.set(cfg.sampler);
        let _ = PROCESSOR.set(processor.clone());
        EXPORTING.store(true, Ordering::Relaxed);
        Some((SpanLayer::new(cfg.sampler, processor.clone()), processor))
    }

    /// The SDK's batch processor over `exporter`, with the configured `OTEL_BSP_*`
    /// settings (as [`crate::batch`] uses them).
    fn batch<E: SpanExporter + 'static>(
        exporter: E,
        resource: &opentelemetry_sdk::Resource,
        cfg: &OtelConfig,
    ) -> BatchSpanProcessor {
        let b = cfg.batch;
        let config = BatchConfigBuilder::default()
            .with_scheduled_delay(b.schedule_delay)
            .with_max_queue_size(b.max_queue_size)
            .with_max_export_batch_size(b.max_export_batch_size)
            .build();
        let mut p = BatchSpanProcessor::builder(exporter)
            .with_batch_config(config)
            .build();
        p.set_resource(resource);
        p
    }

    pub(super) fn link(span: &tracing::Span, tp: &crate::TraceParent, ts: Option<&str>) -> bool {
        let sampler = SAMPLER.get().copied().unwrap_or(Sampler::ParentBasedAlwaysOn);
        crate::spans::link(span, sampler, tp, ts)
    }

    pub(super) fn current() -> Option<crate::TraceContext> {
        crate::spans::context_of(&tracing::Span::current())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn new_traces_are_sampled_at_the_configured_ratio() {
        let tp = jetrun_core::envelope::new_traceparent();
        assert!(sampled_by(&tp, 1.0).ends_with("-01"));
        assert!(sampled_by(&tp, 0.0).ends_with("-00"));
        assert_eq!(&sampled_by(&tp, 0.5)[..52], &tp[..52], "ids kept");
        let n = 4000;
        let kept = (0..n)
            .filter(|_| sampled_by(&jetrun_core::envelope::new_traceparent(), 0.1).ends_with("-01"))
            .count();
        assert!((250..550).contains(&kept), "{kept} of {n} at 0.1");
        assert!(
            TraceParent::parse(&sampled_by(&tp, 0.1)).is_some(),
            "still valid W3C"
        );
        assert_eq!(head_ratio(config::Sampler::ParentBasedTraceIdRatio(0.25)), 0.25);
        assert_eq!(head_ratio(config::Sampler::ParentBasedAlwaysOn), 1.0);
    }

    #[test]
    fn mark_once_is_true_once_per_span() {
        #[derive(Default)]
        struct M;
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let a = tracing::info_span!("a");
            let b = tracing::info_span!("b");
            assert!(mark_once::<M>(&a));
            assert!(!mark_once::<M>(&a), "a second time on the same span");
            assert!(mark_once::<M>(&b), "another span");
            assert!(
                mark_once::<M>(&tracing::Span::none()),
                "nothing to repeat on a disabled span"
            );
        });
    }

    #[test]
    fn outgoing_without_a_span_keeps_a_valid_explicit_context() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = outgoing(Some(tp), Some("a=b")).unwrap();
        assert_eq!(c.traceparent, tp);
        assert_eq!(c.tracestate.as_deref(), Some("a=b"));
        // Invalid tracestate dropped; invalid traceparent: nothing.
        assert_eq!(outgoing(Some(tp), Some("A=b")).unwrap().tracestate, None);
        assert_eq!(outgoing(Some(&tp.to_uppercase()), None), None);
        assert_eq!(outgoing(None, None), None);
    }
}
