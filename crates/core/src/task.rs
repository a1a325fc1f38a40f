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
    /// When it happened.
    pub at: Timestamp,
}
