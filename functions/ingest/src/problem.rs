//! RFC 9457 problem details: every error answer is `application/problem+json` with a
//! stable `type` URI per error kind, so clients branch on the kind, never on the text.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Base of every problem `type` URI.
pub const PROBLEM_BASE: &str = "https://jetrun.dev/problems/";

/// The content type of problem answers.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every kind of error the HTTP surface answers with. The slug (see
/// [`ProblemKind::slug`]) is the last segment of the `type` URI and never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// No `X-Hub-Signature-256` header (401).
    MissingSignature,
    /// The signature header is not `sha256=<64 hex digits>` (401).
    MalformedSignature,
    /// The signature matches none of the configured secrets (401).
    InvalidSignature,
    /// No or unknown bearer token (401).
    Unauthorized,
    /// The token's tenant may not do this (403).
    Forbidden,
    /// No such resource (404).
    NotFound,
    /// The scale request names a service with no spec (404).
    UnknownService,
    /// The body is larger than the configured bound (413).
    PayloadTooLarge,
    /// A required header is missing or malformed (400).
    BadHeader,
    /// The body is not JSON, not UTF-8, or nests too deep (400).
    InvalidJson,
    /// A CloudEvent attribute cannot travel as a header (CR, LF, NUL, control or
    /// non-ASCII characters, too long), an extension name is invalid, or the type is not
    /// one of its family (400).
    BadAttribute,
    /// The body is JSON but does not match its schema (422).
    ValidationFailed,
    /// The CloudEvent type has no schema (422).
    UnknownEventType,
    /// The CloudEvent type exists but is not accepted over HTTP (422).
    EventTypeNotAccepted,
    /// The service's spec says `scalable: false` (409).
    NotScalable,
    /// The idempotency key belongs to another tenant's job (409).
    IdempotencyConflict,
    /// Too many requests for this tenant (429, with `Retry-After`).
    RateLimited,
    /// JetStream did not answer in time (503, with `Retry-After`).
    Unavailable,
    /// JetStream is out of space: insufficient resources, a stream's or the account's
    /// maximum bytes (503, with a longer `Retry-After`: freeing space takes an operator
    /// or an expiry). 503 rather than 507 so that every client that retries 503 retries
    /// this too; the `type` tells the two apart.
    StoreFull,
    /// A bug or a corrupt record (500).
    Internal,
}

impl ProblemKind {
    /// The stable slug, the last segment of the `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            ProblemKind::MissingSignature => "missing-signature",
            ProblemKind::MalformedSignature => "malformed-signature",
            ProblemKind::InvalidSignature => "invalid-signature",
            ProblemKind::Unauthorized => "unauthorized",
            ProblemKind::Forbidden => "forbidden",
            ProblemKind::NotFound => "not-found",
            ProblemKind::UnknownService => "unknown-service",
            ProblemKind::PayloadTooLarge => "payload-too-large",
            ProblemKind::BadHeader => "bad-header",
            ProblemKind::InvalidJson => "invalid-json",
            ProblemKind::BadAttribute => "bad-attribute",
            ProblemKind::ValidationFailed => "validation-failed",
            ProblemKind::UnknownEventType => "unknown-event-type",
            ProblemKind::EventTypeNotAccepted => "event-type-not-accepted",
            ProblemKind::NotScalable => "not-scalable",
            ProblemKind::IdempotencyConflict => "idempotency-conflict",
            ProblemKind::RateLimited => "rate-limited",
            ProblemKind::Unavailable => "unavailable",
            ProblemKind::StoreFull => "store-full",
            ProblemKind::Internal => "internal",
        }
    }

    /// The HTTP status of this kind.
    pub fn status(self) -> StatusCode {
        match self {
            ProblemKind::MissingSignature
            | ProblemKind::MalformedSignature
            | ProblemKind::InvalidSignature
            | ProblemKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ProblemKind::Forbidden => StatusCode::FORBIDDEN,
            ProblemKind::NotFound | ProblemKind::UnknownService => StatusCode::NOT_FOUND,
            ProblemKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemKind::BadHeader | ProblemKind::InvalidJson | ProblemKind::BadAttribute => {
                StatusCode::BAD_REQUEST
            }
            ProblemKind::ValidationFailed
            | ProblemKind::UnknownEventType
            | ProblemKind::EventTypeNotAccepted => StatusCode::UNPROCESSABLE_ENTITY,
            ProblemKind::NotScalable | ProblemKind::IdempotencyConflict => StatusCode::CONFLICT,
            ProblemKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProblemKind::Unavailable | ProblemKind::StoreFull => StatusCode::SERVICE_UNAVAILABLE,
            ProblemKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short human title (constant per kind, as RFC 9457 asks).
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::MissingSignature => "Missing webhook signature",
            ProblemKind::MalformedSignature => "Malformed webhook signature",
            ProblemKind::InvalidSignature => "Invalid webhook signature",
            ProblemKind::Unauthorized => "Unauthorized",
            ProblemKind::Forbidden => "Forbidden",
            ProblemKind::NotFound => "Not found",
            ProblemKind::UnknownService => "Unknown service",
            ProblemKind::PayloadTooLarge => "Payload too large",
            ProblemKind::BadHeader => "Missing or malformed header",
            ProblemKind::InvalidJson => "Body is not valid JSON",
            ProblemKind::BadAttribute => "Invalid CloudEvent attribute",
            ProblemKind::ValidationFailed => "Body does not match its schema",
            ProblemKind::UnknownEventType => "Unknown event type",
            ProblemKind::EventTypeNotAccepted => "Event type not accepted over HTTP",
            ProblemKind::NotScalable => "Service is not scalable",
            ProblemKind::IdempotencyConflict => "Idempotency key conflict",
            ProblemKind::RateLimited => "Rate limit exceeded",
            ProblemKind::Unavailable => "JetStream unavailable",
            ProblemKind::StoreFull => "JetStream store full",
            ProblemKind::Internal => "Internal error",
        }
    }

    /// The full `type` URI.
    pub fn type_uri(self) -> String {
        format!("{PROBLEM_BASE}{}", self.slug())
    }
}

