//! Running a set of components until a signal or the first failure (`dev`, `worker`).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// A running component: its name and task.
pub type Component = (&'static str, JoinHandle<anyhow::Result<()>>);

/// Waits until `shutdown` is cancelled or a component ends; then cancels `shutdown`, gives
/// every component 30 s to stop, and returns the first failure, if any. A component
/// stopping by itself after shutdown was asked for is not a failure.
pub async fn supervise(mut components: Vec<Component>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut failed = None;
    if components.is_empty() {
        shutdown.cancelled().await;
    } else {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            (res, idx, _) = futures::future::select_all(components.iter_mut().map(|(_, h)| h)) => {
                let name = components[idx].0;
                failed = match res {
                    Ok(Ok(())) if shutdown.is_cancelled() => None,
                    Ok(Ok(())) => Some(anyhow::anyhow!("component {name} stopped unexpectedly")),
                    Ok(Err(e)) => Some(e.context(format!("component {name} failed"))),
                    Err(e) => Some(anyhow::anyhow!("component {name} panicked: {e}")),
                };
            }
        }
    }
    shutdown.cancel();
    info!("shutting down");
    for (name, h) in components {
        if h.is_finished() {
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(30), h).await {
            Ok(Ok(Err(e))) => {
                error!(component = name, error = %format!("{e:#}"), "component failed during shutdown")
            }
            Err(_) => error!(component = name, "component did not stop in 30 s"),
            _ => {}
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
