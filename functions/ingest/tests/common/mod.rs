//! A real nats-server with the topology, and the ingest router on a real TCP port.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use jetrun_core::Names;
use jetrun_harness::NatsServer;
use jetrun_ingest::{ApiTokens, Config, Credentials, Ingest, WebhookSecrets, auth::sign};
use jetrun_nats::Topology;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "it's-a-secret-to-everybody";
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/github-webhooks");

pub struct Env {
    pub server: NatsServer,
    pub base: String,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub http: reqwest::Client,
    pub ingest: Arc<Ingest>,
    pub shutdown: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn creds(tokens: &str) -> Credentials {
    Credentials {
        webhook_secrets: WebhookSecrets::parse(&format!("old-rotated-secret,{SECRET}")),
        api_tokens: ApiTokens::parse(tokens).unwrap(),
        ..Credentials::default()
    }
}

pub async fn start(config: Config, creds: Credentials) -> Env {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    Topology::new(Names::default()).apply(&js).await.unwrap();
    let ctx = jetrun_host::Context::from_client(client.clone(), Names::default())
        .await
        .unwrap();
    // The lifecycle's job-control service (dispatch runs it in production; decision 16),
    // answering before the first request.
    tokio::spawn(jetrun_nats::control::serve(
        client.clone(),
        ctx.store.clone(),
        ctx.publisher("dispatch"),
        std::future::pending(),
    ));
    let control = jetrun_nats::control::ControlClient::new(client.clone(), Names::default(), "test");
    while control
        .cancel("*", "probe")
        .await
        .is_err_and(|e| e.kind != jetrun_nats::control::CancelErrorKind::NotFound)
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ingest = Ingest::new(ctx, config, creds).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(jetrun_ingest::serve(
        listener,
        jetrun_ingest::router(ingest.clone()),
        shutdown.clone(),
    ));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    Env {
        server,
        base,
        client,
        js,
        http,
        ingest,
        shutdown,
    }
}

impl Env {
    /// POSTs a webhook as GitHub would, signed with `SECRET`.
    pub async fn deliver(&self, event: &str, delivery: &str, body: Vec<u8>) -> reqwest::Response {
        let sig = sign(SECRET.as_bytes(), &body);
        self.http
            .post(format!("{}/webhooks/github", self.base))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", sig)
            .header("Content-Type", "application/json")
            .header("User-Agent", "GitHub-Hookshot/abc123")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn webhook_messages(&self) -> u64 {
        let mut s = self
            .js
            .get_stream(Names::default().stream_webhooks())
            .await
            .unwrap();
        s.info().await.unwrap().state.messages
    }
}

/// `(event, file name, bytes)` of every fixture.
pub fn fixtures() -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(FIXTURES).unwrap() {
        let dir = dir.unwrap();
        if !dir.file_type().unwrap().is_dir() {
            continue;
        }
        let event = dir.file_name().to_string_lossy().to_string();
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let f = f.unwrap();
            out.push((
                event.clone(),
                f.file_name().to_string_lossy().to_string(),
                std::fs::read(f.path()).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

pub fn fixture(event: &str, file: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{event}/{file}")).unwrap()
}

pub fn delivery() -> String {
    uuid::Uuid::new_v4().to_string()
}
