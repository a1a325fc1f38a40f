//! The HTTP API: jobs, CloudEvents, scale requests, stats, health and readiness.
//!
//! Every `/v1` route needs `Authorization: Bearer <token>`; the token names a tenant
//! (see [`crate::auth::ApiTokens`]) and each tenant has its own rate limit (429 with
//! `Retry-After`). A tenant submits, sees and cancels only its own jobs (a job is a
//! tenant's when its spec names that tenant); every other action (scale requests, stats,
//! task events, any CloudEvent that is not a job submission) needs the operator tenant
//! `*`, which also sees every job.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jetrun_core::scale::{ScaleRequest, ScaleSpec};
use jetrun_core::schema::{self, types};
use jetrun_core::task::TaskEvent;
use jetrun_core::{Envelope, JobRecord, JobSpec, JobStatus};
use jetrun_nats::store::Admission;
use jetrun_nats::submit::SubmitError;
use jetrun_nats::{PublishErrorKind, StoreErrorKind};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::info;

use crate::auth::OPERATOR_TENANT;
use crate::jobs::CancelErrorKind;
use crate::problem::{Problem, ProblemKind};
use crate::{Ingest, read_body};

/// `Idempotency-Key`
pub const H_IDEMPOTENCY_KEY: &str = "idempotency-key";

type ApiResult = Result<Response, Problem>;

/// Runs a JetStream operation with the configured timeout; a timeout is 503.
async fn timed<T>(ingest: &Ingest, f: impl Future<Output = Result<T, Problem>>) -> Result<T, Problem> {
    tokio::time::timeout(ingest.config.publish_timeout, f)
        .await
        .unwrap_or_else(|_| Err(Problem::unavailable("JetStream did not answer in time")))
}

/// Authenticates the bearer token and takes one rate-limit token of its tenant.
pub fn authenticate(ingest: &Ingest, headers: &HeaderMap) -> Result<String, Problem> {
    let tenant = if ingest.tokens.is_empty() && ingest.config.insecure_dev {
        OPERATOR_TENANT.to_string()
    } else {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| {
                Problem::new(ProblemKind::Unauthorized, "missing Authorization: Bearer <token>")
            })?;
        ingest
            .tokens
            .tenant_of(token.as_bytes())
            .ok_or_else(|| Problem::new(ProblemKind::Unauthorized, "unknown token"))?
    };
    ingest.limiter.check(&tenant).map_err(|wait| {
        Problem::new(
            ProblemKind::RateLimited,
            format!("rate limit of tenant {tenant} exceeded"),
        )
        .retry_after(wait.as_secs_f64().ceil() as u64)
    })?;
    Ok(tenant)
}

/// Whether `tenant` may see and cancel `rec`. The tenant must be named in the spec: a
/// job without one (submitted by an operator or a rule) is `default` for accounting but
/// belongs to no token, so a tenant called `default` does not get them all.
fn may_see(tenant: &str, rec: &JobRecord) -> bool {
    tenant == OPERATOR_TENANT || rec.spec.tenant.as_deref() == Some(tenant)
}

/// Refuses a tenant token for an operator action.
fn require_operator(tenant: &str, what: &str) -> Result<(), Problem> {
    if tenant == OPERATOR_TENANT {
        Ok(())
    } else {
        Err(Problem::new(
            ProblemKind::Forbidden,
            format!(
                "{what} needs an operator token; the token of tenant {tenant} may only submit, \
                 read and cancel its own jobs"
            ),
        ))
    }
}

fn parse_json(body: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(body).map_err(|e| Problem::new(ProblemKind::InvalidJson, e.to_string()))
}

/// The request's W3C `traceparent`, if any. One that is not a traceparent (it would
/// travel on as a NATS header) is refused rather than passed on.
/// The caller's W3C `traceparent`, if it is one. A header that breaks the W3C rules
/// (version `ff`, all-zero ids, uppercase hex, wrong length) is not an error: the job
/// starts a new trace, as the recommendation says. (A value with CR, LF or other bytes
/// not allowed in a header never gets this far: hyper refuses the request.)
fn traceparent_of(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    Ok(headers
        .get(jetrun_core::envelope::H_TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|t| jetrun_telemetry::w3c::TraceParent::parse(t).is_some())
        .map(|t| t.trim().to_string()))
}

