//! The job model: what a job asks for ([`JobSpec`]), what is known about it
//! ([`JobRecord`]) and the state machine every change goes through ([`Transition`]).
//!
//! ```text
//! queued → launching → running → succeeded | failed | timed_out | cancelled
//! launching|running → queued   (retry: attempt + 1, not_before = backoff)
//! queued|launching → cancelled | failed
//! ```
//! Terminal states never change. The store applies a transition with compare-and-set on
//! the record's revision; this module only decides whether it is legal.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Timestamp;

/// Default number of attempts before a job fails for good.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default job timeout: 30 minutes.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30 * 60;

/// What a job asks for. This is also the body of a `dev.jetrun.job.submitted.v1` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The queue the job goes to (a subject token).
    pub queue: String,
    /// The image to run: a name in the local image store, or a registry image for ECS.
    pub image: String,
    /// The command and its arguments; empty means the image's default.
    #[serde(default)]
    pub command: Vec<String>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Resource limits.
    #[serde(default)]
    pub resources: Resources,
    /// Wall-clock limit in seconds (default 1800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Attempts before the job fails for good (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Free-form labels, copied onto tasks (ECS tags).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The tenant the job is accounted to (quotas, rate limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Whether the task gets a network (default: none, loopback only).
    #[serde(default)]
    pub network: bool,
    /// Named host ports the task needs; each is given in `JETRUN_PORT_<NAME>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Caller's idempotency key: the same key yields the same job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Where to report completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Callback>,
    /// A git repository the runner clones into the task's work dir before the command
    /// runs (with the host's git; the job itself gets no network for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout: Option<Checkout>,
}

/// A repository to check out into the task's work dir before the command runs
/// (`docs/runner.md`, "Repository checkout").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkout {
    /// `https://...`, or an absolute local path the runner's config allows.
    pub repo: String,
    /// A branch, tag or commit id (a safe git ref: see [`crate::limits::valid_git_ref`]).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Shallow clone of this many commits (default: the full history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// Name of an environment variable **of the worker** holding a token for a private
    /// repository; must start with `JETRUN_GIT_TOKEN` so a job cannot name any other
    /// secret of the worker. Handed to git as an HTTP header, never to the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// Resource limits of a task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// CPU share, in cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// Completion callback: a NATS subject, or an HTTP URL (signed with HMAC-SHA256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Callback {
    /// Publish the completion event on this NATS subject.
    Nats(String),
    /// POST the completion event to this URL.
    Http(String),
}

impl JobSpec {
    /// A minimal spec.
    pub fn new(queue: impl Into<String>, image: impl Into<String>, command: Vec<String>) -> Self {
        Self {
            queue: queue.into(),
            image: image.into(),
            command,
            env: BTreeMap::new(),
            resources: Resources::default(),
            timeout_seconds: None,
            max_attempts: None,
            labels: BTreeMap::new(),
            tenant: None,
            network: false,
            ports: Vec::new(),
            idempotency_key: None,
            callback: None,
            checkout: None,
        }
    }

    /// The effective attempt limit.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1)
    }

    /// The effective timeout.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS))
    }

    /// The tenant, or `default`.
    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or("default")
    }
}

/// Derives a job id from an idempotency key: the same (queue, key) always gives the same
/// id, so a duplicate submission finds the existing job.
pub fn job_id_for_key(queue: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(queue.as_bytes());
    h.update([0u8]);
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid().to_string()
}

/// Whether `id` can be a job id (a KV key and a subject token).
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting to be claimed (possibly until `not_before`).
    Queued,
    /// Claimed by a worker; the task is being started.
    Launching,
    /// The task runs.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, could not launch, or ran out of attempts.
    Failed,
    /// Killed at its timeout.
    TimedOut,
    /// Cancelled by a user.
    Cancelled,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Launching,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::TimedOut,
        JobStatus::Cancelled,
    ];

    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::TimedOut | JobStatus::Cancelled
        )
    }

    /// The snake_case name, as in JSON and KV index keys.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Launching => "launching",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether `self → to` is an edge of the state machine.
    pub fn can_become(self, to: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (Queued, Launching)
                | (Queued, Cancelled)
                | (Queued, Failed)
                | (Launching, Running)
                | (Launching, Queued)
                | (Launching, Failed)
                | (Launching, Cancelled)
                | (Launching, TimedOut)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, TimedOut)
                | (Running, Cancelled)
                | (Running, Queued)
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?}; expected one of {}",
                    JobStatus::ALL.map(|s| s.as_str()).join(", ")
                )
            })
    }
}

