//! The HTTP server's connection limits over raw TCP: idle and slow clients are closed
//! after their timeouts, and connections past the cap are refused at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use jetrun_ingest::{ServerLimits, serve_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

struct Server {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(limits: ServerLimits) -> Server {
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/echo", post(|body: String| async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_with(listener, router, shutdown.clone(), limits));
    Server { addr, shutdown }
}

/// Reads until the peer closes (`Ok(bytes)`), or `None` if it is still open after `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(all),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

async fn get_health(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = read_until_closed(&mut s, Duration::from_secs(5)).await.unwrap();
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_no_headers_are_closed_after_the_header_timeout() {
    let server = start(ServerLimits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        max_connections: 64,
    })
    .await;
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Half of them send part of a request line and stop.
    for s in idle.iter_mut().step_by(2) {
        s.write_all(b"GET /health HT").await.unwrap();
    }
    for s in &mut idle {
        let out = read_until_closed(s, Duration::from_secs(5)).await;
        assert!(out.is_some(), "an idle connection was still open after 5 s");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "closed too early: {took:?}");
    // A kept-alive connection between requests is closed the same way.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let out = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(out.is_some(), "a kept-alive idle connection was never closed");
    assert!(get_health(server.addr).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_then_stalled_is_closed_after_the_idle_timeout() {
    let server = start(ServerLimits {
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(1),
        max_connections: 64,
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let out = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(out.is_some(), "a stalled body held its connection for 5 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A connection that keeps moving bytes is not idle.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 4\r\n\r\n")
        .await
        .unwrap();
    for b in [b"a", b"b", b"c", b"d"] {
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.write_all(b).await.unwrap();
    }
    let out = read_until_closed(&mut s, Duration::from_secs(5)).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("abcd"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_at_once_and_slots_free_up() {
    let server = start(ServerLimits {
        header_read_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        max_connections: 8,
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Let the server accept all eight before the ninth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let mut extra = TcpStream::connect(server.addr).await.unwrap();
        let started = Instant::now();
        let out = read_until_closed(&mut extra, Duration::from_secs(1)).await;
        let out = out.expect("a connection past the limit was kept open");
        assert!(started.elapsed() < Duration::from_secs(1));
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.is_empty() || (text.starts_with("HTTP/1.1 503") && text.contains("connection: close")),
            "{text}"
        );
    }
    // The held ones time out (header timeout), and their slots serve again.
    for s in &mut held {
        assert!(read_until_closed(s, Duration::from_secs(5)).await.is_some());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(get_health(server.addr).await.starts_with("HTTP/1.1 200"));
}

/// An endless response (an event stream that keeps sending heartbeats) does not hold a
/// shutdown for ever: the server returns within its drain grace (10 s) and closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_stream_does_not_hold_a_shutdown_past_the_drain_grace() {
    let endless = || async {
        let ticks = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b": ping\n\n")),
                (),
            ))
        });
        axum::body::Body::from_stream(ticks)
    };
    let router = Router::new().route("/stream", get(endless));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_with(
        listener,
        router,
        shutdown.clone(),
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 16,
        },
    ));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("serve_with returned within the drain grace")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9),
        "the stream had its grace: {took:?}"
    );
    assert!(
        read_until_closed(&mut s, Duration::from_secs(5)).await.is_some(),
        "the stream's connection is closed"
    );
}