/// The answer to a job submission.
#[derive(Debug, Serialize)]
pub struct Submitted {
    /// The job id.
    pub id: String,
    /// Its status now.
    pub status: JobStatus,
    /// Whether a job with this idempotency key already existed.
    pub duplicate: bool,
    /// Whether the job is in the store already. `false` (answered 202): no worker
    /// answered, the submission is stored durably and dispatch admits it when a worker
    /// serves the queue; until then `GET /v1/jobs/{id}` answers 404.
    pub admitted: bool,
    /// Whether a worker serves the job's queue now; `false` means the job waits until
    /// one does (`null` when it could not be told).
    pub served: Option<bool>,
    /// Why the job may wait, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The record.
    pub job: JobRecord,
}

async fn submit_value(
    ingest: &Ingest,
    tenant: &str,
    mut value: Value,
    key: Option<String>,
    traceparent: Option<String>,
    source: Option<String>,
) -> ApiResult {
    if let Some(k) = key {
        if k.is_empty() || k.len() > 256 {
            return Err(Problem::new(
                ProblemKind::BadHeader,
                "Idempotency-Key must be 1 to 256 characters",
            ));
        }
        match value.get("idempotency_key").and_then(Value::as_str) {
            Some(existing) if existing != k => {
                return Err(Problem::new(
                    ProblemKind::BadHeader,
                    "Idempotency-Key differs from the body's idempotency_key",
                ));
            }
            _ => {
                if let Some(o) = value.as_object_mut() {
                    o.insert("idempotency_key".into(), Value::String(k));
                }
            }
        }
    }
    schema::validate_value(types::JOB_SUBMITTED, &value).map_err(|e| Problem::schema(&e))?;
    let mut spec: JobSpec = serde_json::from_value(value)
        .map_err(|e| Problem::new(ProblemKind::ValidationFailed, e.to_string()))?;
    if tenant != OPERATOR_TENANT {
        match &spec.tenant {
            Some(t) if t != tenant => {
                return Err(Problem::new(
                    ProblemKind::Forbidden,
                    format!("token of tenant {tenant} cannot submit for {t}"),
                ));
            }
            _ => spec.tenant = Some(tenant.to_string()),
        }
    }
    // Bounds the schema cannot express (or that the operator tightened): a spec past
    // them could never run and would fail every attempt.
    spec.validate(&ingest.config.spec_limits)
        .map_err(|e| Problem::spec(&e))?;
    let queue = spec.queue.clone();
    let admission = timed(ingest, async {
        jetrun_nats::control::ControlClient::new(
            ingest.ctx.client.clone(),
            ingest.ctx.names.clone(),
            "ingest",
        )
        .submit(spec, traceparent, source)
        .await
        .map_err(submit_problem)
    })
    .await?;
    let admitted = admission.admitted;
    let (rec, duplicate) = match admission.admission {
        Admission::New(r, _) => (r, false),
        Admission::Existing(r, _) => (r, true),
    };
    if !may_see(tenant, &rec) {
        return Err(Problem::new(
            ProblemKind::IdempotencyConflict,
            "this idempotency key is used by another tenant's job",
        ));
    }
    ingest
        .stats
        .jobs_submitted
        .fetch_add(u64::from(!duplicate), Ordering::Relaxed);
    info!(job_id = %rec.id, %queue, tenant, duplicate, "job submitted over HTTP");
    let code = match (admitted, duplicate) {
        (false, _) => StatusCode::ACCEPTED,
        (true, true) => StatusCode::OK,
        (true, false) => StatusCode::CREATED,
    };
    let served = served(ingest, &queue).await;
    let warning = (served == Some(false))
        .then(|| format!("no worker serves queue {queue:?} now; the job waits until one does"));
    let location = format!("/v1/jobs/{}", rec.id);
    let mut resp = (
        code,
        Json(Submitted {
            id: rec.id.clone(),
            status: rec.status,
            duplicate,
            admitted,
            served,
            warning,
            job: rec,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// How long a queue's "served" answer is reused.
const SERVED_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a worker serves `queue`, read at most once per [`SERVED_TTL`] per queue
/// (`None` when it could not be told).
async fn served(ingest: &Ingest, queue: &str) -> Option<bool> {
    let now = std::time::Instant::now();
    let cached = ingest
        .serving
        .lock()
        .ok()
        .and_then(|m| m.get(queue).copied())
        .filter(|(at, _)| now.duration_since(*at) < SERVED_TTL)
        .map(|(_, s)| s);
    if cached.is_some() {
        return cached;
    }
    let fresh = jetrun_nats::queues::serving(&ingest.ctx.js, &ingest.ctx.names, queue)
        .await
        .ok()
        .map(|s| s.is_served())?;
    if let Ok(mut m) = ingest.serving.lock() {
        // Queue names come from callers: keep the map bounded.
        if m.len() >= 1024 {
            m.clear();
        }
        m.insert(queue.to_string(), (now, fresh));
    }
    Some(fresh)
}

fn submit_problem(e: SubmitError) -> Problem {
    match e {
        SubmitError::Invalid(s) => Problem::schema(&s),
        SubmitError::Store(s) => match s.kind {
            StoreErrorKind::Unavailable | StoreErrorKind::Conflict => Problem::unavailable(s.message),
            StoreErrorKind::StoreFull => Problem::store_full(s.message),
            StoreErrorKind::InvalidKey => Problem::new(ProblemKind::ValidationFailed, s.message),
            _ => Problem::new(ProblemKind::Internal, s.message),
        },
        SubmitError::Publish(p) if p.kind == PublishErrorKind::Invalid => {
            Problem::new(ProblemKind::ValidationFailed, p.message)
        }
        // The job is admitted; a retry with the same idempotency key publishes it.
        SubmitError::Publish(p) => Problem::unavailable(p.message),
        other => Problem::new(ProblemKind::Internal, other.to_string()),
    }
}

/// `POST /v1/jobs`: submit a job spec (`Idempotency-Key` optional). 201 new, 200 existing.
pub async fn submit_job(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> ApiResult {
    let tenant = authenticate(&ingest, &headers)?;
    let body = read_body(&headers, body, ingest.config.max_body_bytes).await?;
    let value = parse_json(&body)?;
    let key = headers
        .get(H_IDEMPOTENCY_KEY)
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| Problem::new(ProblemKind::BadHeader, "Idempotency-Key is not visible ASCII"))?;
    let traceparent = traceparent_of(&headers)?;
    submit_value(
        &ingest,
        &tenant,
        value,
        key,
        traceparent,
        Some(format!("http:{tenant}")),
    )
    .await
}

/// `GET /v1/jobs/{id}`: the job record.
pub async fn get_job(
    State(ingest): State<Arc<Ingest>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let tenant = authenticate(&ingest, &headers)?;
    let not_found = || Problem::new(ProblemKind::NotFound, format!("no job {id}"));
    if !jetrun_core::job::valid_job_id(&id) {
        return Err(not_found());
    }
    let found = timed(&ingest, async {
        ingest.ctx.store.get(&id).await.map_err(|e| match e.kind {
            StoreErrorKind::Unavailable => Problem::unavailable(e.message),
            _ => Problem::new(ProblemKind::Internal, e.message),
        })
    })
    .await?;
    match found {
        Some((rec, _)) if may_see(&tenant, &rec) => Ok(Json(rec).into_response()),
        _ => Err(not_found()),
    }
}

/// `DELETE /v1/jobs/{id}`: cancel. 202 with the status after the request.
pub async fn cancel_job(
    State(ingest): State<Arc<Ingest>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let tenant = authenticate(&ingest, &headers)?;
    let not_found = || Problem::new(ProblemKind::NotFound, format!("no job {id}"));
    if !jetrun_core::job::valid_job_id(&id) {
        return Err(not_found());
    }
    let status = timed(&ingest, async {
        match ingest.ctx.store.get(&id).await {
            Ok(Some((rec, _))) if may_see(&tenant, &rec) => {}
            Ok(_) => return Err(not_found()),
            Err(e) => return Err(Problem::unavailable(e.message)),
        }
        crate::jobs::cancel_as(&ingest.ctx, &tenant, &id)
            .await
            .map_err(|e| match e.kind {
                CancelErrorKind::NotFound => not_found(),
                CancelErrorKind::Unavailable => Problem::unavailable(e.message),
                _ => Problem::new(ProblemKind::Internal, e.message),
            })
    })
    .await?;
    info!(job_id = %id, tenant, status = %status.as_str(), "job cancel requested over HTTP");
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id, "status": status}))).into_response())
}