/// Why a job failed, in a form machines can branch on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// A stable snake_case kind: `exit_code`, `launch_failed`, `lease_expired`,
    /// `timeout`, `cancelled`, `attempts_exhausted`, `invalid_spec`, ...
    pub kind: String,
    /// A human explanation.
    pub message: String,
}

impl JobError {
    /// A new error.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

/// Everything known about a job. Stored as JSON in the `jobs` bucket under its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job id.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// What it asked for.
    pub spec: JobSpec,
    /// Where it is.
    pub status: JobStatus,
    /// The current (or next) attempt, from 1.
    pub attempt: u32,
    /// Attempt limit.
    pub max_attempts: u32,
    /// The worker that claimed it: `host:pid:start-time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// The node whose agent supervises its task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The runner's reference to the task (container id, ECS task ARN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ref: Option<String>,
    /// The task's exit code, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The result the task left (`$JETRUN_RESULT`, see [`crate::result`]), once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Map<String, serde_json::Value>>,
    /// Why the task's result was refused (too large, not a JSON object); the job's own
    /// status is not changed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_error: Option<String>,
    /// When it was admitted.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
    /// When the current attempt started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it became terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Not to be claimed before this time (retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// The trace this job belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Where it came from: a webhook delivery id or an event id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Set when a cancel was asked for while the task ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// The current attempt's secret (32 random bytes, hex), set by the claim: the node
    /// agent signs the attempt's task events with it and settle checks them. Never part
    /// of the public JSON (API, state-change events): only the job store writes and
    /// reads it, through its own KV encoding. Never given to the task.
    #[serde(skip)]
    pub attempt_key: Option<crate::task::AttemptKey>,
}

/// A requested change of a job record.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Transition {
    /// `queued → launching`: a worker claims the job.
    Claim {
        /// Who claims.
        worker_id: String,
        /// On which node the task will run.
        node_id: String,
    },
    /// `launching → running`: the task started.
    Started {
        /// The runner's task reference.
        task_ref: String,
    },
    /// `running → succeeded | failed`: the task exited.
    Exited {
        /// Its exit code; 0 is success.
        exit_code: i32,
    },
    /// `running → succeeded | failed`: the task exited, with the result it left (or why
    /// that was refused). The status follows the exit code alone; a refused result only
    /// sets `result_error`. Settle applies this one from the `exited` task event, so the
    /// record and its state-change event carry the result from the same write.
    ExitedWith {
        /// Its exit code; 0 is success.
        exit_code: i32,
        /// The result the task left ([`crate::result`]).
        result: Option<serde_json::Map<String, serde_json::Value>>,
        /// Why the task's result was refused.
        result_error: Option<String>,
    },
    /// `launching | running → timed_out`.
    TimedOut,
    /// `→ cancelled`, from any non-terminal state.
    Cancel {
        /// Why.
        reason: String,
    },
    /// `launching | running → queued`, attempt + 1, unless attempts are exhausted.
    Retry {
        /// What went wrong with this attempt.
        error: JobError,
        /// Earliest next claim.
        not_before: Timestamp,
    },
    /// `→ failed` with an error (launch failure, exhausted attempts, invalid spec).
    Fail {
        /// Why.
        error: JobError,
    },
    /// Marks a running job for cancellation (the agent stops the task). Status unchanged.
    RequestCancel,
}

/// What is wrong with a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransitionErrorKind {
    /// The job is terminal; nothing changes it.
    Terminal,
    /// Not an edge of the state machine from the current state.
    Illegal,
    /// A retry was asked for but the last attempt was used.
    AttemptsExhausted,
}

/// A transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job_id}: cannot go from {from} to {to}: {kind:?}")]
pub struct TransitionError {
    /// What went wrong.
    pub kind: TransitionErrorKind,
    /// The job.
    pub job_id: String,
    /// Its current status.
    pub from: JobStatus,
    /// The refused target.
    pub to: JobStatus,
}

