//! The web console at `/ui`: server-rendered HTML, embedded in the binary, live through
//! the job event stream ([`crate::sse`]).
//!
//! - **Sign-in** with the same API tokens as the HTTP API. The token is checked once and
//!   never stored in the browser: the session (its tenant, an expiry, a nonce from which
//!   the CSRF token is derived, a fingerprint of the token) is a cookie signed with
//!   HMAC-SHA256 ([`session`]), `HttpOnly`, `SameSite=Strict` (`Secure` behind an HTTPS
//!   proxy that says `X-Forwarded-Proto: https`). Sessions end after [`SESSION_TTL`], at
//!   sign-out, or when their token is removed; with the same key
//!   (`JETRUN_CONSOLE_SESSION_KEY`) they survive restarts and work on every replica.
//! - **Every change is a POST form carrying the session's CSRF token**, checked in
//!   constant time; the sign-in form carries one bound to a short-lived cookie.
//! - **Content-Security-Policy** [`CSP`]: scripts and styles only from `/ui/assets`, no
//!   inline script, no framing.
//! - Pages read without JavaScript; with it, `console.js` re-renders a page's live region
//!   (`X-Jetrun-Partial: live`) when the page's event stream says something changed, and
//!   follows a running job's log.
//! - Each answer carries `Server-Timing: app;dur=<ms>` (the time spent rendering it).

pub mod data;
pub mod pages;
pub mod rates;
pub mod session;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jetrun_core::JobStatus;
use jetrun_core::scale::{ScaleRequest, ScaleSpec};
use jetrun_core::schema::{self, types};
use rand::RngCore;
use serde::Deserialize;
use tracing::{info, warn};

use crate::Ingest;
use crate::auth::OPERATOR_TENANT;
use crate::problem::{Problem, ProblemKind};
use crate::sse::{self, Live, StreamQuery};
use pages::{Nav, Viewer};

/// The session cookie.
pub const SESSION_COOKIE: &str = "jetrun_session";
/// The cookie binding the sign-in form's CSRF token.
pub const LOGIN_COOKIE: &str = "jetrun_login";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Header asking for a page's live region only.
pub const H_PARTIAL: &str = "x-jetrun-partial";
/// The Content-Security-Policy of every console answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const JS: &str = include_str!("../../assets/console.js");
const CSS: &str = include_str!("../../assets/console.css");

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Constant-time equality of two secrets.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The console's state.
#[derive(Debug)]
pub struct Console {
    /// The live streams (shared with the SSE API: one bound per tenant).
    pub live: Arc<Live>,
    /// Signed-in sessions (signed cookies, [`session`]).
    pub sessions: session::Sessions,
    /// Per-queue job rates (the queues page).
    pub rates: Arc<rates::Rates>,
}

type C = State<Arc<Console>>;

/// The signed-in caller.
#[derive(Debug, Clone)]
struct Who {
    id: String,
    tenant: String,
    csrf: String,
}

impl Who {
    fn viewer(&self) -> Viewer<'_> {
        Viewer {
            tenant: &self.tenant,
            csrf: &self.csrf,
        }
    }
    fn operator(&self) -> bool {
        self.tenant == OPERATOR_TENANT
    }
}

/// The live routes: the SSE API and the console, sharing one bound of streams per tenant.
pub fn router<S: Clone + Send + Sync + 'static>(ingest: Arc<Ingest>) -> Router<S> {
    let sessions = session::Sessions::new(SESSION_TTL, ingest.session_key.as_ref());
    let live = Live::new(ingest);
    let console = Arc::new(Console {
        live: live.clone(),
        sessions,
        rates: Arc::default(),
    });
    let ui = Router::new()
        .route("/ui", get(home))
        .route("/ui/", get(home))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/queues", get(queues_page))
        .route("/ui/jobs", get(jobs_page))
        .route("/ui/jobs/{id}", get(job_page))
        .route("/ui/jobs/{id}/log", get(job_log))
        .route("/ui/jobs/{id}/cancel", post(cancel))
        .route("/ui/dlq", get(dlq_page))
        .route("/ui/dlq/{seq}/replay", post(replay))
        .route("/ui/scale", get(scale_page))
        .route("/ui/scale/{service}", post(scale_change))
        .route("/ui/nodes", get(nodes_page))
        .route("/ui/live/jobs/{id}", get(live_job))
        .route("/ui/live/stream", get(live_stream))
        .route("/ui/assets/console.js", get(js))
        .route("/ui/assets/console.css", get(css))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(console);
    sse::routes(live).merge(ui)
}

