//! OTLP/HTTP protobuf span export, encoded straight from the SDK's [`SpanData`].
//!
//! The upstream exporter (`opentelemetry-otlp`) first converts each span into the
//! generated protobuf structs (a `String` per attribute key and value, a `Vec` per id)
//! and then encodes those; with every span sampled, that conversion was the larger half
//! of the exporter thread's CPU (docs/benchmarks.md, "Cost of observability"). This
//! exporter writes the same `ExportTraceServiceRequest` bytes with no allocation per
//! span: each span is encoded by the thread that ends it ([`encode_span`], called by
//! [`crate::batch`]), a request puts the encoded spans together, and it is posted as the
//! upstream exporter does (`Content-Type: application/x-protobuf`, the configured headers and timeout; a
//! retryable answer — 429, 502, 503, 504 — is tried again with backoff within the
//! timeout). `OTEL_EXPORTER_OTLP_PROTOCOL=http/json` still uses the upstream exporter.
//!
//! The encoding is checked against `opentelemetry-proto`'s own conversion in the tests
//! below: both byte strings decode to the same message.

use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceState};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::SpanData;

/// `ExportTraceServiceRequest` for `spans`, with `resource` (an encoded `Resource`
/// message, [`encode_resource`]) and its schema URL, and each span's instrumentation
/// scope, appended to `out`.
#[cfg(test)]
pub(crate) fn encode_request(resource: &[u8], resource_schema: &str, spans: &[SpanData], out: &mut Vec<u8>) {
    let mut scopes = Vec::new();
    for s in spans {
        encode_span(scope_buffer(&mut scopes, &s.instrumentation_scope, 0), s);
    }
    encode_encoded(resource, resource_schema, &scopes, out);
}

/// The buffer of `scope`'s encoded spans in `scopes`, added (with `room` bytes reserved)
/// if it is new: one group per scope, in order of first appearance (a batch has one,
/// "jetrun"; comparing scopes is cheap next to encoding a span).
pub(crate) fn scope_buffer<'a>(
    scopes: &'a mut Vec<(opentelemetry::InstrumentationScope, Vec<u8>)>,
    scope: &opentelemetry::InstrumentationScope,
    room: usize,
) -> &'a mut Vec<u8> {
    let i = match scopes.iter().position(|(sc, _)| sc == scope) {
        Some(i) => i,
        None => {
            scopes.push((scope.clone(), Vec::with_capacity(room)));
            scopes.len() - 1
        }
    };
    &mut scopes[i].1
}

/// Appends `s` to `b` as one `ScopeSpans.spans` field: the unit [`encode_encoded`] puts
/// together, so a span can be encoded on the thread that ends it.
pub(crate) fn encode_span(b: &mut Vec<u8>, s: &SpanData) {
    // ScopeSpans.spans = 2
    nested_in(b, 2, 2, |b| span(b, s));
}

/// `ExportTraceServiceRequest` for spans already encoded ([`encode_span`]), grouped by
/// their scope, appended to `out`.
pub(crate) fn encode_encoded(
    resource: &[u8],
    resource_schema: &str,
    scopes: &[(opentelemetry::InstrumentationScope, Vec<u8>)],
    out: &mut Vec<u8>,
) {
    // ExportTraceServiceRequest.resource_spans = 1
    nested_in(out, 1, 3, |b| {
        // ResourceSpans.resource = 1
        tag(b, 1, LEN);
        varint(b, resource.len() as u64);
        b.extend_from_slice(resource);
        for (scope, spans) in scopes {
            // ResourceSpans.scope_spans = 2
            nested_in(b, 2, 3, |b| {
                // ScopeSpans.scope = 1
                nested(b, 1, |b| {
                    string(b, 1, scope.name());
                    string(b, 2, scope.version().unwrap_or_default());
                    for kv in scope.attributes() {
                        key_value(b, 3, kv);
                    }
                });
                b.extend_from_slice(spans);
                string(b, 3, scope.schema_url().unwrap_or_default());
            });
        }
        string(b, 3, resource_schema);
    });
}

/// An encoded `Resource` message (its attributes).
pub(crate) fn encode_resource(resource: &Resource) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in resource.iter() {
        nested(&mut b, 1, |b| {
            string(b, 1, k.as_str());
            nested(b, 2, |b| any_value(b, v));
        });
    }
    b
}

