//! # jetrun-route
//!
//! Rules that turn webhook events into job submissions. A rules file ([`rules`], YAML,
//! validated by `schemas/rules.json`) lists rules that match on event, action,
//! repository, ref, branch, labels and a comment-body regex with named captures; a
//! matching rule's job spec is rendered ([`template`]) and submitted with the
//! idempotency key `github/<delivery>/<rule>`, so a redelivered webhook submits nothing
//! new. Route publishes the submission only; dispatch admits it (decision 16).
//!
//! [`run`] consumes `<prefix>.webhook.>` from the webhooks stream with the durable
//! consumer `route` (made by `jetrun init`; route creates or updates it only where its
//! credential allows) under the consumer host: a transient failure is
//! retried, a job that cannot be rendered or is not a valid spec is dead-lettered with
//! the reason.
//!
//! A rule with `guard.max_running_per_repository` takes a slot for its job first
//! ([`limit`]): with every slot held by an active job, route submits nothing and records
//! the refusal, which the github function answers on the issue.

pub mod limit;
pub mod rules;
pub mod template;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{consumer, kv};
use jetrun_host::{ConsumerHost, HandlerError, HostConfig, Incoming};
use jetrun_nats::{EventPublisher, PublishErrorKind};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use rules::{Rules, RulesError, RulesErrorKind};