/// One schema violation, in a `validation-failed` problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON pointer into the body.
    pub pointer: String,
    /// What is wrong.
    pub reason: String,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", kind.slug())]
pub struct Problem {
    /// The kind (decides type, title and status).
    pub kind: ProblemKind,
    /// What happened, for people.
    pub detail: String,
    /// Seconds the client should wait (sent as `Retry-After`).
    pub retry_after: Option<u64>,
    /// Schema violations, for `validation-failed`.
    pub errors: Vec<FieldError>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    ty: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

impl Problem {
    /// A problem of `kind`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            retry_after: None,
            errors: Vec::new(),
        }
    }

    /// Adds `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// JetStream unavailable, retry in a second; or, when JetStream's answer says it is
    /// out of space ([`jetrun_nats::store::is_store_full`]), [`Self::store_full`].
    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        let detail = detail.to_string();
        if jetrun_nats::store::is_store_full(&detail) {
            return Self::store_full(detail);
        }
        Self::new(ProblemKind::Unavailable, detail).retry_after(1)
    }

    /// Seconds a client waits after `store-full`.
    pub const STORE_FULL_RETRY_AFTER: u64 = 30;

    /// JetStream is out of space: retry after [`Self::STORE_FULL_RETRY_AFTER`] seconds.
    pub fn store_full(detail: impl std::fmt::Display) -> Self {
        Self::new(
            ProblemKind::StoreFull,
            format!("JetStream has no space for this write: {detail}"),
        )
        .retry_after(Self::STORE_FULL_RETRY_AFTER)
    }

    /// A `validation-failed` problem from a schema error.
    pub fn schema(e: &jetrun_core::SchemaError) -> Self {
        let kind = match e.kind {
            jetrun_core::schema::SchemaErrorKind::NotJson => ProblemKind::InvalidJson,
            jetrun_core::schema::SchemaErrorKind::UnknownType => ProblemKind::UnknownEventType,
            _ => ProblemKind::ValidationFailed,
        };
        Self {
            kind,
            detail: e.to_string(),
            retry_after: None,
            errors: e
                .errors
                .iter()
                .map(|v| FieldError {
                    pointer: v.pointer.clone(),
                    reason: v.reason.clone(),
                })
                .collect(),
        }
    }
}

impl Problem {
    /// A `validation-failed` problem listing every bound a job spec breaks.
    pub fn spec(e: &jetrun_core::SpecError) -> Self {
        Self {
            kind: ProblemKind::ValidationFailed,
            detail: e.to_string(),
            retry_after: None,
            errors: e
                .violations
                .iter()
                .map(|v| FieldError {
                    pointer: v.pointer.clone(),
                    reason: v.reason.clone(),
                })
                .collect(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let body = Body {
            ty: self.kind.type_uri(),
            title: self.kind.title(),
            status: status.as_u16(),
            detail: &self.detail,
            errors: &self.errors,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (status, bytes).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_full_store_is_its_own_problem_not_unavailable() {
        let p = Problem::unavailable("publish failed: insufficient resources (code 503, error code 10023)");
        assert_eq!(p.kind, ProblemKind::StoreFull);
        assert_eq!(p.kind.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(p.retry_after, Some(Problem::STORE_FULL_RETRY_AFTER));
        assert_eq!(p.kind.type_uri(), "https://jetrun.dev/problems/store-full");
        let r = p.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "30");
        let u = Problem::unavailable("request timed out");
        assert_eq!(u.kind, ProblemKind::Unavailable);
        assert_eq!(u.retry_after, Some(1));
    }
}
