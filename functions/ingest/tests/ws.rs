//! The WebSocket live updates (`GET /v1/jobs/{id}/ws`, `GET /v1/events/ws`) against a
//! real nats-server and the real server, with a real WebSocket client (tokio-tungstenite).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{creds, start};
use futures::StreamExt;
use jetrun_core::job::Transition;
use jetrun_core::{JobRecord, JobSpec};
use jetrun_ingest::Config;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const ACME: &str = "acme-token-0123456789";
const GLOBEX: &str = "globex-token-0123456789";
const OPS: &str = "ops-token-0123456789";

fn tokens() -> String {
    format!("acme:{ACME},globex:{GLOBEX},*:{OPS}")
}

fn config() -> Config {
    Config {
        rate_per_second: 0.0,
        ..Config::default()
    }
}

type Client = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// How a socket ended, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
enum Closed {
    Frame(u16, String),
    Abrupt,
}

struct Ws {
    ws: Client,
    pings: usize,
    closed: Option<Closed>,
}

/// Opens a socket; `rcvbuf` sets a small receive buffer (a slow client's).
async fn open(
    base: &str,
    path: &str,
    token: Option<&str>,
    last: Option<u64>,
    rcvbuf: Option<u32>,
) -> Result<Ws, WsError> {
    let addr = base.trim_start_matches("http://");
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    if let Some(l) = last {
        req.headers_mut()
            .insert("last-event-id", l.to_string().parse().unwrap());
    }
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).unwrap();
    }
    let tcp = sock.connect(addr.parse().unwrap()).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await?;
    assert_eq!(resp.status(), 101);
    Ok(Ws {
        ws,
        pings: 0,
        closed: None,
    })
}

async fn connect(base: &str, path: &str, token: &str, last: Option<u64>) -> Ws {
    open(base, path, Some(token), last, None).await.unwrap()
}

/// The HTTP status a refused handshake got.
async fn refused(base: &str, path: &str, token: Option<&str>) -> u16 {
    match open(base, path, token, None, None).await {
        Err(WsError::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("{path}: {e}"),
        Ok(_) => panic!("{path}: upgraded"),
    }
}

impl Ws {
    /// The next event (a CloudEvent), or `None` when the socket closed or `wait` passed.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.closed.is_some() {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Ping(_)))) => self.pings += 1,
                Ok(Some(Ok(Message::Close(f)))) => {
                    self.closed = Some(match f {
                        Some(f) => Closed::Frame(f.code.into(), f.reason.to_string()),
                        None => Closed::Frame(1005, String::new()),
                    });
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => self.closed = Some(Closed::Abrupt),
            }
        }
    }

    /// Reads until the socket closes (at most `wait`), returning the events.
    async fn drain(&mut self, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while self.closed.is_none() && tokio::time::Instant::now() < deadline {
            if let Some(e) = self.next(deadline - tokio::time::Instant::now()).await {
                out.push(e);
            }
        }
        out
    }
}

fn seq(e: &Value) -> u64 {
    e["streamseq"].as_str().unwrap().parse().unwrap()
}
fn to(e: &Value) -> &str {
    e["data"]["to"].as_str().unwrap()
}
fn tenant(e: &Value) -> Option<&str> {
    e["data"]["record"]["spec"]["tenant"].as_str()
}

async fn admit(env: &common::Env, tenant: Option<&str>, args: Vec<String>) -> JobRecord {
    let mut spec = JobSpec::new("default", "busybox", args);
    spec.tenant = tenant.map(str::to_string);
    let rec = JobRecord::new(uuid::Uuid::now_v7().to_string(), spec, None, None);
    env.ingest.ctx.store.admit(rec).await.unwrap().record().clone()
}

async fn step(env: &common::Env, id: &str, t: Transition) {
    env.ingest.ctx.store.transition(id, &t).await.unwrap();
}

fn claim() -> Transition {
    Transition::Claim {
        worker_id: "w".into(),
        node_id: "n".into(),
    }
}

fn started() -> Transition {
    Transition::Started {
        task_ref: "process:x".into(),
    }
}

