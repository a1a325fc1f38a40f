#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! A task survives the SIGKILL of the process that launched it, and a new runner over the
//! same data dir finds it (`list`) and its exit code. The launcher is this test binary
//! re-executed as the ignored helper test `helper_launch_then_hang`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use jetrun_core::JobSpec;
use jetrun_runner::{LaunchRequest, OciConfig, OciRunner, ProcessRunner, Runner, TaskStatus};

fn make(kind: &str, dir: &std::path::Path) -> Box<dyn Runner> {
    match kind {
        "oci" => Box::new(
            OciRunner::new(OciConfig {
                data_dir: dir.to_path_buf(),
                ..Default::default()
            })
            .unwrap(),
        ),
        _ => Box::new(ProcessRunner::new(dir).unwrap()),
    }
}

#[tokio::test]
#[ignore = "helper: run by the survival tests in a child process"]
async fn helper_launch_then_hang() {
    let (Ok(kind), Ok(dir)) = (std::env::var("SURVIVE_RUNNER"), std::env::var("SURVIVE_DIR")) else {
        return;
    };
    let r = make(&kind, dir.as_ref());
    let spec = JobSpec::new(
        "q",
        "busybox",
        vec!["sh".into(), "-c".into(), "sleep 1; echo done; exit 5".into()],
    );
    let t = r
        .launch(&LaunchRequest::new("survivor", 2, spec, None))
        .await
        .unwrap();
    println!("LAUNCHED {t}");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

async fn survives(kind: &str) {
    let d = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_launch_then_hang",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SURVIVE_RUNNER", kind)
        .env("SURVIVE_DIR", d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let task_ref = loop {
        let l = lines.next().expect("helper printed LAUNCHED").unwrap();
        // libtest prints `test helper_launch_then_hang ... ` before it on the same line.
        if let Some(i) = l.find("LAUNCHED ") {
            break l[i + "LAUNCHED ".len()..].trim().to_string();
        }
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let r = make(kind, d.path());
    let list = r.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (
            list[0].task_ref.as_str(),
            list[0].job_id.as_str(),
            list[0].attempt
        ),
        (task_ref.as_str(), "survivor", 2)
    );
    assert_eq!(
        list[0].status,
        TaskStatus::Running,
        "still running after its launcher died"
    );
    let s = tokio::time::timeout(Duration::from_secs(10), r.wait(&task_ref))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, TaskStatus::Exited { exit_code: 5 });
    let out = std::fs::read_to_string(r.log_paths(&task_ref).unwrap().0).unwrap();
    assert_eq!(out, "done\n");
    r.remove(&task_ref).await.unwrap();
    assert!(r.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn process_task_survives_launcher_sigkill() {
    survives("process").await;
}

#[tokio::test]
async fn oci_task_survives_launcher_sigkill() {
    // Skips without root or runc, unless JETRUN_REQUIRE_OCI=1 (scripts/test.sh): then fails.
    let require = std::env::var("JETRUN_REQUIRE_OCI").as_deref() == Ok("1");
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) != 0 {
        assert!(!require, "JETRUN_REQUIRE_OCI=1 but the OCI runner needs root");
        eprintln!("SKIP: the OCI runner needs root");
        return;
    }
    if !std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|p| p.join("runc").is_file())
    {
        assert!(!require, "JETRUN_REQUIRE_OCI=1 but runc is not installed");
        eprintln!("SKIP: runc is not installed");
        return;
    }
    survives("oci").await;
}
