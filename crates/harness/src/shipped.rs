//! The shipped least-privilege NATS configuration (`infra/nats`) running in a test.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use crate::{HarnessError, ServerOptions, ServerProcess, free_port};

/// Where the shipped nats-server configuration lives (`infra/nats` of the workspace).
pub fn shipped_config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/nats")
}

/// One user of the shipped configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippedUser {
    /// The NATS user name (`ingest`, `worker`, ...).
    pub name: String,
    /// The environment variable its password comes from (`JETRUN_INGEST_PASSWORD`).
    pub password_var: String,
}

/// The shipped `jetrun.conf` and every file it includes, as (path relative to
/// [`shipped_config_dir`], text).
fn shipped_files() -> Result<Vec<(PathBuf, String)>, HarnessError> {
    let root = shipped_config_dir();
    let main = PathBuf::from("jetrun.conf");
    let text = read(&root.join(&main))?;
    let mut files = vec![(main, text.clone())];
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("include ") else {
            continue;
        };
        let rel = PathBuf::from(rest.trim().trim_end_matches(';').trim_matches(['"', '\'']));
        // Copied into the test's directory: it must stay inside it.
        if !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(config_error(
                &root.join("jetrun.conf"),
                format!("include {} leaves infra/nats", rel.display()),
            ));
        }
        let text = read(&root.join(&rel))?;
        files.push((rel, text));
    }
    Ok(files)
}

