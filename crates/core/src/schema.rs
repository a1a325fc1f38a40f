//! The published JSON Schemas (draft 2020-12), embedded at build time from `schemas/` and
//! compiled once on first use.
//!
//! Each CloudEvent type (`ce-type`) maps to one schema; [`validate`] checks an event body
//! against its type's schema and reports every failure with its JSON pointer.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Event types, their schema file names and the embedded schema text.
pub mod types {
    /// A job submission: the body is a [`crate::JobSpec`].
    pub const JOB_SUBMITTED: &str = "dev.jetrun.job.submitted.v1";
    /// A job record, as stored in the jobs bucket (not published as an event by itself).
    pub const JOB_RECORD: &str = "dev.jetrun.job.record.v1";
    /// A job changed state.
    pub const JOB_STATE_CHANGED: &str = "dev.jetrun.job.state_changed.v1";
    /// A task lifecycle event.
    pub const TASK_LIFECYCLE: &str = "dev.jetrun.task.lifecycle.v1";
    /// A scale request.
    pub const SCALE_REQUESTED: &str = "dev.jetrun.scale.requested.v1";
    /// A scale signal.
    pub const SCALE_SIGNAL: &str = "dev.jetrun.scale.signal.v1";
    /// A dead-letter entry.
    pub const DEAD_LETTER: &str = "dev.jetrun.dlq.entry.v1";
    /// A service's scale spec, as stored in the scale bucket.
    pub const SCALE_SPEC: &str = "dev.jetrun.scale.spec.v1";
    /// A raw GitHub webhook delivery.
    pub const GITHUB_WEBHOOK: &str = "dev.jetrun.webhook.github.v1";
}

/// `(event type, file name, schema text)` for every embedded schema.
pub const SCHEMAS: &[(&str, &str, &str)] = &[
    (
        types::JOB_SUBMITTED,
        "job-submission.json",
        include_str!("../../../schemas/job-submission.json"),
    ),
    (
        types::JOB_RECORD,
        "job-record.json",
        include_str!("../../../schemas/job-record.json"),
    ),
    (
        types::JOB_STATE_CHANGED,
        "job-state-change.json",
        include_str!("../../../schemas/job-state-change.json"),
    ),
    (
        types::TASK_LIFECYCLE,
        "task-event.json",
        include_str!("../../../schemas/task-event.json"),
    ),
    (
        types::SCALE_REQUESTED,
        "scale-request.json",
        include_str!("../../../schemas/scale-request.json"),
    ),
    (
        types::SCALE_SIGNAL,
        "scale-signal.json",
        include_str!("../../../schemas/scale-signal.json"),
    ),
    (
        types::DEAD_LETTER,
        "dead-letter.json",
        include_str!("../../../schemas/dead-letter.json"),
    ),
    (
        types::GITHUB_WEBHOOK,
        "github-webhook.json",
        include_str!("../../../schemas/github-webhook.json"),
    ),
    (
        types::SCALE_SPEC,
        "scale-spec.json",
        include_str!("../../../schemas/scale-spec.json"),
    ),
];

/// One reason an instance does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// JSON pointer to the offending value (`""` is the whole document).
    pub pointer: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{p}: {}", self.reason)
    }
}

/// What kind of schema failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaErrorKind {
    /// No schema for this event type.
    UnknownType,
    /// The body is not JSON.
    NotJson,
    /// The body does not match the schema.
    Invalid,
}

/// An event body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct SchemaError {
    /// What kind of failure.
    pub kind: SchemaErrorKind,
    /// The event type checked against.
    pub event_type: String,
    /// Every violation (for `Invalid`), or one entry explaining the failure.
    pub errors: Vec<ValidationError>,
}

impl SchemaError {
    fn describe(&self) -> String {
        let detail: Vec<String> = self.errors.iter().map(|e| e.to_string()).collect();
        match self.kind {
            SchemaErrorKind::UnknownType => format!("unknown event type {:?}", self.event_type),
            SchemaErrorKind::NotJson => {
                format!("body of {} is not JSON: {}", self.event_type, detail.join("; "))
            }
            SchemaErrorKind::Invalid => format!(
                "{} does not match its schema: {}",
                self.event_type,
                detail.join("; ")
            ),
        }
    }
}

