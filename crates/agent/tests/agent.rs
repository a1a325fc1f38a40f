//! The node agent against a real nats-server and the process runner (real child
//! processes): a task's `$JETRUN_RESULT` reaches its signed `exited` event (or the reason
//! it was refused), and the logs service tails through `Runner::log_tail` and follows by
//! offset.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jetrun_agent::protocol::LogsRequest;
use jetrun_agent::{Agent, Task};
use jetrun_core::job::Transition;
use jetrun_core::schema::types;
use jetrun_core::task::{AttemptKey, SIGNATURE_HEADER, TaskEvent};
use jetrun_core::{JobRecord, JobSpec, Names};
use jetrun_harness::NatsServer;
use jetrun_nats::Topology;
use jetrun_nats::store::Lease;
use jetrun_runner::{LaunchRequest, ProcessRunner, Runner, RunnerError, TaskInfo, TaskStatus};
use tokio_util::sync::CancellationToken;

struct Rig {
    _server: NatsServer,
    _dir: tempfile::TempDir,
    ctx: jetrun_host::Context,
    agent: Agent,
    shutdown: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn rig(wrap: impl FnOnce(ProcessRunner) -> Arc<dyn Runner>) -> Rig {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    Topology::new(Names::default()).apply(&js).await.unwrap();
    let ctx = jetrun_host::Context::from_client(client, Names::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runner = wrap(ProcessRunner::new(dir.path()).unwrap());
    let shutdown = CancellationToken::new();
    let (agent, _, _) = Agent::start(
        ctx.clone(),
        runner,
        jetrun_agent::Config::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    Rig {
        _server: server,
        _dir: dir,
        ctx,
        agent,
        shutdown,
    }
}

/// Admits, claims for this node (with an attempt key), launches through the agent and
/// hands the task over, as dispatch does. Returns the key.
async fn run(r: &Rig, id: &str, script: &str) -> AttemptKey {
    let store = &r.ctx.store;
    let spec = JobSpec::new("q", "host", vec!["sh".into(), "-c".into(), script.into()]);
    let a = store
        .admit(JobRecord::new(id.into(), spec.clone(), None, None))
        .await
        .unwrap();
    let key = AttemptKey::generate();
    let mut keyed = a.record().clone();
    keyed.attempt_key = Some(key.clone());
    let claim = Transition::Claim {
        worker_id: r.ctx.worker_id.clone(),
        node_id: r.ctx.node_id.clone(),
    };
    let (rec, rev) = store.transition_at(&keyed, a.revision(), &claim).await.unwrap();
    let lease = Lease {
        job_id: id.into(),
        attempt: rec.attempt,
        worker_id: r.ctx.worker_id.clone(),
        node_id: r.ctx.node_id.clone(),
    };
    let lease_rev = store
        .acquire_lease(&lease, Duration::from_secs(10))
        .await
        .unwrap();
    let task_ref = r
        .agent
        .launch(&LaunchRequest::new(id, rec.attempt, spec, None))
        .await
        .unwrap();
    let (rec, _) = store
        .transition_at(
            &rec,
            rev,
            &Transition::Started {
                task_ref: task_ref.clone(),
            },
        )
        .await
        .unwrap();
    r.agent.supervise(Task {
        job_id: id.into(),
        attempt: rec.attempt,
        task_ref,
        timeout: Duration::from_secs(30),
        started_at: jetrun_core::now(),
        lease_revision: lease_rev,
        cancel_requested: false,
        traceparent: None,
        attempt_key: Some(key.clone()),
        guard: None,
    });
    key
}

/// The job's `exited` event as published, after checking its signature with `key`.
async fn exited(mut sub: async_nats::Subscriber, key: &AttemptKey) -> TaskEvent {
    let m = tokio::time::timeout(Duration::from_secs(15), sub.next())
        .await
        .expect("an exited event")
        .unwrap();
    let sig = m
        .headers
        .as_ref()
        .and_then(|h| h.get(SIGNATURE_HEADER))
        .map(|v| v.as_str().to_string());
    jetrun_agent::signing::verify(
        key,
        sig.as_deref(),
        types::TASK_LIFECYCLE,
        m.subject.as_str(),
        &m.payload,
    )
    .expect("signed over the body, result included");
    serde_json::from_slice(&m.payload).unwrap()
}

async fn subscribe_exited(r: &Rig, id: &str) -> async_nats::Subscriber {
    let sub = r
        .ctx
        .client
        .subscribe(r.ctx.names.task("exited", id))
        .await
        .unwrap();
    r.ctx.client.flush().await.unwrap();
    sub
}

#[tokio::test]
async fn the_result_a_task_leaves_is_in_its_signed_exited_event() {
    let r = rig(|p| Arc::new(p)).await;
    let cases: [(&str, &str); 4] = [
        (
            "ok",
            r#"printf '{"first_bad":"abc123","n":3}' > "$JETRUN_RESULT""#,
        ),
        ("array", r#"echo '[1,2]' > "$JETRUN_RESULT"; exit 2"#),
        ("big", r#"head -c 20000 /dev/zero | tr '\0' a > "$JETRUN_RESULT""#),
        ("none", "true"),
    ];
    let mut subs = Vec::new();
    for (id, script) in cases {
        let sub = subscribe_exited(&r, id).await;
        let key = run(&r, id, script).await;
        subs.push((id, sub, key));
    }
    for (id, sub, key) in subs {
        let ev = exited(sub, &key).await;
        match id {
            "ok" => {
                assert_eq!(ev.exit_code, Some(0));
                let res = ev.result.expect("the result");
                assert_eq!(res["first_bad"], "abc123");
                assert_eq!(res["n"], 3);
                assert_eq!(ev.result_error, None);
            }
            "array" => {
                // A bad result never changes how the task ended.
                assert_eq!(ev.exit_code, Some(2));
                assert_eq!(ev.result, None);
                let e = ev.result_error.expect("why it was refused");
                assert!(e.contains("JSON object"), "{e}");
            }
            "big" => {
                assert_eq!(ev.exit_code, Some(0));
                assert_eq!(ev.result, None);
                let e = ev.result_error.expect("why it was refused");
                assert!(e.contains("16384 allowed"), "{e}");
            }
            _ => {
                assert_eq!(ev.exit_code, Some(0));
                assert_eq!((ev.result, ev.result_error), (None, None));
            }
        }
    }
}

fn logs_req(id: &str, tail: usize) -> LogsRequest {
    LogsRequest {
        job_id: id.into(),
        tail,
        stdout_from: None,
        stderr_from: None,
    }
}

async fn wait_for(p: &Path) {
    for _ in 0..200 {
        if p.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never appeared", p.display());
}

#[tokio::test]
async fn logs_are_tailed_over_nats_and_followed_by_offset() {
    let r = rig(|p| Arc::new(p)).await;
    let dir = tempfile::tempdir().unwrap();
    let (ready, go) = (dir.path().join("ready"), dir.path().join("go"));
    let script = format!(
        // The loop also ends when the test's directory is gone, so a test that ends
        // before the script sees `go` leaves no process behind polling forever.
        "echo a; echo b; echo c; echo oops >&2; touch {}; while [ ! -e {} ] && [ -d {} ]; do sleep 0.02; done; echo d; echo e",
        ready.display(),
        go.display(),
        dir.path().display()
    );
    let sub = subscribe_exited(&r, "logs").await;
    run(&r, "logs", &script).await;
    wait_for(&ready).await;
    // Over the wire, as `jetrun jobs logs` asks.
    let node = r.agent.node_id().to_string();
    let t = Duration::from_secs(5);
    let first = jetrun_node_request(&r, &node, &logs_req("logs", 2), t).await;
    assert_eq!(first.error, None);
    assert_eq!(first.stdout, ["b", "c"]);
    assert_eq!(first.stderr, ["oops"]);
    assert_eq!(first.stdout_offset, 6, "after a, b and c");
    std::fs::write(&go, "").unwrap();
    let mut follow = logs_req("logs", 2);
    follow.stdout_from = Some(first.stdout_offset);
    follow.stderr_from = Some(first.stderr_offset);
    let mut seen = Vec::new();
    for _ in 0..100 {
        let next = jetrun_node_request(&r, &node, &follow, t).await;
        assert_eq!(next.error, None);
        assert!(next.stderr.is_empty(), "nothing new on stderr");
        seen.extend(next.stdout);
        follow.stdout_from = Some(next.stdout_offset);
        if seen.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, ["d", "e"], "only what followed, once");
    drop(sub);
    // No such job.
    let none = r.agent.logs(logs_req("nope", 5)).await;
    assert_eq!(none.error.as_deref(), Some("no such job"));
}

async fn jetrun_node_request(
    r: &Rig,
    node: &str,
    req: &LogsRequest,
    t: Duration,
) -> jetrun_agent::protocol::LogsReply {
    jetrun_agent::request_logs(&r.ctx.client, &r.ctx.names, node, req, t)
        .await
        .unwrap()
}

/// A runner whose logs are not files on this node (as ECS keeps them in CloudWatch
/// Logs, which cannot run here): the process runner for the task itself, `log_tail`
/// answered from memory, no `log_paths`.
struct RemoteLogs(ProcessRunner);

#[async_trait::async_trait]
impl Runner for RemoteLogs {
    fn name(&self) -> &'static str {
        "remote-logs"
    }
    async fn launch(&self, req: &LaunchRequest) -> Result<String, RunnerError> {
        self.0.launch(req).await
    }
    async fn wait(&self, t: &str) -> Result<TaskStatus, RunnerError> {
        self.0.wait(t).await
    }
    async fn describe(&self, t: &str) -> Result<TaskStatus, RunnerError> {
        self.0.describe(t).await
    }
    async fn stop(&self, t: &str, grace: Duration) -> Result<(), RunnerError> {
        self.0.stop(t, grace).await
    }
    async fn list(&self) -> Result<Vec<TaskInfo>, RunnerError> {
        self.0.list().await
    }
    async fn remove(&self, t: &str) -> Result<(), RunnerError> {
        self.0.remove(t).await
    }
    fn log_paths(&self, _: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        None
    }
    async fn log_tail(
        &self,
        t: &str,
        lines: usize,
    ) -> Result<Option<(Vec<String>, Vec<String>)>, RunnerError> {
        let all: Vec<String> = (1..=5).map(|i| format!("{t} line {i}")).collect();
        Ok(Some((all[5 - lines.min(5)..].to_vec(), vec![])))
    }
}

#[tokio::test]
async fn logs_come_from_the_runner_even_without_log_files() {
    let r = rig(|p| Arc::new(RemoteLogs(p))).await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    run(
        &r,
        "remote",
        // Ends when the directory is gone too (see the test above).
        &format!(
            "while [ ! -e {} ] && [ -d {} ]; do sleep 0.02; done",
            go.display(),
            dir.path().display()
        ),
    )
    .await;
    let got = r.agent.logs(logs_req("remote", 2)).await;
    assert_eq!(got.error, None);
    let t = got.task_ref.clone().unwrap();
    assert_eq!(got.stdout, [format!("{t} line 4"), format!("{t} line 5")]);
    // Following needs log files: said, not faked.
    let mut follow = logs_req("remote", 2);
    follow.stdout_from = Some(0);
    let e = r.agent.logs(follow).await.error.unwrap();
    assert!(e.contains("no log files to follow"), "{e}");
    std::fs::write(&go, "").unwrap();
}
