//! A `jetrun worker` child process crashed the ways a node crashes: the worker alone, the
//! worker with its shims and `runc run` (a service manager killing its cgroup), or
//! everything with the containers. Shared by `crash_outcome` and the recovery benchmark.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Env, jetrun_bin};

/// A `jetrun worker` child process that can be crashed in the ways a node crashes.
pub struct Node {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    url: String,
}

impl Node {
    /// `jetrun worker --runner RUNNER --node-id NODE --data-dir DIR --max-concurrent-jobs 8
    /// EXTRA...`; returns once it printed its ready line.
    pub fn spawn(env: &Env, dir: &Path, runner: &str, node_id: &str, extra: &[&str]) -> Node {
        let mut args: Vec<String> = [
            "worker",
            "--runner",
            runner,
            "--max-concurrent-jobs",
            "8",
            "--node-id",
            node_id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--data-dir".into(), dir.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut n = Node {
            child: None,
            dir: dir.to_path_buf(),
            log: dir.with_extension("log"),
            args,
            url: env.server.url(),
        };
        n.start();
        n
    }

    pub fn start(&mut self) {
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
            panic!("worker not ready in 30 s; log:\n{}", self.log_text());
        }
        let log = self.log_text();
        assert!(
            !log.contains("falling back"),
            "the OCI runner must run here (root, runc, tini, busybox-static); log:\n{log}"
        );
        self.child = Some(child);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL of the worker process only.
    pub fn kill_worker(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL of every task's shim group: the shim and its `runc run`.
    pub fn kill_shims(&self) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(self.dir.join("tasks")).unwrap().flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("pid"))
                && let Some(Ok(pid)) = s.split_whitespace().next().map(str::parse::<i32>)
                && nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// SIGKILL of every container (its PID 1, so its whole pid namespace).
    pub fn kill_containers(&self) -> usize {
        let root = self.dir.join("runc");
        let out = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
            .unwrap();
        let ids = String::from_utf8(out.stdout).unwrap();
        let mut n = 0;
        for id in ids.lines().filter(|l| !l.is_empty()) {
            let st = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["kill", id, "KILL"])
                .status()
                .unwrap();
            n += usize::from(st.success());
        }
        n
    }
}

impl Node {
    /// The node dies: worker, shims, `runc run` and containers, all SIGKILLed.
    pub fn kill_all(&mut self) {
        self.kill_worker();
        self.kill_shims();
        self.kill_containers();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
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
}
