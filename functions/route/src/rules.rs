//! The rules file: loading (YAML → schema → typed → regexes and templates compiled, every
//! refusal with file, line and reason) and evaluation against a webhook payload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jetrun_core::JobSpec;
use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::template::{self, TemplateError};

/// The rules file schema (draft 2020-12), embedded at build time.
pub const RULES_SCHEMA: &str = include_str!("../../../schemas/rules.json");

/// What is wrong with a rules file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RulesErrorKind {
    /// The file could not be read.
    Io,
    /// Not YAML.
    Syntax,
    /// YAML, but not a rules file (schema).
    Schema,
    /// A `comment` regex does not compile.
    Regex,
    /// A job template string is malformed.
    Template,
    /// Two rules share a name.
    DuplicateName,
}

/// A rules file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {reason}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct RulesError {
    /// What kind.
    pub kind: RulesErrorKind,
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Why.
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Names {
    One(String),
    Many(Vec<String>),
}

impl Names {
    fn list(self) -> Vec<String> {
        match self {
            Names::One(s) => vec![s],
            Names::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<u32>,
    rules: Vec<RuleDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(rename = "match")]
    when: MatchDoc,
    job: Value,
    #[serde(default)]
    reply: Option<Reply>,
    #[serde(default)]
    guard: Option<GuardDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardDoc {
    allowed_associations: Option<Vec<String>>,
    command: Option<String>,
    usage: Option<String>,
    max_running_per_repository: Option<u32>,
}

/// The `comment.author_association` values allowed by default: people with a say in
/// the repository, never a drive-by commenter.
pub const DEFAULT_ASSOCIATIONS: [&str; 3] = ["OWNER", "MEMBER", "COLLABORATOR"];

/// A rule's `reply` section: how the github function answers on the issue or pull
/// request the webhook came from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// At admission: `eyes` (default), `rocket`, `+1` (a reaction on the comment),
    /// `comment` (a "started" comment) or `none`.
    #[serde(default)]
    pub acknowledge: Option<String>,
    /// Comment template when the job succeeded.
    #[serde(default)]
    pub success: Option<String>,
    /// Comment template for every other end.
    #[serde(default)]
    pub failure: Option<String>,
}

/// Where a reply goes: the issue or pull request (and the comment) of the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTarget {
    /// `owner/name`.
    pub repository: String,
    /// The issue or pull request number.
    pub issue: u64,
    /// The triggering comment's id, if the event was a comment.
    pub comment_id: Option<u64>,
}

