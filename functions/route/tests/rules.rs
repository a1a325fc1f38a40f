//! Rules files: the bisect example, refusals with line numbers, and route end to end
//! against a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use jetrun_core::{Envelope, Names};
use jetrun_harness::NatsServer;
use jetrun_nats::Topology;
use jetrun_route::{Rules, RulesErrorKind};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const BISECT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/rules/bisect.yaml");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/github-webhooks");

fn comment_payload(body: &str) -> Value {
    let mut p: Value = serde_json::from_slice(
        &std::fs::read(format!("{FIXTURES}/issue_comment/created.payload.json")).unwrap(),
    )
    .unwrap();
    p["comment"]["body"] = Value::String(body.into());
    p
}

#[test]
fn the_bisect_rule_turns_a_comment_into_a_job_with_its_captures() {
    let rules = Rules::load(Path::new(BISECT)).unwrap();
    let p = comment_payload("/bisect v1.2.0 4f2a9c1");
    let matched = rules.evaluate("issue_comment", &p, "d-1");
    assert_eq!(matched.len(), 1);
    assert_eq!(matched[0].rule, "bisect");
    let spec = matched[0].job.clone().unwrap();
    assert_eq!(spec.queue, "bisect");
    assert_eq!(spec.env["GOOD"], "v1.2.0");
    assert_eq!(spec.env["BAD"], "4f2a9c1");
    assert_eq!(spec.env["REPO"], "Codertocat/Hello-World");
    assert_eq!(spec.env["ISSUE"], p["issue"]["number"].to_string());
    assert_eq!(spec.timeout_seconds, Some(1800));
    // Other comments, actions and events do not match.
    assert!(
        rules
            .evaluate("issue_comment", &comment_payload("looks good"), "d")
            .is_empty()
    );
    let mut deleted = comment_payload("/bisect a b");
    deleted["action"] = "deleted".into();
    assert!(rules.evaluate("issue_comment", &deleted, "d").is_empty());
    assert!(
        rules
            .evaluate("issues", &comment_payload("/bisect a b"), "d")
            .is_empty()
    );
}

#[test]
fn match_on_branch_repository_and_labels() {
    let yaml = r#"
rules:
  - name: main
    match: { event: push, branch: main, repository: "Codertocat/*" }
    job: { queue: ci, image: busybox, command: ["{{ branch }}", "{{ ref }}"] }
  - name: labelled
    match: { event: issue_comment, labels: [bug], comment: "^/retry$" }
    job: { queue: ci, image: busybox }
  - name: other-labels
    match: { event: issue_comment, labels: [bug, wontfix] }
    job: { queue: ci, image: busybox }
"#;
    let rules = Rules::parse(yaml, Path::new("inline.yaml")).unwrap();
    let push: Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/push/payload.json")).unwrap()).unwrap();
    let branch = push["ref"]
        .as_str()
        .unwrap()
        .trim_start_matches("refs/heads/")
        .to_string();
    let m = rules.evaluate("push", &push, "d");
    assert_eq!(m.len(), usize::from(branch == "main"), "fixture branch {branch}");
    let mut on_main = push.clone();
    on_main["ref"] = "refs/heads/main".into();
    let m = rules.evaluate("push", &on_main, "d");
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].job.as_ref().unwrap().command,
        vec!["main", "refs/heads/main"]
    );
    let mut elsewhere = on_main.clone();
    elsewhere["repository"]["full_name"] = "someone/else".into();
    assert!(rules.evaluate("push", &elsewhere, "d").is_empty());
    let m = rules.evaluate("issue_comment", &comment_payload("/retry"), "d");
    assert_eq!(
        m.iter().map(|m| m.rule.as_str()).collect::<Vec<_>>(),
        vec!["labelled"]
    );
}

#[test]
fn a_missing_template_value_is_reported_not_submitted_empty() {
    let yaml = "rules:\n  - name: r\n    match: {event: push}\n    job: {queue: q, image: x, command: ['{{ payload.nope }}']}\n";
    let rules = Rules::parse(yaml, Path::new("r.yaml")).unwrap();
    let m = rules.evaluate("push", &serde_json::json!({"ref": "refs/heads/x"}), "d");
    assert!(m[0].job.as_ref().unwrap_err().contains("payload.nope"));
}

