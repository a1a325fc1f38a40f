//! Job results: the small JSON document a task leaves behind (at `$JETRUN_RESULT` in the
//! task, or on ECS the task's last log line with [`LOG_MARKER`]) that becomes the job
//! record's `result`, shown by `jobs get`, `GET /v1/jobs/{id}`, the completion event and
//! the callback.
//!
//! A result is untrusted task output: it is size-capped before it is parsed and must be
//! one JSON object. A result that breaks either rule never changes the job's own status:
//! the record keeps `result_error` with the reason instead.

use serde_json::{Map, Value};

/// The largest result accepted, in bytes (16 KiB): a summary, not a log.
pub const MAX_RESULT_BYTES: usize = 16 * 1024;

/// The environment variable naming the file a task writes its result to.
pub const RESULT_ENV: &str = "JETRUN_RESULT";

/// The prefix of the log line that carries a result where no file can be read back
/// (ECS): `jetrun-result: {"first_bad":"abc123"}`. The last such line wins.
pub const LOG_MARKER: &str = "jetrun-result: ";

/// Why a result was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// Larger than [`MAX_RESULT_BYTES`].
    #[error("result is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its size (or a lower bound: reading stops past the limit).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON.
    #[error("result is not valid JSON: {source}")]
    InvalidJson {
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// JSON, but not an object.
    #[error("result must be a JSON object, not {found}")]
    NotObject {
        /// What it was: `array`, `string`, ...
        found: &'static str,
    },
}

/// Checks and parses a result as read from a task (`bytes` may be cut at
/// `MAX_RESULT_BYTES + 1` by the reader: anything longer is refused anyway).
pub fn parse(bytes: &[u8]) -> Result<Map<String, Value>, ResultError> {
    if bytes.len() > MAX_RESULT_BYTES {
        return Err(ResultError::TooLarge {
            size: bytes.len(),
            max: MAX_RESULT_BYTES,
        });
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ResultError::NotObject {
            found: match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            },
        }),
        Err(source) => Err(ResultError::InvalidJson { source }),
    }
}

/// The result carried by the last [`LOG_MARKER`] line of `log`, if any.
pub fn from_log(log: &str) -> Option<&str> {
    log.lines()
        .rev()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(LOG_MARKER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_an_object_and_refuses_the_rest() {
        let m = parse(br#"{"first_bad":"abc"}"#).unwrap();
        assert_eq!(m["first_bad"], "abc");
        assert!(matches!(
            parse(b"[1]"),
            Err(ResultError::NotObject { found: "an array" })
        ));
        assert!(matches!(parse(b"{nope"), Err(ResultError::InvalidJson { .. })));
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_RESULT_BYTES));
        let e = parse(big.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("16384 allowed"), "{e}");
    }

    #[test]
    fn the_last_marker_line_wins() {
        let log = "jetrun-result: {\"a\":1}\nnoise\njetrun-result: {\"a\":2}\r\ntail\n";
        assert_eq!(from_log(log), Some("{\"a\":2}"));
        assert_eq!(from_log("nothing here"), None);
    }
}
