//! # jetrun-runner
//!
//! A runner launches one task per job attempt and reports on it. Implementations:
//!
//! - `oci`: runc, one bundle per task, isolated (namespaces, read-only rootfs, limits);
//! - `process`: a plain child process, for machines without an OCI runtime (no isolation,
//!   and it says so loudly);
//! - `null`: launches nothing and "exits 0" at once — for benchmarks of the pipeline only.
//!
//! The contract every implementation keeps:
//! - [`Runner::launch`] is idempotent on [`LaunchRequest::token`] (`<job_id>-<attempt>`):
//!   launching the same token twice returns the same task reference and starts nothing new;
//! - [`Runner::wait`] resolves once the task has ended, with how it ended;
//! - [`Runner::stop`] sends SIGTERM, waits `grace`, then SIGKILLs; stopping an ended task is
//!   not an error;
//! - [`Runner::list`] returns the tasks this runner knows on this node, including ones
//!   started by a previous process (so an agent can adopt or reap them after a crash);
//! - a task that ended with no status recorded anywhere is [`TaskStatus::Lost`], never
//!   an exit code it did not have.
//!
//! Timeouts are enforced by the caller (the node agent), which calls `stop`.
//!
//! Modules: [`oci`] ([`OciRunner`], [`OciConfig`], `probe`), [`process`]
//! ([`ProcessRunner`]), [`null`], [`image`] (the local image store and its built-in `host`
//! and `busybox` images), [`checkout`] (`spec.checkout`: the repository cloned on the host
//! into the task's work dir), [`ports`] (host ports allocated atomically across processes),
//! [`logs`] (constant-time `tail`, async `follow`). The real runners share a detached
//! shell shim and a per-task directory `<data_dir>/tasks/<token>/` (pid, exit code, logs,
//! scratch dir) so a task outlives the process that launched it and a new runner finds it
//! with `list`. See `docs/runner.md`.

pub mod checkout;
#[cfg(feature = "ecs")]
pub mod ecs;
pub mod image;
pub mod logs;
mod net;
pub mod null;
pub mod oci;
pub mod ports;
pub mod process;
mod task;

pub use checkout::CheckoutConfig;
pub use oci::{OciConfig, OciRunner};
pub use ports::{PortAllocator, PortRange};
pub use process::ProcessRunner;

use std::collections::BTreeMap;
use std::time::Duration;

use jetrun_core::JobSpec;

/// What to launch.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchRequest {
    /// The job.
    pub job_id: String,
    /// The attempt (1-based).
    pub attempt: u32,
    /// What the job asks for.
    pub spec: JobSpec,
    /// Idempotency token: `<job_id>-<attempt>`.
    pub token: String,
    /// W3C traceparent to hand to the task as `TRACEPARENT`.
    pub traceparent: Option<String>,
    /// Extra environment from the caller (the runner adds `JETRUN_JOB_ID`,
    /// `JETRUN_ATTEMPT`, `TRACEPARENT` and `JETRUN_PORT_<NAME>` itself).
    pub env: BTreeMap<String, String>,
}

impl LaunchRequest {
    /// A request for `spec` as attempt `attempt` of `job_id`.
    pub fn new(job_id: &str, attempt: u32, spec: JobSpec, traceparent: Option<String>) -> Self {
        Self {
            job_id: job_id.to_string(),
            attempt,
            spec,
            token: format!("{job_id}-{attempt}"),
            traceparent,
            env: BTreeMap::new(),
        }
    }
}

/// How a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskStatus {
    /// Created, not yet running.
    Pending,
    /// Running.
    Running,
    /// Ended by itself with this exit code.
    Exited {
        /// The exit code.
        exit_code: i32,
    },
    /// Ended by a signal (stopped, killed at a timeout, OOM-killed).
    Killed {
        /// The signal number.
        signal: i32,
    },
    /// The runner has no such task.
    NotFound,
    /// It ended, but how is known nowhere: it died with its node or its supervisor (the
    /// shim, `runc run`, the container's init) before any status could be recorded. The
    /// agent reports the attempt `lost`, so it is retried; never an exit code.
    Lost,
}

