//! moto's server (`moto_server`, PyPI `moto[server]`), one per test on a free port, as the
//! ECS endpoint. Shared by the runner's and the bridge's tests (`#[path]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_ecs::config::{BehaviorVersion, Credentials, Region};

/// A running moto server, killed on drop.
pub struct Moto {
    child: Child,
    /// Its endpoint URL.
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts moto (it must be installed: `scripts/setup.sh`) and keeps ECS tasks where
/// they are until they are stopped: moto's default moves a task to `STOPPED` as soon as
/// it is read.
pub async fn start() -> Moto {
    let port = jetrun_harness::free_port().unwrap();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server must be installed (pip install 'moto[server]'; scripts/setup.sh)");
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = reqwest::Client::new()
        .post(format!("{}/moto-api/state-manager/set-transition", moto.url))
        .json(&serde_json::json!({
            "model_name": "ecs::task",
            "transition": {"progression": "manual", "times": 1_000_000_000u64}
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "moto state manager: {}", r.status());
    moto
}

/// An ECS client for `url` without the SDK's own retries (the runner retries).
pub fn client(url: &str) -> aws_sdk_ecs::Client {
    let conf = aws_sdk_ecs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(url)
        .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_ecs::Client::from_conf(conf)
}

/// Creates the cluster `jobs` and the task definition `job` (container `job`).
pub async fn setup(c: &aws_sdk_ecs::Client) {
    c.create_cluster().cluster_name("jobs").send().await.unwrap();
    for family in ["job", "tools-job"] {
        c.register_task_definition()
            .family(family)
            .container_definitions(
                aws_sdk_ecs::types::ContainerDefinition::builder()
                    .name("job")
                    .image("public.ecr.aws/docker/library/busybox:latest")
                    .memory(512)
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
}

/// Every task of cluster `jobs` started by `started_by` (running or stopped).
pub async fn tasks_started_by(c: &aws_sdk_ecs::Client, started_by: &str) -> Vec<String> {
    c.list_tasks()
        .cluster("jobs")
        .started_by(started_by)
        .send()
        .await
        .unwrap()
        .task_arns()
        .to_vec()
}
