//! CloudWatch Embedded Metric Format: the registry's metrics as JSON lines that
//! CloudWatch Logs (ECS `awslogs`, Lambda) turns into metrics with no agent
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>).
//!
//! Every `interval` one line per label set is written: `_aws.CloudWatchMetrics` names
//! the namespace (`jetrun`), the dimensions (the metric's labels) and each metric with
//! its unit; the values are top-level members. Counters are written as the increase since
//! the last line (CloudWatch sums per period), gauges as they are, histograms as the
//! increase of their count and sum, and the job latency histograms also as the raw
//! observations of the period (up to 100 values, so CloudWatch computes p50/p99).
//! The values come from the same registry as `/metrics`, rendered and read back.
//!
//! A few metrics are also published with fewer dimensions ([`ROLLUPS`]: a second
//! directive in the same line), so an alarm can watch them without knowing every label
//! value (every dead letter whatever its origin; failed jobs of every queue; 5xx answers
//! of every route, through the derived dimension `code_class` = `2xx` … `5xx`).
//! [`EMITTED`] lists every metric name with the dimension sets it is published under:
//! the Terraform dashboard and alarms are checked against it, and a test checks it
//! against what this encoder writes.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "jetrun";
/// Most raw values kept per metric and label set per period (EMF allows 100).
pub const MAX_VALUES: usize = 100;

/// Extra dimension sets some metrics are also published under (besides their labels).
pub const ROLLUPS: &[(&str, &[&str])] = &[
    ("jetrun_dead_letters_total", &[]),
    ("jetrun_jobs_finished_total", &["status"]),
    ("jetrun_http_requests_total", &["code_class"]),
    ("jetrun_webhook_deliveries_total", &["outcome"]),
    ("jetrun_job_queue_wait_seconds", &[]),
    ("jetrun_job_end_to_end_seconds", &[]),
    ("jetrun_queue_oldest_pending_age_seconds", &[]),
];

/// The derived dimension of `jetrun_http_requests_total`: the status class of `code`.
pub const CODE_CLASS: &str = "code_class";

/// A metric as CloudWatch receives it: its name and each dimension set it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emitted {
    /// The metric name.
    pub name: &'static str,
    /// Its dimension sets (an empty set: the metric with no dimension).
    pub dimensions: &'static [&'static [&'static str]],
}

const fn m(name: &'static str, dimensions: &'static [&'static [&'static str]]) -> Emitted {
    Emitted { name, dimensions }
}

/// Every metric the EMF lines carry, with its dimension sets (labels first, then the
/// [`ROLLUPS`]). Counters keep their `_total` name and are per-period increases;
/// histograms are `_count` and `_sum`, and the three job latencies also the raw
/// observations under the histogram's name (for percentiles).
pub const EMITTED: &[Emitted] = &[
    m(
        "jetrun_http_requests_total",
        &[&["route", "code"], &["code_class"]],
    ),
    m("jetrun_http_request_duration_seconds_count", &[&["route"]]),
    m("jetrun_http_request_duration_seconds_sum", &[&["route"]]),
    m(
        "jetrun_webhook_deliveries_total",
        &[&["event", "outcome"], &["outcome"]],
    ),
    m("jetrun_job_transitions_total", &[&["queue", "status"]]),
    m("jetrun_jobs_finished_total", &[&["queue", "status"], &["status"]]),
    m("jetrun_job_queue_wait_seconds", &[&["queue"], &[]]),
    m("jetrun_job_queue_wait_seconds_count", &[&["queue"]]),
    m("jetrun_job_queue_wait_seconds_sum", &[&["queue"]]),
    m("jetrun_job_run_duration_seconds", &[&["queue"]]),
    m("jetrun_job_run_duration_seconds_count", &[&["queue"]]),
    m("jetrun_job_run_duration_seconds_sum", &[&["queue"]]),
    m("jetrun_job_end_to_end_seconds", &[&["queue"], &[]]),
    m("jetrun_job_end_to_end_seconds_count", &[&["queue"]]),
    m("jetrun_job_end_to_end_seconds_sum", &[&["queue"]]),
    m("jetrun_launches_total", &[&["queue"]]),
    m("jetrun_launch_failures_total", &[&["queue", "reason"]]),
    m("jetrun_dead_letters_total", &[&["origin", "reason"], &[]]),
    m("jetrun_messages_total", &[&["function", "outcome"]]),
    m("jetrun_handler_duration_seconds_count", &[&["function"]]),
    m("jetrun_handler_duration_seconds_sum", &[&["function"]]),
    m("jetrun_queue_pending", &[&["queue"]]),
    m("jetrun_queue_ack_pending", &[&["queue"]]),
    m("jetrun_queue_oldest_pending_age_seconds", &[&["queue"], &[]]),
    m("jetrun_autoscale_desired_replicas", &[&["service"]]),
    m("jetrun_autoscale_current_replicas", &[&["service"]]),
    m("jetrun_nats_connected", &[&[]]),
];

