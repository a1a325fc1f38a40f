//! The callbacks consumer's settings (a state change that does not decode is
//! dead-lettered with the reason by the host's typed handler, never acknowledged unseen).

use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy};

use crate::CALLBACK_CONSUMER;

/// The most deliveries of one callback: `callback_max_deliveries` above it is capped.
pub const MAX_CALLBACK_DELIVERIES: u64 = 100;

/// The callbacks consumer's `max_deliver`: a backstop above [`MAX_CALLBACK_DELIVERIES`]
/// (settle dead-letters a callback itself at `callback_max_deliveries`), fixed so that
/// `jetrun init` and every settle declare the same consumer whatever their settings.
pub const CALLBACK_CONSUMER_MAX_DELIVER: i64 = MAX_CALLBACK_DELIVERIES as i64 + 8;

/// The durable consumer `settle-callbacks` on `<p>.job.callback.>`.
pub fn callbacks_subscription(n: &jetrun_core::Names) -> jetrun_host::Subscription {
    jetrun_host::Subscription {
        stream: n.stream_job_events(),
        consumer: consumer::pull::Config {
            durable_name: Some(CALLBACK_CONSUMER.into()),
            description: Some("settle: completion callbacks".into()),
            // Only terminal changes of jobs that asked for a callback are published here,
            // so jobs without one cost this consumer nothing.
            filter_subject: n.job_callback_all(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_deliver: CALLBACK_CONSUMER_MAX_DELIVER,
            max_ack_pending: 10_000,
            // Only changes from the moment it is first made: no callbacks for history.
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        },
    }
}
