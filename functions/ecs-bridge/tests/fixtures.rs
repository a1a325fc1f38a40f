#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The documented "ECS Task State Change" samples (`fixtures/`, sources in its README)
//! parse, are ignored as they are (no sample is a jetrun task), and map correctly once
//! they carry what the ECS runner puts on a task (`startedBy`, `group`, the job
//! container's environment).

use jetrun_core::task::TaskPhase;
use jetrun_ecs_bridge::{Mapping, Report, map_event};

fn fixture(name: &str) -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

const ALL: [&str; 4] = [
    "fargate-running.json",
    "fargate-spot-interruption.json",
    "ec2-stopped-essential-container-exited.json",
    "fargate-task-failed-to-start.json",
];

/// The sample as the ECS runner would have launched it: job `job-1`, attempt 2.
fn as_jetrun(mut ev: serde_json::Value) -> (serde_json::Value, String) {
    let d = &mut ev["detail"];
    let container = d["containers"][0]["name"].as_str().unwrap().to_string();
    d["startedBy"] = "job-1".into();
    d["group"] = "jetrun".into();
    d["overrides"]["containerOverrides"] = serde_json::json!([{
        "name": container,
        "command": ["sh", "-c", "exit 1"],
        "environment": [
            {"name": "JETRUN_JOB_ID", "value": "job-1"},
            {"name": "JETRUN_ATTEMPT", "value": "2"}
        ]
    }]);
    (ev, container)
}

fn report(m: Mapping) -> Report {
    match m {
        Mapping::Report(r) => r,
        Mapping::Ignore(why) => panic!("ignored: {why}"),
    }
}

#[test]
fn documented_samples_parse_and_foreign_tasks_are_ignored() {
    for name in ALL {
        let ev = fixture(name);
        match map_event(&ev, "jetrun", "job").unwrap() {
            Mapping::Ignore(why) => assert!(why.contains("not started by jetrun"), "{name}: {why}"),
            m => panic!("{name}: a foreign task was reported: {m:?}"),
        }
    }
}

#[test]
fn documented_samples_of_jetrun_tasks_map_to_task_events() {
    let (ev, c) = as_jetrun(fixture("fargate-running.json"));
    let r = report(map_event(&ev, "jetrun", &c).unwrap());
    assert_eq!(
        (r.job_id.as_str(), r.attempt, r.phase),
        ("job-1", 2, TaskPhase::Started)
    );
    assert_eq!(
        r.task_ref,
        "arn:aws:ecs:us-west-2:111122223333:task/FargateCluster/c13b4cb40f1f4fe4a2971f76ae5a47ad"
    );
    assert_eq!(r.at.to_rfc3339(), "2020-01-23T17:57:58.103+00:00", "updatedAt");

    let (ev, c) = as_jetrun(fixture("ec2-stopped-essential-container-exited.json"));
    let r = report(map_event(&ev, "jetrun", &c).unwrap());
    assert_eq!((r.phase, r.exit_code), (TaskPhase::Exited, Some(1)));
    let ev_node = r.task_event("node-a");
    assert_eq!(ev_node.node_id, "node-a");
    assert_eq!(ev_node.exit_code, Some(1));

    let (ev, c) = as_jetrun(fixture("fargate-spot-interruption.json"));
    let r = report(map_event(&ev, "jetrun", &c).unwrap());
    assert_eq!(
        r.phase,
        TaskPhase::Lost,
        "a Spot interruption is not the job's fault"
    );
    assert_eq!(
        r.message.as_deref(),
        Some("SpotInterruption: Your Spot Task was interrupted.")
    );
    assert_eq!(r.at.to_rfc3339(), "2019-12-04T23:55:51.209+00:00", "stoppedAt");

    let (ev, c) = as_jetrun(fixture("fargate-task-failed-to-start.json"));
    let r = report(map_event(&ev, "jetrun", &c).unwrap());
    assert_eq!(
        r.phase,
        TaskPhase::Lost,
        "failing to start is retried as a lost attempt"
    );
    assert!(
        r.message
            .as_deref()
            .unwrap()
            .starts_with("TaskFailedToStart: CannotPullContainerError"),
        "{:?}",
        r.message
    );
}

#[test]
fn unknown_fields_are_tolerated() {
    let (mut ev, c) = as_jetrun(fixture("ec2-stopped-essential-container-exited.json"));
    let before = map_event(&ev, "jetrun", &c).unwrap();
    ev["futureEnvelopeField"] = serde_json::json!({"a": [1, 2]});
    ev["detail"]["ephemeralStorage"] = serde_json::json!({"sizeInGiB": 20});
    ev["detail"]["containers"][0]["managedAgents"] = serde_json::json!([{"name": "ExecuteCommandAgent"}]);
    ev["detail"]["someNewThing"] = serde_json::Value::Null;
    assert_eq!(map_event(&ev, "jetrun", &c).unwrap(), before);
}

#[test]
fn another_deployment_another_type_or_a_mismatched_job_is_ignored() {
    let (ev, c) = as_jetrun(fixture("ec2-stopped-essential-container-exited.json"));
    assert!(matches!(
        map_event(&ev, "staging", &c).unwrap(),
        Mapping::Ignore(_)
    ));
    let mut other = ev.clone();
    other["detail-type"] = "ECS Container Instance State Change".into();
    assert!(matches!(
        map_event(&other, "jetrun", &c).unwrap(),
        Mapping::Ignore(_)
    ));
    let mut forged = ev.clone();
    forged["detail"]["overrides"]["containerOverrides"][0]["environment"][0]["value"] = "job-2".into();
    assert!(
        matches!(map_event(&forged, "jetrun", &c).unwrap(), Mapping::Ignore(_)),
        "startedBy and JETRUN_JOB_ID disagree"
    );
    // Not an event at all: a parse error (the Lambda's dead-letter queue gets it).
    assert!(map_event(&serde_json::json!({"detail": 3}), "jetrun", "job").is_err());
}

#[test]
fn stops_are_left_to_jetrun_or_reported_as_stopped() {
    let (mut ev, c) = as_jetrun(fixture("ec2-stopped-essential-container-exited.json"));
    ev["detail"]["stopCode"] = "UserInitiated".into();
    ev["detail"]["stoppedReason"] = "jetrun: stop requested (cancel, timeout or shutdown)".into();
    ev["detail"]["containers"][0]["exitCode"] = 143.into();
    match map_event(&ev, "jetrun", &c).unwrap() {
        Mapping::Ignore(why) => assert!(why.contains("stopped by jetrun"), "{why}"),
        m => panic!("{m:?}"),
    }
    ev["detail"]["stoppedReason"] = "Task stopped by user".into();
    let r = report(map_event(&ev, "jetrun", &c).unwrap());
    assert_eq!(r.phase, TaskPhase::Stopped);
    assert_eq!(
        r.message.as_deref(),
        Some("stopped outside jetrun: Task stopped by user")
    );
    // Still on its way down: nothing yet.
    ev["detail"]["lastStatus"] = "DEPROVISIONING".into();
    assert!(matches!(
        map_event(&ev, "jetrun", &c).unwrap(),
        Mapping::Ignore(_)
    ));
}
