//! Task logs: [`tail`] reads the last lines by seeking backwards from the end in fixed-size
//! blocks, so its cost depends on the lines asked for, not on the file's size; [`follow`]
//! streams lines appended after a point.
//!
//! Used by the node agent's logs service and by `jetrun jobs logs ID --tail N --follow`:
//! call [`tail_with_offset`] then [`follow_from`] with the returned offset to get the tail
//! and everything after it without a gap or a duplicate.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::Stream;

/// Size of each backward read.
const BLOCK: u64 = 64 * 1024;
/// At most this many bytes are read backwards, whatever `n` is (a guard against a huge
/// file without newlines).
const MAX_SCAN: u64 = 64 * 1024 * 1024;
/// How often [`follow`] looks for new data.
const POLL: Duration = Duration::from_millis(100);

/// The last `n` lines of the file (without their newlines). A missing file has no lines.
pub fn tail(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    tail_with_offset(path, n).map(|(lines, _)| lines)
}

/// The last `n` lines and the file offset they end at (pass it to [`follow_from`]).
pub fn tail_with_offset(path: &Path, n: usize) -> std::io::Result<(Vec<String>, u64)> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.seek(SeekFrom::End(0))?;
    if n == 0 || len == 0 {
        return Ok((Vec::new(), len));
    }
    // Collect blocks from the end until they hold n+1 newlines (the extra one bounds the
    // first line) or the start of the file is reached.
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = len;
    let mut newlines = 0usize;
    // A trailing newline ends the last line; it does not start an empty one.
    let mut trailing_checked = false;
    while pos > 0 && len - pos < MAX_SCAN {
        let start = pos.saturating_sub(BLOCK);
        let mut block = vec![0u8; (pos - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut block)?;
        newlines += block.iter().filter(|&&b| b == b'\n').count();
        if !trailing_checked {
            if block.last() == Some(&b'\n') {
                newlines -= 1;
            }
            trailing_checked = true;
        }
        block.extend_from_slice(&buf);
        buf = block;
        pos = start;
        if newlines > n {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let mut lines: Vec<&str> = text.split('\n').collect();
    if pos > 0 || len - pos >= MAX_SCAN {
        // The first piece is (part of) a line we were not asked for.
        if lines.len() > n {
            lines.remove(0);
        }
    }
    let skip = lines.len().saturating_sub(n);
    Ok((
        lines[skip..]
            .iter()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect(),
        len,
    ))
}

/// Lines appended to the file from now on (it may not exist yet). The stream never ends
/// by itself; drop it to stop. A truncated file is followed from its new start.
pub fn follow(path: PathBuf) -> impl Stream<Item = std::io::Result<String>> + Send + 'static {
    let start = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    follow_from(path, start)
}

/// Lines appended to the file after byte `offset`.
pub fn follow_from(
    path: PathBuf,
    offset: u64,
) -> impl Stream<Item = std::io::Result<String>> + Send + 'static {
    struct State {
        path: PathBuf,
        pos: u64,
        partial: Vec<u8>,
        ready: std::collections::VecDeque<String>,
    }
    let st = State {
        path,
        pos: offset,
        partial: Vec::new(),
        ready: Default::default(),
    };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(line) = st.ready.pop_front() {
                return Some((Ok(line), st));
            }
            let len = match tokio::fs::metadata(&st.path).await {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Some((Err(e), st)),
            };
            if len < st.pos {
                st.pos = 0;
                st.partial.clear();
            }
            if len == st.pos {
                tokio::time::sleep(POLL).await;
                continue;
            }
            let read = {
                let path = st.path.clone();
                let pos = st.pos;
                tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                    let mut f = std::fs::File::open(path)?;
                    f.seek(SeekFrom::Start(pos))?;
                    let mut chunk = Vec::new();
                    f.take(len - pos).read_to_end(&mut chunk)?;
                    Ok(chunk)
                })
                .await
            };
            let chunk = match read {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Some((Err(e), st)),
                Err(e) => return Some((Err(std::io::Error::other(e)), st)),
            };
            st.pos += chunk.len() as u64;
            st.partial.extend_from_slice(&chunk);
            while let Some(i) = st.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = st.partial.drain(..=i).collect();
                let s = String::from_utf8_lossy(&line[..line.len() - 1]);
                st.ready.push_back(s.trim_end_matches('\r').to_string());
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use futures::StreamExt;
    use std::io::Write;

    #[test]
    fn tail_small_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        assert!(tail(&p, 5).unwrap().is_empty());
        std::fs::write(&p, "one\ntwo\nthree\n").unwrap();
        assert_eq!(tail(&p, 2).unwrap(), vec!["two", "three"]);
        assert_eq!(tail(&p, 10).unwrap(), vec!["one", "two", "three"]);
        std::fs::write(&p, "one\ntwo\nno newline").unwrap();
        assert_eq!(tail(&p, 2).unwrap(), vec!["two", "no newline"]);
        assert!(tail(&p, 0).unwrap().is_empty());
    }

    #[test]
    fn tail_spans_blocks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b.log");
        let mut f = std::fs::File::create(&p).unwrap();
        for i in 0..50_000 {
            writeln!(f, "line {i}").unwrap();
        }
        drop(f);
        let got = tail(&p, 20_000).unwrap();
        assert_eq!(got.len(), 20_000);
        assert_eq!(got[0], "line 30000");
        assert_eq!(got[19_999], "line 49999");
        assert_eq!(tail(&p, 100_000).unwrap().len(), 50_000);
    }

    #[tokio::test]
    async fn follow_sees_appended_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        std::fs::write(&p, "old\n").unwrap();
        let (lines, off) = tail_with_offset(&p, 10).unwrap();
        assert_eq!(lines, vec!["old"]);
        let mut s = Box::pin(follow_from(p.clone(), off));
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        write!(f, "new 1\nnew").unwrap();
        f.flush().unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first, "new 1");
        writeln!(f, " 2").unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(second, "new 2");
    }
}
