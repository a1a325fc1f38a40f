//! Bounds on what a job spec may ask for, checked at submission.
//!
//! A value past these bounds (`u64::MAX` MiB of memory, `1e308` cpus, a NUL in an
//! argument) can never run: without the check it would pass the API and fail every
//! attempt. [`JobSpec::validate`] refuses it up front with a JSON pointer to the field.

use crate::JobSpec;

/// The bounds a job spec must keep. [`SpecLimits::default`] gives the documented
/// defaults; an operator may tighten them.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecLimits {
    /// Largest `resources.memory_mb` (default 65536, i.e. 64 GiB; smallest is 1).
    pub max_memory_mb: u64,
    /// Largest `resources.cpus` (default 64; must also be finite and above 0).
    pub max_cpus: f64,
    /// Largest `resources.pids` (default 32768; smallest is 1).
    pub max_pids: u64,
    /// Largest `timeout_seconds` (default 86400, one day; smallest is 1).
    pub max_timeout_seconds: u64,
    /// Largest `max_attempts` (default 20; smallest is 1).
    pub max_attempts: u32,
    /// Most `env` entries (default 128).
    pub max_env: usize,
    /// Most `command` items (default 256).
    pub max_argv: usize,
    /// Most bytes of `env` keys and values plus `command` items together (default 64 KiB).
    pub max_env_argv_bytes: usize,
    /// Longest `image` (default 512 bytes).
    pub max_image_len: usize,
    /// Longest `queue` (default 64 bytes; also a subject token).
    pub max_queue_len: usize,
    /// Most `labels` entries (default 64).
    pub max_labels: usize,
    /// Longest label key (default 128 bytes).
    pub max_label_key_len: usize,
    /// Longest label value (default 256 bytes).
    pub max_label_value_len: usize,
    /// Most `ports` (default 16).
    pub max_ports: usize,
    /// Longest `idempotency_key` (default 256 bytes).
    pub max_idempotency_key_len: usize,
}

impl Default for SpecLimits {
    fn default() -> Self {
        Self {
            max_memory_mb: 65536,
            max_cpus: 64.0,
            max_pids: 32768,
            max_timeout_seconds: 86_400,
            max_attempts: 20,
            max_env: 128,
            max_argv: 256,
            max_env_argv_bytes: 64 * 1024,
            max_image_len: 512,
            max_queue_len: 64,
            max_labels: 64,
            max_label_key_len: 128,
            max_label_value_len: 256,
            max_ports: 16,
            max_idempotency_key_len: 256,
        }
    }
}

/// One field of a spec past its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecViolation {
    /// JSON pointer (RFC 6901) to the field in the spec.
    pub pointer: String,
    /// What is wrong.
    pub reason: String,
}

/// A job spec breaks one or more [`SpecLimits`]; every violation found is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job spec out of bounds: {}", summary(.violations))]
pub struct SpecError {
    /// Every violation, in field order.
    pub violations: Vec<SpecViolation>,
}

