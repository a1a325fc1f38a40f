//! The `local` backend: N child processes per service on this host (by default
//! `jetrun worker --queue Q --data-dir DIR`), each with its own data directory
//! (`<data_root>/<service>/<index>`) and its own port range (`JETRUN_PORT_BASE`).
//!
//! Reconciling is level-triggered: exited replicas are reaped and replaced, missing ones
//! started, extra ones (highest index first) sent SIGTERM and killed after the grace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use jetrun_core::scale::{BackendKind, ScaleSpec};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Backend, BackendError, BackendErrorKind};
use crate::config::LocalConfig;

struct Replica {
    child: Child,
    slot: u32,
    started: Instant,
}

/// A replica that exits sooner than this after starting is crash-looping: restarts of its
/// service back off (1 s doubling to 30 s) instead of spinning at the tick rate.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Group {
    replicas: BTreeMap<u32, Replica>,
    backoff: Duration,
    not_before: Option<Instant>,
}

#[derive(Default)]
struct Groups {
    services: HashMap<String, Group>,
    /// Port slots in use across every service.
    slots: BTreeSet<u32>,
    /// Replicas being stopped (waited for at shutdown).
    stopping: Vec<tokio::task::JoinHandle<()>>,
}

/// Supervises local replicas.
pub struct LocalBackend {
    cfg: LocalConfig,
    program: PathBuf,
    groups: Mutex<Groups>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

/// Variables of this process a worker replica must not inherit: the ingest edge's API
/// tokens and webhook secrets, and the callback secret when the replica runs no settle
/// (`--no-settle`). An operator who really wants one passes it in `env` explicitly.
pub fn secrets_not_for_replicas(args: &[String]) -> Vec<&'static str> {
    let mut v = vec![
        "JETRUN_API_TOKENS",
        "JETRUN_GITHUB_WEBHOOK_SECRET",
        "JETRUN_GITHUB_SECRET_FILE",
    ];
    if args.iter().any(|a| a == "--no-settle") {
        v.push("JETRUN_CALLBACK_SECRET");
    }
    v
}

