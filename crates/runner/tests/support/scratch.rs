//! A temporary directory for OCI runner tests that unmounts what tasks left mounted under
//! it (their `/work`, status and result tmpfs, which the runner unmounts only in
//! `remove`) before deleting it, so a test that ends without `remove` leaks no mount on
//! the machine. Shared by the OCI test files (`#[path]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// A temp dir whose leftover mounts are unmounted on drop.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
}

/// A new scratch directory.
pub fn tempdir() -> Scratch {
    Scratch {
        dir: Some(tempfile::tempdir().unwrap()),
    }
}

impl Scratch {
    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap()
    }
}

/// Mount points under `root`, deepest first (from `/proc/self/mountinfo`; spaces in paths
/// are octal-escaped there, which our temp paths never contain).
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        for m in mounts_under(dir.path()) {
            // Lazy: a task still holding it does not keep the mount alive on the host.
            let _ = std::process::Command::new("umount").arg("-l").arg(&m).status();
        }
        drop(dir);
    }
}
