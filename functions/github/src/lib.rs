//! # jetrun-github
//!
//! Answers on GitHub for rules that declare a `reply` (`docs/rules.md`):
//!
//! - **refusals**: reads the webhooks stream (durable consumer `github`) and evaluates
//!   the same rules as route; a malformed command, an author without the required
//!   `author_association`, or a job that is not a valid spec gets an answer comment, and
//!   route starts no job for it;
//! - **acknowledgement**: on a job's admission (its first state change, on the job events
//!   stream, durable consumer `github-jobs`) a reaction on the comment (default `eyes`)
//!   or a "started" comment;
//! - **the answer**: on the job's terminal state, a comment rendered from the rule's
//!   `reply.success` / `reply.failure` template and the job record (status, result,
//!   duration, logs link).
//!
//! Every post is claimed first in the KV bucket `<prefix>-github` by create-if-absent,
//! and every comment carries a hidden marker `<!-- jetrun:<key> -->`: a redelivered
//! event finds the claim and posts nothing; a claim whose post may or may not have
//! happened (a crash, a lost answer, a 502) is settled by looking for the marker on the
//! issue before posting again. So one job gets one comment (decision 36).
//!
//! Authentication: a token ([`Config::token_file`], `JETRUN_GITHUB_TOKEN`) or a GitHub
//! App ([`Config::app_id`] and [`Config::app_key_file`]): installation tokens are minted
//! for the installation of each event (`installation.id`, carried on jobs as the label
//! `github.installation`) and cached until five minutes before they expire (decision 40).
//!
//! A rule with `guard.max_running_per_repository` is decided by route (slots, decision
//! 41); this function reads route's verdict and answers a refusal.

pub mod client;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{consumer, kv};
use jetrun_core::JobRecord;
use jetrun_core::schema::types;
use jetrun_host::{ConsumerHost, Decode, Event, HandlerError, HostConfig, Subscription};
use jetrun_nats::store::StateChange;
use jetrun_route::Rules;
use jetrun_route::rules::{Reply, ReplyTarget};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use client::{AppAuth, AppError, Client, GithubError};

/// Settings of the github function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The rules file, the same route reads (default none: nothing is answered).
    pub rules_file: Option<PathBuf>,
    /// The REST API's base URL (default `https://api.github.com`; GitHub Enterprise:
    /// `https://<host>/api/v3`).
    pub api_url: String,
    /// A file holding the token (a PAT or an App installation token); else
    /// `JETRUN_GITHUB_TOKEN`. Without either (and without an App), calls go
    /// unauthenticated (a stand-in).
    pub token_file: Option<PathBuf>,
    /// The GitHub App's id (default none). With [`Config::app_key_file`], calls use
    /// installation tokens the App mints, and no token is read.
    pub app_id: Option<u64>,
    /// The GitHub App's private key, a PEM file as GitHub hands it out (a mounted secret;
    /// default none).
    pub app_key_file: Option<PathBuf>,
    /// Base URL of the jetrun API for the logs link (default `http://127.0.0.1:8080`).
    pub public_url: String,
    /// Attempts per GitHub call (default 6).
    pub attempts: u32,
    /// Longest wait between two attempts, also for `Retry-After` (default 60 s).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Events handled at once per consumer (default 8).
    pub concurrency: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rules_file: None,
            api_url: "https://api.github.com".into(),
            token_file: None,
            app_id: None,
            app_key_file: None,
            public_url: "http://127.0.0.1:8080".into(),
            attempts: 6,
            max_wait: Duration::from_secs(60),
            concurrency: 8,
        }
    }
}

