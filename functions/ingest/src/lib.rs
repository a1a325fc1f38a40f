//! # jetrun-ingest
//!
//! How the outside world reaches jetrun: one axum [`Router`] with
//!
//! - `POST /webhooks/github` ([`github`]): HMAC-SHA256 over the raw bytes (several
//!   secrets at once for rotation), a bounded body, an event allow-list, dedupe by
//!   delivery id, publish to `<prefix>.webhook.github.<event>` and 2xx only after the
//!   PubAck (503 when JetStream does not acknowledge);
//! - the HTTP API ([`api`]): jobs (submit with `Idempotency-Key`, get, cancel), structured
//!   CloudEvents, scale requests, stats, health and readiness, behind bearer tokens with a
//!   per-tenant rate limit;
//! - errors as RFC 9457 problem details ([`problem`]).
//!
//! The same router is served by [`serve`] (a TCP listener) or, with the `lambda`
//! feature, by `run_lambda` under AWS Lambda. No secret configured means [`Ingest::new`]
//! refuses to start, unless `insecure_dev` is set explicitly.

pub mod api;
pub mod auth;
pub mod github;
pub mod jobs;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod problem;
pub mod server;
pub mod sse;
pub mod ui;
pub mod ws;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_nats::jetstream::kv;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::BodyExt;
use jetrun_core::SpecLimits;
use jetrun_nats::EventPublisher;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use auth::{ApiTokens, RateLimiter, WebhookSecrets};
#[cfg(feature = "lambda")]
pub use lambda::run_lambda;
pub use problem::{Problem, ProblemKind};
pub use server::{ServerLimits, serve_with};

/// Environment variable with the webhook secrets (comma-separated for rotation).
pub const ENV_SECRET: &str = "JETRUN_GITHUB_WEBHOOK_SECRET";
/// Environment variable with the API tokens (`tenant:token,tenant2:token2`).
pub const ENV_TOKENS: &str = "JETRUN_API_TOKENS";

/// Settings of the HTTP endpoint. Secrets are not here: see [`Credentials`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Largest body accepted, in bytes (default 1 MiB; GitHub sends at most 25 MB).
    /// Larger bodies are answered 413 without being read.
    pub max_body_bytes: usize,
    /// GitHub events to publish (default empty: every known event). Others are answered
    /// 200 `ignored` and not published; `ping` is always answered.
    pub github_events: Vec<String>,
    /// How long to wait for JetStream to acknowledge before answering 503 (default 5 s).
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Sustained API requests per second per tenant (default 20; 0 disables the limit).
    pub rate_per_second: f64,
    /// API requests a tenant may make at once (default 40).
    pub rate_burst: u32,
    /// Run without a webhook secret (signatures are not checked) and, without API
    /// tokens, with an open API (default false). Only for `jetrun dev`.
    pub insecure_dev: bool,
    /// `ce-source` of the events published (default `/jetrun/ingest`).
    pub source: String,
    /// Bounds every submitted job spec must keep (default [`SpecLimits::default`]).
    #[serde(skip)]
    pub spec_limits: SpecLimits,
    /// Deepest nesting of a webhook payload's JSON (default 64); deeper is 400.
    pub max_json_depth: usize,
    /// Limits of the WebSocket live-update endpoints (default [`ws::WsLimits::default`]).
    pub websocket: ws::WsLimits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            github_events: Vec::new(),
            publish_timeout: Duration::from_secs(5),
            rate_per_second: 20.0,
            rate_burst: 40,
            insecure_dev: false,
            source: "/jetrun/ingest".into(),
            spec_limits: SpecLimits::default(),
            max_json_depth: 64,
            websocket: ws::WsLimits::default(),
        }
    }
}

/// Secrets and tokens, read from the environment and files.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Webhook secrets.
    pub webhook_secrets: WebhookSecrets,
    /// API tokens.
    pub api_tokens: ApiTokens,
    /// The key signing console sessions (`JETRUN_CONSOLE_SESSION_KEY`; none: a random
    /// key per process).
    pub session_key: Option<ui::session::SessionKey>,
}

/// What kind of setup failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetupErrorKind {
    /// No webhook secret and not in insecure dev mode.
    NoSecret,
    /// A secret file could not be read.
    SecretFile,
    /// `JETRUN_API_TOKENS` is malformed.
    Tokens,
    /// A bucket is missing or JetStream is unreachable (has `jetrun init` run?).
    Bucket,
    /// `JETRUN_CONSOLE_SESSION_KEY` is too short.
    SessionKey,
}

