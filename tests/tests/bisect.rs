//! The GitHub bisect bot end to end (issue #12): the real `jetrun dev` (embedded NATS,
//! every function, the OCI runner) with `examples/rules/bisect.yaml`, a local git
//! repository with a planted regression, signed `issue_comment` webhooks, and a local
//! stand-in for the GitHub REST API (below: GitHub itself cannot be reached from a test)
//! that records every request and fails the first two comment posts (502, then 403 with
//! a secondary-rate-limit `Retry-After`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "bisect-e2e-secret";

/// One request the stand-in saw, and what it answered.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Value,
    status: u16,
}

#[derive(Default)]
struct Standin {
    seen: Vec<Seen>,
    /// Stored comments: (path of the issue's comments, id, body).
    comments: Vec<(String, u64, String)>,
    comment_posts: usize,
}

/// The GitHub stand-in: `POST|GET /repos/o/r/issues/n/comments`, `POST
/// /repos/o/r/issues/comments/id/reactions`. The first comment POST answers 502 (not
/// stored), the second 403 "secondary rate limit" with `Retry-After: 1`.
async fn standin() -> (String, Arc<Mutex<Standin>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let st = Arc::new(Mutex::new(Standin::default()));
    let s = st.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                let (head, mut body) = loop {
                    let n = sock.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break (
                            String::from_utf8_lossy(&buf[..i]).to_string(),
                            buf[i + 4..].to_vec(),
                        );
                    }
                };
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while body.len() < len {
                    let n = sock.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&tmp[..n]);
                }
                let mut first = head.lines().next().unwrap_or("").split_whitespace();
                let method = first.next().unwrap_or("").to_string();
                let path = first.next().unwrap_or("").to_string();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let (status, extra, answer) = {
                    let mut g = s.lock().unwrap();
                    let bare = path.split('?').next().unwrap_or("").to_string();
                    let r = if bare.ends_with("/comments") && !bare.contains("/issues/comments") {
                        if method == "GET" {
                            let list: Vec<Value> = g
                                .comments
                                .iter()
                                .filter(|c| c.0 == bare)
                                .map(|c| json!({"id": c.1, "body": c.2}))
                                .collect();
                            (200, "", Value::Array(list))
                        } else {
                            g.comment_posts += 1;
                            match g.comment_posts {
                                1 => (502, "", json!({"message": "Bad Gateway"})),
                                2 => (
                                    403,
                                    "Retry-After: 1\r\n",
                                    json!({"message": "You have exceeded a secondary rate limit."}),
                                ),
                                n => {
                                    let id = 5000 + n as u64;
                                    let text = body["body"].as_str().unwrap_or("").to_string();
                                    g.comments.push((bare.clone(), id, text.clone()));
                                    (201, "", json!({"id": id, "body": text}))
                                }
                            }
                        }
                    } else if bare.ends_with("/reactions") {
                        (201, "", json!({"id": 1, "content": body["content"]}))
                    } else {
                        (404, "", json!({"message": "Not Found"}))
                    };
                    g.seen.push(Seen {
                        method: method.clone(),
                        path: path.clone(),
                        body: body.clone(),
                        status: r.0,
                    });
                    r
                };
                let data = answer.to_string();
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{data}",
                    data.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, st)
}

