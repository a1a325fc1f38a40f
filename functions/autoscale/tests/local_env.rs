#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Local replicas (worker processes) do not inherit the secrets of the HTTP edge that the
//! autoscaler's process (`jetrun dev`) holds: API tokens, the GitHub webhook secret, and
//! the callback secret when the replica runs no settle. NATS credentials, which a worker
//! needs, are passed on.
//!
//! `std::env::set_var` is unsafe (and unsafe code is forbidden here), so the test runs
//! this test binary again with the secrets in its environment; that child spawns the
//! replicas.

use std::time::Duration;

use jetrun_autoscale::backend::Backend;
use jetrun_autoscale::backend::local::LocalBackend;
use jetrun_autoscale::config::LocalConfig;
use jetrun_core::scale::{BackendKind, ScaleSpec};

const SECRET: &str = "s3cret-of-the-edge-0123456789";

#[test]
fn local_replicas_do_not_inherit_the_edges_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "replica_env_child", "--nocapture", "--include-ignored"])
        .env("JETRUN_API_TOKENS", format!("acme:{SECRET}"))
        .env("JETRUN_GITHUB_WEBHOOK_SECRET", SECRET)
        .env("JETRUN_CALLBACK_SECRET", "callback-secret-kept-for-settle")
        .env("JETRUN_NATS_PASSWORD", "nats-password-a-worker-needs")
        .env("JETRUN_TEST_REPLICA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name).join("0").join("env")).unwrap();
    let with_settle = read("w");
    assert!(
        with_settle.contains("JETRUN_NATS_PASSWORD=nats-password-a-worker-needs"),
        "{with_settle}"
    );
    assert!(
        !with_settle.contains(SECRET),
        "a replica inherited an edge secret: {with_settle}"
    );
    assert!(
        !with_settle.contains("JETRUN_API_TOKENS") && !with_settle.contains("JETRUN_GITHUB_WEBHOOK_SECRET")
    );
    assert!(
        with_settle.contains("JETRUN_CALLBACK_SECRET="),
        "settle in the replica needs it"
    );
    let no_settle = read("ns");
    assert!(!no_settle.contains("JETRUN_CALLBACK_SECRET"), "{no_settle}");
    assert!(no_settle.contains("JETRUN_NATS_PASSWORD="));
}

/// Run only as the child of the test above (ignored otherwise).
#[tokio::test]
#[ignore = "run by local_replicas_do_not_inherit_the_edges_secrets with secrets in its env"]
async fn replica_env_child() {
    let root = std::path::PathBuf::from(std::env::var("JETRUN_TEST_REPLICA_DIR").unwrap());
    for (service, extra) in [("w", ""), ("ns", " --no-settle")] {
        let backend = LocalBackend::new(LocalConfig {
            program: Some("/bin/sh".into()),
            args: vec![
                "-c".into(),
                format!("env > {{data_dir}}/env; exec sleep 30 #{extra}"),
                "sh".into(),
            ]
            .into_iter()
            .chain(extra.split_whitespace().map(str::to_string))
            .collect(),
            data_root: root.clone(),
            base_port: 31500,
            ports_per_replica: 10,
            stop_grace: Duration::from_secs(1),
            ..LocalConfig::default()
        });
        let mut spec = ScaleSpec::new(service, "q", 0, 1, 1);
        spec.backend = BackendKind::Local;
        backend.apply(&spec, 1).await.unwrap();
        let f = root.join(service).join("0").join("env");
        for _ in 0..100 {
            if std::fs::read_to_string(&f).is_ok_and(|t| t.contains("JETRUN_REPLICA_INDEX")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        backend.apply(&spec, 0).await.unwrap();
    }
}
