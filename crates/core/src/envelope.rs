//! The CloudEvents 1.0 envelope, in NATS binary mode.
//!
//! The message body is the event's JSON data; the attributes travel as headers:
//! `ce-specversion`, `ce-id`, `ce-type`, `ce-source`, `ce-time`, optional `ce-subject`,
//! `Nats-Msg-Id` (= `ce-id`, for server-side dedupe), `traceparent`/`tracestate` (W3C) and
//! `content-type`. This module knows nothing about NATS types: it converts to and from
//! plain `(name, value)` pairs, which the NATS layer maps onto its header map.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// `ce-specversion`
pub const H_SPECVERSION: &str = "ce-specversion";
/// `ce-id`
pub const H_ID: &str = "ce-id";
/// `ce-type`
pub const H_TYPE: &str = "ce-type";
/// `ce-source`
pub const H_SOURCE: &str = "ce-source";
/// `ce-time`
pub const H_TIME: &str = "ce-time";
/// `ce-subject`
pub const H_SUBJECT: &str = "ce-subject";
/// `Nats-Msg-Id`: JetStream's dedupe key.
pub const H_MSG_ID: &str = "Nats-Msg-Id";
/// W3C `traceparent`.
pub const H_TRACEPARENT: &str = "traceparent";
/// W3C `tracestate`.
pub const H_TRACESTATE: &str = "tracestate";
/// `content-type`
pub const H_CONTENT_TYPE: &str = "content-type";
/// The only CloudEvents version spoken.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of every event body.
pub const JSON: &str = "application/json";
/// Longest attribute value carried in a header, in bytes. NATS and HTTP bound the total
/// header size; this keeps one attribute from taking all of it.
pub const MAX_ATTRIBUTE_LEN: usize = 1024;
/// Longest `tracestate` (W3C Trace Context allows 512 characters).
pub const MAX_TRACESTATE_LEN: usize = 512;
/// Longest extension attribute name (CloudEvents 1.0 recommends at most 20).
pub const MAX_EXTENSION_NAME_LEN: usize = 20;
/// Attribute names an extension may not take: the context attributes.
pub const RESERVED_NAMES: &[&str] = &[
    "specversion",
    "id",
    "type",
    "source",
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// Whether `v` can travel as a header value: visible ASCII and space only (no CR, LF,
/// NUL or other control byte, which async-nats refuses by panicking and HTTP forbids),
/// at most `max` bytes.
pub fn valid_header_value(v: &str, max: usize) -> bool {
    v.len() <= max && v.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Whether `name` is a valid CloudEvents extension attribute name: 1 to
/// [`MAX_EXTENSION_NAME_LEN`] of `a-z 0-9`, and not a context attribute.
pub fn valid_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EXTENSION_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !RESERVED_NAMES.contains(&name)
}

/// `v` made safe for a header: every byte outside visible ASCII and space is
/// percent-encoded and the result cut to `max` bytes. Only a last line of defence: what
/// producers publish is checked with [`Envelope::validate`] first.
fn header_safe(v: &str, max: usize) -> String {
    if valid_header_value(v, max) {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len().min(max));
    for b in v.bytes() {
        let piece = if (0x20..=0x7e).contains(&b) {
            char::from(b).to_string()
        } else {
            format!("%{b:02X}")
        };
        if out.len() + piece.len() > max {
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// A CloudEvent's attributes. The data travels separately as the message body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `ce-id`: unique per event; also the `Nats-Msg-Id`.
    pub id: String,
    /// `ce-type`, e.g. `dev.jetrun.job.submitted.v1`.
    #[serde(rename = "type")]
    pub ty: String,
    /// `ce-source`: a URI-reference naming the producer.
    pub source: String,
    /// `ce-time`.
    pub time: Timestamp,
    /// `ce-subject`: what the event is about (a job id, a service), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// W3C `traceparent`, when the producer was traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// Other `ce-*` extension attributes, by name without the `ce-` prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, String>,
}

/// What is wrong with a set of headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeErrorKind {
    /// A required attribute is absent.
    Missing,
    /// `ce-specversion` is not `1.0`.
    UnsupportedVersion,
    /// `ce-time` is not RFC 3339.
    BadTime,
    /// `traceparent` is not a W3C traceparent.
    BadTraceparent,
    /// An attribute is empty.
    Empty,
    /// A value holds a byte that cannot travel in a header (CR, LF, NUL, another control
    /// byte or non-ASCII), or is longer than [`MAX_ATTRIBUTE_LEN`].
    InvalidValue,
    /// An extension attribute name is not 1-20 of `a-z 0-9` or is a reserved name.
    InvalidName,
}

/// An envelope could not be read from headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CloudEvent header {header}: {kind:?}")]
pub struct EnvelopeError {
    /// What is wrong.
    pub kind: EnvelopeErrorKind,
    /// The header at fault.
    pub header: &'static str,
}

impl Envelope {
    /// A new event of type `ty` from `source`, with a fresh time-ordered id.
    pub fn new(ty: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            ty: ty.into(),
            source: source.into(),
            time: crate::now(),
            subject: None,
            traceparent: None,
            tracestate: None,
            extensions: BTreeMap::new(),
        }
    }

    /// Sets `ce-id` (and so `Nats-Msg-Id`): use a stable id to make a publish idempotent.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets `ce-subject`.
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the W3C trace context.
    pub fn with_trace(mut self, traceparent: Option<String>, tracestate: Option<String>) -> Self {
        self.traceparent = traceparent;
        self.tracestate = tracestate;
        self
    }

    /// The trace id (32 hex digits) of `traceparent`, if any.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(trace_id_of)
    }

    /// Checks that every attribute can travel as a header: `id`, `type` and `source`
    /// non-empty, every value visible ASCII and space within [`MAX_ATTRIBUTE_LEN`]
    /// (`tracestate` [`MAX_TRACESTATE_LEN`]), `traceparent` W3C-shaped and every
    /// extension name valid ([`valid_extension_name`]). Producers call this before
    /// publishing so a hostile value is refused with an error, never a panic.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        let err = |kind, header| Err(EnvelopeError { kind, header });
        for (header, v) in [(H_ID, &self.id), (H_TYPE, &self.ty), (H_SOURCE, &self.source)] {
            if v.trim().is_empty() {
                return err(EnvelopeErrorKind::Empty, header);
            }
            if !valid_header_value(v, MAX_ATTRIBUTE_LEN) {
                return err(EnvelopeErrorKind::InvalidValue, header);
            }
        }
        if let Some(s) = &self.subject
            && !valid_header_value(s, MAX_ATTRIBUTE_LEN)
        {
            return err(EnvelopeErrorKind::InvalidValue, H_SUBJECT);
        }
        if let Some(t) = &self.traceparent
            && trace_id_of(t).is_none()
        {
            return err(EnvelopeErrorKind::BadTraceparent, H_TRACEPARENT);
        }
        if let Some(t) = &self.tracestate
            && !valid_header_value(t, MAX_TRACESTATE_LEN)
        {
            return err(EnvelopeErrorKind::InvalidValue, H_TRACESTATE);
        }
        for (k, v) in &self.extensions {
            if !valid_extension_name(k) {
                return err(EnvelopeErrorKind::InvalidName, "ce-*");
            }
            if !valid_header_value(v, MAX_ATTRIBUTE_LEN) {
                return err(EnvelopeErrorKind::InvalidValue, "ce-*");
            }
        }
        Ok(())
    }

    /// The headers that carry this envelope, in a stable order. Never yields a name or
    /// value a NATS or HTTP header map refuses: should [`Envelope::validate`] have been
    /// skipped, bad bytes are percent-encoded, values cut to their bound and extensions
    /// with an invalid name left out.
    pub fn to_headers(&self) -> Vec<(String, String)> {
        let v = |s: &str| header_safe(s, MAX_ATTRIBUTE_LEN);
        let mut h = vec![
            (H_SPECVERSION.to_string(), SPEC_VERSION.to_string()),
            (H_ID.to_string(), v(&self.id)),
            (H_TYPE.to_string(), v(&self.ty)),
            (H_SOURCE.to_string(), v(&self.source)),
            (
                H_TIME.to_string(),
                self.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
        ];
        if let Some(s) = &self.subject {
            h.push((H_SUBJECT.to_string(), v(s)));
        }
        h.push((H_MSG_ID.to_string(), v(&self.id)));
        if let Some(t) = &self.traceparent {
            h.push((H_TRACEPARENT.to_string(), v(t)));
        }
        if let Some(t) = &self.tracestate {
            h.push((H_TRACESTATE.to_string(), header_safe(t, MAX_TRACESTATE_LEN)));
        }
        h.push((H_CONTENT_TYPE.to_string(), JSON.to_string()));
        for (k, val) in &self.extensions {
            if valid_extension_name(k) {
                h.push((format!("ce-{k}"), v(val)));
            }
        }
        h
    }

    /// Reads an envelope from headers. `get` looks a header up by name
    /// (case-insensitively, as HTTP and NATS header maps do); `names` lists every header
    /// name present, for the extension attributes.
    pub fn from_headers<'a, F>(
        get: F,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, EnvelopeError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let req = |h: &'static str| -> Result<String, EnvelopeError> {
            match get(h) {
                None => Err(EnvelopeError {
                    kind: EnvelopeErrorKind::Missing,
                    header: h,
                }),
                Some(v) if v.trim().is_empty() => Err(EnvelopeError {
                    kind: EnvelopeErrorKind::Empty,
                    header: h,
                }),
                Some(v) => Ok(v),
            }
        };
        if req(H_SPECVERSION)? != SPEC_VERSION {
            return Err(EnvelopeError {
                kind: EnvelopeErrorKind::UnsupportedVersion,
                header: H_SPECVERSION,
            });
        }
        let time = chrono::DateTime::parse_from_rfc3339(&req(H_TIME)?)
            .map_err(|_| EnvelopeError {
                kind: EnvelopeErrorKind::BadTime,
                header: H_TIME,
            })?
            .with_timezone(&chrono::Utc);
        let traceparent = get(H_TRACEPARENT);
        if let Some(tp) = &traceparent
            && trace_id_of(tp).is_none()
        {
            return Err(EnvelopeError {
                kind: EnvelopeErrorKind::BadTraceparent,
                header: H_TRACEPARENT,
            });
        }
        let mut extensions = BTreeMap::new();
        for name in names {
            let lower = name.to_ascii_lowercase();
            if let Some(ext) = lower.strip_prefix("ce-")
                && !matches!(ext, "specversion" | "id" | "type" | "source" | "time" | "subject")
                && let Some(v) = get(name)
            {
                if !valid_extension_name(ext) {
                    return Err(EnvelopeError {
                        kind: EnvelopeErrorKind::InvalidName,
                        header: "ce-*",
                    });
                }
                extensions.insert(ext.to_string(), v);
            }
        }
        let env = Self {
            id: req(H_ID)?,
            ty: req(H_TYPE)?,
            source: req(H_SOURCE)?,
            time,
            subject: get(H_SUBJECT),
            traceparent,
            tracestate: get(H_TRACESTATE),
            extensions,
        };
        // Whatever is read can be written again (callbacks and replays copy envelopes).
        env.validate()?;
        Ok(env)
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "00000000000000000000000000000000"
    {
        Some(parts[1])
    } else {
        None
    }
}

