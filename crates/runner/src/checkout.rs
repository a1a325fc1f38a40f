//! Repository checkout: the runner clones `spec.checkout` into the task's work dir with
//! the **host's** git before the task starts, so the job itself needs no network and
//! never sees a credential.
//!
//! - git runs with an empty `HOME`, no system config and no terminal prompt: the host
//!   user's `~/.gitconfig`, credential helpers and keys are never used;
//! - protocols are limited to `https` (and `file` for a local path inside
//!   [`CheckoutConfig::local_roots`]); submodules are not fetched;
//! - a private repository's token comes from the worker's environment variable named by
//!   `checkout.token_env` (which must start with `JETRUN_GIT_TOKEN`) and reaches git as an
//!   `http.extraHeader` through `GIT_CONFIG_*` environment variables: it is written
//!   neither into the clone's `.git/config` nor into the task's environment;
//! - `token_env: JETRUN_GIT_TOKEN_GITHUB_APP` ([`APP_TOKEN_ENV`]) asks for a GitHub App
//!   installation token instead: the worker, configured with `JETRUN_GITHUB_APP_ID` and
//!   `JETRUN_GITHUB_APP_KEY_FILE` (and `JETRUN_GITHUB_API_URL` for GitHub Enterprise),
//!   finds the App's installation on the repository and mints a token for it ([`app`]),
//!   only for a clone URL on that GitHub's host;
//! - the clone is bounded in time ([`CheckoutConfig::timeout_seconds`]) and, for OCI
//!   tasks, in size (it lands in the task's `/work` tmpfs).

pub mod app;

use std::path::{Path, PathBuf};
use std::time::Duration;

use jetrun_core::job::Checkout;
use serde::{Deserialize, Serialize};

use crate::{RunnerError, RunnerErrorKind};

/// How the runner clones repositories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckoutConfig {
    /// The git binary (default `git`, on PATH).
    pub git: PathBuf,
    /// Local directories under which `checkout.repo` may name a repository by absolute
    /// path. Default: from `JETRUN_CHECKOUT_LOCAL_ROOTS` (colon-separated), else none: a
    /// job cannot read the host's files by naming them as a repository.
    pub local_roots: Vec<PathBuf>,
    /// Longest a clone may take (default 600 s); then the launch fails (and is retried).
    pub timeout_seconds: u64,
}

impl Default for CheckoutConfig {
    fn default() -> Self {
        Self {
            git: PathBuf::from("git"),
            local_roots: std::env::var("JETRUN_CHECKOUT_LOCAL_ROOTS")
                .map(|v| {
                    v.split(':')
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect()
                })
                .unwrap_or_default(),
            timeout_seconds: 600,
        }
    }
}

fn invalid(msg: impl Into<String>) -> RunnerError {
    RunnerError::new(RunnerErrorKind::InvalidSpec, msg)
}

/// The `checkout.token_env` that asks the worker for a GitHub App installation token
/// (its App: `JETRUN_GITHUB_APP_ID`, `JETRUN_GITHUB_APP_KEY_FILE`) rather than naming a
/// variable holding a token.
pub const APP_TOKEN_ENV: &str = "JETRUN_GIT_TOKEN_GITHUB_APP";

/// The worker's GitHub App, read from the environment once (tokens are cached in it).
fn worker_app() -> Result<&'static app::AppAuth, RunnerError> {
    static APP: std::sync::OnceLock<Result<Option<app::AppAuth>, String>> = std::sync::OnceLock::new();
    match APP.get_or_init(|| app::AppAuth::from_env().map_err(|e| e.to_string())) {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(invalid(format!(
            "checkout token_env {APP_TOKEN_ENV} needs a GitHub App on this worker: \
             set JETRUN_GITHUB_APP_ID and JETRUN_GITHUB_APP_KEY_FILE"
        ))),
        Err(e) => Err(invalid(e.clone())),
    }
}

