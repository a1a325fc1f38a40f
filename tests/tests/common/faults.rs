//! Helpers of the fault-injection suite (`tests/tests/faults.rs`): `jetrun` child
//! processes against any server URL (a cluster too), a raw HTTP/1.1 client, process
//! samples, and the one invariant checker every scenario ends with.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jetrun_core::{JobRecord, JobSpec, JobStatus};
use jetrun_nats::JobStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether the long form runs (`JETRUN_CHAOS=long`, what `just chaos` sets).
pub fn long_form() -> bool {
    std::env::var("JETRUN_CHAOS").is_ok_and(|v| v == "long")
}

/// `short` in CI, `long` under `JETRUN_CHAOS=long`.
pub fn scale(short: usize, long: usize) -> usize {
    if long_form() { long } else { short }
}

/// A `jetrun` child process (worker, dev) with its log in a file.
pub struct Proc {
    child: Option<Child>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `jetrun ARGS` with `JETRUN_NATS_URL=url`; returns once it printed its
    /// `ready` line (30 s at most).
    pub fn spawn(url: &str, args: &[&str], log: &Path, envs: &[(&str, &str)]) -> Proc {
        let mut envs: Vec<(String, String)> =
            envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        envs.push(("JETRUN_NATS_URL".into(), url.into()));
        let mut p = Proc {
            child: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            envs,
            log: log.to_path_buf(),
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(crate::common::jetrun_bin());
        cmd.args(&self.args)
            .env("RUST_LOG", "info,async_nats=warn")
            .env_remove("JETRUN_API_TOKENS")
            .env_remove("JETRUN_GITHUB_WEBHOOK_SECRET")
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ready") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!(
                "jetrun {:?} not ready in 60 s; log:\n{}",
                self.args,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        self.child = Some(child);
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after 20 s.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The flags of a worker with the process runner and short leases.
pub fn worker_args(data_dir: &Path, max_concurrent: usize) -> Vec<String> {
    let mut v: Vec<String> = [
        "worker",
        "--runner",
        "process",
        "--lease-ttl",
        "2s",
        "--lease-renew",
        "500ms",
        "--sweep-every",
        "1s",
        "--retry-base",
        "200ms",
        "--stop-grace",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend([
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--max-concurrent-jobs".into(),
        max_concurrent.to_string(),
    ]);
    v
}

/// An answer of [`http`].
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
pub async fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

/// Resident memory (KiB) and open file descriptors of a process, from /proc.
pub fn sample(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// One submission of a scenario: its job id and the exit code its command ends with.
#[derive(Debug, Clone)]
pub struct Submission {
    pub id: String,
    pub exit_code: i32,
}

/// What a scenario submitted and what was acknowledged.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Submissions attempted.
    pub submitted: usize,
    /// Acknowledged ones (the producer got a success answer).
    pub acknowledged: Vec<Submission>,
    /// Refused or unanswered ones (503, a timeout): they may still run (at least once).
    pub unacknowledged: Vec<Submission>,
}

/// A job running `echo $JETRUN_JOB_ID >> RUNS; sleep SECS; exit CODE` on the process
/// runner: every run leaves one line in `runs`.
pub fn counted_job(queue: &str, runs: &Path, secs: f64, code: i32) -> JobSpec {
    let script = format!(
        "echo $JETRUN_JOB_ID >> {}; sleep {secs:.2}; exit {code}",
        runs.display()
    );
    JobSpec::new(queue, "host", vec!["sh".into(), "-c".into(), script])
}

/// The counts docs/reliability.md reports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub submitted: usize,
    pub acknowledged: usize,
    pub terminal: usize,
    pub lost: usize,
    pub wrong_outcomes: usize,
    /// Acknowledged jobs whose command ran more than once (at least once: allowed).
    pub ran_twice: usize,
    /// Unacknowledged submissions that ran anyway (a 503 after the admit).
    pub unacknowledged_ran: usize,
    /// Records of unacknowledged submissions (admitted, then the answer failed) left
    /// non-terminal: orphans. Must be 0.
    pub orphans: usize,
    pub over_max_attempts: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "submitted={} acknowledged={} terminal={} lost={} wrong_outcomes={} ran_twice={} unacknowledged_ran={} orphans={} over_max_attempts={}",
            self.submitted,
            self.acknowledged,
            self.terminal,
            self.lost,
            self.wrong_outcomes,
            self.ran_twice,
            self.unacknowledged_ran,
            self.orphans,
            self.over_max_attempts
        )
    }
}

/// Reads the runs file: how often each job's command started.
pub fn runs_of(runs: &Path) -> HashMap<String, u32> {
    let text = std::fs::read_to_string(runs).unwrap_or_default();
    let mut m: HashMap<String, u32> = HashMap::new();
    for l in text.lines() {
        *m.entry(l.trim().to_string()).or_default() += 1;
    }
    m
}

/// The one invariant checker: waits (up to `timeout`) until every acknowledged
/// submission is terminal, then checks that each ended with its command's true outcome
/// (`succeeded` for 0, `failed` with the exit code otherwise), that no job ran more
/// often than its attempts, that none was lost, and counts the commands that ran twice.
/// Prints one `FAULTS <scenario> <counts>` line and panics on a violation.
pub async fn check(
    scenario: &str,
    store: &JobStore,
    ledger: &Ledger,
    runs: &Path,
    timeout: Duration,
) -> Counts {
    let deadline = Instant::now() + timeout;
    let mut recs: HashMap<String, Option<JobRecord>> = HashMap::new();
    loop {
        let mut pending = 0;
        for s in &ledger.acknowledged {
            if recs
                .get(&s.id)
                .is_some_and(|r| r.as_ref().is_some_and(|r| r.status.is_terminal()))
            {
                continue;
            }
            let r = store.get(&s.id).await.ok().flatten().map(|(r, _)| r);
            if !r.as_ref().is_some_and(|r| r.status.is_terminal()) {
                pending += 1;
            }
            recs.insert(s.id.clone(), r);
        }
        // An unacknowledged submission may have been admitted: then it must end too.
        for s in &ledger.unacknowledged {
            if let Ok(Some((r, _))) = store.get(&s.id).await {
                if !r.status.is_terminal() {
                    pending += 1;
                }
                recs.insert(s.id.clone(), Some(r));
            }
        }
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let a last duplicate run land in the file before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = runs_of(runs);
    let mut c = Counts {
        submitted: ledger.submitted,
        acknowledged: ledger.acknowledged.len(),
        ..Counts::default()
    };
    let mut problems = Vec::new();
    for s in &ledger.acknowledged {
        let n = runs.get(&s.id).copied().unwrap_or(0);
        match recs.get(&s.id).cloned().flatten() {
            None => {
                c.lost += 1;
                problems.push(format!("{}: lost (no record)", s.id));
            }
            Some(r) if !r.status.is_terminal() => {
                c.lost += 1;
                problems.push(format!(
                    "{}: not terminal: {} attempt {}",
                    s.id, r.status, r.attempt
                ));
            }
            Some(r) => {
                c.terminal += 1;
                let want = if s.exit_code == 0 {
                    JobStatus::Succeeded
                } else {
                    JobStatus::Failed
                };
                if r.status != want || r.exit_code != Some(s.exit_code) || n == 0 {
                    c.wrong_outcomes += 1;
                    problems.push(format!(
                        "{}: {} exit {:?} error {:?} after {n} runs; its command exits {}",
                        s.id, r.status, r.exit_code, r.error, s.exit_code
                    ));
                }
                if n > 1 {
                    c.ran_twice += 1;
                }
                if n > r.max_attempts || r.attempt > r.max_attempts {
                    c.over_max_attempts += 1;
                    problems.push(format!(
                        "{}: ran {n} times, attempt {} (max {})",
                        s.id, r.attempt, r.max_attempts
                    ));
                }
            }
        }
    }
    for s in &ledger.unacknowledged {
        if let Some(Some(r)) = recs.get(&s.id)
            && !r.status.is_terminal()
        {
            c.orphans += 1;
            problems.push(format!("{}: unacknowledged, admitted, left {}", s.id, r.status));
        }
    }
    c.unacknowledged_ran = ledger
        .unacknowledged
        .iter()
        .filter(|s| runs.contains_key(&s.id))
        .count();
    println!("FAULTS {scenario} {c}");
    assert!(problems.is_empty(), "{scenario}: {c}\n{}", problems.join("\n"));
    c
}
