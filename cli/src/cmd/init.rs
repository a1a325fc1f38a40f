//! `jetrun init`

use jetrun_nats::Topology;
use jetrun_nats::topology::Change;

use crate::GlobalOpts;

/// Create or upgrade every stream, consumer and KV bucket.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Replicas of every stream and bucket (3 in production, across zones). Without it,
    /// existing streams and buckets keep theirs and new ones get 1. A count below what
    /// one already has is refused unless --force-replicas.
    #[arg(long, env = "JETRUN_REPLICAS", value_parser = clap::value_parser!(u16).range(1..=5))]
    pub replicas: Option<u16>,
    /// Lower the replicas of existing streams and buckets to --replicas (less
    /// redundancy; each is reported with a warning).
    #[arg(long, env = "JETRUN_FORCE_REPLICAS", requires = "replicas")]
    pub force_replicas: bool,
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
    topo.replicas = a.replicas.map(usize::from);
    topo.force_replicas = a.force_replicas;
    for q in &a.queues {
        jetrun_core::names::validate_token(q)?;
    }
    topo.queues = a.queues;
    let report = provision(&js, &topo).await?;
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
            if let Some(w) = &r.warning {
                eprintln!("warning: {} {}: {w}", r.kind, r.name);
            }
        }
    }
    Ok(())
}

/// Everything a deployment needs: the topology's streams, buckets and consumers, settle's
/// consumers, the ECS pacer's bucket, the github function's consumers and bucket (those
/// components run as users that may not create them) and autoscale's request consumer.
/// `jetrun init` and `jetrun dev` both apply this, so `init` against a running `dev`
/// changes nothing.
pub async fn provision(
    js: &async_nats::jetstream::Context,
    topo: &Topology,
) -> anyhow::Result<Vec<jetrun_nats::topology::Applied>> {
    let mut topo = topo.clone();
    #[cfg(feature = "ecs")]
    topo.extra_buckets.push(jetrun_runner::ecs::pacer::bucket_config(
        &jetrun_runner::ecs::shared_bucket_name(topo.names.prefix()),
        1,
    ));
    topo.extra_buckets.push(jetrun_github::bucket_config(&topo.names));
    topo.extra_consumers.extend(
        [
            jetrun_github::subscriptions(&topo.names),
            jetrun_settle::subscriptions(&topo.names),
            jetrun_autoscale::subscriptions(&topo.names),
        ]
        .into_iter()
        .flatten()
        .map(|s| (s.stream, s.consumer)),
    );
    Ok(topo.apply(js).await?)
}
