//! Host port allocation for tasks that ask for ports (`spec.ports`).
//!
//! Each allocated port is a lock file `<data_dir>/ports/<port>` created with
//! `O_CREAT|O_EXCL` and holding the owner's token, so allocation is atomic across threads
//! and processes sharing the data dir. A port is also test-bound before it is handed out,
//! so ports already used by something outside jetrun are skipped. Ports are released by
//! the runner's `remove`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::task::io_err;
use crate::{RunnerError, RunnerErrorKind};

/// An inclusive range of host ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    /// First port (default 20000).
    pub start: u16,
    /// Last port, inclusive (default 29999).
    pub end: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        Self {
            start: 20000,
            end: 29999,
        }
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    /// Parses `START-END`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("expected START-END, got {s:?}"))?;
        let start: u16 = a.trim().parse().map_err(|e| format!("bad start port: {e}"))?;
        let end: u16 = b.trim().parse().map_err(|e| format!("bad end port: {e}"))?;
        if start == 0 || end < start {
            return Err(format!("bad port range {s:?}"));
        }
        Ok(Self { start, end })
    }
}

/// Allocates host ports from a range, atomically across processes.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    dir: PathBuf,
    range: PortRange,
}

impl PortAllocator {
    /// An allocator keeping its locks under `<data_dir>/ports`.
    pub fn new(data_dir: &Path, range: PortRange) -> Result<Self, RunnerError> {
        let dir = data_dir.join("ports");
        std::fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
        Ok(Self { dir, range })
    }

    /// Allocates one port per distinct name for `owner`. All or nothing: on
    /// [`RunnerErrorKind::Exhausted`] nothing stays allocated.
    pub fn allocate(&self, owner: &str, names: &[String]) -> Result<BTreeMap<String, u16>, RunnerError> {
        let mut out = BTreeMap::new();
        if names.is_empty() {
            return Ok(out);
        }
        let span = u32::from(self.range.end - self.range.start) + 1;
        // Start at a pseudo-random offset so concurrent allocators rarely collide.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id().wrapping_mul(2_654_435_761);
        let mut i = 0u32;
        for name in names {
            if name.is_empty() || out.contains_key(name) {
                continue;
            }
            loop {
                if i >= span {
                    self.release(owner, out.values().copied());
                    return Err(RunnerError::new(
                        RunnerErrorKind::Exhausted,
                        format!("no free port in {}-{}", self.range.start, self.range.end),
                    ));
                }
                let port = self.range.start + ((seed.wrapping_add(i)) % span) as u16;
                i += 1;
                if self.try_claim(owner, port)? {
                    out.insert(name.clone(), port);
                    break;
                }
            }
        }
        Ok(out)
    }

    fn try_claim(&self, owner: &str, port: u16) -> Result<bool, RunnerError> {
        let p = self.dir.join(port.to_string());
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(mut f) => {
                f.write_all(owner.as_bytes())
                    .map_err(|e| io_err("write", &p, e))?;
                // Something outside jetrun may hold it: skip such ports (keep no lock).
                if std::net::TcpListener::bind(("0.0.0.0", port)).is_err() {
                    let _ = std::fs::remove_file(&p);
                    return Ok(false);
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("create", &p, e)),
        }
    }

    /// Releases `ports` held by `owner` (ports held by someone else are left alone).
    pub fn release(&self, owner: &str, ports: impl IntoIterator<Item = u16>) {
        for port in ports {
            let p = self.dir.join(port.to_string());
            if std::fs::read_to_string(&p).map(|o| o == owner).unwrap_or(false) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }

    /// Releases ports whose owner is no longer live (`live(owner)` is false), e.g. locks
    /// left by tasks whose directories were deleted; returns how many were freed.
    pub fn reclaim(&self, live: impl Fn(&str) -> bool) -> usize {
        let mut n = 0;
        for (port, owner) in self.held() {
            if !live(&owner) {
                self.release(&owner, [port]);
                n += 1;
            }
        }
        n
    }

    /// Every allocated port and its owner.
    pub fn held(&self) -> Vec<(u16, String)> {
        let mut out: Vec<(u16, String)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let port = e.file_name().to_str()?.parse().ok()?;
                Some((port, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn ports_are_unique_exhaust_and_release() {
        let d = tempfile::tempdir().unwrap();
        let a = PortAllocator::new(
            d.path(),
            PortRange {
                start: 29500,
                end: 29503,
            },
        )
        .unwrap();
        let b = a.clone();
        let p1 = a.allocate("t1", &["http".into(), "admin".into()]).unwrap();
        let p2 = b.allocate("t2", &["http".into(), "x".into()]).unwrap();
        let mut all: Vec<u16> = p1.values().chain(p2.values()).copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4);
        let e = a.allocate("t3", &["http".into()]).unwrap_err();
        assert_eq!(e.kind, RunnerErrorKind::Exhausted);
        assert_eq!(a.reclaim(|o| o != "t1"), 2);
        let p3 = a.allocate("t3", &["http".into(), "admin".into()]).unwrap();
        assert_eq!(p3.len(), 2);
        assert!("20000-29999".parse::<PortRange>().is_ok());
        assert!("3-1".parse::<PortRange>().is_err());
    }
}