/// A structured-mode CloudEvent, split into its envelope and data.
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredEvent {
    /// The attributes.
    pub envelope: Envelope,
    /// `data`.
    pub data: Value,
}

/// Parses a structured-mode CloudEvent (JSON format): required `specversion` (1.0),
/// `id`, `type`, `source`; optional `time`, `subject`, `datacontenttype` (JSON only),
/// `traceparent`, `tracestate`; other string attributes become extensions; `data` must
/// be present and JSON (`data_base64` is refused).
pub fn parse_cloudevent(body: &[u8]) -> Result<StructuredEvent, Problem> {
    let value = parse_json(body)?;
    let Value::Object(mut obj) = value else {
        return Err(Problem::new(
            ProblemKind::ValidationFailed,
            "a CloudEvent is a JSON object",
        ));
    };
    let invalid = |d: String| Problem::new(ProblemKind::ValidationFailed, d);
    let mut take = |name: &str, required: bool| -> Result<Option<String>, Problem> {
        match obj.remove(name) {
            Some(Value::String(s)) if !s.trim().is_empty() => {
                check_attribute(name, &s)?;
                Ok(Some(s))
            }
            Some(_) => Err(invalid(format!("attribute {name} must be a non-empty string"))),
            None if required => Err(invalid(format!("attribute {name} is required"))),
            None => Ok(None),
        }
    };
    let specversion = take("specversion", true)?;
    if specversion.as_deref() != Some(jetrun_core::envelope::SPEC_VERSION) {
        return Err(invalid("specversion must be 1.0".into()));
    }
    let id = take("id", true)?.unwrap_or_default();
    let ty = take("type", true)?.unwrap_or_default();
    let source = take("source", true)?.unwrap_or_default();
    let time = match take("time", false)? {
        Some(t) => chrono::DateTime::parse_from_rfc3339(&t)
            .map_err(|_| invalid("time must be RFC 3339".into()))?
            .with_timezone(&chrono::Utc),
        None => jetrun_core::now(),
    };
    let subject = take("subject", false)?;
    if let Some(ct) = take("datacontenttype", false)?
        && !ct.starts_with("application/json")
    {
        return Err(invalid("datacontenttype must be application/json".into()));
    }
    let _ = take("dataschema", false)?;
    let traceparent = take("traceparent", false)?;
    if let Some(tp) = &traceparent
        && jetrun_core::envelope::trace_id_of(tp).is_none()
    {
        return Err(invalid("traceparent is not a W3C traceparent".into()));
    }
    let tracestate = take("tracestate", false)?;
    if obj.contains_key("data_base64") {
        return Err(invalid("data_base64 is not accepted: send JSON data".into()));
    }
    let data = obj
        .remove("data")
        .ok_or_else(|| invalid("attribute data is required".into()))?;
    let mut extensions = BTreeMap::new();
    for (k, v) in obj {
        if !jetrun_core::envelope::valid_extension_name(&k) {
            return Err(Problem::new(
                ProblemKind::BadAttribute,
                format!(
                    "extension attribute {:?} must be 1-20 of a-z 0-9 and not a reserved name",
                    k.escape_debug().to_string()
                ),
            ));
        }
        let v = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(invalid(format!(
                    "extension attribute {k} must be a string, number or boolean"
                )));
            }
        };
        check_attribute(&k, &v)?;
        extensions.insert(k, v);
    }
    Ok(StructuredEvent {
        envelope: Envelope {
            id,
            ty,
            source,
            time,
            subject,
            traceparent,
            tracestate,
            extensions,
        },
        data,
    })
}

