//! `jetrun-ecs-bridge`: the bridge as an AWS Lambda function (aws-lambda-rust-runtime).
//!
//! Invoked by the EventBridge rule for the job cluster's "ECS Task State Change" events,
//! and by a schedule ("Scheduled Event") for the reconcile pass. An error fails the
//! invocation, so Lambda retries it and finally sends it to the function's dead-letter
//! queue.
//!
//! Environment: `JETRUN_NATS_URL` (and the `JETRUN_NATS_*` credentials), `JETRUN_PREFIX`
//! (default `jetrun`), `JETRUN_ECS_DEPLOYMENT` (default `jetrun`), `JETRUN_ECS_CONTAINER`
//! (default `job`), `JETRUN_ECS_CLUSTER` (for the reconcile, default `jetrun-jobs`),
//! `JETRUN_LOG_FORMAT` (default `json`), and with the `otel` feature (the shipped image) the
//! standard `OTEL_*` variables; spans are flushed at the end of each invocation.
// The SDK clients' and the runtime's nested futures exceed the default layout query depth
// inside `main`'s state machine.
#![recursion_limit = "256"]

use std::sync::Arc;
use std::time::Duration;

use jetrun_ecs_bridge::{Bridge, BridgeError, BridgeErrorKind, Config, Handled, NatsPublisher};
use jetrun_runner::ecs::{EcsConfig, EcsRunner};
use lambda_runtime::{Error, LambdaEvent, service_fn};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn fail(kind: BridgeErrorKind, message: String) -> BridgeError {
    BridgeError {
        kind,
        message,
        source: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let _log = jetrun_telemetry::init(&env_or("JETRUN_LOG_FORMAT", "json"));
    let cfg = Config {
        deployment: env_or("JETRUN_ECS_DEPLOYMENT", "jetrun"),
        container: env_or("JETRUN_ECS_CONTAINER", "job"),
    };
    let url = env_or("JETRUN_NATS_URL", "nats://127.0.0.1:4222");
    let names = jetrun_core::Names::new(&env_or("JETRUN_PREFIX", "jetrun"))
        .map_err(|e| fail(BridgeErrorKind::Parse, format!("JETRUN_PREFIX: {e}")))?;
    // Connected once per cold start; the runtime reuses it across invocations.
    let client = jetrun_nats::connect(&url, "jetrun-ecs-bridge", Duration::from_secs(10))
        .await
        .map_err(|e| fail(BridgeErrorKind::Store, e.to_string()))?;
    let js = async_nats::jetstream::new(client);
    let store = jetrun_nats::JobStore::open(&js, &names, "jetrun/ecs-bridge")
        .await
        .map_err(|e| fail(BridgeErrorKind::Store, e.to_string()))?;
    let bridge = Bridge::new(
        cfg.clone(),
        Arc::new(store),
        Arc::new(NatsPublisher::new(js, names, "jetrun/ecs-bridge")),
    );
    let ecs = EcsConfig {
        cluster: env_or("JETRUN_ECS_CLUSTER", "jetrun-jobs"),
        deployment: cfg.deployment.clone(),
        container: cfg.container.clone(),
        // The reconcile only lists, describes and stops; it never launches.
        task_definition: Some("unused-by-the-bridge".into()),
        ..Default::default()
    };
    let runner = Arc::new(
        EcsRunner::from_config(ecs)
            .await
            .map_err(|e| fail(BridgeErrorKind::Ecs, e.to_string()))?,
    );
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<serde_json::Value>| {
        let bridge = bridge.clone();
        let runner = runner.clone();
        async move {
            let out = invoke(&bridge, &runner, ev).await;
            // Lambda freezes the environment once this returns: export the spans now.
            let _ = tokio::task::spawn_blocking(jetrun_telemetry::flush).await;
            out
        }
    }))
    .await
}

/// One invocation: a scheduled reconcile, or one task-state event.
async fn invoke(
    bridge: &Bridge,
    runner: &EcsRunner,
    ev: LambdaEvent<serde_json::Value>,
) -> Result<serde_json::Value, Error> {
    if ev.payload.get("detail-type").and_then(|t| t.as_str()) == Some("Scheduled Event") {
        let r = jetrun_ecs_bridge::reconcile(runner, bridge)
            .await
            .map_err(Error::from)?;
        return Ok(serde_json::json!({
            "reconciled": {"seen": r.seen, "reported": r.reported, "stopped": r.stopped}
        }));
    }
    Ok(match bridge.handle(&ev.payload).await.map_err(Error::from)? {
        Handled::Published(e) => serde_json::json!({"published": e}),
        Handled::Ignored(why) => serde_json::json!({"ignored": why}),
        _ => serde_json::json!({}),
    })
}
