//! Server time of every console page with 10,000 jobs in the store, over real HTTP
//! against the real router, beside a raw KV baseline measured in the same run.
//!
//! Seeding (as `tests/ui.rs`, plus what the other pages show): two tenants, two queues,
//! 9,000 finished jobs in `default` (7,000 succeeded, 1,000 failed, 1,000 cancelled),
//! 900 queued and the 100 oldest running (on `node-1`) in `gpu`; two live nodes, two scale
//! services, 150 dead letters. Every page is read once cold, then `runs` times
//! (default 100) round-robin with the others and the baselines, so a burst of load
//! from elsewhere hits them all alike. Server time is the page's `Server-Timing`
//! header (`app;dur`, the time the console spent rendering it); `http` is the client's
//! round trip median.
//!
//! `cargo run -p jetrun-ingest --example bench_console [-- runs]` (a debug build; add
//! `--release` for production-like numbers).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use jetrun_core::dlq::DeadLetter;
use jetrun_core::{JobRecord, JobSpec, JobStatus, Names};
use jetrun_ingest::{ApiTokens, Config, Credentials, WebhookSecrets};
use serde_json::json;

const ACME: &str = "acme-token-0123456789";
const OPS: &str = "ops-token-0123456789";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn pct(v: &[f64], q: f64) -> f64 {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn cookie_of(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next())
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .expect("the cookie")
}

