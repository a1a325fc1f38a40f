//! Connecting to a real nats-server that requires a user and password: the settings of
//! `jetrun_nats::auth` reach the server, a wrong password fails at once (not after the
//! whole connect wait), and no credentials is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use jetrun_harness::{ServerOptions, ServerProcess, free_port};
use jetrun_nats::{ConnectErrorKind, NatsAuth, connect_with};

fn server_with_user(dir: &std::path::Path) -> ServerProcess {
    ServerProcess::spawn(ServerOptions {
        addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        store_dir: dir.join("jetstream"),
        name: "auth".into(),
        cluster: None,
        log_file: dir.join("nats.log"),
        extra_args: ["--user", "dispatch", "--pass", "s3cret-pass"]
            .map(String::from)
            .to_vec(),
    })
    .unwrap()
}

fn user(pass: &str) -> NatsAuth {
    NatsAuth {
        user: Some("dispatch".into()),
        password: Some(pass.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn user_and_password_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_user(dir.path());
    let client = connect_with(&server.url(), "t", Duration::from_secs(5), &user("s3cret-pass"))
        .await
        .unwrap();
    // The connection is usable: a JetStream round trip works.
    let js = async_nats::jetstream::new(client);
    js.query_account().await.unwrap();
}

#[tokio::test]
async fn credentials_in_the_url_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_user(dir.path());
    let url = server.url().replace("nats://", "nats://dispatch:s3cret-pass@");
    let auth = NatsAuth::default().or_from_url(&url);
    let client = connect_with(&url, "t", Duration::from_secs(5), &auth)
        .await
        .unwrap();
    client.flush().await.unwrap();
}

#[tokio::test]
async fn a_wrong_password_or_none_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_user(dir.path());
    for auth in [user("wrong"), NatsAuth::default()] {
        let started = Instant::now();
        let err = connect_with(&server.url(), "t", Duration::from_secs(30), &auth)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ConnectErrorKind::Authentication, "{err}");
        // Not retried for the whole 30 s wait: credentials do not get better.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