/// The github function failed to start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GithubFnError {
    /// The rules file was refused.
    #[error(transparent)]
    Rules(#[from] jetrun_route::RulesError),
    /// The token file could not be read, or the HTTP client built.
    #[error("github function setup: {0}")]
    Setup(String),
    /// A consumer or the bucket could not be made.
    #[error("github function topology: {0}")]
    Topology(String),
    /// The host could not bind or run.
    #[error(transparent)]
    Host(#[from] jetrun_host::HostError),
}

/// The durable consumer names.
pub const WEBHOOK_CONSUMER: &str = "github";
/// See [`WEBHOOK_CONSUMER`].
pub const JOBS_CONSUMER: &str = "github-jobs";

/// The claims bucket: `<prefix>-github`.
/// Route's per-repository slots and verdicts live here too ([`jetrun_route::limit`]).
pub fn bucket_name(names: &jetrun_core::Names) -> String {
    jetrun_route::limit::state_bucket(names)
}

struct Shared {
    rules: Rules,
    client: Client,
    claims: kv::Store,
    names: jetrun_core::Names,
    public_url: String,
}

/// What a webhook must be before [`on_webhook`] sees it: a `dev.jetrun.webhook.github.v1`
/// CloudEvent (its id is the delivery) whose body matches that schema. One that is not is
/// acknowledged unhandled, not dead-lettered: route reads the same messages and
/// dead-letters them, and one bad delivery makes one dead letter.
pub const WEBHOOK: Decode = Decode::event(types::GITHUB_WEBHOOK).ack_invalid();

/// What a job state change must be before [`on_job_event`] sees it: a body that decodes
/// as a [`StateChange`] (as settle's callbacks); one that does not is dead-lettered by the
/// host as `schema`, with the reason.
pub const STATE_CHANGE: Decode = Decode::body();

/// The two durable consumers `github` (webhooks) and `github-jobs` (job events):
/// `jetrun init` creates them, so the function itself can run as a user that may not.
pub fn subscriptions(names: &jetrun_core::Names) -> Vec<Subscription> {
    vec![webhook_subscription(names), jobs_subscription(names)]
}

fn webhook_subscription(names: &jetrun_core::Names) -> Subscription {
    subscription(
        names.stream_webhooks(),
        WEBHOOK_CONSUMER,
        names.webhook_all(),
        "github: refusals of commands",
    )
}

fn jobs_subscription(names: &jetrun_core::Names) -> Subscription {
    subscription(
        names.stream_job_events(),
        JOBS_CONSUMER,
        names.job_event_all(),
        "github: acknowledgements and answers",
    )
}

fn subscription(stream: String, name: &str, filter: String, description: &str) -> Subscription {
    Subscription {
        stream,
        consumer: consumer::pull::Config {
            durable_name: Some(name.into()),
            description: Some(description.into()),
            filter_subject: filter,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_deliver: 20,
            // Explicit: the server's default (1000) would otherwise read as a difference
            // on every start and make a least-privilege run try an update it may not do.
            max_ack_pending: 1000,
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        },
    }
}

/// The claims bucket's configuration (one claim per answer posted), as `jetrun init`
/// declares it in the topology; the topology applies replicas and storage.
pub fn bucket_config(names: &jetrun_core::Names) -> kv::Config {
    kv::Config {
        bucket: bucket_name(names),
        description: "github: one claim per answer posted (never twice per job)".into(),
        history: 1,
        max_age: Duration::from_secs(30 * 24 * 3600),
        ..Default::default()
    }
}

/// A client with the configured token (file, else `JETRUN_GITHUB_TOKEN`, else none).
fn token_client(config: &Config) -> Result<Client, GithubFnError> {
    let token = match &config.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| GithubFnError::Setup(format!("token file {}: {e}", p.display())))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("JETRUN_GITHUB_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    Client::new(&config.api_url, token, config.attempts, config.max_wait)
        .map_err(|e| GithubFnError::Setup(e.to_string()))
}

/// Starts both consumers and answers until `shutdown`.
pub async fn run(
    ctx: jetrun_host::Context,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), GithubFnError> {
    let rules = match &config.rules_file {
        Some(p) => Rules::load(p)?,
        None => {
            warn!("no rules file: the github function answers nothing");
            Rules::default()
        }
    };
    let client = match (config.app_id, &config.app_key_file) {
        (Some(id), Some(key)) => {
            let app = AppAuth::from_key_file(id, key, &config.api_url)
                .map_err(|e| GithubFnError::Setup(e.to_string()))?;
            info!(app_id = id, "authenticating as a GitHub App");
            Client::with_app(Arc::new(app), config.attempts, config.max_wait)
                .map_err(|e| GithubFnError::Setup(e.to_string()))?
        }
        (None, None) => token_client(&config)?,
        _ => {
            return Err(GithubFnError::Setup(
                "a GitHub App needs both app_id and app_key_file".into(),
            ));
        }
    };
    let names = ctx.names.clone();
    let bucket = bucket_name(&names);
    // `jetrun init` (and `jetrun dev`) made the bucket and consumers: this function's
    // credential may not.
    let claims = ctx.js.get_key_value(&bucket).await.map_err(|e| {
        GithubFnError::Topology(format!(
            "bucket {bucket} is missing ({e}): run `jetrun init` as the operator"
        ))
    })?;
    let shared = Arc::new(Shared {
        rules,
        client,
        claims,
        names: names.clone(),
        public_url: config.public_url.trim_end_matches('/').to_string(),
    });
    let host_cfg = |origin: &str| HostConfig {
        origin: origin.into(),
        concurrency: config.concurrency.max(1),
        ..Default::default()
    };
    let missing = |consumer: &str, e: jetrun_host::HostError| {
        GithubFnError::Topology(format!(
            "consumer {consumer} is missing ({e}): run `jetrun init` as the operator"
        ))
    };
    // Bound as they are, never created or updated: this function's credential may not.
    let bind = |sub: Subscription, origin: &'static str| {
        let (js, names) = (&ctx.js, &names);
        let cfg = host_cfg(origin);
        async move {
            ConsumerHost::bind(js, names, &sub.stream, sub.name(), cfg)
                .await
                .map_err(|e| missing(sub.name(), e))
        }
    };
    let hooks = bind(webhook_subscription(&names), "github").await?;
    let jobs = bind(jobs_subscription(&names), "github-jobs").await?;
    info!(api = %config.api_url, rules = shared.rules.rules.len(), "github function answering");
    let (s1, s2) = (shared.clone(), shared);
    let a = hooks.run(
        jetrun_host::typed(WEBHOOK, move |ev: Event<Value>| {
            let s = s1.clone();
            async move { on_webhook(&s, ev).await }
        }),
        shutdown.clone(),
    );
    let b = jobs.run(
        jetrun_host::typed(STATE_CHANGE, move |ev: Event<StateChange>| {
            let s = s2.clone();
            async move { on_job_event(&s, ev.event).await }
        }),
        shutdown,
    );
    let (ra, rb) = tokio::join!(a, b);
    ra?;
    rb?;
    Ok(())
}