impl Transition {
    /// The status this transition leads to from `from`.
    pub fn target(&self, from: JobStatus) -> JobStatus {
        match self {
            Transition::Claim { .. } => JobStatus::Launching,
            Transition::Started { .. } => JobStatus::Running,
            Transition::Exited { exit_code: 0 } => JobStatus::Succeeded,
            Transition::Exited { .. } => JobStatus::Failed,
            Transition::ExitedWith { exit_code: 0, .. } => JobStatus::Succeeded,
            Transition::ExitedWith { .. } => JobStatus::Failed,
            Transition::TimedOut => JobStatus::TimedOut,
            Transition::Cancel { .. } => JobStatus::Cancelled,
            Transition::Retry { .. } => JobStatus::Queued,
            Transition::Fail { .. } => JobStatus::Failed,
            Transition::RequestCancel => from,
        }
    }
}

impl JobRecord {
    /// A freshly admitted job.
    pub fn new(id: String, spec: JobSpec, traceparent: Option<String>, source: Option<String>) -> Self {
        let now = crate::now();
        Self {
            id,
            queue: spec.queue.clone(),
            max_attempts: spec.max_attempts(),
            spec,
            status: JobStatus::Queued,
            attempt: 1,
            worker_id: None,
            node_id: None,
            task_ref: None,
            exit_code: None,
            error: None,
            result: None,
            result_error: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            not_before: None,
            traceparent,
            source,
            cancel_requested: false,
            attempt_key: None,
        }
    }

    fn exited(&mut self, exit_code: i32) {
        self.exit_code = Some(exit_code);
        if exit_code != 0 {
            self.error = Some(JobError::new(
                "exit_code",
                format!("task exited with code {exit_code}"),
            ));
        }
    }

    /// Applies `t` at time `now`, returning the new record, or why it is refused.
    pub fn apply(&self, t: &Transition, now: Timestamp) -> Result<JobRecord, TransitionError> {
        let to = t.target(self.status);
        let err = |kind| TransitionError {
            kind,
            job_id: self.id.clone(),
            from: self.status,
            to,
        };
        if self.status.is_terminal() {
            return Err(err(TransitionErrorKind::Terminal));
        }
        if matches!(t, Transition::RequestCancel) {
            let mut next = self.clone();
            next.cancel_requested = true;
            next.updated_at = now;
            return Ok(next);
        }
        if !self.status.can_become(to) {
            return Err(err(TransitionErrorKind::Illegal));
        }
        let mut next = self.clone();
        next.status = to;
        next.updated_at = now;
        match t {
            Transition::Claim { worker_id, node_id } => {
                next.worker_id = Some(worker_id.clone());
                next.node_id = Some(node_id.clone());
                next.not_before = None;
            }
            Transition::Started { task_ref } => {
                next.task_ref = Some(task_ref.clone());
                next.started_at = Some(now);
            }
            Transition::Exited { exit_code } => next.exited(*exit_code),
            Transition::ExitedWith {
                exit_code,
                result,
                result_error,
            } => {
                next.exited(*exit_code);
                next.result = result.clone();
                next.result_error = result_error.clone();
            }
            Transition::TimedOut => {
                next.error = Some(JobError::new(
                    "timeout",
                    format!("killed after its timeout of {} s", self.spec.timeout().as_secs()),
                ));
            }
            Transition::Cancel { reason } => {
                next.error = Some(JobError::new("cancelled", reason.clone()));
            }
            Transition::Retry { error, not_before } => {
                if self.attempt >= self.max_attempts {
                    return Err(err(TransitionErrorKind::AttemptsExhausted));
                }
                next.attempt += 1;
                next.error = Some(error.clone());
                next.not_before = Some(*not_before);
                next.worker_id = None;
                next.node_id = None;
                next.task_ref = None;
                next.started_at = None;
                next.exit_code = None;
            }
            Transition::Fail { error } => {
                next.error = Some(error.clone());
            }
            Transition::RequestCancel => {}
        }
        if to.is_terminal() {
            next.finished_at = Some(now);
        }
        Ok(next)
    }
}

