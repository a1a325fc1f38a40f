//! `POST /webhooks/github`: verify, check, dedupe, publish, answer after the PubAck.
//!
//! Order matters: the body is read with a bound (413 past it, refused on
//! `Content-Length` before reading anything), the HMAC is checked over the raw bytes
//! before any parsing, then headers and JSON are checked, then the raw bytes are
//! published with `Nats-Msg-Id` = the delivery id (JetStream dedupes redeliveries within
//! its window), and after the PubAck the dedupe key is created (72 h, longer than GitHub's
//! redelivery window; a later redelivery finds it, and its copy is removed) and 2xx
//! answered. A failure before the ack answers 503 and stores no dedupe
//! key, so GitHub's redelivery goes through.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use jetrun_core::Envelope;
use jetrun_core::schema::types;
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::auth::{SignatureError, WebhookSecrets};
use crate::problem::{Problem, ProblemKind};
use crate::{Config, Ingest, read_body};

/// `X-Hub-Signature-256`
pub const H_SIGNATURE: &str = "x-hub-signature-256";
/// `X-GitHub-Event`
pub const H_EVENT: &str = "x-github-event";
/// `X-GitHub-Delivery`
pub const H_DELIVERY: &str = "x-github-delivery";
/// `X-GitHub-Hook-ID`
pub const H_HOOK_ID: &str = "x-github-hook-id";

/// GitHub webhook event names known to this build (the `X-GitHub-Event` values). An
/// event outside this list is answered and not published, unless the allow-list names
/// it explicitly.
pub const KNOWN_EVENTS: &[&str] = &[
    "branch_protection_configuration",
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "code_scanning_alert",
    "commit_comment",
    "create",
    "custom_property",
    "custom_property_values",
    "delete",
    "dependabot_alert",
    "deploy_key",
    "deployment",
    "deployment_protection_rule",
    "deployment_review",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "github_app_authorization",
    "gollum",
    "installation",
    "installation_repositories",
    "installation_target",
    "issue_comment",
    "issues",
    "label",
    "marketplace_purchase",
    "member",
    "membership",
    "merge_group",
    "meta",
    "milestone",
    "org_block",
    "organization",
    "package",
    "page_build",
    "personal_access_token_request",
    "ping",
    "project",
    "project_card",
    "project_column",
    "projects_v2",
    "projects_v2_item",
    "projects_v2_status_update",
    "public",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "pull_request_review_thread",
    "push",
    "registry_package",
    "release",
    "repository",
    "repository_advisory",
    "repository_dispatch",
    "repository_import",
    "repository_ruleset",
    "repository_vulnerability_alert",
    "secret_scanning_alert",
    "secret_scanning_alert_location",
    "secret_scanning_scan",
    "security_advisory",
    "security_and_analysis",
    "sponsorship",
    "star",
    "status",
    "sub_issues",
    "team",
    "team_add",
    "watch",
    "workflow_dispatch",
    "workflow_job",
    "workflow_run",
];

/// A delivery that passed every check and is to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `X-GitHub-Event`.
    pub event: String,
    /// `X-GitHub-Delivery`.
    pub id: String,
    /// The payload's `action`, if any.
    pub action: Option<String>,
    /// What the event is about: the repository's full name, else the organization.
    pub subject: Option<String>,
    /// `X-GitHub-Hook-ID`, if numeric.
    pub hook_id: Option<String>,
    /// The raw body, unchanged.
    pub body: Bytes,
}

/// What to do with a request after the checks that need no I/O.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Publish it.
    Publish(Delivery),
    /// A `ping`: answer `pong`, publish nothing.
    Ping {
        /// The delivery id.
        id: String,
    },
    /// Answer 200 with this reason and publish nothing (unknown or disallowed event).
    Ignore {
        /// The delivery id.
        id: String,
        /// The event.
        event: String,
        /// Why.
        reason: &'static str,
    },
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    h.get(name).map(|v| v.as_bytes())
}

