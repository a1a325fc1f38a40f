#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The ECS runner against moto's ECS (its real JSON protocol over HTTP), and against a
//! fault-injecting endpoint in front of moto for what moto cannot produce (throttling,
//! 5xx, `failures[]`). Built with `--features ecs`; moto must be installed
//! (`scripts/setup.sh`): a missing `moto_server` fails these tests, it does not skip them.
#![cfg(feature = "ecs")]

#[path = "support/moto.rs"]
mod moto;
#[path = "support/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetrun_core::JobSpec;
use jetrun_runner::ecs::{EcsConfig, EcsRunner, KvTokenBucket, Pacer, PacerConfig, RetryConfig};
use jetrun_runner::{LaunchRequest, Runner, RunnerErrorKind, TaskStatus};
use proxy::{Fault, Proxy};

fn cfg(url: &str) -> EcsConfig {
    EcsConfig {
        cluster: "jobs".into(),
        endpoint_url: Some(url.into()),
        task_definition: Some("job".into()),
        images: [("tools".to_string(), "tools-job".to_string())].into(),
        subnets: vec!["subnet-0a".into(), "subnet-0b".into()],
        security_groups: vec!["sg-jobs".into()],
        offline_security_groups: vec!["sg-offline".into()],
        poll_interval: Duration::from_millis(50),
        retry: RetryConfig {
            attempts: 6,
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        ..Default::default()
    }
}

fn runner(url: &str, cfg: EcsConfig) -> EcsRunner {
    EcsRunner::with_client(cfg, moto::client(url)).unwrap()
}

fn job(id: &str, attempt: u32) -> LaunchRequest {
    let mut spec = JobSpec::new(
        "default",
        "busybox",
        vec!["sh".into(), "-c".into(), "exit 3".into()],
    );
    spec.env.insert("GREETING".into(), "hi".into());
    spec.labels.insert("jetrun.rule".into(), "bisect".into());
    spec.resources.cpus = Some(1.0);
    spec.resources.memory_mb = Some(2048);
    let mut r = LaunchRequest::new(
        id,
        attempt,
        spec,
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    );
    r.env.insert("TRACESTATE".into(), "congo=t61rcWkgMzE".into());
    r
}

/// moto with the cluster, behind a proxy (`m.url` below is the proxy's).
async fn moto_with_cluster() -> (moto::Moto, Proxy) {
    let m = moto::start().await;
    let p = Proxy::start(&m.url).await;
    moto::setup(&moto::client(&p.url)).await;
    (m, p)
}

#[tokio::test]
async fn a_job_becomes_a_run_task_with_overrides_tags_started_by_and_token() {
    let (_moto, p) = moto_with_cluster().await;
    let r = runner(&p.url, cfg(&p.url));
    let arn = r.launch(&job("job-a", 2)).await.unwrap();

    // What ECS was asked.
    let run = p.seen("RunTask");
    assert_eq!(run.len(), 1);
    let b = &run[0].body;
    assert_eq!(b["cluster"], "jobs");
    assert_eq!(b["taskDefinition"], "job");
    assert_eq!(b["startedBy"], "job-a");
    assert_eq!(b["group"], "jetrun");
    assert_eq!(b["clientToken"], "job-a-2");
    assert_eq!(b["launchType"], "FARGATE");
    assert_eq!(b["count"], 1);
    let vpc = &b["networkConfiguration"]["awsvpcConfiguration"];
    assert_eq!(vpc["subnets"], serde_json::json!(["subnet-0a", "subnet-0b"]));
    assert_eq!(
        vpc["securityGroups"],
        serde_json::json!(["sg-offline"]),
        "no network: offline groups"
    );
    assert_eq!(vpc["assignPublicIp"], "DISABLED");
    assert_eq!(b["overrides"]["cpu"], "1024");
    assert_eq!(b["overrides"]["memory"], "2048");

    // What moto holds.
    let c = moto::client(&p.url);
    let t = c
        .describe_tasks()
        .cluster("jobs")
        .tasks(&arn)
        .include(aws_sdk_ecs::types::TaskField::Tags)
        .send()
        .await
        .unwrap();
    let t = &t.tasks()[0];
    assert_eq!(t.started_by(), Some("job-a"));
    assert_eq!(t.group(), Some("jetrun"));
    let tags: BTreeMap<_, _> = t
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect();
    assert_eq!(tags["jetrun:job-id"], "job-a");
    assert_eq!(tags["jetrun:queue"], "default");
    assert_eq!(tags["jetrun:attempt"], "2");
    assert_eq!(tags["jetrun:deployment"], "jetrun");
    assert_eq!(tags["jetrun.rule"], "bisect");
    let o = &t.overrides().unwrap().container_overrides()[0];
    assert_eq!(o.name(), Some("job"));
    assert_eq!(o.command(), ["sh", "-c", "exit 3"]);
    let env: BTreeMap<_, _> = o
        .environment()
        .iter()
        .map(|kv| (kv.name().unwrap(), kv.value().unwrap()))
        .collect();
    assert_eq!(env["GREETING"], "hi");
    assert_eq!(env["JETRUN_JOB_ID"], "job-a");
    assert_eq!(env["JETRUN_ATTEMPT"], "2");
    assert_eq!(
        env["TRACEPARENT"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(env["TRACESTATE"], "congo=t61rcWkgMzE");
    assert_eq!(r.describe(&arn).await.unwrap(), TaskStatus::Running);

    // The image picks the task definition; a job with network gets the job groups.
    let mut other = job("job-b", 1);
    other.spec.image = "tools".into();
    other.spec.network = true;
    r.launch(&other).await.unwrap();
    let b = &p.seen("RunTask")[1].body;
    assert_eq!(b["taskDefinition"], "tools-job");
    assert_eq!(
        b["networkConfiguration"]["awsvpcConfiguration"]["securityGroups"],
        serde_json::json!(["sg-jobs"])
    );

    // A capacity-provider strategy replaces the launch type.
    let mut spot = cfg(&p.url);
    spot.capacity_providers = vec![
        jetrun_runner::ecs::CapacityProvider {
            name: "FARGATE_SPOT".into(),
            weight: 3,
            base: 0,
        },
        jetrun_runner::ecs::CapacityProvider {
            name: "FARGATE".into(),
            weight: 1,
            base: 1,
        },
    ];
    // moto places capacity-provider tasks on EC2 instances only: answer in its place.
    p.push("RunTask", Fault::Failures("ATTRIBUTE".into()));
    let e = runner(&p.url, spot).launch(&job("job-c", 1)).await.unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::InvalidSpec, "{e}");
    let b = &p.seen("RunTask")[2].body;
    assert!(b.get("launchType").is_none());
    assert_eq!(
        b["capacityProviderStrategy"],
        serde_json::json!([
            {"capacityProvider": "FARGATE_SPOT", "weight": 3, "base": 0},
            {"capacityProvider": "FARGATE", "weight": 1, "base": 1}
        ])
    );
}

#[tokio::test]
async fn a_retried_or_duplicated_launch_starts_no_second_task() {
    let (_moto, m) = moto_with_cluster().await;
    let r = Arc::new(runner(&m.url, cfg(&m.url)));
    let req = job("job-dup", 1);
    let first = r.launch(&req).await.unwrap();
    assert_eq!(
        r.launch(&req).await.unwrap(),
        first,
        "a second launch adopts the first"
    );
    // Concurrent launches of one token, in this process and from a "restarted" worker.
    let mut hs = Vec::new();
    for i in 0..8 {
        let r = if i % 2 == 0 {
            r.clone()
        } else {
            Arc::new(runner(&m.url, cfg(&m.url)))
        };
        let req = req.clone();
        hs.push(tokio::spawn(async move { r.launch(&req).await.unwrap() }));
    }
    for h in hs {
        assert_eq!(h.await.unwrap(), first);
    }
    let c = moto::client(&m.url);
    assert_eq!(moto::tasks_started_by(&c, "job-dup").await, vec![first.clone()]);
    // The next attempt is a new task; the old one is not taken for it.
    let second = r.launch(&job("job-dup", 2)).await.unwrap();
    assert_ne!(second, first);
    assert_eq!(moto::tasks_started_by(&c, "job-dup").await.len(), 2);
    // A stopped task of the attempt is still its task: no relaunch.
    c.stop_task().cluster("jobs").task(&first).send().await.unwrap();
    assert_eq!(r.launch(&req).await.unwrap(), first);
    assert_eq!(moto::tasks_started_by(&c, "job-dup").await.len(), 2);
}

#[tokio::test]
async fn stop_calls_stop_task_with_a_reason_and_wait_sees_the_end() {
    let (_moto, m) = moto_with_cluster().await;
    let r = Arc::new(runner(&m.url, cfg(&m.url)));
    let arn = r.launch(&job("job-stop", 1)).await.unwrap();
    let waiter = {
        let r = r.clone();
        let arn = arn.clone();
        tokio::spawn(async move { r.wait(&arn).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "wait resolves only when the task ends");
    // Cancel and timeout both come here (the agent calls stop).
    r.stop(&arn, Duration::from_secs(1)).await.unwrap();
    let st = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(st.is_final(), "{st:?}");
    let view = r.describe_task(&arn).await.unwrap().unwrap();
    assert_eq!(view.last_status, "STOPPED");
    assert!(
        view.stopped_reason.as_deref().unwrap().starts_with("jetrun: "),
        "{:?}",
        view.stopped_reason
    );
    // Stopping an ended task is not an error.
    r.stop(&arn, Duration::from_secs(1)).await.unwrap();
    // An unknown task is NotFound.
    let gone = "arn:aws:ecs:us-east-1:123456789012:task/jobs/00000000000000000000000000000000";
    assert_eq!(r.describe(gone).await.unwrap(), TaskStatus::NotFound);
}

#[tokio::test]
async fn a_restarted_worker_lists_and_adopts_only_its_own_tasks() {
    let (_moto, m) = moto_with_cluster().await;
    let a = runner(&m.url, cfg(&m.url)).with_node("node-a");
    let b = runner(&m.url, cfg(&m.url)).with_node("node-b");
    let a1 = a.launch(&job("job-1", 1)).await.unwrap();
    let a2 = a.launch(&job("job-2", 3)).await.unwrap();
    b.launch(&job("job-3", 1)).await.unwrap();
    // A task of someone else in the cluster.
    let c = moto::client(&m.url);
    c.run_task()
        .cluster("jobs")
        .task_definition("job")
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .started_by("someone")
        .send()
        .await
        .unwrap();
    c.stop_task().cluster("jobs").task(&a2).send().await.unwrap();
    drop(a);

    let restarted = runner(&m.url, cfg(&m.url)).with_node("node-a");
    let mut listed = restarted.list().await.unwrap();
    listed.sort_by(|x, y| x.job_id.cmp(&y.job_id));
    let got: Vec<_> = listed
        .iter()
        .map(|t| {
            (
                t.job_id.as_str(),
                t.attempt,
                t.task_ref.as_str(),
                t.status.is_final(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("job-1", 1, a1.as_str(), false), ("job-2", 3, a2.as_str(), true)]
    );
    assert_eq!(restarted.launch(&job("job-1", 1)).await.unwrap(), a1);
}

#[tokio::test]
async fn throttling_and_5xx_are_retried_and_never_start_a_duplicate() {
    let (_moto, p) = moto_with_cluster().await;
    let r = runner(&p.url, cfg(&p.url));
    p.push("RunTask", Fault::Throttle);
    p.push("RunTask", Fault::Unavailable);
    // The third call starts the task, but its answer is lost.
    p.push("RunTask", Fault::FailAfterForward);
    p.push("ListTasks", Fault::Throttle);
    let arn = r.launch(&job("job-t", 1)).await.unwrap();
    let c = moto::client(&p.url);
    assert_eq!(moto::tasks_started_by(&c, "job-t").await, vec![arn]);
    assert_eq!(
        p.seen("RunTask").len(),
        3,
        "the task started by the lost call was adopted"
    );
    // Backoff: the calls are spread out, not back to back.
    let at: Vec<Instant> = p.seen("RunTask").iter().map(|s| s.at).collect();
    assert!(at[2] > at[0], "retries happen later");

    // Throttled for good: the job is not stuck, the launch ends with a transient error
    // after the configured tries, and nothing was started.
    p.always("RunTask", Fault::Throttle);
    let t0 = Instant::now();
    let e = r.launch(&job("job-u", 1)).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.message.contains("ThrottlingException"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(moto::tasks_started_by(&c, "job-u").await.is_empty());
}

#[tokio::test]
async fn failures_are_handled_per_reason() {
    let (_moto, p) = moto_with_cluster().await;
    let r = runner(&p.url, cfg(&p.url));
    // Capacity and RESOURCE:* are retried.
    p.push(
        "RunTask",
        Fault::Failures(
            "Capacity is unavailable at this time. Please try again later or in a different availability zone"
                .into(),
        ),
    );
    p.push("RunTask", Fault::Failures("RESOURCE:ENI".into()));
    r.launch(&job("job-cap", 1)).await.unwrap();
    assert_eq!(p.seen("RunTask").len(), 3);
    // Used up: Exhausted (transient: dispatch retries the job later), nothing started.
    p.always("RunTask", Fault::Failures("RESOURCE:MEMORY".into()));
    let e = r.launch(&job("job-full", 1)).await.unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::Exhausted, "{e}");
    assert!(e.message.contains("RESOURCE:MEMORY"), "{e}");
    p.clear();
    // Another reason is the spec's: permanent, with the reason.
    p.push("RunTask", Fault::Failures("ATTRIBUTE".into()));
    let e = r.launch(&job("job-attr", 1)).await.unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::InvalidSpec, "{e}");
    assert!(e.message.contains("ATTRIBUTE"), "{e}");
    // A missing task definition (moto's real answer): permanent, with the reason.
    let mut c = cfg(&p.url);
    c.task_definition = Some("no-such-family".into());
    let before = p.seen("RunTask").len();
    let e = runner(&p.url, c).launch(&job("job-td", 1)).await.unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::InvalidSpec, "{e}");
    assert!(e.message.contains("ClientException"), "{e}");
    assert_eq!(p.seen("RunTask").len(), before + 1, "not retried");
}

#[tokio::test]
async fn bad_sizes_and_unmapped_queues_fail_before_any_call() {
    let (_moto, p) = moto_with_cluster().await;
    let r = runner(&p.url, cfg(&p.url));
    let mut bad = job("job-size", 1);
    bad.spec.resources.cpus = Some(0.25);
    bad.spec.resources.memory_mb = Some(4096);
    let e = r.launch(&bad).await.unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::InvalidSpec);
    assert!(e.message.contains("512, 1024 or 2048"), "{e}");
    let mut ports = job("job-ports", 1);
    ports.spec.ports = vec!["http".into()];
    assert_eq!(
        r.launch(&ports).await.unwrap_err().kind,
        RunnerErrorKind::InvalidSpec
    );
    let mut only_queues = cfg(&p.url);
    only_queues.task_definition = None;
    only_queues.images.clear();
    only_queues.queues.insert("gpu".into(), "job".into());
    let e = runner(&p.url, only_queues)
        .launch(&job("job-q", 1))
        .await
        .unwrap_err();
    assert_eq!(e.kind, RunnerErrorKind::InvalidSpec);
    assert!(e.message.contains("no ECS task definition"), "{e}");
    assert!(p.seen("RunTask").is_empty() && p.seen("ListTasks").is_empty());
}

/// Launch times must satisfy the bucket: in every window of `w` seconds at most
/// `capacity + w × rate` launches (plus one for the window's edge).
fn assert_paced(at: &[Instant], capacity: f64, rate: f64) {
    for (i, &a) in at.iter().enumerate() {
        for &w in &[0.1, 0.25, 0.5, 1.0] {
            let n = at[i..]
                .iter()
                .take_while(|&&b| b.duration_since(a).as_secs_f64() <= w)
                .count();
            assert!(
                n as f64 <= capacity + w * rate + 1.0,
                "{n} RunTasks within {w} s (capacity {capacity}, rate {rate}/s)"
            );
        }
    }
}

#[tokio::test]
async fn the_launch_pace_never_exceeds_the_bucket() {
    let (_moto, p) = moto_with_cluster().await;
    let mut c = cfg(&p.url);
    c.pacer = PacerConfig {
        capacity: 5,
        refill_per_second: 20.0,
        shared_bucket: None,
    };
    let r = Arc::new(runner(&p.url, c));
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for i in 0..25 {
        let r = r.clone();
        hs.push(tokio::spawn(async move {
            r.launch(&job(&format!("pace-{i}"), 1)).await.unwrap()
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    // 5 at once, then 20 at 20/s: about one second.
    assert!(t0.elapsed() >= Duration::from_millis(950), "{:?}", t0.elapsed());
    let mut at: Vec<Instant> = p.seen("RunTask").iter().map(|s| s.at).collect();
    at.sort();
    assert_eq!(at.len(), 25);
    assert_paced(&at, 5.0, 20.0);
}

#[tokio::test]
async fn a_shared_kv_bucket_paces_all_workers_together() {
    let nats = jetrun_harness::NatsServer::start().unwrap();
    let cfg = PacerConfig {
        capacity: 5,
        refill_per_second: 20.0,
        shared_bucket: Some("jetrun-pacer".into()),
    };
    // Two "workers", each with its own connection and bucket handle.
    let mut pacers = Vec::new();
    for _ in 0..2 {
        let js = async_nats::jetstream::new(nats.client().await);
        pacers.push(Arc::new(
            KvTokenBucket::open(&js, "jetrun-pacer", "ecs-launch.jetrun", &cfg)
                .await
                .unwrap(),
        ));
    }
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for i in 0..30 {
        let p = pacers[i % 2].clone();
        hs.push(tokio::spawn(async move {
            p.acquire().await.unwrap();
            Instant::now()
        }));
    }
    let mut at = Vec::new();
    for h in hs {
        at.push(h.await.unwrap());
    }
    at.sort();
    // 5 free, 25 at 20/s: 1.25 s in all, whichever worker asks.
    let total = at[29].duration_since(t0);
    assert!(total >= Duration::from_millis(1200), "{total:?}");
    assert!(total < Duration::from_secs(3), "{total:?}");
    assert_paced(&at, 5.0, 20.0);
}

/// A CloudWatch Logs client for `url` (moto serves every service on one port).
fn logs_client(url: &str) -> aws_sdk_cloudwatchlogs::Client {
    let conf = aws_sdk_cloudwatchlogs::Config::builder()
        .behavior_version(aws_sdk_cloudwatchlogs::config::BehaviorVersion::latest())
        .region(aws_sdk_cloudwatchlogs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_cloudwatchlogs::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(url)
        .retry_config(aws_sdk_cloudwatchlogs::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_cloudwatchlogs::Client::from_conf(conf)
}

/// Registers the task definition `logged-job` whose container `job` logs with the
/// `awslogs` driver to group `group`, stream prefix `prefix` (as a Fargate task
/// definition must).
async fn register_logged(c: &aws_sdk_ecs::Client, group: &str, prefix: &str) {
    c.register_task_definition()
        .family("logged-job")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("job")
                .image("public.ecr.aws/docker/library/busybox:latest")
                .memory(512)
                .log_configuration(
                    aws_sdk_ecs::types::LogConfiguration::builder()
                        .log_driver(aws_sdk_ecs::types::LogDriver::Awslogs)
                        .options("awslogs-group", group)
                        .options("awslogs-region", "us-east-1")
                        .options("awslogs-stream-prefix", prefix)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
}

/// Writes `lines` as log events (one each, in order, timestamped now) to
/// `group`/`stream`, creating both as needed: what the awslogs driver does.
async fn put_logs(c: &aws_sdk_cloudwatchlogs::Client, group: &str, stream: &str, lines: &[&str]) {
    let _ = c.create_log_group().log_group_name(group).send().await;
    let _ = c
        .create_log_stream()
        .log_group_name(group)
        .log_stream_name(stream)
        .send()
        .await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut put = c.put_log_events().log_group_name(group).log_stream_name(stream);
    for (i, l) in lines.iter().enumerate() {
        put = put.log_events(
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(now + i as i64)
                .message(*l)
                .build()
                .unwrap(),
        );
    }
    put.send().await.unwrap();
}

#[tokio::test]
async fn logs_and_the_result_come_from_the_tasks_cloudwatch_log_stream() {
    let (m, p) = moto_with_cluster().await;
    let ecs = moto::client(&p.url);
    register_logged(&ecs, "/jetrun/jobs", "jetrun").await;
    let logs = logs_client(&m.url);
    let c = EcsConfig {
        task_definition: Some("logged-job".into()),
        ..cfg(&p.url)
    };
    let r = runner(&p.url, c).with_logs(logs.clone());
    let arn = r.launch(&job("logged", 1)).await.unwrap();
    let task_id = arn.rsplit('/').next().unwrap();

    // Nothing written yet: an empty tail, no result.
    assert_eq!(r.log_tail(&arn, 10).await.unwrap(), Some((vec![], vec![])));
    assert_eq!(r.result(&arn).await.unwrap(), None);

    // The awslogs driver's stream: <prefix>/<container>/<task id>.
    let stream = format!("jetrun/job/{task_id}");
    put_logs(
        &logs,
        "/jetrun/jobs",
        &stream,
        &[
            "starting",
            "jetrun-result: {\"first_bad\":\"old\"}",
            "bisecting\nstep 7",
            "jetrun-result: {\"first_bad\":\"abc123\"}",
            "done",
        ],
    )
    .await;
    let (out, err) = r.log_tail(&arn, 3).await.unwrap().unwrap();
    assert_eq!(
        out,
        ["step 7", "jetrun-result: {\"first_bad\":\"abc123\"}", "done"]
    );
    assert!(err.is_empty(), "awslogs merges stderr into the one stream");
    let (all, _) = r.log_tail(&arn, 100).await.unwrap().unwrap();
    assert_eq!(all.len(), 6);
    let result = r.result(&arn).await.unwrap().unwrap();
    let parsed = jetrun_core::result::parse(&result).unwrap();
    assert_eq!(parsed["first_bad"], "abc123", "the last marker line wins");
    assert_eq!(
        p.seen("DescribeTaskDefinition").len(),
        1,
        "task definition read once"
    );

    // Group and prefix from the configuration, for a task definition without awslogs.
    let c = EcsConfig {
        logs: jetrun_runner::ecs::LogsConfig {
            group: Some("/jetrun/other".into()),
            stream_prefix: Some("p".into()),
        },
        ..cfg(&p.url)
    };
    let r2 = runner(&p.url, c).with_logs(logs.clone());
    let arn2 = r2.launch(&job("configured", 1)).await.unwrap();
    let id2 = arn2.rsplit('/').next().unwrap();
    put_logs(&logs, "/jetrun/other", &format!("p/job/{id2}"), &["only line"]).await;
    assert_eq!(
        r2.log_tail(&arn2, 5).await.unwrap(),
        Some((vec!["only line".to_string()], vec![]))
    );
    assert_eq!(r2.result(&arn2).await.unwrap(), None);
    // Without awslogs in the task definition nor a configuration, there are no logs.
    let r3 = runner(&p.url, cfg(&p.url)).with_logs(logs);
    assert_eq!(r3.log_tail(&arn2, 5).await.unwrap(), None);
}

async fn js_as(nats: &jetrun_harness::ShippedNats, user: &str) -> async_nats::jetstream::Context {
    let client = nats
        .connect_options(user)
        .request_timeout(Some(Duration::from_secs(1)))
        .connect(nats.url())
        .await
        .unwrap();
    // A denied JetStream request is never answered: fail it fast.
    async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client)
}

#[tokio::test]
async fn init_creates_the_pacer_bucket_and_the_least_privilege_worker_only_uses_it() {
    // The shipped `infra/nats` configuration: least-privilege users.
    let nats = jetrun_harness::ShippedNats::start().unwrap();
    let bucket = jetrun_runner::ecs::shared_bucket_name("jetrun");
    assert_eq!(bucket, "jetrun-ecs-pacer");
    let cfg = PacerConfig {
        capacity: 3,
        refill_per_second: 20.0,
        shared_bucket: Some(bucket.clone()),
    };
    let worker = js_as(&nats, "worker").await;

    // Before `jetrun init`, the worker may not create it, and says what to do.
    let e = KvTokenBucket::open(&worker, &bucket, "ecs-launch.jetrun", &cfg)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("jetrun init"), "{e}");

    // What `jetrun init` does as the operator (the pacer's bucket declared in the
    // topology, cli/src/cmd/init.rs); a second run changes nothing.
    let operator = js_as(&nats, "operator").await;
    let mut topo = jetrun_nats::Topology::new(jetrun_core::Names::default());
    topo.extra_buckets
        .push(jetrun_runner::ecs::pacer::bucket_config(&bucket, 1));
    let pacer_bucket = |report: Vec<jetrun_nats::topology::Applied>| {
        report
            .into_iter()
            .find(|a| a.kind == "bucket" && a.name == bucket)
            .map(|a| a.change)
    };
    assert_eq!(
        pacer_bucket(topo.apply(&operator).await.unwrap()),
        Some(jetrun_nats::topology::Change::Created)
    );
    assert_eq!(
        pacer_bucket(topo.apply(&operator).await.unwrap()),
        Some(jetrun_nats::topology::Change::Unchanged)
    );
    let kv = operator.get_key_value(&bucket).await.unwrap();
    assert_eq!(kv.status().await.unwrap().history(), 1);

    // The worker paces through it: 3 free tokens, the 4th after 50 ms.
    let p = KvTokenBucket::open(&worker, &bucket, "ecs-launch.jetrun", &cfg)
        .await
        .unwrap();
    let t0 = Instant::now();
    for _ in 0..4 {
        p.acquire().await.unwrap();
    }
    assert!(t0.elapsed() >= Duration::from_millis(45), "{:?}", t0.elapsed());
    let v = kv
        .get("ecs-launch.jetrun")
        .await
        .unwrap()
        .expect("the shared balance");
    let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
    assert!(v["tokens"].as_f64().unwrap() < 1.0, "{v}");

    // But it can create no bucket or stream of its own.
    assert!(
        worker
            .create_key_value(jetrun_runner::ecs::pacer::bucket_config("jetrun-other", 1))
            .await
            .is_err()
    );
    assert!(
        operator.get_key_value("jetrun-other").await.is_err(),
        "no bucket was made"
    );
    assert!(
        worker
            .create_stream(async_nats::jetstream::stream::Config {
                name: "EVIL".into(),
                subjects: vec!["evil.>".into()],
                ..Default::default()
            })
            .await
            .is_err()
    );
    assert!(operator.get_stream("EVIL").await.is_err(), "no stream was made");
}

#[tokio::test]
async fn every_waiting_task_is_polled_in_one_describe_tasks_per_interval() {
    let (_moto, p) = moto_with_cluster().await;
    let c = EcsConfig {
        poll_interval: Duration::from_millis(200),
        ..cfg(&p.url)
    };
    let r = Arc::new(runner(&p.url, c));
    let mut arns = Vec::new();
    for i in 0..8 {
        arns.push(r.launch(&job(&format!("w-{i}"), 1)).await.unwrap());
    }
    let before = p.seen("DescribeTasks").len();
    let t0 = Instant::now();
    let mut waits = Vec::new();
    for a in &arns {
        let (r, a) = (r.clone(), a.clone());
        waits.push(tokio::spawn(async move { r.wait(&a).await }));
    }
    // A few rounds with all eight running.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let seen = p.seen("DescribeTasks");
    let polls: Vec<_> = seen[before..].iter().collect();
    let rounds = t0.elapsed().as_millis() / 200;
    assert!(!polls.is_empty(), "the waits poll");
    assert!(
        polls.len() as u128 <= rounds + 1,
        "{} DescribeTasks for 8 tasks in {rounds} rounds",
        polls.len()
    );
    assert!(
        polls
            .iter()
            .all(|s| s.body["tasks"].as_array().unwrap().len() == 8),
        "each call asks for all eight"
    );
    // The tasks end; every wait sees its own end.
    for a in &arns {
        moto::client(&p.url)
            .stop_task()
            .cluster("jobs")
            .task(a)
            .reason("Essential container in task exited")
            .send()
            .await
            .unwrap();
    }
    for w in waits {
        let st = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("wait ends")
            .unwrap();
        assert!(matches!(st, Ok(TaskStatus::Exited { .. })), "{st:?}");
    }
}