fn transient(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::retry(e.to_string(), Duration::from_secs(2))
}

/// A webhook ([`WEBHOOK`]): answer the refusals of rules with a reply.
async fn on_webhook(s: &Shared, ev: Event<Value>) -> Result<(), HandlerError> {
    let (payload, msg) = (ev.event, ev.msg);
    let prefix = format!("{}.webhook.github.", s.names.prefix());
    let Some(event) = msg.subject.strip_prefix(&prefix).map(str::to_string) else {
        return Ok(());
    };
    // Always a valid envelope here ([`WEBHOOK`] requires its type).
    let Ok(env) = msg.envelope.as_ref() else {
        return Ok(());
    };
    let delivery = env.id.clone();
    let client = s
        .client
        .for_installation(payload.pointer("/installation/id").and_then(Value::as_u64));
    for m in s.rules.evaluate(&event, &payload, &delivery) {
        let Some(target) = &m.reply else { continue };
        let answer = match (&m.refused, &m.job) {
            (Some(why), _) => why.clone(),
            (None, Err(why)) => format!("Cannot run `{}`: {why}", m.rule),
            (None, Ok(spec)) => match jetrun_nats::submit::validate(spec, &s.names) {
                Ok(()) => match limit_refusal(s, &m.rule, &delivery).await? {
                    Some(why) => why,
                    None => continue,
                },
                Err(e) => format!("Cannot run `{}`: {e}", m.rule),
            },
        };
        let key = format!("refused.{}.{}", sanitize(&delivery), m.rule);
        post_once(s, &client, &key, target, &format!(":no_entry: {answer}")).await?;
    }
    Ok(())
}

/// Route's refusal of `rule` for `delivery` under `guard.max_running_per_repository`
/// (decision 41), `None` when the rule has no limit or route admitted the job. Route
/// decides; until it has, the event is retried.
async fn limit_refusal(s: &Shared, rule: &str, delivery: &str) -> Result<Option<String>, HandlerError> {
    let limited = s
        .rules
        .rules
        .iter()
        .any(|r| r.name == rule && r.max_running_per_repository.is_some());
    if !limited {
        return Ok(None);
    }
    let key = jetrun_route::limit::verdict_key(delivery, rule);
    match s.claims.get(&key).await.map_err(transient)? {
        Some(v) => Ok(match jetrun_route::limit::Verdict::decode(&v) {
            Some(jetrun_route::limit::Verdict::Refused(why)) => Some(why),
            _ => None,
        }),
        None => Err(HandlerError::retry(
            format!("route has not decided {rule} for {delivery} yet"),
            Duration::from_secs(1),
        )),
    }
}

