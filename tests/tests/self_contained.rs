#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The repository is self-contained: a fresh clone with nothing beside it passes the
//! README's test command. This test reads every tracked file and refuses any reference to
//! a path outside the repository (the workplace's `shared/` folder, `/work/...`, or a
//! `CARGO_MANIFEST_DIR`-relative path that climbs above the repository root), and checks
//! that the vendored fixtures the tests read are really in the repository, with their
//! licence.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tracked_files(root: &Path) -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(root)
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
        .collect()
}

/// Lexically normalises `p` (no symlinks followed): `a/b/../c` → `a/c`.
fn normalise(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The crate directory a source file belongs to (the nearest folder with a Cargo.toml).
fn crate_dir(file: &Path) -> Option<PathBuf> {
    let mut dir = file.parent()?;
    loop {
        if dir.join("Cargo.toml").is_file() {
            return Some(dir.to_path_buf());
        }
        dir = dir.parent()?;
    }
}

#[test]
fn no_tracked_file_reads_outside_the_repository() {
    let root = repo_root();
    let this = Path::new(file!()).file_name().unwrap().to_owned();
    let mut offences = Vec::new();
    for file in tracked_files(&root) {
        if file.file_name() == Some(this.as_os_str())
            || file.components().any(|c| c.as_os_str() == "fixtures")
        {
            continue;
        }
        let Some(ext) = file.extension().and_then(|e| e.to_str()) else {
            continue;
        };
        if !["rs", "sh", "md", "toml", "yaml", "yml", "tf", "conf"].contains(&ext) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let rel = file.strip_prefix(&root).unwrap().display().to_string();
        for (n, line) in text.lines().enumerate() {
            // Built from parts, so the needles do not stand in this file as paths.
            let needles = [
                concat!("shared/", "fixtures"),
                concat!("/work/", "shared"),
                concat!("..", "/shared/"),
            ];
            if needles.iter().any(|n| line.contains(n)) {
                offences.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
        // Paths built from CARGO_MANIFEST_DIR must stay inside the repository.
        if ext == "rs" && text.contains("CARGO_MANIFEST_DIR") {
            let crate_dir = crate_dir(&file).unwrap();
            for lit in string_literals(&text) {
                let lit = lit.trim_start_matches('/');
                if !lit.starts_with("..") {
                    continue;
                }
                let target = normalise(&crate_dir.join(lit));
                if !target.starts_with(&root) {
                    offences.push(format!("{rel}: {lit:?} resolves to {}", target.display()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "paths outside the repository:\n{}",
        offences.join("\n")
    );
}

#[test]
fn vendored_webhook_fixtures_are_present_with_their_licence() {
    let dir = repo_root().join("fixtures/github-webhooks");
    let licence = std::fs::read_to_string(dir.join("LICENSE")).expect("fixtures/github-webhooks/LICENSE");
    assert!(licence.contains("MIT License") && licence.contains("octokit/webhooks"));
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("fixtures README");
    assert!(readme.contains("octokit/webhooks"), "the README names the source");
    let mut payloads = 0;
    for event in std::fs::read_dir(&dir).unwrap() {
        let event = event.unwrap().path();
        if event.is_dir() {
            for f in std::fs::read_dir(&event).unwrap() {
                let f = f.unwrap().path();
                let body = std::fs::read(&f).unwrap();
                serde_json::from_slice::<serde_json::Value>(&body)
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", f.display()));
                payloads += 1;
            }
        }
    }
    // The tests (schemas, ingest fuzz, route rules) rely on the full set.
    assert!(payloads >= 270, "only {payloads} payloads vendored");
    assert!(dir.join("issue_comment/created.payload.json").is_file());
}

/// The contents of plain `"..."` string literals in Rust source (escapes are not
/// interpreted: paths do not use them).
fn string_literals(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut prev = '\0';
    for ch in text.chars() {
        match (&mut cur, ch) {
            (None, '"') if prev != '\'' && prev != '\\' => cur = Some(String::new()),
            (Some(s), '"') if prev != '\\' => {
                out.push(std::mem::take(s));
                cur = None;
            }
            (Some(s), c) => s.push(c),
            _ => {}
        }
        prev = ch;
    }
    out
}