fn valid_delivery_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Every check that needs no I/O, in order: signature over the raw bytes (unless
/// `skip_signature`), event and delivery headers, allow-list, then JSON and schema.
pub fn inspect(
    config: &Config,
    secrets: &WebhookSecrets,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Verdict, Problem> {
    let skip_signature = config.insecure_dev && secrets.is_empty();
    if !skip_signature {
        secrets.verify(header(headers, H_SIGNATURE), &body).map_err(|e| {
            let kind = match e {
                SignatureError::Missing => ProblemKind::MissingSignature,
                SignatureError::Malformed => ProblemKind::MalformedSignature,
                _ => ProblemKind::InvalidSignature,
            };
            Problem::new(kind, e.to_string())
        })?;
    }
    let bad = |d: &str| Problem::new(ProblemKind::BadHeader, d.to_string());
    let event = header(headers, H_EVENT)
        .and_then(|v| std::str::from_utf8(v).ok())
        .ok_or_else(|| bad("missing X-GitHub-Event"))?;
    if jetrun_core::names::validate_token(event).is_err() {
        return Err(bad("X-GitHub-Event is not a valid event name"));
    }
    let id = header(headers, H_DELIVERY)
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| valid_delivery_id(v))
        .ok_or_else(|| bad("missing or malformed X-GitHub-Delivery"))?;
    if event == "ping" {
        return Ok(Verdict::Ping { id: id.to_string() });
    }
    let allowed = &config.github_events;
    if allowed.is_empty() {
        if !KNOWN_EVENTS.contains(&event) {
            return Ok(Verdict::Ignore {
                id: id.to_string(),
                event: event.to_string(),
                reason: "unknown event",
            });
        }
    } else if !allowed.iter().any(|a| a == event) {
        return Ok(Verdict::Ignore {
            id: id.to_string(),
            event: event.to_string(),
            reason: "event not in the allow-list",
        });
    }
    check_text(&body, config.max_json_depth)?;
    let peeked = peek(&body)?;
    // These become CloudEvent headers: a value a header cannot carry is refused here
    // rather than published (or, before, panicking in the NATS client).
    let header_safe = |v: &Option<String>| {
        v.as_deref().is_none_or(|v| {
            jetrun_core::envelope::valid_header_value(v, jetrun_core::envelope::MAX_ATTRIBUTE_LEN)
        })
    };
    if !header_safe(&peeked.action)
        || !header_safe(&peeked.repository_full_name)
        || !header_safe(&peeked.organization_login)
    {
        return Err(Problem::new(
            ProblemKind::ValidationFailed,
            "action, repository.full_name and organization.login must be visible ASCII (they travel as headers)",
        ));
    }
    let subject = peeked.repository_full_name.or(peeked.organization_login);
    let action = peeked.action;
    let hook_id = header(headers, H_HOOK_ID)
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string);
    Ok(Verdict::Publish(Delivery {
        event: event.to_string(),
        id: id.to_string(),
        action,
        subject,
        hook_id,
        body,
    }))
}

