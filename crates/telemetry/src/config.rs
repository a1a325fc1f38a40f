//! The standard `OTEL_*` environment variables, read into a [`OtelConfig`].
//!
//! Read: `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER` (`otlp` or `none`),
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended) or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS`
//! (`k=v,k2=v2`, values percent-decoded), `OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`
//! (`http/protobuf`, the default, or `http/json`; `grpc` is not built in),
//! `OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT` (milliseconds), `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` and the
//! batch settings `OTEL_BSP_SCHEDULE_DELAY` (milliseconds), `OTEL_BSP_MAX_QUEUE_SIZE` and
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (spans). Export is off when no endpoint is set.

use std::time::Duration;

/// How spans are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf` (the default).
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
}

/// Which spans are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with the ratio.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default).
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with the ratio.
    ParentBasedTraceIdRatio(f64),
}

/// Where and how to export spans.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    /// The full URL spans are POSTed to (…`/v1/traces`).
    pub traces_endpoint: String,
    /// Extra request headers (e.g. an API key).
    pub headers: Vec<(String, String)>,
    /// Encoding.
    pub protocol: Protocol,
    /// Export timeout.
    pub timeout: Duration,
    /// `service.name`.
    pub service_name: String,
    /// Other resource attributes.
    pub resource: Vec<(String, String)>,
    /// The sampler.
    pub sampler: Sampler,
    /// How ended spans are batched before export.
    pub batch: BatchSettings,
}

/// The batch span processor's settings (`OTEL_BSP_*`, with the specification's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// The longest a span waits before its batch is exported (`OTEL_BSP_SCHEDULE_DELAY`,
    /// default 5 s).
    pub schedule_delay: Duration,
    /// Spans kept waiting at most; more are dropped and counted (`OTEL_BSP_MAX_QUEUE_SIZE`,
    /// default 2,048).
    pub max_queue_size: usize,
    /// Spans per export request at most; a full batch is exported at once
    /// (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512, never above the queue size).
    pub max_export_batch_size: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            schedule_delay: Duration::from_millis(5_000),
            max_queue_size: 2_048,
            max_export_batch_size: 512,
        }
    }
}

/// An `OTEL_*` setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    /// The variable at fault.
    pub variable: &'static str,
    /// Why.
    pub message: String,
}

impl OtelConfig {
    /// Reads the process environment.
    pub fn from_env(default_service: &str) -> Result<Option<Self>, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok(), default_service)
    }

    /// Reads the settings through `get` (a variable's value, if set): `Ok(None)` when
    /// export is off (no endpoint, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Option<Self>, ConfigError> {
        let get = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match get("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(ConfigError {
                    variable: "OTEL_TRACES_EXPORTER",
                    message: format!("{other:?} is not supported (otlp or none)"),
                });
            }
        }
        let traces_endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(e), _) => e,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        if !(traces_endpoint.starts_with("http://") || traces_endpoint.starts_with("https://")) {
            return Err(ConfigError {
                variable: "OTEL_EXPORTER_OTLP_ENDPOINT",
                message: format!("{traces_endpoint:?} is not an http(s) URL"),
            });
        }
        let pick = |signal: &'static str, generic: &'static str| {
            get(signal)
                .map(|v| (signal, v))
                .or_else(|| get(generic).map(|v| (generic, v)))
        };
        let protocol = match pick(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            None => Protocol::HttpProtobuf,
            Some((_, p)) if p == "http/protobuf" => Protocol::HttpProtobuf,
            Some((_, p)) if p == "http/json" => Protocol::HttpJson,
            Some((variable, p)) => {
                return Err(ConfigError {
                    variable,
                    message: format!("{p:?} is not supported (http/protobuf or http/json)"),
                });
            }
        };
        let headers = match pick("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS") {
            None => Vec::new(),
            Some((variable, h)) => parse_pairs(&h).ok_or_else(|| ConfigError {
                variable,
                message: "not a comma-separated list of key=value".into(),
            })?,
        };
        let timeout = match pick("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") {
            None => Duration::from_secs(10),
            Some((variable, t)) => Duration::from_millis(t.parse().map_err(|_| ConfigError {
                variable,
                message: format!("{t:?} is not a number of milliseconds"),
            })?),
        };
        let mut resource = match get("OTEL_RESOURCE_ATTRIBUTES") {
            None => Vec::new(),
            Some(r) => parse_pairs(&r).ok_or_else(|| ConfigError {
                variable: "OTEL_RESOURCE_ATTRIBUTES",
                message: "not a comma-separated list of key=value".into(),
            })?,
        };
        // OTEL_SERVICE_NAME wins over a service.name in the resource attributes.
        let service_name = get("OTEL_SERVICE_NAME")
            .or_else(|| {
                resource
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| default_service.to_string());
        resource.retain(|(k, _)| k != "service.name");
        let ratio = || -> Result<f64, ConfigError> {
            match get("OTEL_TRACES_SAMPLER_ARG") {
                None => Ok(1.0),
                Some(a) => a
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| ConfigError {
                        variable: "OTEL_TRACES_SAMPLER_ARG",
                        message: format!("{a:?} is not a ratio between 0 and 1"),
                    }),
            }
        };
        let sampler = match get("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_always_on") => Sampler::ParentBasedAlwaysOn,
            Some("always_on") => Sampler::AlwaysOn,
            Some("always_off") => Sampler::AlwaysOff,
            Some("parentbased_always_off") => Sampler::ParentBasedAlwaysOff,
            Some("traceidratio") => Sampler::TraceIdRatio(ratio()?),
            Some("parentbased_traceidratio") => Sampler::ParentBasedTraceIdRatio(ratio()?),
            Some(other) => {
                return Err(ConfigError {
                    variable: "OTEL_TRACES_SAMPLER",
                    message: format!("{other:?} is not a supported sampler"),
                });
            }
        };
        let count = |variable: &'static str, default: usize| -> Result<usize, ConfigError> {
            match get(variable) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| ConfigError {
                        variable,
                        message: format!("{v:?} is not a positive number"),
                    }),
            }
        };
        let d = BatchSettings::default();
        let max_queue_size = count("OTEL_BSP_MAX_QUEUE_SIZE", d.max_queue_size)?;
        let batch = BatchSettings {
            schedule_delay: Duration::from_millis(count(
                "OTEL_BSP_SCHEDULE_DELAY",
                d.schedule_delay.as_millis() as usize,
            )? as u64),
            max_queue_size,
            max_export_batch_size: count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", d.max_export_batch_size)?
                .min(max_queue_size),
        };
        Ok(Some(Self {
            traces_endpoint,
            headers,
            protocol,
            timeout,
            service_name,
            resource,
            sampler,
            batch,
        }))
    }
}

