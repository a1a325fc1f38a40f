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

    /// The headers that carry this envelope, in a stable order.
    pub fn to_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            (H_SPECVERSION.to_string(), SPEC_VERSION.to_string()),
            (H_ID.to_string(), self.id.clone()),
            (H_TYPE.to_string(), self.ty.clone()),
            (H_SOURCE.to_string(), self.source.clone()),
            (
                H_TIME.to_string(),
                self.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
        ];
        if let Some(s) = &self.subject {
            h.push((H_SUBJECT.to_string(), s.clone()));
        }
        h.push((H_MSG_ID.to_string(), self.id.clone()));
        if let Some(t) = &self.traceparent {
            h.push((H_TRACEPARENT.to_string(), t.clone()));
        }
        if let Some(t) = &self.tracestate {
            h.push((H_TRACESTATE.to_string(), t.clone()));
        }
        h.push((H_CONTENT_TYPE.to_string(), JSON.to_string()));
        for (k, v) in &self.extensions {
            h.push((format!("ce-{k}"), v.clone()));
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
                extensions.insert(ext.to_string(), v);
            }
        }
        Ok(Self {
            id: req(H_ID)?,
            ty: req(H_TYPE)?,
            source: req(H_SOURCE)?,
            time,
            subject: get(H_SUBJECT),
            traceparent,
            tracestate: get(H_TRACESTATE),
            extensions,
        })
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
                .filter(|(k, _)| !matches!(k.as_str(), "specversion" | "id" | "type" | "source" | "time" | "subject"))
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
        fn arbitrary_headers_never_panic(h in proptest::collection::vec(("[ -~]{0,20}", "[ -~]{0,40}"), 0..12)) {
            let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
            let _ = Envelope::from_headers(lookup(&h), names);
        }
    }
}
