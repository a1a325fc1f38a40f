//! How jetrun authenticates to NATS and checks the server's TLS certificate.
//!
//! Every `jetrun` command and function connects through [`crate::connect`], which reads
//! these settings from the environment (so one set of variables configures a whole
//! deployment, as the Terraform modules and `infra/nats/jetrun.conf` expect):
//!
//! | variable | meaning |
//! |---|---|
//! | `JETRUN_NATS_CREDS` | a `.creds` file (JWT + nkey seed; decentralised auth) |
//! | `JETRUN_NATS_USER`, `JETRUN_NATS_PASSWORD` | user and password (e.g. the per-function users of `infra/nats/jetrun.conf`) |
//! | `JETRUN_NATS_PASSWORD_FILE` | the password read from a file instead (a mounted secret) |
//! | `JETRUN_NATS_TOKEN` | a token |
//! | `JETRUN_NATS_CA` | a PEM file of root certificates to trust (implies TLS) |
//! | `JETRUN_NATS_TLS` | `true` to require TLS with the system's roots |
//!
//! `nats://user:pass@host:4222` in `--nats-url` works too when no variable sets a user
//! (async-nats itself ignores credentials in the URL). Only one method may be set; two
//! is a configuration error rather than a guess.

use std::path::PathBuf;

/// What was wrong with the authentication settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthErrorKind {
    /// More than one method (creds, user and password, token) is set.
    Conflicting,
    /// A method is only half set (a user without a password).
    Incomplete,
    /// A file named by the settings could not be read.
    File,
}

/// An authentication setting that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("NATS authentication settings: {message}")]
pub struct AuthError {
    /// What kind of problem.
    pub kind: AuthErrorKind,
    /// What exactly, naming the variables involved.
    pub message: String,
}

