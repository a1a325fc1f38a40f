//! # jetrun-autoscale
//!
//! Queue depth to scale signals, within the bounds an operator declared.
//!
//! - [`spec`]: the scale bucket (`spec.<service>`, `burst.<service>`, `state.<service>`)
//!   and [`apply_request`], which turns a scale request (NATS, HTTP or CLI) into a change
//!   or a typed refusal;
//! - [`decide`]: the pure decision (no I/O, explicit clock);
//! - [`observe`]: queue depth from the JetStream API (consumer `num_pending` and
//!   `num_ack_pending`) plus running jobs from the job index;
//! - [`backend`]: who applies a decision: `local` (supervised `jetrun worker` processes),
//!   `ecs-service` (feature `ecs`), `signal` (emit only);
//! - [`leader`]: one active autoscaler, elected through a TTL'd KV lease;
//! - [`autoscaler`]: the loop tying them together, plus the scale-request consumer
//!   ([`subscriptions`], created by `jetrun init`; its requests checked and decoded by
//!   the host as [`SCALE_REQUEST`]).

pub mod autoscaler;
pub mod backend;
pub mod config;
pub mod decide;
pub mod leader;
pub mod observe;
pub mod spec;

pub use autoscaler::{AutoscaleError, Autoscaler, SCALE_REQUEST, request_subscription, subscriptions};
pub use config::Config;
pub use spec::{Applied, ScaleRequestError, ScaleRequestErrorKind, apply_request, declare};
