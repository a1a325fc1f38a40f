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
//! its own sink when `BENCH_OTLP_ENDPOINT` is not set). `BENCH_OBS_PARTS=traces|metrics`
//! turns on only span export, or only the scrapes and EMF, to measure them apart.
//! `BENCH_CALLGRIND=1` runs every child under `valgrind --tool=callgrind` and prints the
//! instructions the pipeline process executed per item over the measured phase, off and
//! on: a count that does not move with the machine's load (wall time under valgrind is
//! meaningless; use `BENCH_OBS_PARTS=traces`, since the scrapes happen per second).
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

/// Whether "on" includes span export (`BENCH_OBS_PARTS` unset, `all` or `traces`).
pub fn traces_on() -> bool {
    matches!(parts().as_str(), "all" | "traces")
}

/// Whether "on" includes the scrapes and EMF (`BENCH_OBS_PARTS` unset, `all` or `metrics`).
pub fn metrics_on() -> bool {
    matches!(parts().as_str(), "all" | "metrics")
}

fn parts() -> String {
    let p = std::env::var("BENCH_OBS_PARTS").unwrap_or_else(|_| "all".into());
    assert!(
        matches!(p.as_str(), "all" | "traces" | "metrics"),
        "BENCH_OBS_PARTS={p}: all, traces or metrics"
    );
    p
}

/// How often the metrics are scraped (and EMF written) with observability on.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// What the sink received.
#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub spans: AtomicU64,
    pub bytes: AtomicU64,
    /// Spans by name, over the sink's life.
    pub names: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Trace requests received and not yet counted: walked by [`Sink::read`], after the
    /// child has finished, so that the sink's own parsing does not take CPU from the two
    /// cores the measured run shares (a collector runs on another machine).
    pub pending: std::sync::Mutex<Vec<Vec<u8>>>,
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
        let pending = std::mem::take(&mut *self.counts.pending.lock().unwrap());
        let mut names = self.counts.names.lock().unwrap();
        for body in pending {
            self.counts.spans.fetch_add(count_spans(&body), Ordering::Relaxed);
            for n in span_names(&body) {
                *names.entry(n).or_default() += 1;
            }
        }
        drop(names);
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
            counts.pending.lock().unwrap().push(body);
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

/// The names (field 5) of the spans of an `ExportTraceServiceRequest`.
pub fn span_names(req: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for rs in len_fields(req, 1) {
        for ss in len_fields(rs, 2) {
            for span in len_fields(ss, 2) {
                if let Some(n) = len_fields(span, 5).first() {
                    out.push(String::from_utf8_lossy(n).into_owned());
                }
            }
        }
    }
    out
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
    if on && metrics_on() {
        jetrun_telemetry::emf::start(jetrun_telemetry::emf::Target::Stderr, SCRAPE_EVERY);
    }
    if !on || !traces_on() {
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
    guard
}

/// What a child prints for the parent: its throughput, the same run's baseline and how
/// many items (jobs, webhooks) the whole run handled.
pub fn result(rate: f64, baseline: f64, items: u64) {
    println!("BENCH_RESULT rate={rate} baseline={baseline} items={items}");
}

/// CPU time (user + system, all threads) a process has used, from `/proc/<pid>/stat`, in
/// seconds (clock ticks of 10 ms). CPU per item is steadier than throughput on a machine
/// shared with other work: on two cores that nats-server and the pipeline share, the
/// throughput lost is about the CPU added per item over the CPU an item takes in all.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): state is the 3rd field, utime
    // and stime the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// This process's system CPU seconds (the kernel's share of [`cpu_seconds`]) and its
/// context switches (voluntary + involuntary, summed over its threads): where CPU goes
/// that an instruction count of the process's own code does not see.
pub fn kernel_side() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let sys = rest
        .split_whitespace()
        .nth(12)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0) as f64
        / 100.0;
    let mut switches = 0;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for l in status.lines() {
            if let Some(v) = l
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    (sys, switches)
}

/// The nats-server this process started (the harness's child), if any.
pub fn nats_server_pid() -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let ppid = rest.split_whitespace().nth(1)?;
        (head.ends_with("(nats-server") && ppid == me).then_some(pid)
    })
}

/// CPU used by this process and by its nats-server, sampled around the measured phase.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    client: f64,
    server: f64,
    kernel: (f64, u64),
    server_pid: Option<u32>,
}

