//! The shipped least-privilege NATS configuration (`infra/nats/jetrun.conf`: one user per
//! function) against the real binary: `init` as the operator, `serve` as `ingest`,
//! `worker` as `worker`, and a job submitted over HTTP runs to `succeeded` with a NATS
//! completion callback. A permission missing from the config fails this test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jetrun_harness::{ServerOptions, ServerProcess, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_jetrun");
const USERS: [&str; 5] = ["ingest", "route", "worker", "autoscale", "operator"];

/// A child killed on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pass(user: &str) -> String {
    format!("{user}-s3cret-pass")
}

fn jetrun(url: &str, user: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env("JETRUN_NATS_URL", url)
        .env("JETRUN_NATS_USER", user)
        .env("JETRUN_NATS_PASSWORD", pass(user))
        .env_remove("JETRUN_NATS_TOKEN")
        .env_remove("JETRUN_NATS_CREDS");
    c
}

/// Starts a long-running command and waits for its `ready` line on stdout.
fn start(mut cmd: Command, dir: &std::path::Path, name: &str) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let proc = Proc(child);
    match lines.next() {
        Some(Ok(l)) if l.starts_with("ready") => proc,
        other => panic!(
            "{name} did not come up ({other:?}): {}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        ),
    }
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_function_runs_with_only_its_own_permissions() {
    let dir = tempfile::tempdir().unwrap();
    // The shipped config, with passwords filled in and paths/ports moved for the test.
    let mut conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../infra/nats/jetrun.conf"
    ))
    .unwrap()
    .replace("http: 127.0.0.1:8222", "");
    for u in USERS {
        conf = conf.replace(
            &format!("$JETRUN_{}_PASSWORD", u.to_uppercase()),
            &format!("\"{}\"", pass(u)),
        );
    }
    // The store directory comes from the harness (`-sd`); nats-server refuses both.
    conf = conf.replace("store_dir: /var/lib/jetrun/jetstream", "");
    let conf_path = dir.path().join("jetrun.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let server = ServerProcess::spawn(ServerOptions {
        addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        store_dir: dir.path().join("js"),
        name: "perm".into(),
        cluster: None,
        log_file: dir.path().join("nats.log"),
        extra_args: vec!["-c".into(), conf_path.display().to_string()],
    })
    .unwrap();
    let url = server.url();

    let out = jetrun(&url, "operator").arg("init").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let http_addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut serve = jetrun(&url, "ingest");
    serve.args(["serve", "--insecure-dev", "--listen", &http_addr.to_string()]);
    let _serve = start(serve, dir.path(), "serve");
    let mut worker = jetrun(&url, "worker");
    worker.args([
        "worker",
        "--runner",
        "process",
        "--data-dir",
        &dir.path().join("worker").display().to_string(),
    ]);
    let _worker = start(worker, dir.path(), "worker");

    // The callback arrives on a subject the operator listens to.
    let op = async_nats::ConnectOptions::new()
        .user_and_password("operator".into(), pass("operator"))
        .connect(&url)
        .await
        .unwrap();
    let mut callbacks = op.subscribe("callbacks.perm").await.unwrap();

    let resp = http(
        http_addr,
        "POST",
        "/v1/jobs",
        r#"{"queue":"default","image":"host","command":["true"],"callback":{"nats":"callbacks.perm"}}"#,
    );
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let id = serde_json::from_str::<serde_json::Value>(body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let out = jetrun(&url, "operator")
            .args(["jobs", "get", &id, "--json"])
            .output()
            .unwrap();
        let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let status = rec["status"].as_str().unwrap_or_default().to_string();
        if matches!(
            status.as_str(),
            "succeeded" | "failed" | "timed_out" | "cancelled"
        ) || Instant::now() > deadline
        {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        status,
        "succeeded",
        "worker log: {}",
        std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default()
    );
    let cb = tokio::time::timeout(Duration::from_secs(10), callbacks.next())
        .await
        .expect("the completion callback")
        .unwrap();
    let change: serde_json::Value = serde_json::from_slice(&cb.payload).unwrap();
    assert_eq!(change["to"], "succeeded");
    assert_eq!(change["job_id"], id.as_str());
}
