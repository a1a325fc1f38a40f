//! The terminal dashboard of `jetrun top`, drawn with ratatui: [`draw`] takes a [`Frame`]
//! (what was read), the depth [`History`] and the [`ViewState`] (focus, selection,
//! pause) and draws into any backend, so tests draw into ratatui's `TestBackend` and read
//! the cells back. [`ViewState::key`] turns key presses into state changes, and
//! [`ViewState::follow`] keeps each pane's selection on its item when a new frame comes.

use std::collections::{BTreeMap, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Cell, Clear, HighlightSpacing, Paragraph, Row, Sparkline, Table, TableState, Wrap,
};

use super::data::Frame;
use super::text::{age, opt, rate};

/// The panes, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    /// Queues.
    Queues,
    /// Running jobs.
    Jobs,
    /// Scalable services.
    Replicas,
    /// Recent failures and dead letters.
    Failures,
    /// Live nodes.
    Nodes,
}

impl Pane {
    const ALL: [Pane; 5] = [
        Pane::Queues,
        Pane::Jobs,
        Pane::Replicas,
        Pane::Failures,
        Pane::Nodes,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }

    fn next(self, step: isize) -> Pane {
        let n = Self::ALL.len() as isize;
        Self::ALL[(self.index() as isize + step).rem_euclid(n) as usize]
    }

    /// Rows the pane has in `f`.
    fn len(self, f: &Frame) -> usize {
        match self {
            Pane::Queues => f.queues.len(),
            Pane::Jobs => f.running_jobs.len(),
            Pane::Replicas => f.replicas.len(),
            Pane::Failures => f.failures.len() + f.recent_dead_letters.len(),
            Pane::Nodes => f.nodes.len(),
        }
    }

    /// What row `i` of the pane shows in `f`.
    fn item(self, f: &Frame, i: usize) -> Option<Item> {
        Some(match self {
            Pane::Queues => Item::Queue(f.queues.get(i)?.queue.clone()),
            Pane::Jobs => Item::Job(f.running_jobs.get(i)?.job_id.clone()),
            Pane::Replicas => Item::Service(f.replicas.get(i)?.service.clone()),
            Pane::Failures => match f.failures.get(i) {
                Some(x) => Item::Failure(x.job_id.clone()),
                None => Item::DeadLetter(f.recent_dead_letters.get(i - f.failures.len())?.seq),
            },
            Pane::Nodes => Item::Node(f.nodes.get(i)?.node_id.clone()),
        })
    }

    /// The row showing `item` in `f`.
    fn position(self, f: &Frame, item: &Item) -> Option<usize> {
        (0..self.len(f)).position(|i| self.item(f, i).as_ref() == Some(item))
    }
}

/// What a selected row stands for: rows move between frames (jobs start and finish,
/// failures arrive on top), so the selection is kept by identity, not by row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Queue(String),
    Job(String),
    Service(String),
    /// A failed or timed-out job.
    Failure(String),
    /// A dead letter, by its DLQ sequence.
    DeadLetter(u64),
    Node(String),
}

impl std::fmt::Display for Item {
    fn fmt(&self, o: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Queue(q) => write!(o, "queue {q}"),
            Item::Job(j) => write!(o, "job {j}"),
            Item::Service(s) => write!(o, "service {s}"),
            Item::Failure(j) => write!(o, "failure of job {j}"),
            Item::DeadLetter(seq) => write!(o, "dead letter #{seq}"),
            Item::Node(n) => write!(o, "node {n}"),
        }
    }
}

/// What a key asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Redraw.
    Redraw,
    /// Leave.
    Quit,
}

/// Focus, selection and pause.
#[derive(Debug, Clone)]
pub struct ViewState {
    /// The focused pane.
    pub pane: Pane,
    /// The selected row of each pane (by [`Pane`] order).
    pub selected: [usize; 5],
    /// Showing the selected row's details.
    pub detail: bool,
    /// Not reading new frames.
    pub paused: bool,
    /// The last read error, shown in the footer (the view keeps the last good frame).
    pub error: Option<String>,
    /// Why the selection moved by itself (its item left the focused pane), shown in the
    /// footer until the next key.
    pub notice: Option<String>,
}

