//! The nats-server configurations under `infra/nats` are accepted by the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn every_infra_config_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/nats");
    let mut files = vec![root.join("jetrun.conf")];
    for e in std::fs::read_dir(root.join("cluster")).unwrap() {
        files.push(e.unwrap().path());
    }
    assert_eq!(files.len(), 4);
    for f in files {
        let out = Command::new(jetrun_harness::server_binary())
            .arg("-t")
            .arg("-c")
            .arg(&f)
            .envs(
                [
                    "INGEST",
                    "ROUTE",
                    "WORKER",
                    "AUTOSCALE",
                    "BRIDGE",
                    "GITHUB",
                    "OPERATOR",
                ]
                .map(|u| (format!("JETRUN_{u}_PASSWORD"), "x".to_string())),
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("is valid"),
            "{}: {text}",
            f.display()
        );
    }
}
