//! The cost of observability, shared by `bench_lifecycle` (this crate) and `bench_ingest`
//! (jetrun-ingest, through `#[path]`): run as is, a benchmark runs itself twice per round
//! as child processes, observability off then on (the order swapped every other round),
//! and prints the throughput of each and the ratio. Each child is a fresh process with a
//! fresh nats-server, so nothing global (the tracing subscriber, the metrics registry,
//! EMF) carries over from one mode to the other.
//!
//! - **off**: logs as the shipped binary writes them (text on stderr at `info`), no span
//!   export, no scrape, no EMF. The metrics registry is recorded into in both modes: the
//!   binary has no switch for it.
//! - **on**: the same, plus OTLP/HTTP span export (the shipped `otel` feature, every span
//!   sampled) to a local sink that decodes nothing but counts requests, spans and bytes,
//!   and answers 200; the registry rendered as a Prometheus scrape every second (the
//!   benchmark does the scrape); EMF lines written every second (to stderr).
//!
//! `BENCH_ROUNDS` (default 3) pairs of runs; `BENCH_OBS=off|on` runs one mode alone (with
//! its own sink when `BENCH_OTLP_ENDPOINT` is not set).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The mode of this process: `None` when it is the parent that compares.
pub fn mode() -> Option<bool> {
    match std::env::var("BENCH_OBS").ok().as_deref() {
        None => None,
        Some("off") => Some(false),
        Some("on") => Some(true),
        Some(other) => panic!("BENCH_OBS={other}: off or on"),
    }
}

/// How often the metrics are scraped (and EMF written) with observability on.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// What the sink received.
#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub spans: AtomicU64,
    pub bytes: AtomicU64,
}

/// An OTLP/HTTP receiver on loopback that counts and discards.
pub struct Sink {
    /// Its base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub url: String,
    pub counts: Arc<Counts>,
}

impl Sink {
    pub fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counts = Arc::new(Counts::default());
        let keep = counts.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let keep = keep.clone();
                std::thread::spawn(move || serve(conn, &keep));
            }
        });
        Sink { url, counts }
    }

    /// (requests, spans, bytes) so far.
    pub fn read(&self) -> (u64, u64, u64) {
        (
            self.counts.requests.load(Ordering::Relaxed),
            self.counts.spans.load(Ordering::Relaxed),
            self.counts.bytes.load(Ordering::Relaxed),
        )
    }
}

/// HTTP/1.1 with keep-alive: each request's body is read by its Content-Length.
fn serve(conn: TcpStream, counts: &Counts) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let Some(len) = len else {
            // Not what the exporter sends: answer and close.
            let _ = w
                .write_all(b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            return;
        };
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        counts.requests.fetch_add(1, Ordering::Relaxed);
        counts.bytes.fetch_add(len as u64, Ordering::Relaxed);
        if line.starts_with("POST /v1/traces") {
            counts.spans.fetch_add(count_spans(&body), Ordering::Relaxed);
        }
        if w.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )
        .is_err()
        {
            return;
        }
    }
}

/// The spans of an `ExportTraceServiceRequest` (protobuf): field 1 resource_spans →
/// field 2 scope_spans → field 2 spans, walked without decoding the spans.
pub fn count_spans(req: &[u8]) -> u64 {
    let mut n = 0;
    for rs in len_fields(req, 1) {
        for ss in len_fields(rs, 2) {
            n += len_fields(ss, 2).len() as u64;
        }
    }
    n
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&x, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The length-delimited values of field `want` in message `b` (malformed: what was read).
fn len_fields(mut b: &[u8], want: u64) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let Some(key) = varint(&mut b) else { break };
        let skip = match key & 7 {
            0 => {
                if varint(&mut b).is_none() {
                    break;
                }
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let Some(len) = varint(&mut b) else { break };
                let len = len as usize;
                if len > b.len() {
                    break;
                }
                if key >> 3 == want {
                    out.push(&b[..len]);
                }
                len
            }
            _ => break,
        };
        if skip > b.len() {
            break;
        }
        b = &b[skip..];
    }
    out
}

