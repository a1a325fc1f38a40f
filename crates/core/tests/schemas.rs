//! Every schema compiles; valid examples pass, invalid ones fail with a pointer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use jetrun_core::schema::{self, SchemaErrorKind, types};
use serde_json::json;

fn ok(ty: &str, v: serde_json::Value) {
    if let Err(e) = schema::validate_value(ty, &v) {
        panic!("{ty} should accept {v}: {e}");
    }
}

fn bad(ty: &str, v: serde_json::Value, pointer: &str) {
    let e = schema::validate_value(ty, &v).expect_err("should be rejected");
    assert_eq!(e.kind, SchemaErrorKind::Invalid);
    assert!(
        e.errors.iter().any(|x| x.pointer == pointer),
        "{ty}: expected an error at {pointer:?}, got {:?}",
        e.errors
    );
}

#[test]
fn all_schemas_compile() {
    schema::check_all().unwrap();
}

#[test]
fn job_submission() {
    ok(
        types::JOB_SUBMITTED,
        json!({"queue": "ci", "image": "busybox", "command": ["true"]}),
    );
    ok(
        types::JOB_SUBMITTED,
        json!({"queue": "ci", "image": "busybox", "env": {"A": "1"},
        "resources": {"memory_mb": 64, "pids": 32}, "timeout_seconds": 10, "max_attempts": 2,
        "tenant": "acme", "ports": ["http"], "callback": {"nats": "done.x"}}),
    );
    bad(types::JOB_SUBMITTED, json!({"image": "busybox"}), "");
    bad(
        types::JOB_SUBMITTED,
        json!({"queue": "bad queue", "image": "x"}),
        "/queue",
    );
    bad(
        types::JOB_SUBMITTED,
        json!({"queue": "q", "image": "x", "timeout_seconds": 0}),
        "/timeout_seconds",
    );
    bad(
        types::JOB_SUBMITTED,
        json!({"queue": "q", "image": "x", "surprise": 1}),
        "",
    );
    bad(
        types::JOB_SUBMITTED,
        json!({"queue": "q", "image": "x", "env": {"A": 1}}),
        "/env/A",
    );
}

#[test]
fn job_record_and_state_change() {
    let spec = jetrun_core::JobSpec::new("q", "busybox", vec!["true".into()]);
    let rec = jetrun_core::JobRecord::new("j-1".into(), spec, None, None);
    let v = serde_json::to_value(&rec).unwrap();
    ok(types::JOB_RECORD, v.clone());
    let mut broken = v.clone();
    broken["status"] = json!("exploded");
    bad(types::JOB_RECORD, broken, "/status");
    ok(
        types::JOB_STATE_CHANGED,
        json!({"job_id": "j-1", "queue": "q", "from": "queued", "to": "launching",
        "attempt": 1, "at": "2026-01-01T00:00:00Z", "record": v}),
    );
    bad(
        types::JOB_STATE_CHANGED,
        json!({"job_id": "j-1", "queue": "q", "to": "nowhere", "attempt": 1,
        "at": "2026-01-01T00:00:00Z"}),
        "/to",
    );
}

#[test]
fn task_event() {
    ok(
        types::TASK_LIFECYCLE,
        json!({"job_id": "j", "attempt": 1, "phase": "exited", "exit_code": 3,
        "task_ref": "t", "node_id": "n", "at": "2026-01-01T00:00:00Z"}),
    );
    bad(
        types::TASK_LIFECYCLE,
        json!({"job_id": "j", "attempt": 0, "phase": "started",
        "task_ref": "t", "node_id": "n", "at": "2026-01-01T00:00:00Z"}),
        "/attempt",
    );
    // exited without an exit code
    bad(
        types::TASK_LIFECYCLE,
        json!({"job_id": "j", "attempt": 1, "phase": "exited",
        "task_ref": "t", "node_id": "n", "at": "2026-01-01T00:00:00Z"}),
        "",
    );
}