impl Default for ViewState {
    fn default() -> Self {
        Self {
            pane: Pane::Queues,
            selected: [0; 5],
            detail: false,
            paused: false,
            error: None,
            notice: None,
        }
    }
}

impl ViewState {
    /// The focused pane's selected row, within `f`'s rows.
    pub fn selection(&self, pane: Pane, f: &Frame) -> Option<usize> {
        let n = pane.len(f);
        (n > 0).then(|| self.selected[pane.index()].min(n - 1))
    }

    /// Moves each pane's selection from its row in `old` to the row of the same item in
    /// `new`. An item `new` no longer has leaves the selection on the same row (the last
    /// one if the pane shrank); when that happens in the focused pane the footer says so,
    /// and open details close rather than show another item than the one opened.
    pub fn follow(&mut self, old: &Frame, new: &Frame) {
        for pane in Pane::ALL {
            let Some(item) = self.selection(pane, old).and_then(|i| pane.item(old, i)) else {
                continue;
            };
            let i = &mut self.selected[pane.index()];
            match pane.position(new, &item) {
                Some(at) => *i = at,
                None => {
                    *i = (*i).min(pane.len(new).saturating_sub(1));
                    if pane == self.pane {
                        self.notice = Some(format!("{item} is no longer listed"));
                        self.detail = false;
                    }
                }
            }
        }
    }

    /// Applies a key press.
    pub fn key(&mut self, k: KeyEvent, f: &Frame) -> Action {
        self.notice = None;
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            KeyCode::Char('c') if ctrl => return Action::Quit,
            KeyCode::Char('q') => return Action::Quit,
            // Esc closes the details first, then leaves.
            KeyCode::Esc if self.detail => self.detail = false,
            KeyCode::Esc => return Action::Quit,
            KeyCode::Tab => {
                self.pane = self.pane.next(1);
                self.detail = false;
            }
            KeyCode::BackTab => {
                self.pane = self.pane.next(-1);
                self.detail = false;
            }
            KeyCode::Down | KeyCode::Char('j') => self.step(1, f),
            KeyCode::Up | KeyCode::Char('k') => self.step(-1, f),
            KeyCode::Enter => self.detail = !self.detail && self.pane.len(f) > 0,
            KeyCode::Char('p') | KeyCode::Char(' ') => self.paused = !self.paused,
            _ => {}
        }
        Action::Redraw
    }

    fn step(&mut self, d: isize, f: &Frame) {
        let n = self.pane.len(f);
        let i = &mut self.selected[self.pane.index()];
        *i = if n == 0 {
            0
        } else {
            ((*i).min(n - 1) as isize + d).clamp(0, n as isize - 1) as usize
        };
    }
}

/// Depth (pending submissions) of each queue over the last frames.
#[derive(Debug, Clone)]
pub struct History {
    cap: usize,
    depth: BTreeMap<String, VecDeque<u64>>,
}

impl History {
    /// Keeps the last `cap` frames.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            depth: BTreeMap::new(),
        }
    }

    /// Adds a frame; queues it no longer has are forgotten.
    pub fn push(&mut self, f: &Frame) {
        self.depth.retain(|q, _| f.queues.iter().any(|r| &r.queue == q));
        for q in &f.queues {
            let h = self.depth.entry(q.queue.clone()).or_default();
            if h.len() == self.cap {
                h.pop_front();
            }
            h.push_back(q.pending);
        }
    }

    /// The depths of `queue`, oldest first.
    pub fn of(&self, queue: &str) -> Vec<u64> {
        self.depth
            .get(queue)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The last `width` of `values` as a one-line bar chart, scaled to their maximum.
pub fn spark(values: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let tail = &values[values.len().saturating_sub(width)..];
    let max = tail.iter().copied().max().unwrap_or(0);
    tail.iter()
        .map(|&v| {
            if max == 0 {
                BARS[0]
            } else {
                BARS[((v as u128 * 7).div_ceil(max as u128)) as usize]
            }
        })
        .collect()
}

fn header_style() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn block(title: String, focused: bool) -> Block<'static> {
    let b = Block::bordered().title(title);
    if focused {
        b.border_style(Style::default().fg(Color::Cyan).add_modifier(Modifier::BOLD))
    } else {
        b
    }
}

