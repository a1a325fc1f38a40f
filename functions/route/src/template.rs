//! A small templater for job specs: `{{ path.to.value }}` inside any string, looked up
//! in a JSON context by dotted path (`payload.issue.number`, `captures.good`; a numeric
//! segment indexes an array). Strings, numbers and booleans render as text; a missing
//! or null value is an error, so a job is never submitted with a silently empty field.

use serde_json::Value;

/// What is wrong with a template or its rendering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// `{{` without `}}`.
    #[error("unclosed {{{{ in {0:?}")]
    Unclosed(String),
    /// `{{ }}` with nothing or something other than a dotted path inside.
    #[error("bad variable {0:?}: expected a dotted path like payload.issue.number")]
    BadPath(String),
    /// The path resolves to nothing (or null).
    #[error("{0} is not set in this event")]
    Missing(String),
    /// The path resolves to an object or array.
    #[error("{0} is an object or array, not a value")]
    NotScalar(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(Vec<String>),
}

/// A parsed template string.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

impl Template {
    /// Parses `s`.
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| TemplateError::Unclosed(s.to_string()))?;
            let inner = after[..close].trim();
            let path: Vec<String> = inner.split('.').map(str::to_string).collect();
            let ok = !inner.is_empty()
                && path.iter().all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                });
            if !ok {
                return Err(TemplateError::BadPath(inner.to_string()));
            }
            parts.push(Part::Var(path));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self(parts))
    }

    /// Renders against `ctx`.
    pub fn render(&self, ctx: &Value) -> Result<String, TemplateError> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(path) => {
                    let mut v = ctx;
                    for seg in path {
                        v = match v {
                            Value::Object(m) => m.get(seg),
                            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                            _ => None,
                        }
                        .ok_or_else(|| TemplateError::Missing(path.join(".")))?;
                    }
                    match v {
                        Value::String(s) => out.push_str(s),
                        Value::Number(n) => out.push_str(&n.to_string()),
                        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                        Value::Null => return Err(TemplateError::Missing(path.join("."))),
                        _ => return Err(TemplateError::NotScalar(path.join("."))),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Checks every string in `v` parses as a template; returns the JSON pointer of the
/// first that does not.
pub fn check_value(v: &Value, pointer: &str) -> Result<(), (String, TemplateError)> {
    match v {
        Value::String(s) => Template::parse(s)
            .map(|_| ())
            .map_err(|e| (pointer.to_string(), e)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| check_value(x, &format!("{pointer}/{i}"))),
        Value::Object(m) => m
            .iter()
            .try_for_each(|(k, x)| check_value(x, &format!("{pointer}/{k}"))),
        _ => Ok(()),
    }
}

/// Renders every string in `v` (keys are left as they are).
pub fn render_value(v: &Value, ctx: &Value) -> Result<Value, TemplateError> {
    Ok(match v {
        Value::String(s) => Value::String(Template::parse(s)?.render(ctx)?),
        Value::Array(a) => Value::Array(a.iter().map(|x| render_value(x, ctx)).collect::<Result<_, _>>()?),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| Ok((k.clone(), render_value(x, ctx)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_paths_and_refuses_missing_values() {
        let ctx = json!({"captures": {"good": "v1"}, "payload": {"issue": {"number": 7}, "l": [{"n": "x"}]}});
        let t = Template::parse("bisect {{ captures.good }} #{{payload.issue.number}} {{ payload.l.0.n }}")
            .unwrap();
        assert_eq!(t.render(&ctx).unwrap(), "bisect v1 #7 x");
        assert_eq!(
            Template::parse("{{ nope.x }}").unwrap().render(&ctx),
            Err(TemplateError::Missing("nope.x".into()))
        );
        assert_eq!(
            Template::parse("{{ payload }}").unwrap().render(&ctx),
            Err(TemplateError::NotScalar("payload".into()))
        );
        assert!(matches!(Template::parse("{{ a"), Err(TemplateError::Unclosed(_))));
        assert!(matches!(Template::parse("{{ }}"), Err(TemplateError::BadPath(_))));
        assert!(matches!(
            Template::parse("{{ a b }}"),
            Err(TemplateError::BadPath(_))
        ));
        assert_eq!(
            Template::parse("plain } {").unwrap().render(&ctx).unwrap(),
            "plain } {"
        );
    }
}