/// A job state change ([`STATE_CHANGE`]): acknowledge at admission, answer at the end.
async fn on_job_event(s: &Shared, change: StateChange) -> Result<(), HandlerError> {
    let rec = &change.record;
    let labels = &rec.spec.labels;
    if labels.get(jetrun_route::REPLY_LABEL).map(String::as_str) != Some("github") {
        return Ok(());
    }
    let Some(target) = target_of(rec) else {
        debug!(job_id = %rec.id, "reply labels incomplete; nothing to answer");
        return Ok(());
    };
    let client = s.client.for_installation(
        labels
            .get(jetrun_route::INSTALLATION_LABEL)
            .and_then(|i| i.parse().ok()),
    );
    let rule = labels.get("jetrun.rule").cloned().unwrap_or_default();
    let reply = s
        .rules
        .rules
        .iter()
        .find(|r| r.name == rule)
        .and_then(|r| r.reply.clone())
        .unwrap_or(Reply {
            acknowledge: None,
            success: None,
            failure: None,
        });
    if change.from.is_none() {
        let ack = reply.acknowledge.as_deref().unwrap_or("eyes");
        let key = format!("ack.{}", sanitize(&rec.id));
        match (ack, target.comment_id) {
            ("none", _) => {}
            ("comment", _) | (_, None) => {
                let body = format!(
                    ":hourglass: `{rule}` started: job `{}` ({}).",
                    rec.id,
                    logs_url(s, rec)
                );
                post_once(s, &client, &key, &target, &body).await?;
            }
            (content, Some(cid)) => {
                if claim(s, &key).await? != Claim::Done {
                    match client.react(&target.repository, cid, content).await {
                        Ok(()) => done(s, &key, "reacted").await?,
                        Err(e) if e.is_transient() => return Err(transient(e)),
                        Err(e) => warn!(job_id = %rec.id, error = %e, "acknowledgement refused by GitHub"),
                    }
                }
            }
        }
    }
    if change.to.is_terminal() {
        let body = render(s, &rule, &reply, rec);
        post_once(
            s,
            &client,
            &format!("posted.{}", sanitize(&rec.id)),
            &target,
            &body,
        )
        .await?;
    }
    Ok(())
}

fn target_of(rec: &JobRecord) -> Option<ReplyTarget> {
    let l = &rec.spec.labels;
    Some(ReplyTarget {
        repository: l.get("github.repository")?.clone(),
        issue: l.get("github.issue")?.parse().ok()?,
        comment_id: l.get("github.comment").and_then(|c| c.parse().ok()),
    })
}

fn logs_url(s: &Shared, rec: &JobRecord) -> String {
    format!("{}/v1/jobs/{}", s.public_url, rec.id)
}

