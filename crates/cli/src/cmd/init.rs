//! `jetrun init`

use jetrun_nats::Topology;
use jetrun_nats::topology::Change;

use crate::GlobalOpts;

/// Create or upgrade every stream, consumer and KV bucket.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Replicas of every stream and bucket (3 in production, across zones).
    #[arg(long, env = "JETRUN_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// Queues whose dispatch consumers to create now (repeatable).
    #[arg(
        long = "queue",
        env = "JETRUN_QUEUES",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Applies the topology and prints what changed.
pub async fn run(g: &GlobalOpts, a: Args) -> anyhow::Result<()> {
    let client = jetrun_nats::connect(&g.nats_url, "jetrun-init", std::time::Duration::from_secs(10)).await?;
    let js = async_nats::jetstream::new(client);
    let mut topo = Topology::new(g.names()?);
    topo.replicas = a.replicas;
    for q in &a.queues {
        jetrun_core::names::validate_token(q)?;
    }
    topo.queues = a.queues;
    let report = topo.apply(&js).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in &report {
            let what = match r.change {
                Change::Created => "created",
                Change::Updated => "updated",
                Change::Unchanged => "unchanged",
            };
            println!("{:<9} {:<8} {}", what, r.kind, r.name);
        }
    }
    Ok(())
}
