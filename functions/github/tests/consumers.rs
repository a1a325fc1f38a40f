//! The github function's two consumers go through the host's typed path, against a real
//! nats-server and a local stand-in for the GitHub REST API: a job state change that does
//! not decode is dead-lettered by the host (origin `github-jobs`, kind `schema`, the
//! host's reason) and never answered; a webhook that is not a valid
//! `dev.jetrun.webhook.github.v1` CloudEvent (no headers, another type, a body off its
//! schema) is acknowledged unhandled, never answered and not dead-lettered a second time
//! (route, which reads the same messages, dead-letters what it cannot route). The valid
//! ones next to them are answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use jetrun_core::schema::types;
use jetrun_core::{Envelope, JobRecord, JobSpec, JobStatus, Names};
use jetrun_harness::NatsServer;
use jetrun_nats::Topology;
use jetrun_nats::events::to_header_map;
use jetrun_nats::store::StateChange;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/github-webhooks");

async fn publish(js: &jetstream::Context, subject: &str, env: Option<Envelope>, body: impl Into<Bytes>) {
    let ack = match env {
        Some(e) => {
            js.publish_with_headers(subject.to_string(), to_header_map(&e), body.into())
                .await
        }
        None => js.publish(subject.to_string(), body.into()).await,
    };
    ack.unwrap().await.unwrap();
}

