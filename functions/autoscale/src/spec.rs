//! Specs, bursts and state in the scale bucket, and the scale requests that change them.
//!
//! [`apply_request`] is the one place a request (from NATS, HTTP or the CLI) becomes a
//! change: it refuses unknown services, services not marked scalable, bounds it cannot
//! honour and `local` replicas of port-bound services, each with its own error kind.
//! [`declare`] is the operator's path: it creates or replaces a spec outright.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use jetrun_core::scale::{Burst, ScaleRequest, ScaleSpec, ScaleState, burst_key, spec_key, state_key};
use serde::de::DeserializeOwned;

/// Why a scale request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScaleRequestErrorKind {
    /// No spec for the service: declare it first (`jetrun scale set`).
    NotFound,
    /// The service's spec says `scalable: false`.
    NotScalable,
    /// More than one `local` replica of a service that binds fixed ports.
    LocalPortBound,
    /// Outside the spec's `[min, max]` (e.g. a burst above `max`).
    OutOfBounds,
    /// The request or spec itself is malformed (bad name, min above max, ...).
    Invalid,
    /// Another writer changed the spec at the same time, repeatedly: retry.
    Conflict,
    /// A stored value could not be decoded.
    Corrupt,
    /// NATS is unavailable or timed out: retry.
    Unavailable,
}

impl ScaleRequestErrorKind {
    /// A stable snake_case name (for dead letters, HTTP error bodies, CLI output).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::NotScalable => "not_scalable",
            Self::LocalPortBound => "local_port_bound",
            Self::OutOfBounds => "out_of_bounds",
            Self::Invalid => "invalid",
            Self::Conflict => "conflict",
            Self::Corrupt => "corrupt",
            Self::Unavailable => "unavailable",
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Conflict | Self::Unavailable)
    }
}

/// A scale request was refused or could not be applied.
#[derive(Debug, Clone, thiserror::Error)]
#[error("scale request for {service:?} refused ({}): {message}", kind.as_str())]
pub struct ScaleRequestError {
    /// What kind of refusal.
    pub kind: ScaleRequestErrorKind,
    /// The service.
    pub service: String,
    /// Why, for people.
    pub message: String,
}

impl ScaleRequestError {
    fn new(kind: ScaleRequestErrorKind, service: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            service: service.to_string(),
            message: message.into(),
        }
    }
    fn unavailable(service: &str, e: impl std::fmt::Display) -> Self {
        Self::new(ScaleRequestErrorKind::Unavailable, service, e.to_string())
    }
}

/// What an applied request changed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Applied {
    /// The spec was replaced (or created, by [`declare`]).
    Spec {
        /// The new spec.
        spec: ScaleSpec,
        /// Its revision in the bucket.
        revision: u64,
    },
    /// A burst is in force.
    Burst {
        /// The service.
        service: String,
        /// The burst.
        burst: Burst,
    },
    /// Any burst was dropped.
    Reset {
        /// The service.
        service: String,
        /// Whether there was a burst to drop.
        had_burst: bool,
    },
}

/// The service a request is about.
pub fn request_service(req: &ScaleRequest) -> &str {
    match req {
        ScaleRequest::Set { spec } => &spec.service,
        ScaleRequest::Burst { service, .. } | ScaleRequest::Reset { service } => service,
    }
}

fn invalid_spec(e: jetrun_core::scale::InvalidSpec) -> ScaleRequestError {
    let kind = if e.port_bound {
        ScaleRequestErrorKind::LocalPortBound
    } else {
        ScaleRequestErrorKind::Invalid
    };
    ScaleRequestError::new(kind, &e.service, e.reason)
}

async fn get_json<T: DeserializeOwned>(
    kv: &kv::Store,
    service: &str,
    key: &str,
) -> Result<Option<(T, u64)>, ScaleRequestError> {
    match kv
        .entry(key)
        .await
        .map_err(|e| ScaleRequestError::unavailable(service, e))?
    {
        Some(e) if e.operation == kv::Operation::Put => {
            let v = serde_json::from_slice(&e.value).map_err(|err| {
                ScaleRequestError::new(ScaleRequestErrorKind::Corrupt, service, format!("{key}: {err}"))
            })?;
            Ok(Some((v, e.revision)))
        }
        _ => Ok(None),
    }
}

fn encode<T: serde::Serialize>(service: &str, v: &T) -> Result<Bytes, ScaleRequestError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ScaleRequestError::new(ScaleRequestErrorKind::Corrupt, service, e.to_string()))
}

/// The spec of `service` and its revision.
pub async fn get_spec(kv: &kv::Store, service: &str) -> Result<Option<(ScaleSpec, u64)>, ScaleRequestError> {
    check_name(service)?;
    get_json(kv, service, &spec_key(service)).await
}

/// The burst recorded for `service` (possibly expired).
pub async fn get_burst(kv: &kv::Store, service: &str) -> Result<Option<Burst>, ScaleRequestError> {
    check_name(service)?;
    Ok(get_json(kv, service, &burst_key(service)).await?.map(|(b, _)| b))
}

/// The state the autoscaler recorded for `service`.
pub async fn get_state(kv: &kv::Store, service: &str) -> Result<Option<ScaleState>, ScaleRequestError> {
    check_name(service)?;
    Ok(get_json(kv, service, &state_key(service)).await?.map(|(s, _)| s))
}

