//! [`OciRunner`]: one runc container per task.
//!
//! Each task gets `<data_dir>/tasks/<token>/bundle/config.json` whose root is the image's
//! rootfs (shared, mounted read-only), and runs under the detached shim as
//! `runc --root <data_dir>/runc run --bundle <bundle> <token>` (foreground `runc run`
//! deletes the container when it ends and exits with the container's status).
//!
//! Inside, the container's PID 1 is a minimal init, as with `docker run --init`
//! ([`OciConfig::init`], Debian's static `tini`, bind-mounted read-only): it forwards
//! signals to the command's process group (so SIGTERM reaches the command: a timeout or a
//! cancel ends the task at once, the grace period is only for commands that ignore it) and
//! reaps orphans. Its child is a tiny wrapper (the host's static busybox `sh`, also
//! bind-mounted) that runs the command and writes its status into the task's status tmpfs
//! before the container can end: the real status survives the death of
//! the shim and of `runc run`, which would otherwise take it with them.
//!
//! Isolation (see `docs/runner.md` for what applies where):
//! - new mount, pid, ipc, uts and network namespaces: loopback only, or with
//!   `spec.network` outbound access through slirp4netns in the task's own namespace
//!   (never the host's; the host's loopback is not reachable; see [`crate::net`]);
//! - read-only rootfs; writable `/work` and `/tmp`, both tmpfs with a size limit
//!   ([`OciConfig::work_size_mb`], [`OciConfig::tmp_size_mb`]) so a task cannot fill the
//!   host's disk (with `spec.checkout`, `/work` is a host tmpfs of the same size the
//!   runner cloned the repository into: [`crate::checkout`]);
//! - the result (`$JETRUN_RESULT` = `/dev/.jetrun/out/result.json`) goes to a 32 KiB host
//!   tmpfs bound rw into the container, read (at most 16 KiB + 1, no symlinks) after the
//!   task ended and kept on `remove`;
//! - `noNewPrivileges`, every capability dropped, runc's default masked and read-only
//!   `/proc` paths, device access limited to runc's defaults (null, zero, random, tty...);
//! - rlimits: `RLIMIT_NOFILE` ([`OciConfig::nofile`]) and `RLIMIT_CORE` 0;
//! - cgroup limits from `spec.resources` (memory, pids, cpu) when the machine's cgroups
//!   offer the controller ([`CgroupSupport::detect`]); otherwise the limit is skipped with
//!   a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::image::{ImageErrorKind, ImageStore};
use crate::net::TaskNet;
use crate::ports::{PortAllocator, PortRange};
use crate::process::task_env;
use crate::task::{TaskMeta, Tasks, io_err, runtime, signal_group, write_atomic};
use crate::{LaunchRequest, Runner, RunnerError, RunnerErrorKind, TaskInfo, TaskStatus};

/// How long `stop` waits for the container to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Where the init, the wrapper's shell and the status dir appear inside the container:
/// under `/dev`, a per-container tmpfs, so nothing is created in the shared read-only
/// image.
const IN_INIT: &str = "/dev/.jetrun/init";
const IN_SH: &str = "/dev/.jetrun/sh";
const IN_STATUS: &str = "/dev/.jetrun/status";
/// The task's result tmpfs inside the container; `$JETRUN_RESULT` is `result.json` in it.
const IN_OUT: &str = "/dev/.jetrun/out";