/// The answer comment for a terminal record.
pub fn render_answer(rule: &str, reply: &Reply, rec: &JobRecord, logs_url: &str) -> String {
    let secs = (rec.updated_at - rec.created_at).num_seconds().max(0);
    let duration = if secs >= 60 {
        format!("{}m {}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    };
    let ok = rec.status == jetrun_core::JobStatus::Succeeded;
    let result = rec.result.clone().map(Value::Object).unwrap_or(json!({}));
    let ctx = json!({
        "rule": rule,
        "job_id": rec.id,
        "status": rec.status.as_str(),
        "exit_code": rec.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "none".into()),
        "error": rec.error.as_ref().map(|e| e.message.clone()).unwrap_or_default(),
        "result": result,
        "result_json": serde_json::to_string(&result).unwrap_or_default(),
        "result_error": rec.result_error.clone().unwrap_or_default(),
        "duration": duration,
        "logs_url": logs_url,
        "labels": rec.spec.labels,
    });
    let default_ok = "`{{ rule }}` {{ status }} in {{ duration }}: `{{ result_json }}` ([job {{ job_id }}]({{ logs_url }}))";
    let default_fail = "`{{ rule }}` {{ status }} after {{ duration }} ([job {{ job_id }}]({{ logs_url }}))";
    let t = if ok {
        reply.success.as_deref().unwrap_or(default_ok)
    } else {
        reply.failure.as_deref().unwrap_or(default_fail)
    };
    let mut body = jetrun_route::template::Template::parse(t)
        .and_then(|t| t.render(&ctx))
        .unwrap_or_else(|e| {
            // A template naming a result field the task did not write: still answer.
            format!(
                "`{rule}` {} in {duration} (reply template: {e}). Result: `{}`. Job {}: {logs_url}",
                rec.status.as_str(),
                ctx["result_json"].as_str().unwrap_or(""),
                rec.id
            )
        });
    if !ok && let Some(e) = &rec.error {
        body.push_str(&format!("\n\n> {}", e.message));
    }
    if let Some(e) = &rec.result_error {
        body.push_str(&format!("\n\nThe job's result was refused: {e}"));
    }
    body
}

fn render(s: &Shared, rule: &str, reply: &Reply, rec: &JobRecord) -> String {
    render_answer(rule, reply, rec, &logs_url(s, rec))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// Ours now: nobody tried before.
    New,
    /// Claimed earlier (at this time) and not known to be done: maybe posted.
    Pending(chrono::DateTime<chrono::Utc>),
    /// Posted.
    Done,
}

async fn claim(s: &Shared, key: &str) -> Result<Claim, HandlerError> {
    let now = chrono::Utc::now();
    match s
        .claims
        .create(key, format!("claimed {}", now.to_rfc3339()).into())
        .await
    {
        Ok(_) => Ok(Claim::New),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let v = s.claims.get(key).await.map_err(transient)?.unwrap_or_default();
            let v = String::from_utf8_lossy(&v);
            if v.starts_with("done") {
                return Ok(Claim::Done);
            }
            let at = v
                .strip_prefix("claimed ")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.trim()).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or(now - chrono::TimeDelta::hours(1));
            Ok(Claim::Pending(at))
        }
        Err(e) => Err(transient(e)),
    }
}

async fn done(s: &Shared, key: &str, what: &str) -> Result<(), HandlerError> {
    s.claims
        .put(key, format!("done {what}").into())
        .await
        .map(|_| ())
        .map_err(transient)
}

/// Posts `body` once for `key`: claim, look for an earlier post of it if the claim was
/// not ours, post, mark done.
async fn post_once(
    s: &Shared,
    client: &Client,
    key: &str,
    t: &ReplyTarget,
    body: &str,
) -> Result<(), HandlerError> {
    let marker = format!("<!-- jetrun:{key} -->");
    let since = match claim(s, key).await? {
        Claim::Done => {
            debug!(%key, "already answered");
            return Ok(());
        }
        Claim::New => None,
        Claim::Pending(at) => Some(at),
    };
    let started = chrono::Utc::now();
    let full = format!("{body}\n\n{marker}");
    let check_since = since.unwrap_or(started);
    // Look first only if an earlier try may have posted; between two tries of ours
    // (the answer to a POST can be lost after GitHub stored it: a 502, a timeout).
    let mut look = since.is_some();
    let mut last = String::new();
    for attempt in 0..client.attempts() {
        if look {
            match client
                .find_comment(&t.repository, t.issue, &marker, check_since)
                .await
            {
                Ok(Some(id)) => {
                    info!(%key, comment_id = id, "answer found already posted");
                    return done(s, key, &id.to_string()).await;
                }
                Ok(None) => {}
                Err(e) if e.is_transient() => return Err(transient(e)),
                Err(e) => warn!(%key, error = %e, "cannot list the issue's comments"),
            }
        }
        match client.comment_checked(&t.repository, t.issue, &full).await {
            Ok(id) => {
                info!(%key, repo = %t.repository, issue = t.issue, comment_id = id, "answer posted");
                return done(s, key, &id.to_string()).await;
            }
            Err((e, maybe_posted)) => {
                if !e.is_transient() {
                    warn!(%key, error = %e, "GitHub refused the answer; not retried");
                    return done(s, key, &format!("refused {e}")).await;
                }
                last = e.to_string();
                look = maybe_posted || look;
                debug!(%key, attempt, error = %last, "answer not posted yet");
            }
        }
    }
    Err(transient(last))
}
