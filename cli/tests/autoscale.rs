#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `jetrun autoscale` end to end: the real binary against a real nats-server
//! (`jetrun_harness::NatsServer`), driven by the real `init`, `scale` and `submit` commands
//! and observed through a plain NATS client: signals on `jetrun.scale.signal.<service>`,
//! the recorded state in the scale bucket and the leader lease in the nodes bucket.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jetrun_harness::NatsServer;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_jetrun");

/// A running `jetrun autoscale`: stopped (SIGTERM, then SIGKILL) on drop.
struct Autoscale {
    child: Child,
    /// Its stderr (JSON log lines), collected by a thread.
    log: Arc<Mutex<Vec<String>>>,
}

impl Autoscale {
    /// Starts `jetrun autoscale --nats-url URL ARGS...` in `dir` with JSON logs and waits
    /// for its `ready autoscale` line.
    fn start(url: &str, dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("autoscale")
            .arg("--nats-url")
            .arg(url)
            .arg("--log-format")
            .arg("json")
            .args(args)
            .current_dir(dir)
            .env_remove("JETRUN_NATS_URL")
            .env_remove("JETRUN_DATA_DIR")
            .env("RUST_LOG", "info,async_nats=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let pid = child.id();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[autoscale {pid}] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no `ready autoscale` line within 30 s");
        assert_eq!(line, "ready autoscale");
        Self { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.pid() as i32), s).unwrap();
    }

    /// Waits for the process to exit, at most `limit`.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The `fields` of the first JSON log line whose message is `message`.
    fn log_fields(&self, message: &str) -> Option<serde_json::Value> {
        self.log.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == message).then(|| v["fields"].clone())
        })
    }
}

