//! `jetrun top`: a live dashboard of the deployment. On a terminal it is a ratatui view
//! (alternate screen, raw mode, restored on exit, on a panic and on Ctrl-C): queues with
//! depth, in flight, running, age of the oldest submission, jobs finished per second,
//! submit-to-start p50/p99, dead letters and a sparkline of the depth over the last frames;
//! the running jobs (oldest first) with their node; replicas desired against current per
//! scalable service; recent failures and dead letters; live nodes. Keys: `q`/Esc/Ctrl-C
//! quit, Tab/Shift-Tab move between panes, Up/Down (`j`/`k`) select, Enter shows the
//! selected row, `p` pauses. The selection follows its item (job, queue, node, ...) from
//! frame to frame, whatever rows come and go around it. It draws with plain terminal sequences only (no mouse, no
//! images), so it works over SSH.
//!
//! Not a terminal, `--plain`, `--once` or `--json`: plain text frames ([`text::render`]),
//! one after another (`--plain` on a terminal redraws them in place), or JSON (one
//! document per line when live).
//!
//! Modules: [`data`] reads a [`Frame`] from NATS, [`text`] renders it as plain text,
//! [`view`] draws it with ratatui. Also the metrics flags the long-running commands share
//! ([`MetricsArgs`]).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::GlobalOpts;
use crate::cmd::supervise::Component;

pub mod data;
pub mod text;
pub mod view;

pub use data::{Frame, Limits, snapshot};

/// Metrics flags of `serve`, `worker`, `autoscale` and `dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Serve `GET /metrics` (Prometheus/OpenMetrics text, no token) on this address, e.g.
    /// `0.0.0.0:9090`. `serve` and `dev` also answer `/metrics` on their HTTP port (with an
    /// operator token when tokens are configured).
    #[arg(long, env = "JETRUN_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Write the metrics as CloudWatch Embedded Metric Format JSON lines to `stdout` or
    /// `stderr` (ECS `awslogs` and Lambda turn them into CloudWatch metrics).
    #[arg(long, env = "JETRUN_METRICS_EMF", value_parser = ["stdout", "stderr"])]
    pub metrics_emf: Option<String>,
    /// How often EMF lines are written.
    #[arg(long, env = "JETRUN_METRICS_EMF_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub metrics_emf_interval: Duration,
}

impl MetricsArgs {
    /// Starts what the flags ask for: the EMF writer, and the metrics listener as a
    /// component (bound before this returns).
    pub async fn start(
        &self,
        ctx: &jetrun_host::Context,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Vec<Component>> {
        if let Some(t) = &self.metrics_emf {
            let target: jetrun_telemetry::emf::Target = t.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            jetrun_telemetry::emf::start(target, self.metrics_emf_interval);
            // Gauges (queue depth, replicas) are read from NATS; keep them fresh for EMF.
            let (ctx, sd, every) = (ctx.clone(), shutdown.clone(), self.metrics_emf_interval);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)) / 2);
                loop {
                    tokio::select! {
                        _ = sd.cancelled() => break,
                        _ = tick.tick() => jetrun_host::refresh_metrics(&ctx).await,
                    }
                }
                jetrun_telemetry::emf::flush(target);
            });
        }
        let mut out: Vec<Component> = Vec::new();
        if let Some(addr) = self.metrics_listen {
            let h = jetrun_ingest::spawn_metrics_listener(addr, ctx.clone(), shutdown).await?;
            out.push(("metrics", tokio::spawn(async move { Ok(h.await??) })));
        }
        Ok(out)
    }
}

/// Live dashboard of queues, running jobs, replicas, failures and nodes.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  jetrun top                          # the dashboard (q to quit, Tab to move, Enter for details)
  jetrun top --once                   # one plain-text frame, for scripts and tickets
  jetrun top --once --json | jq '.queues[] | {queue, pending, running}'
  jetrun top --plain --interval 5s    # plain frames redrawn in place (no alternate screen)
  jetrun top --json > frames.jsonl    # one JSON frame per line")]
