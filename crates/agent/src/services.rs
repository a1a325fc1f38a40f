//! The node's request/reply services on `<prefix>.node.<node_id>.<service>`
//! ([`jetrun_node::protocol`]): `logs` (a job's task logs: the tail through
//! [`jetrun_runner::Runner::log_tail`], so any runner's logs; what follows an offset
//! where the runner keeps log files) and `describe` (whether this node still
//! supervises an attempt, and whether it runs).

use std::path::Path;

use bytes::Bytes;
use jetrun_nats::lifecycle::lock;
use jetrun_node::protocol::{DescribeReply, DescribeRequest, LogsReply, LogsRequest};
use jetrun_runner::TaskStatus;
use serde::Serialize;
use tracing::debug;

use crate::{Agent, tail};

/// The most bytes of one stream a follow request returns.
const FOLLOW_MAX: u64 = 1 << 20;

/// The services' subscriptions, served by the agent's main loop.
pub(crate) struct Subscriptions {
    pub(crate) logs: async_nats::Subscriber,
    pub(crate) describe: async_nats::Subscriber,
}

impl Agent {
    pub(crate) async fn serve_logs(&self, m: async_nats::Message) {
        let Some(reply) = m.reply.clone() else { return };
        let out = match serde_json::from_slice::<LogsRequest>(&m.payload) {
            Ok(req) => self.logs(req).await,
            Err(e) => LogsReply {
                error: Some(format!("bad request: {e}")),
                ..Default::default()
            },
        };
        self.respond(reply, &out).await;
    }

    /// The logs of `req.job_id`'s current task on this node: the last `req.tail` lines of
    /// each stream, or, for a stream with a `*_from` offset, what follows it (runners
    /// that keep log files only). Failures are the reply's `error`.
    pub async fn logs(&self, req: LogsRequest) -> LogsReply {
        let mut out = LogsReply {
            job_id: req.job_id.clone(),
            ..Default::default()
        };
        if let Err(e) = self.fill_logs(&req, &mut out).await {
            out.error = Some(e);
        }
        out
    }

    async fn fill_logs(&self, req: &LogsRequest, out: &mut LogsReply) -> Result<(), String> {
        let runner = &self.inner.runner;
        let local = lock(&self.inner.tasks)
            .get(&req.job_id)
            .map(|s| s.task_ref.clone());
        let task_ref = match local {
            Some(t) => Some(t),
            None => match self.inner.ctx.store.get(&req.job_id).await {
                Ok(Some((r, _))) => r.task_ref,
                Ok(None) => return Err("no such job".into()),
                Err(e) => return Err(e.to_string()),
            },
        };
        let task_ref = task_ref.ok_or("the job has no task (yet)")?;
        out.task_ref = Some(task_ref.clone());
        let paths = runner.log_paths(&task_ref);
        let follows = req.stdout_from.is_some() || req.stderr_from.is_some();
        if follows && paths.is_none() {
            return Err(format!(
                "runner {} keeps no log files to follow for {task_ref}",
                runner.name()
            ));
        }
        // Offsets for a later follow: the sizes before the tail is read, so a line
        // written meanwhile may show twice but is never missed.
        let sizes = paths.clone().map(|(o, e)| (size(&o), size(&e)));
        if req.stdout_from.is_none() || req.stderr_from.is_none() {
            let (o, e) = runner
                .log_tail(&task_ref, req.tail)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("runner {} keeps no logs for {task_ref}", runner.name()))?;
            let (oo, eo) = sizes.unwrap_or_default();
            if req.stdout_from.is_none() {
                (out.stdout, out.stdout_offset) = (o, oo);
            }
            if req.stderr_from.is_none() {
                (out.stderr, out.stderr_offset) = (e, eo);
            }
        }
        if let Some((stdout, stderr)) = paths
            && follows
        {
            let (from_o, from_e) = (req.stdout_from, req.stderr_from);
            let read = tokio::task::spawn_blocking(move || {
                Ok::<_, std::io::Error>((follow(&stdout, from_o)?, follow(&stderr, from_e)?))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            if let (Some((lines, next)), _) = &read {
                (out.stdout, out.stdout_offset) = (lines.clone(), *next);
            }
            if let (_, Some((lines, next))) = read {
                (out.stderr, out.stderr_offset) = (lines, next);
            }
        }
        Ok(())
    }

    pub(crate) async fn serve_describe(&self, m: async_nats::Message) {
        let Some(reply) = m.reply.clone() else { return };
        let Ok(req) = serde_json::from_slice::<DescribeRequest>(&m.payload) else {
            return;
        };
        let known = lock(&self.inner.tasks)
            .get(&req.job_id)
            .filter(|s| s.attempt == req.attempt)
            .map(|s| s.task_ref.clone());
        let running = match &known {
            Some(t) => matches!(
                self.inner.runner.describe(t).await,
                Ok(TaskStatus::Running | TaskStatus::Pending)
            ),
            None => false,
        };
        let r = DescribeReply {
            job_id: req.job_id,
            supervised: known.is_some(),
            running,
        };
        self.respond(reply, &r).await;
    }

    async fn respond<T: Serialize>(&self, reply: async_nats::Subject, body: &T) {
        if let Ok(b) = serde_json::to_vec(body)
            && let Err(e) = self.inner.ctx.client.publish(reply, Bytes::from(b)).await
        {
            debug!(error = %e, "reply not sent");
        }
    }
}

/// A log file's size (0 if it does not exist yet).
fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The whole lines of `p` after `from`, and the offset after them; `None` without `from`.
fn follow(p: &Path, from: Option<u64>) -> std::io::Result<Option<(Vec<String>, u64)>> {
    let Some(off) = from else { return Ok(None) };
    let (text, next) = tail::read_from(p, off, FOLLOW_MAX)?;
    Ok(Some((text.lines().map(str::to_string).collect(), next)))
}
