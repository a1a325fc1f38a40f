//! Real-time updates over WebSocket, beside the SSE endpoints of [`crate::sse`].
//!
//! - `GET /v1/jobs/{id}/ws`: one job's transitions (closes `1000` after the terminal one);
//! - `GET /v1/events/ws?queue=&status=`: every transition of the caller's jobs (an
//!   operator: every job).
//!
//! Same authorization (a bearer token in `Authorization`, never in the URL), same
//! filters, same per-tenant bound (SSE and WebSocket streams count together) and same
//! resume: `Last-Event-ID` or `?last_event_id=N` starts after stream sequence `N`. Each
//! text message is the CloudEvent SSE sends as `data`; its `streamseq` attribute is the
//! id to resume after.
//!
//! The server pings every [`WsLimits::ping_interval`]; a client that answers nothing for
//! [`WsLimits::pong_timeout`] is dropped. A slow client never makes the server buffer
//! without bound: the events stream itself is the backlog (an ordered consumer read only
//! as fast as the socket takes messages), at most [`WsLimits::buffer`] events wait for
//! the socket, and a client that takes nothing for [`WsLimits::send_timeout`] (the queue
//! stays full, or one message does not go out) is closed with [`CLOSE_SLOW`] (`1008`,
//! reason `slow consumer: ...`); it reconnects with the last id it received and misses
//! nothing. When the server drains, every socket
//! is closed with `1001` (going away).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::problem::{Problem, ProblemKind};
use crate::server::Upgrades;
use crate::sse::{self, Live, Opened, StreamQuery};

/// Close code for a client that does not keep up (policy violation).
pub const CLOSE_SLOW: u16 = 1008;
/// How long the closing handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Limits of the WebSocket endpoints (`websocket` in the ingest config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsLimits {
    /// Events that may wait for one client's socket (default 256).
    pub buffer: usize,
    /// A client that takes no message for this long while some wait is closed as slow
    /// (default 10 s).
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Interval of the server's pings (default 15 s).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client from which nothing (not even a pong) arrived for this long is dropped
    /// (default 45 s).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Largest message accepted from a client (default 4 KiB): clients have nothing to
    /// say but pongs and close frames.
    pub max_client_message: usize,
}

impl Default for WsLimits {
    fn default() -> Self {
        Self {
            buffer: 256,
            send_timeout: Duration::from_secs(10),
            ping_interval: sse::HEARTBEAT,
            pong_timeout: Duration::from_secs(45),
            max_client_message: 4096,
        }
    }
}

