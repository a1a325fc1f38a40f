//! [`ProcessRunner`]: the runner contract with **no isolation**, for machines without runc.
//!
//! Each task is a plain host process under the detached shim (see the crate docs), in its
//! own process group, with its working directory at `<data_dir>/tasks/<token>/work`. The
//! image is ignored: the command runs with the host's tools. It logs a loud warning when
//! constructed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::ports::{PortAllocator, PortRange};
use crate::task::{TaskMeta, Tasks, group_alive, port_env_name, signal_group};
use crate::{LaunchRequest, Runner, RunnerError, RunnerErrorKind, TaskInfo, TaskStatus};

/// PATH given to process tasks.
const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long `stop` waits for the group to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Whether the command of a task whose shim is gone still runs: its process group (the
/// shim's pid) still has a live member.
fn command_runs(tasks: &Tasks, task_ref: &str) -> bool {
    tasks.pid(task_ref).is_some_and(|(pid, _)| group_alive(pid))
}

/// Runs tasks as plain host processes: no namespaces, no limits, no read-only root.
#[derive(Debug, Clone)]
pub struct ProcessRunner {
    tasks: Arc<Tasks>,
    ports: PortAllocator,
    checkout: crate::CheckoutConfig,
}

impl ProcessRunner {
    /// A process runner keeping its state under `data_dir` (tasks, port locks), with the
    /// default port range 20000-29999.
    pub fn new(data_dir: impl AsRef<Path>) -> Result<Self, RunnerError> {
        Self::with_ports(data_dir, PortRange::default())
    }

    /// A process runner with a given port range.
    pub fn with_ports(data_dir: impl AsRef<Path>, range: PortRange) -> Result<Self, RunnerError> {
        let data_dir = data_dir.as_ref();
        tracing::warn!(
            data_dir = %data_dir.display(),
            "PROCESS RUNNER: tasks run as plain host processes with NO ISOLATION \
             (no namespaces, no read-only root, no memory/pids limits, full network and \
             host filesystem access). Use it only on a trusted development machine; \
             install runc to get the OCI runner."
        );
        let (tasks, ports) = (Tasks::open(data_dir)?, PortAllocator::new(data_dir, range)?);
        let freed = ports.reclaim(|owner| tasks.holds_resources(owner));
        if freed > 0 {
            tracing::info!(freed, "released stale port locks");
        }
        Ok(Self {
            tasks,
            ports,
            checkout: crate::CheckoutConfig::default(),
        })
    }

    /// The same runner with another checkout configuration.
    pub fn with_checkout(mut self, checkout: crate::CheckoutConfig) -> Self {
        self.checkout = checkout;
        self
    }

    /// The directory holding the task directories.
    pub fn tasks_dir(&self) -> &Path {
        &self.tasks.dir
    }

    fn status(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        self.tasks
            .status_with(task_ref, &|t| command_runs(&self.tasks, t))
    }
}

/// The environment every task gets: the spec's, the caller's, then jetrun's own variables.
pub(crate) fn task_env(req: &LaunchRequest, ports: &BTreeMap<String, u16>) -> BTreeMap<String, String> {
    let mut env = req.spec.env.clone();
    env.extend(req.env.clone());
    env.insert("JETRUN_JOB_ID".into(), req.job_id.clone());
    env.insert("JETRUN_ATTEMPT".into(), req.attempt.to_string());
    if let Some(tp) = &req.traceparent {
        env.insert("TRACEPARENT".into(), tp.clone());
    }
    for (name, port) in ports {
        env.insert(port_env_name(name), port.to_string());
    }
    env
}

#[async_trait::async_trait]
impl Runner for ProcessRunner {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<String, RunnerError> {
        if req.spec.command.is_empty() {
            return Err(RunnerError::new(
                RunnerErrorKind::InvalidSpec,
                "the process runner needs a command (it has no image defaults)",
            ));
        }
        let token = req.token.clone();
        if !self.tasks.create(&token)? {
            return Ok(token);
        }
        let result = async {
            let ports = self.ports.allocate(&token, &req.spec.ports)?;
            let meta = TaskMeta {
                task_ref: token.clone(),
                job_id: req.job_id.clone(),
                attempt: req.attempt,
                runner: "process".into(),
                ports: ports.clone(),
                container_id: None,
                created_at: chrono::Utc::now(),
            };
            let release = |e| {
                self.ports.release(&token, ports.values().copied());
                e
            };
            self.tasks.write_meta(&meta).map_err(release)?;
            let dir = self.tasks.path(&token)?;
            let work = dir.join("work");
            if let Some(c) = &req.spec.checkout {
                crate::checkout::clone_into(&self.checkout, c, &work, None)
                    .await
                    .map_err(release)?;
            }
            let out = dir.join(crate::task::OUT_DIR);
            std::fs::create_dir_all(&out).map_err(|e| release(crate::task::io_err("create", &out, e)))?;
            let mut env = BTreeMap::from([
                ("PATH".to_string(), HOST_PATH.to_string()),
                ("HOME".to_string(), work.display().to_string()),
            ]);
            env.extend(task_env(req, &ports));
            env.insert(
                jetrun_core::result::RESULT_ENV.into(),
                out.join(crate::task::RESULT_FILE).display().to_string(),
            );
            self.tasks
                .spawn_shim(&token, &req.spec.command, &env, &work)
                .map_err(release)
        }
        .await;
        match result {
            Ok(pid) => {
                tracing::debug!(task_ref = %token, pid, "process task launched");
                Ok(token)
            }
            Err(e) => {
                self.tasks.discard(&token);
                Err(e)
            }
        }
    }

    async fn wait(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        let tasks = self.tasks.clone();
        self.tasks
            .wait_with(task_ref, &move |t| command_runs(&tasks, t))
            .await
    }

    async fn describe(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        self.status(task_ref)
    }

    async fn stop(&self, task_ref: &str, grace: Duration) -> Result<(), RunnerError> {
        if self.status(task_ref)?.is_final() {
            return Ok(());
        }
        self.tasks.mark(task_ref, "stop_requested");
        signal_group(&self.tasks, task_ref, Signal::SIGTERM);
        let tasks = self.tasks.clone();
        let runs = move |t: &str| command_runs(&tasks, t);
        if self.tasks.wait_for(task_ref, grace, &runs).await?.is_some() {
            return Ok(());
        }
        tracing::info!(
            task_ref,
            grace_ms = grace.as_millis() as u64,
            "task ignored SIGTERM, sending SIGKILL"
        );
        signal_group(&self.tasks, task_ref, Signal::SIGKILL);
        if self.tasks.wait_for(task_ref, KILL_WAIT, &runs).await?.is_none() {
            return Err(RunnerError::new(
                RunnerErrorKind::Runtime,
                format!("task {task_ref} survived SIGKILL"),
            ));
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<TaskInfo>, RunnerError> {
        self.tasks.list(&|t| command_runs(&self.tasks, t))
    }

    async fn remove(&self, task_ref: &str) -> Result<(), RunnerError> {
        let Some(meta) = self.tasks.meta(task_ref)? else {
            return Ok(());
        };
        if !self.status(task_ref)?.is_final() {
            self.stop(task_ref, Duration::ZERO).await?;
        }
        self.ports.release(task_ref, meta.ports.values().copied());
        let work: PathBuf = self.tasks.path(task_ref)?.join("work");
        let _ = std::fs::remove_dir_all(work);
        self.tasks.mark(task_ref, "removed");
        self.tasks.forget(task_ref);
        Ok(())
    }

    fn log_paths(&self, task_ref: &str) -> Option<(PathBuf, PathBuf)> {
        self.tasks.log_paths(task_ref)
    }

    async fn result(&self, task_ref: &str) -> Result<Option<Vec<u8>>, RunnerError> {
        self.tasks.result(task_ref)
    }
}