impl ReplyTarget {
    /// From a webhook payload: `repository.full_name` and `issue.number` or
    /// `pull_request.number` (`None` if the event is on neither).
    pub fn of(payload: &Value) -> Option<Self> {
        let repository = payload.pointer("/repository/full_name")?.as_str()?.to_string();
        let issue = payload
            .pointer("/issue/number")
            .or_else(|| payload.pointer("/pull_request/number"))
            .and_then(Value::as_u64)?;
        Some(Self {
            repository,
            issue,
            comment_id: payload.pointer("/comment/id").and_then(Value::as_u64),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchDoc {
    event: Names,
    action: Option<Names>,
    repository: Option<Names>,
    #[serde(rename = "ref")]
    git_ref: Option<Names>,
    branch: Option<Names>,
    #[serde(default)]
    labels: Vec<String>,
    comment: Option<String>,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its unique name.
    pub name: String,
    events: Vec<String>,
    actions: Vec<String>,
    repositories: Vec<String>,
    refs: Vec<String>,
    branches: Vec<String>,
    labels: Vec<String>,
    comment: Option<Regex>,
    job: Value,
    /// How to answer, if the rule declares it.
    pub reply: Option<Reply>,
    allowed: Vec<String>,
    command: Option<Regex>,
    usage: Option<String>,
    /// `guard.max_running_per_repository`: at most this many active jobs of the rule per
    /// repository (enforced by route with slots, [`crate::limit`]).
    pub max_running_per_repository: Option<u32>,
}

/// A loaded, valid rules file.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The rules, in file order.
    pub rules: Vec<Rule>,
}

/// One rule's verdict on one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Matched {
    /// The rule.
    pub rule: String,
    /// The rendered job, or why it could not be rendered (or was refused).
    pub job: Result<JobSpec, String>,
    /// Set when a guardrail refused the event (the author's association, a malformed
    /// command): no job, no dead letter, an answer if the rule has a `reply`.
    pub refused: Option<String>,
    /// Where to answer, when the rule has a `reply` and the event an issue or PR.
    pub reply: Option<ReplyTarget>,
}

fn schema_validator() -> Result<&'static jsonschema::Validator, String> {
    static V: OnceLock<Result<jsonschema::Validator, String>> = OnceLock::new();
    V.get_or_init(|| {
        let s: Value = serde_json::from_str(RULES_SCHEMA).map_err(|e| e.to_string())?;
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&s)
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// `*` matches any run of characters; everything else literally.
pub fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl Rules {
    /// Loads and checks a rules file.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RulesError {
            kind: RulesErrorKind::Io,
            file: path.to_path_buf(),
            line: None,
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks rules text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, RulesError> {
        let err = |kind, line, reason: String| RulesError {
            kind,
            file: file.to_path_buf(),
            line,
            reason,
        };
        let value: Value = serde_yaml::from_str(text).map_err(|e| {
            err(
                RulesErrorKind::Syntax,
                e.location().map(|l| l.line()),
                e.to_string(),
            )
        })?;
        let validator = schema_validator().map_err(|e| err(RulesErrorKind::Schema, None, e))?;
        if let Some(e) = validator.iter_errors(&value).next() {
            let pointer = e.instance_path().to_string();
            let at = if pointer.is_empty() {
                "/".to_string()
            } else {
                pointer.clone()
            };
            return Err(err(
                RulesErrorKind::Schema,
                locate(text, &pointer),
                format!("{at}: {e}"),
            ));
        }
        let doc: FileDoc =
            serde_json::from_value(value).map_err(|e| err(RulesErrorKind::Schema, None, e.to_string()))?;
        let mut rules: Vec<Rule> = Vec::new();
        for (i, r) in doc.rules.into_iter().enumerate() {
            let at = |rest: &str| locate(text, &format!("/rules/{i}{rest}"));
            if rules.iter().any(|x| x.name == r.name) {
                return Err(err(
                    RulesErrorKind::DuplicateName,
                    at("/name"),
                    format!("rule name {:?} is used twice", r.name),
                ));
            }
            let comment = match &r.when.comment {
                Some(re) => Some(Regex::new(re).map_err(|e| {
                    err(
                        RulesErrorKind::Regex,
                        at("/match/comment"),
                        format!("rule {}: bad comment regex: {e}", r.name),
                    )
                })?),
                None => None,
            };
            template::check_value(&r.job, "").map_err(|(p, e): (String, TemplateError)| {
                err(
                    RulesErrorKind::Template,
                    at(&format!("/job{p}")),
                    format!("rule {}: job{p}: {e}", r.name),
                )
            })?;
            if let Some(reply) = &r.reply {
                for (k, t) in [("success", &reply.success), ("failure", &reply.failure)] {
                    if let Some(t) = t {
                        template::Template::parse(t).map_err(|e| {
                            err(
                                RulesErrorKind::Template,
                                at(&format!("/reply/{k}")),
                                format!("rule {}: reply/{k}: {e}", r.name),
                            )
                        })?;
                    }
                }
            }
            let command = match r.guard.as_ref().and_then(|g| g.command.as_deref()) {
                Some(re) => Some(Regex::new(re).map_err(|e| {
                    err(
                        RulesErrorKind::Regex,
                        at("/guard/command"),
                        format!("rule {}: bad command regex: {e}", r.name),
                    )
                })?),
                None => None,
            };
            let allowed = r
                .guard
                .as_ref()
                .and_then(|g| g.allowed_associations.clone())
                .unwrap_or_else(|| DEFAULT_ASSOCIATIONS.iter().map(|s| s.to_string()).collect());
            let usage = r.guard.as_ref().and_then(|g| g.usage.clone());
            let max_running_per_repository = r.guard.as_ref().and_then(|g| g.max_running_per_repository);
            let opt = |n: Option<Names>| n.map(Names::list).unwrap_or_default();
            rules.push(Rule {
                name: r.name,
                events: r.when.event.list(),
                actions: opt(r.when.action),
                repositories: opt(r.when.repository),
                refs: opt(r.when.git_ref),
                branches: opt(r.when.branch),
                labels: r.when.labels,
                comment,
                job: r.job,
                reply: r.reply,
                allowed,
                command,
                usage,
                max_running_per_repository,
            });
        }
        Ok(Self { rules })
    }

    /// Every rule that matches the event, with its rendered job.
    pub fn evaluate(&self, event: &str, payload: &Value, delivery: &str) -> Vec<Matched> {
        let facts = Facts::of(event, payload);
        self.rules
            .iter()
            .filter_map(|r| r.verdict(event, &facts, payload).map(|c| (r, c)))
            .map(|(r, verdict)| {
                let reply = r.reply.as_ref().and_then(|_| ReplyTarget::of(payload));
                let captures = match verdict {
                    Ok(c) => c,
                    Err(why) => {
                        return Matched {
                            rule: r.name.clone(),
                            job: Err(why.clone()),
                            refused: Some(why),
                            reply,
                        };
                    }
                };
                let ctx = json!({
                    "event": event,
                    "action": facts.action,
                    "delivery": delivery,
                    "ref": facts.git_ref,
                    "branch": facts.branch,
                    "repository": payload.get("repository").cloned().unwrap_or(Value::Null),
                    "sender": payload.get("sender").cloned().unwrap_or(Value::Null),
                    "payload": payload,
                    "captures": captures,
                });
                let job = template::render_value(&r.job, &ctx)
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        serde_json::from_value::<JobSpec>(v)
                            .map_err(|e| format!("rendered job is not a job spec: {e}"))
                    });
                Matched {
                    rule: r.name.clone(),
                    job,
                    refused: None,
                    reply,
                }
            })
            .collect()
    }
}

/// What rules can match on, read once per event.
struct Facts<'a> {
    action: Option<&'a str>,
    repository: Option<&'a str>,
    git_ref: Option<&'a str>,
    branch: Option<String>,
    labels: Vec<&'a str>,
    comment: Option<&'a str>,
}

