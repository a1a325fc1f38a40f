//! `jetrun` against a nats-server that requires a user and password: the
//! `JETRUN_NATS_*` variables are honoured by the real binary, and a refusal is a clear,
//! quick error rather than a hang.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use jetrun_harness::{ServerOptions, ServerProcess, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_jetrun");

fn server_with_user(dir: &std::path::Path) -> ServerProcess {
    ServerProcess::spawn(ServerOptions {
        addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        store_dir: dir.join("jetstream"),
        name: "auth".into(),
        cluster: None,
        log_file: dir.join("nats.log"),
        extra_args: ["--user", "admin", "--pass", "adm1n-pass"]
            .map(String::from)
            .to_vec(),
    })
    .unwrap()
}

fn init(url: &str, env: &[(&str, &str)]) -> (bool, String, Duration) {
    let started = Instant::now();
    let mut cmd = Command::new(BIN);
    cmd.args(["init", "--nats-url", url]);
    for k in [
        "JETRUN_NATS_USER",
        "JETRUN_NATS_PASSWORD",
        "JETRUN_NATS_TOKEN",
        "JETRUN_NATS_CREDS",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn init_authenticates_with_the_jetrun_nats_variables() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_user(dir.path());
    let (ok, stderr, _) = init(
        &server.url(),
        &[
            ("JETRUN_NATS_USER", "admin"),
            ("JETRUN_NATS_PASSWORD", "adm1n-pass"),
        ],
    );
    assert!(ok, "{stderr}");
}

#[test]
fn refused_or_contradictory_credentials_fail_fast_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_user(dir.path());
    let (ok, stderr, took) = init(&server.url(), &[]);
    assert!(!ok);
    assert!(stderr.contains("JETRUN_NATS"), "{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (ok, stderr, _) = init(
        &server.url(),
        &[("JETRUN_NATS_USER", "admin"), ("JETRUN_NATS_TOKEN", "t")],
    );
    assert!(!ok);
    assert!(stderr.contains("only one"), "{stderr}");
    // The password never appears in what is printed.
    let (ok, stderr, _) = init(
        &server.url(),
        &[
            ("JETRUN_NATS_USER", "admin"),
            ("JETRUN_NATS_PASSWORD", "wrong-pass-123"),
        ],
    );
    assert!(!ok);
    assert!(!stderr.contains("wrong-pass-123"), "{stderr}");
}
