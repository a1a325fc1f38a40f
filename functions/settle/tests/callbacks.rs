//! Completion callbacks confined (issue 8): settle against a real nats-server and real
//! HTTP listeners on loopback. Each attack publishes a terminal state change on the
//! callback subject exactly as the store does, so it reaches settle whatever submission
//! checked, and asserts that nothing was sent and the refusal was dead-lettered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use jetrun_core::dlq::DeadLetter;
use jetrun_core::job::Callback;
use jetrun_core::schema::types;
use jetrun_core::{JobRecord, JobSpec, JobStatus, Names};
use jetrun_harness::NatsServer;
use jetrun_nats::store::StateChange;
use jetrun_nats::{EventPublisher, JobStore, Topology};
use jetrun_settle::{CALLBACK_REFUSED, Config, Settle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct Rig {
    _server: NatsServer,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    names: Names,
    store: JobStore,
    publisher: EventPublisher,
    shutdown: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn rig(config: Config) -> Rig {
    let server = NatsServer::start().unwrap();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::default();
    Topology::new(names.clone()).apply(&js).await.unwrap();
    let store = JobStore::open(&js, &names, "/test/callbacks").await.unwrap();
    let publisher = EventPublisher::new(js.clone(), "/test/callbacks");
    let ctx = jetrun_host::Context::from_client(client.clone(), names.clone())
        .await
        .unwrap();
    let settle = Settle::new(
        ctx,
        Config {
            callback_secret: Some("s3cret".into()),
            callback_timeout: Duration::from_secs(3),
            ..config
        },
    );
    settle.ensure_consumers().await.unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(settle.run(shutdown.clone()));
    Rig {
        _server: server,
        client,
        js,
        names,
        store,
        publisher,
        shutdown,
    }
}

fn spec(tenant: &str, cb: Callback) -> JobSpec {
    let mut s = JobSpec::new("default", "busybox", vec!["true".into()]);
    s.tenant = Some(tenant.into());
    s.callback = Some(cb);
    s
}

impl Rig {
    /// A job of another tenant, stored as the store stores it; returns its id and revision.
    async fn victim(&self) -> (String, u64) {
        let mut s = JobSpec::new("default", "busybox", vec!["sleep".into(), "60".into()]);
        s.tenant = Some("victim".into());
        let rec = JobRecord::new(uuid::Uuid::now_v7().to_string(), s, None, None);
        let a = self.store.admit(rec).await.unwrap();
        (a.record().id.clone(), a.revision())
    }

    /// Publishes the terminal state change of a job with `spec` on the callback subject,
    /// as the store does when such a job ends. Returns the job id.
    async fn finish(&self, spec: JobSpec) -> String {
        self.finish_traced(spec, None, None).await
    }

    /// [`Rig::finish`] with the W3C context the store's publish carried.
    async fn finish_traced(
        &self,
        spec: JobSpec,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        let mut rec = JobRecord::new(id.clone(), spec, None, None);
        rec.status = JobStatus::Succeeded;
        rec.exit_code = Some(0);
        rec.finished_at = Some(jetrun_core::now());
        let change = StateChange {
            job_id: id.clone(),
            queue: rec.queue.clone(),
            from: Some(JobStatus::Running),
            to: JobStatus::Succeeded,
            attempt: 1,
            exit_code: Some(0),
            error: None,
            at: jetrun_core::now(),
            record: rec.clone(),
        };
        let env = self
            .publisher
            .envelope(types::JOB_STATE_CHANGED)
            .with_id(format!("{id}.3.callback"))
            .with_subject(id.clone())
            .with_trace(traceparent.map(str::to_string), tracestate.map(str::to_string));
        self.publisher
            .send_raw(
                self.names.job_callback(&rec.queue, &id),
                &env,
                Bytes::from(serde_json::to_vec(&change).unwrap()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        id
    }

    /// The dead letter of `job_id`'s callback, waiting up to `within` for it.
    async fn dead_letter(&self, job_id: &str, within: Duration) -> DeadLetter {
        let deadline = Instant::now() + within;
        loop {
            let all = jetrun_nats::dlq::list(&self.js, &self.names, 0, 1000)
                .await
                .unwrap();
            if let Some(s) = all.into_iter().find(|s| s.entry.subject.ends_with(job_id)) {
                return s.entry;
            }
            assert!(
                Instant::now() < deadline,
                "no dead letter for the callback of {job_id} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn assert_no_dead_letter(&self, job_id: &str) {
        let all = jetrun_nats::dlq::list(&self.js, &self.names, 0, 1000)
            .await
            .unwrap();
        let hit = all.iter().find(|s| s.entry.subject.ends_with(job_id));
        assert!(
            hit.is_none(),
            "unexpected dead letter: {:?}",
            hit.map(|s| &s.entry)
        );
    }
}

fn assert_refused(dl: &DeadLetter, mentions: &[&str]) {
    assert_eq!(dl.reason_kind, CALLBACK_REFUSED, "{dl:?}");
    assert_eq!(dl.deliveries, 1, "a refused callback is not retried: {dl:?}");
    for m in mentions {
        assert!(
            dl.reason.contains(m),
            "reason {:?} does not mention {m:?}",
            dl.reason
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_callbacks_outside_the_tenant_namespace_are_refused_and_touch_nothing() {
    let rig = rig(Config::default()).await;
    let (victim, victim_rev) = rig.victim().await;
    let mut cancel_sub = rig.client.subscribe(rig.names.job_cancel(&victim)).await.unwrap();
    let mut other_sub = rig.client.subscribe("callbacks.other-tenant.>").await.unwrap();
    let mut own_sub = rig.client.subscribe("callbacks.mallory.done").await.unwrap();
    rig.client.flush().await.unwrap();

    let attacks = [
        format!("$KV.{}.{victim}", rig.names.bucket_jobs()),
        rig.names.job_cancel(&victim),
        "callbacks.other-tenant.x".to_string(),
        "callbacks.>".to_string(),
        format!("$JS.API.STREAM.DELETE.{}", rig.names.stream_dlq()),
        "_INBOX.stolen".to_string(),
        "callbacks.mallory".to_string(),
    ];
    let mut ids = Vec::new();
    for subject in &attacks {
        let s = spec("mallory", Callback::Nats(subject.clone()));
        // Submission-time check refuses each (the lead's path); settle refuses again below.
        assert!(
            jetrun_core::callback::check(&s, "callbacks", rig.names.prefix()).is_err(),
            "{subject} passed the check"
        );
        ids.push((subject.clone(), rig.finish(s).await));
    }
    for (subject, id) in &ids {
        let dl = rig.dead_letter(id, Duration::from_secs(10)).await;
        assert_refused(&dl, &[subject.as_str()]);
    }
    // A legitimate one after them, on the same consumer: delivered, so the refusals above
    // were settle's decision, not a dead consumer.
    let ok = rig
        .finish(spec("mallory", Callback::Nats("callbacks.mallory.done".into())))
        .await;
    let m = tokio::time::timeout(Duration::from_secs(10), own_sub.next())
        .await
        .expect("the legitimate callback")
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["job_id"], ok.as_str());
    rig.assert_no_dead_letter(&ok).await;

    // The victim's record is exactly as it was, and still reads.
    let (rec, rev) = rig.store.get(&victim).await.unwrap().expect("victim record");
    assert_eq!(rev, victim_rev, "the victim's record was rewritten");
    assert_eq!(rec.status, JobStatus::Queued);
    rig.store
        .list("default", None, 100)
        .await
        .expect("listing still works");
    // Nothing reached the control subject or the other tenant's namespace.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), cancel_sub.next())
            .await
            .is_err(),
        "a cancel reached the victim"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), other_sub.next())
            .await
            .is_err(),
        "a message reached another tenant's namespace"
    );
    // The DLQ stream (target of the `$JS.API` attack) is still there.
    rig.js
        .get_stream(rig.names.stream_dlq())
        .await
        .expect("DLQ stream");
}

/// The requests a listener received: head and body.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTP listener on 127.0.0.1 that answers every request with `response` and records
/// what it received.
struct Listener {
    port: u16,
    requests: Requests,
    connections: Arc<Mutex<usize>>,
}

async fn listen(response: String) -> Listener {
    listen_with(response, false).await
}

/// `hold`: keep each connection open after the answer instead of closing it.
async fn listen_with(response: String, hold: bool) -> Listener {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let requests: Requests = Arc::default();
    let connections: Arc<Mutex<usize>> = Arc::default();
    let (reqs, conns) = (requests.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            *conns.lock().unwrap() += 1;
            let reqs = reqs.clone();
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break (head, buf[end + 4..end + 4 + len].to_vec());
                    }
                };
                reqs.lock().unwrap().push((head, body));
                let _ = s.write_all(response.as_bytes()).await;
                if hold {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Listener {
        port,
        requests,
        connections,
    }
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

impl Listener {
    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
    fn requests(&self) -> Vec<(String, Vec<u8>)> {
        self.requests.lock().unwrap().clone()
    }
    async fn wait_request(&self, within: Duration) -> (String, Vec<u8>) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(r) = self.requests().into_iter().next() {
                return r;
            }
            assert!(Instant::now() < deadline, "no request after {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn signature(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-jetrun-signature-256:")
                .map(|s| s.trim().to_string())
        })
        .expect("signature header")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_callbacks_to_loopback_are_refused_by_default() {
    let rig = rig(Config::default()).await;
    let l = listen(OK.into()).await;
    let p = l.port;
    let urls = [
        format!("http://127.0.0.1:{p}/hook"),
        // Other spellings of the same address: the URL parser normalises them to the
        // literal, which is checked before any connection.
        format!("http://2130706433:{p}/hook"),
        format!("http://0x7f.0.0.1:{p}/hook"),
        format!("http://[::ffff:127.0.0.1]:{p}/hook"),
        // A name resolving to loopback goes through the guarded resolver.
        format!("http://localhost:{p}/hook"),
    ];
    let mut ids = Vec::new();
    for u in &urls {
        ids.push((
            u.clone(),
            rig.finish(spec("mallory", Callback::Http(u.clone()))).await,
        ));
    }
    for (u, id) in &ids {
        let dl = rig.dead_letter(id, Duration::from_secs(10)).await;
        assert_refused(&dl, &["loopback"]);
        assert!(
            dl.reason.contains("127.0.0.1") || dl.reason.contains("::1"),
            "{u}: {}",
            dl.reason
        );
    }
    assert_eq!(l.connections(), 0, "the listener was reached: {:?}", l.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_callbacks_to_allow_listed_loopback_are_delivered_signed() {
    let rig = rig(Config {
        callback_allow_hosts: vec!["127.0.0.1/32".into()],
        ..Config::default()
    })
    .await;
    let l = listen(OK.into()).await;
    let id = rig
        .finish(spec(
            "mallory",
            Callback::Http(format!("http://127.0.0.1:{}/hook", l.port)),
        ))
        .await;
    let (head, body) = l.wait_request(Duration::from_secs(10)).await;
    assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["job_id"], id.as_str());
    assert_eq!(signature(&head), jetrun_settle::sign(b"s3cret", &body));
    // Only that address: the rest of 127/8 stays refused.
    let other = rig
        .finish(spec(
            "mallory",
            Callback::Http(format!("http://127.0.0.2:{}/n", l.port)),
        ))
        .await;
    assert_refused(
        &rig.dead_letter(&other, Duration::from_secs(10)).await,
        &["127.0.0.2"],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.assert_no_dead_letter(&id).await;
    assert_eq!(l.requests().len(), 1, "{:?}", l.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_callbacks_to_an_allow_listed_host_name_are_delivered() {
    let rig = rig(Config {
        callback_allow_hosts: vec!["localhost".into()],
        ..Config::default()
    })
    .await;
    let l = listen(OK.into()).await;
    let id = rig
        .finish(spec(
            "mallory",
            Callback::Http(format!("http://localhost:{}/hook", l.port)),
        ))
        .await;
    let (_, body) = l.wait_request(Duration::from_secs(10)).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["job_id"], id.as_str());
    // The name is allowed, not the address behind it.
    let literal = rig
        .finish(spec(
            "mallory",
            Callback::Http(format!("http://127.0.0.1:{}/x", l.port)),
        ))
        .await;
    assert_refused(
        &rig.dead_letter(&literal, Duration::from_secs(10)).await,
        &["127.0.0.1"],
    );
    assert_eq!(l.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_callbacks_to_metadata_and_private_addresses_are_refused_without_connecting() {
    let rig = rig(Config::default()).await;
    let cases = [
        ("http://169.254.169.254/latest/meta-data/iam/", "metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
        ("http://[::ffff:a9fe:a9fe]/latest/", "metadata"),
        ("http://10.0.0.1/", "private"),
        ("http://192.168.1.1:8080/", "private"),
        ("http://100.100.100.200/", "carrier-grade"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0:4222/", "unspecified"),
    ];
    let started = Instant::now();
    let mut ids = Vec::new();
    for (u, why) in cases {
        ids.push((
            u,
            why,
            rig.finish(spec("mallory", Callback::Http(u.into()))).await,
        ));
    }
    for (u, why, id) in ids {
        let dl = rig.dead_letter(&id, Duration::from_secs(10)).await;
        assert_refused(&dl, &[why]);
        assert!(dl.reason.contains("refused"), "{u}: {}", dl.reason);
    }
    // No attempt waited on a connection (the callback timeout is 3 s; 169.254.169.254
    // and 10.0.0.1 would hang or fail only after it): all refused at once.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refusals took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_redirects_are_not_followed() {
    let rig = rig(Config {
        callback_allow_hosts: vec!["127.0.0.1/32".into()],
        ..Config::default()
    })
    .await;
    let inner = listen(OK.into()).await;
    let redirect = listen(format!(
        "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{}/internal\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        inner.port
    ))
    .await;
    let meta = listen(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://169.254.169.254/latest/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            .into(),
    )
    .await;
    let a = rig
        .finish(spec(
            "mallory",
            Callback::Http(format!("http://127.0.0.1:{}/", redirect.port)),
        ))
        .await;
    let b = rig
        .finish(spec(
            "mallory",
            Callback::Http(format!("http://127.0.0.1:{}/", meta.port)),
        ))
        .await;
    for id in [&a, &b] {
        let dl = rig.dead_letter(id, Duration::from_secs(10)).await;
        assert_eq!(dl.reason_kind, "callback_rejected", "{dl:?}");
        assert!(dl.reason.contains("redirects are not followed"), "{}", dl.reason);
        assert_eq!(dl.deliveries, 1, "a redirect is not retried");
    }
    assert_eq!(redirect.requests().len(), 1);
    assert_eq!(meta.requests().len(), 1);
    assert_eq!(inner.connections(), 0, "the redirect was followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_http_failures_are_retried_then_dead_lettered() {
    let rig = rig(Config {
        callback_allow_hosts: vec!["127.0.0.1/32".into()],
        callback_max_deliveries: 2,
        ..Config::default()
    })
    .await;
    let l =
        listen("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into())
            .await;
    let id = rig
        .finish(spec(
            "mallory",
            Callback::Http(format!("http://127.0.0.1:{}/", l.port)),
        ))
        .await;
    let dl = rig.dead_letter(&id, Duration::from_secs(15)).await;
    assert_eq!(dl.reason_kind, "callback_failed", "{dl:?}");
    assert_eq!(dl.deliveries, 2);
    assert_eq!(l.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_or_endless_answer_is_read_only_up_to_the_limit() {
    let rig = rig(Config {
        callback_allow_hosts: vec!["127.0.0.1/32".into()],
        ..Config::default()
    })
    .await;
    // A 200 announcing 1 GiB, sending 200 KiB and then holding the connection: the
    // delivery is done after at most 64 KiB, without waiting for the rest (reading it all
    // would hang until the 3 s timeout and be retried).
    let l = listen_with(
        "HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n".to_string() + &"x".repeat(200 * 1024),
        true,
    )
    .await;
    let id = rig
        .finish(spec(
            "mallory",
            Callback::Http(format!("http://127.0.0.1:{}/", l.port)),
        ))
        .await;
    l.wait_request(Duration::from_secs(10)).await;
    // Acked (no dead letter, no retry) although the body never completes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    rig.assert_no_dead_letter(&id).await;
    assert_eq!(l.requests().len(), 1, "the delivery was retried");
}

/// The value of header `name` in a request head.
fn header(head: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .starts_with(&prefix)
            .then(|| l[prefix.len()..].trim().to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callbacks_carry_the_callback_span_as_a_child_of_the_job_trace() {
    // Spans are recorded and exported for real, to a local OTLP/HTTP listener.
    let otlp = listen(OK.into()).await;
    let endpoint = format!("http://127.0.0.1:{}", otlp.port);
    let cfg = jetrun_telemetry::OtelConfig::from_lookup(
        |k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| endpoint.clone()),
        "settle-test",
    )
    .unwrap()
    .unwrap();
    let guard = jetrun_telemetry::init_with("text", Some(cfg));
    assert!(guard.exporting());
    let rig = rig(Config {
        callback_allow_hosts: vec!["127.0.0.1/32".into()],
        ..Config::default()
    })
    .await;
    // The context the job's state change was published with.
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let job_tp = format!("00-{TRACE}-{PARENT}-01");
    let state = "vendor=x,other=y";

    let l = listen(OK.into()).await;
    let url = format!("http://127.0.0.1:{}/hook", l.port);
    rig.finish_traced(spec("mallory", Callback::Http(url)), Some(&job_tp), Some(state))
        .await;
    let (head, _) = l.wait_request(Duration::from_secs(10)).await;
    let tp = header(&head, "traceparent").unwrap_or_else(|| panic!("no traceparent: {head}"));
    let http = jetrun_telemetry::TraceParent::parse(&tp).unwrap_or_else(|| panic!("not W3C: {tp}"));
    assert_eq!(http.trace_id_hex(), TRACE, "{tp}");
    assert_ne!(http.parent_id_hex(), PARENT, "not a child span: {tp}");
    assert!(http.sampled(), "{tp}");
    assert_eq!(header(&head, "tracestate").as_deref(), Some(state), "{head}");

    // A NATS callback: the same, as message headers (the state change's own are replaced).
    let mut sub = rig.client.subscribe("callbacks.mallory.traced").await.unwrap();
    rig.client.flush().await.unwrap();
    rig.finish_traced(
        spec("mallory", Callback::Nats("callbacks.mallory.traced".into())),
        Some(&job_tp),
        Some(state),
    )
    .await;
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the NATS callback")
        .unwrap();
    let h = m.headers.expect("headers");
    let values: Vec<String> = h.get_all("traceparent").map(|v| v.as_str().to_string()).collect();
    assert_eq!(values.len(), 1, "one traceparent: {values:?}");
    let nats = jetrun_telemetry::TraceParent::parse(&values[0]).unwrap();
    assert_eq!(nats.trace_id_hex(), TRACE);
    assert_ne!(nats.parent_id_hex(), PARENT);
    assert_ne!(nats.parent_id, http.parent_id, "each callback has its own span");
    assert_eq!(h.get("tracestate").map(|v| v.as_str()), Some(state));

    // The ids in the headers are spans that were really exported (their 8 bytes are in an
    // OTLP request body), not ids made up for the header.
    drop(guard);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bodies: Vec<Vec<u8>> = otlp.requests().into_iter().map(|(_, b)| b).collect();
        let has = |id: &[u8; 8]| bodies.iter().any(|b| b.windows(8).any(|w| w == id));
        if has(&http.parent_id) && has(&nats.parent_id) {
            break;
        }
        assert!(Instant::now() < deadline, "callback spans not exported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