/// The endpoint cannot start.
#[derive(Debug, thiserror::Error)]
#[error("ingest setup: {kind:?}: {message}")]
pub struct SetupError {
    /// What kind.
    pub kind: SetupErrorKind,
    /// Details (never a secret).
    pub message: String,
}

impl Credentials {
    /// Reads [`ENV_SECRET`] and, if given, `secret_file`, [`ENV_TOKENS`] and
    /// `JETRUN_CONSOLE_SESSION_KEY`.
    pub fn from_env(secret_file: Option<&Path>) -> Result<Self, SetupError> {
        let mut secrets = WebhookSecrets::parse(&std::env::var(ENV_SECRET).unwrap_or_default());
        if let Some(path) = secret_file {
            let f = WebhookSecrets::from_file(path).map_err(|e| SetupError {
                kind: SetupErrorKind::SecretFile,
                message: format!("{}: {e}", path.display()),
            })?;
            secrets = secrets.merged(f);
        }
        let api_tokens =
            ApiTokens::parse(&std::env::var(ENV_TOKENS).unwrap_or_default()).map_err(|e| SetupError {
                kind: SetupErrorKind::Tokens,
                message: e.to_string(),
            })?;
        let session_key = ui::session::SessionKey::from_env().map_err(|message| SetupError {
            kind: SetupErrorKind::SessionKey,
            message,
        })?;
        Ok(Self {
            webhook_secrets: secrets,
            api_tokens,
            session_key,
        })
    }
}

/// Counters of this instance, for `/v1/stats`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Webhooks published.
    pub webhooks_accepted: AtomicU64,
    /// Redeliveries answered `duplicate`.
    pub webhooks_duplicate: AtomicU64,
    /// Webhooks refused with 401.
    pub webhooks_unauthorized: AtomicU64,
    /// Jobs submitted through the API.
    pub jobs_submitted: AtomicU64,
}

/// The endpoint's shared state.
#[derive(Debug)]
pub struct Ingest {
    /// Clients, names and the job store.
    pub ctx: jetrun_host::Context,
    /// Settings.
    pub config: Config,
    pub(crate) secrets: WebhookSecrets,
    pub(crate) tokens: ApiTokens,
    pub(crate) session_key: Option<ui::session::SessionKey>,
    pub(crate) limiter: RateLimiter,
    pub(crate) publisher: EventPublisher,
    pub(crate) dedupe: kv::Store,
    pub(crate) scale: kv::Store,
    /// This instance's counters.
    pub stats: Counters,
    /// Whether a worker served each queue, and when that was read (see
    /// `api::served`): a submission's `served` field costs a JetStream round trip at
    /// most once a second per queue, not once per request.
    pub(crate) serving: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, bool)>>,
}

impl Ingest {
    /// Checks the credentials against the mode and opens the buckets. Fails closed: no
    /// webhook secret is [`SetupErrorKind::NoSecret`] unless `config.insecure_dev`.
    pub async fn new(
        ctx: jetrun_host::Context,
        config: Config,
        creds: Credentials,
    ) -> Result<Arc<Self>, SetupError> {
        if creds.webhook_secrets.is_empty() {
            if !config.insecure_dev {
                return Err(SetupError {
                    kind: SetupErrorKind::NoSecret,
                    message: format!(
                        "no webhook secret: set {ENV_SECRET} or a secret file, or pass --insecure-dev"
                    ),
                });
            }
            warn!("INSECURE DEV MODE: no webhook secret configured; GitHub signatures are NOT checked");
        } else {
            info!(secrets = creds.webhook_secrets.len(), "webhook secrets loaded");
        }
        if creds.api_tokens.is_empty() {
            if config.insecure_dev {
                warn!(
                    "INSECURE DEV MODE: no API tokens configured; the /v1 API is open to anyone who can reach it"
                );
            } else {
                warn!("no API tokens configured ({ENV_TOKENS}): every /v1 request will be refused");
            }
        }
        let bucket = |e: &dyn std::fmt::Display, b: &str| SetupError {
            kind: SetupErrorKind::Bucket,
            message: format!("bucket {b}: {e} (has `jetrun init` run?)"),
        };
        let (dn, sn) = (ctx.names.bucket_dedupe(), ctx.names.bucket_scale());
        let dedupe = ctx.js.get_key_value(&dn).await.map_err(|e| bucket(&e, &dn))?;
        let scale = ctx.js.get_key_value(&sn).await.map_err(|e| bucket(&e, &sn))?;
        let publisher = EventPublisher::new(ctx.js.clone(), config.source.clone());
        Ok(Arc::new(Self {
            limiter: RateLimiter::new(config.rate_per_second, config.rate_burst),
            ctx,
            config,
            secrets: creds.webhook_secrets,
            tokens: creds.api_tokens,
            session_key: creds.session_key,
            publisher,
            dedupe,
            scale,
            stats: Counters::default(),
            serving: Default::default(),
        }))
    }
}

