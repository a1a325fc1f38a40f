//! Server time of the console's job lists with 10,000 jobs in the store (the seeding of
//! `tests/ui.rs`: two tenants, 9,000 finished, 1,000 queued, two queues): the listing
//! function the `/ui/jobs` page calls, timed in process, first call (cold) and then
//! best / median / p90 of 20.
//!
//! `cargo run -p jetrun-ingest --example bench_console` (a debug build, as the test's
//! numbers in docs/console.md are).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use jetrun_core::{JobRecord, JobSpec, JobStatus, Names};
use jetrun_ingest::{ApiTokens, Config, Credentials, WebhookSecrets};

/// The tenant listing before this change (`JobStore::list` of 500 records per queue,
/// filtered afterwards), kept here to measure against.
async fn before(
    ingest: &jetrun_ingest::Ingest,
    tenant: &str,
    queue: Option<&str>,
    status: Option<JobStatus>,
    limit: usize,
) -> usize {
    let queues = match queue {
        Some(q) => vec![q.to_string()],
        None => ingest.ctx.store.queues().await.unwrap(),
    };
    let mut all = Vec::new();
    for q in queues {
        let recs = ingest.ctx.store.list(&q, status, 500).await.unwrap();
        all.extend(
            recs.into_iter()
                .filter(|r| r.spec.tenant.as_deref() == Some(tenant)),
        );
    }
    all.sort_unstable_by_key(|b| std::cmp::Reverse(b.created_at));
    all.truncate(limit);
    all.len()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let server = jetrun_harness::NatsServer::start().unwrap();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    jetrun_nats::Topology::new(Names::default())
        .apply(&js)
        .await
        .unwrap();
    let store = jetrun_nats::JobStore::open(&js, &Names::default(), "/bench")
        .await
        .unwrap()
        .without_events();
    let t = Instant::now();
    futures::stream::iter(0..10_000u32)
        .map(|i| {
            let store = store.clone();
            async move {
                let queue = if i % 10 == 0 { "gpu" } else { "default" };
                let mut spec = JobSpec::new(queue, "busybox", vec!["true".into()]);
                spec.tenant = Some(if i % 2 == 0 { "acme" } else { "globex" }.into());
                let mut rec = JobRecord::new(uuid::Uuid::now_v7().to_string(), spec, None, None);
                rec.status = match i % 10 {
                    0 => JobStatus::Queued,
                    1..=7 => JobStatus::Succeeded,
                    8 => JobStatus::Failed,
                    _ => JobStatus::Cancelled,
                };
                if rec.status.is_terminal() {
                    rec.finished_at = Some(jetrun_core::now());
                }
                store.admit(rec).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    println!("seeded 10000 jobs in {:.1} s", t.elapsed().as_secs_f64());
    let ctx = jetrun_host::Context::from_client(client, Names::default())
        .await
        .unwrap();
    let creds = Credentials {
        webhook_secrets: WebhookSecrets::parse("bench-secret"),
        api_tokens: ApiTokens::parse("acme:acme-token-0123456789,*:ops-token-0123456789").unwrap(),
        ..Credentials::default()
    };
    let ingest = jetrun_ingest::Ingest::new(ctx, Config::default(), creds)
        .await
        .unwrap();
    for (name, queue, status) in [
        ("tenant, queue default", Some("default"), None),
        ("tenant, every queue", None, None),
        (
            "tenant, default, succeeded",
            Some("default"),
            Some(JobStatus::Succeeded),
        ),
    ] {
        let mut times = Vec::new();
        let mut shown = 0;
        for _ in 0..21 {
            let t = Instant::now();
            shown = before(&ingest, "acme", queue, status, 50).await;
            times.push(t.elapsed());
        }
        report(&format!("BEFORE {name}"), shown, times);
    }
    let cases: [(&str, &str, Option<&str>, Option<JobStatus>); 5] = [
        ("tenant, queue default", "acme", Some("default"), None),
        ("tenant, every queue", "acme", None, None),
        (
            "tenant, default, succeeded",
            "acme",
            Some("default"),
            Some(JobStatus::Succeeded),
        ),
        ("operator, queue default", "*", Some("default"), None),
        ("operator, every queue", "*", None, None),
    ];
    for (name, tenant, queue, status) in cases {
        let mut times = Vec::new();
        let mut shown = 0;
        for _ in 0..21 {
            let t = Instant::now();
            let list = jetrun_ingest::ui::data::jobs(&ingest, tenant, queue, None, status, 50)
                .await
                .unwrap();
            times.push(t.elapsed());
            shown = list.jobs.len();
            assert!(
                list.jobs
                    .iter()
                    .all(|r| tenant == "*" || r.spec.tenant.as_deref() == Some(tenant))
            );
        }
        report(name, shown, times);
    }
}

fn report(name: &str, shown: usize, mut times: Vec<Duration>) {
    let cold = times.remove(0);
    times.sort_unstable();
    println!(
        "{name:<35} {shown} jobs: cold {:.1} ms, best {:.1} ms, median {:.1} ms, p90 {:.1} ms",
        ms(cold),
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() * 9 / 10]),
    );
}
