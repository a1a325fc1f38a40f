//! `jetrun github`: the GitHub reply function as a service of its own, for production
//! deployments (inside `jetrun dev` it runs as a component). It runs as the NATS user
//! `github` (`infra/nats/accounts.conf`), which may read its two consumers and write only
//! its claims bucket: `jetrun init` creates them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::GlobalOpts;

/// Run the github function.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The rules file, the same one route reads (YAML; see docs/rules.md). Required here
    /// or as `rules_file` in --config.
    #[arg(long, env = "JETRUN_RULES")]
    pub rules: Option<PathBuf>,
    /// GitHub REST API base URL (default https://api.github.com; GitHub Enterprise:
    /// `https://<host>/api/v3`).
    #[arg(long, env = "JETRUN_GITHUB_API_URL")]
    pub github_api_url: Option<String>,
    /// File holding the GitHub token (a PAT or an App installation token); else
    /// `JETRUN_GITHUB_TOKEN`.
    #[arg(long, env = "JETRUN_GITHUB_TOKEN_FILE")]
    pub github_token_file: Option<PathBuf>,
    /// GitHub App id: with --github-app-key-file, answers use installation tokens the
    /// App mints (for the installation each webhook names), not a token.
    #[arg(long, env = "JETRUN_GITHUB_APP_ID", requires = "github_app_key_file")]
    pub github_app_id: Option<u64>,
    /// The GitHub App's private key (PEM, as GitHub hands it out; a mounted secret).
    #[arg(long, env = "JETRUN_GITHUB_APP_KEY_FILE", requires = "github_app_id")]
    pub github_app_key_file: Option<PathBuf>,
    /// The jetrun API's address as GitHub users should see it, for logs links
    /// (default http://127.0.0.1:8080).
    #[arg(long, env = "JETRUN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Attempts per GitHub call (default 6).
    #[arg(long, env = "JETRUN_GITHUB_ATTEMPTS")]
    pub github_attempts: Option<u32>,
    /// Longest wait between two GitHub attempts, also caps `Retry-After` (default 60s).
    #[arg(long, env = "JETRUN_GITHUB_MAX_WAIT", value_parser = humantime::parse_duration)]
    pub github_max_wait: Option<Duration>,
    /// Events handled at once per consumer (default 8).
    #[arg(long, env = "JETRUN_GITHUB_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// A YAML or JSON file with the whole configuration (`jetrun_github::Config`:
    /// rules_file, api_url, token_file, app_id, app_key_file, public_url, attempts,
    /// max_wait, concurrency).
    /// Unknown fields are refused; fields left out keep their defaults. Flags given on
    /// the command line or through their environment variables override it.
    #[arg(long, env = "JETRUN_GITHUB_CONFIG")]
    pub config: Option<PathBuf>,
}

impl Args {
    /// The configuration: --config (or the defaults), then the flags given.
    fn config(&self) -> anyhow::Result<jetrun_github::Config> {
        let mut cfg = match &self.config {
            Some(path) => load_config(path)?,
            None => jetrun_github::Config::default(),
        };
        if self.rules.is_some() {
            cfg.rules_file = self.rules.clone();
        }
        if let Some(v) = &self.github_api_url {
            cfg.api_url = v.clone();
        }
        if self.github_token_file.is_some() {
            cfg.token_file = self.github_token_file.clone();
        }
        if self.github_app_id.is_some() {
            cfg.app_id = self.github_app_id;
            cfg.app_key_file = self.github_app_key_file.clone();
        }
        if let Some(v) = &self.public_url {
            cfg.public_url = v.clone();
        }
        if let Some(v) = self.github_attempts {
            cfg.attempts = v;
        }
        if let Some(v) = self.github_max_wait {
            cfg.max_wait = v;
        }
        if let Some(v) = self.concurrency {
            cfg.concurrency = v;
        }
        // Without rules it would answer nothing: a deployment mistake, not a mode.
        let Some(rules) = &cfg.rules_file else {
            anyhow::bail!("no rules file: pass --rules (JETRUN_RULES) or rules_file in --config");
        };
        jetrun_route::Rules::load(rules)?;
        Ok(cfg)
    }
}

/// Reads a YAML or JSON `jetrun_github::Config`.
fn load_config(path: &Path) -> anyhow::Result<jetrun_github::Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // YAML is a superset of JSON: one parser reads both.
    serde_yaml::from_str(&text).with_context(|| format!("{} is not a github configuration", path.display()))
}

/// Runs the github function until SIGTERM or Ctrl-C. It logs `github function answering`
/// once both consumers are bound; a missing consumer or bucket fails at once, naming
/// `jetrun init`.
pub async fn run(g: &GlobalOpts, a: Args) -> anyhow::Result<()> {
    // A bad configuration or rules file fails before anything connects.
    let cfg = a.config()?;
    let shutdown = jetrun_host::shutdown_on_signals();
    let ctx = g.context("jetrun-github").await?;
    jetrun_github::run(ctx, cfg, shutdown).await?;
    Ok(())
}