/// Every `(method, path)` the router serves, as written in `docs/openapi.yaml` (a test
/// keeps the two in step).
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/webhooks/github"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("delete", "/v1/jobs/{id}"),
    ("post", "/v1/events"),
    ("post", "/v1/scale/{service}"),
    ("get", "/v1/stats"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/v1/jobs/{id}/events"),
    ("get", "/v1/events/stream"),
    ("get", "/v1/jobs/{id}/ws"),
    ("get", "/v1/events/ws"),
];

/// The router: webhook endpoint, API, health and readiness, and `GET /metrics`
/// (Prometheus/OpenMetrics text; an operator token is needed when tokens are configured).
pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/webhooks/github", post(github::webhook))
        .route("/v1/jobs", post(api::submit_job))
        .route("/v1/jobs/{id}", get(api::get_job).delete(api::cancel_job))
        .route("/v1/events", post(api::post_event))
        .route("/v1/scale/{service}", post(api::scale))
        .route("/v1/stats", get(api::stats))
        .route("/health", get(api::health))
        .route("/ready", get(api::ready))
        // Live updates (SSE, `sse`) and the web console at /ui (`ui`), issue #15.
        .merge(ui::router(ingest.clone()))
        .route(METRICS_PATH, get(metrics))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn(close_if_body_unread))
        .layer(axum::middleware::from_fn(trace_request))
        .with_state(ingest)
}

/// Where the metrics are served.
pub const METRICS_PATH: &str = "/metrics";

/// `GET /metrics` on the API's own port: the figures cross tenants, so with API tokens
/// configured it needs an operator's (`*:`) token, as `/v1/stats` does.
async fn metrics(
    axum::extract::State(ingest): axum::extract::State<Arc<Ingest>>,
    headers: HeaderMap,
) -> axum::response::Response {
    if !ingest.tokens.is_empty() {
        match api::authenticate(&ingest, &headers) {
            Ok(t) if t == auth::OPERATOR_TENANT => {}
            Ok(_) => {
                return Problem::new(
                    ProblemKind::Forbidden,
                    "GET /metrics needs an operator token".to_string(),
                )
                .into_response();
            }
            Err(p) => return p.into_response(),
        }
    }
    metrics_answer(&ingest.ctx).await
}

async fn metrics_answer(ctx: &jetrun_host::Context) -> axum::response::Response {
    jetrun_host::refresh_metrics(ctx).await;
    (
        [(header::CONTENT_TYPE, jetrun_telemetry::metrics::CONTENT_TYPE)],
        jetrun_telemetry::metrics::render(),
    )
        .into_response()
}

/// A router with `GET /metrics` alone, for the metrics listener of `worker`,
/// `autoscale`, `serve` and `dev` (`--metrics-listen`): an internal port, no token.
pub fn metrics_router(ctx: jetrun_host::Context) -> Router {
    Router::new()
        .route(
            METRICS_PATH,
            get(
                |axum::extract::State(ctx): axum::extract::State<jetrun_host::Context>| async move {
                    metrics_answer(&ctx).await
                },
            ),
        )
        .with_state(ctx)
}

/// Serves [`metrics_router`] on `addr` until `shutdown`, in the background. The bind
/// happens before this returns, so a taken port is an error at start.
pub async fn spawn_metrics_listener(
    addr: std::net::SocketAddr,
    ctx: jetrun_host::Context,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "serving metrics on /metrics");
    Ok(tokio::spawn(serve(listener, metrics_router(ctx), shutdown)))
}

