//! What an ECS task's state means for its job, shared by the runner (`DescribeTasks`) and
//! the task-state bridge (EventBridge "ECS Task State Change" events): which jetrun
//! attempt a task belongs to and how it ended.

use std::collections::BTreeMap;

use crate::TaskStatus;

/// Tag: the job id.
pub const TAG_JOB_ID: &str = "jetrun:job-id";
/// Tag: the job's queue.
pub const TAG_QUEUE: &str = "jetrun:queue";
/// Tag: the attempt.
pub const TAG_ATTEMPT: &str = "jetrun:attempt";
/// Tag: the deployment (also the task's `group`).
pub const TAG_DEPLOYMENT: &str = "jetrun:deployment";

/// The reason prefix of every `StopTask` jetrun makes: such a stop is reported by the
/// stopper (the node agent), not guessed from the task's state.
pub const STOP_REASON_PREFIX: &str = "jetrun:";

/// One container of a task, as far as jetrun cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerView {
    /// The container name.
    pub name: String,
    /// Its exit code, once it exited.
    pub exit_code: Option<i32>,
    /// Why it stopped (e.g. `OutOfMemoryError: Container killed due to memory usage`).
    pub reason: Option<String>,
}

/// An ECS task, from `DescribeTasks` or a state-change event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskView {
    /// The task ARN.
    pub task_arn: String,
    /// `lastStatus` (`PROVISIONING` … `RUNNING` … `STOPPED`).
    pub last_status: String,
    /// `desiredStatus`.
    pub desired_status: Option<String>,
    /// `startedBy` (jetrun: the job id).
    pub started_by: Option<String>,
    /// `group` (jetrun: the deployment).
    pub group: Option<String>,
    /// `stopCode` (`EssentialContainerExited`, `TaskFailedToStart`, `SpotInterruption`,
    /// `UserInitiated`, `ServiceSchedulerInitiated`, `TerminationNotice`).
    pub stop_code: Option<String>,
    /// `stoppedReason`.
    pub stopped_reason: Option<String>,
    /// The containers.
    pub containers: Vec<ContainerView>,
    /// The task's tags (`DescribeTasks` with `include: TAGS`; events carry none).
    pub tags: BTreeMap<String, String>,
    /// The environment overrides of the job container (`JETRUN_JOB_ID`, `JETRUN_ATTEMPT`).
    pub env: BTreeMap<String, String>,
}

/// How an ECS task stands, for jetrun.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EcsOutcome {
    /// Not yet running (provisioning, pulling).
    Pending,
    /// Running (or on its way down, not yet `STOPPED`).
    Running,
    /// The job container exited by itself with this code.
    Exited {
        /// The exit code.
        exit_code: i32,
    },
    /// Stopped by a `StopTask` (jetrun's own when `by_jetrun`).
    Stopped {
        /// Whether the stop was jetrun's (its reason starts with [`STOP_REASON_PREFIX`]).
        by_jetrun: bool,
        /// The job container's exit code, if it got one.
        exit_code: Option<i32>,
        /// `stoppedReason`.
        reason: String,
    },
    /// Ended without the job's own doing (Spot interruption, failed to start, host
    /// retired): the attempt is lost and retried, not failed.
    Lost {
        /// `stopCode: stoppedReason`.
        reason: String,
    },
}

impl EcsOutcome {
    /// The runner contract's view. A lost task is `NotFound`: the runner has no usable
    /// task any more (the caller reports it lost).
    pub fn task_status(&self) -> TaskStatus {
        match self {
            EcsOutcome::Pending => TaskStatus::Pending,
            EcsOutcome::Running => TaskStatus::Running,
            EcsOutcome::Exited { exit_code } => exit_status(*exit_code),
            EcsOutcome::Stopped { exit_code, .. } => match exit_code {
                Some(c) => exit_status(*c),
                None => TaskStatus::Killed { signal: 15 },
            },
            EcsOutcome::Lost { .. } => TaskStatus::NotFound,
        }
    }
}

/// As for every runner: 129–192 mean "killed by signal (status − 128)" (137 is the
/// SIGKILL of an OOM kill or of the stop timeout).
fn exit_status(code: i32) -> TaskStatus {
    if (129..=192).contains(&code) {
        TaskStatus::Killed { signal: code - 128 }
    } else {
        TaskStatus::Exited { exit_code: code }
    }
}