/// Refuses an attribute value that cannot travel as a NATS or HTTP header (CR, LF, NUL,
/// other control bytes, non-ASCII) or is too long: 400, before anything is published.
fn check_attribute(name: &str, v: &str) -> Result<(), Problem> {
    use jetrun_core::envelope::{MAX_ATTRIBUTE_LEN, MAX_TRACESTATE_LEN, valid_header_value};
    let max = if name == "tracestate" {
        MAX_TRACESTATE_LEN
    } else {
        MAX_ATTRIBUTE_LEN
    };
    if valid_header_value(v, max) {
        Ok(())
    } else {
        Err(Problem::new(
            ProblemKind::BadAttribute,
            format!(
                "attribute {name} must be at most {max} bytes of visible ASCII and space (no CR, LF, NUL or other control characters)"
            ),
        ))
    }
}

/// `POST /v1/events`: a structured-mode CloudEvent, validated against its type's schema
/// and published to the subject of its type. 202 with the subject and sequence.
pub async fn post_event(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> ApiResult {
    let tenant = authenticate(&ingest, &headers)?;
    let body = read_body(&headers, body, ingest.config.max_body_bytes).await?;
    let ev = parse_cloudevent(&body)?;
    let ty = ev.envelope.ty.as_str();
    if ty != types::JOB_SUBMITTED {
        require_operator(&tenant, &format!("a CloudEvent of type {ty}"))?;
    }
    // The scale family is checked by type at the edge: only a request is accepted, and
    // an unknown `dev.jetrun.scale.*` type is the sender's error, not a new kind of event.
    if ty.starts_with(SCALE_TYPE_PREFIX) && ty != types::SCALE_REQUESTED {
        return Err(Problem::new(
            ProblemKind::BadAttribute,
            format!(
                "type {ty} is not a scale request: the only scale event accepted is {}",
                types::SCALE_REQUESTED
            ),
        ));
    }
    if schema::schema_text(ty).is_none() {
        return Err(Problem::new(
            ProblemKind::UnknownEventType,
            format!("no schema for event type {ty}"),
        ));
    }
    schema::validate_value(ty, &ev.data).map_err(|e| Problem::schema(&e))?;
    match ty {
        types::JOB_SUBMITTED => {
            // A submission is admitted like POST /v1/jobs; the event id is the default
            // idempotency key, so a re-sent event is the same job.
            let key = ev
                .data
                .get("idempotency_key")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or(ev.envelope.id.clone());
            let source = Some(format!("event:{}", ev.envelope.id));
            submit_value(
                &ingest,
                &tenant,
                ev.data,
                Some(key),
                ev.envelope.traceparent.clone(),
                source,
            )
            .await
        }
        types::SCALE_REQUESTED => {
            let req: ScaleRequest = serde_json::from_value(ev.data.clone())
                .map_err(|e| Problem::new(ProblemKind::ValidationFailed, e.to_string()))?;
            let service = request_service(&req).to_string();
            let seq = scale_request(&ingest, &service, &req, ev.envelope).await?;
            Ok(published(&ingest.ctx.names.scale_request(&service), seq))
        }
        types::TASK_LIFECYCLE => {
            if tenant != OPERATOR_TENANT {
                return Err(Problem::new(
                    ProblemKind::Forbidden,
                    "task events need an operator token",
                ));
            }
            let ev_data: TaskEvent = serde_json::from_value(ev.data.clone())
                .map_err(|e| Problem::new(ProblemKind::ValidationFailed, e.to_string()))?;
            let subject = ingest.ctx.names.task(ev_data.phase.as_str(), &ev_data.job_id);
            let seq = publish_value(&ingest, subject.clone(), ev.envelope, &ev.data).await?;
            Ok(published(&subject, seq))
        }
        types::GITHUB_WEBHOOK => Err(Problem::new(
            ProblemKind::EventTypeNotAccepted,
            "GitHub deliveries come in through POST /webhooks/github, signed",
        )),
        other => Err(Problem::new(
            ProblemKind::EventTypeNotAccepted,
            format!("{other} is produced by jetrun itself and not accepted over HTTP"),
        )),
    }
}

/// Prefix of every scale event type.
pub const SCALE_TYPE_PREFIX: &str = "dev.jetrun.scale.";

fn published(subject: &str, seq: u64) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": "accepted", "subject": subject, "seq": seq})),
    )
        .into_response()
}

