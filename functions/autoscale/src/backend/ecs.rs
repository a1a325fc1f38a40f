//! The `ecs-service` backend: `UpdateService desiredCount` on an ECS service.
//!
//! The spec's `backend_config` names the service: `{"cluster": "c", "service": "s"}`,
//! optionally with `region` and `endpoint_url` (which override [`EcsConfig`]). The
//! desired count is written only when it differs from what ECS reports, and ECS is
//! re-read every `refresh` (so a change made outside jetrun is corrected).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ecs::Client;
use jetrun_core::scale::{BackendKind, ScaleSpec};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::info;

use super::{Backend, BackendError, BackendErrorKind};
use crate::config::EcsConfig;

/// How often ECS is re-read although nothing changed.
const REFRESH: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    cluster: String,
    service: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    endpoint_url: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    desired: u32,
    running: u32,
    at: Instant,
}

/// Region and endpoint a client was built for.
type ClientKey = (Option<String>, Option<String>);

/// Scales ECS services.
pub struct EcsBackend {
    cfg: EcsConfig,
    fixed: Option<Client>,
    clients: Mutex<HashMap<ClientKey, Client>>,
    known: Mutex<HashMap<String, Known>>,
}

impl std::fmt::Debug for EcsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcsBackend")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl EcsBackend {
    /// A backend whose clients come from the default AWS configuration chain.
    pub fn new(cfg: EcsConfig) -> Self {
        Self {
            cfg,
            fixed: None,
            clients: Mutex::default(),
            known: Mutex::default(),
        }
    }

    /// A backend using one given client for every service (tests, custom credentials).
    pub fn with_client(client: Client) -> Self {
        Self {
            cfg: EcsConfig::default(),
            fixed: Some(client),
            clients: Mutex::default(),
            known: Mutex::default(),
        }
    }

    fn err(spec: &ScaleSpec, kind: BackendErrorKind, message: impl Into<String>) -> BackendError {
        BackendError {
            backend: BackendKind::EcsService,
            kind,
            service: spec.service.clone(),
            message: message.into(),
        }
    }

    fn target(spec: &ScaleSpec) -> Result<Target, BackendError> {
        let v = spec.backend_config.clone().ok_or_else(|| {
            Self::err(
                spec,
                BackendErrorKind::Config,
                "backend_config needs {\"cluster\", \"service\"}",
            )
        })?;
        serde_json::from_value(v)
            .map_err(|e| Self::err(spec, BackendErrorKind::Config, format!("backend_config: {e}")))
    }

    async fn client(&self, t: &Target) -> Client {
        if let Some(c) = &self.fixed {
            return c.clone();
        }
        let region = t.region.clone().or_else(|| self.cfg.region.clone());
        let endpoint = t.endpoint_url.clone().or_else(|| self.cfg.endpoint_url.clone());
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&(region.clone(), endpoint.clone())) {
            return c.clone();
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(e) = &endpoint {
            loader = loader.endpoint_url(e.clone());
        }
        let c = Client::new(&loader.load().await);
        clients.insert((region, endpoint), c.clone());
        c
    }

    async fn describe(&self, spec: &ScaleSpec, t: &Target) -> Result<Known, BackendError> {
        let out = self
            .client(t)
            .await
            .describe_services()
            .cluster(&t.cluster)
            .services(&t.service)
            .send()
            .await
            .map_err(|e| {
                Self::err(
                    spec,
                    BackendErrorKind::Unavailable,
                    format!(
                        "DescribeServices: {}",
                        aws_sdk_ecs::error::DisplayErrorContext(&e)
                    ),
                )
            })?;
        let s = out
            .services()
            .iter()
            .find(|s| {
                s.service_name() == Some(t.service.as_str())
                    || s.service_arn()
                        .is_some_and(|a| a.ends_with(&format!("/{}", t.service)))
            })
            .ok_or_else(|| {
                Self::err(
                    spec,
                    BackendErrorKind::Config,
                    format!("no ECS service {} in cluster {}", t.service, t.cluster),
                )
            })?;
        let k = Known {
            desired: u32::try_from(s.desired_count()).unwrap_or(0),
            running: u32::try_from(s.running_count()).unwrap_or(0),
            at: Instant::now(),
        };
        self.known.lock().await.insert(spec.service.clone(), k);
        Ok(k)
    }

    async fn known(&self, spec: &ScaleSpec, t: &Target) -> Result<Known, BackendError> {
        let cached = self.known.lock().await.get(&spec.service).copied();
        match cached {
            Some(k) if k.at.elapsed() < REFRESH => Ok(k),
            _ => self.describe(spec, t).await,
        }
    }
}

#[async_trait]
impl Backend for EcsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::EcsService
    }

    async fn current(&self, spec: &ScaleSpec) -> Result<Option<u32>, BackendError> {
        let t = Self::target(spec)?;
        // ECS's desired count is what is there (or on its way); running lags behind.
        Ok(Some(self.known(spec, &t).await?.desired))
    }

    async fn apply(&self, spec: &ScaleSpec, desired: u32) -> Result<(), BackendError> {
        let t = Self::target(spec)?;
        let k = self.known(spec, &t).await?;
        if k.desired == desired {
            return Ok(());
        }
        let count = i32::try_from(desired).unwrap_or(i32::MAX);
        self.client(&t)
            .await
            .update_service()
            .cluster(&t.cluster)
            .service(&t.service)
            .desired_count(count)
            .send()
            .await
            .map_err(|e| {
                Self::err(
                    spec,
                    BackendErrorKind::Unavailable,
                    format!("UpdateService: {}", aws_sdk_ecs::error::DisplayErrorContext(&e)),
                )
            })?;
        info!(service = %spec.service, cluster = %t.cluster, ecs_service = %t.service, from = k.desired, to = desired, running = k.running, "ECS desiredCount updated");
        self.known.lock().await.insert(
            spec.service.clone(),
            Known {
                desired,
                running: k.running,
                at: Instant::now(),
            },
        );
        Ok(())
    }
}
