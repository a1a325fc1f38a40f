//! The CLI behaves like the tools people know: `submit --wait` exits with the job's
//! outcome (docs in `jetrun --help`), each message is printed once, a submission without a
//! command is refused, unknown `--log-format` values are usage errors, `NATS_URL` is
//! honoured, completions and a man page are generated. The real binary against a real
//! `jetrun dev`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, code, jetrun, start_dev, stderr, stdout};

#[test]
fn submit_wait_exits_with_the_jobs_outcome() {
    let dev = start_dev(&[]);

    let ok = jetrun(&dev, &["submit", "--image", "busybox", "--wait", "--", "true"]);
    assert_eq!(code(&ok), 0, "succeeded: {}", stderr(&ok));
    let id = stdout(&ok).trim().to_string();
    assert!(
        !id.is_empty() && !id.contains('\n'),
        "the id alone on stdout: {id:?}"
    );

    let seven = jetrun(
        &dev,
        &[
            "submit",
            "--image",
            "busybox",
            "--max-attempts",
            "1",
            "--wait",
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
    );
    assert_eq!(code(&seven), 7, "the job's own exit code: {}", stderr(&seven));
    let err = stderr(&seven);
    assert_eq!(err.matches("exit code 7").count(), 1, "printed once: {err}");
    assert!(!err.contains("error:"), "no second error line: {err}");

    let started = Instant::now();
    let timed_out = jetrun(
        &dev,
        &[
            "submit",
            "--image",
            "busybox",
            "--timeout",
            "1s",
            "--wait",
            "--",
            "sleep",
            "60",
        ],
    );
    assert_eq!(code(&timed_out), 124, "timed out: {}", stderr(&timed_out));
    assert!(started.elapsed() < Duration::from_secs(45));

    let waited = jetrun(
        &dev,
        &[
            "submit",
            "--image",
            "busybox",
            "--wait",
            "--wait-timeout",
            "1s",
            "--",
            "sleep",
            "20",
        ],
    );
    assert_eq!(code(&waited), 75, "wait timed out: {}", stderr(&waited));
    assert!(stderr(&waited).contains("still running"), "{}", stderr(&waited));

    // Cancel: a waiting submit in the background, then `jobs cancel` from another process.
    let mut waiter = Command::new(BIN)
        .args(["submit", "--image", "busybox", "--wait", "--", "sleep", "60"])
        .env("JETRUN_NATS_URL", &dev.nats)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = String::new();
    {
        use std::io::BufRead;
        let out = waiter.stdout.as_mut().unwrap();
        std::io::BufReader::new(out).read_line(&mut id).unwrap();
    }
    let id = id.trim().to_string();
    // Wait until it runs, then cancel it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = jetrun(&dev, &["jobs", "get", &id, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap_or_default();
        if v["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "job never ran: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cancel = jetrun(&dev, &["jobs", "cancel", &id]);
    assert_eq!(code(&cancel), 0, "{}", stderr(&cancel));
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "cancelled: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_submission_without_a_command_is_refused_and_submits_nothing() {
    // No server is needed: the refusal comes before connecting.
    let out = Command::new(BIN)
        .args(["submit", "--image", "busybox", "--nats-url", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(
        err.contains("no command") && err.contains("--image-command"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one message: {err}");
}

#[test]
fn unknown_log_format_is_a_usage_error() {
    let out = Command::new(BIN)
        .args(["--log-format", "yaml", "jobs", "list"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("text") && stderr(&out).contains("json"));
}

#[test]
fn nats_url_is_honoured_when_no_jetrun_variable_is_set() {
    let dev = start_dev(&[]);
    let out = Command::new(BIN)
        .args(["jobs", "list"])
        .env_remove("JETRUN_NATS_URL")
        .env("NATS_URL", &dev.nats)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ID"), "{}", stdout(&out));
    // JETRUN_NATS_URL wins over NATS_URL.
    let out = Command::new(BIN)
        .args(["jobs", "list"])
        .env("JETRUN_NATS_URL", &dev.nats)
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn completions_and_man_page_are_generated_from_the_cli() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN).args(["completions", shell]).output().unwrap();
        assert_eq!(code(&out), 0);
        let text = stdout(&out);
        assert!(
            text.contains("jetrun") && text.contains("submit"),
            "{shell}: {text:.200}"
        );
    }
    let man = Command::new(BIN).arg("man").output().unwrap();
    assert_eq!(code(&man), 0);
    let text = stdout(&man);
    assert!(text.contains(".TH") && text.contains("jetrun"), "{text:.200}");
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let text = stdout(&help);
    assert!(
        text.contains("Exit codes") && text.contains("124") && text.contains("130"),
        "{text}"
    );
}

#[test]
fn dev_serves_a_queue_nobody_declared() {
    let dev = start_dev(&[]);
    let out = jetrun(
        &dev,
        &[
            "submit",
            "--queue",
            "bisect",
            "--image",
            "busybox",
            "--wait",
            "--wait-timeout",
            "60s",
            "--",
            "true",
        ],
    );
    assert_eq!(
        code(&out),
        0,
        "the job on an undeclared queue ran: {}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("no worker serves"), "{}", stderr(&out));
}

#[test]
fn a_submission_to_a_queue_no_worker_serves_warns_at_once() {
    // dev serving only `default`: `parked` has no worker.
    let dev = start_dev(&["--queue", "default"]);
    let out = jetrun(
        &dev,
        &["submit", "--queue", "parked", "--image", "busybox", "--", "true"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no worker serves queue \"parked\""), "{err}");
    let id = stdout(&out).trim().to_string();
    let got = jetrun(&dev, &["jobs", "get", &id]);
    assert!(
        stdout(&got).contains("no worker serves queue parked"),
        "{}",
        stdout(&got)
    );
    // A served queue gives no warning.
    let out = jetrun(
        &dev,
        &["submit", "--queue", "default", "--image", "busybox", "--", "true"],
    );
    assert!(!stderr(&out).contains("no worker serves"), "{}", stderr(&out));
}

#[test]
fn dev_beyond_loopback_needs_a_secret_and_tokens_or_insecure_dev() {
    let dir = tempfile::tempdir().unwrap();
    let dev = |extra: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(BIN);
        c.arg("dev")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--nats-listen")
            .arg(format!("127.0.0.1:{}", common::free_port()))
            .args(extra)
            .env_remove("JETRUN_NATS_URL")
            .env_remove("NATS_URL")
            .env_remove("JETRUN_GITHUB_WEBHOOK_SECRET")
            .env_remove("JETRUN_API_TOKENS")
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            c.env(k, v);
        }
        c
    };
    let everywhere = format!("0.0.0.0:{}", common::free_port());
    let out = dev(&["--http", &everywhere], &[]).output().unwrap();
    assert_eq!(code(&out), 1, "refused: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("beyond loopback")
            && err.contains("JETRUN_GITHUB_WEBHOOK_SECRET")
            && err.contains("JETRUN_API_TOKENS"),
        "the reason names what is missing: {err}"
    );
    assert!(stdout(&out).is_empty(), "nothing started: {}", stdout(&out));
    // With only the secret, tokens are still missing.
    let out = dev(
        &["--http", &everywhere],
        &[("JETRUN_GITHUB_WEBHOOK_SECRET", "s3cret-s3cret-s3cret")],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("JETRUN_API_TOKENS") && !stderr(&out).contains("JETRUN_GITHUB_WEBHOOK_SECRET)")
    );

    // With both, or with --insecure-dev, it starts (and says ready).
    for (extra, env) in [
        (
            vec!["--http", everywhere.as_str()],
            vec![
                ("JETRUN_GITHUB_WEBHOOK_SECRET", "s3cret-s3cret-s3cret"),
                ("JETRUN_API_TOKENS", "team:0123456789abcdef0123"),
            ],
        ),
        (vec!["--http", everywhere.as_str(), "--insecure-dev"], vec![]),
    ] {
        let mut child = dev(&extra, &env)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        {
            use std::io::BufRead;
            std::io::BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
        }
        assert!(line.starts_with("ready "), "{extra:?}: {line:?}");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn serve_takes_http_like_dev_and_the_old_listen_spelling() {
    for flag in ["--http", "--listen"] {
        let out = Command::new(BIN)
            .args(["serve", flag, "not-an-address"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{flag}: {}", stderr(&out));
        assert!(stderr(&out).contains("not-an-address"), "{}", stderr(&out));
    }
}

#[test]
fn commands_that_change_state_answer_json_when_asked() {
    let dev = start_dev(&["--queue", "default"]);
    let out = jetrun(
        &dev,
        &[
            "scale", "set", "web", "--queue", "default", "--min", "0", "--max", "2", "--target", "1",
            "--json",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["applied"], "spec");
    assert_eq!(v["spec"]["max"], 2);
    let out = jetrun(&dev, &["scale", "reset", "web", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["applied"], "reset", "{v}");

    let out = jetrun(
        &dev,
        &[
            "submit", "--queue", "parked", "--image", "busybox", "--json", "--", "true",
        ],
    );
    let rec: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let id = rec["id"].as_str().unwrap().to_string();
    assert_eq!(rec["status"], "queued");
    let out = jetrun(&dev, &["jobs", "cancel", &id, "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["status"], "cancelled");
}
