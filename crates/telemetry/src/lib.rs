//! # jetrun-telemetry
//!
//! Logging and tracing set-up for every jetrun binary: `tracing` with key-value fields, as
//! text or JSON lines on stderr, filtered by `RUST_LOG` (default `info`).
//!
//! With the `otel` cargo feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also
//! exported over OTLP/HTTP, and [`link_parent`] makes a message's span a child of the
//! producer's W3C `traceparent` (carried in NATS headers), so one trace follows a webhook
//! through route, dispatch and into the container's `TRACEPARENT`. Without the feature
//! those functions are no-ops and nothing heavy is compiled.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Keeps the exporter alive; flushes spans on drop.
#[derive(Debug, Default)]
pub struct Guard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. `format` is `text` or `json`. Logs go to stderr so
/// stdout stays for command output (job ids, JSON). Keep the returned guard alive.
pub fn init(format: &str) -> Guard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let json = (format == "json").then(|| fmt::layer().json().with_writer(std::io::stderr));
    let text = (format != "json").then(|| {
        fmt::layer()
            // https://no-color.org: any non-empty NO_COLOR turns colours off.
            .with_ansi(
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .with_writer(std::io::stderr)
    });
    #[cfg(feature = "otel")]
    {
        let (layer, provider) = match otel::layer() {
            Some((l, p)) => (Some(l), Some(p)),
            None => (None, None),
        };
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(json)
            .with(text)
            .with(layer)
            .try_init();
        Guard { provider }
    }
    #[cfg(not(feature = "otel"))]
    {
        // Already installed (tests): keep the first.
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(json)
            .with(text)
            .try_init();
        Guard::default()
    }
}

/// Makes `span` a child of the W3C `traceparent`, when OpenTelemetry is enabled.
pub fn link_parent(span: &tracing::Span, traceparent: Option<&str>) {
    #[cfg(feature = "otel")]
    otel::link_parent(span, traceparent);
    #[cfg(not(feature = "otel"))]
    let _ = (span, traceparent);
}

/// The W3C `traceparent` of the current span, when OpenTelemetry is enabled and the span
/// is being recorded; producers put it in the headers of what they publish.
pub fn current_traceparent() -> Option<String> {
    #[cfg(feature = "otel")]
    {
        otel::current_traceparent()
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

#[cfg(feature = "otel")]
mod otel {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{TraceContextExt, TracerProvider};
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    pub(super) fn layer<S>() -> Option<(
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        opentelemetry_sdk::trace::SdkTracerProvider,
    )>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("OpenTelemetry disabled: cannot build the OTLP exporter: {e}");
                return None;
            }
        };
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "jetrun".into());
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            )
            .build();
        let tracer = provider.tracer("jetrun");
        Some((tracing_opentelemetry::layer().with_tracer(tracer), provider))
    }

    pub(super) fn link_parent(span: &tracing::Span, traceparent: Option<&str>) {
        let Some(tp) = traceparent else { return };
        let carrier: HashMap<String, String> = [("traceparent".to_string(), tp.to_string())].into();
        let cx = TraceContextPropagator::new().extract(&carrier);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }

    pub(super) fn current_traceparent() -> Option<String> {
        let cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.remove("traceparent")
    }
}