async fn publish_value(
    ingest: &Ingest,
    subject: String,
    env: Envelope,
    data: &Value,
) -> Result<u64, Problem> {
    timed(ingest, async {
        ingest
            .publisher
            .publish(subject, &env, data)
            .await
            .map_err(|e| match e.kind {
                PublishErrorKind::Invalid => Problem::new(ProblemKind::ValidationFailed, e.message),
                _ => Problem::unavailable(e.message),
            })
    })
    .await
}

fn request_service(req: &ScaleRequest) -> &str {
    match req {
        ScaleRequest::Set { spec } => &spec.service,
        ScaleRequest::Burst { service, .. } | ScaleRequest::Reset { service } => service,
    }
}

/// Key of a service's spec in the scale bucket.
pub fn spec_key(service: &str) -> String {
    format!("spec.{service}")
}

/// Checks the service's stored spec and publishes the request.
async fn scale_request(
    ingest: &Ingest,
    service: &str,
    req: &ScaleRequest,
    env: Envelope,
) -> Result<u64, Problem> {
    if jetrun_core::names::validate_token(service).is_err() {
        return Err(Problem::new(
            ProblemKind::ValidationFailed,
            format!("invalid service name {service:?}"),
        ));
    }
    let stored = timed(ingest, async {
        ingest
            .scale
            .get(spec_key(service))
            .await
            .map_err(|e| Problem::unavailable(e.to_string()))
    })
    .await?;
    let Some(bytes) = stored else {
        return Err(Problem::new(
            ProblemKind::UnknownService,
            format!("service {service} has no scale spec; it is not scalable until one is stored"),
        ));
    };
    let spec: ScaleSpec = serde_json::from_slice(&bytes).map_err(|e| {
        Problem::new(
            ProblemKind::Internal,
            format!("stored spec of {service} is unreadable: {e}"),
        )
    })?;
    if !spec.scalable {
        return Err(Problem::new(
            ProblemKind::NotScalable,
            format!("service {service} is marked scalable: false; its replicas are fixed by its operators"),
        ));
    }
    let env = Envelope {
        subject: Some(service.to_string()),
        ..env
    };
    let seq = publish_value(
        ingest,
        ingest.ctx.names.scale_request(service),
        env,
        &serde_json::to_value(req).unwrap_or_default(),
    )
    .await?;
    info!(service, seq, "scale request accepted");
    Ok(seq)
}

