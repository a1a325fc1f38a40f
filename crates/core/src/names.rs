//! Names of subjects, streams, consumers and buckets.
//!
//! Everything is derived from one prefix (default `jetrun`), so two deployments can share
//! one NATS server: prefix `staging` gives subjects `staging.job.submit.<queue>`, the
//! stream `STAGING_JOBS` and the bucket `staging-jobs`.

use serde::{Deserialize, Serialize};

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "jetrun";

/// Names derived from a deployment prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Names {
    prefix: String,
}

/// A prefix or token that cannot be used in a subject or bucket name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid name {value:?}: {reason}")]
pub struct InvalidName {
    /// The rejected value.
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// Checks that `token` is one NATS subject token usable in stream and bucket names too:
/// 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn validate_token(token: &str) -> Result<(), InvalidName> {
    let bad = |reason| {
        Err(InvalidName {
            value: token.to_string(),
            reason,
        })
    };
    if token.is_empty() {
        return bad("must not be empty");
    }
    if token.len() > 64 {
        return bad("must be at most 64 characters");
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return bad("only ASCII letters, digits, '-' and '_' are allowed");
    }
    Ok(())
}

impl Default for Names {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

impl Names {
    /// Names for `prefix`, which must be a valid token (see [`validate_token`]).
    pub fn new(prefix: &str) -> Result<Self, InvalidName> {
        validate_token(prefix)?;
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    /// The subject prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn stream(&self, suffix: &str) -> String {
        format!(
            "{}_{}",
            self.prefix.to_ascii_uppercase().replace('-', "_"),
            suffix
        )
    }

    fn bucket(&self, suffix: &str) -> String {
        format!("{}-{}", self.prefix, suffix)
    }

    // ---- streams ----
    /// Raw webhook deliveries (limits, 7 days).
    pub fn stream_webhooks(&self) -> String {
        self.stream("WEBHOOKS")
    }
    /// Job submissions (work queue).
    pub fn stream_jobs(&self) -> String {
        self.stream("JOBS")
    }
    /// Task lifecycle events.
    pub fn stream_tasks(&self) -> String {
        self.stream("TASKS")
    }
    /// Job state changes.
    pub fn stream_job_events(&self) -> String {
        self.stream("JOB_EVENTS")
    }
    /// Scale requests and signals.
    pub fn stream_scale(&self) -> String {
        self.stream("SCALE")
    }
    /// Dead letters.
    pub fn stream_dlq(&self) -> String {
        self.stream("DLQ")
    }

    // ---- buckets ----
    /// Job records, keyed by job id.
    pub fn bucket_jobs(&self) -> String {
        self.bucket("jobs")
    }
    /// Job index: `<queue>.<status>.<job_id>` → empty, for listing without scanning.
    pub fn bucket_index(&self) -> String {
        self.bucket("index")
    }
    /// Leases (per-key TTL, limit markers).
    pub fn bucket_leases(&self) -> String {
        self.bucket("leases")
    }
    /// Idempotency keys (TTL 72 h).
    pub fn bucket_dedupe(&self) -> String {
        self.bucket("dedupe")
    }
    /// Scale specs and state.
    pub fn bucket_scale(&self) -> String {
        self.bucket("scale")
    }
    /// Live nodes.
    pub fn bucket_nodes(&self) -> String {
        self.bucket("nodes")
    }

