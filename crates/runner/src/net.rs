//! The network of an OCI task that asks for one (`spec.network: true`): its **own**
//! network namespace with outbound access through [slirp4netns], never the host's.
//!
//! Per task, before the container starts:
//! 1. a fresh network namespace, kept alive by a bind mount of its nsfs file on
//!    `<task>/net/ns` (made from a short-lived thread: `unshare(CLONE_NEWNET)` applies to
//!    the calling thread only, so the runner's own threads stay in the host namespace);
//! 2. `slirp4netns --configure --mtu=65520 --disable-host-loopback --netns-type=path
//!    --api-socket <task>/net/api.sock <task>/net/ns tap0`: `tap0` gets 10.0.2.100/24, a
//!    default route via 10.0.2.2 and the resolver 10.0.2.3; 10.0.2.2 does **not** lead to
//!    the host's loopback (so not to a NATS server listening there);
//! 3. readiness is seen from inside the namespace (`tap0`'s default route in
//!    `/proc/thread-self/net/route`, from a thread that joined it), then each `spec.ports`
//!    port is forwarded from the host (same number) with slirp's `add_hostfwd`;
//! 4. the container joins that namespace by path (`config.json`).
//!
//! slirp4netns runs in its own process group (a Ctrl-C of `jetrun dev` does not cut the
//! task off) and outlives the launcher like the task does; its pid and start time are in
//! `<task>/net/slirp.pid`. [`teardown`] (called by `remove`, also for tasks adopted or
//! reaped after a restart) kills it and unmounts the namespace.
//!
//! [slirp4netns]: https://github.com/rootless-containers/slirp4netns

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::task::{io_err, proc_starttime, runtime, write_atomic};
use crate::{RunnerError, RunnerErrorKind};

/// How long slirp4netns has to configure `tap0`.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// The resolver slirp4netns answers on inside the namespace.
pub(crate) const RESOLVER: &str = "10.0.2.3";

/// The task's guest address (slirp's default: network + 100).
const GUEST_ADDR: &str = "10.0.2.100";

/// The files of a task's network under `<task>/net/`.
#[derive(Debug, Clone)]
pub(crate) struct TaskNet {
    dir: PathBuf,
}

impl TaskNet {
    pub fn new(task_dir: &Path) -> Self {
        Self {
            dir: task_dir.join("net"),
        }
    }

    /// The bind-mounted namespace file the container joins.
    pub fn ns(&self) -> PathBuf {
        self.dir.join("ns")
    }

    /// The generated `/etc/resolv.conf` (bound read-only into the container).
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    fn api(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("slirp.pid")
    }

    /// Makes the namespace, starts slirp4netns on it, waits until `tap0` is configured and
    /// forwards `ports`. On failure everything made so far is torn down.
    pub async fn setup(&self, slirp: &Path, ports: &[u16]) -> Result<(), RunnerError> {
        let r = self.setup_inner(slirp, ports).await;
        if r.is_err() {
            self.teardown();
        }
        r
    }

