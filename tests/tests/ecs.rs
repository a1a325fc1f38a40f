//! Jobs as ECS tasks end to end, through the real binaries: `jetrun serve` (the HTTP API)
//! and `jetrun worker --runner ecs` as child processes against a real nats-server and
//! moto's ECS (`AWS_ENDPOINT_URL`, through the runner tests' proxy, which fixes the one
//! moto answer the SDK cannot parse). A job submitted with `POST /v1/jobs` becomes a task
//! in moto (checked through the ECS API); its "ECS Task State Change" event, as
//! EventBridge delivers it to the Lambda, goes through the task-state bridge
//! (`jetrun_ecs_bridge::Bridge::handle`, what the Lambda's handler calls), and the job
//! ends as `GET /v1/jobs/{id}` shows. moto must be installed (`scripts/setup.sh`): a
//! missing `moto_server` fails these tests, it does not skip them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../crates/runner/tests/support/moto.rs"]
mod moto;
#[path = "../../crates/runner/tests/support/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::Env;
use jetrun_ecs_bridge::{Bridge, Config, Handled, NatsPublisher};

const OPERATOR: &str = "operator-token-0123456789";

/// The `jetrun` binary, with the `ecs` feature: the workspace build (`--all-features`,
/// what CI runs) has it; a binary without it is rebuilt with it.
fn ecs_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = common::jetrun_bin();
        // Only a build without the feature carries this message (cli/src/cmd/worker.rs).
        let lacks_ecs = || {
            Command::new("grep")
                .args(["-q", "-F", "needs a jetrun built with the `ecs` feature"])
                .arg(&bin)
                .status()
                .unwrap()
                .success()
        };
        if std::env::var_os("JETRUN_BIN").is_none() && lacks_ecs() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "-p", "jetrun", "--features", "ecs"])
                .status()
                .unwrap();
            assert!(st.success(), "building jetrun with the ecs feature failed");
        }
        assert!(!lacks_ecs(), "{} has no ECS runner", bin.display());
        bin
    })
    .clone()
}

