//! Job logs and results of ECS tasks, from CloudWatch Logs (`GetLogEvents`).
//!
//! A Fargate task's output goes where its task definition's `awslogs` log driver sends
//! it: the log group `awslogs-group`, the stream `<awslogs-stream-prefix>/<container>/
//! <task id>`. The runner takes the group and prefix from [`LogsConfig`] or, when those
//! are not set, from the task's task definition (`DescribeTaskDefinition`, cached per
//! revision). The driver merges stdout and stderr into one stream, so every line is
//! reported as stdout.
//!
//! The job's result is the last `jetrun-result: ` line of the task's output
//! ([`jetrun_core::result::from_log`]): nothing can be read back from the file system of
//! a stopped Fargate task, and a log line needs no S3 bucket and no IAM beyond
//! `logs:GetLogEvents` (decision 23). Only the last [`RESULT_SCAN_EVENTS`] events are read.

use std::collections::HashMap;

use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata as _;
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{EcsRunner, classify};
use crate::{RunnerError, RunnerErrorKind};

/// Where job tasks' logs are (the task definitions' `awslogs` options).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// `awslogs-group` (default: none: read from the task's task definition).
    pub group: Option<String>,
    /// `awslogs-stream-prefix` (default: none: read from the task's task definition).
    pub stream_prefix: Option<String>,
}

/// How many of a task's last log events are searched for its result.
pub const RESULT_SCAN_EVENTS: i32 = 200;

/// Most events one `GetLogEvents` answers (CloudWatch Logs' limit).
const MAX_EVENTS: usize = 10_000;

/// A task's log stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStream {
    /// The log group.
    pub group: String,
    /// The stream name.
    pub stream: String,
}

/// Cache of task definition ARN → its job container's `(group, prefix)` (`None`: it has
/// no `awslogs` driver with a prefix).
pub(super) type LogOptionsCache = std::sync::Mutex<HashMap<String, Option<(String, String)>>>;

fn runtime(msg: impl Into<String>) -> RunnerError {
    RunnerError::new(RunnerErrorKind::Runtime, msg)
}

impl EcsRunner {
    /// The log stream of task `task_ref` (an ARN), or `None` if its output does not go
    /// to CloudWatch Logs in a stream jetrun can name (no `awslogs` driver, or no stream
    /// prefix, as on EC2 without one).
    pub async fn log_stream(&self, task_ref: &str) -> Result<Option<LogStream>, RunnerError> {
        let task_id = task_ref.rsplit('/').next().unwrap_or(task_ref);
        let found = match (&self.cfg.logs.group, &self.cfg.logs.stream_prefix) {
            (Some(g), Some(p)) => Some((g.clone(), p.clone())),
            _ => self.log_options_of_task(task_ref).await?.map(|(g, p)| {
                (
                    self.cfg.logs.group.clone().unwrap_or(g),
                    self.cfg.logs.stream_prefix.clone().unwrap_or(p),
                )
            }),
        };
        Ok(found.map(|(group, prefix)| LogStream {
            group,
            stream: format!("{prefix}/{}/{task_id}", self.cfg.container),
        }))
    }