/// The route template of `path` (`/v1/jobs/{id}`), for span names and metric labels:
/// never the raw path, whose ids would make labels unbounded.
fn route_template(method: &axum::http::Method, path: &str) -> &'static str {
    if path == METRICS_PATH {
        return METRICS_PATH;
    }
    let m = method.as_str().to_ascii_lowercase();
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let fits = |route: &str| {
        let r: Vec<&str> = route.split('/').collect();
        r.len() == segs.len()
            && r.iter()
                .zip(&segs)
                .all(|(a, b)| (a.starts_with('{') && !b.is_empty()) || a == b)
    };
    ROUTES
        .iter()
        .find(|(rm, route)| *rm == m && fits(route))
        .or_else(|| ROUTES.iter().find(|(_, route)| fits(route)))
        .map(|(_, route)| *route)
        .unwrap_or("other")
}

/// The outcome of a webhook delivery from its answer (bounded values).
fn webhook_outcome(status: u16, answer_status: Option<&str>) -> &'static str {
    match (status, answer_status) {
        (202, _) => "accepted",
        (200, Some("duplicate")) => "duplicate",
        (200, Some("ignored")) => "ignored",
        (200, _) => "ok",
        (401, _) => "bad_signature",
        (413, _) => "too_large",
        (429, _) => "rate_limited",
        (503, _) => "unavailable",
        (400..=499, _) => "invalid",
        _ => "error",
    }
}

/// One server span per request (`otel.kind = server`, continuing a valid incoming W3C
/// `traceparent`; an invalid one starts a new trace), one event with status and latency,
/// and the request metrics (route template and code; webhooks by event and outcome).
/// Bodies, signatures and tokens are never logged.
async fn trace_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = route_template(req.method(), req.uri().path());
    let headers = req.headers();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (traceparent, tracestate, github_event) = (
        header(jetrun_core::envelope::H_TRACEPARENT),
        header(jetrun_core::envelope::H_TRACESTATE),
        header(github::H_EVENT),
    );
    // Strings as values, not `%`-formatted (the OpenTelemetry layer formats a `Display`
    // into a new string); no short aliases of these names (each one doubled an exported
    // attribute).
    let name = format!("{} {route}", req.method());
    let span = tracing::info_span!(
        "http",
        otel.kind = "server",
        otel.name = name.as_str(),
        http.request.method = req.method().as_str(),
        http.route = route,
        url.path = req.uri().path(),
        http.response.status_code = tracing::field::Empty,
        github.event = tracing::field::Empty,
    );
    jetrun_telemetry::link_remote(&span, traceparent.as_deref(), tracestate.as_deref());
    let event = (route == "/webhooks/github").then(|| {
        let e = github_event.unwrap_or_default();
        if github::KNOWN_EVENTS.contains(&e.as_str()) || e == "ping" {
            e
        } else {
            "other".to_string()
        }
    });
    if let Some(e) = &event {
        span.record("github.event", e.as_str());
    }
    let started = std::time::Instant::now();
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = resp.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    jetrun_telemetry::metrics::http_request(route, status, started.elapsed());
    if let Some(e) = event {
        // A 200 answer says which (duplicate, ignored): read its small JSON body.
        let mut answer = None;
        if status == 200 {
            let (parts, body) = resp.into_parts();
            let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
            answer = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_string));
            resp = axum::response::Response::from_parts(parts, Body::from(bytes));
        }
        jetrun_telemetry::metrics::webhook(&e, webhook_outcome(status, answer.as_deref()));
    }
    span.in_scope(|| tracing::debug!(status, micros = started.elapsed().as_micros() as u64, "request"));
    resp
}

/// An error answer (401, 413, 429, ...) is often given before the request body is read;
/// the server then cannot reuse the connection and closes it. Saying so with
/// `Connection: close` lets the client know instead of finding a dead socket on its next
/// request. Requests without a body keep their connection.
async fn close_if_body_unread(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0");
    let mut resp = next.run(req).await;
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut()
            .insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    resp
}

/// Serves `router` on `listener` with the default [`ServerLimits`] until `shutdown`,
/// then finishes requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, ServerLimits::default()).await
}

/// Reads a body of at most `limit` bytes: refused on `Content-Length` before reading,
/// and the streaming read stops at the bound (chunked bodies), so an oversized body is
/// never buffered.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            ProblemKind::PayloadTooLarge,
            format!("body larger than {limit} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(Problem::new(
            ProblemKind::BadHeader,
            format!("body could not be read: {e}"),
        )),
    }
}