fn table<'a>(rows: Vec<Row<'a>>, widths: Vec<Constraint>, head: &[&'a str], b: Block<'a>) -> Table<'a> {
    Table::new(rows, widths)
        .header(Row::new(head.iter().map(|h| Cell::from(*h))).style(header_style()))
        .block(b)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ")
        // The column stays when nothing is selected, so columns do not move with focus.
        .highlight_spacing(HighlightSpacing::Always)
}

/// Draws the dashboard.
pub fn draw(out: &mut ratatui::Frame<'_>, f: &Frame, hist: &History, st: &ViewState) {
    let area = out.area();
    let queues_h = (f.queues.len() as u16 + 3).clamp(4, (area.height / 3).max(4));
    let side_h = (f.replicas.len() as u16 + 3).clamp(3, 8);
    let failures_h = ((f.failures.len() + f.recent_dead_letters.len()) as u16 + 3).clamp(4, 10);
    let [head, queues, depth, middle, failures, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(queues_h),
        Constraint::Length(4),
        Constraint::Min(5),
        Constraint::Length(failures_h),
        Constraint::Length(1),
    ])
    .areas(area);
    let [jobs, side] =
        Layout::horizontal([Constraint::Percentage(58), Constraint::Percentage(42)]).areas(middle);
    let [replicas, nodes] = Layout::vertical([Constraint::Length(side_h), Constraint::Min(3)]).areas(side);

    let running: u64 = f.queues.iter().map(|q| q.running).sum();
    let depth_total: u64 = f.queues.iter().map(|q| q.pending).sum();
    let mut title = vec![
        Span::styled("jetrun top", header_style()),
        Span::raw(format!(
            "  {}  queues {}  depth {}  running {}  nodes {}  dead letters {}",
            f.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            f.queues.len(),
            depth_total,
            running,
            f.nodes.len(),
            f.dead_letters
        )),
    ];
    if st.paused {
        title.push(Span::styled(
            "  PAUSED",
            Style::default().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ));
    }
    out.render_widget(Paragraph::new(Line::from(title)), head);

    draw_queues(out, queues, f, hist, st);
    draw_depth(out, depth, f, hist, st);
    draw_jobs(out, jobs, f, st);
    draw_replicas(out, replicas, f, st);
    draw_nodes(out, nodes, f, st);
    draw_failures(out, failures, f, st);

    let keys = "q quit  Tab/Shift-Tab pane  ↑↓/j k select  Enter details  p pause";
    let mut footer = Vec::new();
    if let Some(e) = &st.error {
        footer.push(Span::styled(
            format!("read failed: {e}  "),
            Style::default().fg(Color::Red),
        ));
    }
    if let Some(n) = &st.notice {
        footer.push(Span::styled(format!("{n}  "), Style::default().fg(Color::Yellow)));
    }
    footer.push(Span::raw(keys));
    let footer = Line::from(footer);
    out.render_widget(
        Paragraph::new(footer).style(Style::default().add_modifier(Modifier::DIM)),
        foot,
    );

    if st.detail
        && let Some(lines) = details(f, st)
    {
        let w = area.width.saturating_sub(4).min(90);
        let h = (lines.len() as u16 + 2).min(area.height.saturating_sub(2));
        let popup = Rect {
            x: area.x + (area.width.saturating_sub(w)) / 2,
            y: area.y + (area.height.saturating_sub(h)) / 2,
            width: w,
            height: h,
        };
        out.render_widget(Clear, popup);
        out.render_widget(
            Paragraph::new(lines.into_iter().map(Line::from).collect::<Vec<_>>())
                .wrap(Wrap { trim: false })
                .block(block(" Details (Enter or Esc to close) ".into(), true)),
            popup,
        );
    }
}

fn state_of(pane: Pane, f: &Frame, st: &ViewState) -> TableState {
    // Only the focused pane shows its selection.
    TableState::default().with_selected(if st.pane == pane {
        st.selection(pane, f)
    } else {
        None
    })
}