#[tokio::test]
async fn a_client_sees_a_jobs_changes_live_and_resumes_after_an_id() {
    let env = start(config(), creds(&tokens())).await;
    let rec = admit(&env, Some("acme"), vec!["true".into()]).await;
    let path = format!("/v1/jobs/{}/ws", rec.id);
    let mut job = connect(&env.base, &path, ACME, None).await;
    let first = job.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(to(&first), "queued");
    assert_eq!(first["specversion"], "1.0");
    assert_eq!(first["type"], "dev.jetrun.job.state_changed.v1");
    assert_eq!(first["subject"], rec.id.as_str());
    // The tenant socket from after the admission, resumed through the query parameter.
    let mut all = connect(
        &env.base,
        &format!("/v1/events/ws?queue=default&last_event_id={}", seq(&first)),
        ACME,
        None,
    )
    .await;
    step(&env, &rec.id, claim()).await;
    let second = job.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(to(&second), "launching", "live, without asking");
    // The client goes away mid-job; the job goes on to the end.
    drop(job);
    step(&env, &rec.id, started()).await;
    step(&env, &rec.id, Transition::Exited { exit_code: 0 }).await;
    let mut job = connect(&env.base, &path, ACME, Some(seq(&second))).await;
    let rest = job.drain(Duration::from_secs(5)).await;
    assert_eq!(
        rest.iter().map(to).collect::<Vec<_>>(),
        ["running", "succeeded"],
        "every later change exactly once, then the socket closes"
    );
    assert!(rest.iter().all(|e| seq(e) > seq(&second)));
    assert_eq!(job.closed, Some(Closed::Frame(1000, "job finished".into())));
    // After the terminal change there is nothing left: closed at once, normally.
    let mut again = connect(&env.base, &path, ACME, Some(seq(rest.last().unwrap()))).await;
    assert!(again.drain(Duration::from_secs(5)).await.is_empty());
    assert!(
        matches!(again.closed, Some(Closed::Frame(1000, _))),
        "{:?}",
        again.closed
    );
    // The tenant socket saw the same three changes live.
    let mut live = Vec::new();
    while live.len() < 3 {
        live.push(all.next(Duration::from_secs(5)).await.expect("a live change"));
    }
    assert_eq!(
        live.iter().map(to).collect::<Vec<_>>(),
        ["launching", "running", "succeeded"]
    );
    assert!(
        all.next(Duration::from_millis(300)).await.is_none(),
        "nothing twice"
    );
    // Closing from the client frees the tenant's stream slot.
    all.ws.close(None).await.unwrap();
    drop((job, again));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while refused_slots(&env).await > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused_slots(&env).await, 0, "every slot is free again");
}

/// Streams acme holds open, counted by the server (SSE and WebSocket together): every
/// one of the bound can be opened again.
async fn refused_slots(env: &common::Env) -> usize {
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..jetrun_ingest::sse::DEFAULT_STREAMS_PER_TENANT {
        match open(&env.base, "/v1/events/ws", Some(ACME), None, None).await {
            Ok(w) => held.push(w),
            Err(_) => refused += 1,
        }
    }
    refused
}

/// Every event until none came for 2 s.
async fn collect(w: &mut Ws) -> Vec<Value> {
    let mut v = Vec::new();
    while let Some(e) = w.next(Duration::from_secs(2)).await {
        v.push(e);
    }
    v
}

