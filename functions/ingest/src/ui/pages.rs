//! The console's HTML, rendered on the server. Every value that comes from a job, a
//! record, a node or a spec is escaped with [`esc`]; nothing here runs a script inline
//! (the Content-Security-Policy forbids it): behaviour lives in `assets/console.js`.

use std::fmt::Write as _;

use jetrun_core::{JobRecord, JobStatus, Timestamp};

use super::data::{JobList, Node, QueueRow, Service};
use crate::auth::OPERATOR_TENANT;
use crate::sse::Change;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
pub fn urlenc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Queues.
    Queues,
    /// Jobs.
    Jobs,
    /// Dead letters.
    DeadLetters,
    /// Scale.
    Scale,
    /// Nodes.
    Nodes,
    /// Sign-in and error pages.
    None,
}

/// The signed-in person, as the layout shows them.
#[derive(Debug, Clone)]
pub struct Viewer<'a> {
    /// Tenant (`*`: operator).
    pub tenant: &'a str,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: &'a str,
}

fn is_operator(v: &Viewer<'_>) -> bool {
    v.tenant == OPERATOR_TENANT
}

/// A time as `2026-12-01 20:36:41Z`.
pub fn time(t: &Timestamp) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// How long ago, as `3m 12s`.
pub fn age(t: &Timestamp) -> String {
    let secs = (jetrun_core::now() - *t).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A status badge.
pub fn badge(s: JobStatus) -> String {
    let s = s.as_str();
    format!(r#"<span class="status status-{s}" data-status="{s}">{s}</span>"#)
}

/// A hidden CSRF field.
pub fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// The whole document around `body`.
pub fn layout(viewer: Option<&Viewer<'_>>, nav: Nav, title: &str, body: &str) -> String {
    let mut h = String::with_capacity(body.len() + 2048);
    let _ = write!(
        h,
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · jetrun</title>
<link rel="stylesheet" href="/ui/assets/console.css">
<script src="/ui/assets/console.js" defer></script>
</head><body>
<a class="skip" href="#main">Skip to content</a>
<header class="top"><a class="brand" href="/ui">jetrun</a>"##,
        title = esc(title)
    );
    if let Some(v) = viewer {
        h.push_str(r#"<nav aria-label="Main"><ul>"#);
        let mut item = |n: Nav, href: &str, label: &str| {
            let cur = if n == nav { r#" aria-current="page""# } else { "" };
            let _ = write!(h, r#"<li><a href="{href}"{cur}>{label}</a></li>"#);
        };
        item(Nav::Queues, "/ui/queues", "Queues");
        item(Nav::Jobs, "/ui/jobs", "Jobs");
        if is_operator(v) {
            item(Nav::DeadLetters, "/ui/dlq", "Dead letters");
        }
        item(Nav::Scale, "/ui/scale", "Scale");
        item(Nav::Nodes, "/ui/nodes", "Nodes");
        h.push_str("</ul></nav>");
        let who = if is_operator(v) {
            "operator".to_string()
        } else {
            format!("tenant {}", esc(v.tenant))
        };
        let _ = write!(
            h,
            r#"<div class="who"><span id="who">{who}</span> <span id="live-state" class="live-state" aria-live="polite"></span>
<form method="post" action="/ui/logout" class="inline">{}<button type="submit">Sign out</button></form></div>"#,
            csrf_field(v.csrf)
        );
    }
    let _ = write!(
        h,
        r#"</header>
<main id="main" tabindex="-1"><h1>{}</h1>
{body}
</main></body></html>"#,
        esc(title)
    );
    h
}

/// The live region: re-rendered by the script when the stream at `src` says something
/// changed (`X-Jetrun-Partial: live` answers only its inside).
pub fn live_region(src: &str, inner: &str) -> String {
    format!(r#"<div id="live" data-live-src="{}">{inner}</div>"#, esc(src))
}

/// A notice line (from a `?notice=` code after a form).
pub fn notice(code: Option<&str>) -> String {
    let text = match code {
        Some("cancel-requested") => "Cancel requested.",
        Some("replayed") => "Dead letter replayed to its original subject.",
        Some("scale-requested") => "Scale request accepted; the autoscaler applies it.",
        _ => return String::new(),
    };
    format!(r#"<p class="notice" role="status">{text}</p>"#)
}

/// The sign-in page.
pub fn login(csrf: &str, error: Option<&str>, open_dev: bool) -> String {
    let err = error
        .map(|e| format!(r#"<p class="error" role="alert" id="login-error">{}</p>"#, esc(e)))
        .unwrap_or_default();
    let dev = if open_dev {
        r#"<p class="warn">INSECURE DEV MODE: no API tokens are configured, any token signs in as an operator.</p>"#
    } else {
        ""
    };
    let body = format!(
        r#"{dev}{err}<form method="post" action="/ui/login" class="card login">
{}
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<p class="hint">The same bearer token as for the HTTP API (<code>JETRUN_API_TOKENS</code>). It stays on the server: the browser keeps only a session cookie.</p>
<button type="submit" id="sign-in">Sign in</button>
</form>"#,
        csrf_field(csrf)
    );
    layout(None, Nav::None, "Sign in", &body)
}

/// An error page's body.
pub fn error_body(message: &str) -> String {
    format!(
        r#"<p class="error" role="alert" id="error">{}</p><p><a href="/ui">Back to the console</a></p>"#,
        esc(message)
    )
}

/// The queues table; `rates` (submitted/s and finished/s over the last minute) is
/// `None` while the last minute is still being read.
pub fn queues(
    rows: &[QueueRow],
    rates: Option<&std::collections::HashMap<String, super::rates::Rate>>,
) -> String {
    if rows.is_empty() {
        return r#"<p class="empty">No jobs yet.</p>"#.into();
    }
    let mut h = String::from(
        r#"<div class="table-wrap"><table id="queues"><caption>Per queue: depth (waiting for a worker), running, rates over the last minute, and totals</caption>
<thead><tr><th scope="col">Queue</th><th scope="col" class="num">Depth</th><th scope="col">Oldest queued</th><th scope="col" class="num">Running</th><th scope="col" class="num">Submitted/s</th><th scope="col" class="num">Finished/s</th><th scope="col" class="num">Succeeded</th><th scope="col" class="num">Failed</th><th scope="col" class="num">Cancelled</th></tr></thead><tbody>"#,
    );
    for r in rows {
        let q = esc(&r.queue);
        let oldest = r
            .oldest_queued
            .as_ref()
            .map(|t| format!(r#"<time datetime="{}">{}</time>"#, t.to_rfc3339(), age(t)))
            .unwrap_or_else(|| "—".into());
        let (sub, fin) = match rates {
            None => ("—".to_string(), "—".to_string()),
            Some(m) => {
                let rate = m.get(&r.queue).copied().unwrap_or_default();
                (
                    format!(
                        r#"<span title="{} in the last minute">{:.2}</span>"#,
                        rate.submitted,
                        rate.submitted_per_s()
                    ),
                    format!(
                        r#"<span title="{} in the last minute">{:.2}</span>"#,
                        rate.finished,
                        rate.finished_per_s()
                    ),
                )
            }
        };
        let _ = write!(
            h,
            r#"<tr data-queue="{q}"><th scope="row"><a href="/ui/jobs?queue={qe}">{q}</a></th><td class="num depth">{}</td><td>{oldest}</td><td class="num">{}</td><td class="num submitted-rate">{sub}</td><td class="num finished-rate">{fin}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            r.pending,
            r.running,
            r.succeeded,
            r.failed,
            r.cancelled,
            qe = urlenc(&r.queue),
        );
    }
    h.push_str("</tbody></table></div>");
    h
}

/// The filter form of the jobs list.
pub fn job_filters(
    queues: &[String],
    queue: Option<&str>,
    status: Option<JobStatus>,
    limit: usize,
) -> String {
    let mut h = String::from(
        r#"<form method="get" action="/ui/jobs" class="filters" role="search"><label for="f-queue">Queue</label><select id="f-queue" name="queue"><option value="">every queue</option>"#,
    );
    for q in queues {
        let sel = if Some(q.as_str()) == queue {
            " selected"
        } else {
            ""
        };
        let _ = write!(h, r#"<option value="{0}"{sel}>{0}</option>"#, esc(q));
    }
    h.push_str(r#"</select><label for="f-status">Status</label><select id="f-status" name="status"><option value="">any status</option>"#);
    for s in JobStatus::ALL {
        let sel = if Some(s) == status { " selected" } else { "" };
        let _ = write!(h, r#"<option value="{0}"{sel}>{0}</option>"#, s.as_str());
    }
    let _ = write!(
        h,
        r#"</select><label for="f-limit">Show</label><input id="f-limit" name="limit" type="number" min="1" max="500" value="{limit}"><button type="submit">Filter</button></form>"#
    );
    h
}

/// The jobs table.
pub fn jobs(list: &JobList, tenant: &str) -> String {
    if list.jobs.is_empty() {
        return r#"<p class="empty" id="no-jobs">No jobs match.</p>"#.into();
    }
    let mut h = String::from(
        r#"<div class="table-wrap"><table id="jobs"><caption>Newest first</caption><thead><tr><th scope="col">Job</th><th scope="col">Queue</th><th scope="col">Status</th><th scope="col" class="num">Attempt</th><th scope="col">Image</th><th scope="col">Created</th><th scope="col">Updated</th><th scope="col" class="num">Exit</th></tr></thead><tbody>"#,
    );
    for r in &list.jobs {
        let id = esc(&r.id);
        let _ = write!(
            h,
            r#"<tr data-job="{id}"><th scope="row"><a href="/ui/jobs/{id}"><code>{id}</code></a></th><td>{}</td><td>{}</td><td class="num">{}/{}</td><td><code>{}</code></td><td><time datetime="{}">{}</time></td><td>{} ago</td><td class="num">{}</td></tr>"#,
            esc(&r.queue),
            badge(r.status),
            r.attempt,
            r.max_attempts,
            esc(&r.spec.image),
            r.created_at.to_rfc3339(),
            time(&r.created_at),
            age(&r.updated_at),
            r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        );
    }
    h.push_str("</tbody></table></div>");
    if list.truncated {
        let note = if tenant == OPERATOR_TENANT {
            "More jobs match: raise the number shown or narrow the filter."
        } else {
            "Showing your jobs among the newest 500 that match; narrow the filter to see older ones."
        };
        let _ = write!(h, r#"<p class="hint">{note}</p>"#);
    }
    h
}

/// The live part of a job's page: status, result, attempts, transitions, cancel.
pub fn job_detail(rec: &JobRecord, history: &[Change], csrf: &str) -> String {
    let id = esc(&rec.id);
    let terminal = if rec.status.is_terminal() {
        r#" data-terminal="true""#
    } else {
        ""
    };
    let trace = rec
        .traceparent
        .as_deref()
        .and_then(jetrun_core::envelope::trace_id_of)
        .map(|t| format!("<code id=\"trace-id\">{}</code>", esc(t)))
        .unwrap_or_else(|| "—".into());
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<section aria-labelledby="h-summary"{terminal} id="summary"><h2 id="h-summary">Summary</h2><dl class="facts">
<dt>Status</dt><dd id="job-status" data-status="{st}">{badge}</dd>
<dt>Queue</dt><dd>{queue}</dd>
<dt>Attempt</dt><dd>{attempt} of {max}</dd>
<dt>Image</dt><dd><code>{image}</code></dd>
<dt>Command</dt><dd><code>{cmd}</code></dd>
<dt>Tenant</dt><dd>{tenant}</dd>
<dt>Node</dt><dd>{node}</dd>
<dt>Trace id</dt><dd>{trace}</dd>
<dt>Created</dt><dd>{created}</dd>
<dt>Finished</dt><dd>{finished}</dd>
</dl>"#,
        st = rec.status.as_str(),
        badge = badge(rec.status),
        queue = esc(&rec.queue),
        attempt = rec.attempt,
        max = rec.max_attempts,
        image = esc(&rec.spec.image),
        cmd = esc(&rec.spec.command.join(" ")),
        tenant = esc(rec.spec.tenant.as_deref().unwrap_or("—")),
        node = esc(rec.node_id.as_deref().unwrap_or("—")),
        created = time(&rec.created_at),
        finished = rec.finished_at.as_ref().map(time).unwrap_or_else(|| "—".into()),
    );
    if rec.status.is_terminal() {
        let _ = write!(
            h,
            r#"<h3>Result</h3><p id="result">{}{}</p>"#,
            rec.exit_code
                .map(|c| format!("exit code <strong id=\"exit-code\">{c}</strong>. "))
                .unwrap_or_default(),
            rec.error
                .as_ref()
                .map(|e| format!("{}: {}", esc(&e.kind), esc(&e.message)))
                .unwrap_or_default()
        );
    }
    if !rec.status.is_terminal() {
        let label = if rec.cancel_requested {
            "Cancel again"
        } else {
            "Cancel job"
        };
        let _ = write!(
            h,
            r#"<form method="post" action="/ui/jobs/{id}/cancel" class="inline" data-confirm="Cancel job {id}?">{}<button type="submit" id="cancel" class="danger">{label}</button></form>"#,
            csrf_field(csrf)
        );
        if rec.cancel_requested {
            h.push_str(r#" <span class="hint">A cancel was requested; the node stops the task.</span>"#);
        }
    }
    h.push_str("</section>");
    // Attempts and transitions from the events stream.
    h.push_str(r#"<section aria-labelledby="h-history"><h2 id="h-history">Attempts and transitions</h2>"#);
    if history.is_empty() {
        h.push_str(r#"<p class="empty">No retained state changes.</p>"#);
    } else {
        h.push_str(r#"<div class="table-wrap"><table id="history"><thead><tr><th scope="col" class="num">Event</th><th scope="col" class="num">Attempt</th><th scope="col">From</th><th scope="col">To</th><th scope="col">At</th><th scope="col" class="num">Exit</th><th scope="col">Error</th></tr></thead><tbody>"#);
        for c in history {
            let ch = &c.change;
            let _ = write!(
                h,
                r#"<tr><td class="num">{}</td><td class="num">{}</td><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td>{}</td></tr>"#,
                c.seq,
                ch.attempt,
                ch.from.map(badge).unwrap_or_else(|| "—".into()),
                badge(ch.to),
                time(&ch.at),
                ch.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                ch.error
                    .as_ref()
                    .map(|e| format!("{}: {}", esc(&e.kind), esc(&e.message)))
                    .unwrap_or_default()
            );
        }
        h.push_str("</tbody></table></div>");
    }
    h.push_str("</section>");
    let record = serde_json::to_string_pretty(rec).unwrap_or_default();
    let _ = write!(
        h,
        r#"<details><summary>Record (JSON)</summary><pre id="record">{}</pre></details>"#,
        esc(&record)
    );
    h
}

/// The log section of a job's page (outside the live region: the script follows it).
pub fn job_log(rec: &JobRecord, text: &str) -> String {
    let id = esc(&rec.id);
    let follow = if rec.status.is_terminal() { "false" } else { "true" };
    format!(
        r#"<section aria-labelledby="h-log"><h2 id="h-log">Log</h2><p><a href="/ui/jobs/{id}/log" id="log-link">Open the log as text</a></p><pre id="log" class="log" tabindex="0" data-log-src="/ui/jobs/{id}/log" data-follow="{follow}">{}</pre></section>"#,
        esc(text)
    )
}

/// The dead letters table.
pub fn dead_letters(items: &[jetrun_nats::dlq::Stored], csrf: &str) -> String {
    if items.is_empty() {
        return r#"<p class="empty" id="no-dlq">No dead letters.</p>"#.into();
    }
    let mut h = String::from(
        r#"<div class="table-wrap"><table id="dlq"><thead><tr><th scope="col" class="num">Seq</th><th scope="col">Origin</th><th scope="col">Reason</th><th scope="col">Subject</th><th scope="col">Job</th><th scope="col">Failed</th><th scope="col" class="num">Deliveries</th><th scope="col">Action</th></tr></thead><tbody>"#,
    );
    for s in items {
        let e = &s.entry;
        let job = e
            .job_id
            .as_deref()
            .map(|j| format!(r#"<a href="/ui/jobs/{0}"><code>{0}</code></a>"#, esc(j)))
            .unwrap_or_default();
        let _ = write!(
            h,
            r#"<tr data-seq="{seq}"><td class="num">{seq}</td><td>{}</td><td><strong>{}</strong><br><span class="reason">{}</span></td><td><code>{}</code></td><td>{job}</td><td>{}</td><td class="num">{}</td><td><form method="post" action="/ui/dlq/{seq}/replay" class="inline" data-confirm="Replay dead letter {seq}?">{}<button type="submit">Replay</button></form></td></tr>"#,
            esc(&e.origin),
            esc(&e.reason_kind),
            esc(&e.reason),
            esc(&e.subject),
            time(&e.failed_at),
            e.deliveries,
            csrf_field(csrf),
            seq = s.seq,
        );
    }
    h.push_str("</tbody></table></div>");
    h
}

/// The scale page.
pub fn scale(services: &[Service], viewer: &Viewer<'_>) -> String {
    if services.is_empty() {
        return r#"<p class="empty">No service has a scale spec (<code>jetrun scale set</code> stores one).</p>"#.into();
    }
    let operator = is_operator(viewer);
    let mut h = String::new();
    if !operator {
        h.push_str(r#"<p class="hint" id="operators-only">Scale changes need an operator token; you can read the specs and decisions.</p>"#);
    }
    for s in services {
        let name = esc(&s.name);
        let _ = write!(
            h,
            r#"<section class="card service" id="svc-{name}" aria-labelledby="h-svc-{name}"><h2 id="h-svc-{name}">{name}</h2>"#
        );
        if let Some(e) = &s.spec_error {
            let _ = write!(h, r#"<p class="error">Its spec cannot be read: {}</p>"#, esc(e));
        }
        let st = s.state.as_ref();
        let burst = s
            .burst
            .as_ref()
            .filter(|b| b.until > jetrun_core::now())
            .or(st.and_then(|x| x.burst.as_ref()));
        let _ = write!(
            h,
            r#"<dl class="facts"><dt>Desired / current</dt><dd class="desired">{} / {}</dd><dt>Burst</dt><dd>{}</dd><dt>Last decision</dt><dd class="reason">{}</dd>"#,
            st.map(|x| x.desired.to_string()).unwrap_or_else(|| "—".into()),
            st.map(|x| x.current.to_string()).unwrap_or_else(|| "—".into()),
            burst
                .map(|b| format!("at least {} until {}", b.replicas, time(&b.until)))
                .unwrap_or_else(|| "none".into()),
            st.map(|x| format!(
                "{} ({} ago, by {})",
                esc(&x.reason),
                age(&x.changed_at),
                esc(&x.decided_by)
            ))
            .unwrap_or_else(|| "no decision yet".into()),
        );
        if let Some(sp) = &s.spec {
            let _ = write!(
                h,
                r#"<dt>Spec</dt><dd>queue <code>{}</code>, {}–{} replicas, {} jobs per replica, strategy {:?}, backend {:?}{}</dd>"#,
                esc(&sp.queue),
                sp.min,
                sp.max,
                sp.target_per_replica,
                sp.strategy,
                sp.backend,
                if sp.port_bound { ", port-bound" } else { "" }
            );
        }
        h.push_str("</dl>");
        match &s.spec {
            Some(sp) if !sp.scalable => {
                let why = if sp.port_bound {
                    " Its replicas bind fixed ports, so only the infrastructure that owns them can add or remove one."
                } else {
                    ""
                };
                let _ = write!(
                    h,
                    r#"<p class="note" id="note-{name}" role="note">Not scalable by jetrun: scaling of {name} is done by its infrastructure. Its spec says <code>scalable: false</code>, so jetrun never changes its replicas and refuses scale requests for it (409 not-scalable).{why}</p>"#
                );
            }
            Some(sp) if operator => {
                let csrf = csrf_field(viewer.csrf);
                let _ = write!(
                    h,
                    r#"<div class="controls" id="controls-{name}">
<form method="post" action="/ui/scale/{name}" class="control">{csrf}<input type="hidden" name="action" value="burst"><fieldset><legend>Burst</legend><label>Replicas <input name="replicas" type="number" min="1" max="{max}" value="{max}" required></label><label>For seconds <input name="for_seconds" type="number" min="1" value="1800" required></label><button type="submit">Burst</button></fieldset></form>
<form method="post" action="/ui/scale/{name}" class="control">{csrf}<input type="hidden" name="action" value="set"><fieldset><legend>Set bounds</legend><label>Min <input name="min" type="number" min="0" value="{min}" required></label><label>Max <input name="max" type="number" min="1" value="{max}" required></label><label>Jobs per replica <input name="target_per_replica" type="number" min="1" value="{tpr}" required></label><button type="submit">Set</button></fieldset></form>
<form method="post" action="/ui/scale/{name}" class="control">{csrf}<input type="hidden" name="action" value="reset"><button type="submit">Reset (drop bursts)</button></form>
</div>"#,
                    min = sp.min,
                    max = sp.max,
                    tpr = sp.target_per_replica,
                );
            }
            _ => {}
        }
        h.push_str("</section>");
    }
    h
}

/// The nodes table.
pub fn nodes(nodes: &[Node], operator: bool) -> String {
    if nodes.is_empty() {
        return r#"<p class="empty" id="no-nodes">No node is alive (no worker runs).</p>"#.into();
    }
    let mut h = String::from(
        r#"<div class="table-wrap"><table id="nodes"><thead><tr><th scope="col">Node</th><th scope="col">Runner</th><th scope="col" class="num">Tasks</th><th scope="col">Queues</th><th scope="col">Seen</th><th scope="col">Worker</th>"#,
    );
    if operator {
        h.push_str(r#"<th scope="col">Running</th>"#);
    }
    h.push_str("</tr></thead><tbody>");
    for n in nodes {
        let _ = write!(
            h,
            r#"<tr><th scope="row">{}</th><td>{}</td><td class="num">{}</td><td>{}</td><td>{}</td><td><code>{}</code></td>"#,
            esc(&n.node_id),
            esc(&n.runner),
            n.tasks,
            esc(&n.queues.join(", ")),
            n.updated_at
                .as_ref()
                .map(|t| format!("{} ago", age(t)))
                .unwrap_or_default(),
            esc(&n.worker_id),
        );
        if operator {
            h.push_str("<td>");
            for j in &n.running {
                let _ = write!(h, r#"<a href="/ui/jobs/{0}"><code>{0}</code></a> "#, esc(j));
            }
            h.push_str("</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(urlenc("a b&c"), "a%20b%26c");
    }
}
