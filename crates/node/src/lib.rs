//! # jetrun-node
//!
//! The node protocol: what the rest of jetrun says to and hears from a node agent,
//! without the agent itself (and so without a runner).
//!
//! - [`protocol`]: the request/reply bodies of the agent's services on
//!   `<prefix>.node.<node_id>.<service>` (`logs`, `describe`) and a node's entry in the
//!   `nodes` bucket;
//! - [`client`]: asking a node for a job's logs or task state, and reading the fleet
//!   ([`request_logs`], [`request_describe`], [`nodes`]);
//! - [`signing`]: the `Jetrun-Task-Signature` of task events, made with the attempt's
//!   key, so settle believes only the node that runs an attempt;
//! - [`events`]: publishing a signed `dev.jetrun.task.lifecycle.v1` event
//!   ([`publish_task_event`]), as the agent and the ECS bridge do.
//!
//! Used by the agent (which serves and publishes), settle (which asks a node whether it
//! still supervises a task and checks signatures), the ECS bridge and the CLI.

pub mod client;
pub mod events;
pub mod protocol;
pub mod signing;

pub use client::{nodes, request_describe, request_logs};
pub use events::publish_task_event;

/// Kinds of node protocol failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeErrorKind {
    /// A body could not be encoded.
    Encode,
    /// An event does not match its schema: a producer bug, never retried.
    Invalid,
    /// A reply could not be decoded.
    Decode,
    /// NATS or JetStream did not take or answer the request: may work on retry.
    Unavailable,
    /// The node did not answer in time.
    Timeout,
}

/// A node protocol operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {kind:?}")]
pub struct NodeError {
    /// What kind of failure.
    pub kind: NodeErrorKind,
    /// What was being done (`publish <subject>`, `node <id>: logs`).
    pub what: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl NodeError {
    /// A failure with no underlying error.
    pub fn new(kind: NodeErrorKind, what: impl Into<String>) -> Self {
        Self {
            kind,
            what: what.into(),
            source: None,
        }
    }

    /// A failure caused by `source`.
    pub fn with_source(
        kind: NodeErrorKind,
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, NodeErrorKind::Unavailable | NodeErrorKind::Timeout)
    }
}