/// Exponential backoff with full jitter for `attempt` (1-based): a random delay in
/// `[base/2, min(cap, base * 2^(attempt-1))]`.
pub fn backoff(attempt: u32, base: std::time::Duration, cap: std::time::Duration) -> std::time::Duration {
    use rand::Rng;
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let top = exp.min(cap).max(base / 2);
    let lo = (base / 2).min(top);
    let span = top.saturating_sub(lo).as_millis() as u64;
    lo + std::time::Duration::from_millis(if span == 0 {
        0
    } else {
        rand::rng().random_range(0..=span)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> JobRecord {
        JobRecord::new(
            "j1".into(),
            JobSpec::new("q", "busybox", vec!["true".into()]),
            None,
            None,
        )
    }

    #[test]
    fn happy_path() {
        let now = crate::now();
        let r = rec();
        let r = r
            .apply(
                &Transition::Claim {
                    worker_id: "w".into(),
                    node_id: "n".into(),
                },
                now,
            )
            .unwrap();
        assert_eq!(r.status, JobStatus::Launching);
        let r = r
            .apply(&Transition::Started { task_ref: "t".into() }, now)
            .unwrap();
        assert_eq!(r.status, JobStatus::Running);
        let r = r.apply(&Transition::Exited { exit_code: 0 }, now).unwrap();
        assert_eq!(r.status, JobStatus::Succeeded);
        assert!(r.finished_at.is_some());
        let e = r
            .apply(&Transition::Cancel { reason: "x".into() }, now)
            .unwrap_err();
        assert_eq!(e.kind, TransitionErrorKind::Terminal);
    }

    #[test]
    fn an_exit_with_a_result_records_it_and_the_status_follows_the_exit_code() {
        let now = crate::now();
        let running = rec()
            .apply(
                &Transition::Claim {
                    worker_id: "w".into(),
                    node_id: "n".into(),
                },
                now,
            )
            .and_then(|r| r.apply(&Transition::Started { task_ref: "t".into() }, now))
            .unwrap();
        let mut result = serde_json::Map::new();
        result.insert("answer".into(), serde_json::json!(42));
        let ok = running
            .apply(
                &Transition::ExitedWith {
                    exit_code: 0,
                    result: Some(result.clone()),
                    result_error: None,
                },
                now,
            )
            .unwrap();
        assert_eq!(ok.status, JobStatus::Succeeded);
        assert_eq!(ok.result, Some(result));
        let refused = running
            .apply(
                &Transition::ExitedWith {
                    exit_code: 3,
                    result: None,
                    result_error: Some("result too large".into()),
                },
                now,
            )
            .unwrap();
        assert_eq!(refused.status, JobStatus::Failed);
        assert_eq!(refused.exit_code, Some(3));
        assert_eq!(refused.result_error.as_deref(), Some("result too large"));
        assert_eq!(refused.error.unwrap().kind, "exit_code");
    }

    #[test]
    fn illegal_edges_are_refused() {
        let now = crate::now();
        let e = rec()
            .apply(&Transition::Exited { exit_code: 0 }, now)
            .unwrap_err();
        assert_eq!(e.kind, TransitionErrorKind::Illegal);
        assert_eq!((e.from, e.to), (JobStatus::Queued, JobStatus::Succeeded));
        let e = rec()
            .apply(&Transition::Started { task_ref: "t".into() }, now)
            .unwrap_err();
        assert_eq!(e.kind, TransitionErrorKind::Illegal);
    }

    #[test]
    fn retries_until_exhausted() {
        let now = crate::now();
        let mut r = rec();
        let claim = Transition::Claim {
            worker_id: "w".into(),
            node_id: "n".into(),
        };
        let retry = Transition::Retry {
            error: JobError::new("lease_expired", "x"),
            not_before: now,
        };
        for attempt in 1..=3 {
            assert_eq!(r.attempt, attempt);
            r = r.apply(&claim, now).unwrap();
            if attempt < 3 {
                r = r.apply(&retry, now).unwrap();
                assert_eq!(r.status, JobStatus::Queued);
            }
        }
        let e = r.apply(&retry, now).unwrap_err();
        assert_eq!(e.kind, TransitionErrorKind::AttemptsExhausted);
    }

    #[test]
    fn every_terminal_state_is_final() {
        for s in JobStatus::ALL {
            for t in JobStatus::ALL {
                if s.is_terminal() {
                    assert!(!s.can_become(t), "{s} -> {t}");
                }
            }
        }
    }

    #[test]
    fn job_ids_from_keys_are_stable_and_valid() {
        let a = job_id_for_key("q", "k");
        assert_eq!(a, job_id_for_key("q", "k"));
        assert_ne!(a, job_id_for_key("q2", "k"));
        assert!(valid_job_id(&a));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        use std::time::Duration;
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(10);
        for a in 1..20 {
            let d = backoff(a, base, cap);
            assert!(d >= base / 2 && d <= cap, "{a}: {d:?}");
        }
    }
}