impl TaskView {
    /// The jetrun attempt this task runs — `(job_id, attempt)` — if it is a task of
    /// `deployment`: its group (or deployment tag) is the deployment, `startedBy` is a job
    /// id and the attempt is in its tags or the job container's environment (which, when
    /// it names the job, must name the same one).
    pub fn identity(&self, deployment: &str) -> Option<(String, u32)> {
        let ours = self.group.as_deref() == Some(deployment)
            || self.tags.get(TAG_DEPLOYMENT).map(String::as_str) == Some(deployment);
        if !ours {
            return None;
        }
        let job_id = self
            .started_by
            .clone()
            .or_else(|| self.tags.get(TAG_JOB_ID).cloned())
            .or_else(|| self.env.get("JETRUN_JOB_ID").cloned())?;
        if !jetrun_core::job::valid_job_id(&job_id) {
            return None;
        }
        for other in [self.tags.get(TAG_JOB_ID), self.env.get("JETRUN_JOB_ID")]
            .into_iter()
            .flatten()
        {
            if *other != job_id {
                return None;
            }
        }
        let attempt = self
            .tags
            .get(TAG_ATTEMPT)
            .or_else(|| self.env.get("JETRUN_ATTEMPT"))?
            .parse()
            .ok()?;
        Some((job_id, attempt))
    }

    /// How the task stands; `container` names the job's container.
    pub fn outcome(&self, container: &str) -> EcsOutcome {
        match self.last_status.as_str() {
            "PROVISIONING" | "PENDING" | "ACTIVATING" => return EcsOutcome::Pending,
            "STOPPED" | "DELETED" => {}
            // RUNNING, DEACTIVATING, STOPPING, DEPROVISIONING: the job may still run.
            _ => return EcsOutcome::Running,
        }
        let job = self.containers.iter().find(|c| c.name == container);
        let exit_code = job.and_then(|c| c.exit_code);
        let reason = self.stopped_reason.clone().unwrap_or_default();
        let code = self.stop_code.as_deref().unwrap_or("");
        let lost = |what: &str| EcsOutcome::Lost {
            reason: match (what.is_empty(), reason.is_empty()) {
                (true, _) => reason.clone(),
                (false, true) => what.to_string(),
                (false, false) => format!("{what}: {reason}"),
            },
        };
        match code {
            "SpotInterruption" | "TaskFailedToStart" | "ServiceSchedulerInitiated" | "TerminationNotice" => {
                lost(code)
            }
            "UserInitiated" => EcsOutcome::Stopped {
                by_jetrun: reason.starts_with(STOP_REASON_PREFIX),
                exit_code,
                reason,
            },
            // EssentialContainerExited, or no stop code (older agents, moto).
            _ => match exit_code {
                Some(c) => EcsOutcome::Exited { exit_code: c },
                // Out of memory without an exit code: as the OCI runner reports it.
                None if job
                    .and_then(|c| c.reason.as_deref())
                    .is_some_and(|r| r.starts_with("OutOfMemory")) =>
                {
                    EcsOutcome::Exited { exit_code: 137 }
                }
                None => {
                    let why = job
                        .and_then(|c| c.reason.clone())
                        .unwrap_or_else(|| format!("container {container} has no exit code"));
                    lost(&if code.is_empty() {
                        why
                    } else {
                        format!("{code} ({why})")
                    })
                }
            },
        }
    }
}