/// One `Span` message's fields.
fn span(b: &mut Vec<u8>, s: &SpanData) {
    let cx = &s.span_context;
    bytes(b, 1, &cx.trace_id().to_bytes());
    bytes(b, 2, &cx.span_id().to_bytes());
    trace_state(b, 3, cx.trace_state());
    if s.parent_span_id != SpanId::INVALID {
        bytes(b, 4, &s.parent_span_id.to_bytes());
    }
    string(b, 5, &s.name);
    uint(b, 6, kind(&s.span_kind));
    fixed64(b, 7, nanos(s.start_time));
    fixed64(b, 8, nanos(s.end_time));
    for kv in &s.attributes {
        key_value(b, 9, kv);
    }
    uint(b, 10, u64::from(s.dropped_attributes_count));
    for e in s.events.iter() {
        nested(b, 11, |b| {
            fixed64(b, 1, nanos(e.timestamp));
            string(b, 2, &e.name);
            for kv in &e.attributes {
                key_value(b, 3, kv);
            }
            uint(b, 4, u64::from(e.dropped_attributes_count));
        });
    }
    uint(b, 12, u64::from(s.events.dropped_count));
    for l in s.links.iter() {
        nested(b, 13, |b| {
            let lcx = &l.span_context;
            bytes(b, 1, &lcx.trace_id().to_bytes());
            bytes(b, 2, &lcx.span_id().to_bytes());
            trace_state(b, 3, lcx.trace_state());
            for kv in &l.attributes {
                key_value(b, 4, kv);
            }
            uint(b, 5, u64::from(l.dropped_attributes_count));
            fixed32(b, 6, flags(lcx.is_remote(), lcx.trace_flags().to_u8()));
        });
    }
    uint(b, 14, u64::from(s.links.dropped_count));
    // Status = 15 (always present, as upstream writes it): message = 2, code = 3.
    nested(b, 15, |b| {
        let (message, code) = match &s.status {
            Status::Unset => ("", 0),
            Status::Ok => ("", 1),
            Status::Error { description } => (description.as_ref(), 2),
        };
        string(b, 2, message);
        uint(b, 3, code);
    });
    // Field 16, last (prost writes fields in tag order).
    fixed32(b, 16, flags(s.parent_span_is_remote, cx.trace_flags().to_u8()));
}

/// OTLP span flags: the W3C flags, "has is-remote" always, "is remote" if so.
fn flags(remote: bool, trace_flags: u8) -> u32 {
    u32::from(trace_flags) | 0x100 | if remote { 0x200 } else { 0 }
}

fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn trace_state(b: &mut Vec<u8>, field: u32, ts: &TraceState) {
    if *ts != TraceState::NONE {
        string(b, field, &ts.header());
    }
}

fn key_value(b: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    nested(b, field, |b| {
        string(b, 1, kv.key.as_str());
        nested(b, 2, |b| any_value(b, &kv.value));
    });
}

/// An `AnyValue`'s field (the message's body).
fn any_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        // A oneof member is written even when it holds the default value.
        Value::String(s) => {
            tag(b, 1, LEN);
            varint(b, s.as_str().len() as u64);
            b.extend_from_slice(s.as_str().as_bytes());
        }
        Value::Bool(x) => {
            tag(b, 2, VARINT);
            varint(b, u64::from(*x));
        }
        Value::I64(x) => {
            tag(b, 3, VARINT);
            varint(b, *x as u64);
        }
        Value::F64(x) => {
            tag(b, 4, I64);
            b.extend_from_slice(&x.to_le_bytes());
        }
        Value::Array(a) => nested(b, 5, |b| {
            // ArrayValue.values = 1
            let each = |b: &mut Vec<u8>, v: Value| nested(b, 1, |b| any_value(b, &v));
            match a {
                Array::Bool(xs) => xs.iter().for_each(|x| each(b, Value::Bool(*x))),
                Array::I64(xs) => xs.iter().for_each(|x| each(b, Value::I64(*x))),
                Array::F64(xs) => xs.iter().for_each(|x| each(b, Value::F64(*x))),
                Array::String(xs) => xs.iter().for_each(|x| each(b, Value::String(x.clone()))),
                // A kind added upstream: as its text, rather than lost.
                other => each(b, Value::String(other.to_string().into())),
            }
        }),
        other => {
            let text = other.to_string();
            tag(b, 1, LEN);
            varint(b, text.len() as u64);
            b.extend_from_slice(text.as_bytes());
        }
    }
}

// The protobuf wire format: https://protobuf.dev/programming-guides/encoding/. Fields
// that hold their default value are left out, as prost leaves them out.
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