/// The accept key of a valid WebSocket handshake, or why it is not one.
fn handshake(headers: &HeaderMap) -> Result<String, Problem> {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(Problem::new(
            ProblemKind::BadHeader,
            "this is a WebSocket endpoint: send Connection: Upgrade and Upgrade: websocket (or use the SSE endpoint)",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(Problem::new(
            ProblemKind::BadHeader,
            "Sec-WebSocket-Version must be 13",
        ));
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(k) if !k.is_empty() && k.len() <= 64 => Ok(derive_accept_key(k.as_bytes())),
        _ => Err(Problem::new(
            ProblemKind::BadHeader,
            "Sec-WebSocket-Key is missing or malformed",
        )),
    }
}

/// What the handler checked before the upgrade.
struct Checked {
    tenant: String,
    accept: String,
    last: Option<u64>,
    query: StreamQuery,
}

fn check(live: &Live, parts: &Parts) -> Result<Checked, Problem> {
    let tenant = crate::api::authenticate(&live.ingest, &parts.headers)?;
    let accept = handshake(&parts.headers)?;
    let query = Query::<StreamQuery>::try_from_uri(&parts.uri)
        .map_err(|e| Problem::new(ProblemKind::ValidationFailed, e.body_text()))?
        .0;
    let last = sse::last_event_id(&parts.headers, query.last_event_id.as_deref())?;
    Ok(Checked {
        tenant,
        accept,
        last,
        query,
    })
}

/// `GET /v1/jobs/{id}/ws`
pub async fn job_ws(
    State(live): State<Arc<Live>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Problem> {
    let (mut parts, _) = req.into_parts();
    let c = check(&live, &parts)?;
    let opened = sse::open_job(&live, &c.tenant, &id, c.last).await?;
    upgrade(&live, &mut parts, &c.accept, opened)
}

/// `GET /v1/events/ws?queue=&status=`
pub async fn events_ws(State(live): State<Arc<Live>>, req: Request) -> Result<Response, Problem> {
    let (mut parts, _) = req.into_parts();
    let c = check(&live, &parts)?;
    let opened = sse::open_tenant(&live, &c.tenant, &c.query, c.last).await?;
    upgrade(&live, &mut parts, &c.accept, Some(opened))
}

/// Answers `101 Switching Protocols` and serves the socket in its own task. `opened`
/// `None` (a finished job, nothing left after `Last-Event-ID`) is closed at once with
/// `1000`.
fn upgrade(
    live: &Live,
    parts: &mut Parts,
    accept: &str,
    opened: Option<Opened>,
) -> Result<Response, Problem> {
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(Problem::new(
            ProblemKind::BadHeader,
            "this connection cannot be upgraded (HTTP/1.1 is needed)",
        ));
    };
    let upgrades = parts.extensions.get::<Upgrades>().cloned();
    // An upgraded socket keeps a connection slot of its own; without the server's
    // extension (another server) it is bounded by the tenant's stream slots alone.
    let (shutdown, permit) = match &upgrades {
        Some(u) => match u.hold() {
            Some(p) => (u.shutdown().clone(), Some(p)),
            None => {
                return Err(Problem::unavailable("connection limit reached").retry_after(1));
            }
        },
        None => (CancellationToken::new(), None),
    };
    let limits = live.ingest.config.websocket.clone();
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(io) => io,
            Err(e) => {
                debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(1024 * 1024)
            .max_message_size(Some(limits.max_client_message))
            .max_frame_size(Some(limits.max_client_message));
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config)).await;
        let end = match opened {
            Some(o) => run(ws, o, &limits, &shutdown).await,
            None => {
                close(ws, CloseCode::Normal, "job finished; nothing after last_event_id").await;
                End::Finished
            }
        };
        debug!(?end, "websocket closed");
        drop(permit);
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(accept).map_err(|_| Problem::new(ProblemKind::BadHeader, "bad key"))?,
    );
    Ok(resp)
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Why a socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The job's terminal change was sent.
    Finished,
    /// The client closed, or the socket broke.
    Gone,
    /// Nothing heard from the client within the pong timeout.
    Silent,
    /// The client did not keep up.
    Slow,
    /// The server drains.
    Drain,
    /// The stream reached its age limit.
    Aged,
    /// Reading the events stream failed.
    Upstream,
}

/// What the pump (events stream to the socket's queue) ended on.
#[derive(Debug, Clone, Copy)]
enum PumpEnd {
    Overflow,
    Aged,
    Upstream,
    Finished,
}