/// The in-container wrapper (busybox `sh`): `$1` is the command, the rest its arguments.
/// It resolves the command on `PATH` itself, because busybox would otherwise run its own
/// applet of the same name instead of the image's program; it keeps running through the
/// signals init forwards to the group (the command gets them with default handling) and
/// records the command's status, then exits with it. One `write` of a few bytes to a
/// fresh tmpfs file, not write + rename: a reader sees the file empty or whole (tmpfs
/// updates its size after the copy), never takes an empty file for an end, and reads
/// again once the container has stopped; a `mv` would cost a fork + exec per task.
const WRAPPER: &str = r#"c=$1; shift
case $c in
*/*) ;;
*) p=; IFS=:
   for d in $PATH; do if [ -f "$d/$c" ] && [ -x "$d/$c" ]; then p=$d/$c; break; fi; done
   unset IFS
   c=$p ;;
esac
trap : TERM INT HUP QUIT USR1 USR2
if [ -n "$c" ]; then "$c" "$@"; r=$?; else echo "jetrun: $1: command not found" >&2; r=127; fi
echo "$r" > /dev/.jetrun/status/exit_code
exit "$r""#;

/// Configuration of the OCI runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OciConfig {
    /// Where tasks, images, port locks and runc state live (default `.jetrun/dev`).
    pub data_dir: PathBuf,
    /// The runc binary (default `runc`, looked up on PATH).
    pub runc: PathBuf,
    /// Host ports handed to tasks that ask (default 20000-29999).
    pub ports: PortRange,
    /// `RLIMIT_NOFILE` of tasks, soft and hard (default 1024).
    pub nofile: u64,
    /// Size of each task's `/tmp` tmpfs in MiB (default 64).
    pub tmp_size_mb: u64,
    /// Size of each task's `/work` (its scratch dir, cwd and `$HOME`) tmpfs in MiB
    /// (default 1024). Writes past it fail with ENOSPC.
    pub work_size_mb: u64,
    /// The slirp4netns binary giving `network: true` tasks outbound access (default
    /// `slirp4netns`, on PATH). Without it such tasks fail to launch; they never get
    /// the host's network instead.
    pub slirp4netns: PathBuf,
    /// Pids limit of tasks whose spec sets none (default 1024; 0 = none).
    pub default_pids: u64,
    /// Uid and gid tasks run as (default 0: root in the container, with no capabilities).
    pub user: (u32, u32),
    /// The container's PID 1: a **static** minimal init that forwards signals and reaps
    /// zombies (default `/usr/bin/tini-static`, Debian package `tini`). Required: without
    /// it the runner refuses to start rather than run tasks with no init.
    pub init: PathBuf,
    /// A **static** busybox whose `sh` runs the command and records its status inside the
    /// container (default `/bin/busybox`, Debian package `busybox-static`). Required.
    pub busybox: PathBuf,
    /// How `spec.checkout` repositories are cloned (default: see [`crate::CheckoutConfig`]).
    pub checkout: crate::CheckoutConfig,
}

impl Default for OciConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".jetrun/dev"),
            runc: PathBuf::from("runc"),
            ports: PortRange::default(),
            nofile: 1024,
            tmp_size_mb: 64,
            work_size_mb: 1024,
            slirp4netns: PathBuf::from("slirp4netns"),
            default_pids: 1024,
            user: (0, 0),
            init: PathBuf::from("/usr/bin/tini-static"),
            busybox: PathBuf::from(crate::image::BUSYBOX_BIN),
            checkout: crate::CheckoutConfig::default(),
        }
    }
}

/// Which cgroup controllers this machine lets runc use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CgroupSupport {
    /// 1 or 2 (0: no cgroup file system found).
    pub version: u8,
    /// Memory limits.
    pub memory: bool,
    /// Memory+swap limits (cgroup v1 `memory.memsw.*`, present only with swap accounting).
    pub memory_swap: bool,
    /// Pids limits.
    pub pids: bool,
    /// CPU quota.
    pub cpu: bool,
}

impl CgroupSupport {
    /// Looks at `/sys/fs/cgroup`.
    pub fn detect() -> Self {
        let root = Path::new("/sys/fs/cgroup");
        if let Ok(c) = std::fs::read_to_string(root.join("cgroup.controllers")) {
            let has = |n: &str| c.split_whitespace().any(|x| x == n);
            return Self {
                version: 2,
                memory: has("memory"),
                memory_swap: has("memory"),
                pids: has("pids"),
                cpu: has("cpu"),
            };
        }
        let memory = root.join("memory/memory.limit_in_bytes").exists();
        if !memory && !root.join("pids").is_dir() {
            return Self::default();
        }
        Self {
            version: 1,
            memory,
            memory_swap: root.join("memory/memory.memsw.limit_in_bytes").exists(),
            pids: root.join("pids").is_dir(),
            cpu: root.join("cpu/cpu.cfs_quota_us").exists()
                || root.join("cpu,cpuacct/cpu.cfs_quota_us").exists(),
        }
    }
}

/// Runs each task in its own runc container.
#[derive(Debug, Clone)]
pub struct OciRunner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: OciConfig,
    runc: PathBuf,
    init: PathBuf,
    busybox: PathBuf,
    runc_root: PathBuf,
    /// Makes cgroup names unique across data dirs (tests run side by side).
    cgroup_prefix: String,
    tasks: Arc<Tasks>,
    ports: PortAllocator,
    images: ImageStore,
    cgroups: CgroupSupport,
}

use crate::net::which;

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl OciRunner {
    /// An OCI runner. Fails with [`RunnerErrorKind::Runtime`] if runc is not found or the
    /// data dir cannot be made; it does not check that containers run (see [`probe`]).
    pub fn new(config: OciConfig) -> Result<Self, RunnerError> {
        let runc = which(&config.runc)
            .ok_or_else(|| runtime(format!("{} not found on PATH", config.runc.display())))?;
        let init = crate::task::absolute(&config.init)?;
        if !init.is_file() {
            return Err(runtime(format!(
                "the container init {} is missing (Debian: apt-get install tini); \
                 tasks need it as PID 1 so that SIGTERM reaches them and zombies are reaped",
                init.display()
            )));
        }
        let busybox = crate::task::absolute(&config.busybox)?;
        if !busybox.is_file() {
            return Err(runtime(format!(
                "{} is missing (Debian: apt-get install busybox-static); tasks need it to \
                 record their exit status inside the container",
                busybox.display()
            )));
        }
        let data_dir = crate::task::absolute(&config.data_dir)?;
        let runc_root = data_dir.join("runc");
        std::fs::create_dir_all(&runc_root).map_err(|e| io_err("create", &runc_root, e))?;
        let images = ImageStore::new(&data_dir).map_err(|e| runtime(e.to_string()))?;
        let cgroups = CgroupSupport::detect();
        let (tasks, ports) = (
            Tasks::open(&data_dir)?,
            PortAllocator::new(&data_dir, config.ports)?,
        );
        let freed = ports.reclaim(|owner| tasks.holds_resources(owner));
        if freed > 0 {
            tracing::info!(freed, "released stale port locks");
        }
        tracing::info!(runc = %runc.display(), data_dir = %data_dir.display(), ?cgroups, "OCI runner ready");
        Ok(Self {
            inner: Arc::new(Inner {
                cgroup_prefix: format!("{:08x}", fnv(&data_dir.display().to_string()) as u32),
                tasks,
                ports,
                runc,
                init,
                busybox,
                runc_root,
                images,
                cgroups,
                config,
            }),
        })
    }

    /// The cgroup controllers found on this machine.
    pub fn cgroups(&self) -> CgroupSupport {
        self.inner.cgroups
    }

    /// The image store this runner reads.
    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    /// The directory holding the task directories.
    pub fn tasks_dir(&self) -> &Path {
        &self.inner.tasks.dir
    }

    /// The pid of the slirp4netns process giving `task_ref` its network, while it has
    /// one (until `remove`).
    pub fn slirp_pid(&self, task_ref: &str) -> Option<i32> {
        TaskNet::new(&self.inner.tasks.path(task_ref).ok()?).slirp_pid()
    }

    /// Writes the bundle of `req` at `<task>/bundle` and returns the runc command line of
    /// the shim. Public so the launch benchmark can compare with bare `runc run` on the
    /// very same bundle.
    pub fn prepare_bundle(
        &self,
        req: &LaunchRequest,
        ports: &BTreeMap<String, u16>,
    ) -> Result<PathBuf, RunnerError> {
        let inner = &self.inner;
        let img = inner.images.ensure(&req.spec.image).map_err(|e| match e.kind {
            ImageErrorKind::NotFound | ImageErrorKind::Invalid => {
                RunnerError::new(RunnerErrorKind::InvalidSpec, e.to_string())
            }
            _ => runtime(e.to_string()),
        })?;
        let mut args = img.config.entrypoint.clone();
        args.extend(if req.spec.command.is_empty() {
            img.config.cmd.clone()
        } else {
            req.spec.command.clone()
        });
        if args.is_empty() {
            return Err(RunnerError::new(
                RunnerErrorKind::InvalidSpec,
                format!("no command and image {} has no default", img.name),
            ));
        }
        // init (PID 1) → wrapper → the command; `-g`: signals go to the whole group.
        let args: Vec<String> = [IN_INIT, "-g", "--", IN_SH, "-c", WRAPPER, "jetrun-wrap"]
            .into_iter()
            .map(str::to_string)
            .chain(args)
            .collect();
        let task_dir = inner.tasks.path(&req.token)?;
        let (uid, gid) = inner.config.user;
        let mut env: BTreeMap<String, String> = img
            .config
            .env
            .iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        env.entry("PATH".into())
            .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        env.insert("HOME".into(), "/work".into());
        env.extend(task_env(req, ports));
        env.insert(
            jetrun_core::result::RESULT_ENV.into(),
            format!("{IN_OUT}/{}", crate::task::RESULT_FILE),
        );
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();

        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
            json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", format!("size={}m", inner.config.tmp_size_mb)]}),
        ];
        if req.spec.checkout.is_some() {
            // The host tmpfs the runner cloned the repository into (see `launch`): the
            // same size bound as the plain one below.
            mounts.push(json!({"destination": "/work", "type": "bind", "source": task_dir.join("work"), "options": ["bind", "rw", "nosuid", "nodev"]}));
        } else {
            // A tmpfs, not a bind of a host directory: its size is bounded, so a task
            // cannot fill the host's disk (its pages count against the task's memory
            // cgroup too). Owned by the task's user so it can write there.
            mounts.push(json!({"destination": "/work", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=0755", format!("uid={uid}"), format!("gid={gid}"), format!("size={}m", inner.config.work_size_mb)]}));
        }
        for b in &img.config.binds {
            mounts.push(json!({"destination": b.destination, "type": "bind", "source": b.source, "options": ["rbind", "ro", "nosuid", "nodev"]}));
        }
        mounts.push(json!({"destination": IN_INIT, "type": "bind", "source": inner.init, "options": ["bind", "ro", "nosuid", "nodev"]}));
        mounts.push(json!({"destination": IN_SH, "type": "bind", "source": inner.busybox, "options": ["bind", "ro", "nosuid", "nodev"]}));
        mounts.push(json!({"destination": IN_STATUS, "type": "bind", "source": task_dir.join(crate::task::STATUS_DIR), "options": ["bind", "rw", "nosuid", "nodev", "noexec"]}));
        mounts.push(json!({"destination": IN_OUT, "type": "bind", "source": task_dir.join(crate::task::OUT_DIR), "options": ["bind", "rw", "nosuid", "nodev", "noexec"]}));
        let mut namespaces = vec![
            json!({"type": "pid"}),
            json!({"type": "ipc"}),
            json!({"type": "uts"}),
            json!({"type": "mount"}),
        ];
        if req.spec.network {
            // Its own namespace, made and wired to slirp4netns before the container
            // starts (see `launch`), with slirp's resolver.
            let net = TaskNet::new(&task_dir);
            namespaces.push(json!({"type": "network", "path": net.ns()}));
            if img.rootfs.join("etc/resolv.conf").is_file() {
                mounts.push(json!({"destination": "/etc/resolv.conf", "type": "bind", "source": net.resolv_conf(), "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
            }
        } else {
            namespaces.push(json!({"type": "network"}));
        }

        let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
        let cg = inner.cgroups;
        let res = &req.spec.resources;
        if let Some(mb) = res.memory_mb {
            if cg.memory {
                let bytes = mb.saturating_mul(1024 * 1024);
                resources["memory"] = if cg.memory_swap {
                    json!({"limit": bytes, "swap": bytes})
                } else {
                    json!({"limit": bytes})
                };
            } else {
                tracing::warn!(task_ref = %req.token, memory_mb = mb, "no memory cgroup here: memory limit not applied");
            }
        }
        let pids = res.pids.unwrap_or(inner.config.default_pids);
        if pids > 0 {
            if cg.pids {
                resources["pids"] = json!({"limit": pids});
            } else if res.pids.is_some() {
                tracing::warn!(task_ref = %req.token, pids, "no pids cgroup here: pids limit not applied");
            }
        }
        if let Some(cpus) = res.cpus.filter(|c| *c > 0.0) {
            if cg.cpu {
                resources["cpu"] = json!({"quota": (cpus * 100_000.0) as i64, "period": 100_000u64});
            } else {
                tracing::warn!(task_ref = %req.token, cpus, "no cpu cgroup here: cpu limit not applied");
            }
        }
        let nofile = inner.config.nofile;
        let no_caps: Vec<String> = Vec::new();
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": inner.config.user.0, "gid": inner.config.user.1},
                "args": args,
                "env": env,
                "cwd": img.config.workdir.clone().unwrap_or_else(|| "/work".into()),
                "capabilities": {"bounding": no_caps, "effective": no_caps, "inheritable": no_caps, "permitted": no_caps, "ambient": no_caps},
                "rlimits": [
                    {"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile},
                    {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}
                ],
                "noNewPrivileges": true
            },
            "root": {"path": img.rootfs, "readonly": true},
            "hostname": "jetrun",
            "mounts": mounts,
            "linux": {
                "namespaces": namespaces,
                "cgroupsPath": format!("jetrun/{}-{}", inner.cgroup_prefix, req.token),
                "resources": resources,
                "maskedPaths": [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                    "/proc/scsi", "/sys/fs/cgroup"
                ],
                "readonlyPaths": [
                    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
                ]
            }
        });
        let bundle = task_dir.join("bundle");
        std::fs::create_dir_all(&bundle).map_err(|e| io_err("create", &bundle, e))?;
        let body = serde_json::to_vec_pretty(&config).map_err(runtime)?;
        write_atomic(&bundle.join("config.json"), &body)?;
        Ok(bundle)
    }

    /// The runc command line that runs `bundle` as container `id` in the foreground.
    pub fn runc_run_argv(&self, bundle: &Path, id: &str) -> Vec<String> {
        vec![
            self.inner.runc.display().to_string(),
            "--root".into(),
            self.inner.runc_root.display().to_string(),
            "run".into(),
            "--bundle".into(),
            bundle.display().to_string(),
            id.into(),
        ]
    }

    fn runc(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        std::process::Command::new(&self.inner.runc)
            .arg("--root")
            .arg(&self.inner.runc_root)
            .args(args)
            .output()
    }

    /// Whether runc still knows the container as running (it outlived a killed shim).
    fn container_running(&self, id: &str) -> bool {
        match self.runc(&["state", id]) {
            Ok(o) if o.status.success() => serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .ok()
                .and_then(|v| {
                    v.get("status")
                        .and_then(|s| s.as_str())
                        .map(|s| s == "running" || s == "created")
                })
                .unwrap_or(false),
            _ => false,
        }
    }

    fn kill(&self, task_ref: &str, sig: &str, fallback: nix::sys::signal::Signal) {
        match self.runc(&["kill", task_ref, sig]) {
            Ok(o) if o.status.success() => {}
            // Not created yet or already gone: signal the shim's group (runc run forwards
            // signals to the container).
            _ => signal_group(&self.inner.tasks, task_ref, fallback),
        }
    }

    /// Runs a tiny container (`true` in the busybox image, or the host image when busybox
    /// is not available) and says whether OCI works on this machine.
    pub async fn probe(&self) -> Result<(), RunnerError> {
        let image = if self.inner.images.ensure("busybox").is_ok() {
            "busybox"
        } else {
            "host"
        };
        let token = format!(
            "probe-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
        );
        let spec = jetrun_core::JobSpec::new("probe", image, vec!["true".into()]);
        let mut req = LaunchRequest::new("probe", 1, spec, None);
        req.token = token.clone();
        let r = async {
            let t = self.launch(&req).await?;
            match tokio::time::timeout(Duration::from_secs(15), self.wait(&t)).await {
                Ok(Ok(TaskStatus::Exited { exit_code: 0 })) => {
                    // The in-container status is what makes outcomes right after a
                    // crash: the probe fails if it does not work here.
                    let d = self.inner.tasks.path(&t)?;
                    match std::fs::read_to_string(d.join(crate::task::STATUS_DIR).join("exit_code")) {
                        Ok(s) if s.trim() == "0" => Ok(()),
                        other => Err(runtime(format!(
                            "probe container ran, but its init did not record its exit status ({other:?})"
                        ))),
                    }
                }
                Ok(Ok(s)) => {
                    let err = self
                        .log_paths(&t)
                        .and_then(|(_, e)| std::fs::read_to_string(e).ok())
                        .unwrap_or_default();
                    Err(runtime(format!("probe container ended {s:?}: {}", err.trim())))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    let _ = self.stop(&t, Duration::ZERO).await;
                    Err(runtime("probe container did not finish in 15 s"))
                }
            }
        }
        .await;
        let _ = self.remove(&token).await;
        self.inner.tasks.discard(&token);
        r
    }
}

/// Makes an OCI runner from `config` and probes it: `Ok` only if a container runs here.
pub async fn probe(config: OciConfig) -> Result<OciRunner, RunnerError> {
    let r = OciRunner::new(config)?;
    r.probe().await?;
    Ok(r)
}

#[async_trait::async_trait]
impl Runner for OciRunner {
    fn name(&self) -> &'static str {
        "oci"
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<String, RunnerError> {
        let inner = &self.inner;
        let token = req.token.clone();
        if !inner.tasks.create(&token)? {
            return Ok(token);
        }
        let mut held: Option<BTreeMap<String, u16>> = None;
        let net = TaskNet::new(&inner.tasks.path(&token)?);
        let result = async {
            let ports = inner.ports.allocate(&token, &req.spec.ports)?;
            held = Some(ports.clone());
            let bundle = self.prepare_bundle(req, &ports)?;
            if req.spec.network {
                let slirp = which(&inner.config.slirp4netns).ok_or_else(|| {
                    RunnerError::new(
                        RunnerErrorKind::InvalidSpec,
                        format!(
                            "the job asks for network but {} is not installed on this node (Debian: apt-get install slirp4netns); \
                             tasks never get the host's network instead",
                            inner.config.slirp4netns.display()
                        ),
                    )
                })?;
                let forwarded: Vec<u16> = ports.values().copied().collect();
                net.setup(&slirp, &forwarded).await?;
            }
            let (uid, gid) = inner.config.user;
            inner.tasks.mount_status(&token, uid, gid)?;
            inner.tasks.mount_out(&token, uid, gid)?;
            if let Some(c) = &req.spec.checkout {
                let work = inner.tasks.mount_work(&token, inner.config.work_size_mb, uid, gid)?;
                crate::checkout::clone_into(&inner.config.checkout, c, &work, Some((uid, gid))).await?;
            }
            inner.tasks.write_meta(&TaskMeta {
                task_ref: token.clone(),
                job_id: req.job_id.clone(),
                attempt: req.attempt,
                runner: "oci".into(),
                ports,
                container_id: Some(token.clone()),
                created_at: chrono::Utc::now(),
            })?;
            let env = BTreeMap::from([(
                "PATH".to_string(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            )]);
            inner
                .tasks
                .spawn_shim(&token, &self.runc_run_argv(&bundle, &token), &env, &bundle)
        }
        .await;
        match result {
            Ok(pid) => {
                tracing::debug!(task_ref = %token, shim_pid = pid, image = %req.spec.image, "container launched");
                Ok(token)
            }
            Err(e) => {
                if let Some(p) = held {
                    inner.ports.release(&token, p.values().copied());
                }
                net.teardown();
                inner.tasks.discard(&token);
                Err(e)
            }
        }
    }

    async fn wait(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        let me = self.clone();
        self.inner
            .tasks
            .wait_with(task_ref, &move |t| me.container_running(t))
            .await
    }

    async fn describe(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        self.inner
            .tasks
            .status_with(task_ref, &|t| self.container_running(t))
    }

    async fn stop(&self, task_ref: &str, grace: Duration) -> Result<(), RunnerError> {
        let tasks = &self.inner.tasks;
        if self.describe(task_ref).await?.is_final() {
            return Ok(());
        }
        tasks.mark(task_ref, "stop_requested");
        let me = self.clone();
        let running = move |t: &str| me.container_running(t);
        self.kill(task_ref, "TERM", nix::sys::signal::Signal::SIGTERM);
        if tasks.wait_for(task_ref, grace, &running).await?.is_some() {
            return Ok(());
        }
        tracing::info!(
            task_ref,
            grace_ms = grace.as_millis() as u64,
            "container ignored SIGTERM, sending SIGKILL"
        );
        self.kill(task_ref, "KILL", nix::sys::signal::Signal::SIGKILL);
        if tasks.wait_for(task_ref, KILL_WAIT, &running).await?.is_none() {
            return Err(runtime(format!("container {task_ref} survived SIGKILL")));
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<TaskInfo>, RunnerError> {
        self.inner.tasks.list(&|t| self.container_running(t))
    }

    async fn remove(&self, task_ref: &str) -> Result<(), RunnerError> {
        let tasks = &self.inner.tasks;
        let Some(meta) = tasks.meta(task_ref)? else {
            return Ok(());
        };
        if !self.describe(task_ref).await?.is_final() {
            self.stop(task_ref, Duration::ZERO).await?;
        }
        // Normally gone already (foreground `runc run` deletes it); not if the shim died.
        // Looking at runc's state dir first saves a runc invocation per task.
        if self.inner.runc_root.join(task_ref).exists() {
            let _ = self.runc(&["delete", "--force", task_ref]);
        }
        self.inner.ports.release(task_ref, meta.ports.values().copied());
        let d = tasks.path(task_ref)?;
        // slirp4netns and the namespace mount, also for tasks a previous process started.
        TaskNet::new(&d).teardown();
        // Keeps the command's status and result, then unmounts their tmpfs.
        tasks.unmount_status(task_ref);
        tasks.unmount_out(task_ref);
        tasks.unmount_work(task_ref);
        for sub in ["bundle", "work"] {
            let p = d.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| io_err("remove", &p, e))?;
            }
        }
        tasks.mark(task_ref, "removed");
        tasks.forget(task_ref);
        Ok(())
    }

    fn log_paths(&self, task_ref: &str) -> Option<(PathBuf, PathBuf)> {
        self.inner.tasks.log_paths(task_ref)
    }

    async fn result(&self, task_ref: &str) -> Result<Option<Vec<u8>>, RunnerError> {
        self.inner.tasks.result(task_ref)
    }
}
