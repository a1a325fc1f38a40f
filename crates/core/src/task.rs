//! Task lifecycle events, published by runners' node agents and the ECS bridge on
//! `<prefix>.task.<phase>.<job_id>`; settle turns them into job transitions.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskPhase {
    /// The container started.
    Started,
    /// The container exited by itself; `exit_code` is set.
    Exited,
    /// Killed at its timeout.
    TimedOut,
    /// Stopped on request (cancel).
    Stopped,
    /// It could not be started; `message` says why.
    LaunchFailed,
    /// Its supervisor lost track of it (node died, task vanished).
    Lost,
}

impl TaskPhase {
    /// The phases that end a task (every phase but `Started`).
    pub const FINAL: [TaskPhase; 5] = [
        TaskPhase::Exited,
        TaskPhase::TimedOut,
        TaskPhase::Stopped,
        TaskPhase::LaunchFailed,
        TaskPhase::Lost,
    ];

    /// The snake_case name used in subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskPhase::Started => "started",
            TaskPhase::Exited => "exited",
            TaskPhase::TimedOut => "timed_out",
            TaskPhase::Stopped => "stopped",
            TaskPhase::LaunchFailed => "launch_failed",
            TaskPhase::Lost => "lost",
        }
    }
}

/// One task lifecycle event (`dev.jetrun.task.lifecycle.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The job the task runs.
    pub job_id: String,
    /// Which attempt of the job.
    pub attempt: u32,
    /// What happened.
    pub phase: TaskPhase,
    /// The runner's task reference.
    pub task_ref: String,
    /// The node (agent) that saw it.
    pub node_id: String,
    /// Exit code, for `exited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Details, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The result the task left, for `exited` (see [`crate::result`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Map<String, serde_json::Value>>,
    /// Why the task's result was refused, for `exited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_error: Option<String>,
    /// When it happened.
    pub at: Timestamp,
}

/// The header carrying a task event's signature: `v1=<hex HMAC-SHA256>`, keyed by the
/// attempt's [`AttemptKey`] (see `jetrun_agent::signing` for the signed input).
pub const SIGNATURE_HEADER: &str = "Jetrun-Task-Signature";

/// A job attempt's secret: 32 random bytes, hex-encoded, created by the claim and kept in
/// the job record (never in its public JSON, never in the task's environment). Only the
/// node agent that runs the attempt and settle, which checks its task events, use it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AttemptKey(String);

impl AttemptKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        Self(hex::encode(b))
    }

    /// A key from its hex form (as stored); `None` unless it is 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(s.to_ascii_lowercase()))
    }

    /// The hex form, for storing.
    pub fn as_hex(&self) -> &str {
        &self.0
    }

    /// The raw 32 bytes: the HMAC key.
    pub fn bytes(&self) -> Vec<u8> {
        hex::decode(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for AttemptKey {
    // Records are logged with `?`: the key must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttemptKey(<redacted>)")
    }
}
