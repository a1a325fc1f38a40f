#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `ecs-service` backend against moto's ECS (`moto_server`, PyPI `moto[server]`).
//! Built with `--features ecs`; skipped with a message when `moto_server` is not on PATH.
#![cfg(feature = "ecs")]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_ecs::config::{BehaviorVersion, Credentials, Region};
use jetrun_autoscale::backend::ecs::EcsBackend;
use jetrun_autoscale::backend::{Backend, BackendErrorKind};
use jetrun_core::scale::{BackendKind, ScaleSpec, Strategy};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

async fn start_moto() -> Option<(Moto, String)> {
    if !on_path("moto_server") {
        eprintln!("SKIPPED: moto_server is not on PATH (pip install 'moto[server]')");
        return None;
    }
    let port = jetrun_harness::free_port().unwrap();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let moto = Moto(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some((moto, url))
}

fn client(url: &str) -> aws_sdk_ecs::Client {
    let conf = aws_sdk_ecs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(url)
        .build();
    aws_sdk_ecs::Client::from_conf(conf)
}

async fn desired_count(c: &aws_sdk_ecs::Client) -> i32 {
    let out = c
        .describe_services()
        .cluster("jobs")
        .services("workers")
        .send()
        .await
        .unwrap();
    out.services()[0].desired_count()
}

#[tokio::test]
async fn ecs_backend_updates_desired_count() {
    let Some((_moto, url)) = start_moto().await else {
        return;
    };
    let c = client(&url);
    c.create_cluster().cluster_name("jobs").send().await.unwrap();
    c.register_task_definition()
        .family("worker")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("worker")
                .image("jetrun:latest")
                .memory(256)
                .build(),
        )
        .send()
        .await
        .unwrap();
    c.create_service()
        .cluster("jobs")
        .service_name("workers")
        .task_definition("worker")
        .desired_count(1)
        .send()
        .await
        .unwrap();

    let backend = EcsBackend::with_client(c.clone());
    let mut spec = ScaleSpec::new("workers", "default", 0, 10, 1);
    spec.backend = BackendKind::EcsService;
    spec.strategy = Strategy::Infra;
    spec.backend_config = Some(serde_json::json!({"cluster": "jobs", "service": "workers"}));

    assert_eq!(backend.current(&spec).await.unwrap(), Some(1));
    backend.apply(&spec, 4).await.unwrap();
    assert_eq!(desired_count(&c).await, 4);
    assert_eq!(backend.current(&spec).await.unwrap(), Some(4));
    // Idempotent: applying again changes nothing.
    backend.apply(&spec, 4).await.unwrap();
    assert_eq!(desired_count(&c).await, 4);
    backend.apply(&spec, 0).await.unwrap();
    assert_eq!(desired_count(&c).await, 0);

    // A spec without its ECS coordinates is a configuration error, not a retry.
    let mut bad = spec.clone();
    bad.backend_config = None;
    assert_eq!(
        backend.apply(&bad, 2).await.unwrap_err().kind,
        BackendErrorKind::Config
    );
    // An unknown service too.
    bad.backend_config = Some(serde_json::json!({"cluster": "jobs", "service": "nope"}));
    bad.service = "other".into();
    let e = backend.apply(&bad, 2).await.unwrap_err();
    assert!(
        matches!(e.kind, BackendErrorKind::Config | BackendErrorKind::Unavailable),
        "{e}"
    );
}