/// An installation token of `app` for the GitHub repository `clone_url` names: the
/// App's installation on it, then the (cached) token. Refused for a URL on another host.
pub async fn app_clone_token(app: &app::AppAuth, clone_url: &str) -> Result<String, RunnerError> {
    let Some(repo) = app::github_repository(app.api_url(), clone_url) else {
        return Err(invalid(format!(
            "checkout token_env {APP_TOKEN_ENV}: {clone_url} is not an https repository on the \
             GitHub of {} (an App token is sent to GitHub only)",
            app.api_url()
        )));
    };
    let kind = |e: &app::AppError| {
        if e.is_transient() {
            RunnerErrorKind::Runtime
        } else {
            RunnerErrorKind::InvalidSpec
        }
    };
    let installation = app
        .repository_installation(&repo)
        .await
        .map_err(|e| RunnerError::new(kind(&e), format!("GitHub App installation on {repo}: {e}")))?;
    app.installation_token(installation)
        .await
        .map_err(|e| RunnerError::new(kind(&e), format!("GitHub App token for {repo}: {e}")))
}

/// Clones `c` into the empty directory `dest` and checks out `c.git_ref` detached;
/// then, if `owner` is given, hands every file to that uid:gid (the task's user).
pub(crate) async fn clone_into(
    cfg: &CheckoutConfig,
    c: &Checkout,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), RunnerError> {
    if !jetrun_core::limits::valid_checkout_repo(&c.repo) {
        return Err(invalid(format!("checkout repo {:?} is not allowed", c.repo)));
    }
    if !jetrun_core::limits::valid_git_ref(&c.git_ref) {
        return Err(invalid(format!(
            "checkout ref {:?} is not a safe git ref",
            c.git_ref
        )));
    }
    let local = !c.repo.starts_with("https://");
    let source = if local {
        let p =
            std::fs::canonicalize(&c.repo).map_err(|e| invalid(format!("checkout repo {}: {e}", c.repo)))?;
        let allowed = cfg.local_roots.iter().any(|r| {
            std::fs::canonicalize(r)
                .map(|r| p.starts_with(r))
                .unwrap_or(false)
        });
        if !allowed {
            return Err(invalid(format!(
                "checkout repo {} is a local path outside the runner's local_roots \
                 (JETRUN_CHECKOUT_LOCAL_ROOTS)",
                c.repo
            )));
        }
        p.display().to_string()
    } else {
        c.repo.clone()
    };
    let git = crate::net::which(&cfg.git)
        .ok_or_else(|| RunnerError::new(RunnerErrorKind::Runtime, "git is not installed on this node"))?;
    // An empty HOME of our own: no ~/.gitconfig, no credential helper of the host user.
    let home = tempfile::tempdir().map_err(|e| crate::task::runtime(format!("temp HOME for git: {e}")))?;
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), home.path().display().to_string()),
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ("GIT_ASKPASS".into(), "/bin/false".into()),
        (
            "GIT_ALLOW_PROTOCOL".into(),
            if local { "file" } else { "https" }.into(),
        ),
        ("LC_ALL".into(), "C".into()),
    ];
    let mut cfgs: Vec<(String, String)> = vec![
        ("advice.detachedHead".into(), "false".into()),
        ("core.hooksPath".into(), "/dev/null".into()),
    ];
    if local {
        cfgs.push(("protocol.file.allow".into(), "always".into()));
        // The repository is the operator's (local_roots), possibly owned by another user.
        cfgs.push(("safe.directory".into(), source.clone()));
    }
    if let Some(name) = &c.token_env {
        if !name.starts_with("JETRUN_GIT_TOKEN") {
            return Err(invalid("checkout token_env must start with JETRUN_GIT_TOKEN"));
        }
        let token = if name == APP_TOKEN_ENV {
            app_clone_token(worker_app()?, &c.repo).await?
        } else {
            std::env::var(name)
                .map_err(|_| invalid(format!("checkout token_env {name} is not set on this worker")))?
        };
        let basic = base64(format!("x-access-token:{token}").as_bytes());
        cfgs.push(("http.extraHeader".into(), format!("Authorization: Basic {basic}")));
    }
    env.push(("GIT_CONFIG_COUNT".into(), cfgs.len().to_string()));
    for (i, (k, v)) in cfgs.into_iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}"), k));
        env.push((format!("GIT_CONFIG_VALUE_{i}"), v));
    }
    let dest_s = dest.display().to_string();
    let r = &c.git_ref;
    let steps: Vec<Vec<String>> = match c.depth {
        // Full history (bisect needs it): clone, then resolve the ref as a commit, a
        // local branch or tag, or a remote branch.
        None => vec![
            vec![
                "clone".into(),
                "--quiet".into(),
                "--no-checkout".into(),
                "--no-hardlinks".into(),
                "--".into(),
                source,
                dest_s.clone(),
            ],
            vec![
                "-C".into(),
                dest_s.clone(),
                "checkout".into(),
                "--quiet".into(),
                "--detach".into(),
                "JETRUN_REF".into(),
            ],
        ],
        Some(d) => vec![
            vec!["init".into(), "--quiet".into(), dest_s.clone()],
            vec![
                "-C".into(),
                dest_s.clone(),
                "remote".into(),
                "add".into(),
                "origin".into(),
                source,
            ],
            vec![
                "-C".into(),
                dest_s.clone(),
                "fetch".into(),
                "--quiet".into(),
                format!("--depth={d}"),
                "--no-tags".into(),
                "origin".into(),
                "--".into(),
                r.clone(),
            ],
            vec![
                "-C".into(),
                dest_s.clone(),
                "checkout".into(),
                "--quiet".into(),
                "--detach".into(),
                "FETCH_HEAD".into(),
            ],
        ],
    };
    let limit = Duration::from_secs(cfg.timeout_seconds.max(1));
    let started = std::time::Instant::now();
    for mut args in steps {
        if args.last().map(String::as_str) == Some("JETRUN_REF") {
            let commit = resolve(&git, &env, dest, r).await?;
            args.pop();
            args.push(commit);
        }
        let left = limit.saturating_sub(started.elapsed());
        run_git(&git, &env, &args, left).await?;
    }
    if let Some((uid, gid)) = owner
        && (uid, gid) != (0, 0)
    {
        chown_tree(dest, uid, gid)?;
    }
    tracing::info!(repo = %c.repo, git_ref = %c.git_ref, ms = started.elapsed().as_millis() as u64, "repository checked out");
    Ok(())
}