/// Base URI of every schema's `$id`; cross-file `$ref`s resolve against it offline.
pub const BASE_URI: &str = "https://jetrun.dev/schemas/";

type Compiled = HashMap<&'static str, Result<jsonschema::Validator, String>>;

fn compiled() -> &'static Compiled {
    static C: OnceLock<Compiled> = OnceLock::new();
    C.get_or_init(|| {
        let parsed: Vec<(&str, &str, Result<serde_json::Value, String>)> = SCHEMAS
            .iter()
            .map(|(ty, file, text)| {
                (
                    *ty,
                    *file,
                    serde_json::from_str(text).map_err(|e| format!("{file}: {e}")),
                )
            })
            .collect();
        // Every schema is registered under its `$id`, so `{"$ref": "job-submission.json"}`
        // resolves without any network access.
        let resources: Vec<(String, serde_json::Value)> = parsed
            .iter()
            .filter_map(|(_, file, v)| v.as_ref().ok().map(|v| (format!("{BASE_URI}{file}"), v.clone())))
            .collect();
        let registry = jsonschema::Registry::new()
            .extend(resources)
            .and_then(|b| b.prepare())
            .map_err(|e| format!("schema registry: {e}"));
        parsed
            .into_iter()
            .map(|(ty, file, v)| {
                let built = v.and_then(|s| {
                    let registry = registry.as_ref().map_err(Clone::clone)?;
                    jsonschema::options()
                        .with_draft(jsonschema::Draft::Draft202012)
                        .with_registry(registry)
                        .build(&s)
                        .map_err(|e| format!("{file}: {e}"))
                });
                (ty, built)
            })
            .collect()
    })
}

/// The schema text of an event type.
pub fn schema_text(event_type: &str) -> Option<&'static str> {
    SCHEMAS
        .iter()
        .find(|(t, _, _)| *t == event_type)
        .map(|(_, _, s)| *s)
}

/// Validates a parsed JSON value against `event_type`'s schema.
pub fn validate_value(event_type: &str, value: &serde_json::Value) -> Result<(), SchemaError> {
    let fail = |kind, errors| SchemaError {
        kind,
        event_type: event_type.to_string(),
        errors,
    };
    let validator = match compiled().get(event_type) {
        None => return Err(fail(SchemaErrorKind::UnknownType, vec![])),
        // An embedded schema that does not compile is a build defect; the unit tests
        // compile every schema, so this is reported rather than panicking.
        Some(Err(e)) => {
            return Err(fail(
                SchemaErrorKind::UnknownType,
                vec![ValidationError {
                    pointer: String::new(),
                    reason: e.clone(),
                }],
            ));
        }
        Some(Ok(v)) => v,
    };
    let errors: Vec<ValidationError> = validator
        .iter_errors(value)
        .map(|e| ValidationError {
            pointer: e.instance_path().to_string(),
            reason: e.to_string(),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(fail(SchemaErrorKind::Invalid, errors))
    }
}

/// Parses and validates an event body against `event_type`'s schema.
pub fn validate(event_type: &str, body: &[u8]) -> Result<serde_json::Value, SchemaError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| SchemaError {
        kind: SchemaErrorKind::NotJson,
        event_type: event_type.to_string(),
        errors: vec![ValidationError {
            pointer: String::new(),
            reason: e.to_string(),
        }],
    })?;
    validate_value(event_type, &value)?;
    Ok(value)
}

/// Compiles every embedded schema; returns the first that fails. Called by tests and at
/// start-up so a broken schema is found early.
pub fn check_all() -> Result<(), String> {
    for (ty, _, _) in SCHEMAS {
        if let Some(Err(e)) = compiled().get(ty) {
            return Err(e.clone());
        }
    }
    Ok(())
}