/// Checks what the one-pass [`peek`] does not: the body is UTF-8 (serde skips ignored
/// strings without decoding them, so invalid bytes would pass and be dead-lettered by
/// every consumer) and arrays and objects nest at most `max_depth` deep (a consumer
/// building a tree would recurse that far). One byte scan, no allocation.
pub fn check_text(body: &[u8], max_depth: usize) -> Result<(), Problem> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(Problem::new(
            ProblemKind::InvalidJson,
            format!(
                "{} payload is not UTF-8 (invalid byte at offset {})",
                types::GITHUB_WEBHOOK,
                e.valid_up_to()
            ),
        ));
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(Problem::new(
                        ProblemKind::InvalidJson,
                        format!(
                            "{} payload nests deeper than {max_depth} levels",
                            types::GITHUB_WEBHOOK
                        ),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// What ingest reads from a payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peeked {
    /// `action`.
    pub action: Option<String>,
    /// `repository.full_name`.
    pub repository_full_name: Option<String>,
    /// `organization.login`.
    pub organization_login: Option<String>,
}

/// Checks a payload the way `schemas/github-webhook.json` does (a JSON object; `action`
/// a string; `repository`, `sender`, `installation` objects) and reads the few fields
/// ingest needs, in one pass that skips everything else without building a JSON tree
/// (payloads are often tens of kilobytes). A test keeps it in step with the schema.
pub fn peek(body: &[u8]) -> Result<Peeked, Problem> {
    use serde::de::Deserializer as _;
    let mut de = serde_json::Deserializer::from_slice(body);
    let invalid = |e: serde_json::Error| {
        let kind = if e.is_syntax() || e.is_eof() {
            ProblemKind::InvalidJson
        } else {
            ProblemKind::ValidationFailed
        };
        Problem::new(kind, format!("{} payload: {e}", types::GITHUB_WEBHOOK))
    };
    let p = de.deserialize_map(peek::Top).map_err(invalid)?;
    de.end().map_err(invalid)?;
    Ok(p)
}

mod peek {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde_json::Value;

    use super::Peeked;

    pub(super) struct Top;

    impl<'de> Visitor<'de> for Top {
        type Value = Peeked;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Peeked, A::Error> {
            let mut p = Peeked::default();
            while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                match k.as_ref() {
                    "action" => p.action = Some(map.next_value::<String>()?),
                    "repository" => p.repository_full_name = map.next_value_seed(Obj(Some("full_name")))?,
                    "sender" | "installation" => {
                        map.next_value_seed(Obj(None))?;
                    }
                    "organization" => {
                        // Not constrained by the schema: any type, login read if present.
                        let v: Value = map.next_value()?;
                        p.organization_login = v.get("login").and_then(Value::as_str).map(str::to_string);
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(p)
        }
    }

    /// An object (null or any other type is refused); returns the string at `.0` if any.
    struct Obj(Option<&'static str>);

    impl<'de> DeserializeSeed<'de> for Obj {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Obj {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                if Some(k.as_ref()) == self.0 {
                    if let Value::String(s) = map.next_value::<Value>()? {
                        found = Some(s);
                    }
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
}

#[derive(Debug, Serialize)]
struct Answer<'a> {
    status: &'a str,
    delivery: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

fn answer(code: StatusCode, a: Answer<'_>) -> Response {
    (code, axum::Json(a)).into_response()
}

/// The dedupe key of a delivery.
pub fn dedupe_key(delivery: &str) -> String {
    format!("github.{delivery}")
}

/// The handler of `POST /webhooks/github`.
pub async fn webhook(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    match handle(&ingest, &headers, body).await {
        Ok(r) => r,
        Err(p) => {
            debug!(kind = p.kind.slug(), detail = %p.detail, "webhook refused");
            if p.kind.status() == StatusCode::UNAUTHORIZED {
                ingest.stats.webhooks_unauthorized.fetch_add(1, Ordering::Relaxed);
            }
            p.into_response()
        }
    }
}

async fn handle(ingest: &Ingest, headers: &HeaderMap, body: Body) -> Result<Response, Problem> {
    let body = read_body(headers, body, ingest.config.max_body_bytes).await?;
    let delivery = match inspect(&ingest.config, &ingest.secrets, headers, body)? {
        Verdict::Ping { id } => {
            info!(delivery = %id, "github ping");
            return Ok(answer(
                StatusCode::OK,
                Answer {
                    status: "pong",
                    delivery: &id,
                    reason: None,
                    subject: None,
                    seq: None,
                },
            ));
        }
        Verdict::Ignore { id, event, reason } => {
            info!(delivery = %id, %event, %reason, "github event ignored");
            return Ok(answer(
                StatusCode::OK,
                Answer {
                    status: "ignored",
                    delivery: &id,
                    reason: Some(reason),
                    subject: None,
                    seq: None,
                },
            ));
        }
        Verdict::Publish(d) => d,
    };
    let timeout = ingest.config.publish_timeout;
    let outcome = tokio::time::timeout(timeout, publish(ingest, &delivery, headers)).await;
    let seq = match outcome {
        Err(_) => {
            warn!(delivery = %delivery.id, ?timeout, "JetStream did not acknowledge in time");
            return Err(Problem::unavailable("JetStream did not acknowledge in time"));
        }
        Ok(r) => r?,
    };
    let subject = ingest.ctx.names.webhook("github", &delivery.event);
    match seq {
        None => {
            ingest.stats.webhooks_duplicate.fetch_add(1, Ordering::Relaxed);
            info!(delivery = %delivery.id, event = %delivery.event, "duplicate delivery");
            Ok(answer(
                StatusCode::OK,
                Answer {
                    status: "duplicate",
                    delivery: &delivery.id,
                    reason: None,
                    subject: Some(&subject),
                    seq: None,
                },
            ))
        }
        Some(seq) => {
            ingest.stats.webhooks_accepted.fetch_add(1, Ordering::Relaxed);
            info!(delivery = %delivery.id, event = %delivery.event, seq, "webhook accepted");
            Ok(answer(
                StatusCode::ACCEPTED,
                Answer {
                    status: "accepted",
                    delivery: &delivery.id,
                    reason: None,
                    subject: Some(&subject),
                    seq: Some(seq),
                },
            ))
        }
    }
}

/// Publishes a delivery unless it was seen; `Ok(None)` means duplicate.
async fn publish(ingest: &Ingest, d: &Delivery, headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let key = dedupe_key(&d.id);
    let traceparent = headers
        .get(jetrun_core::envelope::H_TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|t| jetrun_telemetry::TraceParent::parse(t).is_some())
        .map(str::to_string)
        // With tracing on, the request's server span (which continues a valid header).
        .or_else(jetrun_telemetry::current_traceparent)
        .unwrap_or_else(jetrun_core::envelope::new_traceparent);
    let mut env = Envelope::new(types::GITHUB_WEBHOOK, ingest.config.source.clone())
        .with_id(d.id.clone())
        .with_trace(Some(traceparent), None);
    env.subject = d.subject.clone();
    env.extensions.insert("githubevent".into(), d.event.clone());
    if let Some(a) = &d.action {
        env.extensions.insert("githubaction".into(), a.clone());
    }
    if let Some(h) = &d.hook_id {
        env.extensions.insert("githubhookid".into(), h.clone());
    }
    let subject = ingest.ctx.names.webhook("github", &d.event);
    let ack = ingest
        .publisher
        .send_raw(subject, &env, d.body.clone())
        .await
        .map_err(|e| match e.kind {
            // Not retryable: GitHub would redeliver the same bytes forever.
            jetrun_nats::PublishErrorKind::Invalid => Problem::new(ProblemKind::ValidationFailed, e.message),
            _ => Problem::unavailable(e.to_string()),
        })?
        .await
        .map_err(|e| Problem::unavailable(format!("publish: {e}")))?;
    if ack.duplicate {
        // Within JetStream's duplicate window: `Nats-Msg-Id` caught it.
        return Ok(None);
    }
    // The delivery is durable now. Claim its dedupe key (72 h, longer than GitHub's
    // redelivery window) with create-if-absent: two server operations per webhook in all
    // (no lookup before the publish). If the key exists, this is a redelivery older than
    // the duplicate window: the copy just stored is deleted and the answer is
    // "duplicate". A failed write only narrows the protection to the window, so it is
    // logged, not answered 5xx.
    match ingest.dedupe.create(&key, ack.sequence.to_string().into()).await {
        Ok(_) => Ok(Some(ack.sequence)),
        Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
            let stream = ingest.ctx.names.stream_webhooks();
            match ingest.ctx.js.get_stream(&stream).await {
                Ok(s) => {
                    if let Err(e) = s.delete_message(ack.sequence).await {
                        warn!(delivery = %d.id, seq = ack.sequence, error = %e, "late duplicate not removed");
                    }
                }
                Err(e) => warn!(delivery = %d.id, error = %e, "late duplicate not removed"),
            }
            Ok(None)
        }
        Err(e) => {
            warn!(delivery = %d.id, error = %e, "dedupe key not stored");
            Ok(Some(ack.sequence))
        }
    }
}