impl LocalBackend {
    /// A backend running `cfg.program` (or this executable).
    pub fn new(cfg: LocalConfig) -> Self {
        let program = cfg
            .program
            .clone()
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("jetrun"));
        Self {
            cfg,
            program,
            groups: Mutex::new(Groups::default()),
        }
    }

    /// Process ids of the live replicas of `service`, by index.
    pub async fn pids(&self, service: &str) -> BTreeMap<u32, u32> {
        let g = self.groups.lock().await;
        g.services
            .get(service)
            .map(|m| {
                m.replicas
                    .iter()
                    .filter_map(|(i, r)| r.child.id().map(|p| (*i, p)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn err(&self, spec: &ScaleSpec, kind: BackendErrorKind, message: String) -> BackendError {
        BackendError {
            backend: BackendKind::Local,
            kind,
            service: spec.service.clone(),
            message,
        }
    }

    fn spawn(&self, spec: &ScaleSpec, index: u32, slot: u32) -> Result<Child, BackendError> {
        let data_dir = self.cfg.data_root.join(&spec.service).join(index.to_string());
        std::fs::create_dir_all(&data_dir).map_err(|e| {
            self.err(
                spec,
                BackendErrorKind::Spawn,
                format!("{}: {e}", data_dir.display()),
            )
        })?;
        let port = u32::from(self.cfg.base_port) + slot * u32::from(self.cfg.ports_per_replica.max(1));
        let port = u16::try_from(port).map_err(|_| {
            self.err(
                spec,
                BackendErrorKind::Spawn,
                format!("port slot {slot} beyond 65535"),
            )
        })?;
        let nats_url = self.cfg.nats_url.clone().unwrap_or_default();
        let subst = |a: &str| {
            a.replace("{queue}", &spec.queue)
                .replace("{service}", &spec.service)
                .replace("{index}", &index.to_string())
                .replace("{data_dir}", &data_dir.to_string_lossy())
                .replace("{port}", &port.to_string())
                .replace("{nats_url}", &nats_url)
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("replica.log"))
            .map_err(|e| self.err(spec, BackendErrorKind::Spawn, e.to_string()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| self.err(spec, BackendErrorKind::Spawn, e.to_string()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(self.cfg.args.iter().map(|a| subst(a)))
            .env("JETRUN_SERVICE", &spec.service)
            .env("JETRUN_REPLICA_INDEX", index.to_string())
            .env("JETRUN_PORT_BASE", port.to_string())
            .env("JETRUN_PORT_COUNT", self.cfg.ports_per_replica.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // A replica must not outlive a crashed autoscaler's handle on it.
            .kill_on_drop(true);
        // A replica is a worker: it needs NATS credentials, not the HTTP edge's secrets,
        // which this process (`jetrun dev`, the autoscaler) may hold in its environment.
        for k in secrets_not_for_replicas(&self.cfg.args) {
            cmd.env_remove(k);
        }
        cmd.envs(&self.cfg.env);
        if let Some(url) = &self.cfg.nats_url {
            cmd.env("JETRUN_NATS_URL", url);
        }
        let child = cmd.spawn().map_err(|e| {
            self.err(
                spec,
                BackendErrorKind::Spawn,
                format!("{}: {e}", self.program.display()),
            )
        })?;
        info!(service = %spec.service, index, port, pid = ?child.id(), "local replica started");
        Ok(child)
    }

    fn stop(&self, service: &str, index: u32, mut r: Replica) -> tokio::task::JoinHandle<()> {
        let grace = self.cfg.stop_grace;
        let service = service.to_string();
        tokio::spawn(async move {
            if let Some(pid) = r.child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            match tokio::time::timeout(grace, r.child.wait()).await {
                Ok(_) => info!(%service, index, "local replica stopped"),
                Err(_) => {
                    warn!(%service, index, ?grace, "local replica did not stop in time; killing it");
                    let _ = r.child.kill().await;
                }
            }
        })
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    async fn current(&self, spec: &ScaleSpec) -> Result<Option<u32>, BackendError> {
        let mut g = self.groups.lock().await;
        let Groups { services, slots, .. } = &mut *g;
        let group = services.entry(spec.service.clone()).or_default();
        reap(&spec.service, group, slots);
        Ok(Some(u32::try_from(group.replicas.len()).unwrap_or(u32::MAX)))
    }

    async fn apply(&self, spec: &ScaleSpec, desired: u32) -> Result<(), BackendError> {
        let mut g = self.groups.lock().await;
        let Groups {
            services,
            slots,
            stopping,
        } = &mut *g;
        let group = services.entry(spec.service.clone()).or_default();
        reap(&spec.service, group, slots);
        let backing_off = group.not_before.is_some_and(|t| Instant::now() < t);
        while group.replicas.len() < desired as usize && !backing_off {
            let index = (0..).find(|i| !group.replicas.contains_key(i)).unwrap_or(0);
            let slot = (0..).find(|s| !slots.contains(s)).unwrap_or(0);
            let child = self.spawn(spec, index, slot)?;
            slots.insert(slot);
            group.replicas.insert(
                index,
                Replica {
                    child,
                    slot,
                    started: Instant::now(),
                },
            );
        }
        while group.replicas.len() > desired as usize {
            let Some((index, r)) = group.replicas.pop_last() else {
                break;
            };
            slots.remove(&r.slot);
            stopping.push(self.stop(&spec.service, index, r));
        }
        stopping.retain(|h| !h.is_finished());
        Ok(())
    }

    async fn shutdown(&self) {
        let mut g = self.groups.lock().await;
        let Groups {
            services,
            slots,
            stopping,
        } = &mut *g;
        let mut all = std::mem::take(stopping);
        for (service, group) in services.drain() {
            for (index, r) in group.replicas {
                slots.remove(&r.slot);
                all.push(self.stop(&service, index, r));
            }
        }
        drop(g);
        futures::future::join_all(all).await;
    }
}

/// Forgets replicas that exited (they are restarted by the same `apply`, after a backoff
/// if they crash-loop).
fn reap(service: &str, group: &mut Group, slots: &mut BTreeSet<u32>) {
    let now = Instant::now();
    let exited: Vec<u32> = group
        .replicas
        .iter_mut()
        .filter_map(|(i, r)| match r.child.try_wait() {
            Ok(Some(status)) => {
                warn!(%service, index = *i, %status, "local replica exited");
                Some(*i)
            }
            Ok(None) => None,
            Err(_) => Some(*i),
        })
        .collect();
    for i in exited {
        if let Some(r) = group.replicas.remove(&i) {
            slots.remove(&r.slot);
            if now.duration_since(r.started) < HEALTHY_AFTER {
                group.backoff = (group.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                group.not_before = Some(now + group.backoff);
                warn!(%service, index = i, backoff = ?group.backoff, "local replica exited soon after starting; backing off");
            } else {
                group.backoff = Duration::ZERO;
            }
        }
    }
}
