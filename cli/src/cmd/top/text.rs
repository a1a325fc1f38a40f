//! The plain-text frame: what `--once`, `--plain` and a pipe get (no colour, no cursor
//! control; one column per number, so scripts can split lines on whitespace).

use std::fmt::Write as _;

use super::data::Frame;

/// A duration in seconds, short: `4.2s`, `42s`, `7m`, `1.5h`; `-` when unknown.
pub fn age(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 10.0 => format!("{s:.1}s"),
        Some(s) if s < 60.0 => format!("{s:.0}s"),
        Some(s) if s < 3600.0 => format!("{:.0}m", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
    }
}

/// A rate with one decimal, `-` when unknown.
pub fn rate(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into())
}

/// An optional number, `-` when unknown.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The frame as plain text.
pub fn render(f: &Frame) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "jetrun top — {}",
        f.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<20} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "QUEUE",
        "PENDING",
        "INFLIGHT",
        "ACTIVE",
        "RUNNING",
        "OLDEST",
        "SUCCEEDED",
        "FAILED",
        "DONE/S",
        "WAIT50",
        "WAIT99",
        "DLQ"
    );
    for q in &f.queues {
        let _ = writeln!(
            o,
            "{:<20} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>6}",
            q.queue,
            q.pending,
            q.ack_pending,
            q.active,
            q.running,
            age(q.oldest_age_seconds),
            q.finished("succeeded"),
            q.finished("failed") + q.finished("timed_out"),
            rate(q.finished_per_second),
            age(q.queue_wait_p50_seconds),
            age(q.queue_wait_p99_seconds),
            q.dead_letters,
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "RUNNING JOBS ({}, oldest first)", f.running_jobs.len());
    if f.running_jobs.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for j in &f.running_jobs {
        let _ = writeln!(
            o,
            "  {} {:<12} {:<12} {:>6} {:>3}  {}",
            j.job_id,
            j.queue,
            j.tenant.as_deref().unwrap_or("-"),
            age(Some(j.age_seconds)),
            j.attempt,
            j.node_id.as_deref().unwrap_or("-"),
        );
    }
    if !f.replicas.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<20} {:<16} {:>5} {:>5} {:>8} {:>8}  REASON",
            "SERVICE", "QUEUE", "MIN", "MAX", "DESIRED", "CURRENT"
        );
        for r in &f.replicas {
            let _ = writeln!(
                o,
                "{:<20} {:<16} {:>5} {:>5} {:>8} {:>8}  {}{}",
                r.service,
                r.queue,
                r.min,
                r.max,
                opt(r.desired),
                opt(r.current),
                r.reason.as_deref().unwrap_or("no decision yet"),
                r.backend_error
                    .as_deref()
                    .map(|e| format!(" (backend error: {e})"))
                    .unwrap_or_default(),
            );
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "RECENT FAILURES ({} dead letters stored)", f.dead_letters);
    if f.failures.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for x in &f.failures {
        let _ = writeln!(
            o,
            "  {} {:<12} {:<10} {:<18} {}",
            x.job_id,
            x.queue,
            x.status,
            x.kind.as_deref().unwrap_or("-"),
            x.message.as_deref().unwrap_or("")
        );
    }
    if !f.recent_dead_letters.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "RECENT DEAD LETTERS");
        for d in &f.recent_dead_letters {
            let _ = writeln!(
                o,
                "  #{:<6} {:<10} {:<18} {:<32} {}",
                d.seq, d.origin, d.reason_kind, d.subject, d.reason
            );
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<32} {:<8} {:>6} {:>6}  QUEUES",
        "NODE", "RUNNER", "TASKS", "SEEN"
    );
    for n in &f.nodes {
        let _ = writeln!(
            o,
            "{:<32} {:<8} {:>6} {:>6}  {}",
            n.node_id,
            n.runner,
            n.tasks,
            age(Some(n.seen_seconds_ago)),
            n.queues.join(",")
        );
    }
    o
}
