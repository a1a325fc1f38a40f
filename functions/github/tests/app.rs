//! GitHub App authentication against a local stand-in for the REST API: the JWT is RS256
//! and verifies with the App key's public half (generated here with `openssl`), the
//! installation token is exchanged once and reused until five minutes before it expires,
//! and REST calls carry it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetrun_github::{AppAuth, Client};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
struct Req {
    line: String,
    authorization: String,
}

/// The stand-in: `POST /app/installations/<id>/access_tokens` answers a token
/// `ghs_<id>_<n>` valid for `valid_for`, `GET /repos/o/r/installation` installation 99,
/// every other call 201 `{"id": 1}`.
async fn standin(valid_for: chrono::TimeDelta) -> (String, Arc<Mutex<Vec<Req>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        let minted = Arc::new(Mutex::new(0u32));
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            let (s, minted) = (s.clone(), minted.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                let head = loop {
                    let n = sock.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break String::from_utf8_lossy(&buf[..i]).to_string();
                    }
                };
                let line = head.lines().next().unwrap_or("").to_string();
                let authorization = head
                    .lines()
                    .find_map(|h| {
                        let (k, v) = h.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                s.lock().unwrap().push(Req {
                    line: line.clone(),
                    authorization,
                });
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                let (status, body) = if let Some(rest) = path.strip_prefix("/app/installations/") {
                    let id = rest.split('/').next().unwrap_or("");
                    let n = {
                        let mut m = minted.lock().unwrap();
                        *m += 1;
                        *m
                    };
                    let exp = chrono::Utc::now() + valid_for;
                    (
                        201,
                        json!({"token": format!("ghs_{id}_{n}"), "expires_at": exp.to_rfc3339()}),
                    )
                } else if path.ends_with("/installation") {
                    (200, json!({"id": 99}))
                } else {
                    (201, json!({"id": 1}))
                };
                let data = body.to_string();
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{data}",
                    data.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, seen)
}

/// A fresh RSA key pair: (private PEM in PKCS#1, as GitHub hands it out; public PEM).
fn keypair(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let key = dir.join("app.pem");
    let pubkey = dir.join("app.pub.pem");
    let ok = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .expect("openssl is needed to make a test key");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    let ok = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&pubkey)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    (key, std::fs::read(&pubkey).unwrap())
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    iat: i64,
    exp: i64,
    iss: String,
}

fn verify(jwt: &str, public: &[u8]) -> Claims {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_issuer(&["4242"]);
    v.set_required_spec_claims(&["exp", "iat", "iss"]);
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(public).unwrap();
    jsonwebtoken::decode::<Claims>(jwt, &key, &v)
        .expect("the JWT verifies with the App's public key")
        .claims
}

#[tokio::test]
async fn the_app_jwt_is_rs256_and_the_installation_token_is_minted_once() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path());
    let (url, seen) = standin(chrono::TimeDelta::hours(1)).await;
    let app = Arc::new(AppAuth::from_key_file(4242, &key, &url).unwrap());

    // The JWT itself: RS256, the App id as issuer, issued 60 s ago, at most 10 min long.
    let now = chrono::Utc::now().timestamp();
    let header = jsonwebtoken::decode_header(&app.jwt().unwrap()).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let c = verify(&app.jwt().unwrap(), &public);
    assert_eq!(c.iss, "4242");
    assert!((now - 62..=now - 58).contains(&c.iat), "iat {} now {now}", c.iat);
    assert!(c.exp > now && c.exp - c.iat <= 600, "{c:?}");
    // A JWT signed by another key does not verify with this public key.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, other_public) = keypair(&other);
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_required_spec_claims(&["exp"]);
    assert!(
        jsonwebtoken::decode::<Claims>(
            &app.jwt().unwrap(),
            &jsonwebtoken::DecodingKey::from_rsa_pem(&other_public).unwrap(),
            &v
        )
        .is_err()
    );

    // REST calls for installation 77, several at once: one exchange, every call with it.
    let client = Client::with_app(app.clone(), 3, Duration::from_secs(1))
        .unwrap()
        .for_installation(Some(77));
    let (a, b, c2) = tokio::join!(
        client.react("o/r", 1, "eyes"),
        client.comment("o/r", 2, "hello"),
        client.react("o/r", 3, "rocket"),
    );
    a.unwrap();
    b.unwrap();
    c2.unwrap();
    client.comment("o/r", 2, "again").await.unwrap();
    let reqs = seen.lock().unwrap().clone();
    let exchanges: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.line.contains("/access_tokens"))
        .collect();
    assert_eq!(exchanges.len(), 1, "one token for four calls: {reqs:#?}");
    assert!(
        exchanges[0]
            .line
            .starts_with("POST /app/installations/77/access_tokens ")
    );
    let jwt = exchanges[0].authorization.strip_prefix("Bearer ").unwrap();
    assert_eq!(verify(jwt, &public).iss, "4242");
    let rest: Vec<&Req> = reqs.iter().filter(|r| r.line.contains("/repos/o/r/")).collect();
    assert_eq!(rest.len(), 4, "{reqs:#?}");
    for r in rest {
        assert_eq!(r.authorization, "Bearer ghs_77_1", "{r:?}");
    }

    // Without an installation from the webhook: the App's installation on the repository.
    let plain = Client::with_app(app, 3, Duration::from_secs(1)).unwrap();
    plain.comment("o/r", 5, "x").await.unwrap();
    plain.comment("o/r", 6, "y").await.unwrap();
    let reqs = seen.lock().unwrap().clone();
    let lookups = reqs
        .iter()
        .filter(|r| r.line.starts_with("GET /repos/o/r/installation "))
        .count();
    assert_eq!(lookups, 1, "the installation is remembered: {reqs:#?}");
    assert_eq!(
        reqs.iter()
            .filter(|r| r.line.starts_with("POST /app/installations/99/access_tokens "))
            .count(),
        1
    );
    let last = reqs.last().unwrap();
    assert!(
        last.line.starts_with("POST /repos/o/r/issues/6/comments "),
        "{last:?}"
    );
    assert_eq!(last.authorization, "Bearer ghs_99_2");
}

#[tokio::test]
async fn a_token_expiring_within_five_minutes_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keypair(dir.path());
    let (url, seen) = standin(chrono::TimeDelta::minutes(4)).await;
    let app = AppAuth::from_key_file(4242, &key, &url).unwrap();
    assert_eq!(app.installation_token(5).await.unwrap(), "ghs_5_1");
    assert_eq!(app.installation_token(5).await.unwrap(), "ghs_5_2");
    let n = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.line.contains("/access_tokens"))
        .count();
    assert_eq!(n, 2);
}

#[test]
fn a_key_that_is_not_rsa_pem_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.pem");
    std::fs::write(
        &p,
        "-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = AppAuth::from_key_file(1, &p, "http://127.0.0.1:1").unwrap_err();
    assert!(e.to_string().contains("not an RSA private key"), "{e}");
    let e = AppAuth::from_key_file(1, &dir.path().join("missing.pem"), "http://x").unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
}