/// Converts an SDK task (from `DescribeTasks`).
pub fn from_sdk(t: &aws_sdk_ecs::types::Task, container: &str) -> TaskView {
    let env = t
        .overrides()
        .map(|o| o.container_overrides())
        .unwrap_or_default()
        .iter()
        .filter(|c| c.name() == Some(container))
        .flat_map(|c| c.environment())
        .filter_map(|kv| Some((kv.name()?.to_string(), kv.value()?.to_string())))
        .collect();
    TaskView {
        task_arn: t.task_arn().unwrap_or_default().to_string(),
        last_status: t.last_status().unwrap_or_default().to_string(),
        desired_status: t.desired_status().map(str::to_string),
        started_by: t.started_by().filter(|s| !s.is_empty()).map(str::to_string),
        group: t.group().map(str::to_string),
        stop_code: t.stop_code().map(|c| c.as_str().to_string()),
        stopped_reason: t.stopped_reason().filter(|s| !s.is_empty()).map(str::to_string),
        containers: t
            .containers()
            .iter()
            .map(|c| ContainerView {
                name: c.name().unwrap_or_default().to_string(),
                exit_code: c.exit_code(),
                reason: c.reason().map(str::to_string),
            })
            .collect(),
        tags: t
            .tags()
            .iter()
            .filter_map(|tag| Some((tag.key()?.to_string(), tag.value()?.to_string())))
            .collect(),
        env,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn stopped(stop_code: Option<&str>, reason: &str, exit: Option<i32>) -> TaskView {
        TaskView {
            task_arn: "arn:aws:ecs:us-east-1:1:task/c/t".into(),
            last_status: "STOPPED".into(),
            group: Some("jetrun".into()),
            started_by: Some("j1".into()),
            stop_code: stop_code.map(str::to_string),
            stopped_reason: Some(reason.into()),
            containers: vec![
                ContainerView {
                    name: "sidecar".into(),
                    exit_code: Some(0),
                    reason: None,
                },
                ContainerView {
                    name: "job".into(),
                    exit_code: exit,
                    reason: None,
                },
            ],
            env: [("JETRUN_ATTEMPT".to_string(), "2".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn stop_codes_map_to_outcomes() {
        let t = stopped(
            Some("EssentialContainerExited"),
            "Essential container in task exited",
            Some(3),
        );
        assert_eq!(t.outcome("job"), EcsOutcome::Exited { exit_code: 3 });
        assert_eq!(
            t.outcome("job").task_status(),
            TaskStatus::Exited { exit_code: 3 }
        );
        let t = stopped(Some("SpotInterruption"), "Your Spot Task was interrupted.", None);
        assert_eq!(
            t.outcome("job"),
            EcsOutcome::Lost {
                reason: "SpotInterruption: Your Spot Task was interrupted.".into()
            }
        );
        assert_eq!(t.outcome("job").task_status(), TaskStatus::NotFound);
        let t = stopped(
            Some("TaskFailedToStart"),
            "CannotPullContainerError: pull image manifest has been retried 5 time(s)",
            None,
        );
        assert!(
            matches!(t.outcome("job"), EcsOutcome::Lost { reason } if reason.starts_with("TaskFailedToStart: CannotPull"))
        );
        let t = stopped(Some("UserInitiated"), "jetrun: stop requested", Some(143));
        assert_eq!(
            t.outcome("job"),
            EcsOutcome::Stopped {
                by_jetrun: true,
                exit_code: Some(143),
                reason: "jetrun: stop requested".into()
            }
        );
        assert_eq!(t.outcome("job").task_status(), TaskStatus::Killed { signal: 15 });
        let t = stopped(Some("UserInitiated"), "Task stopped by user", None);
        assert!(matches!(
            t.outcome("job"),
            EcsOutcome::Stopped { by_jetrun: false, .. }
        ));
        let mut t = stopped(None, "", None);
        t.containers[1].reason = Some("OutOfMemoryError: Container killed due to memory usage".into());
        assert_eq!(t.outcome("job"), EcsOutcome::Exited { exit_code: 137 });
        let mut t = stopped(
            Some("EssentialContainerExited"),
            "Essential container in task exited",
            None,
        );
        t.last_status = "DEPROVISIONING".into();
        assert_eq!(t.outcome("job"), EcsOutcome::Running);
        t.last_status = "PROVISIONING".into();
        assert_eq!(t.outcome("job"), EcsOutcome::Pending);
    }

    #[test]
    fn identity_needs_the_deployment_a_job_id_and_an_attempt() {
        let t = stopped(None, "", Some(0));
        assert_eq!(t.identity("jetrun"), Some(("j1".into(), 2)));
        assert_eq!(t.identity("other"), None);
        let mut u = t.clone();
        u.env.insert("JETRUN_JOB_ID".into(), "j2".into());
        assert_eq!(u.identity("jetrun"), None, "startedBy and env disagree");
        let mut u = t.clone();
        u.env.clear();
        assert_eq!(u.identity("jetrun"), None, "no attempt");
        u.tags.insert(TAG_ATTEMPT.into(), "4".into());
        assert_eq!(u.identity("jetrun"), Some(("j1".into(), 4)));
        let mut u = t.clone();
        u.started_by = Some("ecs-svc/123".into());
        assert_eq!(u.identity("jetrun"), None, "not a job id");
        let mut u = t;
        u.group = Some("family:web".into());
        assert_eq!(u.identity("jetrun"), None);
    }
}
