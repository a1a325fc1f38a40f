//! A local stand-in for the GitHub REST API, for tests of what jetrun posts to GitHub.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// What the stand-in saw: `(method, path, JSON body)` of every request, in order.
pub type GithubSeen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

/// Starts the stand-in on a free loopback port and returns its base URL. It records every
/// request; a GET answers 200 `[]`, anything else 201 `{"id": n}` with a new id.
pub fn github_standin() -> std::io::Result<(String, GithubSeen)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", l.local_addr()?);
    let seen: GithubSeen = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for (n, sock) in l.incoming().enumerate() {
            let Ok(mut sock) = sock else { return };
            let mut buf = Vec::new();
            let mut tmp = [0u8; 8192];
            let (head, mut body) = loop {
                let k = sock.read(&mut tmp).unwrap_or(0);
                if k == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&tmp[..k]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break (
                        String::from_utf8_lossy(&buf[..i]).to_string(),
                        buf[i + 4..].to_vec(),
                    );
                }
            };
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while body.len() < len {
                let k = sock.read(&mut tmp).unwrap_or(0);
                if k == 0 {
                    break;
                }
                body.extend_from_slice(&tmp[..k]);
            }
            let mut first = head.lines().next().unwrap_or("").split_whitespace();
            let method = first.next().unwrap_or("").to_string();
            let path = first.next().unwrap_or("").to_string();
            let (status, answer) = if method == "GET" {
                (200, "[]".to_string())
            } else {
                (201, format!("{{\"id\":{}}}", 7000 + n))
            };
            if let Ok(mut g) = s.lock() {
                g.push((method, path, serde_json::from_slice(&body).unwrap_or_default()));
            }
            let _ = write!(
                sock,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    Ok((url, seen))
}
