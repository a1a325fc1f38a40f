//! Observability end to end against the real binary: one trace per job received by a
//! real OTLP/HTTP receiver (protobuf decoded with the OpenTelemetry proto types),
//! `/metrics` checked by `promtool`, EMF lines checked against the EMF structure, and
//! `jetrun top --once`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

const BIN: &str = env!("CARGO_BIN_EXE_jetrun");

/// A span as received.
#[derive(Debug, Clone)]
struct Got {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    service: String,
    attrs: HashMap<String, String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A minimal OTLP/HTTP receiver: POST /v1/traces with a protobuf body, answered 200.
/// Keeps every span of every request.
fn otlp_receiver() -> (String, Arc<Mutex<Vec<Got>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let keep = spans.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let keep = keep.clone();
            std::thread::spawn(move || serve_otlp(conn, keep));
        }
    });
    (url, spans)
}

fn serve_otlp(conn: TcpStream, keep: Arc<Mutex<Vec<Got>>>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let request_line = line.trim().to_string();
        let mut len = 0usize;
        let mut ctype = String::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap(),
                "content-type" => ctype = v.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        assert!(request_line.starts_with("POST /v1/traces"), "{request_line}");
        assert_eq!(ctype, "application/x-protobuf");
        let req =
            ExportTraceServiceRequest::decode(body.as_slice()).expect("a protobuf ExportTraceServiceRequest");
        let mut got = Vec::new();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .map(|a| {
                            use opentelemetry_proto::tonic::common::v1::any_value::Value;
                            let v = match a.value.as_ref().and_then(|v| v.value.clone()) {
                                Some(Value::StringValue(s)) => s,
                                Some(Value::IntValue(i)) => i.to_string(),
                                Some(Value::BoolValue(b)) => b.to_string(),
                                Some(Value::DoubleValue(d)) => d.to_string(),
                                other => format!("{other:?}"),
                            };
                            (a.key.clone(), v)
                        })
                        .collect();
                    got.push(Got {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name.clone(),
                        kind: s.kind,
                        service: service.clone(),
                        attrs,
                    });
                }
            }
        }
        keep.lock().unwrap().extend(got);
        let _ = w.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Dev {
    child: Child,
    nats: String,
    http: String,
    metrics: String,
    stdout: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Dev {
    /// SIGTERM and wait: the exporter flushes on the way out.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_dev(env: &[(&str, &str)], extra: &[&str]) -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        r#"version: 1
rules:
  - name: trace
    match:
      event: issue_comment
      action: [created]
      comment: '^/trace'
    job:
      queue: traced
      image: busybox
      command: ["sh", "-c", 'echo "TP=$TRACEPARENT TS=$TRACESTATE"']
"#,
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(BIN);
    cmd.arg("dev")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--nats-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--http")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(if extra.contains(&"--runner") {
            &[][..]
        } else {
            &["--runner", "process"][..]
        })
        .arg("--rules")
        .arg(&rules)
        .arg("--metrics-listen")
        .arg(&metrics)
        .args(extra)
        .env_remove("JETRUN_NATS_URL")
        .env_remove("NATS_URL")
        .env_remove("JETRUN_API_TOKENS")
        .env_remove("JETRUN_GITHUB_WEBHOOK_SECRET")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env("RUST_LOG", "info,async_nats=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = loop {
        let l = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("no ready line within 90 s");
        if l.starts_with("ready ") {
            break l;
        }
    };
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    Dev {
        nats: field("nats"),
        http: field("http"),
        metrics: format!("http://{metrics}"),
        child,
        stdout: rx,
        _dir: dir,
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = TcpStream::connect(host).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn jetrun(dev: &Dev, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("JETRUN_NATS_URL", &dev.nats)
        .env_remove("NATS_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap()
}

fn comment_payload(body: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/github-webhooks/issue_comment/created.payload.json"
    ))
    .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["comment"]["body"] = body.into();
    serde_json::to_vec(&v).unwrap()
}

fn send_webhook(dev: &Dev, comment: &str, traceparent: Option<&str>) -> (u16, String) {
    let delivery = uuid_like();
    let mut h = vec![
        ("x-github-event", "issue_comment"),
        ("x-github-delivery", delivery.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(tp) = traceparent {
        h.push(("traceparent", tp));
        h.push(("tracestate", "vendor=opaque"));
    }
    http(
        "POST",
        &format!("{}/webhooks/github", dev.http),
        &h,
        &comment_payload(comment),
    )
}

fn uuid_like() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        (n >> 64) as u32 ^ std::process::id(),
        n as u64 & 0xffff_ffff_ffff
    )
}