/// A `jetrun` child process, its log in a file, killed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Spawns `jetrun ARGS` with `envs`; returns once it printed its `ready` line (and
    /// that line).
    fn spawn(args: &[&str], envs: &[(&str, &str)], log: &Path) -> (Proc, String) {
        let file = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new(ecs_bin());
        cmd.args(args)
            .env("RUST_LOG", "info,async_nats=warn,aws=warn")
            .env_remove("JETRUN_API_TOKENS")
            .env_remove("JETRUN_GITHUB_WEBHOOK_SECRET")
            .stdout(Stdio::piped())
            .stderr(file);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let p = Proc {
            child,
            log: log.to_path_buf(),
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => (p, line),
            Err(_) => panic!("jetrun {args:?} not ready in 30 s; log:\n{}", p.log_text()),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nats-server, moto (behind the proxy), `jetrun serve`, `jetrun worker --runner ecs`
/// and the bridge over the same store.
/// Fields drop in order: the processes go first, while NATS and moto are still there to
/// shut down against.
struct Rig {
    worker: Proc,
    _serve: Proc,
    bridge: Bridge,
    proxy: proxy::Proxy,
    ecs: aws_sdk_ecs::Client,
    http: reqwest::Client,
    api: String,
    _moto: moto::Moto,
    env: Env,
}

impl Rig {
    async fn start() -> Rig {
        let env = Env::start().await;
        let m = moto::start().await;
        let proxy = proxy::Proxy::start(&m.url).await;
        let ecs = moto::client(&proxy.url);
        moto::setup(&ecs).await;
        let nats = env.server.url();
        // `jetrun init` (the operator's step) also creates the ECS launch pacer's bucket,
        // which the worker below paces through.
        let init = Command::new(ecs_bin())
            .args(["init", "--json"])
            .env("JETRUN_NATS_URL", &nats)
            .output()
            .unwrap();
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
        let report: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
        assert!(
            report
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "jetrun-ecs-pacer"
                    && r["kind"] == "bucket"
                    && r["change"] == "created"),
            "{report}"
        );
        let port = jetrun_harness::free_port().unwrap().to_string();
        let addr = format!("127.0.0.1:{port}");
        let (serve, _) = Proc::spawn(
            &["serve", "--http", &addr],
            &[
                ("JETRUN_NATS_URL", &nats),
                ("JETRUN_GITHUB_WEBHOOK_SECRET", "webhook-secret"),
                ("JETRUN_API_TOKENS", &format!("*:{OPERATOR}")),
            ],
            &env.dir.path().join("serve.log"),
        );
        // The worker finds moto the way the SDK finds any endpoint override.
        let ecs_config = serde_json::json!({
            "cluster": "jobs",
            "task_definition": "job",
            "subnets": ["subnet-0a"],
            "security_groups": ["sg-jobs"],
            "offline_security_groups": ["sg-offline"],
            "poll_interval": "200ms",
            "pacer": {"shared_bucket": "jetrun-ecs-pacer"},
            "retry": {"attempts": 4, "base": "20ms", "max": "100ms"}
        })
        .to_string();
        let data = env.dir.path().join("worker");
        let (worker, _) = Proc::spawn(
            &[
                "worker",
                "--runner",
                "ecs",
                "--ecs-config",
                &ecs_config,
                "--queue",
                "default",
                "--data-dir",
                &data.display().to_string(),
                "--lease-ttl",
                "2s",
                "--lease-renew",
                "500ms",
                "--sweep-every",
                "1s",
                "--retry-base",
                "200ms",
                "--callback-secret",
                CALLBACK_SECRET,
                "--callback-allow-hosts",
                "127.0.0.1/32",
            ],
            &[
                ("JETRUN_NATS_URL", &nats),
                ("AWS_ENDPOINT_URL", &proxy.url),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("AWS_CONFIG_FILE", "/dev/null"),
                ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            ],
            &env.dir.path().join("worker.log"),
        );
        // The bridge as the Lambda builds it: the job store and a signing publisher.
        let bridge = Bridge::new(
            Config::default(),
            Arc::new(env.store.clone()),
            Arc::new(NatsPublisher::new(
                env.js.clone(),
                env.names.clone(),
                "jetrun/ecs-bridge",
            )),
        );
        Rig {
            env,
            _moto: m,
            proxy,
            ecs,
            http: reqwest::Client::new(),
            api: format!("http://{addr}"),
            worker,
            _serve: serve,
            bridge,
        }
    }

    /// `POST /v1/jobs` as an operator; returns the job id.
    async fn submit(&self, script: &str) -> String {
        self.submit_with(script, serde_json::json!({})).await
    }

    /// `POST /v1/jobs` with more spec fields (`extra`, merged in); returns the job id.
    async fn submit_with(&self, script: &str, extra: serde_json::Value) -> String {
        let mut spec = serde_json::json!({
            "queue": "default",
            "image": "busybox",
            "command": ["sh", "-c", script],
            "env": {"GREETING": "hi"},
            "resources": {"cpus": 0.5, "memory_mb": 1024}
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let r = self
            .http
            .post(format!("{}/v1/jobs", self.api))
            .bearer_auth(OPERATOR)
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
        let body: serde_json::Value = r.json().await.unwrap();
        body["id"].as_str().unwrap().to_string()
    }

    /// `GET /v1/jobs/{id}`.
    async fn get(&self, id: &str) -> serde_json::Value {
        let r = self
            .http
            .get(format!("{}/v1/jobs/{id}", self.api))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.unwrap()
    }

    /// Polls `GET /v1/jobs/{id}` until `pred` holds.
    async fn wait_for(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let j = self.get(id).await;
            if pred(&j) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not {what}: {j}\nworker log:\n{}",
                self.worker.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until attempt `attempt` of the job runs; returns its task ARN.
    async fn running(&self, id: &str, attempt: u64) -> String {
        let j = self
            .wait_for(id, &format!("running attempt {attempt}"), |j| {
                j["status"] == "running" && j["attempt"] == attempt
            })
            .await;
        j["task_ref"].as_str().unwrap().to_string()
    }

    /// The task as moto holds it, with tags.
    async fn task(&self, arn: &str) -> aws_sdk_ecs::types::Task {
        let out = self
            .ecs
            .describe_tasks()
            .cluster("jobs")
            .tasks(arn)
            .include(aws_sdk_ecs::types::TaskField::Tags)
            .send()
            .await
            .unwrap();
        out.tasks()[0].clone()
    }

    /// The "ECS Task State Change" event ECS sends when `arn` stops (the documented
    /// shape; `startedBy`, `group` and the overrides as moto holds them).
    async fn stopped_event(&self, arn: &str, stop_code: &str, exit_code: Option<i32>) -> serde_json::Value {
        let t = self.task(arn).await;
        let o = &t.overrides().unwrap().container_overrides()[0];
        let env: Vec<_> = o
            .environment()
            .iter()
            .map(|kv| serde_json::json!({"name": kv.name(), "value": kv.value()}))
            .collect();
        let reason = match stop_code {
            "SpotInterruption" => "Your Spot Task was interrupted.",
            _ => "Essential container in task exited",
        };
        serde_json::json!({
            "version": "0",
            "id": format!("ev-{}", arn.rsplit('/').next().unwrap()),
            "detail-type": "ECS Task State Change",
            "source": "aws.ecs",
            "account": "123456789012",
            "time": "2026-12-01T12:00:00Z",
            "region": "us-east-1",
            "resources": [arn],
            "detail": {
                "clusterArn": t.cluster_arn(),
                "capacityProviderName": "FARGATE_SPOT",
                "containers": [{
                    "containerArn": format!("{arn}/job"),
                    "lastStatus": "STOPPED",
                    "name": "job",
                    "exitCode": exit_code,
                    "taskArn": arn
                }],
                "desiredStatus": "STOPPED",
                "group": t.group(),
                "lastStatus": "STOPPED",
                "launchType": "FARGATE",
                "overrides": {"containerOverrides": [{"name": "job", "environment": env}]},
                "startedBy": t.started_by(),
                "stopCode": stop_code,
                "stoppedReason": reason,
                "stoppedAt": "2026-12-01T12:00:00Z",
                "taskArn": arn,
                "taskDefinitionArn": t.task_definition_arn(),
                "version": 5
            }
        })
    }

    /// Feeds the event through the bridge; it must publish.
    async fn post_to_bridge(&self, ev: &serde_json::Value) {
        match self.bridge.handle(ev).await.unwrap() {
            Handled::Published(_) => {}
            h => panic!("the bridge did not report the event: {h:?}"),
        }
    }
}

/// The secret keying HTTP completion callbacks in these tests.
const CALLBACK_SECRET: &str = "callback-secret";

/// A local HTTP endpoint recording completion callbacks (answers 200).
struct CallbackReceiver {
    addr: std::net::SocketAddr,
    got: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>>,
}

impl CallbackReceiver {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        let body = buf[end + 4..end + 4 + len].to_vec();
                        let _ = tx.send((head, body));
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                });
            }
        });
        Self {
            addr,
            got: tokio::sync::Mutex::new(rx),
        }
    }

    /// The next request (head, body), waiting up to `within`.
    async fn next(&self, within: Duration) -> (String, Vec<u8>) {
        tokio::time::timeout(within, self.got.lock().await.recv())
            .await
            .expect("a completion callback in time")
            .unwrap()
    }

    /// Whether no further request arrives within `within`.
    async fn is_quiet(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.got.lock().await.recv())
            .await
            .is_err()
    }
}