impl AuthError {
    fn new(kind: AuthErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Authentication and TLS settings for a NATS connection. `Debug` never prints secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// A `.creds` file (JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// User name.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// Token.
    pub token: Option<String>,
    /// Extra root certificates (PEM) to trust; implies TLS.
    pub ca_file: Option<PathBuf>,
    /// Require TLS.
    pub tls_required: bool,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsAuth")
            .field("creds_file", &self.creds_file)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("token", &redacted(&self.token))
            .field("ca_file", &self.ca_file)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

impl NatsAuth {
    /// Reads the `JETRUN_NATS_*` variables (see the module docs).
    pub fn from_env() -> Result<Self, AuthError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AuthError> {
        let get = |k: &str| lookup(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let password = match (get("JETRUN_NATS_PASSWORD"), get("JETRUN_NATS_PASSWORD_FILE")) {
            (Some(_), Some(_)) => {
                return Err(AuthError::new(
                    AuthErrorKind::Conflicting,
                    "both JETRUN_NATS_PASSWORD and JETRUN_NATS_PASSWORD_FILE are set",
                ));
            }
            (Some(p), None) => Some(p),
            (None, Some(file)) => Some(
                std::fs::read_to_string(&file)
                    .map_err(|e| {
                        AuthError::new(
                            AuthErrorKind::File,
                            format!("JETRUN_NATS_PASSWORD_FILE {file}: {e}"),
                        )
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            (None, None) => None,
        };
        let tls = get("JETRUN_NATS_TLS")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
        let auth = Self {
            creds_file: get("JETRUN_NATS_CREDS").map(PathBuf::from),
            user: get("JETRUN_NATS_USER"),
            password,
            token: get("JETRUN_NATS_TOKEN"),
            ca_file: get("JETRUN_NATS_CA").map(PathBuf::from),
            tls_required: tls,
        };
        auth.check()?;
        Ok(auth)
    }

    /// Takes user and password from the first URL that has them (`nats://u:p@host`),
    /// unless another method is already set.
    pub fn or_from_url(mut self, url: &str) -> Self {
        if self.creds_file.is_some() || self.user.is_some() || self.token.is_some() {
            return self;
        }
        for addr in crate::server_addrs(url) {
            if let (Some(user), Some(pass)) = (addr.username(), addr.password()) {
                self.user = Some(user.to_string());
                self.password = Some(pass.to_string());
                break;
            }
        }
        self
    }

    fn check(&self) -> Result<(), AuthError> {
        let methods = [
            self.creds_file.is_some(),
            self.user.is_some(),
            self.token.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(AuthError::new(
                AuthErrorKind::Conflicting,
                "set only one of JETRUN_NATS_CREDS, JETRUN_NATS_USER (with a password) and JETRUN_NATS_TOKEN",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(AuthError::new(
                AuthErrorKind::Incomplete,
                "JETRUN_NATS_USER and JETRUN_NATS_PASSWORD (or _PASSWORD_FILE) go together",
            ));
        }
        Ok(())
    }

    /// Whether any method is set.
    pub fn is_set(&self) -> bool {
        self.creds_file.is_some() || self.user.is_some() || self.token.is_some()
    }

    /// Applies the settings to connect options.
    pub async fn apply(
        &self,
        mut opts: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, AuthError> {
        self.check()?;
        if let Some(path) = &self.creds_file {
            opts = opts.credentials_file(path).await.map_err(|e| {
                AuthError::new(
                    AuthErrorKind::File,
                    format!("JETRUN_NATS_CREDS {}: {e}", path.display()),
                )
            })?;
        }
        if let (Some(user), Some(pass)) = (&self.user, &self.password) {
            opts = opts.user_and_password(user.clone(), pass.clone());
        }
        if let Some(token) = &self.token {
            opts = opts.token(token.clone());
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                return Err(AuthError::new(
                    AuthErrorKind::File,
                    format!("JETRUN_NATS_CA {}: no such file", ca.display()),
                ));
            }
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if self.tls_required {
            opts = opts.require_tls(true);
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<NatsAuth, AuthError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        NatsAuth::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_no_auth() {
        let a = from(&[]).unwrap();
        assert!(!a.is_set());
        assert!(!a.tls_required);
    }

    #[test]
    fn user_and_password_and_their_mistakes() {
        let a = from(&[("JETRUN_NATS_USER", "dispatch"), ("JETRUN_NATS_PASSWORD", "pw")]).unwrap();
        assert_eq!(a.user.as_deref(), Some("dispatch"));
        assert_eq!(
            from(&[("JETRUN_NATS_USER", "dispatch")]).unwrap_err().kind,
            AuthErrorKind::Incomplete
        );
        assert_eq!(
            from(&[
                ("JETRUN_NATS_USER", "u"),
                ("JETRUN_NATS_PASSWORD", "p"),
                ("JETRUN_NATS_TOKEN", "t")
            ])
            .unwrap_err()
            .kind,
            AuthErrorKind::Conflicting
        );
        assert_eq!(
            from(&[
                ("JETRUN_NATS_USER", "u"),
                ("JETRUN_NATS_PASSWORD_FILE", "/nonexistent/pw")
            ])
            .unwrap_err()
            .kind,
            AuthErrorKind::File
        );
    }

    #[test]
    fn password_file_is_read_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let a = from(&[
            ("JETRUN_NATS_USER", "u"),
            ("JETRUN_NATS_PASSWORD_FILE", f.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(a.password.as_deref(), Some("s3cret"));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let a = from(&[
            ("JETRUN_NATS_USER", "u"),
            ("JETRUN_NATS_PASSWORD", "hunter2hunter2"),
        ])
        .unwrap();
        let shown = format!("{a:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn credentials_in_the_url_are_used_when_nothing_else_is_set() {
        let a =
            NatsAuth::default().or_from_url("nats://127.0.0.1:4222,nats://route:r0ute-pass@127.0.0.1:4223");
        assert_eq!(a.user.as_deref(), Some("route"));
        assert_eq!(a.password.as_deref(), Some("r0ute-pass"));
        let t = NatsAuth {
            token: Some("t".into()),
            ..Default::default()
        }
        .or_from_url("nats://u:p@127.0.0.1:4222");
        assert_eq!(t.user, None);
    }
}
