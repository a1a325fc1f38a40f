//! The per-task state directory and the detached shim shared by the process and OCI runners.
//!
//! Layout of `<data_dir>/tasks/<token>/`:
//! - `meta.json`: who the task is ([`TaskMeta`]);
//! - `pid`: `<pid> <starttime>` of the shim (the start time guards against pid reuse);
//! - `exit_code`: written by the shim when the task ends (`<status>` as the shell reports
//!   it), or by the runner: `signal 9` when it stopped the task and the shim died with it,
//!   `lost` when the task ended with no status recorded anywhere (it died with its node);
//! - `status/` (OCI): a tiny tmpfs bind-mounted into the container, where the in-container
//!   wrapper writes the command's own status (`status/exit_code`) before
//!   the container can end; copied to `command_exit` when the task is removed. This status
//!   wins over the shim's: it survives the death of the shim and of `runc run`;
//! - `stop_requested`: present once `stop` was called;
//! - `removed`: present once `remove` was called (the logs stay, `list` skips the task);
//! - `out/` (OCI): a second tiny tmpfs, bind-mounted rw at `/dev/.jetrun/out` in the
//!   container, where the task writes its result (`$JETRUN_RESULT`, `out/result.json`);
//!   its own mount, so a task filling it cannot keep the wrapper from recording the
//!   status. On `remove` at most `MAX_RESULT_BYTES + 1` bytes of it are kept as
//!   `result.json` and the tmpfs is unmounted; process tasks write `out/result.json` in a
//!   plain directory;
//! - `stdout.log`, `stderr.log`: the task's output;
//! - `work/`: the task's scratch directory (deleted by `remove`); for an OCI task with a
//!   `checkout`, a host tmpfs of the scratch size holding the clone, bound at `/work`.
//!
//! The shim is `sh -c 'trap : TERM INT; "$@"; echo $? > exit_code'` started in its own
//! process group, so the task survives the death of the process that launched it and its
//! exit code is not lost. The trap keeps the shim alive when the group gets SIGTERM, so it
//! can record how the task ended. The shim can die too (a service manager killing the
//! worker's whole cgroup, the OOM killer): OCI tasks therefore also record the command's
//! status from inside the container (`status/`), and a task whose end is recorded nowhere
//! is [`TaskStatus::Lost`], not a made-up `signal 9`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{RunnerError, RunnerErrorKind, TaskInfo, TaskStatus};

/// The shim script: `$1` is the exit-code file, the rest is the command. One small
/// `write`: readers see the file empty or whole and never take an empty one for an end.
const SHIM: &str = r#"e="$1"; shift; trap : TERM INT; "$@"; c=$?; echo "$c" > "$e""#;

/// The per-task status directory (a tmpfs for OCI tasks).
pub(crate) const STATUS_DIR: &str = "status";

/// Size of the status tmpfs: one small file, so a task cannot fill anything through it.
const STATUS_TMPFS: &str = "size=16k,nr_inodes=8";

/// The per-task result directory (a tmpfs for OCI tasks) and the file in it.
pub(crate) const OUT_DIR: &str = "out";
pub(crate) const RESULT_FILE: &str = "result.json";
/// The result as kept once the task was removed.
const KEPT_RESULT: &str = "result.json";

/// Size of the result tmpfs: room for one result just past the limit (so an oversized
/// one is seen as such, not cut to a valid-looking prefix), and nothing more.
const OUT_TMPFS: &str = "size=32k,nr_inodes=8";

/// How long a task directory may lack a pid file before it counts as a launch that died
/// half-way (the launching process crashed between creating the dir and spawning).
const PENDING_GRACE: Duration = Duration::from_secs(30);

/// What a task is, as recorded at launch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskMeta {
    pub task_ref: String,
    pub job_id: String,
    pub attempt: u32,
    pub runner: String,
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub container_id: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

pub(crate) fn runtime(msg: impl std::fmt::Display) -> RunnerError {
    RunnerError::new(RunnerErrorKind::Runtime, msg.to_string())
}