/// The commit `r` names in the clone at `dest`: itself, or `origin/<r>`.
async fn resolve(git: &Path, env: &[(String, String)], dest: &Path, r: &str) -> Result<String, RunnerError> {
    let d = dest.display().to_string();
    for cand in [r.to_string(), format!("origin/{r}")] {
        let args = vec![
            "-C".to_string(),
            d.clone(),
            "rev-parse".into(),
            "--verify".into(),
            "--quiet".into(),
            "--end-of-options".into(),
            format!("{cand}^{{commit}}"),
        ];
        if let Ok(out) = run_git(git, env, &args, Duration::from_secs(30)).await {
            let c = out.trim().to_string();
            if !c.is_empty() {
                return Ok(c);
            }
        }
    }
    Err(invalid(format!("checkout ref {r:?} is not in the repository")))
}

async fn run_git(
    git: &Path,
    env: &[(String, String)],
    args: &[String],
    limit: Duration,
) -> Result<String, RunnerError> {
    let mut cmd = tokio::process::Command::new(git);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(limit, cmd.output()).await {
        Ok(r) => r.map_err(|e| crate::task::runtime(format!("run git: {e}")))?,
        Err(_) => {
            return Err(crate::task::runtime(format!(
                "checkout took longer than {} s",
                limit.as_secs()
            )));
        }
    };
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(3).collect();
    let msg = format!(
        "checkout failed: git {}: {}",
        args.iter()
            .find(|a| !a.starts_with('-') && !a.starts_with('/'))
            .map(String::as_str)
            .unwrap_or("?"),
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    );
    // What no retry fixes: the repository or the ref does not exist, or access is denied.
    let permanent = [
        "not found",
        "couldn't find remote ref",
        "does not appear to be a git repository",
        "not a valid",
        "did not match",
        "Authentication failed",
        "unsafe repository",
        "transport 'file' not allowed",
    ]
    .iter()
    .any(|n| err.contains(n));
    Err(RunnerError::new(
        if permanent {
            RunnerErrorKind::InvalidSpec
        } else {
            RunnerErrorKind::Runtime
        },
        msg,
    ))
}

fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), RunnerError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .map_err(|e| crate::task::io_err("chown", &p, e))?;
        let meta = std::fs::symlink_metadata(&p).map_err(|e| crate::task::io_err("stat", &p, e))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)
                .map_err(|e| crate::task::io_err("list", &p, e))?
                .flatten()
            {
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

/// Standard base64 with padding (for one HTTP header: not worth a dependency).
fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for ch in b.chunks(3) {
        let n = (u32::from(ch[0]) << 16)
            | (u32::from(*ch.get(1).unwrap_or(&0)) << 8)
            | u32::from(*ch.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= ch.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