/// Signs in with `token`; returns the session cookie.
async fn sign_in(http: &reqwest::Client, base: &str, token: &str) -> String {
    let r = http.get(format!("{base}/ui/login")).send().await.unwrap();
    let login = cookie_of(&r, "jetrun_login");
    let html = r.text().await.unwrap();
    let at = html.find(r#"name="csrf" value=""#).unwrap() + r#"name="csrf" value=""#.len();
    let csrf = &html[at..at + html[at..].find('"').unwrap()];
    let r = http
        .post(format!("{base}/ui/login"))
        .header("Cookie", format!("jetrun_login={login}"))
        .form(&[("csrf", csrf), ("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "sign-in");
    cookie_of(&r, "jetrun_session")
}

/// One timed page: returns (server ms, round trip ms).
async fn fetch(http: &reqwest::Client, base: &str, cookie: &str, path: &str) -> (f64, f64) {
    let t = Instant::now();
    let r = http
        .get(format!("{base}{path}"))
        .header("Cookie", format!("jetrun_session={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let server: f64 = r.headers()["server-timing"]
        .to_str()
        .unwrap()
        .strip_prefix("app;dur=")
        .unwrap()
        .parse()
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(body.contains("</html>"), "{path}: a whole page");
    (server, ms(t.elapsed()))
}

async fn seed(js: &jetstream::Context, ctx: &jetrun_host::Context) -> (String, String) {
    let store = jetrun_nats::JobStore::open(js, &Names::default(), "/bench")
        .await
        .unwrap()
        .without_events();
    let t = Instant::now();
    let ids: Vec<(u32, String)> = futures::stream::iter(0..10_000u32)
        .map(|i| {
            let store = store.clone();
            async move {
                let queue = if i % 10 == 0 { "gpu" } else { "default" };
                let mut spec = JobSpec::new(queue, "busybox", vec!["true".into()]);
                spec.tenant = Some(if i % 2 == 0 { "acme" } else { "globex" }.into());
                let mut rec = JobRecord::new(uuid::Uuid::now_v7().to_string(), spec, None, None);
                rec.status = match i % 10 {
                    // The oldest hundred of gpu run (jobs are dispatched in order).
                    0 if i < 1000 => JobStatus::Running,
                    0 => JobStatus::Queued,
                    1..=7 => JobStatus::Succeeded,
                    8 => JobStatus::Failed,
                    _ => JobStatus::Cancelled,
                };
                if rec.status == JobStatus::Running {
                    rec.node_id = Some("node-1".into());
                    rec.started_at = Some(jetrun_core::now());
                }
                if rec.status.is_terminal() {
                    rec.finished_at = Some(jetrun_core::now());
                    rec.exit_code = Some(0);
                }
                let id = rec.id.clone();
                store.admit(rec).await.unwrap();
                (i, id)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    // Two live nodes.
    let nodes = js.get_key_value(Names::default().bucket_nodes()).await.unwrap();
    for (n, tasks) in [("node-1", 100), ("node-2", 0)] {
        let info = json!({"node_id": n, "worker_id": format!("worker-{n}"), "runner": "oci",
            "tasks": tasks, "queues": ["*"], "updated_at": jetrun_core::now()});
        nodes.put(n, info.to_string().into()).await.unwrap();
    }
    // A scalable service and one scaled by its infrastructure.
    let scale = js.get_key_value(Names::default().bucket_scale()).await.unwrap();
    for (svc, scalable) in [("bisect-workers", true), ("gpu-pool", false)] {
        let spec = json!({"service": svc, "queue": "gpu", "min": 0, "max": 4,
            "target_per_replica": 2, "scalable": scalable, "strategy": "infra", "backend": "signal"});
        scale
            .put(format!("spec.{svc}"), spec.to_string().into())
            .await
            .unwrap();
    }
    // Dead letters.
    let publisher = ctx.publisher("bench");
    for i in 0..150 {
        let mut dl = DeadLetter {
            origin: "dispatch".into(),
            reason_kind: "invalid_spec".into(),
            reason: format!("dead letter {i}: image missing"),
            subject: "jetrun.job.submit.gpu".into(),
            stream: None,
            stream_seq: None,
            deliveries: 1,
            headers: Default::default(),
            payload_base64: String::new(),
            payload_truncated: false,
            payload_bytes: None,
            job_id: None,
            failed_at: jetrun_core::now(),
        };
        dl.set_payload(br#"{"queue":"gpu"}"#);
        jetrun_nats::dlq::publish(&publisher, &Names::default(), &dl)
            .await
            .unwrap();
    }
    println!(
        "seeded 10000 jobs, 2 nodes, 2 services, 150 dead letters in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let of = |want: u32| ids.iter().find(|(i, _)| *i == want).unwrap().1.clone();
    // A finished job of acme's, and a running one (its node has no agent: the log
    // request gets "no responders").
    (of(2), of(100))
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("runs: a number"))
        .unwrap_or(100);
    let server = jetrun_harness::NatsServer::start().unwrap();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    jetrun_nats::Topology::new(Names::default())
        .apply(&js)
        .await
        .unwrap();
    let ctx = jetrun_host::Context::from_client(client, Names::default())
        .await
        .unwrap();
    let (done, running) = seed(&js, &ctx).await;
    let creds = Credentials {
        webhook_secrets: WebhookSecrets::parse("bench-secret"),
        api_tokens: ApiTokens::parse(&format!("acme:{ACME},*:{OPS}")).unwrap(),
        ..Credentials::default()
    };
    let config = Config {
        rate_per_second: 0.0,
        ..Config::default()
    };
    let ingest = jetrun_ingest::Ingest::new(ctx.clone(), config, creds)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(jetrun_ingest::serve(
        listener,
        jetrun_ingest::router(ingest.clone()),
        shutdown.clone(),
    ));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let ops = sign_in(&http, &base, OPS).await;
    let acme = sign_in(&http, &base, ACME).await;
    let done_page = format!("/ui/jobs/{done}");
    let running_page = format!("/ui/jobs/{running}");
    let pages: Vec<(&str, &str, &str)> = vec![
        ("operator", &ops, "/ui/queues"),
        ("operator", &ops, "/ui/jobs"),
        ("operator", &ops, "/ui/jobs?queue=default"),
        ("operator", &ops, "/ui/jobs?queue=default&status=succeeded"),
        ("operator", &ops, "/ui/jobs?queue=gpu&status=queued"),
        ("operator", &ops, "/ui/jobs?status=failed"),
        ("operator", &ops, done_page.as_str()),
        ("operator", &ops, running_page.as_str()),
        ("operator", &ops, "/ui/dlq"),
        ("operator", &ops, "/ui/scale"),
        ("operator", &ops, "/ui/nodes"),
        ("tenant", &acme, "/ui/jobs"),
        ("tenant", &acme, "/ui/jobs?queue=default"),
        ("tenant", &acme, "/ui/jobs?queue=default&status=succeeded"),
        ("tenant", &acme, done_page.as_str()),
        ("tenant", &acme, "/ui/scale"),
        ("tenant", &acme, "/ui/nodes"),
    ];
    // Baselines: one record read, and listing the index's 10,000 keys (the subjects of
    // its stream, as every list page must), with the plain async-nats calls.
    let jobs_kv = js.get_key_value(Names::default().bucket_jobs()).await.unwrap();
    let index = js
        .get_stream(format!("KV_{}", Names::default().bucket_index()))
        .await
        .unwrap();
    let index_filter = format!("$KV.{}.>", Names::default().bucket_index());
    let kv_get = || async {
        let t = Instant::now();
        jobs_kv.entry(&done).await.unwrap().unwrap();
        ms(t.elapsed())
    };
    let kv_list = || async {
        let t = Instant::now();
        let mut s = index.info_with_subjects(&index_filter).await.unwrap();
        let mut n = 0;
        while let Some(x) = s.next().await {
            x.unwrap();
            n += 1;
        }
        assert_eq!(n, 10_000);
        ms(t.elapsed())
    };
    // What the pages show (the batched dead-letter read among them).
    let page = |cookie: String, p: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}{p}"))
                .header("Cookie", format!("jetrun_session={cookie}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let dlq = page(ops.clone(), "/ui/dlq").await;
    assert!(dlq.contains("dead letter 0:") && dlq.contains("dead letter 99:"));
    assert!(!dlq.contains("dead letter 100:") && dlq.contains("/ui/dlq?after="));
    let nodes = page(ops.clone(), "/ui/nodes").await;
    assert_eq!(
        nodes.matches(r#"<a href="/ui/jobs/"#).count(),
        100,
        "node-1 runs 100"
    );
    let list = page(ops.clone(), "/ui/jobs?queue=gpu&status=queued").await;
    assert_eq!(list.matches("<tr data-job=").count(), 50);
    let mut cold = Vec::new();
    for (_, cookie, p) in &pages {
        cold.push(fetch(&http, &base, cookie, p).await.0);
    }
    let (cold_get, cold_list) = (kv_get().await, kv_list().await);
    let mut server: Vec<Vec<f64>> = vec![Vec::new(); pages.len()];
    let mut trip: Vec<Vec<f64>> = vec![Vec::new(); pages.len()];
    let (mut gets, mut lists) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for _ in 0..runs {
        for (i, (_, cookie, p)) in pages.iter().enumerate() {
            let (s, t) = fetch(&http, &base, cookie, p).await;
            server[i].push(s);
            trip[i].push(t);
        }
        gets.push(kv_get().await);
        lists.push(kv_list().await);
    }
    println!(
        "{runs} runs of {} pages in {:.1} s\n",
        pages.len(),
        started.elapsed().as_secs_f64()
    );
    println!("| as | page | cold | p50 | p90 | p99 | http p50 |");
    println!("|---|---|---|---|---|---|---|");
    let shown = |p: &str| {
        p.replace(&done, "{finished job}")
            .replace(&running, "{running job}")
    };
    let mut worst_p90 = 0.0f64;
    for (i, (who, _, p)) in pages.iter().enumerate() {
        server[i].sort_by(f64::total_cmp);
        trip[i].sort_by(f64::total_cmp);
        let s = &server[i];
        worst_p90 = worst_p90.max(pct(s, 0.9));
        println!(
            "| {who} | `{}` | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            shown(p),
            cold[i],
            pct(s, 0.5),
            pct(s, 0.9),
            pct(s, 0.99),
            pct(&trip[i], 0.5),
        );
    }
    for (name, c, v) in [
        ("baseline: KV get of one record", cold_get, &mut gets),
        ("baseline: list the index's 10,000 keys", cold_list, &mut lists),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "| — | {name} | {c:.1} | {:.1} | {:.1} | {:.1} | — |",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99)
        );
    }
    println!("\nslowest p90: {worst_p90:.1} ms (ms; server time unless noted)");
    shutdown.cancel();
}