/// Sets up telemetry for one mode; keep the guard alive (dropping it flushes the spans).
pub fn init(on: bool, service: &str) -> jetrun_telemetry::Guard {
    if !on {
        return jetrun_telemetry::init_with("text", None);
    }
    let endpoint = std::env::var("BENCH_OTLP_ENDPOINT").unwrap_or_else(|_| {
        // Alone (`BENCH_OBS=on`): a sink in this process, for the process's lifetime.
        let sink = Box::leak(Box::new(Sink::start()));
        sink.url.clone()
    });
    let cfg = jetrun_telemetry::OtelConfig::from_lookup(
        // The sink's endpoint; every other `OTEL_*` setting (e.g. the sampler) as given.
        |k| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
            _ => std::env::var(k).ok(),
        },
        service,
    )
    .unwrap()
    .expect("an endpoint turns export on");
    let guard = jetrun_telemetry::init_with("text", Some(cfg));
    assert!(
        guard.exporting(),
        "span export did not start (is the otel feature on?)"
    );
    jetrun_telemetry::emf::start(jetrun_telemetry::emf::Target::Stderr, SCRAPE_EVERY);
    guard
}

/// What a child prints for the parent: its throughput, the same run's baseline and how
/// many items (jobs, webhooks) the whole run handled.
pub fn result(rate: f64, baseline: f64, items: u64) {
    println!("BENCH_RESULT rate={rate} baseline={baseline} items={items}");
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

/// The parent: `rounds` pairs of child runs, then the comparison. `show` picks which of a
/// child's lines are echoed; `unit` names the rate (`jobs/s`, `webhooks/s`); `item` names
/// one unit of work (`job`, `webhook`) for the spans-per-item figure.
pub fn compare(what: &str, unit: &str, item: &str, show: impl Fn(&str) -> bool) {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let sink = Sink::start();
    let exe = std::env::current_exe().unwrap();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut off_n, mut on_n) = (Vec::new(), Vec::new());
    println!("cost of observability: {what}, {rounds} rounds of off/on (order swapped every other round)");
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for obs in order {
            let mode = if obs { "on" } else { "off" };
            let before = sink.read();
            let out = Command::new(&exe)
                .args(&args)
                .env("BENCH_OBS", mode)
                .env("BENCH_OTLP_ENDPOINT", &sink.url)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "child ({mode}) failed: {:?}\n{text}",
                out.status
            );
            let mut got = None;
            for l in text.lines() {
                if let Some(r) = l.strip_prefix("BENCH_RESULT ") {
                    let field = |k: &str| -> f64 {
                        r.split_whitespace()
                            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                            .and_then(|v| v.parse().ok())
                            .unwrap()
                    };
                    got = Some((field("rate"), field("baseline"), field("items")));
                } else if show(l) {
                    println!("  [{round} {mode:>3}] {l}");
                }
            }
            let (rate, base, items) = got.expect("the child printed its result");
            let (req, spans, bytes) = sink.read();
            let (req, spans, bytes) = (req - before.0, spans - before.1, bytes - before.2);
            if obs {
                assert!(spans > 0, "observability on, but no span reached the sink");
                println!(
                    "  [{round}  on] exported {spans} spans ({:.1} per {item}) in {req} requests ({:.1} MB)",
                    spans as f64 / items.max(1.0),
                    bytes as f64 / 1e6
                );
                on.push(rate);
                on_n.push(rate / base);
            } else {
                assert_eq!(spans, 0, "observability off, yet spans were exported");
                off.push(rate);
                off_n.push(rate / base);
            }
            println!("  [{round} {mode:>3}] {rate:.0} {unit} (baseline {base:.0}/s in the same run)");
        }
    }
    let (m_off, m_on) = (median(&off), median(&on));
    let ratio = m_on / m_off;
    // Each round's two runs are back to back, so their ratio shares the machine's load.
    let per_round: Vec<f64> = off.iter().zip(&on).map(|(a, b)| b / a).collect();
    let pairs: Vec<String> = per_round.iter().map(|r| format!("{r:.3}")).collect();
    println!("observability off: median {m_off:.0} {unit} ({off:.0?})");
    println!("observability on:  median {m_on:.0} {unit} ({on:.0?})");
    println!(
        "on/off of the medians: {ratio:.3} ({:+.1} %); per round {} (median {:.3}); \
         normalised by each run's own baseline: {:.3}",
        (ratio - 1.0) * 100.0,
        pairs.join(" "),
        median(&per_round),
        median(&on_n) / median(&off_n)
    );
}