#[test]
fn scale_request_and_signal() {
    ok(
        types::SCALE_REQUESTED,
        json!({"action": "burst", "service": "w", "replicas": 4, "for_seconds": 1800}),
    );
    ok(types::SCALE_REQUESTED, json!({"action": "reset", "service": "w"}));
    ok(
        types::SCALE_REQUESTED,
        json!({"action": "set", "spec": {"service": "w", "queue": "q", "min": 0,
        "max": 5, "target_per_replica": 2}}),
    );
    bad(
        types::SCALE_REQUESTED,
        json!({"action": "set", "spec": {"service": "w", "queue": "q", "min": 0,
        "max": 5, "target_per_replica": 0}}),
        "/spec/target_per_replica",
    );
    ok(
        types::SCALE_SIGNAL,
        json!({"service": "w", "desired": 3, "current": 1, "pending": 10,
        "in_flight": 2, "reason": "backlog", "at": "2026-01-01T00:00:00Z"}),
    );
    bad(
        types::SCALE_SIGNAL,
        json!({"service": "w", "desired": -1, "current": 1, "pending": 10,
        "in_flight": 2, "reason": "backlog", "at": "2026-01-01T00:00:00Z"}),
        "/desired",
    );
    // The Rust types serialise to what the schemas accept.
    let mut spec = jetrun_core::scale::ScaleSpec::new("w", "q", 0, 4, 2);
    spec.backend_config = Some(json!({"cluster": "c", "service": "s"}));
    assert!(spec.validate().is_ok());
    ok(types::SCALE_SPEC, serde_json::to_value(&spec).unwrap());
    ok(
        types::SCALE_REQUESTED,
        serde_json::to_value(jetrun_core::scale::ScaleRequest::Set { spec: spec.clone() }).unwrap(),
    );
    // Bounds and port-bound local replicas are refused by validate().
    let mut inverted = spec.clone();
    inverted.min = 5;
    assert!(inverted.validate().is_err());
    let mut ported = spec;
    ported.port_bound = true;
    ported.backend = jetrun_core::scale::BackendKind::Local;
    assert!(ported.validate().unwrap_err().port_bound);
}

#[test]
fn dead_letter() {
    let dl = jetrun_core::dlq::DeadLetter {
        origin: "dispatch".into(),
        reason_kind: "schema".into(),
        reason: "/queue: missing".into(),
        subject: "jetrun.job.submit.q".into(),
        stream: Some("JETRUN_JOBS".into()),
        stream_seq: Some(4),
        deliveries: 1,
        headers: Default::default(),
        payload_base64: jetrun_core::dlq::DeadLetter::encode_payload(b"{}"),
        payload_truncated: false,
        payload_bytes: None,
        job_id: None,
        failed_at: jetrun_core::now(),
    };
    ok(types::DEAD_LETTER, serde_json::to_value(&dl).unwrap());
    bad(
        types::DEAD_LETTER,
        json!({"origin": "x", "reason_kind": "", "reason": "r", "subject": "s",
        "payload_base64": "", "failed_at": "2026-01-01T00:00:00Z"}),
        "/reason_kind",
    );
}

#[test]
fn not_json_and_unknown_type_are_typed() {
    let e = schema::validate(types::JOB_SUBMITTED, b"{not json").unwrap_err();
    assert_eq!(e.kind, SchemaErrorKind::NotJson);
    let e = schema::validate("dev.nope.v1", b"{}").unwrap_err();
    assert_eq!(e.kind, SchemaErrorKind::UnknownType);
}

#[test]
fn github_fixtures_pass_the_webhook_schema() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/github-webhooks");
    let mut n = 0;
    for event in std::fs::read_dir(&dir).unwrap() {
        let event = event.unwrap();
        if !event.file_type().unwrap().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(event.path()).unwrap() {
            let body = std::fs::read(f.unwrap().path()).unwrap();
            schema::validate(types::GITHUB_WEBHOOK, &body).unwrap();
            n += 1;
        }
    }
    assert!(n >= 273, "only {n} fixtures found");
}