impl Drop for Autoscale {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        if self.wait(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a short-lived `jetrun` command against `url`; returns (success, stdout, stderr).
fn jetrun(url: &str, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("JETRUN_NATS_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`jetrun`], and it must succeed; returns stdout.
fn jetrun_ok(url: &str, dir: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = jetrun(url, dir, args);
    assert!(ok, "jetrun {args:?} failed: {stderr}");
    stdout
}

/// A fresh deployment: a server, `init` with `queue`, a spec of `service` on it (signal
/// backend, bounds [0, max], one job per replica) and `jobs` parked jobs on the queue (no
/// worker runs, so they stay pending).
fn deployment(service: &str, queue: &str, max: u32, jobs: usize) -> (NatsServer, tempfile::TempDir) {
    let server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    jetrun_ok(&url, dir.path(), &["init", "--queue", queue]);
    let max = max.to_string();
    jetrun_ok(
        &url,
        dir.path(),
        &[
            "scale",
            "set",
            service,
            "--queue",
            queue,
            "--min",
            "0",
            "--max",
            &max,
            "--target",
            "1",
            "--backend",
            "signal",
        ],
    );
    for _ in 0..jobs {
        let id = jetrun_ok(
            &url,
            dir.path(),
            &["submit", "--queue", queue, "--image", "busybox", "--", "true"],
        );
        assert!(!id.trim().is_empty());
    }
    (server, dir)
}

/// The next scale signal within `limit`.
async fn next_signal(sub: &mut async_nats::Subscriber, limit: Duration) -> Option<serde_json::Value> {
    let msg = tokio::time::timeout(limit, sub.next()).await.ok()??;
    Some(serde_json::from_slice(&msg.payload).unwrap())
}

/// Waits for a signal with `desired` for which `also` holds; fails after `limit`.
async fn signal_with(
    sub: &mut async_nats::Subscriber,
    desired: u64,
    also: impl Fn(&serde_json::Value) -> bool,
    limit: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let sig = next_signal(sub, left)
            .await
            .unwrap_or_else(|| panic!("no matching signal with desired {desired} within {limit:?}"));
        if sig["desired"] == desired && also(&sig) {
            return sig;
        }
    }
}

/// Checks a signal against schemas/scale-signal.json's fields.
fn assert_signal_shape(sig: &serde_json::Value, service: &str) {
    let obj = sig.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "at",
            "current",
            "desired",
            "in_flight",
            "pending",
            "reason",
            "service"
        ],
        "{sig}"
    );
    assert_eq!(sig["service"], service);
    chrono::DateTime::parse_from_rfc3339(sig["at"].as_str().unwrap()).unwrap();
}

/// Whether an autoscaler id (`autoscale:<host>:<pid>:<ms>`) is the process `pid`'s.
fn is_process(id: &str, pid: u32) -> bool {
    id.starts_with("autoscale:") && id.contains(&format!(":{pid}:"))
}

#[tokio::test]
async fn autoscale_signals_the_max_for_a_backlog_and_exits_0_on_sigterm() {
    let (server, dir) = deployment("web", "q1", 3, 0);
    let url = server.url();
    let client = async_nats::connect(&url).await.unwrap();
    let mut signals = client.subscribe("jetrun.scale.signal.web").await.unwrap();
    client.flush().await.unwrap();

    // A YAML config file, overridden by a flag; --data-dir moves the local replicas.
    let config = dir.path().join("autoscale.yaml");
    std::fs::write(&config, "tick: 2s\nresync: 2s\nleader:\n  ttl: 3s\n").unwrap();
    let data_dir = dir.path().join("state");
    let mut scaler = Autoscale::start(
        &url,
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--tick",
            "250ms",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    );
    let settings = scaler
        .log_fields("autoscaler settings")
        .expect("one `autoscaler settings` line at start");
    assert_eq!(settings["tick"], "250ms", "the flag wins: {settings}");
    assert_eq!(settings["resync"], "2s", "from the file: {settings}");
    assert_eq!(settings["leader_ttl"], "3s", "from the file: {settings}");
    assert_eq!(
        settings["local_data_root"],
        data_dir.join("workers").display().to_string(),
        "{settings}"
    );

    // Five parked jobs at one per replica need 5; the spec caps it at 3. The signal comes
    // as soon as the cap is reached (perhaps at 3 or 4 jobs) and again at every resync
    // (2 s here) with the current depth: wait for one that counts all five.
    let mut last_submit = Instant::now();
    for _ in 0..5 {
        jetrun_ok(
            &url,
            dir.path(),
            &["submit", "--queue", "q1", "--image", "busybox", "--", "true"],
        );
        last_submit = Instant::now();
    }
    let first = signal_with(&mut signals, 3, |_| true, Duration::from_secs(5)).await;
    eprintln!(
        "first signal desired=3 {:?} after the last submit: {first}",
        last_submit.elapsed()
    );
    let sig = signal_with(&mut signals, 3, |s| s["pending"] == 5, Duration::from_secs(5)).await;
    eprintln!(
        "signal desired=3 pending=5 {:?} after the last submit: {sig}",
        last_submit.elapsed()
    );
    assert_signal_shape(&sig, "web");
    assert_eq!(sig["pending"], 5, "{sig}");
    assert_eq!(sig["in_flight"], 0, "{sig}");
    assert!(
        sig["reason"].as_str().unwrap().starts_with("capped_at_max"),
        "{sig}"
    );

    // The decision is recorded, by this process.
    let shown = jetrun_ok(&url, dir.path(), &["scale", "show", "web", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let state = &shown["state"];
    assert_eq!(state["desired"], 3, "{shown}");
    assert!(state["pending"].as_u64().unwrap() >= 3, "{shown}");
    assert_eq!(state["backend"], "signal", "{shown}");
    assert!(state.get("backend_error").is_none(), "{shown}");
    assert!(
        is_process(state["decided_by"].as_str().unwrap(), scaler.pid()),
        "decided_by names this autoscaler (pid {}): {shown}",
        scaler.pid()
    );

    // SIGTERM: a clean exit 0 within 10 s, and the leader lease is released.
    let stop = Instant::now();
    scaler.signal(Signal::SIGTERM);
    let status = scaler
        .wait(Duration::from_secs(10))
        .expect("jetrun autoscale did not exit within 10 s of SIGTERM");
    eprintln!("exited {status} {:?} after SIGTERM", stop.elapsed());
    assert!(status.success(), "exit status {status}");
    let js = async_nats::jetstream::new(client);
    let nodes = js.get_key_value("jetrun-nodes").await.unwrap();
    let lease = nodes.entry("leader.autoscale").await.unwrap();
    assert!(
        lease
            .as_ref()
            .is_none_or(|e| e.operation != async_nats::jetstream::kv::Operation::Put),
        "the lease is released at shutdown: {lease:?}"
    );
}

#[tokio::test]
async fn two_autoscalers_one_acts_and_the_other_takes_over_after_sigkill() {
    let ttl = Duration::from_secs(2);
    let (server, dir) = deployment("web2", "q2", 5, 2);
    let url = server.url();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let scale = js.get_key_value("jetrun-scale").await.unwrap();
    let nodes = js.get_key_value("jetrun-nodes").await.unwrap();
    let mut signals = client.subscribe("jetrun.scale.signal.web2").await.unwrap();
    client.flush().await.unwrap();
    let args = ["--leader-ttl", "2s", "--resync", "1s"];

    // The first one leads: it signals the two parked jobs and records itself.
    let mut a = Autoscale::start(&url, dir.path(), &args);
    let sig = signal_with(&mut signals, 2, |_| true, Duration::from_secs(10)).await;
    assert_signal_shape(&sig, "web2");
    let settings = a.log_fields("autoscaler settings").unwrap();
    assert_eq!(settings["leader_ttl"], "2s", "{settings}");
    assert_eq!(settings["leader_renew_every"], "400ms", "{settings}");
    assert_eq!(settings["leader_safety_margin"], "600ms", "{settings}");

    // Every state write from now on, to see each one's author.
    let mut states = scale.watch("state.web2").await.unwrap();
    let b = Autoscale::start(&url, dir.path(), &args);
    while next_signal(&mut signals, Duration::ZERO).await.is_some() {}

    // For 4 s (two lease TTLs, ten renewals): only `a` decides, holds the lease, and the
    // signals come at a's resync pace (every ~1 s), not twice that.
    let window = Duration::from_secs(4);
    let until = Instant::now() + window;
    let mut writes = 0;
    let mut signal_count = 0;
    while Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        tokio::select! {
            entry = states.next() => {
                let entry = entry.unwrap().unwrap();
                let st: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
                let by = st["decided_by"].as_str().unwrap();
                assert!(is_process(by, a.pid()), "state written by {by}, not the leader (pid {}); b is pid {}", a.pid(), b.pid());
                writes += 1;
            }
            sig = next_signal(&mut signals, left) => {
                if let Some(sig) = sig {
                    assert_eq!(sig["desired"], 2, "{sig}");
                    signal_count += 1;
                }
            }
        }
    }
    let holder: serde_json::Value =
        serde_json::from_slice(&nodes.get("leader.autoscale").await.unwrap().unwrap()).unwrap();
    assert!(
        is_process(holder["holder"].as_str().unwrap(), a.pid()),
        "{holder}"
    );
    eprintln!(
        "in {window:?} with two autoscalers: {signal_count} signals, {writes} state writes, all by the leader"
    );
    assert!(
        (2..=6).contains(&signal_count),
        "one autoscaler resyncing every 1 s sends ~4 signals in 4 s, got {signal_count}"
    );
    assert!(writes >= 2, "the leader keeps recording its decisions ({writes})");

    // SIGKILL the leader: it cannot release the lease, so `b` takes over once the lease
    // expires (ttl), records itself and signals.
    a.signal(Signal::SIGKILL);
    let killed = Instant::now();
    assert!(a.wait(Duration::from_secs(5)).is_some());
    let takeover = loop {
        let entry = tokio::time::timeout(
            (ttl + Duration::from_secs(4)).saturating_sub(killed.elapsed()),
            states.next(),
        )
        .await
        .expect("nobody took over")
        .unwrap()
        .unwrap();
        let st: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
        if is_process(st["decided_by"].as_str().unwrap(), b.pid()) {
            assert_eq!(st["desired"], 2, "the new leader keeps the decision: {st}");
            break killed.elapsed();
        }
    };
    eprintln!("b recorded its first decision {takeover:?} after a was killed (lease ttl {ttl:?})");
    assert!(
        takeover <= ttl + Duration::from_secs(2),
        "takeover took {takeover:?}, more than the lease ttl {ttl:?} + 2 s"
    );
    // Signals now come from b (a is dead): within its 1 s resync.
    let sig = next_signal(&mut signals, Duration::from_secs(3))
        .await
        .expect("the new leader signals");
    assert_eq!(sig["desired"], 2, "{sig}");
    let holder: serde_json::Value =
        serde_json::from_slice(&nodes.get("leader.autoscale").await.unwrap().unwrap()).unwrap();
    assert!(
        is_process(holder["holder"].as_str().unwrap(), b.pid()),
        "{holder}"
    );
}

#[test]
fn a_bad_configuration_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens here: the configuration must fail first.
    let url = "nats://127.0.0.1:1";
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"tick": "1s", "tik": "2s"}"#).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--config", bad.to_str().unwrap()], "unknown field `tik`"),
        (
            &["--config", "does-not-exist.json"],
            "reading does-not-exist.json",
        ),
        (&["--leader-ttl", "2500ms"], "whole seconds"),
        (&["--tick", "0s"], "tick must be longer than 0"),
    ];
    for (args, wanted) in cases {
        let mut all = vec!["autoscale"];
        all.extend_from_slice(args);
        let started = Instant::now();
        let (ok, _, stderr) = jetrun(url, dir.path(), &all);
        assert!(!ok, "{args:?} was accepted");
        assert!(stderr.contains(wanted), "{args:?}: wanted {wanted:?} in {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} tried to connect first"
        );
    }
}