/// Every service with a spec, sorted.
pub async fn list_services(kv: &kv::Store) -> Result<Vec<String>, ScaleRequestError> {
    let keys = match kv.keys().await {
        Ok(k) => k,
        Err(e) => return Err(ScaleRequestError::unavailable("*", e)),
    };
    let mut out: Vec<String> = keys
        .filter_map(|k| async move { k.ok().and_then(|k| k.strip_prefix("spec.").map(str::to_string)) })
        .collect()
        .await;
    out.sort();
    Ok(out)
}

fn check_name(service: &str) -> Result<(), ScaleRequestError> {
    jetrun_core::names::validate_token(service)
        .map_err(|e| ScaleRequestError::new(ScaleRequestErrorKind::Invalid, service, e.to_string()))
}

/// Creates or replaces a spec: the operator's declaration (`jetrun scale set`). Refuses
/// only specs that are invalid or ask for `local` replicas of a port-bound service.
pub async fn declare(kv: &kv::Store, spec: &ScaleSpec) -> Result<Applied, ScaleRequestError> {
    spec.validate().map_err(invalid_spec)?;
    let revision = kv
        .put(spec_key(&spec.service), encode(&spec.service, spec)?)
        .await
        .map_err(|e| ScaleRequestError::unavailable(&spec.service, e))?;
    Ok(Applied::Spec {
        spec: spec.clone(),
        revision,
    })
}

/// Applies a scale request (from NATS, HTTP or the CLI).
///
/// - `set` replaces the spec of an existing, scalable service (compare-and-set on its
///   revision, so a concurrent change is never overwritten blindly);
/// - `burst` holds at least `replicas` for `for_seconds`, then expires by itself;
/// - `reset` drops any burst.
///
/// Refused: unknown services (`NotFound`), services whose spec says `scalable: false`
/// (`NotScalable`), bursts above `max` (`OutOfBounds`), more than one `local` replica of a
/// port-bound service (`LocalPortBound`), malformed requests (`Invalid`).
pub async fn apply_request(kv: &kv::Store, req: &ScaleRequest) -> Result<Applied, ScaleRequestError> {
    let service = request_service(req).to_string();
    check_name(&service)?;
    // A few rounds: a lost compare-and-set re-reads and re-checks.
    for _ in 0..5 {
        let Some((current, revision)) = get_spec(kv, &service).await? else {
            return Err(ScaleRequestError::new(
                ScaleRequestErrorKind::NotFound,
                &service,
                "no scale spec for this service; declare it first with `jetrun scale set`",
            ));
        };
        if !current.scalable {
            return Err(ScaleRequestError::new(
                ScaleRequestErrorKind::NotScalable,
                &service,
                "the service is not marked scalable; its operator must change its spec",
            ));
        }
        match req {
            ScaleRequest::Set { spec } => {
                spec.validate().map_err(invalid_spec)?;
                match kv
                    .update(spec_key(&service), encode(&service, spec)?, revision)
                    .await
                {
                    Ok(revision) => {
                        return Ok(Applied::Spec {
                            spec: spec.clone(),
                            revision,
                        });
                    }
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(ScaleRequestError::unavailable(&service, e)),
                }
            }
            ScaleRequest::Burst {
                replicas,
                for_seconds,
                ..
            } => {
                if *for_seconds == 0 {
                    return Err(ScaleRequestError::new(
                        ScaleRequestErrorKind::Invalid,
                        &service,
                        "a burst lasts at least 1 second",
                    ));
                }
                if *replicas > current.max {
                    return Err(ScaleRequestError::new(
                        ScaleRequestErrorKind::OutOfBounds,
                        &service,
                        format!(
                            "burst of {replicas} is above the spec's max {}; raise max first",
                            current.max
                        ),
                    ));
                }
                if current.port_bound && current.is_local() && *replicas > 1 {
                    return Err(ScaleRequestError::new(
                        ScaleRequestErrorKind::LocalPortBound,
                        &service,
                        format!("the service binds fixed ports: {replicas} local replicas would collide"),
                    ));
                }
                let secs = i64::try_from(*for_seconds).unwrap_or(i64::MAX);
                let until = jetrun_core::now()
                    .checked_add_signed(
                        chrono::TimeDelta::try_seconds(secs).unwrap_or(chrono::TimeDelta::MAX),
                    )
                    .ok_or_else(|| {
                        ScaleRequestError::new(ScaleRequestErrorKind::Invalid, &service, "burst too long")
                    })?;
                let burst = Burst {
                    replicas: *replicas,
                    until,
                };
                kv.put(burst_key(&service), encode(&service, &burst)?)
                    .await
                    .map_err(|e| ScaleRequestError::unavailable(&service, e))?;
                return Ok(Applied::Burst { service, burst });
            }
            ScaleRequest::Reset { .. } => {
                let had_burst = get_burst(kv, &service).await?.is_some();
                if had_burst {
                    kv.delete(burst_key(&service))
                        .await
                        .map_err(|e| ScaleRequestError::unavailable(&service, e))?;
                }
                return Ok(Applied::Reset { service, had_burst });
            }
        }
    }
    Err(ScaleRequestError::new(
        ScaleRequestErrorKind::Conflict,
        &service,
        "the spec kept changing; retry",
    ))
}

/// Writes the state of a service (the leader only).
pub async fn put_state(kv: &kv::Store, state: &ScaleState) -> Result<u64, ScaleRequestError> {
    kv.put(state_key(&state.service), encode(&state.service, state)?)
        .await
        .map_err(|e| ScaleRequestError::unavailable(&state.service, e))
}

/// A burst's remaining time at `now`, if it is still active.
pub fn burst_remaining(b: &Burst, now: jetrun_core::Timestamp) -> Option<Duration> {
    (b.until - now).to_std().ok().filter(|d| !d.is_zero())
}
