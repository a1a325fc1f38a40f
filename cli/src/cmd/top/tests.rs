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

const JOB_C: &str = "01990000-0000-7000-8000-00000000000c";

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

/// A running job of `builds` on `node-alpha`, started `age_seconds` ago.
fn running(id: &str, age_seconds: f64) -> RunningJob {
    let mut j = frame(0).running_jobs[0].clone();
    j.job_id = id.into();
    j.age_seconds = age_seconds;
    j
}

/// The ids of the rows marked as selected (`> `) on screen.
fn marked(rows: &[String], ids: &[&str]) -> Vec<String> {
    ids.iter()
        .filter(|id| rows.iter().any(|r| r.contains(&format!("> {id}"))))
        .map(|id| id.to_string())
        .collect()
}

#[test]
fn the_selected_job_stays_selected_when_an_older_job_is_listed_before_it() {
    let old = frame(1);
    let hist = History::new(10);
    let mut st = ViewState::default();
    st.key(key(KeyCode::Tab), &old);
    st.key(key(KeyCode::Char('j')), &old);
    assert_eq!(st.selection(Pane::Jobs, &old), Some(1));
    let ids = [JOB_A, JOB_B, JOB_C];
    assert_eq!(marked(&screen(&old, &hist, &st), &ids), [JOB_B]);

    // A job older than both (a retry's earlier start, a clock behind) now comes first:
    // the row index of JOB_B changes from 1 to 2.
    let mut new = frame(1);
    new.running_jobs.insert(0, running(JOB_C, 900.0));
    st.follow(&old, &new);
    assert_eq!(st.selection(Pane::Jobs, &new), Some(2));
    let rows = screen(&new, &hist, &st);
    assert_eq!(marked(&rows, &ids), [JOB_B], "{}", rows.join("\n"));
    assert_eq!(st.notice, None);

    // Enter opens the job that is highlighted.
    st.key(key(KeyCode::Enter), &new);
    let all = screen(&new, &hist, &st).join("\n");
    assert!(all.contains(&format!("job        {JOB_B}")), "{all}");
    assert!(all.contains("node       node-beta"), "{all}");

    // Open details follow their job too.
    let mut newer = new.clone();
    newer.running_jobs.remove(0);
    st.follow(&new, &newer);
    assert!(st.detail);
    let all = screen(&newer, &hist, &st).join("\n");
    assert!(all.contains(&format!("job        {JOB_B}")), "{all}");
}

#[test]
fn when_the_selected_job_finishes_the_row_in_its_place_is_selected_and_the_footer_says_so() {
    let hist = History::new(10);
    let ids = [JOB_A, JOB_B, JOB_C];
    let mut old = frame(1);
    old.running_jobs.push(running(JOB_C, 1.0));
    let mut st = ViewState::default();
    st.key(key(KeyCode::Tab), &old);
    st.key(key(KeyCode::Down), &old);
    assert_eq!(marked(&screen(&old, &hist, &st), &ids), [JOB_B]);

    // JOB_B (the middle row) finishes: the same row, now JOB_C, is selected.
    let mut new = old.clone();
    new.running_jobs.retain(|j| j.job_id != JOB_B);
    st.follow(&old, &new);
    assert_eq!(st.selection(Pane::Jobs, &new), Some(1));
    let rows = screen(&new, &hist, &st);
    assert_eq!(marked(&rows, &ids), [JOB_C], "{}", rows.join("\n"));
    let footer = rows.last().unwrap();
    assert!(
        footer.contains(&format!("job {JOB_B} is no longer listed")),
        "{footer}"
    );
    // The next key clears the notice.
    st.key(key(KeyCode::Char('k')), &new);
    assert_eq!(st.notice, None);
    assert!(
        !screen(&new, &hist, &st)
            .last()
            .unwrap()
            .contains("no longer listed")
    );
    assert_eq!(st.selection(Pane::Jobs, &new), Some(0));

    // The last row finishes while its details are open: the selection clamps to the new
    // last row and the details close instead of showing another job.
    st.key(key(KeyCode::Down), &new);
    st.key(key(KeyCode::Enter), &new);
    assert!(st.detail);
    let mut last = new.clone();
    last.running_jobs.retain(|j| j.job_id != JOB_C);
    st.follow(&new, &last);
    assert_eq!(st.selection(Pane::Jobs, &last), Some(0));
    assert!(!st.detail);
    let rows = screen(&last, &hist, &st);
    assert!(!rows.join("\n").contains("Details"));
    assert_eq!(marked(&rows, &ids), [JOB_A]);
    assert!(
        rows.last()
            .unwrap()
            .contains(&format!("job {JOB_C} is no longer listed"))
    );

    // Nothing left: no selection, and Enter opens nothing.
    let mut none = last.clone();
    none.running_jobs.clear();
    st.follow(&last, &none);
    assert_eq!(st.selection(Pane::Jobs, &none), None);
    st.key(key(KeyCode::Enter), &none);
    assert!(!st.detail);
}