async fn close(mut ws: Ws, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    // A client that does not read cannot take the close frame either: bounded.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}

/// Serves one socket: the pump reads the events stream into a bounded queue, the loop
/// here writes the queue to the socket, pings, and reads what the client sends.
async fn run(ws: Ws, opened: Opened, limits: &WsLimits, shutdown: &CancellationToken) -> End {
    let Opened {
        mut changes,
        filter,
        slot,
        end_on_terminal,
    } = opened;
    let (tx, mut rx) = mpsc::channel::<(String, bool)>(limits.buffer.max(1));
    let (end_tx, mut end_rx) = tokio::sync::oneshot::channel::<PumpEnd>();
    // Set by the pump when the queue is full, heard even while a send is blocked.
    let slow = CancellationToken::new();
    let slow_pump = slow.clone();
    let send_timeout = limits.send_timeout;
    let pump = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + sse::MAX_STREAM_AGE;
        let end = loop {
            let c = match tokio::time::timeout_at(deadline, changes.next()).await {
                Err(_) => break PumpEnd::Aged,
                Ok(None) => break PumpEnd::Upstream,
                Ok(Some(Err(e))) => {
                    info!(error = %e, "websocket event stream ended");
                    break PumpEnd::Upstream;
                }
                Ok(Some(Ok(c))) => c,
            };
            if !filter.matches(&c.change) {
                continue;
            }
            let terminal = end_on_terminal && c.change.to.is_terminal();
            let text = serde_json::to_string(&c.event).unwrap_or_default();
            // A full queue is fine while the client takes messages (a replay from
            // `last_event_id` fills it at once); one that stays full is a client that
            // stopped reading.
            match tokio::time::timeout(send_timeout, tx.send((text, terminal))).await {
                Err(_) => {
                    slow_pump.cancel();
                    break PumpEnd::Overflow;
                }
                Ok(Err(_)) => break PumpEnd::Upstream,
                Ok(Ok(())) => {}
            }
            if terminal {
                break PumpEnd::Finished;
            }
        };
        let _ = end_tx.send(end);
    });
    let (mut sink, mut stream) = ws.split();
    let mut ping = tokio::time::interval(limits.ping_interval.max(Duration::from_millis(10)));
    ping.tick().await;
    let mut heard = tokio::time::Instant::now();
    let mut sent = 0u64;
    let mut pump_end: Option<PumpEnd> = None;
    let end = 'outer: loop {
        let msg = tokio::select! {
            biased;
            () = shutdown.cancelled() => break End::Drain,
            () = slow.cancelled() => break End::Slow,
            e = &mut end_rx, if pump_end.is_none() => {
                let e = e.unwrap_or(PumpEnd::Upstream);
                if matches!(e, PumpEnd::Overflow) {
                    break End::Slow;
                }
                // Whatever is queued still goes out first.
                pump_end = Some(e);
                continue;
            }
            // Before sending more: pongs are seen even during a long replay.
            m = stream.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Gone,
                // Pongs, and anything else: the client is alive; it has nothing to ask.
                Some(Ok(_)) => {
                    heard = tokio::time::Instant::now();
                    continue;
                }
            },
            m = rx.recv() => match m {
                Some((text, terminal)) => {
                    if terminal {
                        pump_end = Some(PumpEnd::Finished);
                    }
                    Message::text(text)
                }
                None => break match pump_end {
                    Some(PumpEnd::Finished) => End::Finished,
                    Some(PumpEnd::Aged) => End::Aged,
                    Some(PumpEnd::Overflow) => End::Slow,
                    Some(PumpEnd::Upstream) | None => End::Upstream,
                },
            },
            _ = ping.tick() => {
                if heard.elapsed() >= limits.pong_timeout {
                    break End::Silent;
                }
                Message::Ping(Default::default())
            }
        };
        let is_event = msg.is_text();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break 'outer End::Drain,
            () = slow.cancelled() => break 'outer End::Slow,
            r = tokio::time::timeout(limits.send_timeout, sink.send(msg)) => match r {
                Err(_) => break 'outer End::Slow,
                Ok(Err(_)) => break 'outer End::Gone,
                Ok(Ok(())) => {
                    if is_event {
                        sent += 1;
                    }
                }
            },
        }
    };
    pump.abort();
    drop(slot);
    let (code, reason) = match end {
        End::Finished => (CloseCode::Normal, "job finished"),
        End::Slow => (
            CloseCode::from(CLOSE_SLOW),
            "slow consumer: events were not read in time; reconnect with last_event_id",
        ),
        End::Drain => (
            CloseCode::Away,
            "server shutting down; reconnect with last_event_id",
        ),
        End::Aged => (
            CloseCode::Normal,
            "stream age limit reached; reconnect with last_event_id",
        ),
        End::Upstream => (
            CloseCode::Again,
            "event stream unavailable; reconnect with last_event_id",
        ),
        End::Gone | End::Silent => {
            info!(?end, sent, "websocket ended");
            return end;
        }
    };
    info!(?end, sent, "websocket closing");
    if let Ok(ws) = sink.reunite(stream) {
        close(ws, code, reason).await;
    }
    end
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_handshake_is_checked() {
        let mut h = HeaderMap::new();
        assert!(handshake(&h).is_err());
        h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(handshake(&h).is_err(), "no version");
        h.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        assert!(handshake(&h).is_err(), "no key");
        // RFC 6455 section 1.3's example.
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        assert_eq!(handshake(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