fn varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn tag(b: &mut Vec<u8>, field: u32, wire: u8) {
    varint(b, (u64::from(field) << 3) | u64::from(wire));
}

fn uint(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, VARINT);
        varint(b, v);
    }
}

fn fixed64(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, I64);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed32(b: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(b, field, I32);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

fn bytes(b: &mut Vec<u8>, field: u32, v: &[u8]) {
    if !v.is_empty() {
        tag(b, field, LEN);
        varint(b, v.len() as u64);
        b.extend_from_slice(v);
    }
}

fn string(b: &mut Vec<u8>, field: u32, v: &str) {
    bytes(b, field, v.as_bytes());
}

/// A length-delimited field whose body `f` writes, with one byte kept for its length (an
/// attribute, a value: almost always under 128 bytes).
fn nested(b: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    nested_in(b, field, 1, f);
}

/// A length-delimited field whose body `f` writes after `room` bytes kept for its length
/// (a guess at the varint's size: 2 for a span, 3 for a batch). The length is written
/// into that room when it fits exactly; otherwise the body moves once to make it fit, so
/// the output is the canonical (shortest) encoding either way. A right guess moves no
/// byte: before, every nested message's body was moved to put its length in front, and
/// an attribute's bytes moved three times (value, attribute, span) and again for the batch.
fn nested_in(b: &mut Vec<u8>, field: u32, room: usize, f: impl FnOnce(&mut Vec<u8>)) {
    tag(b, field, LEN);
    let at = b.len();
    b.resize(at + room, 0);
    f(b);
    let len = b.len() - at - room;
    let (mut prefix, mut n, mut v) = ([0u8; 10], 0, len as u64);
    while v >= 0x80 {
        prefix[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    prefix[n] = v as u8;
    let need = n + 1;
    match need.cmp(&room) {
        std::cmp::Ordering::Equal => {}
        std::cmp::Ordering::Greater => {
            b.splice(at..at, std::iter::repeat_n(0, need - room));
        }
        std::cmp::Ordering::Less => {
            b.drain(at..at + room - need);
        }
    }
    b[at..at + need].copy_from_slice(&prefix[..need]);
}

/// Posts spans to an OTLP/HTTP traces endpoint as protobuf.
#[derive(Debug)]
pub(crate) struct ProtoExporter {
    client: reqwest::blocking::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    timeout: Duration,
    resource: Vec<u8>,
    resource_schema: String,
}

impl ProtoExporter {
    /// An exporter to `url` (the full traces URL, `…/v1/traces`) with `headers`.
    pub(crate) fn new(url: String, headers: &[(String, String)], timeout: Duration) -> Result<Self, String> {
        let mut map = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header name {k:?}: {e}"))?;
            let value =
                reqwest::header::HeaderValue::from_str(v).map_err(|e| format!("header {k:?}: {e}"))?;
            map.insert(name, value);
        }
        // The blocking client owns a runtime of its own: it is built (and later dropped)
        // on a plain thread, never inside the caller's async runtime, where that panics.
        let client =
            std::thread::spawn(move || reqwest::blocking::Client::builder().timeout(timeout).build())
                .join()
                .map_err(|_| "building the HTTP client panicked".to_string())?
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            url,
            headers: map,
            timeout,
            resource: encode_resource(&Resource::builder_empty().build()),
            resource_schema: String::new(),
        })
    }

    pub(crate) fn post(&self, body: Vec<u8>) -> OTelSdkResult {
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let sent = self
                .client
                .post(&self.url)
                .headers(self.headers.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                .timeout(left.max(Duration::from_millis(1)))
                .body(body.clone())
                .send();
            let retry = match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if matches!(r.status().as_u16(), 429 | 502 | 503 | 504) => {
                    format!("HTTP {}", r.status())
                }
                Ok(r) => {
                    return Err(OTelSdkError::InternalFailure(format!(
                        "OTLP export refused: HTTP {}",
                        r.status()
                    )));
                }
                Err(e) if e.is_timeout() => return Err(OTelSdkError::Timeout(self.timeout)),
                Err(e) => format!("{e}"),
            };
            let wait = jetrun_core::job::backoff(attempt, Duration::from_millis(100), Duration::from_secs(2));
            if Instant::now() + wait >= deadline {
                return Err(OTelSdkError::InternalFailure(format!(
                    "OTLP export failed after {attempt} attempts: {retry}"
                )));
            }
            std::thread::sleep(wait);
        }
    }

    /// Posts one request holding `scopes`' encoded spans ([`encode_span`]).
    pub(crate) fn export_encoded(
        &self,
        scopes: &[(opentelemetry::InstrumentationScope, Vec<u8>)],
    ) -> OTelSdkResult {
        let len: usize = scopes.iter().map(|(_, b)| b.len() + 64).sum();
        let mut body = Vec::with_capacity(len + self.resource.len() + 16);
        encode_encoded(&self.resource, &self.resource_schema, scopes, &mut body);
        self.post(body)
    }

    /// The resource every request carries.
    pub(crate) fn set_resource(&mut self, resource: &Resource) {
        self.resource = encode_resource(resource);
        self.resource_schema = resource.schema_url().unwrap_or_default().to_string();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use std::borrow::Cow;

    use opentelemetry::trace::{SpanContext, TraceFlags, TraceId};
    use opentelemetry::{InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    use super::*;

    pub(crate) fn sample(i: u8, scope: &InstrumentationScope) -> SpanData {
        let mut events = SpanEvents::default();
        events.events.push(opentelemetry::trace::Event::new(
            "job claimed",
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            vec![KeyValue::new("jetrun.attempt", 2i64), KeyValue::new("ok", true)],
            1,
        ));
        let mut links = SpanLinks::default();
        links.links.push(opentelemetry::trace::Link::new(
            SpanContext::new(
                TraceId::from_bytes([9; 16]),
                SpanId::from_bytes([8; 8]),
                TraceFlags::SAMPLED,
                true,
                TraceState::from_key_value([("vendor", "x")]).unwrap(),
            ),
            vec![KeyValue::new("why", "follows")],
            0,
        ));
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes([i; 16]),
                SpanId::from_bytes([i + 1; 8]),
                TraceFlags::SAMPLED,
                false,
                if i.is_multiple_of(2) {
                    TraceState::NONE
                } else {
                    TraceState::from_key_value([("jr", "1")]).unwrap()
                },
            ),
            parent_span_id: if i == 0 {
                SpanId::INVALID
            } else {
                SpanId::from_bytes([7; 8])
            },
            parent_span_is_remote: i % 2 == 1,
            span_kind: [
                SpanKind::Consumer,
                SpanKind::Producer,
                SpanKind::Internal,
                SpanKind::Server,
            ][usize::from(i % 4)]
            .clone(),
            name: Cow::Owned(format!("process jetrun.job.submit.{{queue}} {i}")),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_500_000_000 + u64::from(i)),
            attributes: vec![
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.message.delivery_count", i64::from(i) - 1),
                KeyValue::new("ratio", 0.25),
                KeyValue::new("empty", ""),
                KeyValue::new("zero", 0i64),
                KeyValue::new("no", false),
                KeyValue::new("long", "x".repeat(300)),
                KeyValue::new("list", Value::Array(Array::String(vec!["a".into(), "b".into()]))),
                KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2]))),
            ],
            dropped_attributes_count: u32::from(i),
            events: if i == 1 { events } else { SpanEvents::default() },
            links: if i == 2 { links } else { SpanLinks::default() },
            status: match i % 3 {
                0 => Status::Unset,
                1 => Status::Ok,
                _ => Status::error("exit 3"),
            },
            instrumentation_scope: scope.clone(),
        }
    }

    fn upstream(resource: &Resource, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
        let r: ResourceAttributesWithSchema = resource.into();
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &r),
        }
    }

    #[test]
    fn encodes_what_the_upstream_conversion_encodes() {
        let resource = Resource::builder_empty()
            .with_service_name("jetrun")
            .with_attribute(KeyValue::new("service.version", "0.1.0"))
            .with_attribute(KeyValue::new("deployment.environment.name", "test"))
            .build();
        let scope = InstrumentationScope::builder("jetrun").build();
        let spans: Vec<SpanData> = (0..6).map(|i| sample(i, &scope)).collect();

        let mut ours = Vec::new();
        encode_request(&encode_resource(&resource), "", &spans, &mut ours);
        let want = upstream(&resource, spans.clone());

        let got = ExportTraceServiceRequest::decode(ours.as_slice()).unwrap();
        assert_eq!(got, want);
        // Byte for byte too: the same fields in the same order, defaults left out.
        assert!(ours == want.encode_to_vec(), "the bytes differ from prost's");
    }

    /// The length of each nested message goes into the room kept for it, or the body moves
    /// to fit: every size class gives prost's bytes (attributes over 127 bytes, spans over
    /// 16 KB, a batch over 16 KB and one under 128 bytes).
    #[test]
    fn lengths_of_every_size_are_canonical() {
        let resource = Resource::builder_empty().with_service_name("jetrun").build();
        let scope = InstrumentationScope::builder("jetrun").build();
        let sizes: [(u8, usize); 5] = [(1, 0), (1, 127), (3, 128), (2, 20_000), (250, 90)];
        for (count, value_len) in sizes {
            let spans: Vec<SpanData> = (0..count)
                .map(|i| {
                    let mut s = sample(i, &scope);
                    s.attributes.push(KeyValue::new("big", "x".repeat(value_len)));
                    s
                })
                .collect();
            let mut ours = Vec::new();
            encode_request(&encode_resource(&resource), "", &spans, &mut ours);
            let want = upstream(&resource, spans);
            assert!(
                ours == want.encode_to_vec(),
                "{count} spans with a {value_len}-byte value: the bytes differ from prost's"
            );
        }
        let mut ours = Vec::new();
        encode_request(&[], "", &[], &mut ours);
        let empty = Resource::builder_empty().build();
        assert!(ours == upstream(&empty, Vec::new()).encode_to_vec());
    }

    #[test]
    fn spans_of_two_scopes_are_grouped_by_scope() {
        let resource = Resource::builder_empty().with_service_name("jetrun").build();
        let a = InstrumentationScope::builder("jetrun").build();
        let b = InstrumentationScope::builder("other").with_version("2").build();
        let spans = vec![sample(0, &a), sample(1, &b), sample(2, &a)];
        let mut ours = Vec::new();
        encode_request(&encode_resource(&resource), "", &spans, &mut ours);
        let got = ExportTraceServiceRequest::decode(ours.as_slice()).unwrap();
        let scopes = &got.resource_spans[0].scope_spans;
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[0].scope.as_ref().unwrap().name, "jetrun");
        assert_eq!(scopes[0].spans.len(), 2);
        assert_eq!(scopes[1].scope.as_ref().unwrap().version, "2");
        assert_eq!(scopes[1].spans.len(), 1);
        assert_eq!(got, upstream(&resource, spans));
    }

    #[test]
    fn an_empty_batch_is_a_request_with_only_the_resource() {
        let resource = Resource::builder_empty().with_service_name("jetrun").build();
        let mut ours = Vec::new();
        encode_request(&encode_resource(&resource), "", &[], &mut ours);
        let got = ExportTraceServiceRequest::decode(ours.as_slice()).unwrap();
        assert_eq!(got.resource_spans.len(), 1);
        assert!(got.resource_spans[0].scope_spans.is_empty());
    }

    /// A receiver on loopback answering each request with the next of `statuses`, and
    /// keeping each request's head and body.
    /// Each request's head and body, as received.
    pub(crate) type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

    pub(crate) fn receiver(statuses: Vec<u16>) -> (String, Seen) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = seen.clone();
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let (mut head, mut len) = (String::new(), 0usize);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        head.push_str(&line);
                    }
                    if head.is_empty() {
                        break;
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    keep.lock().unwrap().push((head, body));
                    let status = statuses.next().unwrap_or(200);
                    let _ = write!(w, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                }
            }
        });
        (url, seen)
    }

    #[test]
    fn posts_protobuf_with_the_configured_headers_and_retries_a_503() {
        let (url, seen) = receiver(vec![503, 200]);
        let headers = vec![("x-api-key".to_string(), "s3cret".to_string())];
        let exporter = ProtoExporter::new(url, &headers, Duration::from_secs(5)).unwrap();
        exporter.post(b"spans".to_vec()).unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "one refusal, one retry");
        for (head, body) in seen.iter() {
            assert!(head.starts_with("POST /v1/traces "), "{head}");
            let head = head.to_ascii_lowercase();
            assert!(head.contains("content-type: application/x-protobuf"), "{head}");
            assert!(head.contains("x-api-key: s3cret"), "{head}");
            assert_eq!(body, b"spans");
        }
    }

    #[test]
    fn a_refusal_that_retrying_cannot_fix_is_an_error_at_once() {
        let (url, seen) = receiver(vec![400]);
        let exporter = ProtoExporter::new(url, &[], Duration::from_secs(5)).unwrap();
        let err = exporter.post(b"spans".to_vec()).unwrap_err();
        assert!(err.to_string().contains("HTTP 400"), "{err}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_bad_header_is_refused_when_the_exporter_is_built() {
        let err = ProtoExporter::new(
            "http://127.0.0.1:9/v1/traces".into(),
            &[("bad name".into(), "v".into())],
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.contains("bad name"), "{err}");
    }
}