    // ---- subjects ----
    /// `<p>.webhook.<source>.<event>`
    pub fn webhook(&self, source: &str, event: &str) -> String {
        format!("{}.webhook.{source}.{event}", self.prefix)
    }
    /// `<p>.webhook.>`
    pub fn webhook_all(&self) -> String {
        format!("{}.webhook.>", self.prefix)
    }
    /// `<p>.job.submit.<queue>`
    pub fn job_submit(&self, queue: &str) -> String {
        format!("{}.job.submit.{queue}", self.prefix)
    }
    /// `<p>.job.submit.*`
    pub fn job_submit_all(&self) -> String {
        format!("{}.job.submit.*", self.prefix)
    }
    /// `<p>.job.event.<queue>.<job_id>`
    pub fn job_event(&self, queue: &str, job_id: &str) -> String {
        format!("{}.job.event.{queue}.{job_id}", self.prefix)
    }
    /// `<p>.job.event.>`
    pub fn job_event_all(&self) -> String {
        format!("{}.job.event.>", self.prefix)
    }
    /// `<p>.job.callback.<queue>.<job_id>`: the terminal state change of a job that asked
    /// for a completion callback (same body as its `job.event`), so only those jobs cost
    /// the callbacks consumer a delivery.
    pub fn job_callback(&self, queue: &str, job_id: &str) -> String {
        format!("{}.job.callback.{queue}.{job_id}", self.prefix)
    }
    /// `<p>.job.callback.>`
    pub fn job_callback_all(&self) -> String {
        format!("{}.job.callback.>", self.prefix)
    }
    /// `<p>.job.cancel.<job_id>`: core NATS, to whichever agent runs the job.
    pub fn job_cancel(&self, job_id: &str) -> String {
        format!("{}.job.cancel.{job_id}", self.prefix)
    }
    /// `<p>.task.<event>.<job_id>`
    pub fn task(&self, event: &str, job_id: &str) -> String {
        format!("{}.task.{event}.{job_id}", self.prefix)
    }
    /// `<p>.task.>`
    pub fn task_all(&self) -> String {
        format!("{}.task.>", self.prefix)
    }
    /// `<p>.scale.request.<service>`
    pub fn scale_request(&self, service: &str) -> String {
        format!("{}.scale.request.{service}", self.prefix)
    }
    /// `<p>.scale.signal.<service>`
    pub fn scale_signal(&self, service: &str) -> String {
        format!("{}.scale.signal.{service}", self.prefix)
    }
    /// `<p>.scale.>`
    pub fn scale_all(&self) -> String {
        format!("{}.scale.>", self.prefix)
    }
    /// `<p>.dlq.<origin>`
    pub fn dlq(&self, origin: &str) -> String {
        format!("{}.dlq.{origin}", self.prefix)
    }
    /// `<p>.dlq.>`
    pub fn dlq_all(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }
    /// `<p>.node.<node_id>.<service>`: request/reply services of a node agent (logs, ...).
    pub fn node_service(&self, node_id: &str, service: &str) -> String {
        format!("{}.node.{node_id}.{service}", self.prefix)
    }

    // ---- consumers ----
    /// Durable consumer name of a queue's dispatcher.
    pub fn consumer_dispatch(&self, queue: &str) -> String {
        format!("dispatch-{queue}")
    }
    /// The queue whose dispatcher `consumer` is ([`Names::consumer_dispatch`] reversed),
    /// or `None` for any other consumer.
    pub fn queue_of_consumer<'a>(&self, consumer: &'a str) -> Option<&'a str> {
        consumer.strip_prefix("dispatch-").filter(|q| !q.is_empty())
    }
    /// Durable consumer of the router.
    pub fn consumer_route(&self) -> String {
        "route".to_string()
    }
    /// Durable consumer of settle on task events.
    pub fn consumer_settle(&self) -> String {
        "settle".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_match_design() {
        let n = Names::default();
        assert_eq!(n.stream_jobs(), "JETRUN_JOBS");
        assert_eq!(n.bucket_jobs(), "jetrun-jobs");
        assert_eq!(n.job_submit("ci"), "jetrun.job.submit.ci");
        assert_eq!(n.webhook("github", "push"), "jetrun.webhook.github.push");
    }

    #[test]
    fn prefix_separates_deployments() {
        let n = Names::new("staging-2").unwrap();
        assert_eq!(n.stream_dlq(), "STAGING_2_DLQ");
        assert_eq!(n.bucket_leases(), "staging-2-leases");
        assert_eq!(n.dlq("dispatch"), "staging-2.dlq.dispatch");
        assert!(Names::new("a.b").is_err());
        assert!(Names::new("").is_err());
    }

    #[test]
    fn dispatch_consumer_names_map_back_to_their_queue() {
        let n = Names::default();
        let c = n.consumer_dispatch("gpu-large");
        assert_eq!(n.queue_of_consumer(&c), Some("gpu-large"));
        assert_eq!(n.queue_of_consumer(&n.consumer_settle()), None);
        assert_eq!(n.queue_of_consumer(&n.consumer_route()), None);
        assert_eq!(n.queue_of_consumer("dispatch-"), None);
    }
}