fn summary(v: &[SpecViolation]) -> String {
    v.iter()
        .map(|v| format!("{}: {}", v.pointer, v.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Escapes a map key for a JSON pointer (RFC 6901: `~` → `~0`, `/` → `~1`).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Whether `k` is a portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_env_key(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Whether `r` is a git ref jetrun will check out: a branch, tag or commit id of
/// `[A-Za-z0-9._/+-]`, 1 to 255 bytes, not starting with `-` (an option to git) or `/`,
/// with no `..`, `//`, `@{`, no trailing `/` or `.lock` (git's own `check-ref-format`
/// rules, minus everything a comment has no business putting there).
pub fn valid_git_ref(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && !r.starts_with('-')
        && !r.starts_with('/')
        && !r.starts_with('.')
        && !r.ends_with('/')
        && !r.ends_with(".lock")
        && !r.contains("..")
        && !r.contains("//")
        && !r.contains("/.")
        && r.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-' | b'+'))
}

/// Whether `repo` is a repository address jetrun may clone: `https://` with a host and
/// no credentials in it, or an absolute local path (which the runner then checks against
/// its own allow-list). Never `ssh`, `git://`, `file://`, `ext::` or an option.
pub fn valid_checkout_repo(repo: &str) -> bool {
    if repo.len() > 2048 || repo.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    if let Some(rest) = repo.strip_prefix("https://") {
        let authority = rest.split('/').next().unwrap_or("");
        return !authority.is_empty() && !authority.contains('@');
    }
    repo.starts_with('/') && !repo.split('/').any(|seg| seg == "..")
}

fn valid_port_name(p: &str) -> bool {
    !p.is_empty() && p.len() <= 32 && p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

impl JobSpec {
    /// Checks every bounded field against `limits` and returns all violations, each
    /// with the JSON pointer of its field. NUL is refused in every string: the kernel
    /// cuts argv and environment at NUL, and runtimes refuse it.
    pub fn validate(&self, limits: &SpecLimits) -> Result<(), SpecError> {
        let mut out = Vec::new();
        let mut bad = |pointer: String, reason: String| out.push(SpecViolation { pointer, reason });
        let nul = |s: &str| s.contains('\0');

        if self.queue.is_empty() || self.queue.len() > limits.max_queue_len {
            bad(
                "/queue".into(),
                format!("must be 1 to {} bytes", limits.max_queue_len),
            );
        }
        if nul(&self.queue) {
            bad("/queue".into(), "must not contain NUL".into());
        }
        if self.image.is_empty() || self.image.len() > limits.max_image_len {
            bad(
                "/image".into(),
                format!("must be 1 to {} bytes", limits.max_image_len),
            );
        }
        if nul(&self.image) {
            bad("/image".into(), "must not contain NUL".into());
        }

        if self.command.len() > limits.max_argv {
            bad(
                "/command".into(),
                format!("at most {} items (got {})", limits.max_argv, self.command.len()),
            );
        }
        for (i, arg) in self.command.iter().enumerate() {
            if nul(arg) {
                bad(format!("/command/{i}"), "must not contain NUL".into());
            }
        }
        if self.env.len() > limits.max_env {
            bad(
                "/env".into(),
                format!("at most {} entries (got {})", limits.max_env, self.env.len()),
            );
        }
        for (k, v) in &self.env {
            if !valid_env_key(k) {
                bad(
                    format!("/env/{}", escape(k)),
                    "name must match [A-Za-z_][A-Za-z0-9_]*".into(),
                );
            }
            if nul(v) {
                bad(format!("/env/{}", escape(k)), "must not contain NUL".into());
            }
        }
        let bytes: usize = self.command.iter().map(String::len).sum::<usize>()
            + self.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if bytes > limits.max_env_argv_bytes {
            bad(
                "/env".into(),
                format!(
                    "env and command together must be at most {} bytes (got {bytes})",
                    limits.max_env_argv_bytes
                ),
            );
        }

        let r = &self.resources;
        if let Some(m) = r.memory_mb
            && !(1..=limits.max_memory_mb).contains(&m)
        {
            bad(
                "/resources/memory_mb".into(),
                format!("must be 1 to {}", limits.max_memory_mb),
            );
        }
        if let Some(c) = r.cpus
            && !(c.is_finite() && c > 0.0 && c <= limits.max_cpus)
        {
            bad(
                "/resources/cpus".into(),
                format!("must be finite, above 0 and at most {}", limits.max_cpus),
            );
        }
        if let Some(p) = r.pids
            && !(1..=limits.max_pids).contains(&p)
        {
            bad(
                "/resources/pids".into(),
                format!("must be 1 to {}", limits.max_pids),
            );
        }
        if let Some(t) = self.timeout_seconds
            && !(1..=limits.max_timeout_seconds).contains(&t)
        {
            bad(
                "/timeout_seconds".into(),
                format!("must be 1 to {}", limits.max_timeout_seconds),
            );
        }
        if let Some(a) = self.max_attempts
            && !(1..=limits.max_attempts).contains(&a)
        {
            bad(
                "/max_attempts".into(),
                format!("must be 1 to {}", limits.max_attempts),
            );
        }

        if self.labels.len() > limits.max_labels {
            bad(
                "/labels".into(),
                format!(
                    "at most {} entries (got {})",
                    limits.max_labels,
                    self.labels.len()
                ),
            );
        }
        for (k, v) in &self.labels {
            let p = format!("/labels/{}", escape(k));
            if k.is_empty() || k.len() > limits.max_label_key_len {
                bad(
                    p.clone(),
                    format!("key must be 1 to {} bytes", limits.max_label_key_len),
                );
            }
            if v.len() > limits.max_label_value_len {
                bad(
                    p.clone(),
                    format!("value must be at most {} bytes", limits.max_label_value_len),
                );
            }
            if nul(k) || nul(v) {
                bad(p, "must not contain NUL".into());
            }
        }

        if self.ports.len() > limits.max_ports {
            bad("/ports".into(), format!("at most {} ports", limits.max_ports));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if !valid_port_name(p) {
                bad(format!("/ports/{i}"), "must be 1-32 of A-Z a-z 0-9 _".into());
            }
        }
        if let Some(k) = &self.idempotency_key {
            if k.is_empty() || k.len() > limits.max_idempotency_key_len {
                bad(
                    "/idempotency_key".into(),
                    format!("must be 1 to {} bytes", limits.max_idempotency_key_len),
                );
            }
            if nul(k) {
                bad("/idempotency_key".into(), "must not contain NUL".into());
            }
        }
        if let Some(t) = &self.tenant
            && nul(t)
        {
            bad("/tenant".into(), "must not contain NUL".into());
        }

        if let Some(c) = &self.checkout {
            if !valid_checkout_repo(&c.repo) {
                bad(
                    "/checkout/repo".into(),
                    "must be an https:// URL without credentials or an absolute local path".into(),
                );
            }
            if !valid_git_ref(&c.git_ref) {
                bad(
                    "/checkout/ref".into(),
                    "must be a branch, tag or commit id of A-Z a-z 0-9 . _ / + - (no .., no leading -)"
                        .into(),
                );
            }
            if c.depth == Some(0) {
                bad("/checkout/depth".into(), "must be at least 1".into());
            }
            if let Some(t) = &c.token_env
                && !(t.starts_with("JETRUN_GIT_TOKEN") && valid_env_key(t))
            {
                bad(
                    "/checkout/token_env".into(),
                    "must be an environment variable name starting with JETRUN_GIT_TOKEN".into(),
                );
            }
        }

        if out.is_empty() {
            Ok(())
        } else {
            Err(SpecError { violations: out })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn spec() -> JobSpec {
        JobSpec::new("default", "busybox", vec!["true".into()])
    }

    fn pointers(s: &JobSpec) -> Vec<String> {
        s.validate(&SpecLimits::default())
            .unwrap_err()
            .violations
            .into_iter()
            .map(|v| v.pointer)
            .collect()
    }

    #[test]
    fn a_plain_spec_and_the_bounds_themselves_pass() {
        let l = SpecLimits::default();
        assert_eq!(spec().validate(&l), Ok(()));
        let mut s = spec();
        s.resources.memory_mb = Some(l.max_memory_mb);
        s.resources.cpus = Some(l.max_cpus);
        s.resources.pids = Some(l.max_pids);
        s.timeout_seconds = Some(l.max_timeout_seconds);
        s.max_attempts = Some(l.max_attempts);
        s.command = vec!["x".into(); l.max_argv];
        s.env = (0..l.max_env).map(|i| (format!("K{i}"), "v".into())).collect();
        s.ports = (0..l.max_ports).map(|i| format!("p{i}")).collect();
        s.idempotency_key = Some("k".repeat(l.max_idempotency_key_len));
        assert_eq!(s.validate(&l), Ok(()));
    }

    #[test]
    fn hostile_values_are_refused_with_their_pointer() {
        let mut s = spec();
        s.resources.memory_mb = Some(u64::MAX);
        assert_eq!(pointers(&s), ["/resources/memory_mb"]);
        s.resources.memory_mb = Some(0);
        assert_eq!(pointers(&s), ["/resources/memory_mb"]);

        for c in [1e308, f64::INFINITY, f64::NAN, 0.0, -1.0, 64.5] {
            let mut s = spec();
            s.resources.cpus = Some(c);
            assert_eq!(pointers(&s), ["/resources/cpus"], "{c}");
        }
        let mut s = spec();
        s.resources.pids = Some(0);
        s.timeout_seconds = Some(86_401);
        s.max_attempts = Some(0);
        assert_eq!(
            pointers(&s),
            ["/resources/pids", "/timeout_seconds", "/max_attempts"]
        );

        let mut s = spec();
        s.command = vec!["sh".into(), "a\0b".into()];
        s.env.insert("A/B~".into(), "v".into());
        s.env.insert("OK".into(), "nul\0".into());
        assert_eq!(pointers(&s), ["/command/1", "/env/A~1B~0", "/env/OK"]);

        let mut s = spec();
        s.command = vec!["x".into(); 257];
        assert_eq!(pointers(&s), ["/command"]);
        let mut s = spec();
        s.env = (0..129).map(|i| (format!("K{i}"), "v".into())).collect();
        assert_eq!(pointers(&s), ["/env"]);
        let mut s = spec();
        s.env.insert("BIG".into(), "x".repeat(64 * 1024));
        assert_eq!(pointers(&s), ["/env"]);

        let mut s = spec();
        s.image = "i".repeat(513);
        s.ports = vec!["ok".into(), "no-dash".into()];
        s.labels.insert("k".into(), "v".repeat(257));
        s.idempotency_key = Some(String::new());
        assert_eq!(
            pointers(&s),
            ["/image", "/labels/k", "/ports/1", "/idempotency_key"]
        );
        let e = s.validate(&SpecLimits::default()).unwrap_err();
        assert!(e.to_string().contains("/image: must be 1 to 512 bytes"));
    }

    #[test]
    fn checkouts_are_bounded() {
        let mut s = spec();
        s.checkout = Some(crate::job::Checkout {
            repo: "https://github.com/octo/app.git".into(),
            git_ref: "v1.2.0".into(),
            depth: None,
            token_env: Some("JETRUN_GIT_TOKEN_OCTO".into()),
        });
        assert_eq!(s.validate(&SpecLimits::default()), Ok(()));
        s.checkout = Some(crate::job::Checkout {
            repo: "ssh://git@github.com/octo/app".into(),
            git_ref: "--upload-pack=evil".into(),
            depth: Some(0),
            token_env: Some("AWS_SECRET_ACCESS_KEY".into()),
        });
        assert_eq!(
            pointers(&s),
            [
                "/checkout/repo",
                "/checkout/ref",
                "/checkout/depth",
                "/checkout/token_env"
            ]
        );
        for r in ["main", "refs/heads/feature/x", "4f2a9c1", "v1.0+build"] {
            assert!(valid_git_ref(r), "{r}");
        }
        for r in [
            "", "-x", "a..b", "a/", "x.lock", "a b", "a@{1}", "/abs", "a/.b", "$(id)",
        ] {
            assert!(!valid_git_ref(r), "{r}");
        }
        assert!(valid_checkout_repo("/srv/git/app"));
        for r in [
            "https://user:pw@github.com/a/b",
            "file:///etc",
            "ext::sh -c id",
            "/srv/../etc",
            "https:///x",
            "relative/path",
        ] {
            assert!(!valid_checkout_repo(r), "{r}");
        }
    }

    #[test]
    fn env_keys() {
        assert!(valid_env_key("_A1"));
        assert!(valid_env_key("a"));
        assert!(!valid_env_key("1A"));
        assert!(!valid_env_key(""));
        assert!(!valid_env_key("A-B"));
        assert!(!valid_env_key("A=B"));
    }
}