    async fn setup_inner(&self, slirp: &Path, ports: &[u16]) -> Result<(), RunnerError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err("create", &self.dir, e))?;
        write_atomic(&self.resolv_conf(), format!("nameserver {RESOLVER}\n").as_bytes())?;
        let ns = self.ns();
        std::fs::File::create(&ns).map_err(|e| io_err("create", &ns, e))?;
        let target = ns.clone();
        std::thread::spawn(move || new_netns_at(&target))
            .join()
            .map_err(|_| runtime("the network namespace thread panicked"))??;
        let log = self.dir.join("slirp.log");
        let out = std::fs::File::create(&log).map_err(|e| io_err("create", &log, e))?;
        let err = out.try_clone().map_err(|e| io_err("open", &log, e))?;
        let mut cmd = tokio::process::Command::new(slirp);
        cmd.args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--netns-type=path",
        ]);
        if !ports.is_empty() {
            // Only when needed: a socket path is limited to 108 bytes.
            cmd.arg("--api-socket").arg(self.api());
        }
        cmd.arg(&ns)
            .arg("tap0")
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Own group: signals to the launcher's group must not cut the task's network.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| runtime(format!("spawn {}: {e}", slirp.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| runtime("slirp4netns exited before its pid was known"))? as i32;
        let start = proc_starttime(pid).map(|(_, s)| s).unwrap_or(0);
        write_atomic(&self.pid_file(), format!("{pid} {start}\n").as_bytes())?;
        // Reap it when it ends (no zombie); after a launcher crash init does.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let target = ns.clone();
        let ready = tokio::task::spawn_blocking(move || wait_for_tap(&target, READY_WITHIN))
            .await
            .map_err(|e| runtime(format!("waiting for slirp4netns: {e}")))?;
        if !ready {
            let msg = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(runtime(format!(
                "slirp4netns did not configure tap0 within {} s: {}",
                READY_WITHIN.as_secs(),
                msg.trim()
            )));
        }
        for &p in ports {
            self.forward(p)?;
        }
        Ok(())
    }

    /// Forwards host TCP port `port` (all addresses) to the same port of the task.
    fn forward(&self, port: u16) -> Result<(), RunnerError> {
        let api = self.api();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut s = loop {
            match std::os::unix::net::UnixStream::connect(&api) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(io_err("connect", &api, e)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| io_err("configure", &api, e))?;
        let req = serde_json::json!({
            "execute": "add_hostfwd",
            "arguments": {"proto": "tcp", "host_addr": "0.0.0.0", "host_port": port, "guest_addr": GUEST_ADDR, "guest_port": port}
        });
        s.write_all(req.to_string().as_bytes())
            .and_then(|()| s.shutdown(std::net::Shutdown::Write))
            .map_err(|e| io_err("write", &api, e))?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .map_err(|e| io_err("read", &api, e))?;
        let v: serde_json::Value = serde_json::from_str(&reply)
            .map_err(|e| runtime(format!("slirp4netns answered {reply:?}: {e}")))?;
        if v.get("error").is_some() {
            return Err(RunnerError::new(
                RunnerErrorKind::Exhausted,
                format!("forwarding port {port}: {reply}"),
            ));
        }
        Ok(())
    }

    /// Kills slirp4netns (if it is still the recorded process) and unmounts and deletes
    /// the namespace. Idempotent; errors are logged, not returned (nothing else to do).
    pub fn teardown(&self) {
        if let Ok(s) = std::fs::read_to_string(self.pid_file()) {
            let mut it = s.split_whitespace();
            if let (Some(Ok(pid)), Some(Ok(start))) =
                (it.next().map(str::parse::<i32>), it.next().map(str::parse::<u64>))
                && matches!(proc_starttime(pid), Some((st, s)) if st != 'Z' && (start == 0 || s == start))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let ns = self.ns();
        if ns.exists() {
            // Detach: a process still inside keeps the namespace alive by itself, the
            // mount point goes now.
            if let Err(e) = nix::mount::umount2(&ns, nix::mount::MntFlags::MNT_DETACH)
                && e != nix::errno::Errno::EINVAL
            {
                tracing::warn!(path = %ns.display(), error = %e, "network namespace not unmounted");
            }
        }
        if self.dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            tracing::warn!(path = %self.dir.display(), error = %e, "task network dir not removed");
        }
    }

    /// Whether slirp4netns of this task still runs (tests, diagnostics).
    pub fn slirp_pid(&self) -> Option<i32> {
        let s = std::fs::read_to_string(self.pid_file()).ok()?;
        s.split_whitespace().next()?.parse().ok()
    }
}

/// In the calling (short-lived) thread: a new network namespace, bound on `path`.
fn new_netns_at(path: &Path) -> Result<(), RunnerError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| runtime(format!("unshare(CLONE_NEWNET): {e}")))?;
    nix::mount::mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| runtime(format!("bind the network namespace on {}: {e}", path.display())))
}

/// From a thread that joins the namespace: waits until `tap0` carries a default route.
fn wait_for_tap(ns: &Path, within: Duration) -> bool {
    let Ok(f) = std::fs::File::open(ns) else {
        return false;
    };
    let ns = ns.to_path_buf();
    let joined = std::thread::spawn(move || {
        if nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            tracing::warn!(path = %ns.display(), "setns into the task's network namespace failed");
            return false;
        }
        let deadline = Instant::now() + within;
        let mut delay = Duration::from_millis(2);
        while Instant::now() < deadline {
            // Columns: Iface Destination ...; a default route has destination 00000000.
            if std::fs::read_to_string("/proc/thread-self/net/route").is_ok_and(|t| {
                t.lines().any(|l| {
                    let mut c = l.split_whitespace();
                    c.next() == Some("tap0") && c.next() == Some("00000000")
                })
            }) {
                block_link_local();
                return true;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(50));
        }
        false
    });
    joined.join().unwrap_or(false)
}

/// In a thread inside the task's namespace: a `prohibit` route for 169.254.0.0/16, so the
/// task cannot reach link-local services through slirp (the cloud metadata endpoint and
/// its instance credentials). The task has no `CAP_NET_ADMIN` to remove it. Best effort:
/// without `ip` (iproute2) it is skipped with a warning.
fn block_link_local() {
    let Some(ip) = which(Path::new("ip")) else {
        tracing::warn!("ip (iproute2) not found: link-local addresses stay reachable from network tasks");
        return;
    };
    // A child forked from this thread starts in the thread's network namespace.
    match std::process::Command::new(ip)
        .args(["route", "add", "prohibit", "169.254.0.0/16"])
        .env_clear()
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            tracing::warn!(stderr = %String::from_utf8_lossy(&o.stderr).trim(), "link-local route not added")
        }
        Err(e) => tracing::warn!(error = %e, "link-local route not added"),
    }
}

/// Finds `bin` on PATH (or takes it as is when it has a slash).
pub(crate) fn which(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}