/// Under callgrind (`BENCH_CALLGRIND=1` in the parent, which runs each child under
/// `valgrind --tool=callgrind` and names its output file in `BENCH_CALLGRIND_OUT`): asks
/// callgrind to zero its counters (`zero`) or to dump them (`dump`) and returns the
/// instructions counted since the zero. callgrind_control reaches the process through
/// vgdb, so nothing in the measured code changes; without callgrind this does nothing.
fn callgrind(command: &str) -> Option<u64> {
    let out = std::env::var("BENCH_CALLGRIND_OUT").ok()?;
    let flag = if command == "zero" { "-z" } else { "-d" };
    let status = Command::new("callgrind_control")
        .arg(flag)
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status()
        .expect("callgrind_control runs (Debian's valgrind package)");
    assert!(status.success(), "callgrind_control {flag}: {status}");
    if command == "zero" {
        return None;
    }
    // The first dump of `--callgrind-out-file=F` is `F.1`; its `summary:` line is the
    // instructions executed (Ir) by every thread since the zero.
    let text = std::fs::read_to_string(format!("{out}.1")).expect("callgrind wrote its dump");
    text.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

impl Cpu {
    pub fn start() -> Cpu {
        callgrind("zero");
        let server_pid = nats_server_pid();
        Cpu {
            client: cpu_seconds(std::process::id()),
            server: server_pid.map(cpu_seconds).unwrap_or(0.0),
            kernel: kernel_side(),
            server_pid,
        }
    }

    /// Prints the CPU per item since [`Cpu::start`] (for the parent, and for a reader).
    pub fn report(&self, items: u64, item: &str) {
        let client = cpu_seconds(std::process::id()) - self.client;
        let server = self.server_pid.map(cpu_seconds).unwrap_or(0.0) - self.server;
        let (sys, switches) = kernel_side();
        println!(
            "CPU per {item}, pipeline in the kernel: {:.0} µs; context switches per {item}: {:.2}",
            (sys - self.kernel.0) * 1e6 / items.max(1) as f64,
            (switches - self.kernel.1) as f64 / items.max(1) as f64
        );
        if let Some(ir) = callgrind("dump") {
            let per_item = ir as f64 / items.max(1) as f64;
            println!("instructions per {item} (callgrind, this process): {per_item:.0}");
            println!("BENCH_INSTR client={per_item}");
        }
        let per = |s: f64| s * 1e6 / items.max(1) as f64;
        println!(
            "CPU per {item}: pipeline {:.0} µs, nats-server {:.0} µs (over {items})",
            per(client),
            per(server)
        );
        println!("BENCH_CPU client={} server={}", per(client), per(server));
    }
}

/// With metrics on, what one scrape's rendering and one EMF frame cost in this process,
/// with the registry as the run left it (each happens once per [`SCRAPE_EVERY`]; the
/// scrape's NATS reads are not included). Printed after the measured phase.
pub fn metrics_cost() {
    if !metrics_on() {
        return;
    }
    let n = 20;
    let t = std::time::Instant::now();
    let mut bytes = 0;
    for _ in 0..n {
        bytes = std::hint::black_box(jetrun_telemetry::metrics::render()).len();
    }
    let scrape = t.elapsed() / n;
    let t = std::time::Instant::now();
    let mut lines = 0;
    for _ in 0..n {
        let text = jetrun_telemetry::metrics::render_openmetrics();
        lines = std::hint::black_box(jetrun_telemetry::emf::frame(&text, 0)).len();
    }
    let emf = t.elapsed() / n;
    println!(
        "metrics: one scrape renders {bytes} bytes in {:.0} µs; one EMF frame is {lines} lines in {:.0} µs",
        scrape.as_secs_f64() * 1e6,
        emf.as_secs_f64() * 1e6
    );
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

/// A 95 % interval for the median of `v`, by bootstrap (4,000 resamples drawn with a fixed
/// seed, so the same rounds give the same interval): how far the median of this many
/// noisy rounds can be trusted.
fn median_interval(v: &[f64]) -> (f64, f64) {
    if v.len() < 2 {
        let m = median(v);
        return (m, m);
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut medians: Vec<f64> = (0..4000)
        .map(|_| {
            let sample: Vec<f64> = (0..v.len())
                .map(|_| v[(next() % v.len() as u64) as usize])
                .collect();
            median(&sample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    (medians[100], medians[3899])
}

/// CPU seconds per item of one run: (pipeline, nats-server).
type CpuPerItem = (f64, f64);

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
    // `BENCH_CALLGRIND=1`: every child under callgrind, which counts the instructions the
    // pipeline process executes per item over the measured phase. Wall time under
    // valgrind means nothing, but the count is steady from run to run and from machine
    // load to machine load, where jobs/s on two shared cores swings by ±20 %.
    let grind = std::env::var("BENCH_CALLGRIND").is_ok_and(|v| v == "1").then(|| {
        let dir = std::env::temp_dir().join(format!("jetrun-bench-callgrind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        println!(
            "instruction counts: every child under callgrind, files in {}",
            dir.display()
        );
        dir
    });
    let (mut off_instr, mut on_instr): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut off_n, mut on_n) = (Vec::new(), Vec::new());
    let mut on_items: Vec<f64> = Vec::new();
    let (mut off_cpu, mut on_cpu): (Vec<CpuPerItem>, Vec<CpuPerItem>) = (Vec::new(), Vec::new());
    println!("observability parts switched: {} (BENCH_OBS_PARTS)", parts());
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
            let mut child = match &grind {
                None => Command::new(&exe),
                Some(dir) => {
                    let out = dir.join(format!("cg.{round}.{mode}"));
                    let mut c = Command::new("valgrind");
                    c.arg("--tool=callgrind")
                        .arg(format!("--callgrind-out-file={}", out.display()))
                        .arg(format!("--log-file={}.log", out.display()))
                        .arg(&exe)
                        .env("BENCH_CALLGRIND_OUT", &out);
                    c
                }
            };
            let out = child
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
                if let Some(r) = l.strip_prefix("BENCH_INSTR client=") {
                    let n: f64 = r.trim().parse().unwrap();
                    if obs {
                        on_instr.push(n)
                    } else {
                        off_instr.push(n)
                    }
                    continue;
                }
                if let Some(r) = l.strip_prefix("BENCH_CPU ") {
                    let field = |k: &str| -> f64 {
                        r.split_whitespace()
                            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                            .and_then(|v| v.parse().ok())
                            .unwrap()
                    };
                    let cpu = (field("client"), field("server"));
                    if obs {
                        on_cpu.push(cpu)
                    } else {
                        off_cpu.push(cpu)
                    }
                    continue;
                }
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
                assert!(
                    spans > 0 || !traces_on(),
                    "observability on, but no span reached the sink"
                );
                println!(
                    "  [{round}  on] exported {spans} spans ({:.1} per {item}) in {req} requests ({:.1} MB)",
                    spans as f64 / items.max(1.0),
                    bytes as f64 / 1e6
                );
                on.push(rate);
                on_n.push(rate / base);
                on_items.push(items);
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
    let on_items: f64 = on_items.iter().sum();
    let names = sink.counts.names.lock().unwrap().clone();
    let by_name: Vec<String> = names
        .iter()
        .map(|(n, c)| format!("{n} {:.2}", *c as f64 / on_items.max(1.0)))
        .collect();
    println!("spans per {item} by name: {}", by_name.join(", "));
    // Each round's two runs are back to back, so their ratio shares the machine's load.
    let per_round: Vec<f64> = off.iter().zip(&on).map(|(a, b)| b / a).collect();
    let pairs: Vec<String> = per_round.iter().map(|r| format!("{r:.3}")).collect();
    println!("observability off: median {m_off:.0} {unit} ({off:.0?})");
    println!("observability on:  median {m_on:.0} {unit} ({on:.0?})");
    let (lo, hi) = median_interval(&per_round);
    println!(
        "on/off of the medians: {ratio:.3} ({:+.1} %); per round {} (median {:.3}, 95 % \
         bootstrap interval {lo:.3}–{hi:.3}); normalised by each run's own baseline: {:.3}",
        (ratio - 1.0) * 100.0,
        pairs.join(" "),
        median(&per_round),
        median(&on_n) / median(&off_n)
    );
    if !off_cpu.is_empty() && !on_cpu.is_empty() {
        let client = |v: &[CpuPerItem]| median(&v.iter().map(|c| c.0).collect::<Vec<_>>());
        let total = |v: &[CpuPerItem]| median(&v.iter().map(|c| c.0 + c.1).collect::<Vec<_>>());
        let (c_off, c_on, t_off, t_on) = (client(&off_cpu), client(&on_cpu), total(&off_cpu), total(&on_cpu));
        println!(
            "CPU per {item} (medians): pipeline {c_off:.0} → {c_on:.0} µs ({:+.1} %), \
             pipeline + nats-server {t_off:.0} → {t_on:.0} µs ({:+.1} %): \
             on two shared cores, throughput ≈ {:.3} × off",
            (c_on / c_off - 1.0) * 100.0,
            (t_on / t_off - 1.0) * 100.0,
            t_off / t_on
        );
        // The same, round by round: off's CPU per item over on's (each pair back to back).
        let per_round: Vec<f64> = off_cpu
            .iter()
            .zip(&on_cpu)
            .map(|(a, b)| (a.0 + a.1) / (b.0 + b.1))
            .collect();
        let (lo, hi) = median_interval(&per_round);
        println!(
            "throughput implied by CPU, per round: median {:.3} × off (95 % bootstrap interval {lo:.3}–{hi:.3})",
            median(&per_round)
        );
    }
    if !off_instr.is_empty() && !on_instr.is_empty() {
        let (i_off, i_on) = (median(&off_instr), median(&on_instr));
        let spread = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
            (hi - lo) / median(v) * 100.0
        };
        println!(
            "instructions per {item}, pipeline process (callgrind, medians): off {i_off:.0} → on {i_on:.0} \
             ({:+.1} %; rounds spread {:.1} % off, {:.1} % on; off {off_instr:.0?}, on {on_instr:.0?})",
            (i_on / i_off - 1.0) * 100.0,
            spread(&off_instr),
            spread(&on_instr)
        );
    }
}