fn read(path: &Path) -> Result<String, HarnessError> {
    std::fs::read_to_string(path).map_err(|source| HarnessError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn config_error(path: &Path, message: String) -> HarnessError {
    HarnessError::Config {
        path: path.to_path_buf(),
        message,
    }
}

/// The part of a config line before its comment (`#` outside a quoted string).
fn uncommented(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The value after `key:` in `line` (a bare or quoted word), if any.
fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = line;
    while let Some(i) = rest.find(key) {
        let before = rest[..i].chars().next_back();
        let after = &rest[i + key.len()..];
        rest = after;
        // `user:` but not `subuser:`.
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let Some(v) = after.trim_start().strip_prefix(':') else {
            continue;
        };
        let v = v.trim_start().trim_start_matches('"');
        let end = v
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$' | '.')))
            .unwrap_or(v.len());
        return Some(&v[..end]);
    }
    None
}

fn users_in(path: &Path, text: &str) -> Result<Vec<ShippedUser>, HarnessError> {
    let mut users = Vec::new();
    for line in text.lines().map(uncommented) {
        let Some(var) = value_of(line, "password").and_then(|p| p.strip_prefix('$')) else {
            continue;
        };
        let Some(name) = value_of(line, "user") else {
            return Err(config_error(
                path,
                format!("${var} is not on the same line as its `user:`: cannot tell whose password it is"),
            ));
        };
        users.push(ShippedUser {
            name: name.to_string(),
            password_var: var.to_string(),
        });
    }
    Ok(users)
}

/// Every user of the shipped configuration whose password comes from the environment
/// (`password: $JETRUN_<USER>_PASSWORD` in `infra/nats/accounts.conf`), in file order.
pub fn shipped_users() -> Result<Vec<ShippedUser>, HarnessError> {
    let mut users = Vec::new();
    for (rel, text) in shipped_files()? {
        users.extend(users_in(&shipped_config_dir().join(rel), &text)?);
    }
    if users.is_empty() {
        return Err(config_error(
            &shipped_config_dir().join("jetrun.conf"),
            "no `user: NAME, password: $VAR` found".into(),
        ));
    }
    Ok(users)
}

/// `$var` replaced by `value` where it is the whole variable (not `$var_2`).
fn substitute(text: &str, var: &str, value: &str) -> String {
    let needle = format!("${var}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(&needle) {
        let after = &rest[i + needle.len()..];
        out.push_str(&rest[..i]);
        if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(&needle);
        } else {
            out.push_str(value);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The test's password of `user`.
fn password_of(user: &str) -> String {
    format!("{user}-test-password")
}

/// A nats-server running the shipped configuration: `infra/nats/jetrun.conf` and what it
/// includes (the `JETRUN` account with one least-privilege user per component), every
/// user's password filled in, on a free port with a temp store. The users are read from
/// the config, so a user added there is available here without another edit.
///
/// Only what cannot work in a test is changed: the store directory, the monitoring port
/// and the listen address come from the harness.
#[derive(Debug)]
pub struct ShippedNats {
    process: ServerProcess,
    users: Vec<ShippedUser>,
    // Dropped after the process (field order), so the store outlives the server.
    dir: tempfile::TempDir,
}

impl ShippedNats {
    /// Starts it.
    pub fn start() -> Result<Self, HarnessError> {
        let dir = tempfile::tempdir()?;
        let users = shipped_users()?;
        let mut conf_path = None;
        for (rel, mut text) in shipped_files()? {
            for u in &users {
                text = substitute(&text, &u.password_var, &format!("\"{}\"", password_of(&u.name)));
            }
            if conf_path.is_none() {
                // The main file: the harness sets the store (`-sd`; nats-server refuses
                // both) and the address; no fixed monitoring port (tests run in parallel).
                text = text
                    .lines()
                    .filter(|l| {
                        let l = l.trim_start();
                        !["store_dir", "http", "https", "http_port", "https_port", "listen"]
                            .iter()
                            .any(|k| l.strip_prefix(k).is_some_and(|r| r.trim_start().starts_with(':')))
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            let path = dir.path().join(&rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text)?;
            conf_path.get_or_insert(path);
        }
        let conf_path = conf_path.unwrap_or_else(|| dir.path().join("jetrun.conf"));
        let port = free_port()?;
        let process = ServerProcess::spawn(ServerOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            store_dir: dir.path().join("jetstream"),
            name: format!("shipped-{port}"),
            cluster: None,
            log_file: dir.path().join("nats.log"),
            extra_args: vec!["-c".into(), conf_path.display().to_string()],
        })?;
        Ok(Self { process, users, dir })
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// The users' names, in the config's order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.iter().map(|u| u.name.as_str())
    }

    /// The password of `user` (e.g. for `JETRUN_NATS_PASSWORD` of a spawned binary).
    ///
    /// # Panics
    ///
    /// When the shipped config has no such user: a test naming a user that does not
    /// exist is wrong.
    pub fn password(&self, user: &str) -> String {
        if !self.users().any(|u| u == user) {
            panic!(
                "no user {user:?} in the shipped NATS config (users: {:?})",
                self.users().collect::<Vec<_>>()
            );
        }
        password_of(user)
    }

    /// Connect options with `user`'s credentials, to add settings before connecting.
    pub fn connect_options(&self, user: &str) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::new().user_and_password(user.into(), self.password(user))
    }

    /// A client connected as `user`.
    ///
    /// # Panics
    ///
    /// When the user is unknown or the connection fails (it is for tests).
    pub async fn client(&self, user: &str) -> async_nats::Client {
        let url = self.url();
        match self.connect_options(user).connect(url.as_str()).await {
            Ok(c) => c,
            Err(e) => panic!("connect to {url} as {user}: {e}"),
        }
    }

    /// The server's log file.
    pub fn log_file(&self) -> &Path {
        &self.process.opts.log_file
    }

    /// The permission violations the server logged (what a refused or missing
    /// permission looks like from the server's side).
    pub fn violations(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_file())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Violation"))
            .map(str::to_string)
            .collect()
    }

    /// The directory holding the written configuration, store and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn users_and_their_variables_are_read_from_the_lines_that_define_them() {
        let text = "# JETRUN_X_PASSWORD in a comment\n\
                    { user: ingest, password: $JETRUN_INGEST_PASSWORD,   # a # comment\n\
                    { user: \"bridge\", password: $JETRUN_BRIDGE_PASSWORD }\n\
                    { user: fixed, password: \"literal\" }\n\
                    publish: { allow: [\"$KV.jetrun-jobs.>\"] }\n";
        let users = users_in(Path::new("x"), text).unwrap();
        assert_eq!(
            users,
            [
                ShippedUser {
                    name: "ingest".into(),
                    password_var: "JETRUN_INGEST_PASSWORD".into()
                },
                ShippedUser {
                    name: "bridge".into(),
                    password_var: "JETRUN_BRIDGE_PASSWORD".into()
                },
            ]
        );
        assert!(users_in(Path::new("x"), "password: $ORPHAN\n").is_err());
    }

    #[test]
    fn only_the_whole_variable_is_substituted() {
        assert_eq!(
            substitute("a: $V, b: $V_2, c: $V", "V", "\"p\""),
            "a: \"p\", b: $V_2, c: \"p\""
        );
    }

    #[test]
    fn the_shipped_config_names_every_user_once() {
        let users = shipped_users().unwrap();
        let mut names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        for u in &users {
            assert_eq!(
                u.password_var,
                format!("JETRUN_{}_PASSWORD", u.name.to_uppercase())
            );
        }
        assert!(
            names.contains(&"operator") && names.contains(&"worker"),
            "{names:?}"
        );
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a user is defined twice");
    }
}