    /// The `awslogs` group and prefix of the task's job container, from its task
    /// definition.
    async fn log_options_of_task(&self, task_ref: &str) -> Result<Option<(String, String)>, RunnerError> {
        let out = self
            .call("DescribeTasks", || async {
                self.client
                    .describe_tasks()
                    .cluster(&self.cfg.cluster)
                    .tasks(task_ref)
                    .send()
                    .await
                    .map_err(|e| classify("DescribeTasks", e))
            })
            .await?;
        let Some(td) = out.tasks().first().and_then(|t| t.task_definition_arn()) else {
            return Ok(None);
        };
        if let Some(hit) = self.log_options.lock().unwrap_or_else(|p| p.into_inner()).get(td) {
            return Ok(hit.clone());
        }
        let def = self
            .call("DescribeTaskDefinition", || async {
                self.client
                    .describe_task_definition()
                    .task_definition(td)
                    .send()
                    .await
                    .map_err(|e| classify("DescribeTaskDefinition", e))
            })
            .await?;
        let opts = def
            .task_definition()
            .map(|d| d.container_definitions())
            .unwrap_or_default()
            .iter()
            .find(|c| c.name() == Some(self.cfg.container.as_str()))
            .and_then(|c| c.log_configuration())
            .filter(|l| l.log_driver().as_str() == "awslogs")
            .and_then(|l| {
                let o = l.options()?;
                Some((
                    o.get("awslogs-group")?.clone(),
                    o.get("awslogs-stream-prefix")?.clone(),
                ))
            });
        if opts.is_none() {
            debug!(task_definition = %td, container = %self.cfg.container, "no awslogs group and stream prefix in the task definition");
        }
        self.log_options
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(td.to_string(), opts.clone());
        Ok(opts)
    }

    /// The last `limit` messages of `s` (oldest first); empty if the stream does not
    /// exist (yet).
    pub async fn last_log_events(&self, s: &LogStream, limit: usize) -> Result<Vec<String>, RunnerError> {
        let Some(logs) = &self.logs else {
            return Err(runtime("no CloudWatch Logs client"));
        };
        let limit = i32::try_from(limit.clamp(1, MAX_EVENTS)).unwrap_or(1);
        let out = self
            .call("GetLogEvents", || async {
                match logs
                    .get_log_events()
                    .log_group_name(&s.group)
                    .log_stream_name(&s.stream)
                    // From the tail: the answer holds the newest `limit` events.
                    .start_from_head(false)
                    .limit(limit)
                    .send()
                    .await
                {
                    Ok(o) => Ok(Some(o)),
                    Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
                    Err(e) => Err(classify("GetLogEvents", e)),
                }
            })
            .await?;
        Ok(out
            .map(|o| {
                o.events()
                    .iter()
                    .filter_map(|e| e.message().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// The last `lines` lines of `messages` (an event may hold several).
pub(super) fn tail_lines(messages: &[String], lines: usize) -> Vec<String> {
    let mut all: Vec<String> = messages
        .iter()
        .flat_map(|m| m.trim_end_matches('\n').split('\n'))
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    let skip = all.len().saturating_sub(lines);
    all.drain(..skip);
    all
}

/// The result in `messages` (the last marker line), cut to one byte past the cap so an
/// oversized one is refused by the caller without being kept whole.
pub(super) fn result_of(messages: &[String]) -> Option<Vec<u8>> {
    let text = messages.join("\n");
    let found = jetrun_core::result::from_log(&text)?;
    let mut b = found.as_bytes().to_vec();
    b.truncate(jetrun_core::result::MAX_RESULT_BYTES + 1);
    Some(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tails_split_events_into_lines() {
        let m = vec!["a".to_string(), "b\nc\n".to_string(), "d\r".to_string()];
        assert_eq!(tail_lines(&m, 2), ["c", "d"]);
        assert_eq!(tail_lines(&m, 10), ["a", "b", "c", "d"]);
        assert!(tail_lines(&[], 3).is_empty());
    }

    #[test]
    fn the_last_marker_line_is_the_result_and_is_capped() {
        let m = vec![
            "jetrun-result: {\"n\":1}".to_string(),
            "noise".to_string(),
            "jetrun-result: {\"n\":2}".to_string(),
            "after".to_string(),
        ];
        assert_eq!(result_of(&m).unwrap(), br#"{"n":2}"#);
        assert_eq!(result_of(&["no result".to_string()]), None);
        let big = vec![format!("jetrun-result: {}", "x".repeat(100_000))];
        assert_eq!(
            result_of(&big).unwrap().len(),
            jetrun_core::result::MAX_RESULT_BYTES + 1
        );
    }
}
