//! The nats-server configurations under `infra/nats` are accepted by the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn every_infra_config_is_valid() {
    let root = jetrun_harness::shipped_config_dir();
    let mut files = vec![root.join("jetrun.conf")];
    for e in std::fs::read_dir(root.join("cluster")).unwrap() {
        files.push(e.unwrap().path());
    }
    assert_eq!(files.len(), 4);
    // Every password the users read from the environment (the same list the harness
    // fills in for ShippedNats).
    let users = jetrun_harness::shipped_users().unwrap();
    for f in files {
        let out = Command::new(jetrun_harness::server_binary())
            .arg("-t")
            .arg("-c")
            .arg(&f)
            .envs(users.iter().map(|u| (u.password_var.clone(), "x".to_string())))
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

#[tokio::test]
async fn the_shipped_config_runs_and_each_user_logs_in_with_its_own_password() {
    let nats = jetrun_harness::ShippedNats::start().unwrap();
    let users: Vec<&str> = nats.users().collect();
    assert!(
        users.contains(&"operator") && users.contains(&"worker"),
        "{users:?}"
    );
    for u in &users {
        let c = nats.client(u).await;
        c.flush().await.unwrap();
    }
    // The operator has JetStream (the account's).
    let js = async_nats::jetstream::new(nats.client("operator").await);
    js.query_account().await.unwrap();
    assert!(nats.violations().is_empty(), "{:#?}", nats.violations());
    // Another user's password is refused.
    let wrong = async_nats::ConnectOptions::new()
        .user_and_password("worker".into(), nats.password("operator"))
        .connect(nats.url())
        .await;
    assert!(wrong.is_err(), "a wrong password was accepted");
}
