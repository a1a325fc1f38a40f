//! # jetrun-core
//!
//! The types every jetrun component shares, and nothing that does I/O:
//!
//! - [`envelope`]: the CloudEvents 1.0 envelope carried in NATS headers (binary mode),
//!   with W3C trace context;
//! - [`names`]: subjects, stream, consumer and bucket names, all derived from one
//!   configurable prefix so two deployments can share a server;
//! - [`job`]: the job spec, the job record and the state machine that guards every
//!   transition;
//! - [`task`], [`scale`], [`dlq`]: the task lifecycle, autoscaling and dead-letter records;
//! - [`result`]: the small JSON result a task leaves, size-capped and checked;
//! - [`callback`]: where a completion callback may go (tenant namespace, address ranges);
//! - [`schema`]: the JSON Schemas of `schemas/`, embedded at build time and compiled once.
//!
//! Higher layers (`jetrun-nats`, the hosts, the functions) turn these into messages and
//! key-value entries.

pub mod callback;
pub mod dlq;
pub mod envelope;
pub mod job;
pub mod limits;
pub mod names;
pub mod result;
pub mod scale;
pub mod schema;
pub mod task;

pub use envelope::{Envelope, EnvelopeError, EnvelopeErrorKind};
pub use job::{JobError, JobRecord, JobSpec, JobStatus, TransitionError};
pub use limits::{SpecError, SpecLimits, SpecViolation};
pub use names::Names;
pub use schema::{SchemaError, ValidationError};

/// Current time as an RFC 3339 UTC timestamp type used across records.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// The current time, in the one place records get it from.
pub fn now() -> Timestamp {
    chrono::Utc::now()
}
