//! The node protocol against a real nats-server: a signed task event carrying a job
//! result verifies as sent and not once its result is altered; a node that does not
//! answer is a timeout, one that answers is decoded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use jetrun_core::Names;
use jetrun_core::schema::types;
use jetrun_core::task::{AttemptKey, SIGNATURE_HEADER, TaskEvent, TaskPhase};
use jetrun_harness::NatsServer;
use jetrun_nats::{EventPublisher, Topology};
use jetrun_node::protocol::{DescribeReply, DescribeRequest, LogsRequest, SERVICE_DESCRIBE};
use jetrun_node::{NodeErrorKind, signing};

fn exited(job_id: &str) -> TaskEvent {
    let mut result = serde_json::Map::new();
    result.insert("first_bad".into(), "abc123".into());
    TaskEvent {
        job_id: job_id.into(),
        attempt: 2,
        phase: TaskPhase::Exited,
        task_ref: "t".into(),
        node_id: "node-a".into(),
        exit_code: Some(0),
        message: None,
        result: Some(result),
        result_error: None,
        at: jetrun_core::now(),
    }
}

#[tokio::test]
async fn a_signed_event_covers_its_result() {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let publisher = EventPublisher::new(js.clone(), "/test/agent");
    let subject = names.task("exited", "j1");
    let mut sub = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let key = AttemptKey::generate();
    let ev = exited("j1");
    jetrun_node::publish_task_event(&publisher, &names, &ev, None, Some(&key))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    let h = m.headers.clone().unwrap();
    let sig = h.get(SIGNATURE_HEADER).map(|v| v.as_str().to_string());
    let got: TaskEvent = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(got.result, ev.result, "the result travels in the event");
    assert_eq!(
        signing::verify(&key, sig.as_deref(), types::TASK_LIFECYCLE, &subject, &m.payload),
        Ok(())
    );
    // The same event with another result: the signature no longer holds.
    let mut forged = got.clone();
    forged
        .result
        .as_mut()
        .unwrap()
        .insert("first_bad".into(), "fff000".into());
    let body = serde_json::to_vec(&forged).unwrap();
    assert_eq!(
        signing::verify(&key, sig.as_deref(), types::TASK_LIFECYCLE, &subject, &body),
        Err(signing::SignatureError::Mismatch)
    );
    // Ids are per attempt and phase, and keyed.
    assert!(h.get("Nats-Msg-Id").unwrap().as_str().starts_with("j1-2.exited."));
}

#[tokio::test]
async fn requests_time_out_or_decode_the_answer() {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let names = Names::default();
    let req = LogsRequest {
        job_id: "j1".into(),
        tail: 10,
        stdout_from: None,
        stderr_from: None,
    };
    // No agent subscribed: NATS answers "no responders" at once, which is unavailable.
    let e = jetrun_node::request_logs(&client, &names, "gone", &req, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(
        matches!(e.kind, NodeErrorKind::Unavailable | NodeErrorKind::Timeout),
        "{e:?}"
    );

    // A node that answers describe.
    let mut svc = client
        .subscribe(names.node_service("n1", SERVICE_DESCRIBE))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let c = client.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            let r: DescribeRequest = serde_json::from_slice(&m.payload).unwrap();
            let reply = DescribeReply {
                job_id: r.job_id,
                supervised: r.attempt == 3,
                running: false,
            };
            c.publish(m.reply.unwrap(), serde_json::to_vec(&reply).unwrap().into())
                .await
                .unwrap();
        }
    });
    let t = Duration::from_secs(2);
    let d = jetrun_node::request_describe(&client, &names, "n1", "j1", 3, t)
        .await
        .unwrap();
    assert!(d.supervised && d.job_id == "j1");
    let d = jetrun_node::request_describe(&client, &names, "n1", "j1", 2, t)
        .await
        .unwrap();
    assert!(!d.supervised);
    assert!(
        jetrun_node::request_describe(&client, &names, "n2", "j1", 3, Duration::from_millis(200))
            .await
            .is_none()
    );
}
