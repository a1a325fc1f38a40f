//! Helpers shared by the binary's integration tests: a `jetrun dev` child on free ports.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_jetrun");

/// A running `jetrun dev`; stopped with SIGTERM on drop (so it stops its nats-server).
pub struct Dev {
    pub child: Child,
    pub nats: String,
    pub http: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `jetrun dev` with `extra` arguments and waits for its `ready` line.
pub fn start_dev(extra: &[&str]) -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("dev")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--nats-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--http")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(extra)
        .env_remove("JETRUN_NATS_URL")
        .env_remove("NATS_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
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
        .recv_timeout(Duration::from_secs(90))
        .expect("no ready line within 90 s");
    assert!(line.starts_with("ready "), "unexpected first line: {line}");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    Dev {
        nats: field("nats"),
        http: field("http"),
        child,
        dir,
    }
}

/// Runs the binary against `dev` (through `JETRUN_NATS_URL`).
pub fn jetrun(dev: &Dev, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("JETRUN_NATS_URL", &dev.nats)
        .env_remove("NATS_URL")
        .output()
        .unwrap()
}

/// The process's exit code (panics if it was killed by a signal).
pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited by itself")
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
