//! The CPU one message's spans cost, export off against on, without NATS: each item is a
//! consumer span shaped like the host's (its fields, a remote parent, the job's fields
//! recorded once) with a producer span inside it shaped like a publish (its fields, the
//! current context read for the headers), each entered and exited a few times as an
//! instrumented future is polled. "on" exports every span over OTLP/HTTP to a local sink
//! (in the parent process, so its CPU is not counted); "off" installs the same log
//! layer and no exporter. CPU is the child process's user + system time, exporter thread
//! included, so the difference is what export adds per message.
//!
//! ```sh
//! cargo run --release -p jetrun-telemetry --features otel --example bench_spans
//! # BENCH_ITEMS=200000  BENCH_ROUNDS=3
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

// As the shipped binary allocates.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../../functions/dispatch/examples/obs/mod.rs"]
mod obs;

use std::process::Command;
use std::time::Instant;

fn items() -> u64 {
    std::env::var("BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

#[derive(Default)]
struct Once;

/// One message: what the host and a publish inside it do to spans.
fn message(traceparent: &str) {
    let span = tracing::info_span!(
        "message",
        otel.kind = "consumer",
        otel.name = "process jetrun.job.submit.{queue}",
        messaging.system = "nats",
        messaging.destination.name = "jetrun.job.submit.default",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.message.id = "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        messaging.consumer.group.name = "dispatch",
        messaging.message.delivery_count = 1i64,
        cloudevents.event_type = "io.jetrun.job.submitted.v1",
        trace_id = tracing::field::Empty,
        jetrun.job_id = "01JDEXAMPLEJOBID000000000",
        jetrun.queue = "default",
        jetrun.attempt = tracing::field::Empty,
        jetrun.tenant = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let linked = jetrun_telemetry::link_remote(&span, Some(traceparent), None);
    if linked {
        span.record("trace_id", &traceparent[3..35]);
    }
    for _ in 0..3 {
        span.in_scope(|| {});
    }
    span.in_scope(|| {
        if jetrun_telemetry::mark_once::<Once>(&span) {
            span.record("jetrun.attempt", 1i64);
            span.record("jetrun.tenant", "acme");
        }
        let publish = tracing::info_span!(
            "publish",
            otel.kind = "producer",
            otel.name = "send jetrun.job.event.{queue}.{job_id}",
            messaging.system = "nats",
            messaging.destination.name = "jetrun.job.event.default.01JDEXAMPLEJOBID000000000",
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.message.id = "1a1b2c3d4e5f60718293a4b5c6d7e8f9",
            cloudevents.event_type = "io.jetrun.job.state_changed.v1",
            jetrun.job_id = "01JDEXAMPLEJOBID000000000",
            jetrun.queue = "default",
            jetrun.attempt = 1i64,
            jetrun.tenant = "acme",
        );
        for _ in 0..2 {
            publish.in_scope(|| {
                std::hint::black_box(jetrun_telemetry::current_context());
            });
        }
    });
    span.record("outcome", "ack");
}

fn child(on: bool) {
    let _guard = obs::init(on, "bench-spans");
    let n = items();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // Warm-up: the callsites' interest is cached, the exporter's connection is open.
    for _ in 0..2_000 {
        message(tp);
    }
    let cpu = obs::cpu_seconds(std::process::id());
    let t = Instant::now();
    for _ in 0..n {
        message(tp);
    }
    // Every span of the measured phase exported (their CPU counted) before the clock stops.
    jetrun_telemetry::flush();
    let wall = t.elapsed().as_secs_f64();
    let cpu = obs::cpu_seconds(std::process::id()) - cpu;
    println!("RESULT {} {}", cpu / n as f64 * 1e6, wall / n as f64 * 1e6);
}

fn main() {
    if let Some(on) = obs::mode() {
        return child(on);
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let sink = obs::Sink::start();
    let exe = std::env::current_exe().unwrap();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    println!(
        "bench_spans: {} messages per run, {rounds} rounds (2 spans per message)",
        items()
    );
    for r in 0..rounds {
        let order = if r % 2 == 0 { [false, true] } else { [true, false] };
        for mode in order {
            let out = Command::new(&exe)
                .env("BENCH_OBS", if mode { "on" } else { "off" })
                .env("BENCH_OTLP_ENDPOINT", &sink.url)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .expect("a result");
            let v: Vec<f64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
            println!(
                "  round {r} {:<3}: {:6.2} µs CPU per message, {:6.2} µs wall",
                if mode { "on" } else { "off" },
                v[0],
                v[1]
            );
            if mode { on.push(v[0]) } else { off.push(v[0]) }
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (med(&mut off), med(&mut on));
    let (_, spans, bytes) = sink.read();
    println!(
        "CPU per message (median): off {off:.2} µs, on {on:.2} µs: export adds {:.2} µs per message ({:.2} µs per span); sink got {spans} spans, {:.0} bytes per span",
        on - off,
        (on - off) / 2.0,
        bytes as f64 / spans.max(1) as f64
    );
}