/// `k=v,k2=v2` with percent-encoded values (W3C Baggage-style, as OTEL_* lists are).
fn parse_pairs(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (k, v) = item.split_once('=')?;
        let k = k.trim();
        if k.is_empty() {
            return None;
        }
        out.push((k.to_string(), percent_decode(v.trim())?));
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> Result<Option<OtelConfig>, ConfigError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        OtelConfig::from_lookup(
            |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            "jetrun",
        )
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(cfg(&[]).unwrap(), None);
        assert_eq!(cfg(&[("OTEL_SERVICE_NAME", "x")]).unwrap(), None);
        assert_eq!(
            cfg(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])
            .unwrap(),
            None
        );
        assert_eq!(
            cfg(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "none")
            ])
            .unwrap(),
            None
        );
    }

    #[test]
    fn reads_every_standard_variable() {
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=se%20cret, x-team=ops"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=ignored",
            ),
            ("OTEL_SERVICE_NAME", "jetrun-worker"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.traces_endpoint, "http://collector:4318/v1/traces");
        assert_eq!(
            c.headers,
            vec![
                ("api-key".into(), "se cret".into()),
                ("x-team".into(), "ops".into())
            ]
        );
        assert_eq!(c.protocol, Protocol::HttpJson);
        assert_eq!(c.service_name, "jetrun-worker");
        assert_eq!(c.resource, vec![("deployment.environment".into(), "prod".into())]);
        assert_eq!(c.sampler, Sampler::ParentBasedTraceIdRatio(0.25));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.batch, BatchSettings::default());
    }

    #[test]
    fn batch_settings_are_read_and_the_batch_never_exceeds_the_queue() {
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.batch,
            BatchSettings {
                schedule_delay: Duration::from_millis(250),
                max_queue_size: 100,
                max_export_batch_size: 100,
            }
        );
        for (k, v) in [
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
        ] {
            let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a"), (k, v)]);
            assert_eq!(e.unwrap_err().variable, k);
        }
    }

    #[test]
    fn per_signal_settings_win() {
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://b/custom/path"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.traces_endpoint, "https://b/custom/path");
        assert_eq!(c.headers, vec![("b".into(), "2".into())]);
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.service_name, "jetrun");
        assert_eq!(c.sampler, Sampler::ParentBasedAlwaysOn);
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let e = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert_eq!(e.unwrap_err().variable, "OTEL_EXPORTER_OTLP_PROTOCOL");
        let e = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]);
        assert_eq!(e.unwrap_err().variable, "OTEL_TRACES_SAMPLER_ARG");
        assert!(cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).is_err());
    }
}
