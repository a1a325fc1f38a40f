//! `jetrun github` with the shipped least-privilege NATS users (`infra/nats/accounts.conf`)
//! against a real nats-server and the real binary: `init` as the operator creates the
//! github function's consumers and bucket, `serve` as `ingest` takes a webhook, `route` as
//! `route` and `github` as `github` read it; an `issue_comment` command from an author
//! without the required association is answered on the issue (through a local stand-in for
//! the GitHub REST API, below: GitHub itself cannot be reached from a test) and starts no
//! job, with no permission refused. Then the `github` credential tries what a thief would
//! (submit a job, write a job record, delete its consumer) and is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use jetrun_harness::{ShippedNats, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_jetrun");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/github-webhooks");

/// A child killed on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn jetrun(nats: &ShippedNats, user: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env("JETRUN_NATS_URL", nats.url())
        .env("JETRUN_NATS_USER", user)
        .env("JETRUN_NATS_PASSWORD", nats.password(user))
        .env_remove("JETRUN_NATS_TOKEN")
        .env_remove("JETRUN_NATS_CREDS")
        .env_remove("JETRUN_GITHUB_TOKEN");
    c
}

/// Starts a command and waits until its stdout says `ready` or its log shows `marker`.
fn start(mut cmd: Command, dir: &std::path::Path, name: &str, marker: Option<&str>) -> Proc {
    let path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&path).unwrap();
    let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let proc = Proc(child);
    match marker {
        None => match BufReader::new(out).lines().next() {
            Some(Ok(l)) if l.starts_with("ready") => proc,
            other => panic!(
                "{name} did not come up ({other:?}): {}",
                std::fs::read_to_string(&path).unwrap_or_default()
            ),
        },
        Some(marker) => {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.contains(marker) {
                    return proc;
                }
                assert!(Instant::now() < deadline, "{name} did not start: {text}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn http(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A nats-server with the shipped config (passwords filled in) and `jetrun init` applied.
struct Deployment {
    /// The processes' logs and files (the server's are the harness's).
    dir: tempfile::TempDir,
    nats: ShippedNats,
}

impl Deployment {
    fn start() -> Self {
        let nats = ShippedNats::start().unwrap();
        assert!(nats.users().any(|u| u == "github"), "no github user shipped");
        let out = jetrun(&nats, "operator").arg("init").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        for made in [
            "consumer github\n",
            "consumer github-jobs\n",
            "bucket   jetrun-github\n",
        ] {
            assert!(report.contains(made), "init did not report {made:?}: {report}");
        }
        Self {
            dir: tempfile::tempdir().unwrap(),
            nats,
        }
    }

    /// The `jetrun` binary with `user`'s credentials.
    fn jetrun(&self, user: &str) -> Command {
        jetrun(&self.nats, user)
    }

    async fn client(&self, user: &str) -> async_nats::Client {
        self.nats.client(user).await
    }

    fn violations(&self) -> Vec<String> {
        self.nats.violations()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// Asserts that one attempt was refused: an error or no answer (a denied publish is dropped).
async fn refused<T, E: std::fmt::Debug>(what: &str, r: impl std::future::IntoFuture<Output = Result<T, E>>) {
    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), r.into_future()).await {
        panic!("{what}: allowed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_answers_a_refused_command_with_only_its_own_permissions() {
    let d = Deployment::start();
    let dir = d.dir.path().to_path_buf();
    let (api, seen) = jetrun_harness::github_standin().unwrap();

    let rules = dir.join("rules.yaml");
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
    let http_addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut serve = d.jetrun("ingest");
    serve.args(["serve", "--insecure-dev", "--listen", &http_addr.to_string()]);
    let _serve = start(serve, &dir, "serve", None);
    let mut route = d.jetrun("route");
    route.args(["route", "--rules", &rules.display().to_string()]);
    let _route = start(route, &dir, "route", Some("consumer host started"));
    // The github function's settings through --config, one of them overridden by a flag.
    let cfg = dir.join("github.yaml");
    std::fs::write(
        &cfg,
        format!(
            "rules_file: {}\napi_url: http://127.0.0.1:9/unused\npublic_url: https://jetrun.example\nattempts: 3\n",
            rules.display()
        ),
    )
    .unwrap();
    let mut github = d.jetrun("github");
    github.args([
        "github",
        "--config",
        &cfg.display().to_string(),
        "--github-api-url",
        &api,
    ]);
    let _github = start(github, &dir, "github", Some("github function answering"));

    // A drive-by commenter (association NONE) asks for a run.
    let mut payload: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{FIXTURES}/issue_comment/created.payload.json")).unwrap(),
    )
    .unwrap();
    payload["comment"]["body"] = "/gh-test now".into();
    payload["comment"]["author_association"] = "NONE".into();
    let repo = payload["repository"]["full_name"].as_str().unwrap().to_string();
    let issue = payload["issue"]["number"].as_u64().unwrap();
    let delivery = "9a1e3f7a-0000-4000-8000-000000000012";
    let resp = http(
        http_addr,
        "/webhooks/github",
        &[
            ("X-GitHub-Event", "issue_comment"),
            ("X-GitHub-Delivery", delivery),
        ],
        &payload.to_string(),
    );
    assert!(resp.starts_with("HTTP/1.1 2"), "{resp}");

    // The refusal is posted on the issue, once.
    let want_path = format!("/repos/{repo}/issues/{issue}/comments");
    let deadline = Instant::now() + Duration::from_secs(20);
    let posts = loop {
        let posts: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p, _)| m == "POST" && *p == want_path)
            .cloned()
            .collect();
        if !posts.is_empty() || Instant::now() > deadline {
            break posts;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(posts.len(), 1, "github log: {}", d.log("github"));
    let body = posts[0].2["body"].as_str().unwrap_or_default();
    assert!(body.contains(":no_entry:") && body.contains("NONE"), "{body}");

    // ...and no job was started for it.
    let job = jetrun_core::job::job_id_for_key("default", &jetrun_route::idempotency_key(delivery, "gh"));
    let out = d
        .jetrun("operator")
        .args(["jobs", "get", &job, "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a refused command started job {job}");
    assert!(
        d.violations().is_empty(),
        "the github function needs no refused permission: {:#?}\ngithub log: {}",
        d.violations(),
        d.log("github")
    );

    // The github credential, stolen: no job submission, no job record, no consumer changes.
    let names = jetrun_core::Names::default();
    let opjs = jetstream::new(d.client("operator").await);
    let jobs_before = opjs
        .get_stream(names.stream_jobs())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    let gh = d.client("github").await;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .ack_timeout(Duration::from_secs(1))
        .build(gh.clone());
    refused(
        "github: publish a job submission",
        js.publish(
            format!("{}.job.submit.default", names.prefix()),
            r#"{"queue":"default","image":"host","command":["true"]}"#.into(),
        )
        .await
        .unwrap(),
    )
    .await;
    refused(
        "github: write the jobs bucket",
        js.publish(format!("$KV.{}.forged", names.bucket_jobs()), "{}".into())
            .await
            .unwrap(),
    )
    .await;
    refused(
        "github: ask job control to submit",
        gh.request(
            format!("{}.ctl.submit", names.prefix()),
            r#"{"queue":"default","image":"host","command":["true"]}"#.into(),
        ),
    )
    .await;
    refused(
        "github: delete its consumer",
        js.get_stream(names.stream_webhooks())
            .await
            .unwrap()
            .delete_consumer("github"),
    )
    .await;

    let jobs_after = opjs
        .get_stream(names.stream_jobs())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(jobs_before, jobs_after, "a submission got through");
    let kv = opjs.get_key_value(names.bucket_jobs()).await.unwrap();
    assert!(
        kv.get("forged").await.unwrap().is_none(),
        "a job record was written"
    );
    opjs.get_stream(names.stream_webhooks())
        .await
        .unwrap()
        .consumer_info("github")
        .await
        .expect("the github consumer survives");
    assert!(
        !d.violations().is_empty(),
        "the attempts were not refused by the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_without_its_consumer_says_to_run_init() {
    let d = Deployment::start();
    // An operator removed the consumer (or `init` predates the function): the `github`
    // user may not create it, so the function stops and says what to do.
    let names = jetrun_core::Names::default();
    let opjs = jetstream::new(d.client("operator").await);
    opjs.get_stream(names.stream_job_events())
        .await
        .unwrap()
        .delete_consumer("github-jobs")
        .await
        .unwrap();
    let rules = d.dir.path().join("rules.yaml");
    std::fs::write(&rules, "version: 1\nrules: []\n").unwrap();
    let out = d
        .jetrun("github")
        .args(["github", "--rules", &rules.display().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("github-jobs") && err.contains("run `jetrun init`"),
        "{err}"
    );
}
