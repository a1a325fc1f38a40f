//! Shared set-up of the lifecycle end-to-end tests: a real nats-server, the topology, and
//! `jetrun worker` child processes (the built binary, as users run it).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use jetrun_core::{JobRecord, JobSpec, Names};
use jetrun_harness::NatsServer;
use jetrun_nats::{EventPublisher, JobStore, Topology};

/// The `jetrun` binary next to this test's target directory, built if missing.
pub fn jetrun_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("JETRUN_BIN") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/<test> → target/<profile>/jetrun
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let bin = profile_dir.join("jetrun");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "-p", "jetrun"])
                .status()
                .unwrap();
            assert!(st.success(), "building the jetrun binary failed");
        }
        bin
    })
    .clone()
}

/// A server with the topology, a store and a publisher.
pub struct Env {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub names: Names,
    pub store: JobStore,
    pub publisher: EventPublisher,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn start() -> Env {
        let server = NatsServer::start().unwrap();
        let client = server.client().await;
        let js = async_nats::jetstream::new(client.clone());
        let names = Names::default();
        Topology::new(names.clone()).apply(&js).await.unwrap();
        let store = JobStore::open(&js, &names, "/jetrun/e2e").await.unwrap();
        let publisher = EventPublisher::new(js.clone(), "/jetrun/e2e");
        Env {
            server,
            client,
            js,
            names,
            store,
            publisher,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Submits a job as `jetrun submit` does (admit, then publish); returns its id.
    pub async fn submit(&self, spec: JobSpec) -> String {
        let a = jetrun_nats::submit::submit(&self.store, &self.publisher, spec, None, None)
            .await
            .unwrap();
        a.record().id.clone()
    }

    pub async fn get(&self, id: &str) -> JobRecord {
        self.store.get(id).await.unwrap().unwrap().0
    }

    /// Waits until every job is terminal; returns their records (same order).
    pub async fn wait_terminal(&self, ids: &[String], timeout: Duration) -> Vec<JobRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut out = Vec::with_capacity(ids.len());
            let mut pending = 0;
            for id in ids {
                let r = self.get(id).await;
                if !r.status.is_terminal() {
                    pending += 1;
                }
                out.push(r);
            }
            if pending == 0 {
                return out;
            }
            if Instant::now() > deadline {
                let stuck: Vec<_> = out
                    .iter()
                    .filter(|r| !r.status.is_terminal())
                    .take(5)
                    .map(|r| format!("{} {} attempt {}", r.id, r.status, r.attempt))
                    .collect();
                panic!("{pending} jobs not terminal after {timeout:?}, e.g. {stuck:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `pred` holds for the job's record.
    pub async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&JobRecord) -> bool,
    ) -> JobRecord {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.get(id).await;
            if pred(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "job {id}: not {what} after {timeout:?}: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A `jetrun` command against this server.
    pub fn jetrun(&self) -> Command {
        let mut c = Command::new(jetrun_bin());
        c.env("JETRUN_NATS_URL", self.server.url());
        c
    }

    /// Runs `jetrun ARGS`, asserts success, returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.jetrun().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "jetrun {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A `jetrun worker` child process.
pub struct Worker {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    url: String,
    args: Vec<String>,
}

impl Worker {
    /// Spawns a worker with the process runner and short leases, plus `extra` flags;
    /// returns once it printed its ready line.
    pub fn spawn(env: &Env, data_dir: &Path, extra: &[&str]) -> Worker {
        Self::spawn_with(env, data_dir, "process", extra)
    }

    /// Like [`Worker::spawn`] with another runner (`oci`, `null`, ...).
    pub fn spawn_with(env: &Env, data_dir: &Path, runner: &str, extra: &[&str]) -> Worker {
        let mut args: Vec<String> = [
            "worker",
            "--runner",
            runner,
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
        args.extend(["--data-dir".to_string(), data_dir.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut w = Worker {
            child: None,
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension("log"),
            url: env.server.url(),
            args,
        };
        w.start();
        w
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(jetrun_bin())
            .args(&self.args)
            .env("JETRUN_NATS_URL", &self.url)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
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
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!(
                "worker not ready in 30 s; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        self.child = Some(child);
    }

    /// SIGKILL: no clean-up at all, tasks left behind.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same flags and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }

    /// SIGTERM and wait (up to 30 s).
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Whether runc containers run here (the OCI runner's probe, through `jetrun`).
pub fn oci_available() -> bool {
    // `runc list` needs the privileges containers need (root, /run/runc).
    Command::new("runc")
        .arg("list")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A spec running `sh -c SCRIPT` on the process runner.
pub fn sh(queue: &str, script: &str) -> JobSpec {
    JobSpec::new(queue, "host", vec!["sh".into(), "-c".into(), script.into()])
}
