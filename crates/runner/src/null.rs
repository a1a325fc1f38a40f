//! The benchmark-only [`NullRunner`]: it launches nothing. Every task "exits 0" at once.
//!
//! It exists to measure the pipeline (dispatch, agent, settle, the store) without the
//! cost of starting processes or containers. Never use it to run real jobs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::{LaunchRequest, Runner, RunnerError, RunnerErrorKind, TaskInfo, TaskStatus};

/// A runner that runs nothing: each launched task has already exited with code 0.
#[derive(Debug, Default)]
pub struct NullRunner {
    tasks: Mutex<HashMap<String, TaskInfo>>,
}

impl NullRunner {
    /// A new, empty null runner.
    pub fn new() -> Self {
        Self::default()
    }

    fn lookup(&self, task_ref: &str) -> TaskStatus {
        match self.tasks.lock() {
            Ok(t) => t.get(task_ref).map(|i| i.status).unwrap_or(TaskStatus::NotFound),
            Err(p) => p
                .into_inner()
                .get(task_ref)
                .map(|i| i.status)
                .unwrap_or(TaskStatus::NotFound),
        }
    }
}

#[async_trait::async_trait]
impl Runner for NullRunner {
    fn name(&self) -> &'static str {
        "null"
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<String, RunnerError> {
        let task_ref = format!("null-{}", req.token);
        let mut tasks = self
            .tasks
            .lock()
            .map_err(|_| RunnerError::new(RunnerErrorKind::Runtime, "null runner state poisoned"))?;
        tasks.entry(task_ref.clone()).or_insert_with(|| TaskInfo {
            task_ref: task_ref.clone(),
            job_id: req.job_id.clone(),
            attempt: req.attempt,
            status: TaskStatus::Exited { exit_code: 0 },
        });
        Ok(task_ref)
    }

    async fn wait(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        Ok(self.lookup(task_ref))
    }

    async fn describe(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        Ok(self.lookup(task_ref))
    }

    async fn stop(&self, _task_ref: &str, _grace: Duration) -> Result<(), RunnerError> {
        Ok(())
    }

    async fn list(&self) -> Result<Vec<TaskInfo>, RunnerError> {
        let tasks = self
            .tasks
            .lock()
            .map_err(|_| RunnerError::new(RunnerErrorKind::Runtime, "null runner state poisoned"))?;
        Ok(tasks.values().cloned().collect())
    }

    async fn remove(&self, task_ref: &str) -> Result<(), RunnerError> {
        if let Ok(mut t) = self.tasks.lock() {
            t.remove(task_ref);
        }
        Ok(())
    }

    fn log_paths(&self, _task_ref: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn launches_are_idempotent_and_exit_zero() {
        let r = NullRunner::new();
        let spec = jetrun_core::JobSpec::new("q", "none", vec![]);
        let req = LaunchRequest::new("j1", 1, spec, None);
        let a = r.launch(&req).await.unwrap();
        let b = r.launch(&req).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(r.wait(&a).await.unwrap(), TaskStatus::Exited { exit_code: 0 });
        assert_eq!(r.list().await.unwrap().len(), 1);
        r.remove(&a).await.unwrap();
        assert_eq!(r.describe(&a).await.unwrap(), TaskStatus::NotFound);
    }
}
