//! Backends apply decisions. Each `apply` is idempotent (level-triggered): it moves the
//! service to the desired count from wherever it is, so repeating it, or calling it after
//! a crash or a failover, is safe.

use async_trait::async_trait;
use jetrun_core::scale::{BackendKind, ScaleSpec};

#[cfg(feature = "ecs")]
pub mod ecs;
pub mod local;

/// What went wrong in a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The spec's `backend_config` is missing or wrong for this backend.
    Config,
    /// The backend is not built into this binary (e.g. `ecs-service` without feature `ecs`).
    NotBuilt,
    /// A replica could not be started.
    Spawn,
    /// The remote API failed or timed out: retried at the next tick.
    Unavailable,
}

/// A backend failed to apply or observe.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{backend:?} backend, service {service}: {kind:?}: {message}")]
pub struct BackendError {
    /// Which backend.
    pub backend: BackendKind,
    /// What kind of failure.
    pub kind: BackendErrorKind,
    /// The service.
    pub service: String,
    /// Details.
    pub message: String,
}

/// Applies decisions for services of one [`BackendKind`].
#[async_trait]
pub trait Backend: Send + Sync {
    /// Which kind it is.
    fn kind(&self) -> BackendKind;
    /// Replicas there now, if the backend knows (`None`: use the last decision).
    async fn current(&self, spec: &ScaleSpec) -> Result<Option<u32>, BackendError>;
    /// Moves the service to `desired` replicas. Idempotent.
    async fn apply(&self, spec: &ScaleSpec, desired: u32) -> Result<(), BackendError>;
    /// Stops whatever this backend runs itself (at shutdown).
    async fn shutdown(&self) {}
}

/// Emits signals only: whoever consumes `<prefix>.scale.signal.<service>` (KEDA, an
/// autoscaling group hook, a Fly machines script) does the scaling.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignalBackend;

#[async_trait]
impl Backend for SignalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Signal
    }
    async fn current(&self, _spec: &ScaleSpec) -> Result<Option<u32>, BackendError> {
        Ok(None)
    }
    async fn apply(&self, _spec: &ScaleSpec, _desired: u32) -> Result<(), BackendError> {
        Ok(())
    }
}