pub(crate) fn io_err(what: &str, path: &Path, e: std::io::Error) -> RunnerError {
    runtime(format!("{what} {}: {e}", path.display()))
}

/// Whether `token` is safe as a directory name and a runc container id.
pub(crate) fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 200
        && !token.starts_with('.')
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// `JETRUN_PORT_<NAME>` for a port name.
pub(crate) fn port_env_name(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("JETRUN_PORT_{n}")
}

/// The pid and start time of a live process, read from `/proc`.
pub(crate) fn proc_starttime(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    // starttime is field 22; after `)` we are at field 3.
    let start = it.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The shared task table of one runner: directories on disk plus in-process exit notices
/// for the shims this process spawned (adopted tasks are polled).
#[derive(Debug)]
pub(crate) struct Tasks {
    pub dir: PathBuf,
    exits: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

impl Tasks {
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, RunnerError> {
        let dir = absolute(&data_dir.join("tasks"))?;
        std::fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
        Ok(Arc::new(Self {
            dir,
            exits: Mutex::new(HashMap::new()),
        }))
    }

    pub fn path(&self, task_ref: &str) -> Result<PathBuf, RunnerError> {
        if !valid_token(task_ref) {
            return Err(RunnerError::new(
                RunnerErrorKind::NotFound,
                format!("bad task ref {task_ref:?}"),
            ));
        }
        Ok(self.dir.join(task_ref))
    }

    /// Creates the task directory; `Ok(false)` if it already exists (idempotent launch).
    pub fn create(&self, token: &str) -> Result<bool, RunnerError> {
        if !valid_token(token) {
            return Err(RunnerError::new(
                RunnerErrorKind::InvalidSpec,
                format!("bad token {token:?}"),
            ));
        }
        let p = self.dir.join(token);
        match std::fs::create_dir(&p) {
            Ok(()) => {
                let w = p.join("work");
                std::fs::create_dir(&w).map_err(|e| io_err("create", &w, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("create", &p, e)),
        }
    }

    /// Undoes a failed launch.
    pub fn discard(&self, token: &str) {
        // Never remove_dir_all across a mount.
        self.unmount_status(token);
        self.unmount_out(token);
        self.unmount_work(token);
        if let Ok(p) = self.path(token) {
            let _ = std::fs::remove_dir_all(p);
        }
    }

    pub fn write_meta(&self, meta: &TaskMeta) -> Result<(), RunnerError> {
        let p = self.path(&meta.task_ref)?.join("meta.json");
        let body = serde_json::to_vec_pretty(meta).map_err(runtime)?;
        write_atomic(&p, &body)
    }

    pub fn meta(&self, task_ref: &str) -> Result<Option<TaskMeta>, RunnerError> {
        let p = self.path(task_ref)?.join("meta.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(runtime),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &p, e)),
        }
    }

    /// Opens the task's log files for appending.
    pub fn open_logs(&self, token: &str) -> Result<(std::fs::File, std::fs::File), RunnerError> {
        let d = self.path(token)?;
        let open = |name: &str| {
            let p = d.join(name);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| io_err("open", &p, e))
        };
        Ok((open("stdout.log")?, open("stderr.log")?))
    }

    /// Spawns the shim around `argv` in its own process group, records its pid, and
    /// arranges an in-process exit notice.
    pub fn spawn_shim(
        &self,
        token: &str,
        argv: &[String],
        env: &BTreeMap<String, String>,
        cwd: &Path,
    ) -> Result<i32, RunnerError> {
        let d = self.path(token)?;
        let (out, err) = self.open_logs(token)?;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SHIM)
            .arg("jetrun-shim")
            .arg(d.join("exit_code"))
            .args(argv)
            .env_clear()
            .envs(env)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Own process group: stop() signals the whole group, and the task is not hit
            // by signals sent to the launcher's group (Ctrl-C of `jetrun dev`).
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| runtime(format!("spawn shim: {e}")))?;
        let pid = child
            .id()
            .ok_or_else(|| runtime("shim exited before its pid was known"))? as i32;
        let start = proc_starttime(pid).map(|(_, s)| s).unwrap_or(0);
        write_atomic(&d.join("pid"), format!("{pid} {start}\n").as_bytes())?;
        let (tx, rx) = watch::channel(false);
        if let Ok(mut m) = self.exits.lock() {
            m.insert(token.to_string(), rx);
        }
        // Reap the shim (no zombie) and tell waiters at once, without polling.
        tokio::spawn(async move {
            let _ = child.wait().await;
            let _ = tx.send(true);
        });
        Ok(pid)
    }

    /// `(pid, starttime)` of the shim, if it was spawned.
    pub fn pid(&self, task_ref: &str) -> Option<(i32, u64)> {
        let s = std::fs::read_to_string(self.path(task_ref).ok()?.join("pid")).ok()?;
        let mut it = s.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }

    /// Whether the shim still runs (and is the same process that was recorded).
    pub fn shim_alive(&self, task_ref: &str) -> bool {
        match self.pid(task_ref) {
            Some((pid, start)) => matches!(
                proc_starttime(pid),
                Some((state, s)) if state != 'Z' && (start == 0 || s == start)
            ),
            None => false,
        }
    }

    /// The recorded end of the task, if any: the command's own status from inside the
    /// container first (live, then kept), then the shim's or the runner's.
    pub fn exit_status(&self, task_ref: &str) -> Option<TaskStatus> {
        let d = self.path(task_ref).ok()?;
        [
            d.join(STATUS_DIR).join("exit_code"),
            d.join("command_exit"),
            d.join("exit_code"),
        ]
        .iter()
        .find_map(|p| parse_exit(&std::fs::read_to_string(p).ok()?))
    }

    /// Records an end the shim could not record itself: `signal <n>` (stopped, and the
    /// shim died with the task) or `lost`.
    fn record_end(&self, task_ref: &str, what: &str) {
        if let Ok(d) = self.path(task_ref)
            && self.exit_status(task_ref).is_none()
        {
            let _ = write_atomic(&d.join("exit_code"), format!("{what}\n").as_bytes());
        }
    }

    /// Mounts the task's status tmpfs at `<task>/status`, writable by `uid:gid` (the
    /// task's user inside the container). A tmpfs, not a plain host directory, because
    /// the task can write there too: it must not be able to fill the host's disk.
    pub fn mount_status(&self, task_ref: &str, uid: u32, gid: u32) -> Result<PathBuf, RunnerError> {
        let p = self.path(task_ref)?.join(STATUS_DIR);
        std::fs::create_dir_all(&p).map_err(|e| io_err("create", &p, e))?;
        let opts = format!("{STATUS_TMPFS},mode=0700,uid={uid},gid={gid}");
        use nix::mount::MsFlags;
        nix::mount::mount(
            Some("tmpfs"),
            &p,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(opts.as_str()),
        )
        .map_err(|e| runtime(format!("mount the status tmpfs on {}: {e}", p.display())))?;
        Ok(p)
    }

    /// Keeps the command's status (`command_exit`) and unmounts and deletes the status
    /// tmpfs. Idempotent; also for tasks a previous process started.
    pub fn unmount_status(&self, task_ref: &str) {
        let Ok(d) = self.path(task_ref) else { return };
        let p = d.join(STATUS_DIR);
        if !p.exists() {
            return;
        }
        let live = p.join("exit_code");
        if let Ok(s) = std::fs::read_to_string(&live)
            && parse_exit(&s).is_some()
            && !d.join("command_exit").exists()
            && let Err(e) = write_atomic(&d.join("command_exit"), s.as_bytes())
        {
            tracing::warn!(task_ref, error = %e, "command status not kept");
        }
        if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
            && e != nix::errno::Errno::EINVAL
        {
            tracing::warn!(path = %p.display(), error = %e, "status tmpfs not unmounted");
            return;
        }
        let _ = std::fs::remove_dir_all(&p);
    }

    /// Mounts the task's result tmpfs at `<task>/out`, writable by `uid:gid`. A tmpfs for
    /// the same reason as the status one: the task must not fill the host's disk, and the
    /// host must still read the file once the container is gone.
    pub fn mount_out(&self, task_ref: &str, uid: u32, gid: u32) -> Result<PathBuf, RunnerError> {
        let p = self.path(task_ref)?.join(OUT_DIR);
        std::fs::create_dir_all(&p).map_err(|e| io_err("create", &p, e))?;
        mount_tmpfs(&p, &format!("{OUT_TMPFS},mode=0700,uid={uid},gid={gid}"), true)?;
        Ok(p)
    }

    /// Mounts a tmpfs of `size_mb` at `<task>/work` owned by `uid:gid`: the OCI task's
    /// `/work` when the runner clones a repository into it first.
    pub fn mount_work(
        &self,
        task_ref: &str,
        size_mb: u64,
        uid: u32,
        gid: u32,
    ) -> Result<PathBuf, RunnerError> {
        let p = self.path(task_ref)?.join("work");
        std::fs::create_dir_all(&p).map_err(|e| io_err("create", &p, e))?;
        mount_tmpfs(
            &p,
            &format!("size={size_mb}m,mode=0755,uid={uid},gid={gid}"),
            false,
        )?;
        Ok(p)
    }

    /// Unmounts the work tmpfs (if any). Idempotent.
    pub fn unmount_work(&self, task_ref: &str) {
        if let Ok(d) = self.path(task_ref) {
            unmount(&d.join("work"));
        }
    }

    /// Keeps at most `MAX_RESULT_BYTES + 1` bytes of the task's result as `result.json`
    /// and unmounts the result tmpfs. Idempotent; also for tasks a previous process
    /// started.
    pub fn unmount_out(&self, task_ref: &str) {
        let Ok(d) = self.path(task_ref) else { return };
        let p = d.join(OUT_DIR);
        if !p.exists() {
            return;
        }
        let kept = d.join(KEPT_RESULT);
        if !kept.exists()
            && let Ok(Some(b)) = read_bounded(&p.join(RESULT_FILE))
            && let Err(e) = write_atomic(&kept, &b)
        {
            tracing::warn!(task_ref, error = %e, "result not kept");
        }
        if unmount(&p) {
            let _ = std::fs::remove_dir_all(&p);
        }
    }

    /// The raw result the task left: the live file, else the one kept at `remove`.
    pub fn result(&self, task_ref: &str) -> Result<Option<Vec<u8>>, RunnerError> {
        let d = self.path(task_ref)?;
        if let Some(b) = read_bounded(&d.join(OUT_DIR).join(RESULT_FILE))? {
            return Ok(Some(b));
        }
        read_bounded(&d.join(KEPT_RESULT))
    }

    pub fn mark(&self, task_ref: &str, name: &str) {
        if let Ok(d) = self.path(task_ref) {
            let _ = std::fs::write(d.join(name), b"");
        }
    }

    pub fn marked(&self, task_ref: &str, name: &str) -> bool {
        self.path(task_ref)
            .map(|d| d.join(name).exists())
            .unwrap_or(false)
    }

    /// How the task stands, from its files, asking `runs_elsewhere` whether the task still
    /// runs when its shim is gone without an exit code (a container can outlive a killed
    /// `runc run`, a process task's command its SIGKILLed shim).
    pub fn status_with(
        &self,
        task_ref: &str,
        runs_elsewhere: &dyn Fn(&str) -> bool,
    ) -> Result<TaskStatus, RunnerError> {
        let d = self.path(task_ref)?;
        if !d.join("meta.json").exists() {
            return Ok(TaskStatus::NotFound);
        }
        if let Some(s) = self.exit_status(task_ref) {
            return Ok(s);
        }
        if self.pid(task_ref).is_none() {
            let young = self
                .meta(task_ref)?
                .map(|m| {
                    chrono::Utc::now() - m.created_at
                        < chrono::TimeDelta::from_std(PENDING_GRACE).unwrap_or_default()
                })
                .unwrap_or(false);
            return Ok(if young {
                TaskStatus::Pending
            } else {
                TaskStatus::NotFound
            });
        }
        if self.shim_alive(task_ref) {
            return Ok(TaskStatus::Running);
        }
        // The shim may have written its file just after our first look.
        if let Some(s) = self.exit_status(task_ref) {
            return Ok(s);
        }
        if runs_elsewhere(task_ref) {
            return Ok(TaskStatus::Running);
        }
        // The task may have recorded its end between the two looks above.
        if let Some(s) = self.exit_status(task_ref) {
            return Ok(s);
        }
        // Gone without a word. If we were stopping it, it was our SIGKILL; otherwise it
        // died with its node or supervisor and nobody knows how it ended: lost, so it is
        // retried, never reported as an exit code of the command.
        if self.marked(task_ref, "stop_requested") {
            self.record_end(task_ref, "signal 9");
            return Ok(TaskStatus::Killed { signal: 9 });
        }
        tracing::warn!(task_ref, "task ended with no status recorded: lost");
        self.record_end(task_ref, "lost");
        Ok(TaskStatus::Lost)
    }

    /// Waits until the task has ended ([`Tasks::status_with`] with `runs_elsewhere`).
    pub async fn wait_with(
        &self,
        task_ref: &str,
        runs_elsewhere: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<TaskStatus, RunnerError> {
        let rx = self.exits.lock().ok().and_then(|m| m.get(task_ref).cloned());
        if let Some(mut rx) = rx {
            // Our own child: the reaper task tells us the moment it exits.
            let _ = rx.wait_for(|done| *done).await;
        }
        let mut delay = Duration::from_millis(5);
        loop {
            let s = self.status_with(task_ref, runs_elsewhere)?;
            if s.is_final() {
                return Ok(s);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// Waits at most `limit`; `None` if the task still runs.
    pub async fn wait_for(
        &self,
        task_ref: &str,
        limit: Duration,
        runs_elsewhere: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Option<TaskStatus>, RunnerError> {
        match tokio::time::timeout(limit, self.wait_with(task_ref, runs_elsewhere)).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Every task directory not yet removed.
    pub fn list(&self, runs_elsewhere: &dyn Fn(&str) -> bool) -> Result<Vec<TaskInfo>, RunnerError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| io_err("list", &self.dir, e))?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !valid_token(&name) || self.marked(&name, "removed") {
                continue;
            }
            let Some(meta) = self.meta(&name)? else { continue };
            let status = self.status_with(&name, runs_elsewhere)?;
            out.push(TaskInfo {
                task_ref: meta.task_ref,
                job_id: meta.job_id,
                attempt: meta.attempt,
                status,
            });
        }
        out.sort_by(|a, b| a.task_ref.cmp(&b.task_ref));
        Ok(out)
    }

    /// Whether `owner` (a token) is a task that still holds resources: its directory
    /// exists and it was not removed. Port locks of other owners are stale.
    pub fn holds_resources(&self, owner: &str) -> bool {
        self.path(owner)
            .map(|d| d.is_dir() && !d.join("removed").exists())
            .unwrap_or(false)
    }

    /// Forgets the in-process exit notice of a removed task.
    pub fn forget(&self, task_ref: &str) {
        if let Ok(mut m) = self.exits.lock() {
            m.remove(task_ref);
        }
    }

    pub fn log_paths(&self, task_ref: &str) -> Option<(PathBuf, PathBuf)> {
        let d = self.path(task_ref).ok()?;
        d.join("meta.json")
            .exists()
            .then(|| (d.join("stdout.log"), d.join("stderr.log")))
    }
}

/// Parses an `exit_code` file. Shell statuses 129..=192 are deaths by signal (128 + n),
/// the convention of every shell and of `runc run`.
pub(crate) fn parse_exit(s: &str) -> Option<TaskStatus> {
    let s = s.trim();
    if s == "lost" {
        return Some(TaskStatus::Lost);
    }
    if let Some(sig) = s.strip_prefix("signal ") {
        return sig
            .trim()
            .parse()
            .ok()
            .map(|signal| TaskStatus::Killed { signal });
    }
    let code: i32 = s.parse().ok()?;
    Some(if (129..=192).contains(&code) {
        TaskStatus::Killed { signal: code - 128 }
    } else {
        TaskStatus::Exited { exit_code: code }
    })
}

/// Mounts a tmpfs at `p` (`noexec` if asked).
fn mount_tmpfs(p: &Path, opts: &str, noexec: bool) -> Result<(), RunnerError> {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if noexec {
        flags |= MsFlags::MS_NOEXEC;
    }
    nix::mount::mount(Some("tmpfs"), p, Some("tmpfs"), flags, Some(opts))
        .map_err(|e| runtime(format!("mount a tmpfs on {}: {e}", p.display())))
}

/// Detaches whatever is mounted at `p`; `true` if nothing is mounted there any more.
fn unmount(p: &Path) -> bool {
    match nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => true,
        // EINVAL: not a mount point; ENOENT: no such dir.
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => true,
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "tmpfs not unmounted");
            false
        }
    }
}

/// Reads at most `MAX_RESULT_BYTES + 1` bytes of a file the task wrote. The task chose
/// what is at that path: a symlink is not followed (it could point at any host file), a
/// FIFO is not waited on, and only a regular file is read. `None`: no file.
pub(crate) fn read_bounded(p: &Path) -> Result<Option<Vec<u8>>, RunnerError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // ELOOP: a symlink. Refused as a result rather than followed.
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
            return Err(RunnerError::new(
                RunnerErrorKind::InvalidSpec,
                "the result ($JETRUN_RESULT) is a symbolic link: refused",
            ));
        }
        Err(e) => return Err(io_err("open", p, e)),
    };
    let meta = f.metadata().map_err(|e| io_err("stat", p, e))?;
    if !meta.is_file() {
        return Err(RunnerError::new(
            RunnerErrorKind::InvalidSpec,
            "the result ($JETRUN_RESULT) is not a regular file: refused",
        ));
    }
    let mut buf = Vec::new();
    f.take(jetrun_core::result::MAX_RESULT_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| io_err("read", p, e))?;
    Ok(Some(buf))
}