#[test]
fn a_selected_dead_letter_stays_selected_when_new_failures_arrive_on_top() {
    const NEWER: &str = "01990000-0000-7000-8000-0000000000fe";
    let hist = History::new(10);
    let old = frame(1);
    let mut st = ViewState::default();
    st.key(key(KeyCode::BackTab), &old);
    st.key(key(KeyCode::BackTab), &old);
    assert_eq!(st.pane, Pane::Failures);
    st.key(key(KeyCode::Char('j')), &old);
    assert!(row(&screen(&old, &hist, &st), "dead letter #77").contains("> "));

    // A newer failure comes first and a newer dead letter before #77.
    let mut new = frame(1);
    let mut x = new.failures[0].clone();
    x.job_id = NEWER.into();
    new.failures.insert(0, x);
    let mut d = new.recent_dead_letters[0].clone();
    d.seq = 78;
    new.recent_dead_letters.insert(0, d);
    st.follow(&old, &new);
    assert_eq!(st.selection(Pane::Failures, &new), Some(3));
    let rows = screen(&new, &hist, &st);
    assert!(
        row(&rows, "dead letter #77").contains("> "),
        "{}",
        rows.join("\n")
    );
    assert!(!row(&rows, "dead letter #78").contains("> "));
    assert_eq!(marked(&rows, &[NEWER, FAILED]), Vec::<String>::new());
    st.key(key(KeyCode::Enter), &new);
    let all = screen(&new, &hist, &st).join("\n");
    assert!(all.contains("dead letter #77 (jetrun dlq show 77)"), "{all}");

    // The failure row is followed by its job id, from below a dead letter's rows too.
    st.key(key(KeyCode::Esc), &new);
    st.key(key(KeyCode::Up), &new);
    st.key(key(KeyCode::Up), &new);
    assert_eq!(marked(&screen(&new, &hist, &st), &[NEWER, FAILED]), [FAILED]);
    let mut newest = new.clone();
    newest.failures.remove(0);
    st.follow(&new, &newest);
    assert_eq!(st.selection(Pane::Failures, &newest), Some(0));
    assert_eq!(marked(&screen(&newest, &hist, &st), &[NEWER, FAILED]), [FAILED]);
}

#[test]
fn queues_and_nodes_are_followed_by_name_in_every_pane_not_only_the_focused_one() {
    let hist = History::new(10);
    let old = frame(1);
    let mut st = ViewState::default();
    // The `idle` queue (row 1), then node-beta (row 1), then JOB_B (row 1), and focus
    // back on the queues.
    st.key(key(KeyCode::Down), &old);
    st.key(key(KeyCode::BackTab), &old);
    st.key(key(KeyCode::Down), &old);
    st.key(key(KeyCode::Tab), &old);
    st.key(key(KeyCode::Tab), &old);
    st.key(key(KeyCode::Down), &old);
    st.key(key(KeyCode::BackTab), &old);
    assert_eq!(st.pane, Pane::Queues);
    let all = screen(&old, &hist, &st).join("\n");
    assert!(all.contains("Depth of idle"), "{all}");

    // A queue and a node that sort first, and an older job.
    let mut new = frame(1);
    let mut q = new.queues[1].clone();
    q.queue = "alpha".into();
    new.queues.insert(0, q);
    let mut n = new.nodes[0].clone();
    n.node_id = "node-aaa".into();
    new.nodes.insert(0, n);
    new.running_jobs.insert(0, running(JOB_C, 900.0));
    st.follow(&old, &new);
    assert_eq!(st.selection(Pane::Queues, &new), Some(2));
    assert_eq!(st.selection(Pane::Nodes, &new), Some(2));
    assert_eq!(st.selection(Pane::Jobs, &new), Some(2));
    let rows = screen(&new, &hist, &st);
    assert!(rows.iter().any(|r| r.contains("> idle")), "{}", rows.join("\n"));
    assert!(rows.join("\n").contains("Depth of idle"));
    // The depth pane keeps showing the selected queue while another pane has focus.
    st.key(key(KeyCode::BackTab), &new);
    let rows = screen(&new, &hist, &st);
    assert!(rows.join("\n").contains("Depth of idle"));
    assert!(
        rows.iter().any(|r| r.contains("> node-beta")),
        "{}",
        rows.join("\n")
    );
    st.key(key(KeyCode::Enter), &new);
    let all = screen(&new, &hist, &st).join("\n");
    assert!(all.contains("node       node-beta"), "{all}");
    assert!(all.contains(&format!("running    {JOB_B}")), "{all}");
    st.key(key(KeyCode::Esc), &new);
    st.key(key(KeyCode::Tab), &new);
    st.key(key(KeyCode::Tab), &new);
    assert_eq!(marked(&screen(&new, &hist, &st), &[JOB_A, JOB_B, JOB_C]), [JOB_B]);

    // A selected item leaving a pane without focus moves its selection silently.
    let mut gone = new.clone();
    gone.nodes.retain(|n| n.node_id != "node-beta");
    st.follow(&new, &gone);
    assert_eq!(st.selection(Pane::Nodes, &gone), Some(1));
    assert_eq!(st.notice, None);
}
