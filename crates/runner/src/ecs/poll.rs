//! The shared `wait` poller: every task some `wait` is waiting for is described in one
//! `DescribeTasks` call (up to 100 tasks each) per `poll_interval`, instead of one call
//! per task per interval. 1,000 running jobs at the default 5 s cost 2 calls a second, not
//! 200 — far below ECS's API throttling, and nothing else (launches, the bridge's
//! reconcile) is starved of the account's DescribeTasks rate.
//!
//! The poll loop runs in its own tokio task while anyone waits and ends when no one does,
//! so a `wait` future dropped mid-round (a cancel, a timeout) stalls nobody else.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_ecs::Client;
use tokio::sync::oneshot;
use tracing::debug;

use super::{EcsConfig, TaskView, describe_with};

/// One round's answer for one task: its state, `None` if ECS does not know it, or why
/// the round failed.
pub(super) type Reply = Result<Option<TaskView>, String>;

#[derive(Default)]
struct State {
    waiting: HashMap<String, Vec<oneshot::Sender<Reply>>>,
    running: bool,
}

/// The poller of one runner.
pub(super) struct Poller {
    client: Client,
    cfg: EcsConfig,
    state: Mutex<State>,
}

impl Poller {
    pub(super) fn new(client: Client, cfg: EcsConfig) -> Self {
        Self {
            client,
            cfg,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The task's state at the next round (after at most `poll_interval`).
    pub(super) async fn next(self: &std::sync::Arc<Self>, task_ref: &str) -> Reply {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.state();
            s.waiting.entry(task_ref.to_string()).or_default().push(tx);
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            tokio::spawn(self.clone().run());
        }
        rx.await.unwrap_or_else(|_| Err("the ECS poller stopped".into()))
    }

    async fn run(self: std::sync::Arc<Self>) {
        loop {
            tokio::time::sleep(self.cfg.poll_interval).await;
            let batch = {
                let mut s = self.state();
                if s.waiting.is_empty() {
                    s.running = false;
                    return;
                }
                std::mem::take(&mut s.waiting)
            };
            let arns: Vec<String> = batch.keys().cloned().collect();
            debug!(tasks = arns.len(), "polling ECS tasks");
            match describe_with(&self.client, &self.cfg, &arns).await {
                Ok(views) => {
                    for (arn, txs) in batch {
                        // A short task id matches its full ARN.
                        let v = views
                            .iter()
                            .find(|v| {
                                v.task_arn == arn || v.task_arn.rsplit('/').next() == Some(arn.as_str())
                            })
                            .cloned();
                        for tx in txs {
                            let _ = tx.send(Ok(v.clone()));
                        }
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for tx in batch.into_values().flatten() {
                        let _ = tx.send(Err(msg.clone()));
                    }
                }
            }
        }
    }
}