fn git(repo: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Six commits; the fourth breaks `add.sh`. Returns (repo, the planted bad commit).
fn planted_repo(dir: &Path) -> (PathBuf, String) {
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join(".jetrun")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.join(".jetrun/bisect-test"),
        "#!/bin/sh\n[ \"$(sh add.sh 2 3)\" = 5 ]\n",
    )
    .unwrap();
    std::fs::write(repo.join("add.sh"), "echo $(($1 + $2))\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "sum"]);
    git(&repo, &["tag", "v1"]);
    let mut bad = String::new();
    for i in 2..=6 {
        if i == 4 {
            std::fs::write(repo.join("add.sh"), "echo $(($1 + $2 + 1))\n").unwrap();
        } else {
            std::fs::write(repo.join("NOTES"), format!("{i}\n")).unwrap();
        }
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", &format!("change {i}")]);
        if i == 4 {
            bad = git(&repo, &["rev-parse", "HEAD"]);
        }
    }
    (repo, bad)
}

/// The bisect rules plus two rules whose tasks leave a bad result.
fn rules_file(dir: &Path) -> PathBuf {
    let mut text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rules/bisect.yaml"))
            .unwrap();
    text.push_str(
        r#"
  - name: big-result
    match:
      event: issue_comment
      comment: '^/big'
    job:
      queue: results
      image: host
      # The write stops at the result tmpfs's 32 KiB (ENOSPC); the task still exits 0.
      command: ["sh", "-c", 'head -c 1000000 /dev/zero | tr "\0" a > "$JETRUN_RESULT"; exit 0']
  - name: slow
    match:
      event: issue_comment
      comment: '^/slow'
    guard:
      max_running_per_repository: 1
    reply:
      acknowledge: eyes
    job:
      queue: slow
      image: host
      command: ["sleep", "300"]
  - name: bad-json
    match:
      event: issue_comment
      comment: '^/badjson'
    job:
      queue: results
      image: host
      command: ["sh", "-c", 'printf "{nope" > "$JETRUN_RESULT"']
"#,
    );
    let p = dir.join("rules.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

struct Dev {
    child: Child,
    http: String,
    nats: String,
    log: PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
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

fn start_dev(dir: &Path, rules: &Path, api: &str) -> Dev {
    let http_port = jetrun_harness::free_port().unwrap();
    let nats_port = jetrun_harness::free_port().unwrap();
    let log = dir.join("dev.log");
    let mut child = Command::new(common::jetrun_bin())
        .args(["dev", "--data-dir"])
        .arg(dir.join("dev"))
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args(["--nats-listen", &format!("127.0.0.1:{nats_port}")])
        .arg("--rules")
        .arg(rules)
        .args(["--github-api-url", api])
        .env_remove("JETRUN_NATS_URL")
        .env_remove("NATS_URL")
        .env("JETRUN_GITHUB_WEBHOOK_SECRET", SECRET)
        .env("JETRUN_CHECKOUT_LOCAL_ROOTS", dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if l.starts_with("ready") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        panic!(
            "jetrun dev did not come up: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    Dev {
        child,
        http: format!("http://127.0.0.1:{http_port}"),
        nats: format!("nats://127.0.0.1:{nats_port}"),
        log,
    }
}

fn payload(body: &str, repo: &Path, association: &str, issue: u64, comment_id: u64) -> Vec<u8> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/github-webhooks/issue_comment/created.payload.json");
    let mut p: Value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    p["comment"]["body"] = json!(body);
    p["comment"]["author_association"] = json!(association);
    p["comment"]["id"] = json!(comment_id);
    p["issue"]["number"] = json!(issue);
    p["repository"]["full_name"] = json!("octo/app");
    p["repository"]["clone_url"] = json!(repo.display().to_string());
    serde_json::to_vec(&p).unwrap()
}

async fn send(dev: &Dev, delivery: &str, body: &[u8]) -> u16 {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    reqwest::Client::new()
        .post(format!("{}/webhooks/github", dev.http))
        .header("X-GitHub-Event", "issue_comment")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", sig)
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every job of `queue`, as JSON records (`jetrun jobs list --json`).
fn jobs(dev: &Dev, queue: &str) -> Vec<Value> {
    let o = Command::new(common::jetrun_bin())
        .args(["jobs", "list", "--queue", queue, "--json"])
        .env("JETRUN_NATS_URL", &dev.nats)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn terminal(r: &Value) -> bool {
    matches!(
        r["status"].as_str(),
        Some("succeeded" | "failed" | "timed_out" | "cancelled")
    )
}

async fn until<T>(what: &str, dev: &Dev, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; dev log:\n{}",
                std::fs::read_to_string(&dev.log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn delivery(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bisect_bot_finds_the_planted_commit_and_answers_once() {
    assert!(
        common::oci_available(),
        "the bisect bot runs git bisect in a runc container: needs root and runc (scripts/setup.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (repo, planted) = planted_repo(dir.path());
    let (api, st) = standin().await;
    let dev = start_dev(dir.path(), &rules_file(dir.path()), &api);

    // One delivery, sent twice (GitHub's redelivery keeps the delivery id).
    let body = payload("/bisect v1 main", &repo, "MEMBER", 7, 111);
    assert_eq!(send(&dev, &delivery(1), &body).await, 202);
    assert_eq!(send(&dev, &delivery(1), &body).await / 100, 2);
    let job = until("the bisect job to end", &dev, Duration::from_secs(90), || {
        jobs(&dev, "bisect").into_iter().find(terminal)
    })
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["result"]["first_bad"],
        planted.as_str(),
        "the planted commit is found: {job}"
    );

    // Exactly one answer, through a 502 and a 403 secondary rate limit.
    let answers = until("the answer comment", &dev, Duration::from_secs(30), || {
        let g = st.lock().unwrap();
        let c: Vec<_> = g
            .comments
            .iter()
            .filter(|c| c.0.ends_with("/issues/7/comments"))
            .cloned()
            .collect();
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert!(
        answers[0].2.contains(&planted),
        "the answer names the commit: {}",
        answers[0].2
    );
    // A redelivery of the webhook after the job ended changes nothing either.
    assert_eq!(send(&dev, &delivery(1), &body).await / 100, 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let g = st.lock().unwrap();
        let on_7: Vec<_> = g
            .comments
            .iter()
            .filter(|c| c.0.ends_with("/issues/7/comments"))
            .collect();
        assert_eq!(on_7.len(), 1, "one comment for one delivery: {:#?}", g.seen);
        let posts: Vec<u16> = g
            .seen
            .iter()
            .filter(|s| s.method == "POST" && s.path.ends_with("/issues/7/comments"))
            .map(|s| s.status)
            .collect();
        assert_eq!(
            posts,
            [502, 403, 201],
            "retried through 5xx and the rate limit: {:#?}",
            g.seen
        );
        assert!(
            g.seen
                .iter()
                .any(|s| s.path.ends_with("/issues/comments/111/reactions") && s.body["content"] == "eyes"),
            "the command was acknowledged: {:#?}",
            g.seen
        );
    }
    assert_eq!(jobs(&dev, "bisect").len(), 1, "one job for one delivery");

    // Someone without the required association: an answer, no job.
    let body = payload("/bisect v1 main", &repo, "NONE", 8, 222);
    assert_eq!(send(&dev, &delivery(2), &body).await, 202);
    // A malformed command: the usage, no job.
    let body = payload("/bisect onlyone", &repo, "OWNER", 9, 333);
    assert_eq!(send(&dev, &delivery(3), &body).await, 202);
    let (refusal, usage) = until("the refusals", &dev, Duration::from_secs(30), || {
        let g = st.lock().unwrap();
        let find = |n: &str| g.comments.iter().find(|c| c.0.ends_with(n)).map(|c| c.2.clone());
        Some((find("/issues/8/comments")?, find("/issues/9/comments")?))
    })
    .await;
    assert!(
        refusal.contains("not allowed") && refusal.contains("NONE"),
        "{refusal}"
    );
    assert!(usage.contains("Usage: `/bisect <good> <bad>`"), "{usage}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(jobs(&dev, "bisect").len(), 1, "a refused command starts no job");

    // Results that break the rules: refused with a reason, the job's status unchanged.
    for (n, cmd) in [(4, "/big"), (5, "/badjson")] {
        let body = payload(cmd, &repo, "OWNER", 10 + n as u64, 400 + n as u64);
        assert_eq!(send(&dev, &delivery(n), &body).await, 202);
    }
    let done = until("the result jobs", &dev, Duration::from_secs(60), || {
        let j: Vec<Value> = jobs(&dev, "results").into_iter().filter(terminal).collect();
        (j.len() == 2).then_some(j)
    })
    .await;
    let by_rule = |r: &str| {
        done.iter()
            .find(|j| j["spec"]["labels"]["jetrun.rule"] == r)
            .unwrap_or_else(|| panic!("no {r} job in {done:?}"))
            .clone()
    };
    let big = by_rule("big-result");
    assert_eq!(big["status"], "succeeded", "{big}");
    assert!(big["result"].is_null(), "{big}");
    assert!(
        big["result_error"]
            .as_str()
            .unwrap_or("")
            .contains("16384 allowed"),
        "{big}"
    );
    let bad = by_rule("bad-json");
    assert_eq!(bad["status"], "succeeded", "{bad}");
    assert!(
        bad["result_error"]
            .as_str()
            .unwrap_or("")
            .contains("not valid JSON"),
        "{bad}"
    );
}

/// Cancels a job (`jetrun jobs cancel`).
fn cancel(dev: &Dev, id: &str) {
    let o = Command::new(common::jetrun_bin())
        .args(["jobs", "cancel", id])
        .env("JETRUN_NATS_URL", &dev.nats)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `guard.max_running_per_repository: 1`: a second command while the repository's first
/// job is active is refused with an answer and starts nothing; once the first has ended
/// the next command runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_command_for_a_busy_repository_is_refused_with_an_answer() {
    assert!(
        common::oci_available(),
        "the jobs run in runc containers: needs root and runc (scripts/setup.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = planted_repo(dir.path());
    let (api, st) = standin().await;
    let dev = start_dev(dir.path(), &rules_file(dir.path()), &api);
    let active = |r: &Value| matches!(r["status"].as_str(), Some("queued" | "launching" | "running"));

    let body = payload("/slow", &repo, "OWNER", 30, 3000);
    assert_eq!(send(&dev, &delivery(20), &body).await, 202);
    let first = until("the first job to run", &dev, Duration::from_secs(60), || {
        jobs(&dev, "slow").into_iter().find(|j| j["status"] == "running")
    })
    .await;
    let first_id = first["id"].as_str().unwrap().to_string();

    // The second, and its redelivery: one answer, no job.
    let body = payload("/slow again", &repo, "OWNER", 31, 3100);
    assert_eq!(send(&dev, &delivery(21), &body).await, 202);
    let refusal = until("the refusal", &dev, Duration::from_secs(30), || {
        let g = st.lock().unwrap();
        g.comments
            .iter()
            .find(|c| c.0.ends_with("/issues/31/comments"))
            .map(|c| c.2.clone())
    })
    .await;
    assert!(
        refusal.contains("`slow` is already running for octo/app") && refusal.contains(&first_id),
        "{refusal}"
    );
    assert_eq!(send(&dev, &delivery(21), &body).await / 100, 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = jobs(&dev, "slow");
    assert_eq!(all.len(), 1, "the refused command started no job: {all:?}");
    assert!(active(&all[0]), "{all:?}");
    {
        let g = st.lock().unwrap();
        let on_31 = g
            .comments
            .iter()
            .filter(|c| c.0.ends_with("/issues/31/comments"))
            .count();
        assert_eq!(on_31, 1, "one answer for the refusal: {:#?}", g.seen);
    }

    // Once the first has ended, the slot is free again.
    cancel(&dev, &first_id);
    until("the first job to end", &dev, Duration::from_secs(60), || {
        jobs(&dev, "slow")
            .into_iter()
            .find(|j| j["id"] == first_id.as_str() && terminal(j))
    })
    .await;
    let body = payload("/slow", &repo, "OWNER", 32, 3200);
    assert_eq!(send(&dev, &delivery(22), &body).await, 202);
    let second = until("a new job", &dev, Duration::from_secs(30), || {
        jobs(&dev, "slow")
            .into_iter()
            .find(|j| j["id"] != first_id.as_str())
    })
    .await;
    assert_eq!(second["spec"]["labels"]["github.issue"], "32", "{second}");
    cancel(&dev, second["id"].as_str().unwrap());
}