#[tokio::test]
async fn a_tenants_socket_never_carries_another_tenants_job() {
    let env = start(config(), creds(&tokens())).await;
    let mut acme = connect(&env.base, "/v1/events/ws", ACME, None).await;
    let mut globex = connect(&env.base, "/v1/events/ws", GLOBEX, None).await;
    let mut ops = connect(&env.base, "/v1/events/ws?status=failed", OPS, None).await;
    let mut ids = Vec::new();
    for t in [Some("globex"), None, Some("acme"), Some("globex"), Some("acme")] {
        let r = admit(&env, t, vec!["true".into()]).await;
        step(&env, &r.id, claim()).await;
        step(&env, &r.id, started()).await;
        step(&env, &r.id, Transition::Exited { exit_code: 1 }).await;
        ids.push((t, r.id));
    }
    let (a, g, o) = tokio::join!(collect(&mut acme), collect(&mut globex), collect(&mut ops));
    assert_eq!(a.len(), 8, "two jobs, four changes each");
    assert!(a.iter().all(|e| tenant(e) == Some("acme")));
    assert_eq!(g.len(), 8);
    assert!(g.iter().all(|e| tenant(e) == Some("globex")));
    assert_eq!(
        o.len(),
        5,
        "the operator sees every job; the filter keeps `failed`"
    );
    assert!(o.iter().all(|e| to(e) == "failed"));
    // Another tenant's job is 404 before any upgrade, like the job itself.
    for (t, id) in &ids {
        let path = format!("/v1/jobs/{id}/ws");
        if *t == Some("acme") {
            connect(&env.base, &path, ACME, None).await;
        } else {
            assert_eq!(refused(&env.base, &path, Some(ACME)).await, 404, "{t:?}");
        }
    }
    assert_eq!(refused(&env.base, "/v1/events/ws", None).await, 401);
    assert_eq!(
        refused(&env.base, "/v1/events/ws", Some("nope-0123456789")).await,
        401
    );
    assert_eq!(
        refused(&env.base, "/v1/events/ws?queue=%3E", Some(ACME)).await,
        422
    );
    assert_eq!(
        refused(&env.base, "/v1/events/ws?status=nope", Some(ACME)).await,
        422
    );
    // A plain GET is not a handshake.
    let r = env
        .http
        .get(format!("{}/v1/events/ws", env.base))
        .bearer_auth(ACME)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_slow_client_is_closed_with_a_reason_and_resumes_without_loss() {
    let mut cfg = config();
    cfg.websocket.buffer = 8;
    cfg.websocket.send_timeout = Duration::from_secs(2);
    let env = start(cfg, creds(&tokens())).await;
    // A big job record: every change of it is a ~32 KiB message.
    let rec = admit(&env, Some("acme"), vec!["x".repeat(32 * 1024)]).await;
    let subject = env.ingest.ctx.names.job_event(&rec.queue, &rec.id);
    let stream = env
        .js
        .get_stream(env.ingest.ctx.names.stream_job_events())
        .await
        .unwrap();
    let stored = stream.get_last_raw_message_by_subject(&subject).await.unwrap();
    let start_seq = stored.sequence - 1;
    // A client that reads nothing, with a small receive buffer.
    let mut slow = open(
        &env.base,
        "/v1/events/ws",
        Some(ACME),
        Some(start_seq),
        Some(4096),
    )
    .await
    .unwrap();
    let total = 400u64;
    let mut acks = Vec::new();
    for _ in 1..total {
        acks.push(
            env.js
                .publish(subject.clone(), stored.payload.clone())
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
    // The server gives up on it (its queue of 8 filled, or a send took over 2 s)...
    tokio::time::sleep(Duration::from_secs(3)).await;
    // ...and what the client then reads ends with the reason.
    let got = slow.drain(Duration::from_secs(10)).await;
    let Some(Closed::Frame(code, reason)) = slow.closed.clone() else {
        panic!("closed without a close frame: {:?}", slow.closed);
    };
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.starts_with("slow consumer"), "{reason}");
    assert!(
        (got.len() as u64) < total,
        "cut off before the end: {}",
        got.len()
    );
    // Reconnecting from the last id received, as often as it takes, loses nothing and
    // repeats nothing.
    let mut all = got;
    let mut reconnects = 0;
    while (all.len() as u64) < total && reconnects < 20 {
        reconnects += 1;
        let last = all.last().map_or(start_seq, seq);
        let mut w = connect(&env.base, "/v1/events/ws", ACME, Some(last)).await;
        while let Some(e) = w.next(Duration::from_secs(2)).await {
            all.push(e);
            if all.len() as u64 == total {
                break;
            }
        }
    }
    assert_eq!(all.len() as u64, total, "after {reconnects} reconnects");
    let seqs: Vec<u64> = all.iter().map(seq).collect();
    assert_eq!(seqs.first(), Some(&stored.sequence));
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gap, no repeat"
    );
}

#[tokio::test]
async fn the_server_pings_and_closes_sockets_cleanly_when_it_drains() {
    let mut cfg = config();
    cfg.websocket.ping_interval = Duration::from_millis(200);
    let env = start(cfg, creds(&tokens())).await;
    // A server of its own, to drain.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(jetrun_ingest::serve(
        listener,
        jetrun_ingest::router(env.ingest.clone()),
        shutdown.clone(),
    ));
    let mut w = connect(&base, "/v1/events/ws", OPS, None).await;
    assert!(w.next(Duration::from_secs(1)).await.is_none());
    assert!(w.pings >= 2, "pings: {}", w.pings);
    assert_eq!(w.closed, None, "answering pings keeps the socket open");
    // A client that answers nothing is dropped after the pong timeout... (not waited
    // for here: 45 s by default). Drain: the socket gets 1001 and the server returns.
    let t = std::time::Instant::now();
    shutdown.cancel();
    assert!(w.next(Duration::from_secs(5)).await.is_none());
    let Some(Closed::Frame(code, reason)) = w.closed.clone() else {
        panic!("{:?}", w.closed);
    };
    assert_eq!(code, u16::from(CloseCode::Away));
    assert!(reason.contains("shutting down"), "{reason}");
    let _ = w.ws.close(None).await;
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server returns once the socket closed")
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
}
