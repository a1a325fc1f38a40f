//! jetrun's own metrics, in one process-wide registry, exposed as Prometheus/OpenMetrics
//! text by [`render`] (the `/metrics` endpoint) and as CloudWatch EMF lines by
//! [`crate::emf`].
//!
//! Every label is bounded: queue, status, origin, reason kind, function, route template,
//! webhook event (from the known list, else `other`) and outcome, service. Never a job id,
//! a delivery id, a tenant or anything else that grows with traffic; values that could be
//! anything are cut to [`MAX_LABEL_LEN`] and limited to a safe alphabet.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Longest label value kept; longer ones are cut.
pub const MAX_LABEL_LEN: usize = 64;

type L1 = [(&'static str, String); 1];
type L2 = [(&'static str, String); 2];
type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric jetrun exports.
struct Metrics {
    registry: Registry,
    http_requests: Family<L2, Counter>,
    http_duration: HistFamily<L1>,
    webhooks: Family<L2, Counter>,
    transitions: Family<L2, Counter>,
    jobs_finished: Family<L2, Counter>,
    queue_wait: HistFamily<L1>,
    run_duration: HistFamily<L1>,
    end_to_end: HistFamily<L1>,
    launches: Family<L1, Counter>,
    launch_failures: Family<L2, Counter>,
    dead_letters: Family<L2, Counter>,
    messages: Family<L2, Counter>,
    handler_duration: HistFamily<L1>,
    queue_pending: Family<L1, Gauge>,
    queue_ack_pending: Family<L1, Gauge>,
    queue_oldest_age: Family<L1, Gauge<f64, std::sync::atomic::AtomicU64>>,
    autoscale_desired: Family<L1, Gauge>,
    autoscale_current: Family<L1, Gauge>,
    nats_connected: Gauge,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

fn job_histogram() -> Histogram {
    // 10 ms .. 6 h
    Histogram::new([
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
    ])
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut r = Registry::default();
        let m = Metrics {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            webhooks: Family::default(),
            transitions: Family::default(),
            jobs_finished: Family::default(),
            queue_wait: Family::new_with_constructor(job_histogram),
            run_duration: Family::new_with_constructor(job_histogram),
            end_to_end: Family::new_with_constructor(job_histogram),
            launches: Family::default(),
            launch_failures: Family::default(),
            dead_letters: Family::default(),
            messages: Family::default(),
            handler_duration: Family::new_with_constructor(latency_histogram),
            queue_pending: Family::default(),
            queue_ack_pending: Family::default(),
            queue_oldest_age: Family::default(),
            autoscale_desired: Family::default(),
            autoscale_current: Family::default(),
            nats_connected: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "jetrun_http_requests",
            "HTTP requests answered, by route template and status code",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "jetrun_http_request_duration",
            "Time to answer an HTTP request, by route template",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register(
            "jetrun_webhook_deliveries",
            "GitHub webhook deliveries by event and outcome (accepted, duplicate, ignored, bad_signature, too_large, invalid, unavailable, ...)",
            m.webhooks.clone(),
        );
        r.register(
            "jetrun_job_transitions",
            "Committed job state transitions, by queue and new status",
            m.transitions.clone(),
        );
        r.register(
            "jetrun_jobs_finished",
            "Jobs that reached a terminal status, by queue and status",
            m.jobs_finished.clone(),
        );
        r.register_with_unit(
            "jetrun_job_queue_wait",
            "Time from admission to the attempt's start (submit to running), by queue",
            Unit::Seconds,
            m.queue_wait.clone(),
        );
        r.register_with_unit(
            "jetrun_job_run_duration",
            "Time from the last attempt's start to the terminal status, by queue",
            Unit::Seconds,
            m.run_duration.clone(),
        );
        r.register_with_unit(
            "jetrun_job_end_to_end",
            "Time from admission to the terminal status, by queue",
            Unit::Seconds,
            m.end_to_end.clone(),
        );
        r.register("jetrun_launches", "Tasks started, by queue", m.launches.clone());
        r.register(
            "jetrun_launch_failures",
            "Launches that failed (the job went from launching to failed or back to queued), by queue and error kind",
            m.launch_failures.clone(),
        );
        r.register(
            "jetrun_dead_letters",
            "Messages dead-lettered, by origin and reason kind",
            m.dead_letters.clone(),
        );
        r.register(
            "jetrun_messages",
            "Messages handled by a function, by function and outcome (ack, retry, dead_letter, panic, timeout)",
            m.messages.clone(),
        );
        r.register_with_unit(
            "jetrun_handler_duration",
            "Time a function's handler took per message, by function",
            Unit::Seconds,
            m.handler_duration.clone(),
        );
        r.register(
            "jetrun_queue_pending",
            "Submissions waiting in a queue's dispatch consumer (read from consumer info at scrape, cached 1 s)",
            m.queue_pending.clone(),
        );
        r.register(
            "jetrun_queue_ack_pending",
            "Submissions delivered but not yet acknowledged, per queue",
            m.queue_ack_pending.clone(),
        );
        r.register_with_unit(
            "jetrun_queue_oldest_pending_age",
            "Age of the oldest submission still in a queue",
            Unit::Seconds,
            m.queue_oldest_age.clone(),
        );
        r.register(
            "jetrun_autoscale_desired_replicas",
            "Replicas the autoscaler wants, per service",
            m.autoscale_desired.clone(),
        );
        r.register(
            "jetrun_autoscale_current_replicas",
            "Replicas the autoscaler last observed, per service",
            m.autoscale_current.clone(),
        );
        r.register(
            "jetrun_nats_connected",
            "1 while this process's NATS connection is up",
            m.nats_connected.clone(),
        );
        Metrics { registry: r, ..m }
    })
}

/// A label value made bounded and safe: `[A-Za-z0-9_.:/{}-]`, other bytes as `_`, cut to
/// [`MAX_LABEL_LEN`]; empty becomes `none`.
pub fn label(v: &str) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.chars()
        .take(MAX_LABEL_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.:/{}-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The registry as OpenMetrics 1.0 text.
pub fn render_openmetrics() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &metrics().registry);
    out
}

/// The registry as Prometheus text exposition 0.0.4 (what `GET /metrics` answers, and
/// what every Prometheus-compatible scraper and `promtool check metrics` read): the
/// OpenMetrics text with counters' HELP/TYPE named `<name>_total`, without `# UNIT`,
/// `# EOF` and `_created` samples.
pub fn render() -> String {
    to_prometheus_text(&render_openmetrics())
}

/// Converts OpenMetrics text as [`render_openmetrics`] writes it to Prometheus text.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    let mut counter: Option<String> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let exposed = if ty == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            counter = (ty == "counter").then(|| name.to_string());
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {exposed} {text}\n"));
            }
            out.push_str(&format!("# TYPE {exposed} {ty}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(c) = &counter
            && line.starts_with(&format!("{c}_created"))
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One HTTP request answered: `route` is the route template (`/v1/jobs/{id}`), never the
/// raw path.
pub fn http_request(route: &str, code: u16, took: Duration) {
    let m = metrics();
    m.http_requests
        .get_or_create(&[("route", label(route)), ("code", code.to_string())])
        .inc();
    m.http_duration
        .get_or_create(&[("route", label(route))])
        .observe(took.as_secs_f64());
}

/// One webhook delivery: `event` should already be a known event or `other`.
pub fn webhook(event: &str, outcome: &str) {
    metrics()
        .webhooks
        .get_or_create(&[("event", label(event)), ("outcome", label(outcome))])
        .inc();
}

/// A committed job transition, as seen in its state-change event.
#[derive(Debug, Clone, Default)]
pub struct Transition<'a> {
    /// The job's queue.
    pub queue: &'a str,
    /// Status before (`None` on admission).
    pub from: Option<&'a str>,
    /// Status after.
    pub to: &'a str,
    /// Whether `to` is terminal.
    pub terminal: bool,
    /// The error kind, when the transition carries one.
    pub error_kind: Option<&'a str>,
    /// Seconds from admission to the attempt's start, on the way into `running`.
    pub queue_wait: Option<f64>,
    /// Seconds the last attempt ran, on the way into a terminal status.
    pub run: Option<f64>,
    /// Seconds from admission to the terminal status.
    pub end_to_end: Option<f64>,
}

/// Records a committed job transition.
pub fn job_transition(t: &Transition<'_>) {
    let m = metrics();
    let queue = label(t.queue);
    m.transitions
        .get_or_create(&[("queue", queue.clone()), ("status", label(t.to))])
        .inc();
    if t.terminal {
        m.jobs_finished
            .get_or_create(&[("queue", queue.clone()), ("status", label(t.to))])
            .inc();
    }
    if t.to == "running" {
        m.launches.get_or_create(&[("queue", queue.clone())]).inc();
    }
    if t.from == Some("launching") && matches!(t.to, "failed" | "queued") {
        m.launch_failures
            .get_or_create(&[
                ("queue", queue.clone()),
                ("reason", label(t.error_kind.unwrap_or("unknown"))),
            ])
            .inc();
    }
    let observe = |h: &HistFamily<L1>, v: Option<f64>, name: &'static str| {
        if let Some(v) = v.filter(|v| v.is_finite() && *v >= 0.0) {
            h.get_or_create(&[("queue", queue.clone())]).observe(v);
            crate::emf::sample(name, &queue, v);
        }
    };
    observe(&m.queue_wait, t.queue_wait, "jetrun_job_queue_wait_seconds");
    observe(&m.run_duration, t.run, "jetrun_job_run_duration_seconds");
    observe(&m.end_to_end, t.end_to_end, "jetrun_job_end_to_end_seconds");
}

/// A message dead-lettered by `origin` for `reason_kind`.
pub fn dead_letter(origin: &str, reason_kind: &str) {
    metrics()
        .dead_letters
        .get_or_create(&[("origin", label(origin)), ("reason", label(reason_kind))])
        .inc();
}

/// A message handled by `function` with `outcome` in `took`.
pub fn message_handled(function: &str, outcome: &str, took: Duration) {
    let m = metrics();
    m.messages
        .get_or_create(&[("function", label(function)), ("outcome", label(outcome))])
        .inc();
    m.handler_duration
        .get_or_create(&[("function", label(function))])
        .observe(took.as_secs_f64());
}

/// One queue's depth, as its dispatch consumer reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDepth {
    /// The queue.
    pub queue: String,
    /// `num_pending`.
    pub pending: u64,
    /// `num_ack_pending`.
    pub ack_pending: u64,
    /// Age of the oldest submission in seconds, if any.
    pub oldest_age_seconds: Option<f64>,
}

/// Replaces every queue-depth gauge (queues that are gone disappear).
pub fn set_queue_depths(depths: &[QueueDepth]) {
    let m = metrics();
    m.queue_pending.clear();
    m.queue_ack_pending.clear();
    m.queue_oldest_age.clear();
    for d in depths {
        let l = [("queue", label(&d.queue))];
        m.queue_pending.get_or_create(&l).set(d.pending as i64);
        m.queue_ack_pending.get_or_create(&l).set(d.ack_pending as i64);
        m.queue_oldest_age
            .get_or_create(&l)
            .set(d.oldest_age_seconds.unwrap_or(0.0));
    }
}

/// Replaces the autoscale gauges: `(service, desired, current)`.
pub fn set_autoscale(services: &[(String, u64, u64)]) {
    let m = metrics();
    m.autoscale_desired.clear();
    m.autoscale_current.clear();
    for (s, desired, current) in services {
        let l = [("service", label(s))];
        m.autoscale_desired.get_or_create(&l).set(*desired as i64);
        m.autoscale_current.get_or_create(&l).set(*current as i64);
    }
}

/// Whether this process's NATS connection is up.
pub fn set_nats_connected(up: bool) {
    metrics().nats_connected.set(i64::from(up));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_safe() {
        assert_eq!(label(""), "none");
        assert_eq!(label("a b\"c\n"), "a_b_c_");
        assert_eq!(label(&"x".repeat(200)).len(), MAX_LABEL_LEN);
        assert_eq!(label("/v1/jobs/{id}"), "/v1/jobs/{id}");
    }

    #[test]
    fn renders_what_was_recorded() {
        http_request("/v1/jobs", 202, Duration::from_millis(3));
        job_transition(&Transition {
            queue: "unit",
            from: Some("running"),
            to: "succeeded",
            terminal: true,
            run: Some(1.5),
            end_to_end: Some(2.0),
            ..Default::default()
        });
        let text = render();
        assert!(
            text.contains("# TYPE jetrun_http_requests_total counter"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        let text = render_openmetrics();
        assert!(
            text.contains("jetrun_http_requests_total{route=\"/v1/jobs\",code=\"202\"} 1"),
            "{text}"
        );
        assert!(text.contains("jetrun_jobs_finished_total{queue=\"unit\",status=\"succeeded\"} 1"));
        assert!(text.contains("jetrun_job_run_duration_seconds_count{queue=\"unit\"} 1"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