/// `POST /v1/scale/{service}`: a scale request (`set`, `burst` or `reset`) for a
/// service whose stored spec is scalable. 202 with the subject and sequence.
pub async fn scale(
    State(ingest): State<Arc<Ingest>>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let tenant = authenticate(&ingest, &headers)?;
    require_operator(&tenant, "a scale request")?;
    let traceparent = traceparent_of(&headers)?;
    let body = read_body(&headers, body, ingest.config.max_body_bytes).await?;
    let value = parse_json(&body)?;
    schema::validate_value(types::SCALE_REQUESTED, &value).map_err(|e| Problem::schema(&e))?;
    let req: ScaleRequest = serde_json::from_value(value)
        .map_err(|e| Problem::new(ProblemKind::ValidationFailed, e.to_string()))?;
    if request_service(&req) != service {
        return Err(Problem::new(
            ProblemKind::ValidationFailed,
            format!(
                "the body names service {:?}, the path {service:?}",
                request_service(&req)
            ),
        ));
    }
    let env = ingest.publisher.envelope(types::SCALE_REQUESTED).with_trace(
        traceparent.or_else(|| Some(jetrun_telemetry::new_traceparent())),
        None,
    );
    let seq = scale_request(&ingest, &service, &req, env).await?;
    Ok(published(&ingest.ctx.names.scale_request(&service), seq))
}