/// Both consumers have acknowledged everything they were given.
async fn all_acked(js: &jetstream::Context, names: &Names) -> bool {
    for (stream, consumer) in [
        (names.stream_webhooks(), jetrun_github::WEBHOOK_CONSUMER),
        (names.stream_job_events(), jetrun_github::JOBS_CONSUMER),
    ] {
        let info = js
            .get_stream(stream)
            .await
            .unwrap()
            .consumer_info(consumer)
            .await
            .unwrap();
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_are_refused_by_the_host_and_never_answered() {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let names = Names::default();
    // What `jetrun init` provisions for the function.
    let mut topo = Topology::new(names.clone());
    topo.extra_buckets.push(jetrun_github::bucket_config(&names));
    topo.extra_consumers.extend(
        jetrun_github::subscriptions(&names)
            .into_iter()
            .map(|s| (s.stream, s.consumer)),
    );
    topo.apply(&js).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        r#"version: 1
rules:
  - name: gh
    match:
      event: issue_comment
      comment: '^/gh-test (?P<what>\w+)$'
    guard:
      allowed_associations: [OWNER, MEMBER]
      command: '^/gh-test\b'
    reply:
      acknowledge: eyes
    job:
      queue: default
      image: host
      command: ["echo", "{{ what }}"]
"#,
    )
    .unwrap();
    let (api, seen) = jetrun_harness::github_standin().unwrap();

    // A drive-by commenter asks for a run: the rule refuses, and the function answers
    // that on the issue, if the webhook reaches it.
    let mut refused: Value = serde_json::from_slice(
        &std::fs::read(format!("{FIXTURES}/issue_comment/created.payload.json")).unwrap(),
    )
    .unwrap();
    refused["comment"]["body"] = "/gh-test now".into();
    refused["comment"]["author_association"] = "NONE".into();
    let repo = refused["repository"]["full_name"].as_str().unwrap().to_string();
    let issue = refused["issue"]["number"].as_u64().unwrap();
    let hook = names.webhook("github", "issue_comment");
    let mut off_schema = refused.clone();
    off_schema["action"] = 7.into();
    // 1. No headers. 2. Another CloudEvent type. 3. The right type, a body off its schema.
    publish(&js, &hook, None, refused.to_string()).await;
    publish(
        &js,
        &hook,
        Some(Envelope::new(types::SCALE_SIGNAL, "/attacker")),
        refused.to_string(),
    )
    .await;
    publish(
        &js,
        &hook,
        Some(Envelope::new(types::GITHUB_WEBHOOK, "/attacker")),
        off_schema.to_string(),
    )
    .await;
    // Job state changes: not JSON, and JSON that is not a state change.
    let broken = names.job_event("default", "j-broken");
    let shapeless = names.job_event("default", "j-shapeless");
    publish(&js, &broken, None, "{\"job_id\": 7").await;
    publish(
        &js,
        &shapeless,
        Some(Envelope::new(types::JOB_STATE_CHANGED, "/attacker")),
        r#"{"job_id": "j-shapeless", "queue": "default"}"#,
    )
    .await;

    let shutdown = CancellationToken::new();
    let ctx = jetrun_host::Context::from_client(client, names.clone())
        .await
        .unwrap();
    let config = jetrun_github::Config {
        rules_file: Some(rules),
        api_url: api,
        public_url: "https://jetrun.example".into(),
        attempts: 3,
        ..Default::default()
    };
    let running = tokio::spawn(jetrun_github::run(ctx, config, shutdown.clone()));

    // The controls, after the invalid ones: a valid webhook and a valid admission of a
    // job that asked for an answer on another issue.
    let delivery = Envelope::new(types::GITHUB_WEBHOOK, "/jetrun/ingest");
    let delivery_id = delivery.id.clone();
    publish(&js, &hook, Some(delivery), refused.to_string()).await;
    let mut spec = JobSpec::new("default", "host", vec!["true".into()]);
    for (k, v) in [
        (jetrun_route::REPLY_LABEL, "github".to_string()),
        ("github.repository", repo.clone()),
        ("github.issue", "4242".to_string()),
        ("jetrun.rule", "gh".to_string()),
    ] {
        spec.labels.insert(k.into(), v);
    }
    let rec = JobRecord::new("j-ok".into(), spec, None, None);
    let change = StateChange {
        job_id: rec.id.clone(),
        queue: rec.queue.clone(),
        from: None,
        to: JobStatus::Queued,
        attempt: 1,
        exit_code: None,
        error: None,
        at: rec.updated_at,
        record: rec,
    };
    publish(
        &js,
        &names.job_event("default", "j-ok"),
        Some(Envelope::new(types::JOB_STATE_CHANGED, "/jetrun/test")),
        serde_json::to_vec(&change).unwrap(),
    )
    .await;

    let refusal_path = format!("/repos/{repo}/issues/{issue}/comments");
    let ack_path = format!("/repos/{repo}/issues/4242/comments");
    let posts = |path: &str| -> Vec<Value> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(m, p, _)| m == "POST" && p == path)
            .map(|(_, _, b)| b.clone())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = !posts(&refusal_path).is_empty()
            && !posts(&ack_path).is_empty()
            && jetrun_nats::dlq::count(&js, &names).await.unwrap() >= 2
            && all_acked(&js, &names).await;
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not everything handled: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The state changes that do not decode: dead-lettered by the host, with its reason.
    let letters = jetrun_nats::dlq::list(&js, &names, 0, 20).await.unwrap();
    let summary: Vec<_> = letters
        .iter()
        .map(|l| (&l.entry.origin, &l.entry.reason_kind, &l.entry.subject))
        .collect();
    assert_eq!(letters.len(), 2, "{summary:?}");
    for (subject, body) in [
        (&broken, &b"{\"job_id\": 7"[..]),
        (
            &shapeless,
            &br#"{"job_id": "j-shapeless", "queue": "default"}"#[..],
        ),
    ] {
        let l = letters
            .iter()
            .map(|l| &l.entry)
            .find(|l| &l.subject == subject)
            .unwrap_or_else(|| panic!("{subject} not dead-lettered: {summary:?}"));
        assert_eq!(l.origin, "github-jobs");
        assert_eq!(l.reason_kind, "schema");
        assert!(
            l.reason
                .contains(&format!("the body on {subject} does not decode")),
            "{}",
            l.reason
        );
        assert_eq!(l.payload().unwrap(), body);
    }

    // Answered once each: the valid webhook's refusal and the valid admission; the three
    // invalid webhooks reached no handler (no answer, no claim) and no dead letter.
    let refusals = posts(&refusal_path);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0]["body"].as_str().unwrap().contains(":no_entry:"),
        "{refusals:?}"
    );
    let acks = posts(&ack_path);
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert!(
        acks[0]["body"].as_str().unwrap().contains(":hourglass:"),
        "{acks:?}"
    );
    let claims = js
        .get_key_value(jetrun_github::bucket_name(&names))
        .await
        .unwrap();
    let mut keys: Vec<String> = claims.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
    keys.sort();
    assert_eq!(
        keys,
        vec!["ack.j-ok".to_string(), format!("refused.{delivery_id}.gh")]
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