pub(crate) fn write_atomic(path: &Path, body: &[u8]) -> Result<(), RunnerError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).map_err(|e| io_err("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err("rename", path, e))
}

pub(crate) fn absolute(p: &Path) -> Result<PathBuf, RunnerError> {
    std::path::absolute(p).map_err(|e| io_err("resolve", p, e))
}

/// Whether any live (not zombie) process is in process group `pgid`: the command of a
/// process task can outlive its SIGKILLed shim. Scans `/proc`; only asked when the shim
/// is gone without a status, which is rare.
pub(crate) fn group_alive(pgid: i32) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut it = rest.split_whitespace();
        // After `)`: state (3), ppid (4), pgrp (5).
        let state = it.next();
        let pgrp = it.nth(1).and_then(|g| g.parse::<i32>().ok());
        state != Some("Z") && pgrp == Some(pgid)
    })
}

/// Sends `sig` to the shim's process group, if the shim is still the recorded process
/// (or its group outlived it).
pub(crate) fn signal_group(tasks: &Tasks, task_ref: &str, sig: nix::sys::signal::Signal) {
    if let Some((pid, _)) = tasks.pid(task_ref)
        && (tasks.shim_alive(task_ref) || group_alive(pid))
    {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_parse() {
        assert_eq!(parse_exit("0\n"), Some(TaskStatus::Exited { exit_code: 0 }));
        assert_eq!(parse_exit("42"), Some(TaskStatus::Exited { exit_code: 42 }));
        assert_eq!(parse_exit("143"), Some(TaskStatus::Killed { signal: 15 }));
        assert_eq!(parse_exit("signal 9"), Some(TaskStatus::Killed { signal: 9 }));
        assert_eq!(parse_exit("lost\n"), Some(TaskStatus::Lost));
        assert_eq!(parse_exit(""), None);
    }

    #[test]
    fn tokens_and_port_names() {
        assert!(valid_token("0192-abc-1"));
        assert!(!valid_token("../x"));
        assert!(!valid_token(""));
        assert_eq!(port_env_name("http-admin"), "JETRUN_PORT_HTTP_ADMIN");
    }
}
