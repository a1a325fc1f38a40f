//! Typed handlers and declared subscriptions: a function says which consumer it reads
//! ([`Subscription`]) and what each message must be ([`Decode`]: its CloudEvent type, its
//! schema, its Rust type); the host checks and decodes once and hands the handler an
//! [`Event`]. A message that is not what it must be is dead-lettered with the reason
//! before any function code runs, so no handler repeats the check-and-decode preamble.

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream::consumer;
use serde::de::DeserializeOwned;
use tracing::debug;

use crate::{Handler, HandlerError, HandlerFuture, Incoming};

/// A durable pull consumer a function reads: `jetrun init` (as the operator) creates or
/// updates it, the function binds it.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The stream it reads.
    pub stream: String,
    /// The consumer (its `durable_name` is the consumer's name).
    pub consumer: consumer::pull::Config,
}

impl Subscription {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        self.consumer.durable_name.as_deref().unwrap_or_default()
    }
}

/// What a message must be before its handler sees it.
#[derive(Debug, Clone, Copy)]
pub struct Decode {
    /// The CloudEvent type its headers must carry (`None`: headers not required).
    pub ce_type: Option<&'static str>,
    /// The published schema its body must match (`None`: only the Rust type is checked).
    pub schema: Option<&'static str>,
    /// The dead-letter kind of a message without the right CloudEvent type
    /// (`invalid_event`; settle's task events say `forged_task_event`).
    pub wrong_type: &'static str,
    /// What becomes of a message that fails the check (default: dead-lettered).
    pub invalid: Invalid,
}

/// What the host does with a message that fails its [`Decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Dead-letter it with the reason, then `Term` it.
    DeadLetter,
    /// Acknowledge it unhandled (logged at debug). For a consumer that reads the same
    /// messages as the one that dead-letters them (github's webhooks, which route
    /// dead-letters): one bad message makes one dead letter, not one per reader.
    Ack,
}

impl Decode {
    /// A CloudEvent of `ty` whose body matches `ty`'s schema.
    pub const fn event(ty: &'static str) -> Self {
        Self {
            ce_type: Some(ty),
            schema: Some(ty),
            wrong_type: "invalid_event",
            invalid: Invalid::DeadLetter,
        }
    }

    /// Any message whose body decodes as the handler's type (no headers required).
    pub const fn body() -> Self {
        Self {
            ce_type: None,
            schema: None,
            wrong_type: "invalid_event",
            invalid: Invalid::DeadLetter,
        }
    }

    /// The same, dead-lettering a wrong or missing CloudEvent type as `kind`.
    pub const fn wrong_type_is(self, kind: &'static str) -> Self {
        Self {
            wrong_type: kind,
            ..self
        }
    }

    /// The same, acknowledging a message that fails instead of dead-lettering it
    /// ([`Invalid::Ack`]: another consumer of the same messages dead-letters it).
    pub const fn ack_invalid(self) -> Self {
        Self {
            invalid: Invalid::Ack,
            ..self
        }
    }

    /// Checks and decodes `msg`: `Permanent` (dead-lettered by the host) when it is not
    /// what it must be.
    pub fn decode<T: DeserializeOwned>(&self, msg: &Incoming) -> Result<T, HandlerError> {
        if let Some(want) = self.ce_type {
            match &msg.envelope {
                Err(e) => {
                    return Err(HandlerError::permanent(
                        self.wrong_type,
                        format!("no valid CloudEvent headers on {}: {e}", msg.subject),
                    ));
                }
                Ok(env) if env.ty != want => {
                    return Err(HandlerError::permanent(
                        self.wrong_type,
                        format!("ce-type {:?} on {} is not {want}", env.ty, msg.subject),
                    ));
                }
                Ok(_) => {}
            }
        }
        let schema_err = |e: String| HandlerError::permanent("schema", e);
        match self.schema {
            Some(ty) => {
                let value =
                    jetrun_core::schema::validate(ty, &msg.payload).map_err(|e| schema_err(e.to_string()))?;
                serde_json::from_value(value).map_err(|e| schema_err(format!("{ty} on {}: {e}", msg.subject)))
            }
            None => serde_json::from_slice(&msg.payload)
                .map_err(|e| schema_err(format!("the body on {} does not decode: {e}", msg.subject))),
        }
    }
}

/// A checked message: the decoded event and the message it came in (subject, headers,
/// delivery count; the payload is kept for signatures over the raw bytes).
#[derive(Debug)]
pub struct Event<T> {
    /// The decoded body.
    pub event: T,
    /// The message.
    pub msg: Incoming,
}

/// A handler over checked, decoded events of type `T` (see [`typed`]).
pub struct Typed<T, F> {
    decode: Decode,
    f: Arc<F>,
    _t: std::marker::PhantomData<fn() -> T>,
}

/// Wraps `f` so the host checks and decodes every message by `decode` first; `f` gets
/// only what passed.
pub fn typed<T, F, Fut>(decode: Decode, f: F) -> Typed<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Event<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Typed {
        decode,
        f: Arc::new(f),
        _t: std::marker::PhantomData,
    }
}

impl<T, F, Fut> Handler for Typed<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Event<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle(&self, msg: Incoming) -> HandlerFuture {
        match self.decode.decode::<T>(&msg) {
            Ok(event) => Box::pin((self.f)(Event { event, msg })),
            Err(e) if self.decode.invalid == Invalid::Ack => {
                debug!(subject = %msg.subject, reason = %e, "not a message for this consumer; acknowledged unhandled");
                Box::pin(std::future::ready(Ok(())))
            }
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}