#[test]
fn bad_rules_files_are_refused_with_file_line_and_reason() {
    let cases: &[(&str, RulesErrorKind, usize)] = &[
        // YAML syntax
        ("rules:\n  - name: a\n    match: [\n", RulesErrorKind::Syntax, 4),
        // unknown key inside a rule's match (line of the rule's match block)
        (
            "version: 1\nrules:\n  - name: a\n    match:\n      event: push\n      colour: red\n    job: {queue: q, image: x}\n",
            RulesErrorKind::Schema,
            4,
        ),
        // missing job
        (
            "rules:\n  - name: ok\n    match: {event: push}\n    job: {queue: q, image: x}\n  - name: b\n    match: {event: push}\n",
            RulesErrorKind::Schema,
            5,
        ),
        // bad name
        (
            "rules:\n  - name: ok\n    match: {event: push}\n    job: {queue: q, image: x}\n  - name: 'has space'\n    match: {event: push}\n    job: {queue: q, image: x}\n",
            RulesErrorKind::Schema,
            5,
        ),
        // regex that does not compile
        (
            "rules:\n  - name: a\n    match:\n      event: issue_comment\n      comment: '^/bisect (?P<good>'\n    job: {queue: q, image: x}\n",
            RulesErrorKind::Regex,
            5,
        ),
        // template that does not parse
        (
            "rules:\n  - name: a\n    match:\n      event: push\n    job:\n      queue: q\n      image: '{{ oops'\n",
            RulesErrorKind::Template,
            7,
        ),
        // a misspelt job field is refused at load, not when an event arrives
        (
            "rules:\n  - name: a\n    match:\n      event: push\n    job:\n      queue: q\n      image: x\n      comand: [a]\n",
            RulesErrorKind::Schema,
            5,
        ),
        // duplicate name
        (
            "rules:\n  - name: a\n    match: {event: push}\n    job: {queue: q, image: x}\n  - name: a\n    match: {event: push}\n    job: {queue: q, image: x}\n",
            RulesErrorKind::DuplicateName,
            5,
        ),
    ];
    for (text, kind, line) in cases {
        let e = Rules::parse(text, Path::new("rules/bad.yaml")).unwrap_err();
        assert_eq!(e.kind, *kind, "{text}\n{e}");
        assert_eq!(e.line, Some(*line), "{text}\n{e}");
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("rules/bad.yaml:{line}: ")), "{shown}");
    }
    let e = Rules::load(Path::new("/nonexistent/rules.yaml")).unwrap_err();
    assert_eq!(e.kind, RulesErrorKind::Io);
}

