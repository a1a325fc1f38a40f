//! CloudEvents over NATS: the envelope in headers, the JSON data in the body.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use jetrun_core::{Envelope, EnvelopeError, schema};
use serde::Serialize;

/// What went wrong publishing an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The body does not match its type's schema: a producer bug, never retried.
    Invalid,
    /// The body could not be serialised.
    Encode,
    /// JetStream did not acknowledge (unavailable, timed out, no stream): retryable.
    Unavailable,
}

/// Publishing failed.
#[derive(Debug, thiserror::Error)]
#[error("publish {subject}: {kind:?}: {message}")]
pub struct PublishError {
    /// What kind of failure.
    pub kind: PublishErrorKind,
    /// The subject.
    pub subject: String,
    /// Details.
    pub message: String,
}

/// Inserts the header `name: value` unless either is not a valid NATS header (async-nats
/// panics on a CR, LF or other control byte in a `&str` it is given): returns whether it
/// was inserted. Every header built from data goes through here.
pub fn insert_header(h: &mut HeaderMap, name: &str, value: &str) -> bool {
    match (
        name.parse::<async_nats::header::HeaderName>(),
        value.parse::<async_nats::HeaderValue>(),
    ) {
        (Ok(n), Ok(v)) => {
            h.insert(n, v);
            true
        }
        _ => false,
    }
}

/// Converts an envelope to NATS headers.
pub fn to_header_map(env: &Envelope) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in env.to_headers() {
        insert_header(&mut h, &k, &v);
    }
    h
}

/// Reads an envelope from NATS headers.
pub fn from_header_map(h: &HeaderMap) -> Result<Envelope, EnvelopeError> {
    let names: Vec<String> = h.iter().map(|(k, _)| k.to_string()).collect();
    Envelope::from_headers(
        |name| {
            h.iter()
                .find(|(k, _)| k.to_string().eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.first())
                .map(|v| v.as_str().to_string())
        },
        names.iter().map(String::as_str),
    )
}

/// Headers as a plain map (first value of each), for dead letters and logs.
pub fn headers_to_map(h: Option<&HeaderMap>) -> std::collections::BTreeMap<String, String> {
    h.map(|h| {
        h.iter()
            .filter_map(|(k, v)| v.first().map(|v| (k.to_string(), v.as_str().to_string())))
            .collect()
    })
    .unwrap_or_default()
}

/// Publishes validated CloudEvents to JetStream and waits for the ack.
#[derive(Debug, Clone)]
pub struct EventPublisher {
    js: jetstream::Context,
    source: String,
}

impl EventPublisher {
    /// A publisher whose events carry `ce-source: source`.
    pub fn new(js: jetstream::Context, source: impl Into<String>) -> Self {
        Self {
            js,
            source: source.into(),
        }
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// A new envelope of `ty` from this publisher's source.
    pub fn envelope(&self, ty: &str) -> Envelope {
        Envelope::new(ty, self.source.clone())
    }

    /// Validates `data` against `env.ty`'s schema, publishes and waits for the ack.
    /// Returns the stream sequence.
    pub async fn publish<T: Serialize>(
        &self,
        subject: String,
        env: &Envelope,
        data: &T,
    ) -> Result<u64, PublishError> {
        let fut = self.send(subject.clone(), env, data).await?;
        let ack = fut.await.map_err(|e| PublishError {
            kind: PublishErrorKind::Unavailable,
            subject: subject.clone(),
            message: e.to_string(),
        })?;
        Ok(ack.sequence)
    }

    /// Validates and sends without waiting for the ack (for pipelining); await the
    /// returned future to know it is stored.
    pub async fn send<T: Serialize>(
        &self,
        subject: String,
        env: &Envelope,
        data: &T,
    ) -> Result<PublishAckFuture, PublishError> {
        let value = serde_json::to_value(data).map_err(|e| PublishError {
            kind: PublishErrorKind::Encode,
            subject: subject.clone(),
            message: e.to_string(),
        })?;
        schema::validate_value(&env.ty, &value).map_err(|e| PublishError {
            kind: PublishErrorKind::Invalid,
            subject: subject.clone(),
            message: e.to_string(),
        })?;
        let body = serde_json::to_vec(&value).map_err(|e| PublishError {
            kind: PublishErrorKind::Encode,
            subject: subject.clone(),
            message: e.to_string(),
        })?;
        self.send_raw(subject, env, Bytes::from(body)).await
    }

    /// Sends an already-validated body.
    pub async fn send_raw(
        &self,
        subject: String,
        env: &Envelope,
        body: Bytes,
    ) -> Result<PublishAckFuture, PublishError> {
        // A value that cannot be a header (CR, LF, NUL, ...) is the producer's error, not a
        // panic deep in the client.
        env.validate().map_err(|e| PublishError {
            kind: PublishErrorKind::Invalid,
            subject: subject.clone(),
            message: e.to_string(),
        })?;
        self.js
            .publish_with_headers(subject.clone(), to_header_map(env), body)
            .await
            .map_err(|e| PublishError {
                kind: PublishErrorKind::Unavailable,
                subject,
                message: e.to_string(),
            })
    }
}