impl TaskStatus {
    /// Whether the task has ended (or is unknown).
    pub fn is_final(self) -> bool {
        !matches!(self, TaskStatus::Pending | TaskStatus::Running)
    }
}

/// A task known to a runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// The task reference.
    pub task_ref: String,
    /// The job.
    pub job_id: String,
    /// The attempt.
    pub attempt: u32,
    /// Its status.
    pub status: TaskStatus,
}

/// Kinds of runner failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunnerErrorKind {
    /// The spec cannot run here (unknown image, bad command): retrying will not help.
    InvalidSpec,
    /// No such task.
    NotFound,
    /// A resource is exhausted (ports, capacity): retry later.
    Exhausted,
    /// The runtime failed (runc, the OS, the cloud API): may work on retry.
    Runtime,
}

/// A runner operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct RunnerError {
    /// What kind of failure.
    pub kind: RunnerErrorKind,
    /// Details.
    pub message: String,
}

impl RunnerError {
    /// A new error.
    pub fn new(kind: RunnerErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, RunnerErrorKind::Exhausted | RunnerErrorKind::Runtime)
    }
}

/// Launches and supervises tasks.
#[async_trait::async_trait]
pub trait Runner: Send + Sync + 'static {
    /// A short name: `oci`, `process`, `null`, `ecs`.
    fn name(&self) -> &'static str;

    /// Starts the task (idempotent on `req.token`) and returns its reference.
    async fn launch(&self, req: &LaunchRequest) -> Result<String, RunnerError>;

    /// Waits until the task ends; returns how it ended.
    async fn wait(&self, task_ref: &str) -> Result<TaskStatus, RunnerError>;

    /// How the task stands now.
    async fn describe(&self, task_ref: &str) -> Result<TaskStatus, RunnerError>;

    /// SIGTERM, `grace`, SIGKILL. Not an error if it already ended.
    async fn stop(&self, task_ref: &str, grace: Duration) -> Result<(), RunnerError>;

    /// Tasks this runner knows on this node (running or ended but not yet removed).
    async fn list(&self) -> Result<Vec<TaskInfo>, RunnerError>;

    /// Frees what the task held (bundle, ports, scratch); its logs are kept.
    async fn remove(&self, task_ref: &str) -> Result<(), RunnerError>;

    /// Paths of the task's stdout and stderr logs, if it has them.
    fn log_paths(&self, task_ref: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)>;

    /// The raw result the ended task left (`$JETRUN_RESULT`; on ECS the last
    /// `jetrun-result: ` log line), read at most [`jetrun_core::result::MAX_RESULT_BYTES`]
    /// `+ 1` bytes so an oversized one is refused without being read whole. `None`: the
    /// task left none. Checked by the caller with [`jetrun_core::result::parse`].
    async fn result(&self, task_ref: &str) -> Result<Option<Vec<u8>>, RunnerError> {
        let _ = task_ref;
        Ok(None)
    }

    /// The last `lines` lines of the task's stdout and stderr, for `jetrun jobs logs`.
    /// `None`: the runner keeps no logs for it. The default reads [`Runner::log_paths`];
    /// runners whose logs live elsewhere (ECS: CloudWatch Logs) override it (and return
    /// `None` from `log_paths`).
    async fn log_tail(
        &self,
        task_ref: &str,
        lines: usize,
    ) -> Result<Option<(Vec<String>, Vec<String>)>, RunnerError> {
        let Some((out, err)) = self.log_paths(task_ref) else {
            return Ok(None);
        };
        let read = |p: &std::path::Path| {
            logs::tail(p, lines)
                .map_err(|e| RunnerError::new(RunnerErrorKind::Runtime, format!("read {}: {e}", p.display())))
        };
        Ok(Some((read(&out)?, read(&err)?)))
    }
}
