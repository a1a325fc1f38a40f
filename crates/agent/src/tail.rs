//! Following a log file from an offset, for `jetrun jobs logs --follow` over request/reply
//! (the tail itself comes from `Runner::log_tail`; see [`crate::services`]).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Up to `max` bytes of `path` from `offset`, as text, and the offset after them.
pub fn read_from(path: &Path, offset: u64, max: u64) -> std::io::Result<(String, u64)> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), offset)),
        Err(e) => return Err(e),
    };
    let len = f.seek(SeekFrom::End(0))?;
    if offset >= len {
        return Ok((String::new(), len.min(offset)));
    }
    f.seek(SeekFrom::Start(offset))?;
    let want = (len - offset).min(max);
    let mut buf = vec![0u8; want as usize];
    f.read_exact(&mut buf)?;
    // Hand back whole lines only, unless a single line is longer than `max`.
    let cut = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if want == max => buf.len(),
        None => 0,
    };
    buf.truncate(cut);
    Ok((String::from_utf8_lossy(&buf).into_owned(), offset + cut as u64))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Write;

    #[test]
    fn follows_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut f = std::fs::File::create(&p).unwrap();
        for i in 0..200_000 {
            writeln!(f, "line {i}").unwrap();
        }
        f.flush().unwrap();
        let end = std::fs::metadata(&p).unwrap().len();
        writeln!(f, "more").unwrap();
        write!(f, "partial").unwrap();
        f.flush().unwrap();
        let (text, next) = read_from(&p, end, 1 << 20).unwrap();
        assert_eq!(text, "more\n");
        assert_eq!(next, end + 5);
        assert_eq!(read_from(&dir.path().join("missing"), 0, 10).unwrap().0, "");
    }
}
