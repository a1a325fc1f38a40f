//! Keeping things alive: each task's lease (renewed every `renew_every`, with a re-read of
//! the job record that catches cancels and jobs that moved on) and this node's entry in
//! the `nodes` bucket (a per-key TTL, refreshed every `heartbeat_every`).

use async_nats::HeaderMap;
use bytes::Bytes;
use jetrun_nats::StoreErrorKind;
use jetrun_nats::store::Lease;
use jetrun_node::protocol::NodeInfo;
use tracing::debug;

use crate::{Agent, Inner};

/// What a renewal says about a task.
pub(crate) enum Keep {
    /// Still this node's: keep running.
    Run,
    /// A cancel was asked for.
    Cancel,
    /// The job moved on (another attempt, another node, terminal): stop it quietly.
    Superseded,
}

impl Inner {
    /// The lease this node holds on `attempt` of `job_id`.
    pub(crate) fn lease_for(&self, job_id: &str, attempt: u32) -> Lease {
        Lease {
            job_id: job_id.to_string(),
            attempt,
            worker_id: self.ctx.worker_id.clone(),
            node_id: self.ctx.node_id.clone(),
        }
    }

    /// Renews the lease and re-reads the record: keep running, cancel, or give up.
    pub(crate) async fn keep(&self, lease: &Lease, rev: &mut u64) -> Keep {
        let store = &self.ctx.store;
        let renewed = match store.renew_lease(lease, *rev, self.config.lease_ttl).await {
            Ok(r) => {
                *rev = r;
                true
            }
            Err(e) => {
                debug!(job_id = %lease.job_id, error = %e, "lease renewal failed");
                false
            }
        };
        let rec = match store.get(&lease.job_id).await {
            Ok(Some((r, _))) => r,
            Ok(None) => return Keep::Superseded,
            Err(_) => return Keep::Run,
        };
        if rec.status.is_terminal()
            || rec.attempt != lease.attempt
            || rec.node_id.as_deref() != Some(lease.node_id.as_str())
        {
            return Keep::Superseded;
        }
        if !renewed {
            // Lost the lease (it expired during a stall, or its revision moved): take it
            // back, since the job is still ours.
            match store.acquire_lease(lease, self.config.lease_ttl).await {
                Ok(r) => *rev = r,
                Err(e) if e.kind == StoreErrorKind::Conflict => {
                    if let Ok(Some((l, r))) = store.lease(&lease.job_id).await
                        && l.attempt == lease.attempt
                    {
                        *rev = r;
                    }
                }
                Err(_) => {}
            }
        }
        if rec.cancel_requested {
            Keep::Cancel
        } else {
            Keep::Run
        }
    }
}

impl Agent {
    /// Writes this node's entry with a TTL (a missed beat is logged and retried at the
    /// next one; the entry lives `node_ttl`).
    pub(crate) async fn heartbeat(&self) {
        let inner = &self.inner;
        let info = NodeInfo {
            node_id: inner.ctx.node_id.clone(),
            worker_id: inner.ctx.worker_id.clone(),
            runner: inner.runner.name().to_string(),
            tasks: self.running(),
            queues: inner.config.queues.clone(),
            updated_at: jetrun_core::now(),
        };
        let Ok(body) = serde_json::to_vec(&info) else {
            return;
        };
        let mut h = HeaderMap::new();
        h.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            format!("{}s", inner.config.node_ttl.as_secs().max(1)).as_str(),
        );
        let subject = format!("$KV.{}.{}", inner.ctx.names.bucket_nodes(), inner.ctx.node_id);
        match inner
            .ctx
            .js
            .publish_with_headers(subject, h, Bytes::from(body))
            .await
        {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    debug!(error = %e, "heartbeat not stored");
                }
            }
            Err(e) => debug!(error = %e, "heartbeat not sent"),
        }
    }

    /// Removes this node's entry (at shutdown; it would expire anyway).
    pub(crate) async fn deregister(&self) {
        let inner = &self.inner;
        if let Ok(kv) = inner.ctx.js.get_key_value(inner.ctx.names.bucket_nodes()).await
            && let Err(e) = kv.delete(&inner.ctx.node_id).await
        {
            debug!(error = %e, "node entry not removed; it will expire");
        }
    }
}
