//! `jetrun dev`'s HTTP endpoint keeps the connection limits set by its flags: idle
//! connections are closed after `--http-header-timeout`, connections past
//! `--http-max-connections` are refused at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Reads until the peer closes; `None` if still open after `within`.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(all),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(all),
        }
    }
}

#[test]
fn dev_closes_idle_connections_and_refuses_past_the_connection_limit() {
    let dev = start_dev(&["--http-header-timeout", "1s", "--http-max-connections", "4"]);
    let addr = dev.http.trim_start_matches("http://").to_string();
    let mut held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(&addr).unwrap();
    let out = read_until_closed(&mut extra, Duration::from_millis(900))
        .expect("a fifth connection was kept open past the limit of 4");
    let text = String::from_utf8_lossy(&out);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 503"), "{text}");
    let started = Instant::now();
    for s in &mut held {
        assert!(
            read_until_closed(s, Duration::from_secs(5)).is_some(),
            "an idle connection outlived the 1 s header timeout by 4 s"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(100));
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let out = read_until_closed(&mut s, Duration::from_secs(5)).unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}