/// Waits for `n` jobs of queue `traced` to succeed; returns their ids.
fn wait_succeeded(dev: &Dev, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let out = jetrun(
            dev,
            &[
                "jobs",
                "list",
                "--queue",
                "traced",
                "--status",
                "succeeded",
                "--json",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let ids: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
            .collect();
        if ids.len() >= n {
            return ids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "jobs did not succeed: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_webhook_job_is_one_trace_with_one_root() {
    let (otlp, spans) = otlp_receiver();
    let mut dev = start_dev(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_SERVICE_NAME", "jetrun-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ],
        &[],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let (status, body) = send_webhook(&dev, "/trace please", Some(&format!("00-{trace}-{caller}-01")));
    assert_eq!(status, 202, "{body}");
    let ids = wait_succeeded(&dev, 1);
    let logs = jetrun(&dev, &["jobs", "logs", &ids[0]]);
    let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
    // The container saw the same trace.
    assert!(logs.contains(&format!("TP=00-{trace}-")), "task output: {logs}");
    // tracestate is kept hop to hop.
    assert!(logs.contains("TS=vendor=opaque"), "task output: {logs}");

    // A bad traceparent is not an error: a new trace.
    let (status, body) = send_webhook(
        &dev,
        "/trace again",
        Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
    );
    assert_eq!(status, 202, "{body}");
    wait_succeeded(&dev, 2);
    // Let settle's and the callbacks' last spans end, then flush by stopping.
    std::thread::sleep(Duration::from_secs(1));
    dev.stop();

    let all = spans.lock().unwrap().clone();
    let ours: Vec<&Got> = all.iter().filter(|s| s.trace_id == trace).collect();
    assert!(!ours.is_empty(), "no span of the trace among {} spans", all.len());
    eprintln!(
        "{} spans in the trace: {:?}",
        ours.len(),
        ours.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
    );
    let ids: HashSet<&str> = ours.iter().map(|s| s.span_id.as_str()).collect();
    // One root: the server span whose parent is the caller's span; no orphan.
    let roots: Vec<&&Got> = ours.iter().filter(|s| !ids.contains(s.parent.as_str())).collect();
    assert_eq!(
        roots.len(),
        1,
        "roots: {:#?}",
        roots.iter().map(|s| (&s.name, &s.parent)).collect::<Vec<_>>()
    );
    assert_eq!(roots[0].parent, caller);
    assert_eq!(roots[0].kind, SpanKind::Server as i32);
    assert_eq!(
        roots[0].attrs.get("http.route").map(String::as_str),
        Some("/webhooks/github")
    );
    assert!(roots[0].service.contains("jetrun-test"), "{}", roots[0].service);
    // Producers and consumers with the messaging conventions, every hop present.
    let producers: Vec<&&Got> = ours
        .iter()
        .filter(|s| s.kind == SpanKind::Producer as i32)
        .collect();
    let consumers: Vec<&&Got> = ours
        .iter()
        .filter(|s| s.kind == SpanKind::Consumer as i32)
        .collect();
    for s in producers.iter().chain(&consumers) {
        assert_eq!(
            s.attrs.get("messaging.system").map(String::as_str),
            Some("nats"),
            "{s:?}"
        );
        assert!(s.attrs.contains_key("messaging.destination.name"), "{s:?}");
        assert!(s.attrs.contains_key("messaging.message.id"), "{s:?}");
        assert!(s.attrs.contains_key("messaging.operation.type"), "{s:?}");
    }
    let consumed_by: HashSet<&str> = consumers
        .iter()
        .filter_map(|s| s.attrs.get("messaging.consumer.group.name").map(String::as_str))
        .collect();
    for hop in ["route", "dispatch", "settle"] {
        assert!(
            consumed_by.contains(hop),
            "no {hop} consumer span; consumers: {consumed_by:?}"
        );
    }
    assert!(
        ours.iter().any(|s| s
            .attrs
            .get("jetrun.job_id")
            .is_some_and(|j| j == &ids_first(&ours))),
        "no span names the job"
    );
    // Every consumer span is a child of a producer span; a consumer of job state changes
    // (github's `github-jobs` here) is a child of the span that made the transition
    // (dispatch's or settle's, or the job-control server span): state changes have no
    // producer span of their own (decision 46).
    let producer_ids: HashSet<&str> = producers.iter().map(|s| s.span_id.as_str()).collect();
    let by_id: HashMap<&str, &&Got> = ours.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut state_change_consumers = 0;
    for c in &consumers {
        let p = by_id[c.parent.as_str()];
        let of_state_change = c
            .attrs
            .get("messaging.destination.name")
            .is_some_and(|d| d.contains(".job.event."));
        if of_state_change {
            state_change_consumers += 1;
            let made_by = p.attrs.get("messaging.consumer.group.name").map(String::as_str);
            assert!(
                matches!(made_by, Some("dispatch" | "settle")) || p.kind == SpanKind::Server as i32,
                "state-change consumer {} has parent {} ({:?}, {made_by:?})",
                c.name,
                p.name,
                p.kind
            );
            continue;
        }
        assert!(
            producer_ids.contains(c.parent.as_str()) || p.kind == SpanKind::Internal as i32,
            "consumer {} has parent {} ({:?})",
            c.name,
            p.name,
            p.kind
        );
    }
    assert!(
        state_change_consumers > 0,
        "no consumer of the job's state changes in the trace"
    );
    // The transition spans carry the job's attempt and tenant.
    assert!(
        consumers
            .iter()
            .any(|s| s.attrs.get("jetrun.attempt").is_some_and(|a| a == "1")
                && s.attrs.contains_key("jetrun.tenant")),
        "no span records the attempt and tenant"
    );
    // No state change has a producer span of its own.
    assert!(
        !producers.iter().any(|s| s.name.contains(".job.event.")),
        "{:?}",
        producers.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    // The second job (bad header) is a trace of its own, also rooted at its server span.
    let other: HashSet<&str> = all
        .iter()
        .filter(|s| s.trace_id != trace && s.attrs.get("http.route").is_some_and(|r| r == "/webhooks/github"))
        .map(|s| s.trace_id.as_str())
        .collect();
    assert_eq!(
        other.len(),
        1,
        "the bad traceparent did not start exactly one new trace"
    );
}

fn ids_first(spans: &[&Got]) -> String {
    spans
        .iter()
        .find_map(|s| s.attrs.get("jetrun.job_id").cloned())
        .unwrap_or_default()
}

#[test]
fn metrics_pass_promtool_and_move_and_emf_lines_follow_the_spec() {
    let mut dev = start_dev(
        &[
            ("JETRUN_METRICS_EMF", "stdout"),
            ("JETRUN_METRICS_EMF_INTERVAL", "1s"),
        ],
        &[],
    );
    let (status, before) = http("GET", &format!("{}/metrics", dev.metrics), &[], b"");
    assert_eq!(status, 200);
    let (status, _) = send_webhook(&dev, "/trace metrics", None);
    assert_eq!(status, 202);
    let (status, _) = send_webhook(&dev, "no rule matches this", None);
    assert_eq!(status, 202);
    wait_succeeded(&dev, 1);
    std::thread::sleep(Duration::from_millis(1200));
    let (status, text) = http("GET", &format!("{}/metrics", dev.metrics), &[], b"");
    assert_eq!(status, 200);
    // The HTTP port answers too (no tokens configured in dev).
    let (status, _) = http("GET", &format!("{}/metrics", dev.http), &[], b"");
    assert_eq!(status, 200);

    // An independent parser and linter.
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {lint}\n{text}");

    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    assert_eq!(
        value(
            &before,
            "jetrun_jobs_finished_total{queue=\"traced\",status=\"succeeded\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "jetrun_jobs_finished_total{queue=\"traced\",status=\"succeeded\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(value(&text, "jetrun_launches_total{queue=\"traced\"}"), 1.0);
    assert_eq!(
        value(
            &text,
            "jetrun_webhook_deliveries_total{event=\"issue_comment\",outcome=\"accepted\"}"
        ),
        2.0
    );
    assert!(value(&text, "jetrun_job_queue_wait_seconds_count{queue=\"traced\"}") >= 1.0);
    assert!(
        value(&text, "jetrun_messages_total{function=\"route\",outcome=\"ack\"}") >= 2.0,
        "{text}"
    );
    assert!(text.contains("jetrun_queue_pending{queue=\"traced\"}"), "{text}");
    assert_eq!(value(&text, "jetrun_nats_connected"), 1.0);
    // Bounded labels: no job id anywhere.
    let ids = wait_succeeded(&dev, 1);
    assert!(!text.contains(&ids[0]));

    // EMF: every stdout line after `ready` is an EMF document.
    let start = Instant::now();
    let mut docs = Vec::new();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(l) = dev.stdout.recv_timeout(Duration::from_millis(500)) {
            docs.push(serde_json::from_str::<serde_json::Value>(&l).expect("an EMF line is JSON"));
        }
        if docs.iter().any(|d| d.get("jetrun_jobs_finished_total").is_some()) {
            break;
        }
    }
    assert!(!docs.is_empty());
    let mut finished = 0.0;
    for d in &docs {
        let aws = &d["_aws"];
        assert!(aws["Timestamp"].as_u64().unwrap() > 1_600_000_000_000);
        // The labels' directive, then roll-ups (fewer dimensions) of some of its metrics.
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert!((1..=2).contains(&directives.len()), "{d}");
        for dir in directives {
            assert_eq!(dir["Namespace"], "jetrun");
            for set in dir["Dimensions"].as_array().unwrap() {
                let set = set.as_array().unwrap();
                assert!(set.len() <= 30);
                for dim in set {
                    assert!(
                        d[dim.as_str().unwrap()].is_string(),
                        "dimension {dim} missing from {d}"
                    );
                }
            }
            let metrics = dir["Metrics"].as_array().unwrap();
            assert!(!metrics.is_empty() && metrics.len() <= 100);
            for m in metrics {
                let name = m["Name"].as_str().unwrap();
                let unit = m["Unit"].as_str().unwrap();
                assert!(["Seconds", "Count", "None"].contains(&unit));
                let v = &d[name];
                assert!(
                    v.is_number()
                        || v.as_array()
                            .is_some_and(|a| a.len() <= 100 && a.iter().all(|x| x.is_number())),
                    "{name}: {v}"
                );
            }
        }
        if d["queue"] == "traced" && d["status"] == "succeeded" {
            finished += d["jetrun_jobs_finished_total"].as_f64().unwrap_or(0.0);
        }
    }
    assert_eq!(finished, 1.0, "EMF carries the same count: {docs:#?}");
    dev.stop();
}

/// Publishes `payload` on `subject` in JetStream (no CloudEvent headers).
fn publish_raw(nats: &str, subject: &str, payload: &'static [u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = async_nats::connect(nats).await.unwrap();
        let js = async_nats::jetstream::new(c);
        js.publish(subject.to_string(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
}

#[test]
fn top_once_shows_the_queues_and_nodes() {
    let dev = start_dev(&[], &[]);
    let (status, _) = send_webhook(&dev, "/trace top", None);
    assert_eq!(status, 202);
    let ids = wait_succeeded(&dev, 1);
    // A submission that is not a CloudEvent: dispatch dead-letters it, on queue `traced`.
    publish_raw(&dev.nats, "jetrun.job.submit.traced", b"not an event");
    let start = Instant::now();
    let f = loop {
        let out = jetrun(&dev, &["top", "--once", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if f["dead_letters"].as_u64() >= Some(1) {
            break f;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no dead letter: {f:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let q = f["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "traced")
        .unwrap()
        .clone();
    assert_eq!(q["finished"]["succeeded"], 1, "{f:#}");
    assert_eq!(q["running"], 0);
    assert_eq!(q["pending"], 0);
    assert_eq!(q["dead_letters"], 1, "{f:#}");
    // The one job that started: its own submit-to-start, a few seconds at most.
    assert_eq!(q["queue_wait_sample"], 1, "{f:#}");
    let p50 = q["queue_wait_p50_seconds"].as_f64().unwrap();
    assert!((0.0..10.0).contains(&p50), "{f:#}");
    assert_eq!(q["queue_wait_p99_seconds"].as_f64(), Some(p50));
    assert!(q["finished_per_second"].is_null(), "no rate from a single frame");
    assert!(!f["nodes"].as_array().unwrap().is_empty(), "{f:#}");

    let text = jetrun(&dev, &["top", "--once"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        !text.contains('\x1b'),
        "--once output has no escape sequences: {text:?}"
    );
    let header = text
        .lines()
        .find(|l| l.starts_with("QUEUE "))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = header.split_whitespace().collect();
    let line = text
        .lines()
        .find(|l| l.starts_with("traced "))
        .unwrap_or_else(|| panic!("{text}"));
    let cell = |name: &str| {
        let i = cols.iter().position(|c| *c == name).unwrap();
        line.split_whitespace().nth(i).unwrap().to_string()
    };
    assert_eq!(cell("SUCCEEDED"), "1", "{text}");
    assert_eq!(cell("DLQ"), "1", "{text}");
    assert_eq!(cell("DONE/S"), "-", "{text}");
    assert!(cell("WAIT99").ends_with('s'), "{text}");
    assert!(text.contains("NODE"), "{text}");
    assert!(!text.contains(&ids[0]), "no failure expected: {text}");
}

#[test]
fn top_live_redraws_with_rates_from_the_counters() {
    let dev = start_dev(&[], &[]);
    // Live, not a terminal, as JSON: one frame per line every interval.
    let mut top = Command::new(BIN)
        .args(["top", "--json", "--interval", "300ms"])
        .env("JETRUN_NATS_URL", &dev.nats)
        .env_remove("NATS_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = top.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx
                .send(serde_json::from_str(&l).expect("a frame is one JSON line"))
                .is_err()
            {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).expect("a first frame");
    assert!(first["queues"].is_array(), "{first:#}");
    for i in 0..3 {
        let (status, _) = send_webhook(&dev, &format!("/trace live {i}"), None);
        assert_eq!(status, 202);
    }
    wait_succeeded(&dev, 3);
    // Frames keep coming; once all three are counted, the frames in between showed them
    // finishing at a positive rate (jobs finished over the interval).
    let start = Instant::now();
    let mut frames = 1;
    let mut rates = Vec::new();
    loop {
        let f = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("frames keep coming");
        frames += 1;
        if let Some(q) = f["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == "traced")
        {
            if let Some(r) = q["finished_per_second"].as_f64() {
                rates.push(r);
            }
            if q["finished"]["succeeded"] == 3 {
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never saw 3 finished");
    }
    assert!(frames >= 2);
    assert!(
        rates.iter().any(|r| *r > 0.0),
        "no positive finished/s while 3 jobs finished: {rates:?}"
    );
    // The next frame: nothing more finished, so the rate falls back to zero.
    let next = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("frames keep coming");
    let q = next["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "traced")
        .unwrap()
        .clone();
    assert_eq!(q["finished_per_second"].as_f64(), Some(0.0), "{q:#}");
    let _ = top.kill();
    let _ = top.wait();
}

/// The series of an exposition (sample lines), without their values.
fn series(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn metric_cardinality_stays_fixed_while_a_thousand_jobs_run() {
    let dev = start_dev(&[], &["--runner", "null", "--api-rate", "0"]);
    let submit = |n: usize| {
        for i in 0..n {
            let body =
                format!(r#"{{"queue":"card","image":"busybox","command":["true"],"labels":{{"n":"{i}"}}}}"#);
            let (status, answer) = http(
                "POST",
                &format!("{}/v1/jobs", dev.http),
                &[("content-type", "application/json")],
                body.as_bytes(),
            );
            assert!(
                status == 201 || status == 202 || status == 200,
                "{status} {answer}"
            );
        }
    };
    let finished = |want: f64| {
        let start = Instant::now();
        loop {
            let (_, text) = http("GET", &format!("{}/metrics", dev.metrics), &[], b"");
            let done: f64 = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("jetrun_jobs_finished_total{queue=\"card\",status=\"succeeded\"} ")
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            if done >= want {
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{done} of {want} finished"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    submit(20);
    let warm = series(&finished(20.0));
    submit(1000);
    let after = series(&finished(1020.0));
    // A response code not seen in the warm-up (201 admitted vs 202 queued for dispatch)
    // is a new value of a bounded label; anything else new would be unbounded growth.
    let strip = |s: &String| {
        let re = s.find(",code=\"").map(|i| {
            let end = s[i + 7..].find('"').map(|j| i + 7 + j + 1).unwrap_or(s.len());
            format!("{}{}", &s[..i], &s[end..])
        });
        re.unwrap_or_else(|| s.clone())
    };
    let warm_kinds: std::collections::BTreeSet<String> = warm.iter().map(strip).collect();
    let after_kinds: std::collections::BTreeSet<String> = after.iter().map(strip).collect();
    assert_eq!(
        warm_kinds, after_kinds,
        "series appeared or vanished after 1,000 more jobs"
    );
    assert!(
        after.len() <= warm.len() + 2,
        "{} series, {} before",
        after.len(),
        warm.len()
    );
    eprintln!("{} series before and after 1,000 jobs", after.len());
}

/// A local Lambda Runtime API (the documented `/2018-06-01/runtime/invocation/...`
/// protocol) with one invocation to hand out: later `next` calls are held open, as when
/// Lambda freezes the environment between invocations. Returns its address and what the
/// function answered (path, body).
/// What the function sent back to the runtime API: (path, body) per request.
type Answers = Arc<Mutex<Vec<(String, String)>>>;

fn lambda_runtime_api(event: serde_json::Value) -> (String, Answers) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let pending = Arc::new(Mutex::new(Some(event.to_string())));
    let keep = answers.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (keep, pending) = (keep.clone(), pending.clone());
            std::thread::spawn(move || serve_runtime_api(conn, &keep, &pending));
        }
    });
    (addr, answers)
}

fn serve_runtime_api(
    conn: TcpStream,
    answers: &Mutex<Vec<(String, String)>>,
    pending: &Mutex<Option<String>>,
) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut len, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(len, 0);
            r.read_exact(&mut body).unwrap();
        }
        if path == "/2018-06-01/runtime/invocation/next" {
            let Some(event) = pending.lock().unwrap().take() else {
                // The environment is "frozen": no further invocation.
                std::thread::sleep(Duration::from_secs(3600));
                return;
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 lambda-runtime-aws-request-id: req-1\r\nlambda-runtime-deadline-ms: 9999999999999\r\n\
                 lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:ingest\r\n\r\n",
                event.len()
            );
            let _ = w.write_all(head.as_bytes());
            let _ = w.write_all(event.as_bytes());
            continue;
        }
        answers
            .lock()
            .unwrap()
            .push((path, String::from_utf8_lossy(&body).into_owned()));
        let _ = w.write_all(
            b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        );
    }
}

#[test]
fn serve_under_lambda_exports_an_invocations_spans_before_the_next_one() {
    // A pipeline for the topology; the Lambda process below is the only one exporting.
    let dev = start_dev(&[], &[]);
    let (otlp, spans) = otlp_receiver();
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    let body = String::from_utf8(comment_payload("/trace from lambda")).unwrap();
    let event = serde_json::json!({
        "version": "2.0", "routeKey": "$default", "rawPath": "/webhooks/github", "rawQueryString": "",
        "headers": {
            "x-github-event": "issue_comment", "x-github-delivery": uuid_like(),
            "content-type": "application/json",
            "traceparent": format!("00-{trace_id}-00f067aa0ba902b7-01")
        },
        "requestContext": {
            "accountId": "123456789012", "apiId": "api", "domainName": "x.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "x", "requestId": "r-1", "routeKey": "$default", "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 1767225600000u64,
            "http": {"method": "POST", "path": "/webhooks/github", "protocol": "HTTP/1.1",
                     "sourceIp": "192.0.2.1", "userAgent": "GitHub-Hookshot/1"}
        },
        "body": body, "isBase64Encoded": false
    });
    let (api, answers) = lambda_runtime_api(event);
    let mut child = Command::new(BIN)
        .args(["serve", "--insecure-dev"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JETRUN_NATS_URL", &dev.nats)
        .env("AWS_LAMBDA_RUNTIME_API", &api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "ingest")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_REGION", "us-east-1")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        // The batch would wait ten minutes: only the end-of-invocation flush exports.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        if let Some(a) = answers.lock().unwrap().first().cloned() {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the function never answered its invocation"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        answer.0, "/2018-06-01/runtime/invocation/req-1/response",
        "{answer:?}"
    );
    let answer: serde_json::Value = serde_json::from_str(&answer.1).unwrap();
    assert_eq!(answer["statusCode"], 202, "{answer}");

    // The process now waits for an invocation that does not come (frozen, on Lambda):
    // the webhook's spans must already be on their way, in the caller's trace.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<Got> = spans.lock().unwrap().clone();
        let ours: Vec<&Got> = got.iter().filter(|s| s.trace_id == trace_id).collect();
        if !ours.is_empty() {
            assert!(
                ours.iter().any(|s| s.parent == "00f067aa0ba902b7"),
                "the webhook's span is the caller's child: {ours:#?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no span of the invocation exported while the function waits for the next: {got:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
