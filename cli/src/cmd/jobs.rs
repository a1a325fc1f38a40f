//! `jetrun jobs list|get|watch|cancel|logs` (logs are served by the node agent that ran the
//! job, over the node protocol: `jetrun_node`)

use std::io::Write;

use anyhow::Context as _;
use futures::StreamExt;
use jetrun_core::{JobRecord, JobStatus};
use jetrun_node::protocol::{LogsReply, LogsRequest};

use crate::GlobalOpts;

/// Work with jobs.
#[derive(Debug, clap::Subcommand)]
pub enum JobsCmd {
    /// List jobs of a queue, newest first.
    List {
        /// The queue (all queues if omitted).
        #[arg(long, short)]
        queue: Option<String>,
        /// Only this status: queued, launching, running, succeeded, failed, timed_out, cancelled.
        #[arg(long, short)]
        status: Option<JobStatus>,
        /// At most this many per queue.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one job.
    Get {
        /// The job id.
        id: String,
        /// Print the job record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow state changes as they happen (of one queue, or all).
    Watch {
        /// Only this queue.
        #[arg(long, short)]
        queue: Option<String>,
        /// Only this job.
        #[arg(long)]
        id: Option<String>,
        /// One JSON object per line: the state-change event as published.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: a queued job is cancelled at once; a running one is stopped.
    Cancel {
        /// The job id.
        id: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the tail of a job's task logs, served by the node agent that ran it.
    Logs {
        /// The job id.
        id: String,
        /// How many last lines.
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// Keep printing new lines until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    // <<< more jobs subcommands: keep this marker >>>
}

fn row(r: &JobRecord) -> String {
    format!(
        "{:<36}  {:<10} {:<10} {:>3}/{:<3} {:>5}  {}",
        r.id,
        r.queue,
        r.status.as_str(),
        r.attempt,
        r.max_attempts,
        r.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
        r.created_at.format("%Y-%m-%d %H:%M:%S"),
    )
}

/// Runs a jobs subcommand.
pub async fn run(g: &GlobalOpts, cmd: JobsCmd) -> anyhow::Result<()> {
    let ctx = g.context("jetrun-jobs").await?;
    match cmd {
        JobsCmd::List {
            queue,
            status,
            limit,
            json,
        } => {
            let queues = match queue {
                Some(q) => vec![q],
                None => ctx.store.queues().await?,
            };
            let mut out = std::io::stdout().lock();
            if !json {
                writeln!(
                    out,
                    "{:<36}  {:<10} {:<10} {:>7} {:>5}  CREATED",
                    "ID", "QUEUE", "STATUS", "ATTEMPT", "EXIT"
                )?;
            }
            for q in queues {
                for r in ctx.store.list(&q, status, limit).await? {
                    if json {
                        writeln!(out, "{}", serde_json::to_string(&r)?)?;
                    } else {
                        writeln!(out, "{}", row(&r))?;
                    }
                }
            }
        }
        JobsCmd::Get { id, json } => {
            let (r, rev) = ctx
                .store
                .get(&id)
                .await?
                .with_context(|| format!("no job {id}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("id:        {}", r.id);
                println!("queue:     {}", r.queue);
                println!("status:    {}", r.status);
                if r.status == JobStatus::Queued
                    && let Ok(s) = jetrun_nats::queues::serving(&ctx.js, &ctx.names, &r.queue).await
                    && !s.is_served()
                {
                    println!("waiting:   no worker serves queue {} now", r.queue);
                }
                println!("attempt:   {}/{}", r.attempt, r.max_attempts);
                println!("image:     {}", r.spec.image);
                println!("command:   {:?}", r.spec.command);
                if let Some(c) = r.exit_code {
                    println!("exit code: {c}");
                }
                if let Some(e) = &r.error {
                    println!("error:     {}: {}", e.kind, e.message);
                }
                if let Some(res) = &r.result {
                    println!("result:    {}", serde_json::Value::Object(res.clone()));
                }
                if let Some(e) = &r.result_error {
                    println!("result:    refused: {e}");
                }
                if let Some(t) = &r.task_ref {
                    println!("task:      {t}");
                }
                if let Some(n) = &r.node_id {
                    println!("node:      {n}");
                }
                println!("created:   {}", r.created_at);
                if let Some(t) = r.finished_at {
                    println!("finished:  {t}");
                }
                println!("revision:  {rev}");
            }
        }
        JobsCmd::Watch { queue, id, json } => {
            let subject = match (&queue, &id) {
                (Some(q), Some(i)) => ctx.names.job_event(q, i),
                (Some(q), None) => ctx.names.job_event(q, "*"),
                (None, Some(i)) => format!("{}.job.event.*.{i}", ctx.names.prefix()),
                (None, None) => ctx.names.job_event_all(),
            };
            let mut sub = ctx.client.subscribe(subject).await?;
            eprintln!("watching; Ctrl-C to stop");
            while let Some(m) = sub.next().await {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) {
                    if json {
                        println!("{v}");
                        continue;
                    }
                    println!(
                        "{}  {:<36}  {} -> {}",
                        v["at"].as_str().unwrap_or(""),
                        v["job_id"].as_str().unwrap_or(""),
                        v["from"].as_str().unwrap_or("(new)"),
                        v["to"].as_str().unwrap_or("")
                    );
                }
            }
        }
        JobsCmd::Cancel { id, json } => {
            let status = jetrun_ingest::jobs::cancel(&ctx, &id).await?;
            if json {
                println!("{}", serde_json::json!({"id": id, "status": status}));
            } else {
                println!("{id} {status}");
            }
        }
        JobsCmd::Logs { id, tail, follow } => logs(&ctx, &id, tail, follow).await?,
    }
    Ok(())
}

/// `jetrun jobs logs`: prints the tail of a job's logs, fetched from the node agent that
/// runs (or ran) it; with `follow`, keeps polling until the job is terminal.
async fn logs(ctx: &jetrun_host::Context, id: &str, tail: usize, follow: bool) -> anyhow::Result<()> {
    let (rec, _) = ctx.store.get(id).await?.with_context(|| format!("no job {id}"))?;
    let node = rec
        .node_id
        .clone()
        .with_context(|| format!("job {id} is {} and has not been placed on a node", rec.status))?;
    let timeout = std::time::Duration::from_secs(5);
    let mut req = LogsRequest {
        job_id: id.to_string(),
        tail,
        stdout_from: None,
        stderr_from: None,
    };
    let first = jetrun_node::request_logs(&ctx.client, &ctx.names, &node, &req, timeout)
        .await
        .with_context(|| format!("node {node} (which ran job {id}) did not serve its logs"))?;
    if let Some(e) = &first.error {
        anyhow::bail!("node {node}: {e}");
    }
    let print = |r: &LogsReply| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        for l in &r.stdout {
            writeln!(out, "{l}")?;
        }
        out.flush()?;
        let mut err = std::io::stderr().lock();
        for l in &r.stderr {
            writeln!(err, "{l}")?;
        }
        Ok(())
    };
    print(&first)?;
    if !follow {
        return Ok(());
    }
    req.stdout_from = Some(first.stdout_offset);
    req.stderr_from = Some(first.stderr_offset);
    loop {
        let done = match ctx.store.get(id).await? {
            Some((r, _)) => r.status.is_terminal() || r.node_id.as_deref() != Some(node.as_str()),
            None => true,
        };
        let r = jetrun_node::request_logs(&ctx.client, &ctx.names, &node, &req, timeout).await?;
        print(&r)?;
        req.stdout_from = Some(r.stdout_offset);
        req.stderr_from = Some(r.stderr_offset);
        if done && r.stdout.is_empty() && r.stderr.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