/// Settings of the route function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The rules file (default none: every event is acknowledged and nothing submitted).
    pub rules_file: Option<PathBuf>,
    /// Webhook events handled at once (default 16).
    pub concurrency: usize,
    /// How long the server waits for an ack before redelivering (default 30 s).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rules_file: None,
            concurrency: 16,
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// Route failed to start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The rules file was refused.
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// The consumer could not be created.
    #[error(transparent)]
    Topology(#[from] jetrun_nats::TopologyError),
    /// The host could not bind or run.
    #[error(transparent)]
    Host(#[from] jetrun_host::HostError),
    /// A rule has a per-repository limit and its bucket is missing.
    #[error("route: {0}")]
    Limits(String),
}

/// The durable consumer route reads webhooks with.
pub fn consumer_config(names: &jetrun_core::Names, config: &Config) -> consumer::pull::Config {
    consumer::pull::Config {
        ack_wait: config.ack_wait,
        ..jetrun_nats::Topology::new(names.clone()).route_consumer()
    }
}

/// The label marking a job whose rule has a `reply` (value `github`); with it route sets
/// `github.repository`, `github.issue` and `github.comment` (and `github.installation`,
/// the App installation of the event, when it has one).
pub const REPLY_LABEL: &str = "jetrun.reply";

/// The label carrying the webhook's `installation.id` (a GitHub App's installation), for
/// the github function's answers on jobs.
pub const INSTALLATION_LABEL: &str = "github.installation";

/// The idempotency key of the job a rule submits for a delivery.
pub fn idempotency_key(delivery: &str, rule: &str) -> String {
    format!("github/{delivery}/{rule}")
}

/// Handles one webhook event: evaluate the rules, submit every matching job. `limits` is
/// the bucket of per-repository slots ([`limit`]), needed when a rule has a limit.
pub async fn handle(
    store: &jetrun_nats::JobStore,
    publisher: &EventPublisher,
    rules: &Rules,
    limits: Option<&kv::Store>,
    msg: Incoming,
) -> Result<(), HandlerError> {
    let Some(event) = msg.subject.rsplit('.').next().map(str::to_string) else {
        return Ok(());
    };
    let prefix = format!("{}.webhook.github.", store.names().prefix());
    if !msg.subject.starts_with(&prefix) {
        debug!(subject = %msg.subject, "not a GitHub webhook; nothing to route");
        return Ok(());
    }
    let env = msg
        .envelope
        .as_ref()
        .map_err(|e| HandlerError::permanent("invalid_event", format!("no valid CloudEvent headers: {e}")))?;
    let payload: serde_json::Value = serde_json::from_slice(&msg.payload)
        .map_err(|e| HandlerError::permanent("invalid_json", format!("webhook body is not JSON: {e}")))?;
    let delivery = env.id.as_str();
    let mut failures = Vec::new();
    for m in rules.evaluate(&event, &payload, delivery) {
        if let Some(why) = &m.refused {
            // A guardrail's normal answer, not a failure: no job, no dead letter (the
            // github function answers on the issue when the rule has a reply).
            info!(rule = %m.rule, %delivery, reason = %why, "rule refused the event");
            continue;
        }
        let mut spec = match m.job {
            Ok(s) => s,
            Err(reason) => {
                warn!(rule = %m.rule, %delivery, %reason, "rule matched but its job could not be rendered");
                failures.push(format!("rule {}: {reason}", m.rule));
                continue;
            }
        };
        spec.idempotency_key = Some(idempotency_key(delivery, &m.rule));
        spec.labels
            .entry("jetrun.rule".into())
            .or_insert_with(|| m.rule.clone());
        spec.labels
            .entry("github.delivery".into())
            .or_insert_with(|| delivery.to_string());
        if let Some(t) = &m.reply {
            // Where the github function answers (decision 35).
            spec.labels.insert(REPLY_LABEL.into(), "github".into());
            spec.labels
                .insert("github.repository".into(), t.repository.clone());
            spec.labels.insert("github.issue".into(), t.issue.to_string());
            if let Some(c) = t.comment_id {
                spec.labels.insert("github.comment".into(), c.to_string());
            }
            if let Some(i) = payload
                .pointer("/installation/id")
                .and_then(serde_json::Value::as_u64)
            {
                spec.labels.insert(INSTALLATION_LABEL.into(), i.to_string());
            }
        }
        // Route only publishes the submission (`ce-id` = the job id from the idempotency
        // key): dispatch admits it on consume. Route's credential may not write the jobs
        // bucket (decision 16), so a stolen one cannot rewrite a job record.
        if let Err(e) = jetrun_nats::submit::validate(&spec, store.names()) {
            failures.push(format!("rule {}: {e}", m.rule));
            continue;
        }
        let id = jetrun_nats::submit::job_id_for(&spec);
        let max = rules
            .rules
            .iter()
            .find(|r| r.name == m.rule)
            .and_then(|r| r.max_running_per_repository);
        if let Some(max) = max {
            let Some(repository) = payload.pointer("/repository/full_name").and_then(|v| v.as_str()) else {
                failures.push(format!(
                    "rule {}: max_running_per_repository on an event without repository.full_name",
                    m.rule
                ));
                continue;
            };
            let Some(kv) = limits else {
                return Err(HandlerError::retry(
                    "per-repository limit: no slots bucket",
                    Duration::from_secs(2),
                ));
            };
            match limit::decide(kv, store, &m.rule, repository, max, delivery, &id).await {
                Ok(limit::Verdict::Admitted) => {}
                Ok(limit::Verdict::Refused(why)) => {
                    info!(rule = %m.rule, %delivery, %repository, reason = %why, "rule refused the event: repository at its limit");
                    continue;
                }
                Err(e) => return Err(HandlerError::retry(e.to_string(), Duration::from_secs(2))),
            }
        }
        match jetrun_nats::submit::publish_submission(
            publisher,
            store.names(),
            &id,
            &spec,
            env.traceparent.clone(),
        )
        .await
        {
            Ok(_) => info!(rule = %m.rule, %delivery, job_id = %id, "rule submitted a job"),
            Err(e) if e.kind == PublishErrorKind::Invalid => failures.push(format!("rule {}: {e}", m.rule)),
            // Transient: retry the whole event; jobs already submitted are deduplicated
            // by their id (`Nats-Msg-Id`) and by dispatch's create-if-absent admit.
            Err(e) => return Err(HandlerError::retry(e.to_string(), Duration::from_secs(2))),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(HandlerError::permanent("rule_failed", failures.join("; ")))
    }
}

/// Loads the rules (if configured), ensures the consumer and routes until `shutdown`.
pub async fn run(
    ctx: jetrun_host::Context,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RouteError> {
    let rules = match &config.rules_file {
        Some(p) => {
            let r = Rules::load(p)?;
            info!(file = %p.display(), rules = r.rules.len(), "rules loaded");
            r
        }
        None => {
            warn!("no rules file: webhook events are acknowledged and no job is submitted");
            Rules::default()
        }
    };
    let names = ctx.names.clone();
    // `jetrun init` (the operator) creates this consumer; route's own credential may only
    // read it, so a refused create or update is not fatal when the consumer exists.
    if let Err(e) = jetrun_nats::topology::ensure_consumer(
        &ctx.js,
        &names.stream_webhooks(),
        consumer_config(&names, &config),
    )
    .await
    {
        warn!(error = %e, "cannot create or update the route consumer; using it as `jetrun init` left it");
    }
    let host = ConsumerHost::bind(
        &ctx.js,
        &names,
        &names.stream_webhooks(),
        &names.consumer_route(),
        HostConfig {
            origin: "route".into(),
            concurrency: config.concurrency,
            ..Default::default()
        },
    )
    .await?;
    let limits = if rules.rules.iter().any(|r| r.max_running_per_repository.is_some()) {
        let bucket = limit::state_bucket(&names);
        Some(ctx.js.get_key_value(&bucket).await.map_err(|e| {
            RouteError::Limits(format!(
                "a rule has max_running_per_repository and bucket {bucket} is missing ({e}): \
                 run `jetrun init` as the operator"
            ))
        })?)
    } else {
        None
    };
    let shared = Arc::new((ctx.store.clone(), ctx.publisher("route"), rules, limits));
    host.run(
        move |msg: Incoming| {
            let shared = shared.clone();
            async move { handle(&shared.0, &shared.1, &shared.2, shared.3.as_ref(), msg).await }
        },
        shutdown,
    )
    .await?;
    Ok(())
}
