//! The HTTP/1.1 server under the router, with the connection limits `axum::serve`
//! cannot set: a header-read timeout, an idle timeout and a cap on open connections.
//!
//! Without them one client could hold thousands of idle connections (each a socket and
//! a task) and starve everyone else.
//!
//! Connections may be upgraded (WebSocket, `crate::ws`): each request carries an
//! [`Upgrades`] extension with the server's shutdown token and its connection slots, so
//! an upgraded connection still counts against `max_connections` and is closed cleanly
//! (and waited for) when the server drains.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Connection limits of the HTTP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// Time a client has to send a request's complete headers (default 10 s), counted
    /// from when the server starts waiting: on a new connection, and on a kept-alive one
    /// between requests, so an idle keep-alive connection is also closed after it.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved either way for this long is closed (default
    /// 60 s): a body trickled in slowly, a response never read.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most connections open at once (default 1024). One more is answered `503` with
    /// `Connection: close` and closed at once, without reading it.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// What a connection past the limit gets before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 130\r\n\r\n\
{\"type\":\"https://jetrun.dev/problems/unavailable\",\"title\":\"Too many connections\",\"status\":503,\"detail\":\"connection limit reached\"}";

/// How long requests in flight may go on after shutdown began: long enough for any
/// ordinary request (JetStream answers within the publish timeout), short enough that an
/// open event stream (SSE) does not hold a restart for its whole 10 minutes; its client
/// resumes with `Last-Event-ID`.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// What an upgraded connection takes from the server that accepted it (a request
/// extension): the hyper connection ends at the upgrade, so without this the socket
/// would escape both the connection cap and the drain.
#[derive(Debug, Clone)]
pub struct Upgrades {
    shutdown: CancellationToken,
    slots: Arc<Semaphore>,
}

impl Upgrades {
    /// Cancelled when the server begins to drain: close the upgraded connection (within
    /// [`DRAIN_GRACE`]).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// A connection slot for the upgraded connection, held while it is open (the server
    /// waits for every slot before it returns), or `None` at the cap.
    pub fn hold(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// Serves `router` on `listener` with `limits` until `shutdown`, then lets requests in
/// flight finish, for at most [`DRAIN_GRACE`] (idle connections close at once), before
/// returning.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: ServerLimits,
) -> std::io::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let router = router.layer(axum::Extension(Upgrades {
        shutdown: shutdown.clone(),
        slots: slots.clone(),
    }));
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors or a reset before accept: back off briefly
                    // rather than spin; the listener itself is fine.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Best effort, never blocking: the socket buffer of a new connection is empty.
            let _ = stream.try_write(REFUSED);
            debug!(%peer, max, "connection refused: limit reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(router.clone());
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(stream, svc, &limits, &shutdown).await;
            drop(slot);
        });
    }
    // Every slot back means every connection has ended.
    let _all = slots.acquire_many(max as u32).await;
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    svc: TowerToHyperService<Router>,
    limits: &ServerLimits,
    shutdown: &CancellationToken,
) {
    let io = Activity::new(stream);
    let last = io.last.clone();
    let started = io.started;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), svc).with_upgrades());
    let idle = limits.idle_timeout.max(Duration::from_millis(10));
    let mut draining = false;
    let mut drain_deadline = tokio::time::Instant::now();
    loop {
        let last_at = started + Duration::from_millis(last.load(Ordering::Relaxed));
        tokio::select! {
            () = tokio::time::sleep_until(drain_deadline), if draining => {
                debug!("connection closed: still busy after the drain grace");
                return;
            }
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
                drain_deadline = tokio::time::Instant::now() + DRAIN_GRACE;
            }
            () = tokio::time::sleep_until((last_at + idle).into()) => {
                let now_last = started + Duration::from_millis(last.load(Ordering::Relaxed));
                if now_last.elapsed() >= idle {
                    debug!(?idle, "connection closed: idle timeout");
                    return;
                }
            }
        }
    }
}

/// A stream that records when a byte last moved, for the idle timeout.
struct Activity {
    inner: TcpStream,
    started: Instant,
    /// Milliseconds since `started` of the last read or write.
    last: Arc<AtomicU64>,
}

impl Activity {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            started: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Activity {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Activity {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(super::REFUSED).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok(), "{body}");
    }
}
