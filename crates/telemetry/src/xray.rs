//! AWS X-Ray trace headers (`X-Amzn-Trace-Id`, and `_X_AMZN_TRACE_ID` in Lambda) read as
//! W3C trace context, so a Lambda function with active tracing continues the trace that
//! X-Ray started for the invocation instead of starting one of its own.
//!
//! The header is `Root=1-<8 hex epoch seconds>-<24 hex>;Parent=<16 hex>;Sampled=<0|1|?>`
//! (keys in any order, other keys such as `Lineage` ignored). The W3C trace id is the
//! root's 32 hex digits without the version and dashes; the parent id is `Parent`;
//! `Sampled=1` is the sampled flag (`0`, `?` or absent: not sampled, the sampler decides
//! for a root). Anything else (no `Parent`, a version other than 1, wrong lengths,
//! all-zero ids, non-hex digits) is not a context: the span then starts a new trace.

use crate::TraceParent;

/// The Lambda runtime's environment variable holding the invocation's X-Ray header.
pub const LAMBDA_TRACE_ENV: &str = "_X_AMZN_TRACE_ID";
/// Set by Lambda in every function's environment.
pub const LAMBDA_FUNCTION_ENV: &str = "AWS_LAMBDA_FUNCTION_NAME";

/// Parses an X-Ray trace header into a W3C context; `None` when it is not a usable one.
pub fn parse(header: &str) -> Option<TraceParent> {
    let mut root = None;
    let mut parent = None;
    let mut sampled = false;
    for part in header.split(';') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "Root" => root = Some(v.trim()),
            "Parent" => parent = Some(v.trim()),
            "Sampled" => sampled = v.trim() == "1",
            _ => {}
        }
    }
    // Root=1-xxxxxxxx-yyyyyyyyyyyyyyyyyyyyyyyy
    let mut fields = root?.split('-');
    let (version, epoch, random) = (fields.next()?, fields.next()?, fields.next()?);
    if version != "1" || fields.next().is_some() || epoch.len() != 8 || random.len() != 24 {
        return None;
    }
    let parent = parent?;
    if parent.len() != 16 {
        return None;
    }
    let trace = format!("{epoch}{random}").to_ascii_lowercase();
    // The W3C parser enforces the rest (hex digits, non-zero ids).
    TraceParent::parse(&format!(
        "00-{trace}-{}-{}",
        parent.to_ascii_lowercase(),
        if sampled { "01" } else { "00" }
    ))
}

/// The X-Ray header for `tp` (the reverse of [`parse`]); `Sampled` from its flag.
pub fn header(tp: &TraceParent) -> String {
    let t = tp.trace_id_hex();
    format!(
        "Root=1-{}-{};Parent={};Sampled={}",
        &t[..8],
        &t[8..],
        tp.parent_id_hex(),
        u8::from(tp.sampled())
    )
}

/// The invocation's context when running in Lambda with an X-Ray header, read through
/// `get` (a variable's value, if set).
pub fn lambda_context_from(get: impl Fn(&str) -> Option<String>) -> Option<TraceParent> {
    get(LAMBDA_FUNCTION_ENV)?;
    parse(&get(LAMBDA_TRACE_ENV)?)
}

/// [`lambda_context_from`] the process environment. The Lambda runtime sets
/// `_X_AMZN_TRACE_ID` anew for every invocation, so this is read each time it is needed.
pub fn lambda_context() -> Option<TraceParent> {
    lambda_context_from(|k| std::env::var(k).ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const AWS_EXAMPLE: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";

    #[test]
    fn reads_the_documented_header() {
        let tp = parse(AWS_EXAMPLE).unwrap();
        assert_eq!(tp.trace_id_hex(), "5759e988bd862e3fe1be46a994272793");
        assert_eq!(tp.parent_id_hex(), "53995c3f42cd8ad8");
        assert!(tp.sampled());
        assert_eq!(
            tp.to_string(),
            "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01"
        );
        // Round trip.
        assert_eq!(header(&tp), AWS_EXAMPLE);
    }

    #[test]
    fn order_lineage_and_sampling() {
        let tp = parse("Sampled=0;Lineage=a87bd80c:1|68fd508a:5;Parent=53995C3F42CD8AD8;Root=1-5759E988-BD862E3FE1BE46A994272793").unwrap();
        assert!(!tp.sampled());
        assert_eq!(tp.parent_id_hex(), "53995c3f42cd8ad8");
        assert!(
            !parse("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=?")
                .unwrap()
                .sampled()
        );
        assert!(
            !parse("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8")
                .unwrap()
                .sampled()
        );
    }

    #[test]
    fn refuses_what_is_not_a_context() {
        for bad in [
            "",
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
            "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "Root=1-5759e98-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a99427279;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a994272793-x;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad",
            "Root=1-5759e988-bd862e3fe1be46a99427279g;Parent=53995c3f42cd8ad8",
            "Root=1-00000000-000000000000000000000000;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=0000000000000000",
            "garbage",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn only_in_lambda() {
        let env = |lambda: bool| {
            move |k: &str| match k {
                LAMBDA_FUNCTION_ENV if lambda => Some("jetrun-ingest".to_string()),
                LAMBDA_TRACE_ENV => Some(AWS_EXAMPLE.to_string()),
                _ => None,
            }
        };
        assert_eq!(
            lambda_context_from(env(true)).unwrap().trace_id_hex(),
            "5759e988bd862e3fe1be46a994272793"
        );
        assert!(lambda_context_from(env(false)).is_none());
    }
}
