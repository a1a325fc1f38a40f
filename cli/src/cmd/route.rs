//! `jetrun route`: webhook events to job submissions, by a rules file (production; in
//! `jetrun dev` route runs as a component).

use std::path::PathBuf;

use crate::GlobalOpts;

/// Run route alone: webhook events to job submissions, by a rules file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The rules file (YAML; see docs/rules.md).
    #[arg(long, env = "JETRUN_RULES")]
    pub rules: PathBuf,
    /// Only check the rules file and exit (no NATS needed).
    #[arg(long)]
    pub check: bool,
    /// Webhook events handled at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

/// Runs `jetrun route`.
pub async fn run(g: &GlobalOpts, a: Args) -> anyhow::Result<()> {
    let rules = jetrun_route::Rules::load(&a.rules)?;
    if a.check {
        println!("{}: {} rules OK", a.rules.display(), rules.rules.len());
        return Ok(());
    }
    let ctx = g.context("jetrun-route").await?;
    let cfg = jetrun_route::Config {
        rules_file: Some(a.rules),
        concurrency: a.concurrency,
        ..Default::default()
    };
    jetrun_route::run(ctx, cfg, jetrun_host::shutdown_on_signals()).await?;
    Ok(())
}