pub struct Args {
    /// Print one frame and exit.
    #[arg(long)]
    pub once: bool,
    /// Frames as JSON: one pretty document with --once, else one line per frame.
    #[arg(long)]
    pub json: bool,
    /// Plain-text frames even on a terminal (redrawn in place), no dashboard.
    #[arg(long)]
    pub plain: bool,
    /// Time between frames.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Recent failures (and recent dead letters) shown.
    #[arg(long, default_value_t = 8)]
    pub failures: usize,
    /// Latest started jobs per queue the queue-wait percentiles are taken from.
    #[arg(long, default_value_t = 100)]
    pub sample: usize,
    /// Running jobs shown, the oldest first.
    #[arg(long, default_value_t = 50)]
    pub jobs: usize,
    /// Frames of depth history the sparklines show.
    #[arg(long, default_value_t = 120)]
    pub history: usize,
}

impl Args {
    fn limits(&self) -> Limits {
        Limits {
            failures: self.failures,
            sample: self.sample,
            jobs: self.jobs,
        }
    }
}

/// Runs `jetrun top`.
pub async fn run(g: &GlobalOpts, a: Args) -> anyhow::Result<()> {
    let ctx = g.context("jetrun-top").await?;
    if a.once {
        let f = snapshot(&ctx, a.limits(), None).await?;
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&f)?)?;
        } else {
            write!(out, "{}", text::render(&f))?;
        }
        return Ok(());
    }
    let shutdown = jetrun_host::shutdown_on_signals();
    let tty = !a.json && std::io::stdout().is_terminal();
    if tty && !a.plain && std::io::stdin().is_terminal() {
        return dashboard(&ctx, &a, &shutdown).await;
    }
    if tty {
        // Hide the cursor while redrawing; shown again on the way out.
        write!(std::io::stdout(), "\x1b[?25l\x1b[2J")?;
    }
    let result = plain(&ctx, &a, tty, &shutdown).await;
    if tty {
        let mut out = std::io::stdout().lock();
        write!(out, "\x1b[?25h")?;
        out.flush()?;
    }
    result
}

/// Restores the terminal when dropped: on return, on `?` and while a panic unwinds
/// (ratatui's panic hook restores it too, before the message is printed).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The ratatui dashboard.
async fn dashboard(ctx: &jetrun_host::Context, a: &Args, shutdown: &CancellationToken) -> anyhow::Result<()> {
    use crossterm::event::{Event, EventStream, KeyEventKind};
    // The first frame before the screen switches, so a bad connection fails as plain text.
    let first = snapshot(ctx, a.limits(), None).await?;
    let mut hist = view::History::new(a.history);
    hist.push(&first);
    let mut current = (first, Instant::now());
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let mut st = view::ViewState::default();
    let mut events = EventStream::new();
    let mut tick = tokio::time::interval(a.interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        terminal.draw(|out| view::draw(out, &current.0, &hist, &st))?;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if st.paused {
                    continue;
                }
                // A failed read keeps the last frame on screen and says why in the footer.
                match snapshot(ctx, a.limits(), Some((&current.0, current.1))).await {
                    Ok(f) => {
                        hist.push(&f);
                        // Rows move between frames; the selection stays on its item.
                        st.follow(&current.0, &f);
                        current = (f, Instant::now());
                        st.error = None;
                    }
                    Err(e) => st.error = Some(format!("{e:#}")),
                }
            }
            ev = events.next() => match ev {
                Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => {
                    if st.key(k, &current.0) == view::Action::Quit {
                        break;
                    }
                }
                // Resizes and other events: redrawn at the top of the loop.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
        }
    }
    Ok(())
}

/// Plain frames (not a terminal, or `--plain`), or JSON lines.
async fn plain(
    ctx: &jetrun_host::Context,
    a: &Args,
    tty: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut previous: Option<(Frame, Instant)> = None;
    let mut tick = tokio::time::interval(a.interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let f = snapshot(ctx, a.limits(), previous.as_ref().map(|(f, at)| (f, *at))).await?;
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", serde_json::to_string(&f)?)?;
        } else if tty {
            // Home, then each line over the old one (erasing its rest) and the screen
            // below: redrawn in place without a blank flash.
            let mut frame = String::from("\x1b[H");
            for line in text::render(&f).lines() {
                frame.push_str(line);
                frame.push_str("\x1b[K\n");
            }
            frame.push_str("\x1b[J");
            write!(out, "{frame}")?;
        } else {
            // Not a terminal: one plain frame after another.
            writeln!(out, "{}", text::render(&f))?;
        }
        // A closed pipe (`jetrun top | head`) ends the view.
        if out.flush().is_err() {
            break;
        }
        previous = Some((f, Instant::now()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
