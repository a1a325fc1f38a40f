//! `jetrun nodes`: the live fleet, read from the `<prefix>-nodes` bucket (each node
//! agent's heartbeat entry, which expires when the node stops beating), with the jobs
//! each node runs: the `launching` and `running` jobs of every queue whose record names
//! that node. Jobs naming a node with no live entry are listed apart: their node died or
//! lost NATS, and settle retries them once their leases expire.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use jetrun_core::JobStatus;
use serde::Serialize;

use crate::GlobalOpts;
use crate::cmd::top::data::{self, RunningJob};
use crate::cmd::top::text::age;

/// The live fleet and what each node runs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON: `{"at", "nodes": [...], "unlisted": [...]}`.
    #[arg(long)]
    pub json: bool,
    /// Redraw every `--interval` until Ctrl-C (with --json: one document per line).
    #[arg(long)]
    pub watch: bool,
    /// Time between redraws with --watch.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// A live node and its jobs.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    /// The node id.
    pub node_id: String,
    /// The worker process running its agent.
    pub worker_id: String,
    /// Its runner.
    pub runner: String,
    /// The queues it serves (`*`: every queue).
    pub queues: Vec<String>,
    /// Tasks its agent said it supervises at its last heartbeat.
    pub tasks: u64,
    /// Jobs whose record names this node (`launching` or `running`).
    pub running: usize,
    /// Seconds since its last heartbeat.
    pub seen_seconds_ago: f64,
    /// Those jobs, the oldest first.
    pub jobs: Vec<RunningJob>,
}

/// What `jetrun nodes` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// When it was read.
    pub at: jetrun_core::Timestamp,
    /// Live nodes, by id.
    pub nodes: Vec<NodeRow>,
    /// Launching or running jobs naming no live node (or none yet).
    pub unlisted: Vec<RunningJob>,
}

/// Reads the fleet.
pub async fn read(ctx: &jetrun_host::Context) -> anyhow::Result<Fleet> {
    let now = jetrun_core::now();
    let mut by_node: BTreeMap<String, Vec<RunningJob>> = BTreeMap::new();
    let mut unlisted = Vec::new();
    let nodes = data::read_nodes(ctx).await;
    for q in ctx.store.queues().await? {
        for status in [JobStatus::Launching, JobStatus::Running] {
            for r in ctx.store.list(&q, Some(status), 10_000).await? {
                let j = RunningJob::of(&r, now);
                match &r.node_id {
                    Some(n) if nodes.iter().any(|x| &x.node_id == n) => {
                        by_node.entry(n.clone()).or_default().push(j)
                    }
                    _ => unlisted.push(j),
                }
            }
        }
    }
    let oldest_first = |a: &RunningJob, b: &RunningJob| {
        b.age_seconds
            .total_cmp(&a.age_seconds)
            .then_with(|| a.job_id.cmp(&b.job_id))
    };
    unlisted.sort_by(oldest_first);
    let nodes = nodes
        .into_iter()
        .map(|n| {
            let mut jobs = by_node.remove(&n.node_id).unwrap_or_default();
            jobs.sort_by(oldest_first);
            NodeRow {
                running: jobs.len(),
                node_id: n.node_id,
                worker_id: n.worker_id,
                runner: n.runner,
                queues: n.queues,
                tasks: n.tasks,
                seen_seconds_ago: n.seen_seconds_ago,
                jobs,
            }
        })
        .collect();
    Ok(Fleet {
        at: now,
        nodes,
        unlisted,
    })
}

/// The fleet as plain text.
pub fn render(f: &Fleet) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<32} {:<8} {:>7} {:>5} {:>6}  QUEUES",
        "NODE", "RUNNER", "RUNNING", "TASKS", "SEEN"
    );
    if f.nodes.is_empty() {
        let _ = writeln!(
            o,
            "  no live node (is a `jetrun worker` or `jetrun dev` running?)"
        );
    }
    for n in &f.nodes {
        let _ = writeln!(
            o,
            "{:<32} {:<8} {:>7} {:>5} {:>6}  {}",
            n.node_id,
            n.runner,
            n.running,
            n.tasks,
            age(Some(n.seen_seconds_ago)),
            n.queues.join(",")
        );
        for j in &n.jobs {
            let _ = writeln!(o, "  {}", job_line(j));
        }
    }
    if !f.unlisted.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "ON NO LIVE NODE ({}; retried once their leases expire)",
            f.unlisted.len()
        );
        for j in &f.unlisted {
            let _ = writeln!(
                o,
                "  {}  node {}",
                job_line(j),
                j.node_id.as_deref().unwrap_or("-")
            );
        }
    }
    o
}

fn job_line(j: &RunningJob) -> String {
    format!(
        "{} {:<12} {:<9} {:>6}  attempt {}  tenant {}",
        j.job_id,
        j.queue,
        j.status,
        age(Some(j.age_seconds)),
        j.attempt,
        j.tenant.as_deref().unwrap_or("-")
    )
}

/// Runs `jetrun nodes`.
pub async fn run(g: &GlobalOpts, a: Args) -> anyhow::Result<()> {
    let ctx = g.context("jetrun-nodes").await?;
    if !a.watch {
        let f = read(&ctx).await?;
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&f)?)?;
        } else {
            write!(out, "{}", render(&f))?;
        }
        return Ok(());
    }
    let shutdown = jetrun_host::shutdown_on_signals();
    let tty = !a.json && std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(a.interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let f = read(&ctx).await?;
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", serde_json::to_string(&f)?)?;
        } else if tty {
            // Home and clear, then the frame: plain sequences any terminal (and SSH) has.
            write!(out, "\x1b[H\x1b[2J{}", render(&f))?;
        } else {
            writeln!(out, "{}", render(&f))?;
        }
        // A closed pipe ends the watch.
        if out.flush().is_err() {
            break;
        }
    }
    Ok(())
}