impl<'a> Facts<'a> {
    fn of(event: &str, p: &'a Value) -> Self {
        let s = |ptr: &str| p.pointer(ptr).and_then(Value::as_str);
        let git_ref = s("/ref");
        let branch = match event {
            "pull_request"
            | "pull_request_review"
            | "pull_request_review_comment"
            | "pull_request_review_thread" => s("/pull_request/base/ref").map(str::to_string),
            "workflow_run" => s("/workflow_run/head_branch").map(str::to_string),
            "check_suite" => s("/check_suite/head_branch").map(str::to_string),
            "create" | "delete" if s("/ref_type") == Some("branch") => git_ref.map(str::to_string),
            _ => git_ref
                .and_then(|r| r.strip_prefix("refs/heads/"))
                .map(str::to_string),
        };
        let mut labels: Vec<&str> = Vec::new();
        for ptr in ["/issue/labels", "/pull_request/labels", "/discussion/labels"] {
            if let Some(a) = p.pointer(ptr).and_then(Value::as_array) {
                labels.extend(a.iter().filter_map(|l| l.get("name").and_then(Value::as_str)));
            }
        }
        Self {
            action: s("/action"),
            repository: s("/repository/full_name"),
            git_ref,
            branch,
            labels,
            comment: s("/comment/body"),
        }
    }
}

fn any_glob(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| glob(p, v)))
}

impl Rule {
    /// `None`: the rule does not apply; `Some(Ok(captures))`: it matches;
    /// `Some(Err(answer))`: it applies but a guardrail refuses (a malformed command, an
    /// author without the required association).
    fn verdict(
        &self,
        event: &str,
        f: &Facts<'_>,
        payload: &Value,
    ) -> Option<Result<BTreeMap<String, String>, String>> {
        let caps = match self.captures(event, f) {
            Some(c) => c,
            None => {
                // Malformed: the base conditions hold, the command is there, its
                // arguments are not what the rule needs.
                let cmd = self.command.as_ref()?;
                let body = f.comment?;
                if !cmd.is_match(body) || !self.base(event, f) {
                    return None;
                }
                return Some(Err(self
                    .usage
                    .clone()
                    .unwrap_or_else(|| format!("malformed command for rule {}", self.name))));
            }
        };
        if f.comment.is_some() {
            let assoc = payload
                .pointer("/comment/author_association")
                .and_then(Value::as_str)
                .unwrap_or("NONE");
            if !self.allowed.iter().any(|a| a == assoc) {
                let who = payload
                    .pointer("/comment/user/login")
                    .or_else(|| payload.pointer("/sender/login"))
                    .and_then(Value::as_str)
                    .unwrap_or("someone");
                return Some(Err(format!(
                    "@{who} is not allowed to run `{}`: only {} may (your association with this repository is {assoc})",
                    self.name,
                    self.allowed.join(", ")
                )));
            }
        }
        Some(Ok(caps))
    }

    fn base(&self, event: &str, f: &Facts<'_>) -> bool {
        self.events.iter().any(|e| glob(e, event))
            && any_glob(&self.actions, f.action)
            && any_glob(&self.repositories, f.repository)
            && any_glob(&self.refs, f.git_ref)
            && any_glob(&self.branches, f.branch.as_deref())
            && self.labels.iter().all(|l| f.labels.contains(&l.as_str()))
    }

