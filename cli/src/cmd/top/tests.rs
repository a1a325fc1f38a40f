//! The dashboard drawn into ratatui's `TestBackend`: the numbers land in the right rows.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::data::{DeadLetterRow, Failure, Frame, Node, QueueRow, Replicas, RunningJob};
use super::view::{self, Action, History, Pane, ViewState};

const JOB_A: &str = "01990000-0000-7000-8000-00000000000a";
const JOB_B: &str = "01990000-0000-7000-8000-00000000000b";
const FAILED: &str = "01990000-0000-7000-8000-0000000000ff";

fn frame(builds_pending: u64) -> Frame {
    let at = chrono::DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    Frame {
        at,
        queues: vec![
            QueueRow {
                queue: "builds".into(),
                pending: builds_pending,
                ack_pending: 3,
                active: 12,
                running: 2,
                oldest_age_seconds: Some(42.0),
                finished: BTreeMap::from([("succeeded".into(), 1234), ("failed".into(), 5)]),
                finished_per_second: Some(2.5),
                queue_wait_p50_seconds: Some(1.5),
                queue_wait_p99_seconds: Some(31.0),
                queue_wait_sample: 100,
                dead_letters: 4,
            },
            QueueRow {
                queue: "idle".into(),
                ..Default::default()
            },
        ],
        running_jobs: vec![
            RunningJob {
                job_id: JOB_A.into(),
                queue: "builds".into(),
                status: "running".into(),
                tenant: Some("acme".into()),
                node_id: Some("node-alpha".into()),
                attempt: 2,
                image: "busybox".into(),
                started_at: Some(at),
                age_seconds: 125.0,
            },
            RunningJob {
                job_id: JOB_B.into(),
                queue: "builds".into(),
                status: "running".into(),
                tenant: None,
                node_id: Some("node-beta".into()),
                attempt: 1,
                image: "busybox".into(),
                started_at: Some(at),
                age_seconds: 7.0,
            },
        ],
        replicas: vec![Replicas {
            service: "builders".into(),
            queue: "builds".into(),
            min: 1,
            max: 9,
            desired: Some(6),
            current: Some(4),
            reason: Some("depth 17 / 3 per replica".into()),
            burst: None,
            backend_error: None,
            updated_seconds_ago: Some(2.0),
        }],
        failures: vec![Failure {
            job_id: FAILED.into(),
            queue: "builds".into(),
            status: "failed".into(),
            kind: Some("exit_code".into()),
            message: Some("exited with 3".into()),
            at: Some(at),
        }],
        dead_letters: 4,
        recent_dead_letters: vec![DeadLetterRow {
            seq: 77,
            origin: "dispatch".into(),
            reason_kind: "malformed".into(),
            reason: "not a CloudEvent".into(),
            subject: "jetrun.job.submit.builds".into(),
            job_id: None,
            at,
        }],
        nodes: vec![
            Node {
                node_id: "node-alpha".into(),
                worker_id: "h:1:0".into(),
                runner: "oci".into(),
                tasks: 1,
                queues: vec!["builds".into()],
                seen_seconds_ago: 1.0,
            },
            Node {
                node_id: "node-beta".into(),
                worker_id: "h:2:0".into(),
                runner: "process".into(),
                tasks: 1,
                queues: vec!["*".into()],
                seen_seconds_ago: 3.0,
            },
        ],
    }
}

/// Draws and returns the screen, one string per row.
fn screen(f: &Frame, hist: &History, st: &ViewState) -> Vec<String> {
    let mut t = Terminal::new(TestBackend::new(170, 48)).unwrap();
    t.draw(|out| view::draw(out, f, hist, st)).unwrap();
    let buf = t.backend().buffer().clone();
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
        })
        .collect()
}

/// The row holding `needle` (exactly one).
fn row<'a>(rows: &'a [String], needle: &str) -> &'a str {
    let hits: Vec<&String> = rows.iter().filter(|r| r.contains(needle)).collect();
    assert_eq!(
        hits.len(),
        1,
        "{needle:?} in {} rows:\n{}",
        hits.len(),
        rows.join("\n")
    );
    hits[0]
}

/// The whitespace-separated cells of a row, without borders and the selection mark.
fn cells(row: &str) -> Vec<&str> {
    row.split(['│', ' '])
        .filter(|c| !c.is_empty() && *c != ">")
        .collect()
}

/// The cells of the row holding `needle`, from `needle` on (panes share screen rows).
fn from<'a>(rows: &'a [String], needle: &str) -> Vec<&'a str> {
    let r = row(rows, needle);
    cells(&r[r.find(needle).unwrap()..])
}

/// The cells of the row whose first cell is `first` (a queue's row).
fn starting<'a>(rows: &'a [String], first: &str) -> Vec<&'a str> {
    let hits: Vec<Vec<&str>> = rows
        .iter()
        .map(|r| cells(r))
        .filter(|c| c.first() == Some(&first))
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "rows starting with {first:?}:\n{}",
        rows.join("\n")
    );
    hits.into_iter().next().unwrap()
}

