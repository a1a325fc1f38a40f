//! The web console in a real browser: Debian's `chromium` driven by `chromedriver` over
//! plain WebDriver HTTP, against the real `jetrun dev` (managed nats-server, a worker
//! with the process runner, the HTTP endpoint). Saves screenshots of the main pages to
//! `docs/img/` (linked from docs/console.md) when `JETRUN_SCREENSHOTS=1`, else to a temp
//! dir.
//!
//! Fails where chromium or chromedriver is not installed (`scripts/setup.sh` installs
//! both): a browser test that skips would pass on nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_jetrun");
const ACME: &str = "acme-token-0123456789";
const OPS: &str = "ops-token-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A child process killed (SIGTERM, then SIGKILL) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request (`Connection: close`), answered status and body.
fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    // Read the head, then exactly the body (chromedriver keeps connections open).
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let chunked = head.contains("transfer-encoding: chunked");
    let mut body = raw[head_end..].to_vec();
    loop {
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if done || method == "HEAD" || status == 204 || status == 304 {
            break;
        }
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let mut out = String::new();
    if chunked {
        let mut rest = text.as_str();
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
    } else {
        out = text;
    }
    (status, out)
}

/// A WebDriver session on chromedriver.
struct Driver {
    base: String,
    session: String,
    _chromedriver: Proc,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let proc = Proc(child);
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let (st, body) = http("GET", &format!("{base}/status"), &[], None);
                if st == 200 && body.contains("\"ready\":true") {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    "--window-size=1280,800", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let (st, body) = http(
            "POST",
            &format!("{base}/session"),
            &[("Content-Type", "application/json")],
            Some(&caps.to_string()),
        );
        assert_eq!(st, 200, "new session: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Driver {
            base,
            session,
            _chromedriver: proc,
            _profile: profile,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let b = body.to_string();
        let (st, text) = http(
            method,
            &url,
            &[("Content-Type", "application/json")],
            (method == "POST").then_some(b.as_str()),
        );
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(st == 200, "{method} {path}: {st} {text}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    fn url(&self) -> String {
        self.cmd("GET", "/url", Value::Null).as_str().unwrap().to_string()
    }

    fn find(&self, css: &str) -> Option<String> {
        let url = format!("{}/session/{}/element", self.base, self.session);
        let body = json!({"using": "css selector", "value": css}).to_string();
        let (st, text) = http("POST", &url, &[("Content-Type", "application/json")], Some(&body));
        if st != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        v["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn wait_for(&self, css: &str, within: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            assert!(
                start.elapsed() < within,
                "no {css} on {} within {within:?}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn click(&self, el: &str) {
        self.cmd("POST", &format!("/element/{el}/click"), json!({}));
    }

    fn type_into(&self, el: &str, text: &str) {
        self.cmd("POST", &format!("/element/{el}/value"), json!({ "text": text }));
    }

    fn text(&self, el: &str) -> String {
        self.cmd("GET", &format!("/element/{el}/text"), Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn js(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", json!({"script": script, "args": []}))
    }

    fn accept_alert(&self) {
        self.cmd("POST", "/alert/accept", json!({}));
    }

    fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", "/screenshot", Value::Null);
        std::fs::write(path, base64_decode(v.as_str().unwrap())).unwrap();
    }

    fn window(&self) -> String {
        self.cmd("GET", "/window", Value::Null)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn new_window(&self) -> String {
        let v = self.cmd("POST", "/window/new", json!({"type": "tab"}));
        v["handle"].as_str().unwrap().to_string()
    }

    fn switch(&self, handle: &str) {
        self.cmd("POST", "/window", json!({ "handle": handle }));
    }

    fn size(&self, w: u32, h: u32) {
        self.cmd("POST", "/window/rect", json!({"width": w, "height": h}));
    }

    fn status(&self) -> String {
        self.js(
            "var e = document.getElementById('job-status'); return e ? e.getAttribute('data-status') : null;",
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::panic::catch_unwind(|| http("DELETE", &url, &[], None));
    }
}

/// Standard base64 (the screenshot), without a dependency.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            _ => 63,
        }
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// `jetrun dev` with API tokens, one job at a time, the process runner.
fn start_dev(dir: &Path) -> (Proc, String, String) {
    let mut child = Command::new(BIN)
        .arg("dev")
        .arg("--data-dir")
        .arg(dir)
        .arg("--nats-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--http")
        .arg(format!("127.0.0.1:{}", free_port()))
        .env_remove("JETRUN_NATS_URL")
        .env_remove("NATS_URL")
        .env("JETRUN_API_TOKENS", format!("acme:{ACME},*:{OPS}"))
        .env("JETRUN_MAX_CONCURRENT_JOBS", "1")
        .env("JETRUN_RUNNER", "process")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(90)).expect("no ready line");
    assert!(line.starts_with("ready "), "{line}");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    (proc, field("http"), field("nats"))
}

fn submit(base: &str, token: &str, script: &str) -> String {
    let body = json!({"queue": "default", "image": "busybox", "command": ["sh", "-c", script]});
    let auth = format!("Bearer {token}");
    let (st, text) = http(
        "POST",
        &format!("{base}/v1/jobs"),
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some(&body.to_string()),
    );
    assert!(st == 201 || st == 202, "{st} {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn api_status(base: &str, id: &str) -> String {
    let auth = format!("Bearer {OPS}");
    let (_, text) = http(
        "GET",
        &format!("{base}/v1/jobs/{id}"),
        &[("Authorization", &auth)],
        None,
    );
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v["status"].as_str().unwrap_or_default().to_string()
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "{what} not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sign_in(d: &Driver, base: &str, token: &str) {
    d.go(&format!("{base}/ui/login"));
    let field = d.wait_for("#token", Duration::from_secs(10));
    d.type_into(&field, token);
    let button = d.find("#sign-in").unwrap();
    d.click(&button);
    d.wait_for("#who", Duration::from_secs(10));
}

fn img_dir() -> PathBuf {
    let p = if std::env::var_os("JETRUN_SCREENSHOTS").is_some_and(|v| v == "1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/img")
    } else {
        std::env::temp_dir().join("jetrun-console-screenshots")
    };
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_a_real_browser() {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "{CHROMIUM} or {CHROMEDRIVER} missing: run scripts/setup.sh, which installs them"
    );
    let dir = tempfile::tempdir().unwrap();
    let (_dev, base, nats) = start_dev(dir.path());
    // Two services: one scalable, one scaled by its infrastructure.
    let client = async_nats::connect(&nats).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value("jetrun-scale").await.unwrap();
    for (svc, scalable) in [("bisect-workers", true), ("gpu-pool", false)] {
        let spec = json!({"service": svc, "queue": "default", "min": 0, "max": 4,
            "target_per_replica": 2, "scalable": scalable, "strategy": "infra", "backend": "signal"});
        kv.put(format!("spec.{svc}"), spec.to_string().into())
            .await
            .unwrap();
    }
    // A dead letter for its page: a submission that is not a CloudEvent, which dispatch
    // dead-letters with its reason.
    js.publish("jetrun.job.submit.default", "not a job".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let img = img_dir();
    let b = base.clone();
    tokio::task::spawn_blocking(move || browse(&b, &img))
        .await
        .unwrap();
}

fn browse(base: &str, img: &Path) {
    let d = Driver::start();
    // 1. Sign in as a tenant.
    sign_in(&d, base, ACME);
    assert!(d.url().ends_with("/ui/jobs"), "{}", d.url());
    let cookies = d.cmd("GET", "/cookie", Value::Null);
    let session = cookies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "jetrun_session")
        .expect("a session cookie")
        .clone();
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
    assert!(!d.url().contains(ACME));
    let storage = d.js("return JSON.stringify(window.localStorage) + JSON.stringify(window.sessionStorage) + document.cookie;");
    assert!(
        !storage.as_str().unwrap().contains(ACME),
        "token in browser storage"
    );

    // 2. A job that holds the only slot, and one that waits behind it.
    let blocker = submit(base, ACME, "echo blocker started; sleep 60");
    wait_until("the blocker runs", Duration::from_secs(30), || {
        api_status(base, &blocker) == "running"
    });
    let job = submit(base, ACME, "echo hello from the console; sleep 2; echo done");
    assert_eq!(api_status(base, &job), "queued");

    d.go(&format!("{base}/ui/jobs"));
    d.wait_for(&format!("tr[data-job='{job}']"), Duration::from_secs(10));
    d.screenshot(&img.join("console-jobs.png"));

    // 3. Watch it on its page, which is not reloaded from here on.
    d.go(&format!("{base}/ui/jobs/{job}"));
    d.wait_for("#job-status", Duration::from_secs(10));
    d.js("window.__jetrunNotReloaded = 42;");
    assert_eq!(d.status(), "queued");
    let watching = d.window();

    // 4. Cancel the running blocker from another tab.
    let other = d.new_window();
    d.switch(&other);
    d.go(&format!("{base}/ui/jobs/{blocker}"));
    wait_until("the blocker's page says running", Duration::from_secs(10), || {
        d.status() == "running"
    });
    let cancel = d.wait_for("#cancel", Duration::from_secs(5));
    d.click(&cancel);
    d.accept_alert();
    wait_until(
        "the blocker is cancelled on its page",
        Duration::from_secs(30),
        || d.status() == "cancelled",
    );

    // 5. Back on the waiting job's page: queued → running → succeeded, live.
    d.switch(&watching);
    let mut seen = vec!["queued".to_string()];
    let start = Instant::now();
    while seen.last().map(String::as_str) != Some("succeeded") {
        let s = d.status();
        if !s.is_empty() && seen.last() != Some(&s) {
            seen.push(s);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "statuses seen: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("statuses seen on the page: {seen:?}");
    assert!(seen.contains(&"running".to_string()), "{seen:?}");
    assert_eq!(
        d.js("return window.__jetrunNotReloaded;"),
        json!(42),
        "the page was reloaded"
    );
    // Its log followed on the page, and opens as text.
    wait_until("the log shows the output", Duration::from_secs(15), || {
        d.js("return document.getElementById('log').textContent;")
            .as_str()
            .is_some_and(|t| t.contains("hello from the console") && t.contains("done"))
    });
    assert_eq!(d.js("return window.__jetrunNotReloaded;"), json!(42));
    d.screenshot(&img.join("console-job.png"));
    let link = d.find("#log-link").unwrap();
    d.click(&link);
    wait_until("the log page", Duration::from_secs(10), || {
        d.url().ends_with("/log")
    });
    let body = d.find("body").unwrap();
    assert!(d.text(&body).contains("hello from the console"));

    // 6. Scale, as a tenant: no controls, the note, and a change refused.
    d.go(&format!("{base}/ui/scale"));
    d.wait_for("#note-gpu-pool", Duration::from_secs(10));
    assert!(d.find("[id^='controls-']").is_none(), "a tenant sees no controls");
    d.js(
        "var f = document.createElement('form'); f.method = 'post'; f.action = '/ui/scale/bisect-workers';\
         var c = document.createElement('input'); c.name = 'csrf'; c.value = document.querySelector('input[name=csrf]').value; f.appendChild(c);\
         var a = document.createElement('input'); a.name = 'action'; a.value = 'reset'; f.appendChild(a);\
         document.body.appendChild(f); f.submit();",
    );
    let err = d.wait_for("#error", Duration::from_secs(10));
    assert!(
        d.text(&err).contains("needs an operator token"),
        "{}",
        d.text(&err)
    );

    // 7. As an operator: the other pages, with the screenshots.
    let out = d.find("form[action='/ui/logout'] button").unwrap();
    d.click(&out);
    d.wait_for("#token", Duration::from_secs(10));
    d.screenshot(&img.join("console-sign-in.png"));
    sign_in(&d, base, OPS);
    d.go(&format!("{base}/ui/queues"));
    d.wait_for("#queues", Duration::from_secs(10));
    // The columns of the last minute's rates, beside the depth.
    assert!(d.find("#queues td.submitted-rate").is_some());
    assert!(d.find("#queues td.finished-rate").is_some());
    d.screenshot(&img.join("console-queues.png"));
    d.go(&format!("{base}/ui/scale"));
    d.wait_for("#controls-bisect-workers", Duration::from_secs(10));
    assert!(d.find("#controls-gpu-pool").is_none());
    assert!(d.find("#note-gpu-pool").is_some());
    d.screenshot(&img.join("console-scale.png"));
    d.go(&format!("{base}/ui/nodes"));
    d.wait_for("#nodes", Duration::from_secs(10));
    d.screenshot(&img.join("console-nodes.png"));
    wait_until("the dead letter is listed", Duration::from_secs(20), || {
        d.go(&format!("{base}/ui/dlq"));
        d.find("#dlq tr[data-seq]").is_some()
    });
    let row = d.find("#dlq tr[data-seq]").unwrap();
    assert!(d.text(&row).contains("invalid_event"), "{}", d.text(&row));
    assert!(d.find("#dlq form[action$='/replay'] button").is_some());
    d.screenshot(&img.join("console-dead-letters.png"));
    // Phone width.
    d.size(390, 844);
    d.go(&format!("{base}/ui/jobs/{job}"));
    d.wait_for("#job-status", Duration::from_secs(10));
    let overflow = d.js("return document.documentElement.scrollWidth > window.innerWidth + 1;");
    assert_eq!(overflow, json!(false), "the page scrolls sideways at phone width");
    d.screenshot(&img.join("console-job-phone.png"));
}