    /// `Some(named captures)` if the rule matches.
    fn captures(&self, event: &str, f: &Facts<'_>) -> Option<BTreeMap<String, String>> {
        let ok = self.events.iter().any(|e| glob(e, event))
            && any_glob(&self.actions, f.action)
            && any_glob(&self.repositories, f.repository)
            && any_glob(&self.refs, f.git_ref)
            && any_glob(&self.branches, f.branch.as_deref())
            && self.labels.iter().all(|l| f.labels.contains(&l.as_str()));
        if !ok {
            return None;
        }
        let mut out = BTreeMap::new();
        if let Some(re) = &self.comment {
            let caps = re.captures(f.comment?)?;
            for name in re.capture_names().flatten() {
                if let Some(m) = caps.name(name) {
                    out.insert(name.to_string(), m.as_str().to_string());
                }
            }
        }
        Some(out)
    }
}

/// Best-effort 1-based line of the value at JSON `pointer` in block-style YAML `text`
/// (flow style and anchors are not followed: the nearest enclosing line is returned).
pub fn locate(text: &str, pointer: &str) -> Option<usize> {
    struct L<'a> {
        indent: usize,
        dash: bool,
        key: Option<&'a str>,
        key_indent: usize,
    }
    let lines: Vec<Option<L<'_>>> = text
        .lines()
        .map(|raw| {
            let content = raw.trim_start();
            if content.is_empty() || content.starts_with('#') {
                return None;
            }
            let indent = raw.len() - content.len();
            let (dash, inner, key_indent) =
                match content
                    .strip_prefix("- ")
                    .or(if content == "-" { Some("") } else { None })
                {
                    Some(rest) => (
                        true,
                        rest.trim_start(),
                        indent + 2 + (rest.len() - rest.trim_start().len()),
                    ),
                    None => (false, content, indent),
                };
            let key = inner
                .split_once(':')
                .map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\''));
            Some(L {
                indent,
                dash,
                key,
                key_indent,
            })
        })
        .collect();
    let segments: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let (mut start, mut end) = (0usize, lines.len());
    let mut found: Option<usize> = None;
    for seg in segments {
        let in_range = || (start..end).filter_map(|i| lines[i].as_ref().map(|l| (i, l)));
        let hit = if let Ok(n) = seg.parse::<usize>() {
            let level = in_range().filter(|(_, l)| l.dash).map(|(_, l)| l.indent).min();
            level.and_then(|lv| {
                in_range()
                    .filter(|(_, l)| l.dash && l.indent == lv)
                    .nth(n)
                    .map(|(i, _)| (i, lv, true))
            })
        } else {
            let level = in_range()
                .filter(|(_, l)| l.key.is_some())
                .map(|(_, l)| l.key_indent)
                .min();
            level.and_then(|lv| {
                in_range()
                    .find(|(_, l)| l.key_indent == lv && l.key == Some(seg.as_str()))
                    .map(|(i, l)| (i, l.key_indent, false))
            })
        };
        let Some((i, level, is_item)) = hit else { break };
        found = Some(i);
        // The value's block: following lines indented deeper (a sequence under a key may
        // sit at the key's own indentation).
        let next_start = if is_item { i } else { i + 1 };
        let mut j = i + 1;
        while j < end {
            if let Some(l) = &lines[j] {
                let inside = if is_item {
                    l.indent > level
                } else {
                    l.indent > level || (l.indent == level && l.dash)
                };
                if !inside {
                    break;
                }
            }
            j += 1;
        }
        start = next_start;
        end = j;
        if is_item {
            // Keys of an item start on the dash line: search from it, but not its dash.
            start = i;
        }
    }
    found.map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("octo-org/*", "octo-org/repo"));
        assert!(!glob("octo-org/*", "other/repo"));
        assert!(glob("refs/tags/v*", "refs/tags/v1.2"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXc"));
        assert!(glob("main", "main"));
    }

    #[test]
    fn locate_finds_nested_lines() {
        let y = "version: 1\nrules:\n  - name: a\n    match:\n      event: push\n    job:\n      queue: q\n  - name: b\n    match:\n      event: [x]\n      comment: '('\n";
        assert_eq!(locate(y, "/rules/0/name"), Some(3));
        assert_eq!(locate(y, "/rules/0/match/event"), Some(5));
        assert_eq!(locate(y, "/rules/0/job/queue"), Some(7));
        assert_eq!(locate(y, "/rules/1"), Some(8));
        assert_eq!(locate(y, "/rules/1/match/comment"), Some(11));
        assert_eq!(locate(y, "/version"), Some(1));
    }
}