/// CSP and the other protective headers on every console answer, and the render time.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = Instant::now();
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.2}")) {
        h.insert("server-timing", v);
    }
    resp
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

fn secure(headers: &HeaderMap) -> &'static str {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    if https { "; Secure" } else { "" }
}

fn set_cookie(resp: &mut Response, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn html(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn error_page(who: Option<&Who>, status: StatusCode, title: &str, message: &str) -> Response {
    let v = who.map(Who::viewer);
    html(
        status,
        pages::layout(v.as_ref(), Nav::None, title, &pages::error_body(message)),
    )
}

fn problem_page(who: Option<&Who>, p: &Problem) -> Response {
    let mut r = error_page(who, p.kind.status(), p.kind.title(), &p.detail);
    if let Some(s) = p.retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

impl Console {
    fn ingest(&self) -> &Ingest {
        &self.live.ingest
    }

    /// The caller's session, after its tenant's rate limit.
    fn who(&self, headers: &HeaderMap) -> Result<Who, Box<Response>> {
        let partial = headers.contains_key(H_PARTIAL);
        let Some(id) = cookie(headers, SESSION_COOKIE) else {
            return Err(Box::new(if partial {
                StatusCode::UNAUTHORIZED.into_response()
            } else {
                redirect("/ui/login")
            }));
        };
        // A session is valid while a configured token of its tenant is the one it was
        // signed in with (a removed token ends its sessions, even on other replicas).
        let tokens = &self.ingest().tokens;
        let Some(s) = self.sessions.get(&id).filter(|s| {
            tokens.is_empty()
                || tokens
                    .digests_of(&s.tenant)
                    .any(|d| same(&self.sessions.token_fp(d), &s.token_fp))
        }) else {
            return Err(Box::new(if partial {
                StatusCode::UNAUTHORIZED.into_response()
            } else {
                redirect("/ui/login")
            }));
        };
        let who = Who {
            id,
            tenant: s.tenant,
            csrf: s.csrf,
        };
        if let Err(wait) = self.ingest().limiter.check(&who.tenant) {
            let p = Problem::new(
                ProblemKind::RateLimited,
                format!("rate limit of tenant {} exceeded", who.tenant),
            )
            .retry_after(wait.as_secs_f64().ceil() as u64);
            return Err(Box::new(problem_page(Some(&who), &p)));
        }
        Ok(who)
    }

    /// [`Console::who`] plus the CSRF check of a POST form.
    fn who_posting(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> Result<Who, Box<Response>> {
        let who = self.who(headers)?;
        match form.get("csrf") {
            Some(t) if same(t, &who.csrf) => Ok(who),
            _ => {
                warn!(tenant = %who.tenant, "console form refused: bad CSRF token");
                Err(Box::new(error_page(
                    Some(&who),
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "The form's CSRF token is missing or stale: reload the page and try again.",
                )))
            }
        }
    }
}

/// The current last sequence of the job events stream, so a page's live stream starts
/// right after what the page shows.
async fn last_seq(ingest: &Ingest) -> Option<u64> {
    let s = ingest
        .ctx
        .js
        .get_stream(ingest.ctx.names.stream_job_events())
        .await
        .ok()?;
    Some(s.cached_info().state.last_sequence)
}

/// A whole page, or only its live region when the script asks for it.
fn page(
    headers: &HeaderMap,
    who: &Who,
    nav: Nav,
    title: &str,
    top: &str,
    live: Option<(&str, String)>,
) -> Response {
    match live {
        Some((_, inner)) if headers.contains_key(H_PARTIAL) => html(StatusCode::OK, inner),
        Some((src, inner)) => html(
            StatusCode::OK,
            pages::layout(
                Some(&who.viewer()),
                nav,
                title,
                &format!("{top}{}", pages::live_region(src, &inner)),
            ),
        ),
        None => html(
            StatusCode::OK,
            pages::layout(Some(&who.viewer()), nav, title, top),
        ),
    }
}

async fn home(State(c): C, headers: HeaderMap) -> Response {
    match c.who(&headers) {
        Ok(w) if w.operator() => redirect("/ui/queues"),
        Ok(_) => redirect("/ui/jobs"),
        Err(r) => *r,
    }
}

fn open_dev(ingest: &Ingest) -> bool {
    ingest.tokens.is_empty() && ingest.config.insecure_dev
}

async fn login_page(State(c): C, headers: HeaderMap) -> Response {
    let csrf = random_hex(16);
    let mut r = html(StatusCode::OK, pages::login(&csrf, None, open_dev(c.ingest())));
    set_cookie(
        &mut r,
        format!(
            "{LOGIN_COOKIE}={csrf}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=1800{}",
            secure(&headers)
        ),
    );
    r
}

async fn login(State(c): C, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let ingest = c.ingest();
    let again = |status: StatusCode, msg: &str| {
        let csrf = random_hex(16);
        let mut r = html(status, pages::login(&csrf, Some(msg), open_dev(ingest)));
        set_cookie(
            &mut r,
            format!(
                "{LOGIN_COOKIE}={csrf}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=1800{}",
                secure(&headers)
            ),
        );
        r
    };
    // One shared bucket for sign-in attempts: guessing tokens is slow for everyone.
    if ingest.limiter.check("!console-sign-in").is_err() {
        return again(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts; wait a moment.",
        );
    }
    let bound = cookie(&headers, LOGIN_COOKIE);
    match (form.get("csrf"), bound.as_deref()) {
        (Some(a), Some(b)) if same(a, b) => {}
        _ => {
            return again(
                StatusCode::FORBIDDEN,
                "The sign-in form expired (or cookies are off): try again.",
            );
        }
    }
    let token = form.get("token").map(|t| t.trim()).unwrap_or_default();
    let tenant = if open_dev(ingest) {
        Some(OPERATOR_TENANT.to_string())
    } else {
        ingest.tokens.tenant_of(token.as_bytes())
    };
    let Some(tenant) = tenant else {
        info!("console sign-in refused: unknown token");
        return again(StatusCode::UNAUTHORIZED, "Unknown token.");
    };
    let digest = (!ingest.tokens.is_empty()).then(|| crate::auth::ApiTokens::digest(token.as_bytes()));
    let id = c.sessions.create(&tenant, digest.as_ref());
    info!(tenant, "console sign-in");
    let mut r = redirect(if tenant == OPERATOR_TENANT {
        "/ui/queues"
    } else {
        "/ui/jobs"
    });
    set_cookie(
        &mut r,
        format!(
            "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={}{}",
            SESSION_TTL.as_secs(),
            secure(&headers)
        ),
    );
    set_cookie(
        &mut r,
        format!("{LOGIN_COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0"),
    );
    r
}

async fn logout(State(c): C, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let who = match c.who_posting(&headers, &form) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    c.sessions.remove(&who.id);
    let mut r = redirect("/ui/login");
    set_cookie(
        &mut r,
        format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0"),
    );
    r
}

#[derive(Debug, Default, Deserialize)]
struct NoticeQuery {
    notice: Option<String>,
}

async fn queues_page(State(c): C, headers: HeaderMap, Query(q): Query<NoticeQuery>) -> Response {
    let who = match c.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    if !who.operator() {
        let body = r#"<p class="note" id="operators-only">Queue figures count every tenant's jobs, so they are for operators only (as <code>GET /v1/stats</code>). <a href="/ui/jobs">See your jobs</a>.</p>"#;
        return page(&headers, &who, Nav::Queues, "Queues", body, None);
    }
    let ingest = c.ingest();
    let (rows, seq, ()) = tokio::join!(
        data::queues(ingest),
        last_seq(ingest),
        c.rates.ensure_started(ingest)
    );
    let rates = c.rates.snapshot(jetrun_core::now().timestamp());
    let rows = match rows {
        Ok(r) => r,
        Err(p) => return problem_page(Some(&who), &p),
    };
    let src = format!("/ui/live/stream?last_event_id={}", seq.unwrap_or(0));
    page(
        &headers,
        &who,
        Nav::Queues,
        "Queues",
        &pages::notice(q.notice.as_deref()),
        Some((&src, pages::queues(&rows, rates.as_ref()))),
    )
}

#[derive(Debug, Default, Deserialize)]
struct JobsQuery {
    queue: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

async fn jobs_page(State(c): C, headers: HeaderMap, Query(q): Query<JobsQuery>) -> Response {
    let who = match c.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let ingest = c.ingest();
    let queue = match sse::parse_queue(q.queue.as_deref()) {
        Ok(q) => q,
        Err(p) => return problem_page(Some(&who), &p),
    };
    let status = match q
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::parse::<JobStatus>)
    {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => {
            return problem_page(
                Some(&who),
                &Problem::new(ProblemKind::ValidationFailed, "unknown status"),
            );
        }
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    // One read of the index serves the filter's queue names and the listing.
    let (index, seq) = tokio::join!(data::Index::read(ingest), last_seq(ingest));
    let index = match index {
        Ok(i) => i,
        Err(p) => return problem_page(Some(&who), &p),
    };
    let list = data::jobs(ingest, &index, &who.tenant, queue.as_deref(), status, limit).await;
    let list = match list {
        Ok(l) => l,
        Err(p) => return problem_page(Some(&who), &p),
    };
    let names = index.queues();
    let mut src = format!("/ui/live/stream?last_event_id={}", seq.unwrap_or(0));
    if let Some(q) = &queue {
        src.push_str(&format!("&queue={}", pages::urlenc(q)));
    }
    let top = pages::job_filters(&names, queue.as_deref(), status, limit);
    page(
        &headers,
        &who,
        Nav::Jobs,
        "Jobs",
        &top,
        Some((&src, pages::jobs(&list, &who.tenant))),
    )
}

async fn job_page(
    State(c): C,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let who = match c.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let ingest = c.ingest();
    let (rec, seq) = tokio::join!(data::job(ingest, &who.tenant, &id), last_seq(ingest));
    let rec = match rec {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error_page(
                Some(&who),
                StatusCode::NOT_FOUND,
                "Not found",
                &format!("No job {id}."),
            );
        }
        Err(p) => return problem_page(Some(&who), &p),
    };
    let history = data::history(ingest, &rec).await.unwrap_or_default();
    let inner = pages::job_detail(&rec, &history, &who.csrf);
    if headers.contains_key(H_PARTIAL) {
        return html(StatusCode::OK, inner);
    }
    let log = log_text(ingest, &rec).await;
    let src = format!(
        "/ui/live/jobs/{}?last_event_id={}",
        pages::urlenc(&rec.id),
        seq.unwrap_or(0)
    );
    let top = pages::notice(q.notice.as_deref());
    let body = format!(
        "{top}{}{}",
        pages::live_region(&src, &inner),
        pages::job_log(&rec, &log)
    );
    html(
        StatusCode::OK,
        pages::layout(Some(&who.viewer()), Nav::Jobs, &format!("Job {}", rec.id), &body),
    )
}

async fn log_text(ingest: &Ingest, rec: &jetrun_core::JobRecord) -> String {
    match data::logs(ingest, rec, 200).await {
        Ok(r) => {
            let mut t = r.stdout.join("\n");
            if !r.stderr.is_empty() {
                if !t.is_empty() {
                    t.push('\n');
                }
                t.push_str("--- stderr ---\n");
                t.push_str(&r.stderr.join("\n"));
            }
            t
        }
        Err(why) => format!("(no log: {why})"),
    }
}

async fn job_log(State(c): C, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let who = match c.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let ingest = c.ingest();
    match data::job(ingest, &who.tenant, &id).await {
        Ok(Some(rec)) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            log_text(ingest, &rec).await,
        )
            .into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such job").into_response(),
        Err(p) => problem_page(Some(&who), &p),
    }
}

async fn cancel(
    State(c): C,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let who = match c.who_posting(&headers, &form) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let ingest = c.ingest();
    match data::job(ingest, &who.tenant, &id).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return error_page(
                Some(&who),
                StatusCode::NOT_FOUND,
                "Not found",
                &format!("No job {id}."),
            );
        }
        Err(p) => return problem_page(Some(&who), &p),
    }
    match crate::jobs::cancel_as(&ingest.ctx, &who.tenant, &id).await {
        Ok(status) => {
            info!(job_id = %id, tenant = %who.tenant, status = %status.as_str(), "job cancel requested in the console");
            redirect(&format!(
                "/ui/jobs/{}?notice=cancel-requested",
                pages::urlenc(&id)
            ))
        }
        Err(e) => error_page(
            Some(&who),
            StatusCode::SERVICE_UNAVAILABLE,
            "Cancel failed",
            &e.message,
        ),
    }
}

fn operators_only(who: &Who, what: &str) -> Response {
    error_page(
        Some(who),
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!(
            "{what} needs an operator token; tenant {} may only submit, read and cancel its own jobs.",
            who.tenant
        ),
    )
}

#[derive(Debug, Default, Deserialize)]
struct DlqQuery {
    after: Option<u64>,
    notice: Option<String>,
}

async fn dlq_page(State(c): C, headers: HeaderMap, Query(q): Query<DlqQuery>) -> Response {
    let who = match c.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    if !who.operator() {
        return operators_only(&who, "Reading dead letters");
    }
    let items = match data::dead_letters(c.ingest(), q.after.unwrap_or(0), 100).await {
        Ok(i) => i,
        Err(p) => return problem_page(Some(&who), &p),
    };
    let mut body = pages::notice(q.notice.as_deref());
    body.push_str(&pages::dead_letters(&items, &who.csrf));
    if items.len() == 100
        && let Some(last) = items.last()
    {
        body.push_str(&format!(
            r#"<p><a href="/ui/dlq?after={}">Next page</a></p>"#,
            last.seq
        ));
    }
    page(&headers, &who, Nav::DeadLetters, "Dead letters", &body, None)
}

async fn replay(
    State(c): C,
    Path(seq): Path<u64>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let who = match c.who_posting(&headers, &form) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    if !who.operator() {
        return operators_only(&who, "Replaying a dead letter");
    }
    let ingest = c.ingest();
    match jetrun_nats::dlq::replay(&ingest.ctx.js, &ingest.ctx.names, seq).await {
        Ok(new_seq) => {
            info!(seq, new_seq, "dead letter replayed from the console");
            redirect("/ui/dlq?notice=replayed")
        }
        Err(e) => error_page(Some(&who), StatusCode::CONFLICT, "Replay refused", &e.to_string()),
    }
}

async fn scale_page(State(c): C, headers: HeaderMap, Query(q): Query<NoticeQuery>) -> Response {
    let who = match c.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let services = match data::services(c.ingest()).await {
        Ok(s) => s,
        Err(p) => return problem_page(Some(&who), &p),
    };
    let mut body = pages::notice(q.notice.as_deref());
    body.push_str(&pages::scale(&services, &who.viewer()));
    page(&headers, &who, Nav::Scale, "Scale", &body, None)
}

fn num<T: std::str::FromStr>(form: &HashMap<String, String>, k: &str) -> Result<T, Problem> {
    form.get(k)
        .and_then(|v| v.trim().parse::<T>().ok())
        .ok_or_else(|| {
            Problem::new(
                ProblemKind::ValidationFailed,
                format!("{k} must be a whole number"),
            )
        })
}

async fn scale_change(
    State(c): C,
    Path(service): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let who = match c.who_posting(&headers, &form) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    if !who.operator() {
        warn!(tenant = %who.tenant, service, "console scale change refused: not an operator");
        return operators_only(&who, &format!("Changing the scale of {service}"));
    }
    match scale_request(c.ingest(), &service, &form).await {
        Ok(seq) => {
            info!(service, seq, "scale request from the console accepted");
            redirect("/ui/scale?notice=scale-requested")
        }
        Err(p) => problem_page(Some(&who), &p),
    }
}

/// Checks the stored spec (exists, scalable) and publishes the form's request.
async fn scale_request(
    ingest: &Ingest,
    service: &str,
    form: &HashMap<String, String>,
) -> Result<u64, Problem> {
    if jetrun_core::names::validate_token(service).is_err() {
        return Err(Problem::new(
            ProblemKind::ValidationFailed,
            format!("invalid service name {service:?}"),
        ));
    }
    let stored = ingest
        .scale
        .get(jetrun_core::scale::spec_key(service))
        .await
        .map_err(|e| Problem::unavailable(e.to_string()))?
        .ok_or_else(|| {
            Problem::new(
                ProblemKind::UnknownService,
                format!("service {service} has no scale spec"),
            )
        })?;
    let spec: ScaleSpec = serde_json::from_slice(&stored).map_err(|e| {
        Problem::new(
            ProblemKind::Internal,
            format!("stored spec of {service} is unreadable: {e}"),
        )
    })?;
    if !spec.scalable {
        return Err(Problem::new(
            ProblemKind::NotScalable,
            format!("service {service} is marked scalable: false; scaling it is done by its infrastructure"),
        ));
    }
    let req = match form.get("action").map(String::as_str) {
        Some("burst") => ScaleRequest::Burst {
            service: service.to_string(),
            replicas: num(form, "replicas")?,
            for_seconds: num(form, "for_seconds")?,
        },
        Some("reset") => ScaleRequest::Reset {
            service: service.to_string(),
        },
        Some("set") => {
            let mut next = spec.clone();
            next.min = num(form, "min")?;
            next.max = num(form, "max")?;
            next.target_per_replica = num(form, "target_per_replica")?;
            next.validate()
                .map_err(|e| Problem::new(ProblemKind::ValidationFailed, e.reason))?;
            ScaleRequest::Set { spec: next }
        }
        _ => {
            return Err(Problem::new(
                ProblemKind::ValidationFailed,
                "action must be set, burst or reset",
            ));
        }
    };
    let value = serde_json::to_value(&req).map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
    schema::validate_value(types::SCALE_REQUESTED, &value).map_err(|e| Problem::schema(&e))?;
    let env = ingest
        .publisher
        .envelope(types::SCALE_REQUESTED)
        .with_subject(service.to_string())
        .with_trace(Some(jetrun_telemetry::new_traceparent()), None);
    tokio::time::timeout(
        ingest.config.publish_timeout,
        ingest
            .publisher
            .publish(ingest.ctx.names.scale_request(service), &env, &value),
    )
    .await
    .map_err(|_| Problem::unavailable("JetStream did not answer in time"))?
    .map_err(|e| Problem::unavailable(e.message))
}

async fn nodes_page(State(c): C, headers: HeaderMap) -> Response {
    let who = match c.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let ingest = c.ingest();
    let (nodes, seq) = tokio::join!(data::nodes(ingest, &who.tenant), last_seq(ingest));
    let nodes = match nodes {
        Ok(n) => n,
        Err(p) => return problem_page(Some(&who), &p),
    };
    let src = format!("/ui/live/stream?last_event_id={}", seq.unwrap_or(0));
    page(
        &headers,
        &who,
        Nav::Nodes,
        "Nodes",
        "",
        Some((&src, pages::nodes(&nodes, who.operator()))),
    )
}

async fn live_job(
    State(c): C,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    let who = match c.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let res = async {
        let last = sse::last_event_id(&headers, q.last_event_id.as_deref())?;
        sse::job_stream(&c.live, &who.tenant, &id, last).await
    }
    .await;
    res.unwrap_or_else(IntoResponse::into_response)
}

async fn live_stream(State(c): C, Query(q): Query<StreamQuery>, headers: HeaderMap) -> Response {
    let who = match c.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let res = async {
        let last = sse::last_event_id(&headers, q.last_event_id.as_deref())?;
        sse::tenant_stream(&c.live, &who.tenant, &q, last).await
    }
    .await;
    res.unwrap_or_else(IntoResponse::into_response)
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        JS,
    )
        .into_response()
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CSS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn cookies_are_parsed_by_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; jetrun_session=abc ; b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
