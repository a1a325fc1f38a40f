//! The GitHub client's retry policy against a local HTTP server standing in for GitHub
//! (GitHub cannot be reached from a test): a spent primary rate limit waits until
//! `x-ratelimit-reset`, a 5xx is retried, a 404 is not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jetrun_github::{Client, GithubError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers the scripted responses in order (then 404), recording request lines.
async fn server(script: Vec<(u16, String)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let script = Arc::new(Mutex::new(script.into_iter()));
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 65536];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.lock()
                .unwrap()
                .push(req.lines().next().unwrap_or("").to_string());
            let (status, headers) = script.lock().unwrap().next().unwrap_or((404, String::new()));
            let body = if status < 300 {
                r#"{"id": 42}"#
            } else {
                r#"{"message": "x"}"#
            };
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_spent_rate_limit_waits_for_its_reset_and_5xx_is_retried() {
    let reset = chrono::Utc::now().timestamp() + 2;
    let (url, seen) = server(vec![
        (503, String::new()),
        (
            403,
            format!("x-ratelimit-remaining: 0\r\nx-ratelimit-reset: {reset}\r\n"),
        ),
        (201, String::new()),
    ])
    .await;
    let c = Client::new(&url, Some("t0ken".into()), 5, Duration::from_secs(10)).unwrap();
    let t = Instant::now();
    c.react("o/r", 7, "eyes").await.unwrap();
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "waited for the reset: {waited:?}"
    );
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen.iter()
            .all(|l| l == "POST /repos/o/r/issues/comments/7/reactions HTTP/1.1"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_404_is_not_retried_and_attempts_are_bounded() {
    let (url, seen) = server(vec![(404, String::new())]).await;
    let c = Client::new(&url, None, 5, Duration::from_millis(50)).unwrap();
    let e = c.comment("o/r", 1, "hi").await.unwrap_err();
    assert!(matches!(e, GithubError::Refused { status: 404, .. }), "{e}");
    assert!(!e.is_transient());
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (url, seen) = server(vec![(502, String::new()); 10]).await;
    let c = Client::new(&url, None, 3, Duration::from_millis(50)).unwrap();
    let e = c.comment("o/r", 1, "hi").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(seen.lock().unwrap().len(), 3, "three attempts, then given up");
}