fn draw_queues(out: &mut ratatui::Frame<'_>, area: Rect, f: &Frame, hist: &History, st: &ViewState) {
    let name = f
        .queues
        .iter()
        .map(|q| q.queue.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(5, 32) as u16;
    let fixed = [7u16, 8, 7, 6, 6, 6, 6, 9, 6, 5];
    // The sparkline takes what is left (borders, the selection mark and one space
    // between columns aside), so it shows as many frames as fit.
    let used = 2 + 2 + name + fixed.iter().sum::<u16>() + fixed.len() as u16 + 1;
    let spark_width = area.width.saturating_sub(used).max(4);
    let mut widths = vec![Constraint::Length(name)];
    widths.extend(fixed.iter().map(|w| Constraint::Length(*w)));
    widths.push(Constraint::Min(spark_width));
    let rows: Vec<Row> = f
        .queues
        .iter()
        .map(|q| {
            let failed = q.finished("failed") + q.finished("timed_out");
            Row::new(vec![
                Cell::from(q.queue.clone()),
                Cell::from(q.pending.to_string()),
                Cell::from(q.ack_pending.to_string()),
                Cell::from(q.running.to_string()),
                Cell::from(age(q.oldest_age_seconds)),
                Cell::from(rate(q.finished_per_second)),
                Cell::from(age(q.queue_wait_p50_seconds)),
                Cell::from(age(q.queue_wait_p99_seconds)),
                Cell::from(q.finished("succeeded").to_string()),
                Cell::from(failed.to_string()).style(if failed > 0 {
                    Style::default().fg(Color::Red)
                } else {
                    Style::default()
                }),
                Cell::from(q.dead_letters.to_string()),
                Cell::from(spark(&hist.of(&q.queue), spark_width as usize))
                    .style(Style::default().fg(Color::Green)),
            ])
        })
        .collect();
    let head = [
        "QUEUE",
        "DEPTH",
        "INFLIGHT",
        "RUNNING",
        "OLDEST",
        "DONE/S",
        "WAIT50",
        "WAIT99",
        "SUCCEEDED",
        "FAILED",
        "DLQ",
        "DEPTH HISTORY",
    ];
    let t = table(
        rows,
        widths,
        &head,
        block(format!(" Queues ({}) ", f.queues.len()), st.pane == Pane::Queues),
    );
    out.render_stateful_widget(t, area, &mut state_of(Pane::Queues, f, st));
}

fn draw_depth(out: &mut ratatui::Frame<'_>, area: Rect, f: &Frame, hist: &History, st: &ViewState) {
    // The selected queue's depth over every frame kept (still shown while another pane
    // has focus).
    let Some(q) = f.queues.get(st.selection(Pane::Queues, f).unwrap_or(0)) else {
        out.render_widget(
            Paragraph::new("no queues yet").block(Block::bordered().title(" Depth ")),
            area,
        );
        return;
    };
    let data = hist.of(&q.queue);
    let width = area.width.saturating_sub(2) as usize;
    let shown = &data[data.len().saturating_sub(width)..];
    let max = shown.iter().copied().max().unwrap_or(0);
    let s = Sparkline::default()
        .block(Block::bordered().title(format!(
            " Depth of {} over the last {} frames (max {max}, now {}) ",
            q.queue,
            shown.len(),
            q.pending
        )))
        .data(shown)
        .style(Style::default().fg(Color::Green));
    out.render_widget(s, area);
}

fn draw_jobs(out: &mut ratatui::Frame<'_>, area: Rect, f: &Frame, st: &ViewState) {
    let rows: Vec<Row> = f
        .running_jobs
        .iter()
        .map(|j| {
            Row::new(vec![
                Cell::from(j.job_id.clone()),
                Cell::from(j.queue.clone()),
                Cell::from(j.tenant.clone().unwrap_or_else(|| "-".into())),
                Cell::from(age(Some(j.age_seconds))),
                Cell::from(j.attempt.to_string()),
                Cell::from(j.node_id.clone().unwrap_or_else(|| "-".into())),
            ])
        })
        .collect();
    let widths = vec![
        Constraint::Length(36),
        Constraint::Length(12),
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Length(3),
        Constraint::Min(10),
    ];
    let running: u64 = f.queues.iter().map(|q| q.running).sum();
    let title = if running as usize > f.running_jobs.len() {
        format!(" Running jobs ({} oldest of {running}) ", f.running_jobs.len())
    } else {
        format!(" Running jobs ({running}) ")
    };
    let t = table(
        rows,
        widths,
        &["JOB", "QUEUE", "TENANT", "AGE", "TRY", "NODE"],
        block(title, st.pane == Pane::Jobs),
    );
    out.render_stateful_widget(t, area, &mut state_of(Pane::Jobs, f, st));
}

fn draw_replicas(out: &mut ratatui::Frame<'_>, area: Rect, f: &Frame, st: &ViewState) {
    let rows: Vec<Row> = f
        .replicas
        .iter()
        .map(|r| {
            let off = r.desired.is_some() && r.desired != r.current;
            Row::new(vec![
                Cell::from(r.service.clone()),
                Cell::from(opt(r.desired)),
                Cell::from(opt(r.current)).style(if off {
                    Style::default().fg(Color::Yellow)
                } else {
                    Style::default()
                }),
                Cell::from(format!("{}-{}", r.min, r.max)),
                Cell::from(match (&r.backend_error, &r.reason) {
                    (Some(e), _) => format!("error: {e}"),
                    (None, Some(why)) => why.clone(),
                    (None, None) => "no decision yet".into(),
                }),
            ])
        })
        .collect();
    let widths = vec![
        Constraint::Length(14),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Min(8),
    ];
    let t = table(
        rows,
        widths,
        &["SERVICE", "DESIRED", "CURRENT", "BOUNDS", "REASON"],
        block(
            format!(" Replicas ({}) ", f.replicas.len()),
            st.pane == Pane::Replicas,
        ),
    );
    out.render_stateful_widget(t, area, &mut state_of(Pane::Replicas, f, st));
}

fn draw_nodes(out: &mut ratatui::Frame<'_>, area: Rect, f: &Frame, st: &ViewState) {
    let rows: Vec<Row> = f
        .nodes
        .iter()
        .map(|n| {
            Row::new(vec![
                Cell::from(n.node_id.clone()),
                Cell::from(n.runner.clone()),
                Cell::from(n.tasks.to_string()),
                Cell::from(age(Some(n.seen_seconds_ago))),
                Cell::from(n.queues.join(",")),
            ])
        })
        .collect();
    let widths = vec![
        Constraint::Min(14),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(12),
    ];
    let t = table(
        rows,
        widths,
        &["NODE", "RUNNER", "TASKS", "SEEN", "QUEUES"],
        block(format!(" Nodes ({}) ", f.nodes.len()), st.pane == Pane::Nodes),
    );
    out.render_stateful_widget(t, area, &mut state_of(Pane::Nodes, f, st));
}

fn draw_failures(out: &mut ratatui::Frame<'_>, area: Rect, f: &Frame, st: &ViewState) {
    let mut rows: Vec<Row> = f
        .failures
        .iter()
        .map(|x| {
            Row::new(vec![
                Cell::from(x.job_id.clone()),
                Cell::from(x.queue.clone()),
                Cell::from(x.status.clone()).style(Style::default().fg(Color::Red)),
                Cell::from(x.kind.clone().unwrap_or_else(|| "-".into())),
                Cell::from(x.message.clone().unwrap_or_default()),
            ])
        })
        .collect();
    rows.extend(f.recent_dead_letters.iter().map(|d| {
        Row::new(vec![
            Cell::from(format!("dead letter #{}", d.seq)),
            Cell::from(d.origin.clone()),
            Cell::from("dlq").style(Style::default().fg(Color::Magenta)),
            Cell::from(d.reason_kind.clone()),
            Cell::from(format!("{} ({})", d.reason, d.subject)),
        ])
    }));
    let widths = vec![
        Constraint::Length(36),
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Length(18),
        Constraint::Min(10),
    ];
    let t = table(
        rows,
        widths,
        &["JOB", "QUEUE", "STATUS", "KIND", "MESSAGE"],
        block(
            format!(
                " Recent failures ({}) and dead letters ({} stored) ",
                f.failures.len(),
                f.dead_letters
            ),
            st.pane == Pane::Failures,
        ),
    );
    out.render_stateful_widget(t, area, &mut state_of(Pane::Failures, f, st));
}

/// The selected row in full, for the focused pane.
fn details(f: &Frame, st: &ViewState) -> Option<Vec<String>> {
    let i = st.selection(st.pane, f)?;
    let ts = |t: Option<jetrun_core::Timestamp>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "-".into())
    };
    Some(match st.pane {
        Pane::Queues => {
            let q = f.queues.get(i)?;
            vec![
                format!("queue      {}", q.queue),
                format!(
                    "depth      {} pending, {} in flight, {} active, {} running",
                    q.pending, q.ack_pending, q.active, q.running
                ),
                format!("oldest     {}", age(q.oldest_age_seconds)),
                format!(
                    "wait       p50 {}  p99 {}  of {} started jobs",
                    age(q.queue_wait_p50_seconds),
                    age(q.queue_wait_p99_seconds),
                    q.queue_wait_sample
                ),
                format!(
                    "finished   {}",
                    q.finished
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                format!("dlq        {}", q.dead_letters),
            ]
        }
        Pane::Jobs => {
            let j = f.running_jobs.get(i)?;
            vec![
                format!("job        {}", j.job_id),
                format!("queue      {}", j.queue),
                format!("status     {} (attempt {})", j.status, j.attempt),
                format!("tenant     {}", j.tenant.as_deref().unwrap_or("-")),
                format!("node       {}", j.node_id.as_deref().unwrap_or("-")),
                format!("image      {}", j.image),
                format!(
                    "started    {} ({} ago)",
                    ts(j.started_at),
                    age(Some(j.age_seconds))
                ),
                format!("logs       jetrun jobs logs {} --follow", j.job_id),
            ]
        }
        Pane::Replicas => {
            let r = f.replicas.get(i)?;
            vec![
                format!("service    {}", r.service),
                format!("queue      {}", r.queue),
                format!("bounds     {}..{}", r.min, r.max),
                format!("desired    {}  current {}", opt(r.desired), opt(r.current)),
                format!("burst      {}", opt(r.burst)),
                format!("reason     {}", r.reason.as_deref().unwrap_or("no decision yet")),
                format!("error      {}", r.backend_error.as_deref().unwrap_or("-")),
                format!("decided    {} ago", age(r.updated_seconds_ago)),
            ]
        }
        Pane::Failures => match f.failures.get(i) {
            Some(x) => vec![
                format!("job        {}", x.job_id),
                format!("queue      {}", x.queue),
                format!("status     {}", x.status),
                format!("kind       {}", x.kind.as_deref().unwrap_or("-")),
                format!("message    {}", x.message.as_deref().unwrap_or("")),
                format!("at         {}", ts(x.at)),
            ],
            None => {
                let d = f.recent_dead_letters.get(i - f.failures.len())?;
                vec![
                    format!("dead letter #{} (jetrun dlq show {})", d.seq, d.seq),
                    format!("origin     {}", d.origin),
                    format!("reason     {}: {}", d.reason_kind, d.reason),
                    format!("subject    {}", d.subject),
                    format!("job        {}", d.job_id.as_deref().unwrap_or("-")),
                    format!("at         {}", ts(Some(d.at))),
                ]
            }
        },
        Pane::Nodes => {
            let n = f.nodes.get(i)?;
            let jobs: Vec<&str> = f
                .running_jobs
                .iter()
                .filter(|j| j.node_id.as_deref() == Some(n.node_id.as_str()))
                .map(|j| j.job_id.as_str())
                .collect();
            vec![
                format!("node       {}", n.node_id),
                format!("runner     {}", n.runner),
                format!("tasks      {}", n.tasks),
                format!("queues     {}", n.queues.join(",")),
                format!("seen       {} ago", age(Some(n.seen_seconds_ago))),
                format!(
                    "running    {}",
                    if jobs.is_empty() {
                        "-".into()
                    } else {
                        jobs.join(" ")
                    }
                ),
            ]
        }
    })
}
