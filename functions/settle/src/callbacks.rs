//! The glue between the callbacks consumer and the delivery in `callback`: the durable
//! consumer's settings, and the decode check that keeps a state change that cannot be
//! read from being acknowledged unseen (it is dead-lettered with the reason instead).

use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use jetrun_host::{HandlerError, Incoming};
use jetrun_nats::store::StateChange;

use crate::{CALLBACK_CONSUMER, Settle};

impl Settle {
    /// The durable consumer `settle-callbacks` on `<p>.job.callback.>`.
    pub(crate) fn callbacks_consumer(&self) -> consumer::pull::Config {
        let n = &self.inner.ctx.names;
        consumer::pull::Config {
            durable_name: Some(CALLBACK_CONSUMER.into()),
            description: Some("settle: completion callbacks".into()),
            // Only terminal changes of jobs that asked for a callback are published here,
            // so jobs without one cost this consumer nothing.
            filter_subject: n.job_callback_all(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_deliver: (self.inner.config.callback_max_deliveries as i64)
                .max(1)
                .saturating_add(8),
            max_ack_pending: 10_000,
            // Only changes from the moment settle first runs: no callbacks for history.
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        }
    }

    /// One message of the callbacks consumer: a state change that does not decode is a
    /// permanent failure (dead-lettered as `schema` with the reason), the rest goes to the
    /// delivery.
    pub(crate) async fn on_callback_message(&self, msg: Incoming) -> Result<(), HandlerError> {
        if let Err(e) = serde_json::from_slice::<StateChange>(&msg.payload) {
            return Err(HandlerError::permanent(
                "schema",
                format!("a state change on {} does not decode: {e}", msg.subject),
            ));
        }
        self.on_job_event(msg).await
    }
}
