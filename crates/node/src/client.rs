//! Asking node agents: a job's logs, whether a node still supervises an attempt, and the
//! live fleet from the `nodes` bucket.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::protocol::{self, DescribeReply, DescribeRequest, LogsReply, LogsRequest, NodeInfo};
use crate::{NodeError, NodeErrorKind};

/// Asks the agent of `node_id` for the logs of a job. A reply may still carry an
/// `error` (no such job, no logs kept).
pub async fn request_logs(
    client: &async_nats::Client,
    names: &jetrun_core::Names,
    node_id: &str,
    req: &LogsRequest,
    timeout: Duration,
) -> Result<LogsReply, NodeError> {
    let what = || format!("node {node_id}: {}", protocol::SERVICE_LOGS);
    let body =
        serde_json::to_vec(req).map_err(|e| NodeError::with_source(NodeErrorKind::Encode, what(), e))?;
    let subject = names.node_service(node_id, protocol::SERVICE_LOGS);
    let m = tokio::time::timeout(timeout, client.request(subject, Bytes::from(body)))
        .await
        .map_err(|_| {
            NodeError::new(
                NodeErrorKind::Timeout,
                format!("{} (no answer in {timeout:?})", what()),
            )
        })?
        .map_err(|e| NodeError::with_source(NodeErrorKind::Unavailable, what(), e))?;
    serde_json::from_slice(&m.payload).map_err(|e| NodeError::with_source(NodeErrorKind::Decode, what(), e))
}

/// Asks the agent of `node_id` whether it still runs `attempt` of a job. `None` if it
/// does not answer in `timeout` (it is presumed dead) or answers nonsense.
pub async fn request_describe(
    client: &async_nats::Client,
    names: &jetrun_core::Names,
    node_id: &str,
    job_id: &str,
    attempt: u32,
    timeout: Duration,
) -> Option<DescribeReply> {
    let body = serde_json::to_vec(&DescribeRequest {
        job_id: job_id.to_string(),
        attempt,
    })
    .ok()?;
    let subject = names.node_service(node_id, protocol::SERVICE_DESCRIBE);
    let m = tokio::time::timeout(timeout, client.request(subject, Bytes::from(body)))
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&m.payload).ok()
}

/// Reads the `nodes` bucket: the live fleet (entries that do not decode are skipped).
pub async fn nodes(
    js: &async_nats::jetstream::Context,
    names: &jetrun_core::Names,
) -> Result<Vec<NodeInfo>, NodeError> {
    let what = || format!("read bucket {}", names.bucket_nodes());
    let kv = js
        .get_key_value(names.bucket_nodes())
        .await
        .map_err(|e| NodeError::with_source(NodeErrorKind::Unavailable, what(), e))?;
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(|e| NodeError::with_source(NodeErrorKind::Unavailable, what(), e))?
        .filter_map(|k| async move { k.ok() })
        .collect()
        .await;
    let mut out = Vec::new();
    for k in keys {
        if let Ok(Some(v)) = kv.get(&k).await
            && let Ok(n) = serde_json::from_slice::<NodeInfo>(&v)
        {
            out.push(n);
        }
    }
    Ok(out)
}
