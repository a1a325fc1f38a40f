//! The GitHub webhook endpoint over real HTTP against a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use jetrun_core::Names;
use jetrun_ingest::{Config, Credentials, SetupErrorKind};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn header(m: &async_nats::jetstream::message::StreamMessage, name: &str) -> Option<String> {
    m.headers.get(name).map(|v| v.as_str().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_is_published_on_its_subject_with_cloudevent_headers() {
    let env = start(Config::default(), creds("")).await;
    let stream = env
        .js
        .get_stream(Names::default().stream_webhooks())
        .await
        .unwrap();
    let all = fixtures();
    assert!(all.len() > 250, "fixtures found: {}", all.len());
    let mut published = 0;
    for (event, file, body) in &all {
        let id = delivery();
        let resp = env.deliver(event, &id, body.clone()).await;
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.unwrap();
        if event == "ping" {
            assert_eq!(status, 200, "{event}/{file}: {answer}");
            assert_eq!(answer["status"], "pong");
            continue;
        }
        assert_eq!(status, 202, "{event}/{file}: {answer}");
        assert_eq!(answer["status"], "accepted");
        let seq = answer["seq"].as_u64().unwrap();
        let m = stream.get_raw_message(seq).await.unwrap();
        let subject = format!("jetrun.webhook.github.{event}");
        assert_eq!(m.subject.as_str(), subject, "{event}/{file}");
        assert_eq!(
            &m.payload[..],
            &body[..],
            "{event}/{file}: body must be the raw bytes"
        );
        assert_eq!(header(&m, "ce-id").as_deref(), Some(id.as_str()));
        assert_eq!(header(&m, "Nats-Msg-Id").as_deref(), Some(id.as_str()));
        assert_eq!(
            header(&m, "ce-type").as_deref(),
            Some("dev.jetrun.webhook.github.v1")
        );
        assert_eq!(header(&m, "ce-specversion").as_deref(), Some("1.0"));
        assert_eq!(header(&m, "content-type").as_deref(), Some("application/json"));
        assert_eq!(header(&m, "ce-githubevent").as_deref(), Some(event.as_str()));
        assert!(header(&m, "ce-source").is_some() && header(&m, "ce-time").is_some());
        assert!(header(&m, "traceparent").is_some());
        let payload: Value = serde_json::from_slice(body).unwrap();
        if let Some(repo) = payload.pointer("/repository/full_name").and_then(Value::as_str) {
            assert_eq!(header(&m, "ce-subject").as_deref(), Some(repo), "{event}/{file}");
        }
        if let Some(action) = payload.get("action").and_then(Value::as_str) {
            assert_eq!(header(&m, "ce-githubaction").as_deref(), Some(action));
        }
        published += 1;
    }
    assert_eq!(env.webhook_messages().await, published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_malformed_and_wrong_signatures_are_401_and_nothing_is_published() {
    let env = start(Config::default(), creds("")).await;
    let body = fixture("push", "payload.json");
    let good = jetrun_ingest::auth::sign(SECRET.as_bytes(), &body);
    let wrong = jetrun_ingest::auth::sign(b"not-the-secret", &body);
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing-signature"),
        (Some("sha256=xyz".into()), "malformed-signature"),
        (Some(good.replace("sha256=", "sha1=")), "malformed-signature"),
        (Some(format!("{good}00")), "malformed-signature"),
        (Some(String::new()), "malformed-signature"),
        (Some(wrong), "invalid-signature"),
        // A valid signature of other bytes: the HMAC covers the raw body.
        (
            Some(jetrun_ingest::auth::sign(SECRET.as_bytes(), b"{}")),
            "invalid-signature",
        ),
    ];
    for (sig, kind) in cases {
        let mut req = env
            .http
            .post(format!("{}/webhooks/github", env.base))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", delivery())
            .body(body.clone());
        if let Some(s) = &sig {
            req = req.header("X-Hub-Signature-256", s);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{sig:?}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let p: Value = resp.json().await.unwrap();
        assert_eq!(
            p["type"],
            format!("https://jetrun.dev/problems/{kind}"),
            "{sig:?}"
        );
        assert_eq!(p["status"], 401);
    }
    assert_eq!(env.webhook_messages().await, 0);
    // The other secret of a rotation is accepted too.
    let resp = env
        .http
        .post(format!("{}/webhooks/github", env.base))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery())
        .header(
            "X-Hub-Signature-256",
            jetrun_ingest::auth::sign(b"old-rotated-secret", &body),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(env.webhook_messages().await, 1);
}

async fn raw_request(base: &str, head: String, body: &[u8]) -> String {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before taking everything: a failed write is fine.
    let _ = s.write_all(body).await;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Ok(Err(_)) => break,
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413_without_being_read() {
    let cfg = Config {
        max_body_bytes: 64 * 1024,
        ..Config::default()
    };
    let env = start(cfg, creds("")).await;
    // Declared 100 MB and never sent: refused on Content-Length alone.
    let head = format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {}\r\n\
         X-Hub-Signature-256: sha256={}\r\nContent-Length: 100000000\r\n\r\n",
        delivery(),
        "0".repeat(64)
    );
    let started = Instant::now();
    let answer = raw_request(&env.base, head, b"").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Chunked, no length: the streaming read stops at the bound.
    let head = format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {}\r\n\
         X-Hub-Signature-256: sha256={}\r\nTransfer-Encoding: chunked\r\n\r\n",
        delivery(),
        "0".repeat(64)
    );
    let chunk = vec![b'a'; 16 * 1024];
    let mut body = Vec::new();
    for _ in 0..8 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    let answer = raw_request(&env.base, head, &body).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Just under the bound is read (and then refused for its signature, not its size).
    let resp = env
        .http
        .post(format!("{}/webhooks/github", env.base))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery())
        .body(vec![b' '; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(env.webhook_messages().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_behind_a_valid_signature_is_400() {
    let env = start(Config::default(), creds("")).await;
    for body in [
        &b"{\"action\": "[..],
        b"not json",
        b"",
        b"[1,2]",
        b"{\"action\": 5}",
    ] {
        let resp = env.deliver("push", &delivery(), body.to_vec()).await;
        let code = resp.status().as_u16();
        let p: Value = resp.json().await.unwrap();
        assert!(code == 400 || code == 422, "{body:?}: {code} {p}");
        assert!(
            p["type"] == "https://jetrun.dev/problems/invalid-json"
                || p["type"] == "https://jetrun.dev/problems/validation-failed",
            "{p}"
        );
    }
    let resp = env.deliver("push", &delivery(), b"{oops".to_vec()).await;
    assert_eq!(resp.status().as_u16(), 400);
    // Headers GitHub always sends, missing or malformed.
    let body = fixture("push", "payload.json");
    let resp = env.deliver("push", "not a delivery id!", body.clone()).await;
    assert_eq!(resp.status().as_u16(), 400);
    let resp = env.deliver("push.evil", &delivery(), body).await;
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(env.webhook_messages().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_disallowed_events_are_answered_and_not_published() {
    let cfg = Config {
        github_events: vec!["push".into(), "issue_comment".into()],
        ..Config::default()
    };
    let env = start(cfg, creds("")).await;
    let resp = env
        .deliver("issues", &delivery(), fixture("issues", "opened.payload.json"))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let a: Value = resp.json().await.unwrap();
    assert_eq!(a["status"], "ignored");
    assert!(a["reason"].as_str().unwrap().contains("allow-list"));
    let resp = env
        .deliver("ping", &delivery(), fixture("ping", "payload.json"))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(env.webhook_messages().await, 0);
    let resp = env
        .deliver("push", &delivery(), fixture("push", "payload.json"))
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(env.webhook_messages().await, 1);

    let env = start(Config::default(), creds("")).await;
    let resp = env.deliver("made_up_event", &delivery(), b"{}".to_vec()).await;
    assert_eq!(resp.status().as_u16(), 200);
    let a: Value = resp.json().await.unwrap();
    assert_eq!(a["status"], "ignored");
    assert_eq!(a["reason"], "unknown event");
    assert_eq!(env.webhook_messages().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_redeliveries_store_exactly_one_message() {
    let env = std::sync::Arc::new(start(Config::default(), creds("")).await);
    let id = delivery();
    let body = fixture("issue_comment", "created.payload.json");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (env, id, body) = (env.clone(), id.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = env.deliver("issue_comment", &id, body).await;
            let code = r.status().as_u16();
            let a: Value = r.json().await.unwrap();
            (code, a["status"].as_str().unwrap_or_default().to_string())
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        let (code, status) = t.await.unwrap();
        assert!(code == 202 || code == 200, "{code} {status}");
        match status.as_str() {
            "accepted" => accepted += 1,
            "duplicate" => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        accepted, 1,
        "exactly one delivery is accepted, the rest are duplicates"
    );
    assert_eq!(env.webhook_messages().await, 1);
    // Much later (past JetStream's window, in real life) the dedupe key still answers.
    let r = env.deliver("issue_comment", &id, body).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "duplicate");
    let kv = env
        .js
        .get_key_value(Names::default().bucket_dedupe())
        .await
        .unwrap();
    // The key is written right after the ack, without holding up the answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    while kv.get(format!("github.{id}")).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "dedupe key never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_down_is_503_and_after_restart_nothing_is_lost() {
    let cfg = Config {
        publish_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let mut env = start(cfg, creds("")).await;
    let body = fixture("push", "payload.json");
    let mut accepted = Vec::new();
    for _ in 0..5 {
        let id = delivery();
        assert_eq!(
            env.deliver("push", &id, body.clone()).await.status().as_u16(),
            202
        );
        accepted.push(id);
    }
    env.server.stop();
    let failed = delivery();
    let resp = env.deliver("push", &failed, body.clone()).await;
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let p: Value = resp.json().await.unwrap();
    assert_eq!(p["type"], "https://jetrun.dev/problems/unavailable");
    let ready = env.http.get(format!("{}/ready", env.base)).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);

    env.server.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = env.http.get(format!("{}/ready", env.base)).send().await.unwrap();
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not ready again after restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // GitHub redelivers the failed one; it is accepted now: stored (202), or found
    // already stored (200 "duplicate") when the publish that timed out during the outage
    // was sent by the client once it reconnected. Either way it is stored exactly once.
    let resp = env.deliver("push", &failed, body.clone()).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert!(
        status == 202 || (status == 200 && text.contains("duplicate")),
        "{status} {text}"
    );
    accepted.push(failed);
    let stream = env
        .js
        .get_stream(Names::default().stream_webhooks())
        .await
        .unwrap();
    let mut ids = Vec::new();
    let info = {
        let mut s = stream.clone();
        s.info().await.unwrap().state.clone()
    };
    for seq in info.first_sequence..=info.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            ids.push(header(&m, "ce-id").unwrap());
        }
    }
    ids.sort();
    accepted.sort();
    assert_eq!(ids, accepted, "every acknowledged delivery is stored, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_the_endpoint_refuses_to_start_unless_insecure_dev() {
    let server = jetrun_harness::NatsServer::start().unwrap();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    jetrun_nats::Topology::new(Names::default())
        .apply(&js)
        .await
        .unwrap();
    let ctx = jetrun_host::Context::from_client(client, Names::default())
        .await
        .unwrap();
    let err = jetrun_ingest::Ingest::new(ctx.clone(), Config::default(), Credentials::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind, SetupErrorKind::NoSecret);
    let cfg = Config {
        insecure_dev: true,
        ..Config::default()
    };
    assert!(
        jetrun_ingest::Ingest::new(ctx, cfg, Credentials::default())
            .await
            .is_ok()
    );
}
