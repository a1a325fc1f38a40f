//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): strict parsing of
//! `traceparent` and `tracestate`, with no OpenTelemetry dependency, so the rules hold
//! in every build.
//!
//! Refused, as the recommendation says: version `ff`, an all-zero trace id or parent id,
//! uppercase hex, a version-00 header of the wrong length. A refused header is not an
//! error for the caller: it starts a new trace.

use std::fmt;

/// A parsed `traceparent`: `version-traceid-parentid-flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The version byte (00 today; a higher one is read as 00 if its prefix fits).
    pub version: u8,
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The parent span id (never all zero).
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header value strictly; `None` when it breaks a rule.
    pub fn parse(value: &str) -> Option<Self> {
        let v = value.trim_matches(|c| c == ' ' || c == '\t');
        let b = v.as_bytes();
        // 2 + 1 + 32 + 1 + 16 + 1 + 2
        if b.len() < 55 {
            return None;
        }
        let version = hex_byte(&b[0..2])?;
        if version == 0xff {
            return None;
        }
        // Version 00 is exactly 55 characters; a future version may append `-...`.
        if (version == 0 && b.len() != 55) || (version != 0 && b.len() > 55 && b[55] != b'-') {
            return None;
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&b[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, out) in parent_id.iter_mut().enumerate() {
            *out = hex_byte(&b[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&b[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            version,
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The parent id as 16 lowercase hex digits.
    pub fn parent_id_hex(&self) -> String {
        hex(&self.parent_id)
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl TraceParent {
    /// The header value (always version 00), written without the formatting machinery:
    /// it is built for every message published while spans are exported.
    pub fn to_header(&self) -> String {
        let mut b = [0u8; 55];
        b[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut b[3..35]);
        b[35] = b'-';
        hex_into(&self.parent_id, &mut b[36..52]);
        b[52] = b'-';
        hex_into(&[self.flags], &mut b[53..55]);
        // Only ASCII hex digits and dashes were written: never lossy.
        String::from_utf8_lossy(&b).into_owned()
    }
}

impl fmt::Display for TraceParent {
    /// Always written as version 00 (what this implementation speaks).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Two lowercase hex digits; uppercase is refused.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(d(two[0])? << 4 | d(two[1])?)
}

/// Longest `tracestate` kept (the recommendation's bound for propagators).
pub const MAX_TRACESTATE_LEN: usize = 512;
/// Most list members of a `tracestate`.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Whether `value` is a valid `tracestate`: at most 32 `key=value` members separated by
/// commas (optional whitespace), keys `[a-z0-9][a-z0-9_\-*/]*` optionally `tenant@system`,
/// values printable ASCII without `,` and `=` and not ending in a space, no duplicate key,
/// at most 512 characters. An invalid one is dropped (the traceparent is still used).
pub fn valid_tracestate(value: &str) -> bool {
    if value.len() > MAX_TRACESTATE_LEN {
        return false;
    }
    let mut keys: Vec<&str> = Vec::new();
    for member in value.split(',') {
        let m = member.trim_matches(|c| c == ' ' || c == '\t');
        if m.is_empty() {
            // Empty members are allowed and ignored.
            continue;
        }
        let Some((k, v)) = m.split_once('=') else {
            return false;
        };
        if !valid_key(k) || !valid_value(v) || keys.contains(&k) {
            return false;
        }
        keys.push(k);
        if keys.len() > MAX_TRACESTATE_MEMBERS {
            return false;
        }
    }
    true
}

fn valid_key(k: &str) -> bool {
    let simple = |s: &str, max: usize| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/".contains(c))
    };
    match k.split_once('@') {
        Some((tenant, system)) => simple(tenant, 241) && simple(system, 14),
        None => simple(k, 256),
    }
}

fn valid_value(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && b[b.len() - 1] != b' '
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn accepts_the_spec_example() {
        let tp = TraceParent::parse(GOOD).unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id_hex(), "00f067aa0ba902b7");
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), GOOD);
        assert_eq!(tp.to_header(), GOOD);
        let flags = TraceParent { flags: 0, ..tp };
        assert!(flags.to_header().ends_with("-00") && !flags.sampled());
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "not a traceparent",
            "",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        // A future version may carry more fields after a dash.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-ab").is_some());
    }

    #[test]
    fn tracestate_rules() {
        assert!(valid_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(valid_tracestate("tenant@vendor=x, other=y"));
        assert!(valid_tracestate(""));
        assert!(!valid_tracestate("Upper=x"));
        assert!(!valid_tracestate("a=x,a=y"));
        assert!(!valid_tracestate("novalue"));
        assert!(!valid_tracestate("a=b=c"));
        let many = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        assert!(!valid_tracestate(&many));
        assert!(!valid_tracestate(&format!("a={}", "x".repeat(600))));
    }
}