fn tags(t: &aws_sdk_ecs::types::Task) -> BTreeMap<String, String> {
    t.tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_submit_becomes_an_ecs_task_and_the_bridge_event_ends_it_with_its_exit_code() {
    let r = Rig::start().await;
    let hook = CallbackReceiver::start().await;
    let ok = r
        .submit_with(
            "echo done",
            serde_json::json!({"callback": {"http": format!("http://{}/done", hook.addr)}}),
        )
        .await;
    let bad = r.submit("exit 3").await;
    let ok_arn = r.running(&ok, 1).await;
    let bad_arn = r.running(&bad, 1).await;

    // The task moto holds: one per job, started by the job, tagged, with the overrides.
    assert_eq!(moto::tasks_started_by(&r.ecs, &ok).await, vec![ok_arn.clone()]);
    assert_eq!(moto::tasks_started_by(&r.ecs, &bad).await, vec![bad_arn.clone()]);
    let t = r.task(&ok_arn).await;
    assert_eq!(t.started_by(), Some(ok.as_str()));
    assert_eq!(t.group(), Some("jetrun"));
    let tg = tags(&t);
    assert_eq!(tg["jetrun:job-id"], ok);
    assert_eq!(tg["jetrun:queue"], "default");
    assert_eq!(tg["jetrun:attempt"], "1");
    assert_eq!(tg["jetrun:deployment"], "jetrun");
    let node = r.get(&ok).await["node_id"].as_str().unwrap().to_string();
    assert_eq!(tg["jetrun:node"], node, "tagged with the worker's node");
    let o = t.overrides().unwrap();
    assert_eq!((o.cpu(), o.memory()), (Some("512"), Some("1024")), "Fargate size");
    let c = &o.container_overrides()[0];
    assert_eq!(c.name(), Some("job"));
    assert_eq!(c.command(), ["sh", "-c", "echo done"]);
    let env: BTreeMap<_, _> = c
        .environment()
        .iter()
        .map(|kv| (kv.name().unwrap(), kv.value().unwrap()))
        .collect();
    assert_eq!(env["GREETING"], "hi");
    assert_eq!(env["JETRUN_JOB_ID"], ok);
    assert_eq!(env["JETRUN_ATTEMPT"], "1");
    assert!(env.contains_key("TRACEPARENT"), "{env:?}");
    let run = r.proxy.seen("RunTask");
    let body = &run
        .iter()
        .find(|s| s.body["startedBy"] == ok.as_str())
        .unwrap()
        .body;
    assert_eq!(body["clientToken"], format!("{ok}-1"));
    assert_eq!(body["launchType"], "FARGATE");
    assert_eq!(
        body["networkConfiguration"]["awsvpcConfiguration"]["securityGroups"],
        serde_json::json!(["sg-offline"]),
        "a job without network gets the offline groups"
    );

    // Both launches took their token from the deployment's shared pacer bucket.
    let kv = r.env.js.get_key_value("jetrun-ecs-pacer").await.unwrap();
    let balance: serde_json::Value =
        serde_json::from_slice(&kv.get("ecs-launch.jetrun").await.unwrap().expect("pacer state")).unwrap();
    assert!(balance["tokens"].as_f64().unwrap() <= 99.0, "{balance}");

    // ECS reports both ends; the bridge turns them into the jobs' outcomes.
    r.post_to_bridge(
        &r.stopped_event(&ok_arn, "EssentialContainerExited", Some(0))
            .await,
    )
    .await;
    r.post_to_bridge(
        &r.stopped_event(&bad_arn, "EssentialContainerExited", Some(3))
            .await,
    )
    .await;
    let j = r.wait_for(&ok, "terminal", |j| j["status"] != "running").await;
    assert_eq!(
        (j["status"].as_str(), j["exit_code"].as_i64()),
        (Some("succeeded"), Some(0)),
        "{j}"
    );
    let j = r.wait_for(&bad, "terminal", |j| j["status"] != "running").await;
    assert_eq!(
        (j["status"].as_str(), j["exit_code"].as_i64()),
        (Some("failed"), Some(3)),
        "{j}"
    );
    assert_eq!(j["error"]["kind"], "exit_code", "{j}");
    assert_eq!(j["attempt"], 1, "a job's own failure is not retried: {j}");

    // The completion callback: signed, with the outcome, in the job's trace.
    let (head, body) = hook.next(Duration::from_secs(15)).await;
    assert!(head.starts_with("POST /done HTTP/1.1"), "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["job_id"], ok.as_str(), "{v}");
    assert_eq!(
        (v["to"].as_str(), v["exit_code"].as_i64()),
        (Some("succeeded"), Some(0)),
        "{v}"
    );
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, val) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| val.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} header in {head}"))
    };
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(CALLBACK_SECRET.as_bytes()).unwrap();
    hmac::Mac::update(&mut mac, &body);
    let want = format!("sha256={}", hex::encode(hmac::Mac::finalize(mac).into_bytes()));
    assert_eq!(header("x-jetrun-signature-256"), want);
    let trace_id = |tp: &str| tp.split('-').nth(1).unwrap().to_string();
    assert_eq!(
        trace_id(&header("traceparent")),
        trace_id(env["TRACEPARENT"]),
        "the callback continues the trace the ECS task was given"
    );
    assert!(
        hook.is_quiet(Duration::from_millis(500)).await,
        "one callback per job"
    );
    // The worker lets go of the ended jobs' tasks (moto keeps tasks running until stopped).
    for arn in [&ok_arn, &bad_arn] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.task(arn).await.last_status() != Some("STOPPED") {
            assert!(
                Instant::now() < deadline,
                "task {arn} of an ended job not stopped"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spot_interruption_is_retried_as_a_new_attempt_not_failed() {
    let r = Rig::start().await;
    let id = r.submit("echo done").await;
    let first = r.running(&id, 1).await;

    // Fargate Spot reclaims the capacity: the container is killed, not the job's fault.
    r.post_to_bridge(&r.stopped_event(&first, "SpotInterruption", None).await)
        .await;
    let second = r.running(&id, 2).await;
    assert_ne!(first, second, "attempt 2 is a new task");
    let t = r.task(&second).await;
    assert_eq!(tags(&t)["jetrun:attempt"], "2");
    let started = moto::tasks_started_by(&r.ecs, &id).await;
    assert_eq!(started.len(), 2, "one task per attempt: {started:?}");
    let j = r.get(&id).await;
    assert!(
        j["error"]["kind"].as_str().is_some_and(|k| k != "exit_code"),
        "attempt 1 ended lost, not by the job: {j}"
    );

    // The old attempt's events change nothing any more; the new one's end the job.
    assert!(matches!(
        r.bridge
            .handle(&r.stopped_event(&first, "EssentialContainerExited", Some(1)).await)
            .await
            .unwrap(),
        Handled::Ignored(_)
    ));
    r.post_to_bridge(
        &r.stopped_event(&second, "EssentialContainerExited", Some(0))
            .await,
    )
    .await;
    let j = r.wait_for(&id, "terminal", |j| j["status"] != "running").await;
    assert_eq!(
        (
            j["status"].as_str(),
            j["exit_code"].as_i64(),
            j["attempt"].as_u64()
        ),
        (Some("succeeded"), Some(0), Some(2)),
        "{j}"
    );
}