/// The extra dimension sets of `metric` ([`ROLLUPS`]).
fn rollups(metric: &str) -> impl Iterator<Item = &'static [&'static str]> + '_ {
    ROLLUPS.iter().filter(move |(n, _)| *n == metric).map(|(_, d)| *d)
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Where EMF lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Standard output (what the Lambda runtime and `awslogs` capture).
    Stdout,
    /// Standard error.
    Stderr,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "stderr" => Ok(Self::Stderr),
            other => Err(format!("{other:?}: EMF goes to stdout or stderr")),
        }
    }
}

#[derive(Default)]
struct State {
    /// Last value of each counter (and histogram count/sum), by series key.
    last: HashMap<String, f64>,
    /// Raw observations of this period: (metric, queue) → values.
    samples: BTreeMap<(String, String), Vec<f64>>,
}

fn state() -> &'static Mutex<State> {
    static S: OnceLock<Mutex<State>> = OnceLock::new();
    S.get_or_init(Mutex::default)
}

/// Keeps a raw observation for the next EMF line (only while EMF is on).
pub fn sample(metric: &'static str, queue: &str, value: f64) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(mut s) = state().lock() {
        let v = s
            .samples
            .entry((metric.to_string(), queue.to_string()))
            .or_default();
        if v.len() < MAX_VALUES {
            v.push(value);
        }
    }
}

/// Starts writing EMF lines to `target` every `interval` from a background thread (and
/// turns raw sampling on). Call once per process.
pub fn start(target: Target, interval: Duration) {
    if ENABLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let interval = interval.max(Duration::from_secs(1));
    let spawned = std::thread::Builder::new()
        .name("jetrun-emf".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                write_frame(target);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the EMF writer");
    }
}

/// Writes one frame now (also at shutdown, so the last period is not lost).
pub fn flush(target: Target) {
    if ENABLED.load(Ordering::Relaxed) {
        write_frame(target);
    }
}

fn write_frame(target: Target) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let lines = frame(&crate::metrics::render_openmetrics(), now_ms);
    let mut out = String::new();
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    let _ = match target {
        Target::Stdout => std::io::stdout().lock().write_all(out.as_bytes()),
        Target::Stderr => std::io::stderr().lock().write_all(out.as_bytes()),
    };
}

/// A series' labels, in exposition order.
type Labels = Vec<(String, String)>;
/// A metric of an EMF line: name, unit, value.
type Entry = (String, &'static str, serde_json::Value);

/// One parsed sample of the exposition.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), Vec::new()),
        Some((n, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let mut labels = Vec::new();
            // Label values are made of a safe alphabet (metrics::label): no quotes or commas.
            for kv in inner.split(',').filter(|s| !s.is_empty()) {
                let (k, v) = kv.split_once('=')?;
                labels.push((k.to_string(), v.trim_matches('"').to_string()));
            }
            (n.to_string(), labels)
        }
    };
    Some(Sample { name, labels, value })
}

