#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `jetrun-ecs-bridge` binary as Lambda runs it: a local Lambda Runtime API (the
//! documented `/2018-06-01/runtime/invocation/...` protocol) hands it an "ECS Task State
//! Change" event and then a "Scheduled Event"; the binary talks to a real nats-server and
//! to moto (AWS_ENDPOINT_URL) and exports its spans to a local OTLP/HTTP receiver, each
//! invocation's before the next (Lambda freezes the environment between invocations).
//! Built with `--features otel` (the shipped binary's features).

#[path = "../../../crates/runner/tests/support/moto.rs"]
mod moto;
#[path = "../../../crates/runner/tests/support/proxy.rs"]
mod proxy;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use jetrun_core::job::Transition;
use jetrun_core::task::AttemptKey;
use jetrun_core::{JobRecord, JobSpec, Names};
use jetrun_nats::{JobStore, Topology};

#[derive(Default)]
struct Api {
    events: VecDeque<(String, serde_json::Value)>,
    results: Vec<(String, String, serde_json::Value)>,
}

async fn runtime_api(
    req: Request<hyper::body::Incoming>,
    api: Arc<Mutex<Api>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path == "/2018-06-01/runtime/invocation/next" {
        loop {
            let next = api.lock().unwrap().events.pop_front();
            if let Some((id, ev)) = next {
                return Ok(Response::builder()
                    .header("lambda-runtime-aws-request-id", id)
                    .header("lambda-runtime-deadline-ms", "9999999999999")
                    .header(
                        "lambda-runtime-invoked-function-arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:bridge",
                    )
                    .body(Full::new(Bytes::from(ev.to_string())))
                    .unwrap());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // /2018-06-01/runtime/invocation/<id>/response | /error, /runtime/init/error
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (id, kind) = match parts.as_slice() {
        [_, "runtime", "invocation", id, kind] => (id.to_string(), kind.to_string()),
        _ => ("init".into(), path.clone()),
    };
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    api.lock().unwrap().results.push((id, kind, v));
    Ok(Response::builder()
        .status(202)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap())
}

/// A local OTLP/HTTP receiver (JSON protocol): keeps each request's path and body.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |r: Request<hyper::body::Incoming>| {
                    let keep = keep.clone();
                    async move {
                        let path = r.uri().path().to_string();
                        let body = r
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        keep.lock()
                            .unwrap()
                            .push((path, String::from_utf8_lossy(&body).into_owned()));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (url, got)
}

#[tokio::test]
async fn the_lambda_binary_publishes_a_signed_task_event_and_runs_the_reconcile() {
    let nats = jetrun_harness::NatsServer::start().unwrap();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let store = JobStore::open(&js, &names, "/test").await.unwrap();
    let m = moto::start().await;
    let p = proxy::Proxy::start(&m.url).await;
    moto::setup(&moto::client(&p.url)).await;

    // A running attempt on node-x with its key, as dispatch leaves it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let a = store
        .admit(JobRecord::new(
            "job-l".into(),
            JobSpec::new("default", "busybox", vec!["true".into()]),
            Some(format!("00-{trace_id}-00f067aa0ba902b7-01")),
            None,
        ))
        .await
        .unwrap();
    let key = AttemptKey::generate();
    let mut keyed = a.record().clone();
    keyed.attempt_key = Some(key.clone());
    let claim = Transition::Claim {
        worker_id: "w".into(),
        node_id: "node-x".into(),
    };
    let (rec, rev) = store.transition_at(&keyed, a.revision(), &claim).await.unwrap();
    let arn = "arn:aws:ecs:us-east-1:123456789012:task/jobs/0123456789abcdef0123456789abcdef";
    store
        .transition_at(&rec, rev, &Transition::Started { task_ref: arn.into() })
        .await
        .unwrap();

    let api = Arc::new(Mutex::new(Api::default()));
    let event = serde_json::json!({
        "version": "0", "id": "e-1", "detail-type": "ECS Task State Change", "source": "aws.ecs",
        "account": "123456789012", "time": "2026-12-01T12:00:00Z", "region": "us-east-1",
        "resources": [arn],
        "detail": {
            "taskArn": arn, "lastStatus": "STOPPED", "desiredStatus": "STOPPED",
            "startedBy": "job-l", "group": "jetrun", "stopCode": "EssentialContainerExited",
            "stoppedReason": "Essential container in task exited",
            "containers": [{"name": "job", "exitCode": 0, "lastStatus": "STOPPED"}],
            "overrides": {"containerOverrides": [{"name": "job", "environment": [
                {"name": "JETRUN_JOB_ID", "value": "job-l"}, {"name": "JETRUN_ATTEMPT", "value": "1"}
            ]}]}
        }
    });
    let scheduled = serde_json::json!({
        "version": "0", "id": "e-2", "detail-type": "Scheduled Event", "source": "aws.events",
        "time": "2026-12-01T12:01:00Z", "detail": {}
    });
    api.lock().unwrap().events.push_back(("req-1".into(), event));
    api.lock().unwrap().events.push_back(("req-2".into(), scheduled));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    {
        let api = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let api = api.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |r| runtime_api(r, api.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    }

    let (otlp, exported) = otlp_receiver().await;
    let mut sub = client.subscribe(names.task("exited", "job-l")).await.unwrap();
    client.flush().await.unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jetrun-ecs-bridge"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "bridge")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_ENDPOINT_URL", &p.url)
        .env("JETRUN_NATS_URL", nats.url())
        .env("JETRUN_ECS_CLUSTER", "jobs")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        // The batch would wait ten minutes: only the end-of-invocation flush exports.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The task event, signed with the attempt's key, as from the attempt's node.
    let msg = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("the bridge published the task event")
        .unwrap();
    let h = msg.headers.as_ref().unwrap();
    let ce_type = h.get("ce-type").unwrap().as_str().to_string();
    let sig = h
        .get(jetrun_core::task::SIGNATURE_HEADER)
        .map(|v| v.as_str().to_string());
    jetrun_node::signing::verify(&key, sig.as_deref(), &ce_type, msg.subject.as_str(), &msg.payload)
        .expect("signed with the attempt's key");
    let ev: jetrun_core::task::TaskEvent = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!((ev.node_id.as_str(), ev.exit_code), ("node-x", Some(0)));

    // Both invocations answered: the event published, the schedule reconciled.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let results = loop {
        let r = api.lock().unwrap().results.clone();
        if r.len() >= 2 {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "answers so far: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(results[0].0, "req-1");
    assert_eq!(results[0].1, "response", "{results:?}");
    assert_eq!(results[0].2["published"]["phase"], "exited");
    assert_eq!(results[1].0, "req-2");
    assert_eq!(results[1].1, "response", "{results:?}");
    assert_eq!(results[1].2["reconciled"]["seen"], 0);

    // The report's span of the first invocation reached the collector while the process
    // waits for its next invocation (frozen, on Lambda), in the job's trace.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = exported.lock().unwrap().clone();
        if got.iter().any(|(path, body)| {
            path == "/v1/traces" && body.contains(trace_id) && body.contains("report ecs task exited")
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no span of the report in the job's trace exported after the invocation: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
}
