#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `local` backend with a harmless command (`sleep`) standing in for `jetrun worker`.

use std::time::Duration;

use jetrun_autoscale::backend::Backend;
use jetrun_autoscale::backend::local::LocalBackend;
use jetrun_autoscale::config::LocalConfig;
use jetrun_core::scale::{BackendKind, ScaleSpec};

fn alive(pid: u32) -> bool {
    // Zombies count as gone: the backend reaps its children.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[tokio::test]
async fn local_replicas_are_started_replaced_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(LocalConfig {
        program: Some("/bin/sh".into()),
        // Each replica writes what it was given, then idles.
        args: vec![
            "-c".into(),
            "echo {queue} {index} {port} $JETRUN_PORT_BASE > {data_dir}/args; exec sleep 30".into(),
        ],
        data_root: dir.path().to_path_buf(),
        base_port: 31000,
        ports_per_replica: 10,
        stop_grace: Duration::from_secs(2),
        ..LocalConfig::default()
    });
    let mut spec = ScaleSpec::new("w", "q", 0, 5, 1);
    spec.backend = BackendKind::Local;

    backend.apply(&spec, 3).await.unwrap();
    assert_eq!(backend.current(&spec).await.unwrap(), Some(3));
    let pids = backend.pids("w").await;
    assert_eq!(pids.len(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..3 {
        let args = std::fs::read_to_string(dir.path().join("w").join(i.to_string()).join("args")).unwrap();
        let parts: Vec<&str> = args.split_whitespace().collect();
        assert_eq!(parts[0], "q");
        assert_eq!(parts[1], i.to_string());
        assert_eq!(parts[2], parts[3], "port placeholder and JETRUN_PORT_BASE agree");
        ports.insert(parts[2].to_string());
    }
    assert_eq!(ports.len(), 3, "each replica has its own ports");

    // Idempotent.
    backend.apply(&spec, 3).await.unwrap();
    assert_eq!(backend.pids("w").await, pids);

    // A replica that dies is replaced by a later apply; it died young, so only after a
    // short backoff (no crash loop at the tick rate).
    let victim = pids[&1];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(backend.current(&spec).await.unwrap(), Some(2));
    backend.apply(&spec, 3).await.unwrap();
    assert_eq!(
        backend.current(&spec).await.unwrap(),
        Some(2),
        "restarted without backoff"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        backend.apply(&spec, 3).await.unwrap();
        if backend.current(&spec).await.unwrap() == Some(3) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not replaced");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after = backend.pids("w").await;
    assert_eq!(after.len(), 3);
    assert_ne!(after[&1], victim);

    // Down to 1: the highest indexes stop (SIGTERM).
    backend.apply(&spec, 1).await.unwrap();
    assert_eq!(backend.current(&spec).await.unwrap(), Some(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while alive(after[&2]) || alive(after[&1]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stopped replicas still alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(alive(after[&0]));

    backend.shutdown().await;
    assert!(!alive(after[&0]));
}
