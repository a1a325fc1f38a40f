//! The node agent's request/reply services on `<prefix>.node.<node_id>.<service>` and its
//! entry in the `nodes` bucket. All bodies are JSON.

use serde::{Deserialize, Serialize};

/// The `logs` service: the tail of a job's task logs, or what follows an offset.
pub const SERVICE_LOGS: &str = "logs";
/// The `describe` service: how a job's task stands on this node.
pub const SERVICE_DESCRIBE: &str = "describe";

fn default_tail() -> usize {
    100
}

/// A request for a job's logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    /// The job.
    pub job_id: String,
    /// How many last lines of each stream (default 100). Ignored for a stream whose
    /// `*_from` offset is given.
    #[serde(default = "default_tail")]
    pub tail: usize,
    /// Follow stdout from this byte offset (from a previous reply) instead of tailing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_from: Option<u64>,
    /// Follow stderr from this byte offset instead of tailing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_from: Option<u64>,
}

/// The reply to a [`LogsRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReply {
    /// The job.
    pub job_id: String,
    /// The task whose logs these are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ref: Option<String>,
    /// Lines of stdout.
    #[serde(default)]
    pub stdout: Vec<String>,
    /// Lines of stderr.
    #[serde(default)]
    pub stderr: Vec<String>,
    /// Offset in stdout after these lines (pass it back as `stdout_from` to follow).
    #[serde(default)]
    pub stdout_offset: u64,
    /// Offset in stderr after these lines.
    #[serde(default)]
    pub stderr_offset: u64,
    /// Why there are no logs, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A request to describe a job's task on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeRequest {
    /// The job.
    pub job_id: String,
    /// The attempt asked about.
    pub attempt: u32,
}

/// The reply to a [`DescribeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeReply {
    /// The job.
    pub job_id: String,
    /// Whether this agent supervises that attempt.
    pub supervised: bool,
    /// Whether its task still runs.
    pub running: bool,
}

/// A node's entry in the `nodes` bucket (kept alive by a per-key TTL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node id (the key).
    pub node_id: String,
    /// The worker process running the agent.
    pub worker_id: String,
    /// The runner it launches tasks with.
    pub runner: String,
    /// Tasks it supervises now.
    pub tasks: usize,
    /// The queues this node's worker dispatches (`*`: every queue).
    #[serde(default)]
    pub queues: Vec<String>,
    /// When this entry was written.
    pub updated_at: jetrun_core::Timestamp,
}