async fn publish_webhook(js: &jetstream::Context, event: &str, delivery: &str, msg_id: &str, body: &Value) {
    let env = Envelope::new("dev.jetrun.webhook.github.v1", "/jetrun/ingest").with_id(delivery);
    let mut headers = jetrun_nats::events::to_header_map(&env);
    headers.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(
        Names::default().webhook("github", event),
        headers,
        serde_json::to_vec(body).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn slots_bucket(js: &jetstream::Context) -> jetstream::kv::Store {
    js.create_key_value(jetstream::kv::Config {
        bucket: jetrun_route::limit::state_bucket(&Names::default()),
        history: 1,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn drained(js: &jetstream::Context) {
    let stream = js.get_stream(Names::default().stream_webhooks()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(info) = stream.consumer_info("route").await
            && info.num_pending == 0
            && info.num_ack_pending == 0
            && info.delivered.stream_sequence > 0
        {
            return;
        }
        assert!(Instant::now() < deadline, "route did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_submits_one_job_per_delivery_and_rule_even_when_redelivered() {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    Topology::new(Names::default()).apply(&js).await.unwrap();
    // The example limits bisects per repository: its slots bucket, as `jetrun init` makes it.
    slots_bucket(&js).await;
    let ctx = jetrun_host::Context::from_client(client, Names::default())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let cfg = jetrun_route::Config {
        rules_file: Some(BISECT.into()),
        ..Default::default()
    };
    let task = tokio::spawn(jetrun_route::run(ctx.clone(), cfg, shutdown.clone()));

    let delivery = uuid::Uuid::new_v4().to_string();
    let payload = comment_payload("/bisect good-sha bad-sha");
    publish_webhook(&js, "issue_comment", &delivery, &delivery, &payload).await;
    // The same delivery again as a separate stream message (a replay past the dedupe
    // window), and an event no rule matches.
    publish_webhook(&js, "issue_comment", &delivery, "replayed", &payload).await;
    publish_webhook(
        &js,
        "issue_comment",
        "other",
        "other",
        &comment_payload("thanks!"),
    )
    .await;
    drained(&js).await;

    let id = jetrun_core::job::job_id_for_key("bisect", &jetrun_route::idempotency_key(&delivery, "bisect"));
    // Route publishes the submission only (dispatch admits it): its credential may not
    // write the jobs bucket.
    assert!(
        ctx.store.get(&id).await.unwrap().is_none(),
        "route admitted the job itself"
    );
    let mut s = js.get_stream(Names::default().stream_jobs()).await.unwrap();
    assert_eq!(
        s.info().await.unwrap().state.messages,
        1,
        "a redelivery submits nothing new"
    );
    let m = s
        .direct_get_last_for_subject(Names::default().job_submit("bisect"))
        .await
        .unwrap();
    let env = jetrun_nats::events::from_header_map(&m.headers).unwrap();
    assert_eq!(env.id, id, "ce-id is the job id, so dispatch admits this job");
    let spec: jetrun_core::JobSpec = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(spec.env["GOOD"], "good-sha");
    assert_eq!(spec.env["BAD"], "bad-sha");
    assert_eq!(spec.labels["jetrun.rule"], "bisect");
    assert_eq!(spec.labels["github.delivery"], delivery.as_str());
    let mut dlq = js.get_stream(Names::default().stream_dlq()).await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 0);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn guardrails_refuse_strangers_and_malformed_commands_with_an_answer() {
    let rules = Rules::load(Path::new(BISECT)).unwrap();
    // A member: a job with a checkout of the bad revision and the reply labels' target.
    let mut p = comment_payload("/bisect v1 main");
    p["comment"]["author_association"] = "MEMBER".into();
    let m = rules.evaluate("issue_comment", &p, "d-2");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].refused, None);
    let spec = m[0].job.clone().unwrap();
    let c = spec.checkout.clone().unwrap();
    assert_eq!(c.git_ref, "main");
    assert_eq!(c.repo, p["repository"]["clone_url"].as_str().unwrap());
    assert_eq!(spec.timeout_seconds, Some(1800));
    let t = m[0].reply.clone().unwrap();
    assert_eq!(t.repository, p["repository"]["full_name"].as_str().unwrap());
    assert_eq!(t.issue, p["issue"]["number"].as_u64().unwrap());
    assert_eq!(t.comment_id, p["comment"]["id"].as_u64());

    // Not a member: refused, with who may.
    for assoc in ["NONE", "CONTRIBUTOR", "FIRST_TIME_CONTRIBUTOR"] {
        p["comment"]["author_association"] = assoc.into();
        let m = rules.evaluate("issue_comment", &p, "d-3");
        let why = m[0].refused.clone().unwrap_or_default();
        assert!(
            why.contains("OWNER, MEMBER, COLLABORATOR") && why.contains(assoc),
            "{why}"
        );
        assert!(m[0].job.is_err());
    }
    // Malformed: the usage.
    let mut p = comment_payload("/bisect onlyone");
    p["comment"]["author_association"] = "OWNER".into();
    let m = rules.evaluate("issue_comment", &p, "d-4");
    assert_eq!(m.len(), 1);
    assert!(
        m[0].refused.as_deref().unwrap().starts_with("Usage: `/bisect"),
        "{m:?}"
    );
    // Shell in an argument does not even match (the capture allows ref characters only).
    let p = comment_payload("/bisect $(id) main");
    let m = rules.evaluate("issue_comment", &p, "d-5");
    assert!(m[0].refused.as_deref().unwrap().starts_with("Usage"), "{m:?}");
    // Not the command at all: nothing.
    assert!(
        rules
            .evaluate("issue_comment", &comment_payload("thanks!"), "d-6")
            .is_empty()
    );
}

/// `guard.max_running_per_repository: 1`: of three commands for one repository handled at
/// once, one submits and two are refused (a verdict each, naming the holder); another
/// repository is not affected; once the holder is terminal the next command submits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_repository_limit_admits_one_of_concurrent_commands() {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let slots = slots_bucket(&js).await;
    let ctx = jetrun_host::Context::from_client(client, names.clone())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "rules:\n  - name: one\n    match: {event: issue_comment, comment: '^/one'}\n    guard: {max_running_per_repository: 1}\n    reply: {}\n    job: {queue: q, image: host, command: [sleep, '9']}\n",
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let cfg = jetrun_route::Config {
        rules_file: Some(rules.clone()),
        ..Default::default()
    };
    let task = tokio::spawn(jetrun_route::run(ctx.clone(), cfg, shutdown.clone()));

    let on = |repo: &str| {
        let mut p = comment_payload("/one");
        p["repository"]["full_name"] = repo.into();
        p["comment"]["author_association"] = "OWNER".into();
        p
    };
    let ds: Vec<String> = (0..3).map(|i| format!("d-{i}")).collect();
    for d in &ds {
        publish_webhook(&js, "issue_comment", d, d, &on("octo/app")).await;
    }
    publish_webhook(&js, "issue_comment", "d-other", "d-other", &on("octo/other")).await;
    drained(&js).await;

    let verdict = |d: String| {
        let slots = slots.clone();
        async move {
            let v = slots
                .get(jetrun_route::limit::verdict_key(&d, "one"))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("no verdict for {d}"));
            jetrun_route::limit::Verdict::decode(&v).unwrap()
        }
    };
    let job = |d: &str| jetrun_core::job::job_id_for_key("q", &jetrun_route::idempotency_key(d, "one"));
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for d in &ds {
        match verdict(d.clone()).await {
            jetrun_route::limit::Verdict::Admitted => admitted.push(d.clone()),
            jetrun_route::limit::Verdict::Refused(why) => refused.push(why),
        }
    }
    assert_eq!(admitted.len(), 1, "one slot, one job: {admitted:?} {refused:?}");
    let holder = job(&admitted[0]);
    for why in &refused {
        assert!(
            why.contains("`one` is already running for octo/app") && why.contains(&holder),
            "{why}"
        );
    }
    assert_eq!(
        verdict("d-other".into()).await,
        jetrun_route::limit::Verdict::Admitted
    );
    let mut s = js.get_stream(names.stream_jobs()).await.unwrap();
    assert_eq!(
        s.info().await.unwrap().state.messages,
        2,
        "octo/app once, octo/other once"
    );

    // A redelivery of a refused command keeps its verdict; still two submissions.
    let r = ds.iter().find(|d| **d != admitted[0]).unwrap().clone();
    publish_webhook(&js, "issue_comment", &r, "replay", &on("octo/app")).await;
    drained(&js).await;
    assert!(matches!(
        verdict(r).await,
        jetrun_route::limit::Verdict::Refused(_)
    ));
    assert_eq!(s.info().await.unwrap().state.messages, 2);

    // The holder ends (admitted and cancelled, as dispatch and a user would): a new
    // command takes the slot.
    let spec = jetrun_core::JobSpec::new("q", "host", vec!["sleep".into(), "9".into()]);
    ctx.store
        .admit(jetrun_core::JobRecord::new(holder.clone(), spec, None, None))
        .await
        .unwrap();
    ctx.store
        .transition(
            &holder,
            &jetrun_core::job::Transition::Cancel {
                reason: "test".into(),
            },
        )
        .await
        .unwrap();
    publish_webhook(&js, "issue_comment", "d-next", "d-next", &on("octo/app")).await;
    drained(&js).await;
    assert_eq!(
        verdict("d-next".into()).await,
        jetrun_route::limit::Verdict::Admitted
    );
    assert_eq!(s.info().await.unwrap().state.messages, 3);
    let slot = slots.get("limit.slot.octo=2Fapp.one.0").await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&slot), job("d-next"));
    let mut dlq = js.get_stream(names.stream_dlq()).await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 0);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_rule_without_its_bucket_fails_at_start_naming_init() {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    Topology::new(Names::default()).apply(&js).await.unwrap();
    let ctx = jetrun_host::Context::from_client(client, Names::default())
        .await
        .unwrap();
    let cfg = jetrun_route::Config {
        rules_file: Some(BISECT.into()),
        ..Default::default()
    };
    let e = jetrun_route::run(ctx, cfg, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("max_running_per_repository") && e.contains("jetrun init"),
        "{e}"
    );
}
