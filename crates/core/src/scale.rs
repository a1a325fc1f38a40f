//! Autoscaling records: a service's spec (the operator's declared bounds), the scale
//! requests that change it, the signals the autoscaler emits and the state it records.
//!
//! Layout of the scale bucket (`names.bucket_scale()`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `spec.<service>` | [`ScaleSpec`] | operators (`jetrun scale set`) and `set` requests |
//! | `burst.<service>` | [`Burst`] | `burst` requests; deleted by `reset` |
//! | `state.<service>` | [`ScaleState`] | the autoscaler leader only |
//!
//! Keeping the burst apart from the spec and the state means a request and the leader's
//! tick never write the same key, so neither overwrites the other.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// How replicas are provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Worker processes on this host.
    #[default]
    Local,
    /// Infrastructure outside jetrun (ECS services, ASGs, KEDA).
    Infra,
}

/// Which backend applies a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Supervise N `jetrun worker` processes on this host.
    Local,
    /// `UpdateService desiredCount` on an ECS service.
    EcsService,
    /// Emit signals only.
    #[default]
    Signal,
}

/// A service's scaling spec, stored in the `scale` bucket under its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleSpec {
    /// The service name.
    pub service: String,
    /// The queue whose depth drives it.
    pub queue: String,
    /// Lower bound of replicas.
    pub min: u32,
    /// Upper bound of replicas.
    pub max: u32,
    /// Jobs one replica is expected to handle at once.
    pub target_per_replica: u32,
    /// Whether load and requests may move it at all.
    #[serde(default = "yes")]
    pub scalable: bool,
    /// Local processes or infrastructure.
    #[serde(default)]
    pub strategy: Strategy,
    /// Who applies decisions.
    #[serde(default)]
    pub backend: BackendKind,
    /// Seconds of lower demand before scaling down (default 300).
    #[serde(default = "default_stabilization")]
    pub stabilization_seconds: u64,
    /// Depth at which a service at zero is woken (default 1).
    #[serde(default = "one")]
    pub activation: u64,
    /// Seconds idle before scaling to zero, when `min` is 0 (default 300).
    #[serde(default = "default_stabilization")]
    pub idle_seconds: u64,
    /// Largest step up in one decision (default 10).
    #[serde(default = "default_step")]
    pub max_step: u32,
    /// Whether each replica binds fixed ports (then `local` replicas are refused).
    #[serde(default)]
    pub port_bound: bool,
    /// Backend-specific settings (e.g. ECS cluster and service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_config: Option<serde_json::Value>,
}

/// Key of a service's spec in the scale bucket.
pub fn spec_key(service: &str) -> String {
    format!("spec.{service}")
}

/// Key of a service's active burst in the scale bucket.
pub fn burst_key(service: &str) -> String {
    format!("burst.{service}")
}

/// Key of a service's recorded state in the scale bucket.
pub fn state_key(service: &str) -> String {
    format!("state.{service}")
}

/// Why a spec is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scale spec for {service:?}: {reason}")]
pub struct InvalidSpec {
    /// The service.
    pub service: String,
    /// Why.
    pub reason: String,
    /// Whether the refusal is because `local` replicas of a port-bound service were asked.
    pub port_bound: bool,
}

impl ScaleSpec {
    /// A spec with the defaults for everything but the bounds.
    pub fn new(
        service: impl Into<String>,
        queue: impl Into<String>,
        min: u32,
        max: u32,
        target_per_replica: u32,
    ) -> Self {
        Self {
            service: service.into(),
            queue: queue.into(),
            min,
            max,
            target_per_replica,
            scalable: true,
            strategy: Strategy::default(),
            backend: BackendKind::default(),
            stabilization_seconds: default_stabilization(),
            activation: one(),
            idle_seconds: default_stabilization(),
            max_step: default_step(),
            port_bound: false,
            backend_config: None,
        }
    }

    /// Whether replicas are processes on one host (the `local` strategy or backend).
    pub fn is_local(&self) -> bool {
        self.strategy == Strategy::Local || self.backend == BackendKind::Local
    }

    /// Checks names and bounds, and refuses more than one `local` replica of a
    /// port-bound service (two processes cannot bind the same fixed ports).
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let bad = |reason: String, port_bound: bool| {
            Err(InvalidSpec {
                service: self.service.clone(),
                reason,
                port_bound,
            })
        };
        if let Err(e) = crate::names::validate_token(&self.service) {
            return bad(format!("service: {e}"), false);
        }
        if let Err(e) = crate::names::validate_token(&self.queue) {
            return bad(format!("queue: {e}"), false);
        }
        if self.min > self.max {
            return bad(format!("min {} is above max {}", self.min, self.max), false);
        }
        if self.target_per_replica == 0 {
            return bad("target_per_replica must be at least 1".into(), false);
        }
        if self.max_step == 0 {
            return bad("max_step must be at least 1".into(), false);
        }
        if self.activation == 0 {
            return bad("activation must be at least 1".into(), false);
        }
        if self.port_bound && self.is_local() && self.max > 1 {
            return bad(
                format!(
                    "service is port-bound: local replicas would collide on its fixed ports, so max must be at most 1 (got {}); use an infra backend to run more",
                    self.max
                ),
                true,
            );
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}
fn one() -> u64 {
    1
}
fn default_stabilization() -> u64 {
    300
}
fn default_step() -> u32 {
    10
}

/// A temporary floor: "4 replicas for 30 minutes", stored under `burst.<service>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Burst {
    /// Replicas to hold at least.
    pub replicas: u32,
    /// Until when.
    pub until: Timestamp,
}

impl Burst {
    /// Whether the burst still holds at `now`.
    pub fn active_at(&self, now: Timestamp) -> bool {
        now < self.until
    }
}

/// What the autoscaler recorded about a service, stored under `state.<service>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleState {
    /// The service.
    pub service: String,
    /// Replicas decided.
    pub desired: u32,
    /// Replicas the backend reported before applying the decision.
    pub current: u32,
    /// Messages waiting in the queue's consumer.
    pub pending: u64,
    /// Messages delivered and not acknowledged, plus running jobs.
    pub in_flight: u64,
    /// Why this number.
    pub reason: String,
    /// The burst in force, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Burst>,
    /// The backend that applied it.
    pub backend: BackendKind,
    /// The last error of the backend, if applying failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_error: Option<String>,
    /// The autoscaler (leader) that decided.
    pub decided_by: String,
    /// When the desired number last changed.
    pub changed_at: Timestamp,
    /// When this state was written.
    pub updated_at: Timestamp,
}

/// A scale request (`dev.jetrun.scale.requested.v1`) on `<prefix>.scale.request.<service>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScaleRequest {
    /// Replace the spec permanently.
    Set {
        /// The new spec.
        spec: ScaleSpec,
    },
    /// Hold at least `replicas` for `for_seconds`.
    Burst {
        /// The service.
        service: String,
        /// Replicas.
        replicas: u32,
        /// Duration.
        for_seconds: u64,
    },
    /// Drop any burst; back to the spec.
    Reset {
        /// The service.
        service: String,
    },
}

/// A scale decision (`dev.jetrun.scale.signal.v1`) on `<prefix>.scale.signal.<service>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleSignal {
    /// The service.
    pub service: String,
    /// Replicas wanted.
    pub desired: u32,
    /// Replicas there before the decision.
    pub current: u32,
    /// Messages waiting in the queue's consumer.
    pub pending: u64,
    /// Messages delivered and not yet acknowledged, plus running jobs.
    pub in_flight: u64,
    /// Why this number.
    pub reason: String,
    /// When decided.
    pub at: Timestamp,
}