/// A fresh W3C traceparent for a new trace (sampled), for producers that have none.
pub fn new_traceparent() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let trace: u128 = rng.random::<u128>().max(1);
    let span: u64 = rng.random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(h: &[(String, String)]) -> impl Fn(&str) -> Option<String> + '_ {
        move |name| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn round_trip_through_headers() {
        let mut e = Envelope::new("dev.jetrun.job.submitted.v1", "/cli")
            .with_subject("job-1")
            .with_trace(Some(new_traceparent()), Some("vendor=x".into()));
        e.extensions.insert("tenant".into(), "acme".into());
        let h = e.to_headers();
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        let back = Envelope::from_headers(lookup(&h), names).unwrap();
        // time is serialised with microsecond precision
        assert_eq!(back.id, e.id);
        assert_eq!(back.ty, e.ty);
        assert_eq!(back.subject, e.subject);
        assert_eq!(back.traceparent, e.traceparent);
        assert_eq!(back.tracestate, e.tracestate);
        assert_eq!(back.extensions, e.extensions);
        assert_eq!((back.time - e.time).num_microseconds().unwrap().abs(), 0);
        assert!(h.iter().any(|(k, v)| k == H_MSG_ID && v == &e.id));
        assert_eq!(back.trace_id().unwrap().len(), 32);
    }

    #[test]
    fn missing_and_bad_headers_are_typed() {
        let e = Envelope::new("t", "s");
        let mut h = e.to_headers();
        h.retain(|(k, _)| k != H_SOURCE);
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        let err = Envelope::from_headers(lookup(&h), names).unwrap_err();
        assert_eq!(err.kind, EnvelopeErrorKind::Missing);
        assert_eq!(err.header, H_SOURCE);

        let mut h = e.to_headers();
        h[0].1 = "0.3".into();
        let err = Envelope::from_headers(lookup(&h), Vec::<&str>::new()).unwrap_err();
        assert_eq!(err.kind, EnvelopeErrorKind::UnsupportedVersion);

        let mut h = e.to_headers();
        h.push((H_TRACEPARENT.into(), "garbage".into()));
        let err = Envelope::from_headers(lookup(&h), Vec::<&str>::new()).unwrap_err();
        assert_eq!(err.kind, EnvelopeErrorKind::BadTraceparent);
    }

    #[test]
    fn hostile_values_are_refused_and_never_reach_a_header() {
        let base = Envelope::new("dev.jetrun.job.submitted.v1", "/cli");
        let hostile = ["a\r\nNats-Msg-Id: x", "a\nb", "nul\0", "tab\t", "caf\u{e9}"];
        for bad in hostile {
            let mut e = base.clone().with_subject(bad);
            assert_eq!(
                e.validate().unwrap_err().kind,
                EnvelopeErrorKind::InvalidValue,
                "{bad:?}"
            );
            e.subject = None;
            e.source = bad.into();
            assert_eq!(e.validate().unwrap_err().header, H_SOURCE);
            let mut e = base.clone();
            e.extensions.insert("tenant".into(), bad.into());
            assert_eq!(e.validate().unwrap_err().kind, EnvelopeErrorKind::InvalidValue);
            let mut e = base.clone();
            e.tracestate = Some(bad.into());
            assert!(e.validate().is_err());
            // Even unvalidated, the headers are safe.
            let mut e = base.clone().with_subject(bad);
            e.extensions.insert("tenant".into(), bad.into());
            e.extensions.insert("Bad-Name".into(), "x".into());
            for (k, v) in e.to_headers() {
                assert!(valid_header_value(&v, MAX_ATTRIBUTE_LEN), "{k}: {v:?}");
                assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{k}");
            }
        }
        let mut e = base.clone().with_subject("x".repeat(MAX_ATTRIBUTE_LEN + 1));
        assert_eq!(e.validate().unwrap_err().kind, EnvelopeErrorKind::InvalidValue);
        assert!(e.to_headers().iter().all(|(_, v)| v.len() <= MAX_ATTRIBUTE_LEN));
        e.subject = Some("x".repeat(MAX_ATTRIBUTE_LEN));
        assert_eq!(e.validate(), Ok(()));
        for name in ["", "Upper", "with-dash", "type", "data", "abcdefghijklmnopqrstu"] {
            let mut e = base.clone();
            e.extensions.insert(name.into(), "v".into());
            assert_eq!(
                e.validate().unwrap_err().kind,
                EnvelopeErrorKind::InvalidName,
                "{name:?}"
            );
            assert_eq!(e.to_headers(), base.to_headers(), "{name:?} is left out");
        }
        let mut e = base.clone();
        e.traceparent = Some("00-zz\r\n".into());
        assert_eq!(e.validate().unwrap_err().kind, EnvelopeErrorKind::BadTraceparent);
        e.id = " ".into();
        assert_eq!(e.validate().unwrap_err().kind, EnvelopeErrorKind::Empty);
    }

    #[test]
    fn headers_with_bad_values_or_extension_names_are_refused() {
        let e = Envelope::new("t", "s");
        let mut h = e.to_headers();
        h.push(("ce-Bad_Name".into(), "v".into()));
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        let err = Envelope::from_headers(lookup(&h), names).unwrap_err();
        assert_eq!(err.kind, EnvelopeErrorKind::InvalidName);
        let mut h = e.to_headers();
        h.push((H_SUBJECT.into(), "caf\u{e9}".into()));
        let err = Envelope::from_headers(lookup(&h), Vec::<&str>::new()).unwrap_err();
        assert_eq!(err.kind, EnvelopeErrorKind::InvalidValue);
    }

    #[test]
    fn traceparent_parsing() {
        assert!(trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
        assert!(trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(trace_id_of("00-4bf92f-00f067aa0ba902b7-01").is_none());
        assert!(trace_id_of(&new_traceparent()).is_some());
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn lookup(h: &[(String, String)]) -> impl Fn(&str) -> Option<String> + '_ {
        move |name| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        }
    }

    proptest! {
        #[test]
        fn any_envelope_round_trips(
            id in "[A-Za-z0-9._-]{1,64}",
            ty in "[a-z][a-z0-9.]{0,40}",
            source in "/[a-z0-9/_-]{0,40}",
            subject in proptest::option::of("[ -~]{1,40}"),
            ext in proptest::collection::btree_map("[a-z]{1,10}", "[ -~]{1,20}", 0..4),
        ) {
            let mut e = Envelope::new(ty, source).with_id(id).with_trace(Some(new_traceparent()), None);
            e.subject = subject.filter(|s| !s.trim().is_empty());
            e.extensions = ext
                .into_iter()
                .filter(|(k, _)| valid_extension_name(k))
                .collect();
            let h = e.to_headers();
            let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
            let back = Envelope::from_headers(lookup(&h), names).unwrap();
            prop_assert_eq!(&back.id, &e.id);
            prop_assert_eq!(&back.ty, &e.ty);
            prop_assert_eq!(&back.source, &e.source);
            prop_assert_eq!(&back.subject, &e.subject);
            prop_assert_eq!(&back.extensions, &e.extensions);
            prop_assert_eq!(back.time.timestamp_micros(), e.time.timestamp_micros());
        }

        #[test]
        fn any_envelope_yields_valid_header_values(
            id in any::<String>(),
            subject in any::<String>(),
            ext in proptest::collection::btree_map(any::<String>(), any::<String>(), 0..4),
        ) {
            let mut e = Envelope::new("t", "/s").with_id(id).with_subject(subject);
            e.extensions = ext;
            for (k, v) in e.to_headers() {
                prop_assert!(valid_header_value(&v, MAX_ATTRIBUTE_LEN), "{}: {:?}", k, v);
                prop_assert!(!k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
            }
        }

        #[test]
        fn arbitrary_headers_never_panic(h in proptest::collection::vec(("[ -~]{0,20}", "[ -~]{0,40}"), 0..12)) {
            let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
            let _ = Envelope::from_headers(lookup(&h), names);
        }
    }
}
