//! A fault-injecting HTTP endpoint in front of moto, for what moto cannot produce:
//! throttling, 5xx (also after the call took effect), `failures[]`. It forwards every
//! request to moto unless a fault is queued for its operation, and records each request
//! (operation from `X-Amz-Target`, JSON body, time). Every test talks to moto through it,
//! because it also fixes one moto answer the SDK cannot parse ([`fix_moto_containers`]).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};

/// What to do with the next request of an operation.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 400 `ThrottlingException`, not forwarded.
    Throttle,
    /// 503 `ServerException`, not forwarded.
    Unavailable,
    /// Forwarded (so it takes effect), then answered 500: the answer is lost.
    FailAfterForward,
    /// 200 with no task and `failures: [{reason}]`, not forwarded.
    Failures(String),
}

/// One request seen.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The operation, e.g. `RunTask`.
    pub op: String,
    /// The JSON body.
    pub body: serde_json::Value,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    faults: HashMap<String, VecDeque<Fault>>,
    always: HashMap<String, Fault>,
    seen: Vec<Seen>,
}

/// The proxy; dropped with its test's runtime.
#[derive(Clone)]
pub struct Proxy {
    state: Arc<Mutex<State>>,
    /// Its endpoint URL.
    pub url: String,
}

impl Proxy {
    /// Starts a proxy in front of `upstream`.
    pub async fn start(upstream: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let upstream = upstream.to_string();
        let http = reqwest::Client::new();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                let upstream = upstream.clone();
                let http = http.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, st.clone(), upstream.clone(), http.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Proxy { state, url }
    }

    /// Queues `fault` for the next request of `op`.
    pub fn push(&self, op: &str, fault: Fault) {
        let mut s = self.state.lock().unwrap();
        s.faults.entry(op.to_string()).or_default().push_back(fault);
    }

    /// Applies `fault` to every request of `op` (until [`Proxy::clear`]).
    pub fn always(&self, op: &str, fault: Fault) {
        self.state.lock().unwrap().always.insert(op.to_string(), fault);
    }

    /// Removes every fault.
    pub fn clear(&self) {
        let mut s = self.state.lock().unwrap();
        s.faults.clear();
        s.always.clear();
    }

    /// The requests of `op` seen so far.
    pub fn seen(&self, op: &str) -> Vec<Seen> {
        self.state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.op == op)
            .cloned()
            .collect()
    }
}

/// moto answers `containers[].cpu` and `.memory` as numbers where the ECS API (and so
/// the SDK's parser) has strings; turn them into strings, change nothing else.
fn fix_moto_containers(body: &Bytes) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.clone();
    };
    let mut tasks: Vec<&mut serde_json::Value> = Vec::new();
    if let Some(obj) = v.as_object_mut() {
        for (k, val) in obj.iter_mut() {
            match (k.as_str(), val) {
                ("tasks", serde_json::Value::Array(ts)) => tasks.extend(ts.iter_mut()),
                ("task", t @ serde_json::Value::Object(_)) => tasks.push(t),
                _ => {}
            }
        }
    }
    {
        for t in tasks {
            if let Some(cs) = t.get_mut("containers").and_then(|c| c.as_array_mut()) {
                for c in cs {
                    for k in ["cpu", "memory"] {
                        if let Some(n) = c.get(k).filter(|n| n.is_number()).map(|n| n.to_string()) {
                            c[k] = serde_json::Value::String(n);
                        }
                    }
                }
            }
        }
    }
    Bytes::from(v.to_string())
}

fn json(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    st: Arc<Mutex<State>>,
    upstream: String,
    http: reqwest::Client,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let op = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_string();
    let fault = {
        let mut s = st.lock().unwrap();
        s.seen.push(Seen {
            op: op.clone(),
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            at: Instant::now(),
        });
        let queued = s.faults.get_mut(&op).and_then(VecDeque::pop_front);
        queued.or_else(|| s.always.get(&op).cloned())
    };
    match fault {
        Some(Fault::Throttle) => {
            return Ok(json(
                400,
                serde_json::json!({"__type": "ThrottlingException", "message": "Rate exceeded"}),
            ));
        }
        Some(Fault::Unavailable) => {
            return Ok(json(
                503,
                serde_json::json!({"__type": "ServerException", "message": "Service unavailable"}),
            ));
        }
        Some(Fault::Failures(reason)) => {
            return Ok(json(
                200,
                serde_json::json!({"tasks": [], "failures": [{"reason": reason}]}),
            ));
        }
        Some(Fault::FailAfterForward) | None => {}
    }
    let mut fwd = http.request(parts.method.clone(), format!("{upstream}{}", parts.uri));
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" {
            fwd = fwd.header(k, v);
        }
    }
    let resp = match fwd.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            return Ok(json(
                502,
                serde_json::json!({"__type": "ServerException", "message": e.to_string()}),
            ));
        }
    };
    if matches!(fault, Some(Fault::FailAfterForward)) {
        return Ok(json(
            500,
            serde_json::json!({"__type": "ServerException", "message": "Internal error (the call took effect)"}),
        ));
    }
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-amz-json-1.1")
        .to_string();
    let mut bytes = resp.bytes().await.unwrap_or_default();
    if status == 200 {
        bytes = fix_moto_containers(&bytes);
    }
    Ok(Response::builder()
        .status(status)
        .header("content-type", ct)
        .body(Full::new(bytes))
        .unwrap())
}
