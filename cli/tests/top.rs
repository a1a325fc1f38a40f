//! `jetrun nodes` and `jetrun top` against a real `jetrun dev` (real nats-server, the
//! process runner): a running job is listed under the node that runs it, and `top` shows
//! it with that node, in text and in JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{code, jetrun, start_dev, stderr, stdout};

/// Polls `f` every 200 ms until it gives a value (panics after `secs` with the last state).
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if start.elapsed() > Duration::from_secs(secs) => panic!("{what}: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn nodes_and_top_show_each_running_job_with_its_node() {
    let dev = start_dev(&["--runner", "process"]);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let out = jetrun(
            &dev,
            &[
                "submit",
                "--queue",
                "slow",
                "--image",
                "busybox",
                "--",
                "sh",
                "-c",
                "sleep 120",
            ],
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        ids.push(stdout(&out).trim().to_string());
    }

    // The node lists both jobs once they run, and its heartbeat counts their tasks.
    let node = eventually(30, "jetrun nodes --json never listed both jobs", || {
        let out = jetrun(&dev, &["nodes", "--json"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let nodes = v["nodes"].as_array().unwrap();
        let n = nodes
            .iter()
            .find(|n| n["running"] == 2 && n["tasks"] == 2)
            .ok_or_else(|| format!("{v:#}"))?;
        let jobs: Vec<&str> = n["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["status"] == "running")
            .map(|j| j["job_id"].as_str().unwrap())
            .collect();
        if ids.iter().all(|id| jobs.contains(&id.as_str())) {
            Ok(n.clone())
        } else {
            Err(format!("{v:#}"))
        }
    });
    let node_id = node["node_id"].as_str().unwrap().to_string();
    assert_eq!(node["runner"], "process", "{node:#}");
    for j in node["jobs"].as_array().unwrap() {
        assert_eq!(j["queue"], "slow");
        assert_eq!(j["node_id"], node_id.as_str());
        assert_eq!(j["attempt"], 1);
    }
    assert!(node["seen_seconds_ago"].as_f64().unwrap() < 30.0, "{node:#}");

    // Plain `nodes`: the node's line, then one line per job under it.
    let text = stdout(&jetrun(&dev, &["nodes"]));
    let line = text
        .lines()
        .find(|l| l.starts_with(&node_id))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cols[..4], &[node_id.as_str(), "process", "2", "2"], "{text}");
    for id in &ids {
        let l = text
            .lines()
            .find(|l| l.trim_start().starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not in\n{text}"));
        assert!(l.contains("slow") && l.contains("running"), "{l}");
    }

    // `top --once --json`: the running jobs with their node, and the queue's count.
    let out = jetrun(&dev, &["top", "--once", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let running = f["running_jobs"].as_array().unwrap();
    for id in &ids {
        let j = running
            .iter()
            .find(|j| j["job_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not running in {f:#}"));
        assert_eq!(j["node_id"], node_id.as_str(), "{f:#}");
        assert_eq!(j["queue"], "slow");
    }
    let q = f["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "slow")
        .unwrap();
    assert_eq!(q["running"], 2, "{f:#}");
    assert_eq!(q["pending"], 0, "{f:#}");

    // `top --once` as text: each job's line ends with its node.
    let text = stdout(&jetrun(&dev, &["top", "--once"]));
    assert!(!text.contains('\x1b'), "{text:?}");
    let slow: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("slow "))
        .unwrap_or_else(|| panic!("{text}"))
        .split_whitespace()
        .collect();
    let header: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("QUEUE "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        slow[header.iter().position(|c| *c == "RUNNING").unwrap()],
        "2",
        "{text}"
    );
    for id in &ids {
        let l = text
            .lines()
            .find(|l| l.trim_start().starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not in\n{text}"));
        assert!(l.trim_end().ends_with(&node_id), "{l}\n{text}");
    }

    // Cancelled, the jobs leave the node's list.
    for id in &ids {
        let out = jetrun(&dev, &["jobs", "cancel", id]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    eventually(30, "cancelled jobs still listed", || {
        let v: serde_json::Value =
            serde_json::from_slice(&jetrun(&dev, &["nodes", "--json"]).stdout).unwrap();
        let n = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == node_id.as_str())
            .cloned()
            .ok_or_else(|| format!("node gone: {v:#}"))?;
        if n["running"] == 0 && n["jobs"].as_array().unwrap().is_empty() {
            Ok(())
        } else {
            Err(format!("{n:#}"))
        }
    });
}

#[test]
fn nodes_watch_as_json_writes_one_document_per_interval() {
    use std::io::{BufRead, BufReader};
    let dev = start_dev(&["--runner", "process"]);
    let mut child = std::process::Command::new(common::BIN)
        .args(["nodes", "--watch", "--json", "--interval", "200ms"])
        .env("JETRUN_NATS_URL", &dev.nats)
        .env_remove("NATS_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let start = Instant::now();
    for _ in 0..3 {
        let l = lines.next().expect("a line").unwrap();
        let v: serde_json::Value = serde_json::from_str(&l).expect("one JSON document per line");
        assert!(!v["nodes"].as_array().unwrap().is_empty(), "{v:#}");
    }
    assert!(start.elapsed() < Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
}