#[test]
fn the_dashboard_puts_each_number_in_its_row() {
    let mut hist = History::new(60);
    for depth in [0, 5, 10, 17] {
        hist.push(&frame(depth));
    }
    let f = frame(17);
    let rows = screen(&f, &hist, &ViewState::default());
    let all = rows.join("\n");

    // The queue row: depth, in flight, running, oldest age, rate, waits, counts, DLQ,
    // and the sparkline of the four depths seen (0 → lowest bar, 17 → highest).
    let builds = starting(&rows, "builds");
    assert_eq!(
        &builds[..11],
        &[
            "builds", "17", "3", "2", "42s", "2.5", "1.5s", "31s", "1234", "5", "4"
        ],
        "{all}"
    );
    assert_eq!(builds[11], "▁▄▆█", "{all}");
    let idle = starting(&rows, "idle");
    assert_eq!(&idle[..5], &["idle", "0", "0", "0", "-"], "{all}");

    // Running jobs, the oldest first, each with its tenant, age, attempt and node.
    let a = rows.iter().position(|r| r.contains(JOB_A)).unwrap();
    let b = rows.iter().position(|r| r.contains(JOB_B)).unwrap();
    assert!(a < b, "oldest first:\n{all}");
    let ja = from(&rows, JOB_A);
    assert_eq!(
        &ja[..6],
        &[JOB_A, "builds", "acme", "2m", "2", "node-alpha"],
        "{all}"
    );
    let jb = from(&rows, JOB_B);
    assert_eq!(
        &jb[..6],
        &[JOB_B, "builds", "-", "7.0s", "1", "node-beta"],
        "{all}"
    );

    // Replicas desired against current.
    let r = from(&rows, "builders");
    assert_eq!(&r[..4], &["builders", "6", "4", "1-9"], "{all}");

    // Failures and dead letters.
    let x = from(&rows, FAILED);
    assert_eq!(&x[..4], &[FAILED, "builds", "failed", "exit_code"], "{all}");
    assert!(
        row(&rows, "dead letter #77").contains("not a CloudEvent"),
        "{all}"
    );

    // Nodes: each once in the nodes pane, with runner and tasks.
    let n = rows
        .iter()
        .find(|r| r.contains("node-beta") && r.contains("process"))
        .unwrap();
    let n = cells(&n[n.rfind("node-beta").unwrap()..]);
    assert_eq!(n, ["node-beta", "process", "1", "3.0s", "*"], "{all}");

    // Header totals.
    assert!(
        rows[0].contains("queues 2  depth 17  running 2  nodes 2  dead letters 4"),
        "{}",
        rows[0]
    );
    assert!(
        all.contains("Depth of builds over the last 4 frames (max 17, now 17)"),
        "{all}"
    );
}

#[test]
fn keys_move_focus_and_selection_and_enter_shows_the_job() {
    let f = frame(1);
    let hist = History::new(10);
    let mut st = ViewState::default();
    let key = |c: KeyCode| KeyEvent::new(c, KeyModifiers::NONE);
    assert_eq!(st.key(key(KeyCode::Tab), &f), Action::Redraw);
    assert_eq!(st.pane, Pane::Jobs);
    st.key(key(KeyCode::Char('j')), &f);
    st.key(key(KeyCode::Down), &f); // already on the last job: stays
    assert_eq!(st.selection(Pane::Jobs, &f), Some(1));
    let rows = screen(&f, &hist, &st);
    assert!(row(&rows, JOB_B).contains("> "), "the selected job is marked");
    assert!(!row(&rows, JOB_A).contains("> "));

    st.key(key(KeyCode::Enter), &f);
    assert!(st.detail);
    let all = screen(&f, &hist, &st).join("\n");
    assert!(all.contains("Details"), "{all}");
    assert!(all.contains("node       node-beta"), "{all}");
    assert!(
        all.contains(&format!("jetrun jobs logs {JOB_B} --follow")),
        "{all}"
    );
    // Esc closes the details first, then quits.
    assert_eq!(st.key(key(KeyCode::Esc), &f), Action::Redraw);
    assert!(!st.detail);
    assert_eq!(st.key(key(KeyCode::Esc), &f), Action::Quit);

    st.key(key(KeyCode::BackTab), &f);
    assert_eq!(st.pane, Pane::Queues);
    st.key(key(KeyCode::BackTab), &f);
    assert_eq!(st.pane, Pane::Nodes);
    st.key(key(KeyCode::Char('p')), &f);
    assert!(st.paused);
    assert!(screen(&f, &hist, &st)[0].contains("PAUSED"));
    assert_eq!(st.key(key(KeyCode::Char('q')), &f), Action::Quit);
    assert_eq!(
        st.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), &f),
        Action::Quit
    );
}

#[test]
fn sparklines_scale_to_the_window_maximum() {
    assert_eq!(view::spark(&[], 5), "");
    assert_eq!(view::spark(&[0, 0], 5), "▁▁");
    assert_eq!(view::spark(&[0, 7, 14], 5), "▁▅█");
    // Only the last `width` values count, and so does their maximum.
    assert_eq!(view::spark(&[1000, 1, 2], 2), "▅█");
}

#[test]
fn history_keeps_the_last_frames_and_forgets_gone_queues() {
    let mut h = History::new(3);
    for d in 1..=5 {
        h.push(&frame(d));
    }
    assert_eq!(h.of("builds"), vec![3, 4, 5]);
    let mut only_idle = frame(0);
    only_idle.queues.retain(|q| q.queue == "idle");
    h.push(&only_idle);
    assert!(h.of("builds").is_empty());
    assert_eq!(h.of("idle"), vec![0, 0, 0]);
}

#[test]
fn the_plain_frame_keeps_its_columns() {
    let text = super::text::render(&frame(17));
    let header: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("QUEUE "))
        .unwrap()
        .split_whitespace()
        .collect();
    let line: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("builds "))
        .unwrap()
        .split_whitespace()
        .collect();
    let cell = |name: &str| line[header.iter().position(|c| *c == name).unwrap()];
    assert_eq!(cell("PENDING"), "17");
    assert_eq!(cell("OLDEST"), "42s");
    assert_eq!(cell("SUCCEEDED"), "1234");
    assert_eq!(cell("DLQ"), "4");
    let job = text.lines().find(|l| l.contains(JOB_A)).unwrap();
    assert!(job.ends_with("node-alpha"), "{job}");
    assert!(text.contains("builders"), "{text}");
    assert!(!text.contains('\x1b'));
}
