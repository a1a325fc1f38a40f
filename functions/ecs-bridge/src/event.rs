//! The pure part: an EventBridge "ECS Task State Change" event (or a `DescribeTasks`
//! task) to what it means for a jetrun attempt. No I/O.
//!
//! Unknown fields are ignored (ECS adds fields over time; its documentation asks
//! consumers to tolerate them); a task that is not of this deployment, not started by
//! jetrun or not in a state that ends or starts the attempt is [`Mapping::Ignore`]d.

use jetrun_core::Timestamp;
use jetrun_core::task::{TaskEvent, TaskPhase};
use jetrun_runner::ecs::EcsOutcome;
use jetrun_runner::ecs::state::{ContainerView, TaskView};
use serde::Deserialize;

/// The EventBridge envelope (only what the bridge reads).
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    /// `ECS Task State Change` for the events this bridge handles.
    #[serde(rename = "detail-type", default)]
    pub detail_type: String,
    /// `aws.ecs`.
    #[serde(default)]
    pub source: String,
    /// When EventBridge recorded the event.
    #[serde(default)]
    pub time: Option<Timestamp>,
    /// The task.
    pub detail: Detail,
}

/// The event's `detail`: the task, as `DescribeTasks` would show it (without tags).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Detail {
    /// The task ARN.
    pub task_arn: String,
    /// The cluster ARN.
    pub cluster_arn: String,
    /// `lastStatus`.
    pub last_status: String,
    /// `desiredStatus`.
    pub desired_status: Option<String>,
    /// `startedBy`.
    pub started_by: Option<String>,
    /// `group`.
    pub group: Option<String>,
    /// `stopCode`.
    pub stop_code: Option<String>,
    /// `stoppedReason`.
    pub stopped_reason: Option<String>,
    /// `stoppedAt`.
    pub stopped_at: Option<Timestamp>,
    /// `updatedAt`.
    pub updated_at: Option<Timestamp>,
    /// The containers.
    pub containers: Vec<Container>,
    /// The overrides given to `RunTask`.
    pub overrides: Option<Overrides>,
    /// ECS's own version of the task's state (increases with every change).
    pub version: Option<i64>,
}

/// A container of the task.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    /// Its name.
    pub name: String,
    /// Its exit code, once exited.
    pub exit_code: Option<i32>,
    /// Why it stopped.
    pub reason: Option<String>,
}

/// `overrides`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Overrides {
    /// Per-container overrides.
    pub container_overrides: Vec<ContainerOverride>,
}

/// One container's overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerOverride {
    /// The container.
    pub name: String,
    /// Its environment overrides.
    pub environment: Vec<NameValue>,
}

/// A `{name, value}` pair.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NameValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

impl Detail {
    /// The runner's view of this task; `container` names the job's container.
    pub fn view(&self, container: &str) -> TaskView {
        TaskView {
            task_arn: self.task_arn.clone(),
            last_status: self.last_status.clone(),
            desired_status: self.desired_status.clone(),
            started_by: self.started_by.clone().filter(|s| !s.is_empty()),
            group: self.group.clone(),
            stop_code: self.stop_code.clone(),
            stopped_reason: self.stopped_reason.clone().filter(|s| !s.is_empty()),
            containers: self
                .containers
                .iter()
                .map(|c| ContainerView {
                    name: c.name.clone(),
                    exit_code: c.exit_code,
                    reason: c.reason.clone(),
                })
                .collect(),
            tags: Default::default(),
            env: self
                .overrides
                .iter()
                .flat_map(|o| &o.container_overrides)
                .filter(|c| c.name == container)
                .flat_map(|c| &c.environment)
                .map(|kv| (kv.name.clone(), kv.value.clone()))
                .collect(),
        }
    }
}

/// What a task's state means for jetrun.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapping {
    /// Nothing to report, and why.
    Ignore(String),
    /// A task event for the attempt (its `node_id` is filled from the job record).
    Report(Report),
}

/// A task event to publish, once the record confirms the attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The job.
    pub job_id: String,
    /// The attempt the task ran.
    pub attempt: u32,
    /// What happened.
    pub phase: TaskPhase,
    /// The task ARN.
    pub task_ref: String,
    /// Exit code, for `exited`.
    pub exit_code: Option<i32>,
    /// Details.
    pub message: Option<String>,
    /// When it happened.
    pub at: Timestamp,
}

impl Report {
    /// The task event, as from `node_id` (the node the record placed the attempt on:
    /// settle accepts an attempt's events only from its node).
    pub fn task_event(&self, node_id: &str) -> TaskEvent {
        TaskEvent {
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            phase: self.phase,
            task_ref: self.task_ref.clone(),
            node_id: node_id.to_string(),
            exit_code: self.exit_code,
            message: self.message.clone(),
            result: None,
            result_error: None,
            at: self.at,
        }
    }
}

/// Maps a task's state. `deployment` and `container` as in the ECS runner's config.
pub fn map_view(view: &TaskView, at: Timestamp, deployment: &str, container: &str) -> Mapping {
    let Some((job_id, attempt)) = view.identity(deployment) else {
        return Mapping::Ignore(format!(
            "task {} was not started by jetrun ({deployment})",
            view.task_arn
        ));
    };
    let report = |phase, exit_code, message: Option<String>| {
        Mapping::Report(Report {
            job_id: job_id.clone(),
            attempt,
            phase,
            task_ref: view.task_arn.clone(),
            exit_code,
            message,
            at,
        })
    };
    match view.outcome(container) {
        EcsOutcome::Pending => Mapping::Ignore(format!("task {} is {}", view.task_arn, view.last_status)),
        EcsOutcome::Running if view.last_status == "RUNNING" => report(TaskPhase::Started, None, None),
        EcsOutcome::Running => Mapping::Ignore(format!("task {} is {}", view.task_arn, view.last_status)),
        EcsOutcome::Exited { exit_code } => report(TaskPhase::Exited, Some(exit_code), None),
        // The stopper (the node agent: cancel, timeout, shutdown) reports its own stop
        // with the right phase; a guess here could turn a timeout into a cancel.
        EcsOutcome::Stopped { by_jetrun: true, .. } => {
            Mapping::Ignore(format!("task {} was stopped by jetrun", view.task_arn))
        }
        EcsOutcome::Stopped { reason, .. } => report(
            TaskPhase::Stopped,
            None,
            Some(format!("stopped outside jetrun: {reason}")),
        ),
        EcsOutcome::Lost { reason } => report(TaskPhase::Lost, None, Some(reason)),
        // A future outcome this version does not know: report nothing rather than guess.
        _ => Mapping::Ignore(format!("task {}: outcome not understood", view.task_arn)),
    }
}

/// Why an event could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not an ECS Task State Change event: {0}")]
pub struct ParseError(#[source] pub serde_json::Error);

/// Maps an EventBridge event (JSON). Events of another type are ignored.
pub fn map_event(
    event: &serde_json::Value,
    deployment: &str,
    container: &str,
) -> Result<Mapping, ParseError> {
    let env: Envelope = serde_json::from_value(event.clone()).map_err(ParseError)?;
    if env.detail_type != "ECS Task State Change" || env.source != "aws.ecs" {
        return Ok(Mapping::Ignore(format!(
            "event {:?} from {:?} is not an ECS Task State Change",
            env.detail_type, env.source
        )));
    }
    let at = env
        .detail
        .stopped_at
        .or(env.detail.updated_at)
        .or(env.time)
        .unwrap_or_else(jetrun_core::now);
    Ok(map_view(&env.detail.view(container), at, deployment, container))
}