/// Per-queue numbers in `/v1/stats`.
#[derive(Debug, Default, Serialize)]
pub struct QueueStats {
    /// Waiting for a dispatcher (the dispatch consumer's pending count).
    pub pending: u64,
    /// Claimed and not finished (launching or running).
    pub running: u64,
    /// Not terminal (queued, launching, running).
    pub active: u64,
    /// Succeeded.
    pub completed: u64,
    /// Failed or timed out.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

/// `GET /v1/stats`: per queue, and this instance. Operators only: the figures come from
/// the index and the consumers, which know queues but not tenants, and a per-tenant
/// count would mean reading every record, so a tenant gets 403 rather than every
/// tenant's numbers.
pub async fn stats(State(ingest): State<Arc<Ingest>>, headers: HeaderMap) -> ApiResult {
    let tenant = authenticate(&ingest, &headers)?;
    require_operator(&tenant, "GET /v1/stats (figures across every tenant)")?;
    let ctx = &ingest.ctx;
    let (queues, running_here) = timed(&ingest, async {
        let unavailable = |e: &dyn std::fmt::Display| Problem::unavailable(e.to_string());
        let mut out = BTreeMap::new();
        let mut running_here = 0u64;
        let jobs_stream = ctx
            .js
            .get_stream(ctx.names.stream_jobs())
            .await
            .map_err(|e| unavailable(&e))?;
        for q in ctx.store.queues().await.map_err(|e| unavailable(&e))? {
            let counts = ctx.store.counts(&q).await.map_err(|e| unavailable(&e))?;
            let n = |k: &str| counts.get(k).copied().unwrap_or(0) as u64;
            let active = n("active");
            let pending = match jobs_stream.consumer_info(ctx.names.consumer_dispatch(&q)).await {
                Ok(info) => info.num_pending.min(active),
                Err(_) => active,
            };
            let running_jobs = ctx
                .store
                .list(&q, Some(JobStatus::Running), 1000)
                .await
                .map_err(|e| unavailable(&e))?;
            running_here += running_jobs
                .iter()
                .filter(|r| r.node_id.as_deref() == Some(ctx.node_id.as_str()))
                .count() as u64;
            out.insert(
                q,
                QueueStats {
                    pending,
                    running: active - pending,
                    active,
                    completed: n("succeeded"),
                    failed: n("failed") + n("timed_out"),
                    cancelled: n("cancelled"),
                },
            );
        }
        Ok((out, running_here))
    })
    .await?;
    let s = &ingest.stats;
    Ok(Json(json!({
        "queues": queues,
        "instance": {
            "node_id": ctx.node_id,
            "running": running_here,
            "webhooks_accepted": s.webhooks_accepted.load(Ordering::Relaxed),
            "webhooks_duplicate": s.webhooks_duplicate.load(Ordering::Relaxed),
            "webhooks_unauthorized": s.webhooks_unauthorized.load(Ordering::Relaxed),
            "jobs_submitted": s.jobs_submitted.load(Ordering::Relaxed),
        }
    }))
    .into_response())
}

/// `GET /health`: the process is up.
pub async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /ready`: NATS is connected, JetStream answers, the jobs bucket can take writes
/// (its stream answers with a leader and is under its `max_bytes`) and the store has
/// space (the account's storage is under its limit, and a probe write to the dedupe
/// bucket, which this credential may write, succeeds). 503 `unavailable` or
/// `store-full` otherwise.
pub async fn ready(State(ingest): State<Arc<Ingest>>) -> ApiResult {
    if ingest.ctx.client.connection_state() != async_nats::connection::State::Connected {
        return Err(Problem::unavailable("not connected to NATS"));
    }
    let checks = async {
        let account = async {
            let a = ingest
                .ctx
                .js
                .query_account()
                .await
                .map_err(|e| Problem::unavailable(format!("JetStream: {e}")))?;
            let max = a.limits.max_storage.unwrap_or(-1);
            if max > 0 && a.storage >= max as u64 {
                return Err(Problem::store_full(format!(
                    "account storage {} of {max} bytes used",
                    a.storage
                )));
            }
            Ok(())
        };
        let jobs = async {
            ingest.ctx.store.check_writable().await.map_err(|e| match e.kind {
                StoreErrorKind::StoreFull => Problem::store_full(e.message),
                _ => Problem::unavailable(format!("jobs bucket not writable: {}", e.message)),
            })
        };
        let probe = async {
            ingest
                .dedupe
                .put(READY_PROBE_KEY, bytes::Bytes::from_static(b"1"))
                .await
                .map(|_| ())
                .map_err(|e| Problem::unavailable(format!("probe write refused: {e}")))
        };
        let (a, j, p) = tokio::join!(account, jobs, probe);
        // Store-full first: it is the more specific answer.
        let errors = [a, j, p];
        if let Some(Err(full)) = errors
            .iter()
            .find(|r| matches!(r, Err(p) if p.kind == ProblemKind::StoreFull))
        {
            return Err(full.clone());
        }
        errors
            .into_iter()
            .collect::<Result<Vec<()>, Problem>>()
            .map(|_| ())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), checks).await {
        Ok(Ok(())) => Ok(Json(json!({"status": "ready"})).into_response()),
        Ok(Err(p)) => Err(p),
        Err(_) => Err(Problem::unavailable("JetStream did not answer in 2 s")),
    }
}

/// The dedupe-bucket key `/ready` writes to prove the store takes writes (one key,
/// overwritten: history 1, so it costs no space over time).
const READY_PROBE_KEY: &str = "jetrun-ready-probe";

/// Any other path.
pub async fn not_found() -> Problem {
    Problem::new(ProblemKind::NotFound, "no such route")
}