/// The EMF lines for the exposition `text` at `now_ms` (updates the counter baselines).
pub fn frame(text: &str, now_ms: u64) -> Vec<String> {
    let mut types: HashMap<String, String> = HashMap::new();
    // label set → [(metric, unit, value)]
    let mut groups: BTreeMap<Labels, Vec<Entry>> = BTreeMap::new();
    let Ok(mut st) = state().lock() else {
        return Vec::new();
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((n, t)) = rest.split_once(' ') {
                types.insert(n.to_string(), t.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some(s) = parse_sample(line) else { continue };
        let family = |suffix: &str| s.name.strip_suffix(suffix).map(str::to_string);
        let (kind, base) = if let Some(b) =
            family("_total").filter(|b| types.get(b).is_some_and(|t| t == "counter"))
        {
            ("counter", b)
        } else if let Some(b) = family("_count").filter(|b| types.get(b).is_some_and(|t| t == "histogram")) {
            ("hcount", b)
        } else if let Some(b) = family("_sum").filter(|b| types.get(b).is_some_and(|t| t == "histogram")) {
            ("hsum", b)
        } else if s.name.ends_with("_bucket") || s.name.ends_with("_created") {
            continue;
        } else {
            ("gauge", s.name.clone())
        };
        let key = format!("{}{:?}", s.name, s.labels);
        let (name, unit, value) = match kind {
            "counter" | "hcount" => {
                let prev = st.last.insert(key, s.value).unwrap_or(0.0);
                (s.name.clone(), "Count", (s.value - prev).max(0.0))
            }
            "hsum" => {
                let prev = st.last.insert(key, s.value).unwrap_or(0.0);
                let unit = if base.ends_with("_seconds") {
                    "Seconds"
                } else {
                    "None"
                };
                (s.name.clone(), unit, (s.value - prev).max(0.0))
            }
            _ => {
                let unit = if base.ends_with("_seconds") {
                    "Seconds"
                } else {
                    "None"
                };
                (s.name.clone(), unit, s.value)
            }
        };
        let Some(n) = serde_json::Number::from_f64(value) else {
            continue;
        };
        groups
            .entry(s.labels.clone())
            .or_default()
            .push((name, unit, serde_json::Value::Number(n)));
    }
    // The raw observations of the period, as value arrays.
    for ((metric, queue), values) in std::mem::take(&mut st.samples) {
        let values: Vec<serde_json::Value> = values
            .into_iter()
            .filter_map(serde_json::Number::from_f64)
            .map(serde_json::Value::Number)
            .collect();
        if values.is_empty() {
            continue;
        }
        groups
            .entry(vec![("queue".to_string(), queue)])
            .or_default()
            .push((metric, "Seconds", serde_json::Value::Array(values)));
    }
    let mut lines = Vec::new();
    for (labels, metrics) in groups {
        // EMF allows at most 100 metrics per directive.
        for chunk in metrics.chunks(MAX_VALUES) {
            let mut obj = serde_json::Map::new();
            let dims: Vec<serde_json::Value> = labels.iter().map(|(k, _)| k.clone().into()).collect();
            let def = |(n, u, _): &Entry| serde_json::json!({"Name": n, "Unit": u});
            let mut directives = vec![serde_json::json!({
                "Namespace": NAMESPACE,
                "Dimensions": [dims],
                "Metrics": chunk.iter().map(def).collect::<Vec<_>>(),
            })];
            // Roll-ups: one more directive per extra dimension set, naming only the
            // metrics it applies to (CloudWatch aggregates the lines of a period).
            let mut extra: BTreeMap<&[&str], Vec<serde_json::Value>> = BTreeMap::new();
            for e in chunk {
                for d in rollups(&e.0) {
                    if d.iter()
                        .all(|k| *k == CODE_CLASS || labels.iter().any(|(l, _)| l == k))
                    {
                        extra.entry(d).or_default().push(def(e));
                    }
                }
            }
            for (d, defs) in extra {
                directives.push(serde_json::json!({
                    "Namespace": NAMESPACE,
                    "Dimensions": [d],
                    "Metrics": defs,
                }));
            }
            obj.insert(
                "_aws".into(),
                serde_json::json!({
                    "Timestamp": now_ms,
                    "CloudWatchMetrics": directives,
                }),
            );
            for (k, v) in &labels {
                obj.insert(k.clone(), v.clone().into());
                if k == "code" {
                    let class = match v.as_bytes().first() {
                        Some(c @ b'1'..=b'5') => format!("{}xx", *c as char),
                        _ => "other".to_string(),
                    };
                    obj.insert(CODE_CLASS.into(), class.into());
                }
            }
            for (n, _, v) in chunk {
                obj.insert(n.clone(), v.clone());
            }
            lines.push(serde_json::Value::Object(obj).to_string());
        }
    }
    lines
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counters_become_deltas_and_gauges_stay() {
        let text = "# TYPE t_requests counter\nt_requests_total{route=\"/x\",code=\"200\"} 5\n# TYPE t_depth gauge\nt_depth{queue=\"q\"} 3\n# EOF\n";
        let first = frame(text, 1000);
        assert_eq!(first.len(), 2);
        let text2 = text.replace("} 5", "} 8");
        let second = frame(&text2, 2000);
        let v: Vec<serde_json::Value> = second.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        let req = v.iter().find(|o| o.get("route").is_some()).unwrap();
        assert_eq!(req["t_requests_total"], 3.0);
        assert_eq!(
            req["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0],
            serde_json::json!(["route", "code"])
        );
        let depth = v.iter().find(|o| o.get("queue").is_some()).unwrap();
        assert_eq!(depth["t_depth"], 3.0);
    }

    /// Runs the encoder over every metric of the registry and collects what CloudWatch
    /// would receive: (name, dimension set).
    fn emitted_by_the_encoder() -> std::collections::BTreeSet<(String, Vec<String>)> {
        use crate::metrics as m;
        ENABLED.store(true, Ordering::SeqCst);
        m::http_request("/v1/jobs", 503, Duration::from_millis(2));
        m::webhook("issue_comment", "accepted");
        m::job_transition(&m::Transition {
            queue: "cat",
            from: Some("running"),
            to: "succeeded",
            terminal: true,
            run: Some(1.0),
            end_to_end: Some(2.0),
            ..Default::default()
        });
        m::job_transition(&m::Transition {
            queue: "cat",
            from: Some("launching"),
            to: "running",
            queue_wait: Some(0.5),
            ..Default::default()
        });
        m::job_transition(&m::Transition {
            queue: "cat",
            from: Some("launching"),
            to: "failed",
            terminal: true,
            error_kind: Some("image"),
            ..Default::default()
        });
        m::dead_letter("settle", "callback_failed");
        m::message_handled("settle", "ack", Duration::from_millis(1));
        m::set_queue_depths(&[m::QueueDepth {
            queue: "cat".into(),
            pending: 1,
            ack_pending: 0,
            oldest_age_seconds: Some(3.0),
        }]);
        m::set_autoscale(&[("worker".into(), 2, 1)]);
        m::set_nats_connected(true);
        let mut out = std::collections::BTreeSet::new();
        for line in frame(&m::render_openmetrics(), 1) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            for d in v["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
                assert_eq!(d["Namespace"], NAMESPACE);
                for set in d["Dimensions"].as_array().unwrap() {
                    let set: Vec<String> = set
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|k| k.as_str().unwrap().to_string())
                        .collect();
                    for k in &set {
                        assert!(v[k].is_string(), "dimension {k} missing in {line}");
                    }
                    for metric in d["Metrics"].as_array().unwrap() {
                        let name = metric["Name"].as_str().unwrap();
                        assert!(!v[name].is_null(), "{name} has no value in {line}");
                        out.insert((name.to_string(), set.clone()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_catalogue_is_exactly_what_the_encoder_writes() {
        let written = emitted_by_the_encoder();
        let listed: std::collections::BTreeSet<(String, Vec<String>)> = EMITTED
            .iter()
            .flat_map(|e| {
                e.dimensions
                    .iter()
                    .map(|d| (e.name.to_string(), d.iter().map(|k| k.to_string()).collect()))
            })
            .collect();
        let missing: Vec<_> = written.difference(&listed).collect();
        let extra: Vec<_> = listed.difference(&written).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "written but not in EMITTED: {missing:?}\nin EMITTED but not written: {extra:?}"
        );
    }

    #[test]
    fn rollups_are_extra_directives_with_the_code_class() {
        emitted_by_the_encoder();
        let text = crate::metrics::render_openmetrics();
        let lines = frame(&text, 2);
        let http = lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["code"] == "503")
            .unwrap();
        assert_eq!(http["code_class"], "5xx");
        let dirs = http["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(dirs.len(), 2, "{http}");
        assert_eq!(dirs[1]["Dimensions"], serde_json::json!([["code_class"]]));
        assert_eq!(
            dirs[1]["Metrics"],
            serde_json::json!([{"Name": "jetrun_http_requests_total", "Unit": "Count"}])
        );
    }
}
