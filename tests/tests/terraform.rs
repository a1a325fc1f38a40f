#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Terraform under `terraform/` (AWS modules and the example root module), checked
//! without `terraform`: every file parses as HCL, every module documents its interface,
//! the example calls the modules the way `terraform validate` would accept (known
//! variables only, every required one given, outputs and templates that exist), and the
//! properties an operator reviews hold: encrypted volumes, a durable JetStream config,
//! log retention, the autoscaler owning desired counts, the webhook route, an IAM
//! policy for the worker without wildcard actions, and jobs as ECS tasks: the worker on
//! the ECS runner, the bridge Lambda as the task-state rule's target with a dead-letter
//! queue.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::expr::{Operation, TraversalOperator};
use hcl::template::{Directive, Element};
use hcl::{Block, Body, Expression, ObjectKey, Template};

const MODULES: [&str; 6] = [
    "nats-cluster",
    "jetrun-service",
    "ingest-lambda",
    "job-tasks",
    "ecs-bridge",
    "observability",
];
const EXAMPLE: &str = "examples/complete";

/// `module` arguments that are not input variables.
const META_ARGUMENTS: [&str; 6] = [
    "source",
    "version",
    "providers",
    "count",
    "for_each",
    "depends_on",
];

/// Resource types of the AWS provider that take `tags`.
const TAGGABLE: [&str; 20] = [
    "aws_instance",
    "aws_ebs_volume",
    "aws_security_group",
    "aws_vpc_security_group_ingress_rule",
    "aws_vpc_security_group_egress_rule",
    "aws_route53_zone",
    "aws_iam_role",
    "aws_iam_instance_profile",
    "aws_cloudwatch_log_group",
    "aws_ecs_cluster",
    "aws_ecs_service",
    "aws_ecs_task_definition",
    "aws_lambda_function",
    "aws_apigatewayv2_api",
    "aws_apigatewayv2_stage",
    "aws_cloudwatch_event_rule",
    "aws_cloudwatch_metric_alarm",
    "aws_sns_topic",
    "aws_kms_key",
    "aws_lb",
];

fn terraform_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../terraform")
}

fn module_path(name: &str) -> PathBuf {
    terraform_root().join("modules").join(name)
}

/// Every file under `dir` (recursively) whose name ends with `suffix`, sorted.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn parse_file(path: &Path) -> (String, Body) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let body = hcl::parse(&text).unwrap_or_else(|e| panic!("{} does not parse as HCL: {e}", path.display()));
    (text, body)
}

/// The `.tf` files of one Terraform module (one directory, not recursive).
struct Module {
    dir: PathBuf,
    files: Vec<(PathBuf, String, Body)>,
}

impl Module {
    fn load(dir: &Path) -> Module {
        let mut files = Vec::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading module {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "tf"))
            .collect();
        paths.sort();
        for path in paths {
            let (text, body) = parse_file(&path);
            files.push((path, text, body));
        }
        assert!(!files.is_empty(), "{} holds no .tf file", dir.display());
        Module {
            dir: dir.to_path_buf(),
            files,
        }
    }

    fn named(name: &str) -> Module {
        Module::load(&module_path(name))
    }

    fn example() -> Module {
        Module::load(&terraform_root().join(EXAMPLE))
    }

    fn label(&self) -> String {
        self.dir
            .strip_prefix(terraform_root())
            .unwrap_or(&self.dir)
            .display()
            .to_string()
    }

    /// Top-level blocks of one kind (`resource`, `variable`, ...) across the module's files.
    fn blocks<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
        self.files
            .iter()
            .flat_map(|(_, _, body)| body.blocks())
            .filter(move |b| b.identifier() == kind)
    }

    /// `resource "<ty>" "<name>"` blocks of one type.
    fn resources<'a>(&'a self, ty: &'a str) -> Vec<&'a Block> {
        self.blocks("resource").filter(|b| label(b, 0) == ty).collect()
    }

    fn resource(&self, ty: &str, name: &str) -> &Block {
        self.blocks("resource")
            .find(|b| label(b, 0) == ty && label(b, 1) == name)
            .unwrap_or_else(|| panic!("{}: no resource {ty}.{name}", self.label()))
    }

    fn data(&self, ty: &str, name: &str) -> &Block {
        self.blocks("data")
            .find(|b| label(b, 0) == ty && label(b, 1) == name)
            .unwrap_or_else(|| panic!("{}: no data {ty}.{name}", self.label()))
    }

    fn variables(&self) -> BTreeMap<String, &Block> {
        self.blocks("variable")
            .map(|b| (label(b, 0).to_string(), b))
            .collect()
    }

    /// Variables without a default: every caller must set them.
    fn required_variables(&self) -> BTreeSet<String> {
        self.variables()
            .into_iter()
            .filter(|(_, b)| attr(b.body(), "default").is_none())
            .map(|(n, _)| n)
            .collect()
    }

    fn outputs(&self) -> BTreeSet<String> {
        self.blocks("output").map(|b| label(b, 0).to_string()).collect()
    }

    fn locals(&self) -> BTreeSet<String> {
        self.blocks("locals")
            .flat_map(|b| b.body().attributes().map(|a| a.key().to_string()))
            .collect()
    }

    fn local(&self, name: &str) -> &Expression {
        self.blocks("locals")
            .find_map(|b| attr(b.body(), name))
            .unwrap_or_else(|| panic!("{}: no local {name}", self.label()))
    }

    /// Every block at any depth (resources, their nested blocks, dynamic contents).
    fn all_blocks(&self) -> Vec<&Block> {
        fn collect<'a>(body: &'a Body, out: &mut Vec<&'a Block>) {
            for b in body.blocks() {
                out.push(b);
                collect(b.body(), out);
            }
        }
        let mut out = Vec::new();
        for (_, _, body) in &self.files {
            collect(body, &mut out);
        }
        out
    }

    /// Every expression at any depth (attribute values and their sub-expressions).
    fn all_expressions(&self) -> Vec<&Expression> {
        fn from_body<'a>(body: &'a Body, out: &mut Vec<&'a Expression>) {
            for a in body.attributes() {
                walk(a.expr(), out);
            }
            for b in body.blocks() {
                from_body(b.body(), out);
            }
        }
        let mut out = Vec::new();
        for (_, _, body) in &self.files {
            from_body(body, &mut out);
        }
        out
    }
}

fn label(b: &Block, i: usize) -> &str {
    b.labels().get(i).map(|l| l.as_str()).unwrap_or("")
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

fn nested<'a>(body: &'a Body, kind: &str) -> Vec<&'a Block> {
    body.blocks().filter(|b| b.identifier() == kind).collect()
}

/// `e` and all its sub-expressions, depth first.
fn walk<'a>(e: &'a Expression, out: &mut Vec<&'a Expression>) {
    out.push(e);
    match e {
        Expression::Array(items) => items.iter().for_each(|i| walk(i, out)),
        Expression::Object(obj) => {
            for (k, v) in obj {
                if let ObjectKey::Expression(k) = k {
                    walk(k, out);
                }
                walk(v, out);
            }
        }
        Expression::Traversal(t) => {
            walk(&t.expr, out);
            for op in &t.operators {
                if let TraversalOperator::Index(i) = op {
                    walk(i, out);
                }
            }
        }
        Expression::FuncCall(f) => f.args.iter().for_each(|a| walk(a, out)),
        Expression::Parenthesis(p) => walk(p, out),
        Expression::Conditional(c) => {
            walk(&c.cond_expr, out);
            walk(&c.true_expr, out);
            walk(&c.false_expr, out);
        }
        Expression::Operation(op) => match op.as_ref() {
            Operation::Unary(u) => walk(&u.expr, out),
            Operation::Binary(b) => {
                walk(&b.lhs_expr, out);
                walk(&b.rhs_expr, out);
            }
        },
        Expression::ForExpr(f) => {
            walk(&f.collection_expr, out);
            if let Some(k) = &f.key_expr {
                walk(k, out);
            }
            walk(&f.value_expr, out);
            if let Some(c) = &f.cond_expr {
                walk(c, out);
            }
        }
        _ => {}
    }
}

/// The string literals of an array expression (other elements are skipped).
fn strings(e: &Expression) -> Vec<String> {
    match e {
        Expression::Array(items) => items
            .iter()
            .filter_map(|i| match i {
                Expression::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn object_keys(e: &Expression) -> BTreeSet<String> {
    match e {
        Expression::Object(obj) => obj
            .keys()
            .map(|k| match k {
                ObjectKey::Identifier(i) => i.as_str().to_string(),
                ObjectKey::Expression(Expression::String(s)) => s.clone(),
                ObjectKey::Expression(other) => other.to_string(),
                other => format!("{other:?}"),
            })
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// Identifiers that follow `prefix` (e.g. `var.`) in Terraform source, outside comments.
fn references(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with('#') || code.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find(prefix) {
            let before = rest[..pos].chars().last();
            let after = &rest[pos + prefix.len()..];
            let ident: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            let boundary = before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'));
            if boundary && !ident.is_empty() {
                out.insert(ident);
            }
            rest = &rest[pos + prefix.len()..];
        }
    }
    out
}

fn is_wildcard_action(action: &str) -> bool {
    action == "*" || action.ends_with(":*")
}

fn all_modules() -> Vec<Module> {
    MODULES.iter().map(|m| Module::named(m)).collect()
}

// ---- Files and interfaces ----------------------------------------------------------------

#[test]
fn every_terraform_file_parses() {
    let root = terraform_root();
    let tf = files_ending(&root, ".tf");
    // 5 modules and the example, each with at least main, variables, outputs and versions.
    assert!(
        tf.len() >= 24,
        "expected the modules' and the example's .tf files, found {}",
        tf.len()
    );
    let mut failures = Vec::new();
    for path in tf.iter().chain(files_ending(&root, ".tfvars.example").iter()) {
        let text = std::fs::read_to_string(path).unwrap();
        if let Err(e) = hcl::parse(&text) {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    let templates = files_ending(&root, ".tftpl");
    assert!(
        !templates.is_empty(),
        "the nats-cluster module renders its config from templates"
    );
    for path in &templates {
        let text = std::fs::read_to_string(path).unwrap();
        if let Err(e) = text.parse::<Template>() {
            failures.push(format!("{} (template): {e}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "files that do not parse:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_module_has_the_standard_files_and_documents_its_interface() {
    let mut problems = Vec::new();
    let dirs: Vec<PathBuf> = MODULES
        .iter()
        .map(|m| module_path(m))
        .chain([terraform_root().join(EXAMPLE)])
        .collect();
    for dir in &dirs {
        for file in ["main.tf", "variables.tf", "outputs.tf", "versions.tf"] {
            if !dir.join(file).is_file() {
                problems.push(format!("{}: missing {file}", dir.display()));
            }
        }
        let m = Module::load(dir);
        let name = m.label();

        let terraform = m.blocks("terraform").next();
        let required_version = terraform.and_then(|t| attr(t.body(), "required_version"));
        if !matches!(required_version, Some(Expression::String(v)) if v == ">= 1.6") {
            problems.push(format!("{name}: terraform.required_version must be \">= 1.6\""));
        }
        let aws = terraform
            .and_then(|t| nested(t.body(), "required_providers").into_iter().next())
            .and_then(|p| attr(p.body(), "aws"));
        let aws = aws.map(|e| e.to_string()).unwrap_or_default();
        if !(aws.contains("hashicorp/aws") && aws.contains("~> 5.")) {
            problems.push(format!(
                "{name}: required_providers.aws must be hashicorp/aws ~> 5.x, is {aws:?}"
            ));
        }

        let variables = m.variables();
        if !variables.contains_key("tags") {
            problems.push(format!("{name}: no `tags` variable"));
        }
        for (var, b) in &variables {
            match attr(b.body(), "description") {
                Some(Expression::String(d)) if !d.trim().is_empty() => {}
                _ => problems.push(format!("{name}: variable {var} has no description")),
            }
            if attr(b.body(), "type").is_none() {
                problems.push(format!("{name}: variable {var} has no type"));
            }
        }
        for out in m.blocks("output") {
            match attr(out.body(), "description") {
                Some(Expression::String(d)) if !d.trim().is_empty() => {}
                _ => problems.push(format!("{name}: output {} has no description", label(out, 0))),
            }
        }
        if m.outputs().is_empty() {
            problems.push(format!("{name}: no outputs"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn example_calls_every_module_with_exactly_its_variables() {
    let example = Module::example();
    let calls: Vec<&Block> = example.blocks("module").collect();
    let called: BTreeSet<String> = calls
        .iter()
        .filter_map(|b| match attr(b.body(), "source") {
            Some(Expression::String(s)) => s.rsplit('/').next().map(str::to_string),
            _ => None,
        })
        .collect();
    for m in MODULES {
        assert!(called.contains(m), "the example does not use module {m}");
    }

    let mut problems = Vec::new();
    for call in calls {
        let name = label(call, 0);
        let Some(Expression::String(source)) = attr(call.body(), "source") else {
            problems.push(format!("module.{name}: source must be a literal path"));
            continue;
        };
        let dir = example.dir.join(source);
        if !dir.join("variables.tf").is_file() {
            problems.push(format!(
                "module.{name}: source {source} is not a module directory"
            ));
            continue;
        }
        let target = Module::load(&dir);
        let declared: BTreeSet<String> = target.variables().into_keys().collect();
        let passed: BTreeSet<String> = call
            .body()
            .attributes()
            .map(|a| a.key().to_string())
            .filter(|k| !META_ARGUMENTS.contains(&k.as_str()))
            .collect();
        for unknown in passed.difference(&declared) {
            problems.push(format!(
                "module.{name}: passes {unknown}, which {source} does not declare"
            ));
        }
        for missing in target.required_variables().difference(&passed) {
            problems.push(format!(
                "module.{name}: does not pass required variable {missing} of {source}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn references_to_variables_locals_and_module_outputs_resolve() {
    let mut problems = Vec::new();
    let mut modules = all_modules();
    modules.push(Module::example());
    for m in &modules {
        let text: String = m
            .files
            .iter()
            .map(|(_, t, _)| t.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let variables: BTreeSet<String> = m.variables().into_keys().collect();
        for v in references(&text, "var.").difference(&variables) {
            problems.push(format!("{}: var.{v} is not declared", m.label()));
        }
        for l in references(&text, "local.").difference(&m.locals()) {
            problems.push(format!("{}: local.{l} is not defined", m.label()));
        }
    }

    // module.<call>.<output> in the example names an output of the called module.
    let example = Module::example();
    let outputs_of: BTreeMap<String, BTreeSet<String>> = example
        .blocks("module")
        .filter_map(|b| match attr(b.body(), "source") {
            Some(Expression::String(s)) => Some((
                label(b, 0).to_string(),
                Module::load(&example.dir.join(s)).outputs(),
            )),
            _ => None,
        })
        .collect();
    let mut module_refs = 0;
    for e in example.all_expressions() {
        let Expression::Traversal(t) = e else { continue };
        let Expression::Variable(root) = &t.expr else {
            continue;
        };
        if root.as_str() != "module" {
            continue;
        }
        let names: Vec<&str> = t
            .operators
            .iter()
            .filter_map(|op| match op {
                TraversalOperator::GetAttr(i) => Some(i.as_str()),
                _ => None,
            })
            .collect();
        let [call, output, ..] = names.as_slice() else {
            continue;
        };
        module_refs += 1;
        match outputs_of.get(*call) {
            None => problems.push(format!("example: module.{call} is not a module call")),
            Some(outs) if !outs.contains(*output) => {
                problems.push(format!("example: module {call} has no output {output}"))
            }
            Some(_) => {}
        }
    }
    assert!(
        module_refs > 10,
        "the example wires modules through their outputs"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Root variable names an HCL template reads (loop variables excluded).
fn template_variables(t: &Template, bound: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    fn expr_roots(e: &Expression, bound: &BTreeSet<String>, out: &mut BTreeSet<String>) {
        let mut all = Vec::new();
        walk(e, &mut all);
        for sub in all {
            if let Expression::Variable(v) = sub
                && !bound.contains(v.as_str())
            {
                out.insert(v.as_str().to_string());
            }
        }
    }
    for element in t.elements() {
        match element {
            Element::Literal(_) => {}
            Element::Interpolation(i) => expr_roots(&i.expr, bound, out),
            Element::Directive(d) => match d.as_ref() {
                Directive::If(d) => {
                    expr_roots(&d.cond_expr, bound, out);
                    template_variables(&d.true_template, bound, out);
                    if let Some(f) = &d.false_template {
                        template_variables(f, bound, out);
                    }
                }
                Directive::For(d) => {
                    expr_roots(&d.collection_expr, bound, out);
                    let mut inner = bound.clone();
                    inner.insert(d.value_var.as_str().to_string());
                    if let Some(k) = &d.key_var {
                        inner.insert(k.as_str().to_string());
                    }
                    template_variables(&d.template, &inner, out);
                }
            },
        }
    }
}

#[test]
fn templatefile_calls_name_existing_templates_with_exactly_their_variables() {
    let mut problems = Vec::new();
    let mut calls = 0;
    for m in all_modules() {
        for e in m.all_expressions() {
            let Expression::FuncCall(f) = e else { continue };
            if f.name.name.as_str() != "templatefile" {
                continue;
            }
            calls += 1;
            let path = f.args.first().map(|a| a.to_string()).unwrap_or_default();
            let Some(relative) = path.trim_matches('"').strip_prefix("${path.module}/") else {
                problems.push(format!(
                    "{}: templatefile path {path} is not under path.module",
                    m.label()
                ));
                continue;
            };
            let file = m.dir.join(relative);
            let Ok(text) = std::fs::read_to_string(&file) else {
                problems.push(format!(
                    "{}: template {} does not exist",
                    m.label(),
                    file.display()
                ));
                continue;
            };
            let template: Template = text.parse().expect("templates parse (checked above)");
            let mut used = BTreeSet::new();
            template_variables(&template, &BTreeSet::new(), &mut used);
            let given = f.args.get(1).map(object_keys).unwrap_or_default();
            for missing in used.difference(&given) {
                problems.push(format!(
                    "{}: {relative} uses {missing}, which the call does not pass",
                    m.label()
                ));
            }
            for unused in given.difference(&used) {
                problems.push(format!(
                    "{}: {relative} is passed {unused}, which it never uses",
                    m.label()
                ));
            }
        }
    }
    assert!(
        calls >= 2,
        "nats-cluster renders its config and boot script with templatefile"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn tfvars_example_sets_every_required_variable_and_nothing_unknown() {
    let example = Module::example();
    let (_, body) = parse_file(&example.dir.join("terraform.tfvars.example"));
    let set: BTreeSet<String> = body.attributes().map(|a| a.key().to_string()).collect();
    let declared: BTreeSet<String> = example.variables().into_keys().collect();
    let unknown: Vec<_> = set.difference(&declared).collect();
    let missing: Vec<_> = example
        .required_variables()
        .into_iter()
        .filter(|v| !set.contains(v))
        .collect();
    assert!(
        unknown.is_empty(),
        "terraform.tfvars.example sets undeclared variables: {unknown:?}"
    );
    assert!(
        missing.is_empty(),
        "terraform.tfvars.example leaves required variables unset: {missing:?}"
    );
}

#[test]
fn every_taggable_resource_is_tagged() {
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut modules = all_modules();
    modules.push(Module::example());
    for m in &modules {
        for r in m.blocks("resource") {
            if TAGGABLE.contains(&label(r, 0)) {
                checked += 1;
                if attr(r.body(), "tags").is_none() {
                    problems.push(format!(
                        "{}: {}.{} has no tags",
                        m.label(),
                        label(r, 0),
                        label(r, 1)
                    ));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} taggable resources found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---- Security and operations properties ----------------------------------------------------

#[test]
fn nats_volumes_and_root_disks_are_encrypted() {
    let mut volumes = 0;
    let mut instances = 0;
    let mut problems = Vec::new();
    for m in all_modules() {
        for v in m.resources("aws_ebs_volume") {
            volumes += 1;
            if !matches!(attr(v.body(), "encrypted"), Some(Expression::Bool(true))) {
                problems.push(format!(
                    "{}: aws_ebs_volume.{} is not encrypted",
                    m.label(),
                    label(v, 1)
                ));
            }
        }
        for i in m.resources("aws_instance") {
            instances += 1;
            let disks: Vec<&Block> = ["root_block_device", "ebs_block_device"]
                .iter()
                .flat_map(|k| nested(i.body(), k))
                .collect();
            if nested(i.body(), "root_block_device").is_empty() {
                problems.push(format!(
                    "{}: aws_instance.{} leaves its root disk unencrypted by default",
                    m.label(),
                    label(i, 1)
                ));
            }
            for d in disks {
                if !matches!(attr(d.body(), "encrypted"), Some(Expression::Bool(true))) {
                    problems.push(format!(
                        "{}: aws_instance.{}: {} not encrypted",
                        m.label(),
                        label(i, 1),
                        d.identifier()
                    ));
                }
            }
            // IMDSv2 only: no credential theft through a plain GET to the metadata service.
            let tokens = nested(i.body(), "metadata_options")
                .first()
                .and_then(|o| attr(o.body(), "http_tokens"))
                .map(|e| e.to_string());
            if tokens.as_deref() != Some("\"required\"") {
                problems.push(format!(
                    "{}: aws_instance.{} does not require IMDSv2",
                    m.label(),
                    label(i, 1)
                ));
            }
        }
    }
    assert!(
        volumes >= 1,
        "the NATS store volumes must be aws_ebs_volume resources"
    );
    assert!(instances >= 1, "the NATS nodes must be aws_instance resources");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The top-level `name { ... }` block of a nats-server config, comments removed.
fn conf_block(conf: &str, name: &str) -> Option<Vec<String>> {
    let mut depth = 0i32;
    let mut capture: Option<Vec<String>> = None;
    for raw in conf.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.starts_with("%{") {
            continue; // template directive
        }
        if depth == 0 && capture.is_none() && line.split_whitespace().collect::<Vec<_>>() == [name, "{"] {
            capture = Some(Vec::new());
        } else if let Some(c) = capture.as_mut() {
            c.push(line.to_string());
        }
        depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
        if depth == 0 && capture.is_some() {
            return capture;
        }
    }
    None
}

fn conf_value(block: &[String], key: &str) -> Option<String> {
    block.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

#[test]
fn nats_config_is_a_durable_jetstream_cluster() {
    let m = Module::named("nats-cluster");
    let path = m.dir.join("templates/nats-server.conf.tftpl");
    let conf = std::fs::read_to_string(&path).unwrap();

    let jetstream = conf_block(&conf, "jetstream").expect("the config has a top-level jetstream block");
    assert_eq!(
        conf_value(&jetstream, "sync_interval").as_deref(),
        Some("always"),
        "JetStream must fsync every write (the default 2 minutes loses acknowledged writes on power loss)"
    );
    assert!(
        conf_value(&jetstream, "store_dir").is_some_and(|d| d.starts_with("/var/lib/nats")),
        "the store must be on the mounted EBS volume (/var/lib/nats)"
    );
    let cluster = conf_block(&conf, "cluster").expect("the config has a cluster block");
    assert!(conf_value(&cluster, "name").is_some(), "the cluster has a name");
    assert!(
        cluster.iter().any(|l| l.contains("nats-route://")),
        "the cluster has routes to the other nodes"
    );

    // The template is what the nodes get, and the module pins a nats-server >= 2.11.
    let text: String = m.files.iter().map(|(_, t, _)| t.as_str()).collect();
    assert!(
        text.contains("templates/nats-server.conf.tftpl"),
        "main.tf renders this template"
    );
    let version = m.variables()["nats_server_version"]
        .body()
        .attributes()
        .find(|a| a.key() == "default")
        .map(|a| a.expr().clone());
    let Some(Expression::String(version)) = version else {
        panic!("nats_server_version has a pinned default");
    };
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert!(
        parts.len() == 3 && (parts[0], parts[1]) >= (2, 11),
        "nats-server {version} is older than 2.11"
    );
    let boot = std::fs::read_to_string(m.dir.join("templates/user_data.sh.tftpl")).unwrap();
    assert!(
        boot.contains("${nats_server_version}"),
        "the boot script installs the pinned version"
    );
}

#[test]
fn log_groups_have_retention() {
    let mut groups = 0;
    let mut problems = Vec::new();
    for m in all_modules() {
        for g in m.resources("aws_cloudwatch_log_group") {
            groups += 1;
            match attr(g.body(), "retention_in_days") {
                None | Some(Expression::Null) => problems.push(format!(
                    "{}: log group {} keeps logs forever",
                    m.label(),
                    label(g, 1)
                )),
                Some(Expression::Number(n)) if n.as_u64() == Some(0) => problems.push(format!(
                    "{}: log group {} keeps logs forever",
                    m.label(),
                    label(g, 1)
                )),
                Some(_) => {}
            }
        }
    }
    // jetrun-service, the Lambda and its API access logs, job tasks.
    assert!(groups >= 4, "found only {groups} log groups");
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Lambda writes to /aws/lambda/<function name>: the managed group must be that one, or
    // Lambda creates its own without retention.
    let lambda = Module::named("ingest-lambda");
    let function_name = attr(
        lambda.resource("aws_lambda_function", "this").body(),
        "function_name",
    )
    .unwrap()
    .to_string();
    let expected = format!("\"/aws/lambda/${{{function_name}}}\"");
    let names: Vec<String> = lambda
        .resources("aws_cloudwatch_log_group")
        .iter()
        .filter_map(|g| attr(g.body(), "name").map(|e| e.to_string()))
        .collect();
    assert!(
        names.contains(&expected),
        "no log group named {expected} among {names:?}"
    );
}

#[test]
fn ecs_services_leave_the_desired_count_to_the_autoscaler() {
    let m = Module::named("jetrun-service");
    let services = m.resources("aws_ecs_service");
    assert!(!services.is_empty(), "jetrun-service defines an aws_ecs_service");
    for s in services {
        let ignored: Vec<String> = nested(s.body(), "lifecycle")
            .iter()
            .filter_map(|l| attr(l.body(), "ignore_changes"))
            .flat_map(|e| match e {
                Expression::Array(items) => items.iter().map(|i| i.to_string()).collect(),
                other => vec![other.to_string()],
            })
            .collect();
        assert!(
            ignored.iter().any(|i| i == "desired_count" || i == "all"),
            "aws_ecs_service.{} must ignore desired_count (the ecs-service autoscaler backend owns it), ignores {ignored:?}",
            label(s, 1)
        );
    }
}

#[test]
fn ingest_http_api_routes_reach_jetrun_serve() {
    let m = Module::named("ingest-lambda");
    let mut keys = BTreeSet::new();
    for route in m.resources("aws_apigatewayv2_route") {
        match attr(route.body(), "route_key") {
            Some(Expression::String(k)) => {
                keys.insert(k.clone());
            }
            Some(e) if e.to_string() == "each.value" || e.to_string() == "each.key" => {
                // for_each = toset(local.<name>) or a literal list
                let mut for_each = attr(route.body(), "for_each").expect("a for_each route has for_each");
                if let Expression::FuncCall(f) = for_each
                    && f.name.name.as_str() == "toset"
                {
                    for_each = &f.args[0];
                }
                let list = match for_each {
                    Expression::Traversal(t) if t.expr.to_string() == "local" => match &t.operators[..] {
                        [TraversalOperator::GetAttr(name)] => m.local(name.as_str()),
                        _ => panic!("unexpected for_each {for_each}"),
                    },
                    other => other,
                };
                keys.extend(strings(list));
            }
            other => panic!("cannot resolve route_key {other:?}"),
        }
    }
    for wanted in [
        "POST /webhooks/github",
        "ANY /v1/{proxy+}",
        "GET /health",
        "GET /ready",
    ] {
        assert!(
            keys.contains(wanted),
            "the HTTP API has no route {wanted:?}: {keys:?}"
        );
    }

    let function = m.resource("aws_lambda_function", "this");
    assert_eq!(
        attr(function.body(), "package_type")
            .map(|e| e.to_string())
            .as_deref(),
        Some("\"Image\"")
    );
    assert!(
        !nested(function.body(), "vpc_config").is_empty(),
        "the Lambda must run in the VPC to reach NATS"
    );
    assert!(
        attr(function.body(), "reserved_concurrent_executions").is_some(),
        "the Lambda's concurrency (and so its NATS connections) is bounded"
    );
}

#[test]
fn worker_iam_policy_runs_job_tasks_without_wildcard_actions() {
    let m = Module::named("job-tasks");
    let policy = m.data("aws_iam_policy_document", "worker");
    let statements = nested(policy.body(), "statement");
    let actions: BTreeSet<String> = statements
        .iter()
        .flat_map(|s| attr(s.body(), "actions").map(strings).unwrap_or_default())
        .collect();
    for wanted in [
        "ecs:RunTask",
        "ecs:DescribeTasks",
        "ecs:StopTask",
        "ecs:TagResource",
        "iam:PassRole",
    ] {
        assert!(
            actions.contains(wanted),
            "the worker policy lacks {wanted}: {actions:?}"
        );
    }
    for s in &statements {
        let acts = attr(s.body(), "actions").map(strings).unwrap_or_default();
        let resources = attr(s.body(), "resources").map(strings).unwrap_or_default();
        assert!(
            !resources.iter().any(|r| r == "*"),
            "worker statement {acts:?} applies to every resource"
        );
        // Task operations are confined to this cluster.
        if acts
            .iter()
            .any(|a| ["ecs:RunTask", "ecs:DescribeTasks", "ecs:StopTask"].contains(&a.as_str()))
        {
            let on_cluster = nested(s.body(), "condition").iter().any(|c| {
                attr(c.body(), "variable").map(|v| v.to_string()).as_deref() == Some("\"ecs:cluster\"")
            });
            assert!(on_cluster, "{acts:?} must be conditioned on ecs:cluster");
        }
    }

    // The example gives this policy to the worker's task role.
    let example = Module::example();
    let worker = example
        .blocks("module")
        .find(|b| label(b, 0) == "worker")
        .expect("the example deploys a worker");
    let policies = attr(worker.body(), "task_role_policy_jsons")
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        policies.contains("module.job_tasks.worker_policy_json"),
        "the worker's task role must get module.job_tasks.worker_policy_json, gets {policies}"
    );

    // No IAM statement anywhere grants a wildcard action.
    let mut wildcards = Vec::new();
    let mut modules = all_modules();
    modules.push(Module::example());
    let mut statements_seen = 0;
    for m in &modules {
        for b in m.all_blocks() {
            if let Some(a) = attr(b.body(), "actions") {
                statements_seen += 1;
                wildcards.extend(
                    strings(a)
                        .into_iter()
                        .filter(|x| is_wildcard_action(x))
                        .map(|x| format!("{}: {x}", m.label())),
                );
            }
        }
        for e in m.all_expressions() {
            if let Expression::Object(obj) = e {
                for (k, v) in obj {
                    let key = match k {
                        ObjectKey::Identifier(i) => i.as_str().to_string(),
                        ObjectKey::Expression(e) => e.to_string().trim_matches('"').to_string(),
                        _ => continue,
                    };
                    if key == "Action" || key == "NotAction" {
                        let mut acts = strings(v);
                        if let Expression::String(s) = v {
                            acts.push(s.clone());
                        }
                        wildcards.extend(
                            acts.into_iter()
                                .filter(|x| is_wildcard_action(x))
                                .map(|x| format!("{}: {x}", m.label())),
                        );
                    }
                }
            }
        }
    }
    assert!(
        statements_seen >= 8,
        "found only {statements_seen} IAM statements"
    );
    assert!(wildcards.is_empty(), "wildcard IAM actions: {wildcards:?}");
}

#[test]
fn jobs_run_as_ecs_tasks_and_their_state_reaches_nats_through_the_bridge() {
    let example = Module::example();
    let call = |name: &str| {
        example
            .blocks("module")
            .find(|b| label(b, 0) == name)
            .unwrap_or_else(|| panic!("the example calls module {name}"))
    };
    // The worker uses the ECS runner by default, configured for the job cluster.
    let vars = example.variables();
    let runner_default = attr(vars["worker_runner"].body(), "default").map(|e| e.to_string());
    assert_eq!(runner_default.as_deref(), Some("\"ecs\""));
    let worker_env = attr(call("worker").body(), "environment")
        .map(|e| e.to_string())
        .unwrap_or_default();
    for key in ["JETRUN_RUNNER", "JETRUN_ECS_CONFIG"] {
        assert!(
            worker_env.contains(key),
            "the worker's environment lacks {key}: {worker_env}"
        );
    }
    let ecs_config = example.local("worker_ecs_config").to_string();
    for wanted in [
        "module.job_tasks.cluster_name",
        "module.job_tasks.security_group_id",
        "module.job_tasks.offline_security_group_id",
        "module.job_tasks.default_task_definition_family",
        "var.private_subnet_ids",
        "shared_bucket",
    ] {
        assert!(
            ecs_config.contains(wanted),
            "worker_ecs_config lacks {wanted}: {ecs_config}"
        );
    }
    // The bridge is the target of the job cluster's task-state rule.
    let bridge = call("ecs_bridge");
    let rule = attr(bridge.body(), "task_state_rule_name").map(|e| e.to_string());
    assert_eq!(rule.as_deref(), Some("module.job_tasks.task_state_rule_name"));
    let policy = attr(bridge.body(), "ecs_policy_json").map(|e| e.to_string());
    assert_eq!(policy.as_deref(), Some("module.job_tasks.bridge_policy_json"));

    let m = Module::named("ecs-bridge");
    let target = m.resource("aws_cloudwatch_event_target", "task_state");
    assert!(
        attr(target.body(), "arn").is_some_and(|e| e.to_string().contains("aws_lambda_function.this.arn")),
        "the rule's target is the bridge function"
    );
    // Failures go to the dead-letter queue: undeliverable events and failed invocations.
    for (what, body) in [
        ("the rule target", target.body()),
        (
            "the reconcile target",
            m.resource("aws_cloudwatch_event_target", "reconcile").body(),
        ),
    ] {
        let dlq = nested(body, "dead_letter_config");
        assert!(
            dlq.iter()
                .any(|d| attr(d.body(), "arn").is_some_and(|e| e.to_string().contains("aws_sqs_queue.dlq"))),
            "{what} has no dead-letter queue"
        );
    }
    let f = m.resource("aws_lambda_function", "this");
    assert!(
        nested(f.body(), "dead_letter_config").iter().any(
            |d| attr(d.body(), "target_arn").is_some_and(|e| e.to_string().contains("aws_sqs_queue.dlq"))
        ),
        "the function's failed invocations go to the dead-letter queue"
    );
    let entry = nested(f.body(), "image_config")
        .iter()
        .filter_map(|c| attr(c.body(), "entry_point").map(strings))
        .next()
        .unwrap_or_default();
    assert_eq!(entry, vec!["/usr/local/bin/jetrun-ecs-bridge".to_string()]);
    let invoke = m.resource("aws_lambda_function_event_invoke_config", "this");
    let on_failure: Vec<String> = nested(invoke.body(), "destination_config")
        .iter()
        .flat_map(|d| nested(d.body(), "on_failure"))
        .filter_map(|o| attr(o.body(), "destination").map(|e| e.to_string()))
        .collect();
    assert_eq!(
        on_failure,
        vec!["aws_sqs_queue.dlq.arn".to_string()],
        "asynchronous failures go to the dead-letter queue"
    );
    let q = m.resource("aws_sqs_queue", "dlq");
    assert!(
        attr(q.body(), "sqs_managed_sse_enabled").is_some() && attr(q.body(), "kms_master_key_id").is_some(),
        "the dead-letter queue is encrypted"
    );

    // The bridge's and the worker's ECS permissions stay in the job cluster.
    let jt = Module::named("job-tasks");
    for doc in ["worker", "bridge"] {
        for s in nested(jt.data("aws_iam_policy_document", doc).body(), "statement") {
            let acts = attr(s.body(), "actions").map(strings).unwrap_or_default();
            if acts
                .iter()
                .any(|a| a.starts_with("ecs:") && a != "ecs:TagResource")
            {
                let on_cluster = nested(s.body(), "condition").iter().any(|c| {
                    attr(c.body(), "variable").map(|v| v.to_string()).as_deref() == Some("\"ecs:cluster\"")
                });
                assert!(on_cluster, "{doc}: {acts:?} must be conditioned on ecs:cluster");
            }
        }
    }
    let worker_actions: BTreeSet<String> =
        nested(jt.data("aws_iam_policy_document", "worker").body(), "statement")
            .iter()
            .flat_map(|s| attr(s.body(), "actions").map(strings).unwrap_or_default())
            .collect();
    assert!(
        worker_actions.contains("ecs:ListTasks"),
        "adoption needs ecs:ListTasks"
    );
}

/// The NATS servers Terraform deploys get exactly the users and permissions of
/// `infra/nats/accounts.conf` (the ones `cli/tests/permissions.rs` attacks), with
/// the deployment's prefix templated in: least privilege must hold in the cloud too.
#[test]
fn terraform_nats_users_are_the_tested_least_privilege_users() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let accounts = std::fs::read_to_string(root.join("infra/nats/accounts.conf")).unwrap();
    let block = &accounts[accounts.find("accounts {").unwrap()..];
    // JETRUN_<STREAM> → ${stream_prefix}_<STREAM> (not the $JETRUN_<USER>_PASSWORD
    // variables), then jetrun- and jetrun. → ${prefix}- and ${prefix}.
    let mut templated = String::new();
    let mut rest = block;
    while let Some(i) = rest.find("JETRUN_") {
        let (head, tail) = rest.split_at(i);
        templated.push_str(head);
        let word: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if head.ends_with('$') && word.ends_with("_PASSWORD") {
            templated.push_str("JETRUN_");
        } else {
            templated.push_str("${stream_prefix}_");
        }
        rest = &tail["JETRUN_".len()..];
    }
    templated.push_str(rest);
    let templated = templated
        .replace("jetrun-", "${prefix}-")
        .replace("jetrun.", "${prefix}.");
    let tftpl =
        std::fs::read_to_string(root.join("terraform/modules/nats-cluster/templates/nats-server.conf.tftpl"))
            .unwrap();
    assert!(
        tftpl.contains(templated.trim_end()),
        "the template's accounts block differs from infra/nats/accounts.conf; regenerate it"
    );
    assert!(
        !tftpl.contains("\"$JS.API.>\""),
        "no user may have the whole JetStream API"
    );
    // Every user of the template has its password in the Secrets Manager secret.
    let vars = std::fs::read_to_string(root.join("terraform/modules/nats-cluster/variables.tf")).unwrap();
    for user in [
        "ingest",
        "route",
        "worker",
        "autoscale",
        "bridge",
        "github",
        "operator",
    ] {
        assert!(
            tftpl.contains(&format!("user: {user},")),
            "{user} missing from the template"
        );
        assert!(
            vars.contains(&format!("\\\"{user}\\\"")),
            "{user} missing from the secret's description"
        );
    }
}

// ---- jetrun's own metrics in the observability module ------------------------------------

/// `local.jetrun_metrics` of the observability module: key → (metric name, dimensions).
fn jetrun_metric_defs(m: &Module) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let Expression::Object(obj) = m.local("jetrun_metrics") else {
        panic!("local.jetrun_metrics is not an object literal");
    };
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let key = match k {
            ObjectKey::Identifier(i) => i.as_str().to_string(),
            other => panic!("jetrun_metrics key {other:?} is not an identifier"),
        };
        let Expression::Object(def) = v else {
            panic!("jetrun_metrics.{key} is not an object literal");
        };
        let field = |name: &str| {
            def.iter()
                .find(|(k, _)| matches!(k, ObjectKey::Identifier(i) if i.as_str() == name))
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("jetrun_metrics.{key} has no {name}"))
        };
        let Expression::String(name) = field("name") else {
            panic!("jetrun_metrics.{key}.name is not a string literal");
        };
        let Expression::Array(dims) = field("dimensions") else {
            panic!("jetrun_metrics.{key}.dimensions is not a list literal");
        };
        let dims: BTreeSet<String> = dims
            .iter()
            .map(|d| match d {
                Expression::String(s) => s.clone(),
                other => panic!("jetrun_metrics.{key}.dimensions holds {other}"),
            })
            .collect();
        out.insert(key, (name.clone(), dims));
    }
    out
}

/// `local.jetrun_metrics.<key>.name` → `key`.
fn metric_key_of(e: &Expression) -> Option<String> {
    let Expression::Traversal(t) = e else { return None };
    let Expression::Variable(v) = &t.expr else {
        return None;
    };
    let path: Vec<String> = t
        .operators
        .iter()
        .map(|op| match op {
            TraversalOperator::GetAttr(a) => a.as_str().to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    match (v.as_str(), path.as_slice()) {
        ("local", [m, key, name]) if m == "jetrun_metrics" && name == "name" => Some(key.clone()),
        _ => None,
    }
}

fn is_jetrun_namespace(e: Option<&Expression>) -> bool {
    e.is_some_and(|e| e.to_string() == "local.jetrun_namespace")
}

#[test]
fn the_dashboard_and_alarms_use_only_metrics_jetrun_really_emits() {
    let m = Module::named("observability");
    assert_eq!(
        m.local("jetrun_namespace"),
        &Expression::String(jetrun_telemetry::emf::NAMESPACE.to_string()),
        "the namespace jetrun's EMF lines use"
    );
    // What the code emits: metric name + dimension set (tested in jetrun_telemetry against
    // the EMF encoder's own output).
    let emitted: BTreeSet<(String, BTreeSet<String>)> = jetrun_telemetry::emf::EMITTED
        .iter()
        .flat_map(|e| {
            e.dimensions
                .iter()
                .map(|d| (e.name.to_string(), d.iter().map(|s| s.to_string()).collect()))
        })
        .collect();
    let defs = jetrun_metric_defs(&m);
    assert!(defs.len() >= 10, "{defs:?}");
    let mut problems = Vec::new();
    for (key, (name, dims)) in &defs {
        if !emitted.contains(&(name.clone(), dims.clone())) {
            problems.push(format!(
                "jetrun_metrics.{key}: {name} with dimensions {dims:?} is not emitted by jetrun"
            ));
        }
    }

    // Nothing bypasses the list: no other string or template literal names a metric.
    fn literals<'a>(body: &'a Body, skip: &str, out: &mut Vec<&'a Expression>) {
        for a in body.attributes() {
            if a.key() != skip {
                walk(a.expr(), out);
            }
        }
        for b in body.blocks() {
            literals(b.body(), skip, out);
        }
    }
    let mut exprs = Vec::new();
    for (_, _, body) in &m.files {
        literals(body, "jetrun_metrics", &mut exprs);
    }
    for e in exprs {
        let texts: Vec<String> = match e {
            Expression::String(s) => vec![s.clone()],
            Expression::TemplateExpr(t) => Template::from_expr(t)
                .map(|t| {
                    t.elements()
                        .iter()
                        .filter_map(|el| match el {
                            Element::Literal(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        for s in texts {
            if s.contains("jetrun_") {
                problems.push(format!("a metric named outside local.jetrun_metrics: {s:?}"));
            }
        }
    }

    // Every reference to the list names an entry.
    for (path, text, _) in &m.files {
        for prefix in ["local.jetrun_metrics.", "local.jetrun_search."] {
            for key in references(text, prefix) {
                if !defs.contains_key(&key) {
                    problems.push(format!("{}: {prefix}{key} is not defined", path.display()));
                }
            }
        }
    }
    // The dashboard's searches: [metric key, statistic, label].
    let mut searches = 0;
    for e in m.all_expressions() {
        let Expression::Object(obj) = e else { continue };
        let Some((_, Expression::Array(list))) = obj
            .iter()
            .find(|(k, _)| matches!(k, ObjectKey::Identifier(i) if i.as_str() == "searches"))
        else {
            continue;
        };
        for s in list {
            let items = strings(s);
            let [key, stat, _label] = items.as_slice() else {
                problems.push(format!("a search is not [key, statistic, label]: {s}"));
                continue;
            };
            searches += 1;
            if !defs.contains_key(key) {
                problems.push(format!("a dashboard search names {key:?}, not in jetrun_metrics"));
            }
            let percentile = stat
                .strip_prefix('p')
                .and_then(|p| p.parse::<f64>().ok())
                .is_some_and(|p| (0.0..=100.0).contains(&p));
            if !(percentile
                || ["Sum", "Maximum", "Minimum", "Average", "SampleCount"].contains(&stat.as_str()))
            {
                problems.push(format!("{key}: {stat:?} is not a CloudWatch statistic"));
            }
        }
    }
    assert!(
        searches >= 9,
        "the dashboard's jetrun widgets were not found ({searches})"
    );

    // Alarms (and the metrics of their metric math) on the jetrun namespace: the metric
    // comes from the list and the dimensions are exactly that entry's set.
    let mut alarms = 0;
    let mut check_metric = |owner: String, body: &Body, problems: &mut Vec<String>| {
        if !is_jetrun_namespace(attr(body, "namespace")) {
            return;
        }
        alarms += 1;
        let Some(key) = attr(body, "metric_name").and_then(metric_key_of) else {
            problems.push(format!(
                "{owner}: metric_name is not local.jetrun_metrics.<key>.name"
            ));
            return;
        };
        let Some((name, dims)) = defs.get(&key) else {
            problems.push(format!("{owner}: jetrun_metrics.{key} is not defined"));
            return;
        };
        let used = attr(body, "dimensions").map(object_keys).unwrap_or_default();
        if &used != dims {
            problems.push(format!(
                "{owner}: {name} queried with dimensions {used:?}, emitted with {dims:?}"
            ));
        }
    };
    for alarm in m.resources("aws_cloudwatch_metric_alarm") {
        let owner = format!("aws_cloudwatch_metric_alarm.{}", label(alarm, 1));
        check_metric(owner.clone(), alarm.body(), &mut problems);
        let mut inner = Vec::new();
        fn metric_blocks<'a>(body: &'a Body, out: &mut Vec<&'a Block>) {
            for b in body.blocks() {
                if b.identifier() == "metric" {
                    out.push(b);
                }
                metric_blocks(b.body(), out);
            }
        }
        metric_blocks(alarm.body(), &mut inner);
        for b in inner {
            check_metric(format!("{owner} (metric_query)"), b.body(), &mut problems);
        }
    }
    assert!(alarms >= 7, "the jetrun alarms were not found ({alarms})");

    // The failure rate's statuses are jetrun's terminal ones.
    let terminal: BTreeSet<String> = jetrun_core::JobStatus::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| s.as_str().to_string())
        .collect();
    let listed: BTreeSet<String> = strings(m.local("terminal_statuses")).into_iter().collect();
    assert_eq!(listed, terminal, "local.terminal_statuses");
    for s in strings(m.local("failed_statuses")) {
        assert!(terminal.contains(&s), "failed_statuses: {s} is not terminal");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_example_writes_emf_where_jetrun_runs() {
    let ex = Module::example();
    let env = ex.local("metrics_env").to_string();
    assert!(
        env.contains("JETRUN_METRICS_EMF") && env.contains("stdout"),
        "{env}"
    );
    let text: String = ex.files.iter().map(|(_, t, _)| t.as_str()).collect();
    assert!(
        text.contains("merge(local.base_env, local.metrics_env"),
        "the ECS services' environment includes local.metrics_env"
    );
    let ingest = ex
        .blocks("module")
        .find(|b| label(b, 0) == "ingest")
        .expect("module ingest");
    let env = attr(ingest.body(), "environment").unwrap().to_string();
    assert!(
        env.contains("local.metrics_env"),
        "ingest Lambda environment: {env}"
    );
}

#[test]
fn lambda_functions_trace_with_xray_and_may_write_segments() {
    for (module, mode) in [
        ("ingest-lambda", "var.tracing_mode"),
        ("ecs-bridge", "\"Active\""),
    ] {
        let m = Module::named(module);
        let f = m.resource("aws_lambda_function", "this");
        let tracing = nested(f.body(), "tracing_config");
        assert_eq!(tracing.len(), 1, "{module}: no tracing_config");
        assert_eq!(
            attr(tracing[0].body(), "mode").map(|e| e.to_string()).as_deref(),
            Some(mode),
            "{module}"
        );
        let xray = m.resource("aws_iam_role_policy_attachment", "xray");
        let arn = attr(xray.body(), "policy_arn").unwrap().to_string();
        assert!(
            arn.contains(":iam::aws:policy/AWSXRayDaemonWriteAccess"),
            "{module}: {arn}"
        );
        assert_eq!(
            attr(xray.body(), "role").unwrap().to_string(),
            "aws_iam_role.function.name",
            "{module}: the function's own role"
        );
    }
    // The variable defaults to Active and refuses anything Lambda does not know.
    let m = Module::named("ingest-lambda");
    let v = m.variables()["tracing_mode"];
    assert_eq!(
        attr(v.body(), "default"),
        Some(&Expression::String("Active".into()))
    );
    let validation = nested(v.body(), "validation");
    assert!(
        attr(validation[0].body(), "condition")
            .unwrap()
            .to_string()
            .contains("PassThrough")
    );
}

// ---- Per-queue alarms and the OpenTelemetry collector on AWS ----------------------------

/// The value of `key` in an object literal.
fn field<'a>(e: &'a Expression, key: &str) -> Option<&'a Expression> {
    let Expression::Object(obj) = e else { return None };
    obj.iter().find_map(|(k, v)| {
        let name = match k {
            ObjectKey::Identifier(i) => i.as_str().to_string(),
            ObjectKey::Expression(Expression::String(s)) => s.clone(),
            _ => return None,
        };
        (name == key).then_some(v)
    })
}

fn default_of<'a>(m: &'a Module, var: &str) -> Option<&'a Expression> {
    let vars = m.variables();
    let v = vars
        .get(var)
        .unwrap_or_else(|| panic!("{}: no variable {var}", m.label()));
    attr(v.body(), "default")
}

fn type_of(m: &Module, var: &str) -> String {
    let vars = m.variables();
    let v = vars
        .get(var)
        .unwrap_or_else(|| panic!("{}: no variable {var}", m.label()));
    attr(v.body(), "type").map(|e| e.to_string()).unwrap_or_default()
}

/// The string literals a `contains([...], x)` in the variable's validation allows.
fn allowed_values(m: &Module, var: &str) -> Vec<String> {
    let vars = m.variables();
    let condition = nested(vars[var].body(), "validation")
        .first()
        .and_then(|v| attr(v.body(), "condition"))
        .unwrap_or_else(|| panic!("{}: {var} has no validation", m.label()));
    let mut all = Vec::new();
    walk(condition, &mut all);
    all.into_iter()
        .find_map(|e| match e {
            Expression::FuncCall(f) if f.name.name.as_str() == "contains" => f.args.first().map(strings),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{}: {var}'s validation has no contains([...], ...)", m.label()))
}

/// Position of the argument rendered as `arg` in a `merge(...)` expression.
fn merge_position(e: &Expression, arg: &str) -> Option<usize> {
    let Expression::FuncCall(f) = e else { return None };
    if f.name.name.as_str() != "merge" {
        return None;
    }
    f.args.iter().position(|a| a.to_string() == arg)
}

#[test]
fn listed_queues_get_their_own_wait_and_backlog_alarms() {
    let m = Module::named("observability");
    assert_eq!(type_of(&m, "queues"), "list(string)");
    assert_eq!(
        default_of(&m, "queues"),
        Some(&Expression::Array(vec![])),
        "no per-queue alarm unless queues are named"
    );
    let overrides = [
        (
            "queue_wait_p99_threshold_seconds_by_queue",
            "queue_wait_p99_threshold_seconds",
        ),
        (
            "backlog_age_threshold_seconds_by_queue",
            "backlog_age_threshold_seconds",
        ),
    ];
    for (by_queue, _) in overrides {
        assert_eq!(type_of(&m, by_queue), "map(number)");
        assert!(
            matches!(default_of(&m, by_queue), Some(Expression::Object(o)) if o.is_empty()),
            "{by_queue} defaults to no override"
        );
    }

    let defs = jetrun_metric_defs(&m);
    let mut covered = BTreeSet::new();
    for alarm in m.resources("aws_cloudwatch_metric_alarm") {
        let body = alarm.body();
        let name = label(alarm, 1);
        let Some(for_each) = attr(body, "for_each").map(|e| e.to_string()) else {
            continue;
        };
        if !for_each.contains("var.queues") {
            continue;
        }
        // One instance per listed queue, none when jetrun's metrics are off.
        assert!(
            for_each.contains("toset(var.queues)") && for_each.contains("var.jetrun_metrics"),
            "{name}: for_each = {for_each}"
        );
        let key = attr(body, "metric_name")
            .and_then(metric_key_of)
            .unwrap_or_else(|| panic!("{name}: metric_name is not local.jetrun_metrics.<key>.name"));
        let Some(Expression::Object(dims)) = attr(body, "dimensions") else {
            panic!("{name}: dimensions is not an object literal");
        };
        let dims: Vec<(String, String)> = dims
            .iter()
            .map(|(k, v)| (format!("{k}"), v.to_string()))
            .collect();
        assert!(
            matches!(dims.as_slice(), [(k, v)] if k == "queue" && (v == "each.value" || v == "each.key")),
            "{name}: dimensions {dims:?}, wanted {{ queue = each.value }}"
        );
        assert_eq!(
            defs[&key].1,
            BTreeSet::from(["queue".to_string()]),
            "{name}: {key} must be the per-queue series"
        );
        // The alarm names its queue and tells the operator where to look.
        let alarm_name = attr(body, "alarm_name").unwrap().to_string();
        assert!(alarm_name.contains("each."), "{name}: alarm_name {alarm_name}");
        let description = attr(body, "alarm_description").unwrap().to_string();
        for wanted in ["each.value", "`jetrun top`", "docs/operations.md"] {
            assert!(
                description.contains(wanted),
                "{name}: the description lacks {wanted}: {description}"
            );
        }
        // Its threshold: the queue's override, else the global one.
        let threshold = attr(body, "threshold").unwrap().to_string();
        let (by_queue, global) = if key == "queue_wait" {
            overrides[0]
        } else {
            overrides[1]
        };
        assert!(
            threshold.contains(&format!("var.{by_queue}"))
                && threshold.contains(&format!("var.{global}"))
                && threshold.contains("each.value"),
            "{name}: threshold = {threshold}"
        );
        let actions: String = attr(body, "alarm_actions")
            .map(|e| e.to_string())
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(actions, "[local.topic_arn]", "{name}");
        covered.insert(defs[&key].0.clone());
    }
    assert_eq!(
        covered,
        BTreeSet::from([
            "jetrun_job_queue_wait_seconds".to_string(),
            "jetrun_queue_oldest_pending_age_seconds".to_string(),
        ]),
        "per-queue alarms on submit-to-start and backlog age"
    );

    // The aggregate alarms stay: they catch the queues nobody listed.
    for name in ["queue_wait_p99", "backlog_age"] {
        let a = m.resource("aws_cloudwatch_metric_alarm", name);
        assert!(
            matches!(attr(a.body(), "dimensions"), Some(Expression::Object(o)) if o.is_empty()),
            "{name} is over every queue"
        );
    }
    // An override for a queue without alarms is refused, not silently ignored.
    let conditions: Vec<String> = m
        .all_blocks()
        .into_iter()
        .filter(|b| b.identifier() == "precondition")
        .filter_map(|b| attr(b.body(), "condition").map(|e| e.to_string()))
        .collect();
    for (by_queue, _) in overrides {
        assert!(
            conditions
                .iter()
                .any(|c| c.contains(&format!("var.{by_queue}")) && c.contains("var.queues")),
            "no precondition ties {by_queue} to queues: {conditions:?}"
        );
    }
    // alarm_names lists them.
    let outputs = m
        .files
        .iter()
        .find(|(p, _, _)| p.ends_with("outputs.tf"))
        .map(|(_, t, _)| t.as_str())
        .unwrap();
    for r in ["queue_wait_p99_per_queue", "backlog_age_per_queue"] {
        assert!(
            outputs.contains(&format!("aws_cloudwatch_metric_alarm.{r}")),
            "alarm_names lacks {r}"
        );
    }

    // The example alarms on the queues its worker serves.
    let example = Module::example();
    let call = example
        .blocks("module")
        .find(|b| label(b, 0) == "observability")
        .unwrap();
    assert_eq!(
        attr(call.body(), "queues").map(|e| e.to_string()).as_deref(),
        Some("var.queues")
    );
    let worker = example
        .blocks("module")
        .find(|b| label(b, 0) == "worker")
        .unwrap();
    assert!(
        attr(worker.body(), "environment")
            .unwrap()
            .to_string()
            .contains("join(\",\", var.queues)"),
        "var.queues is what the worker serves (JETRUN_QUEUES)"
    );
}

#[test]
fn lambda_functions_export_spans_to_a_collector_extension_when_asked() {
    for module in ["ingest-lambda", "ecs-bridge"] {
        let m = Module::named(module);
        // Off unless asked.
        assert_eq!(
            default_of(&m, "otel_collector_extension"),
            Some(&Expression::Bool(false)),
            "{module}"
        );
        for v in [
            "otel_collector_config",
            "otel_traces_sampler",
            "otel_traces_sampler_arg",
        ] {
            assert_eq!(default_of(&m, v), Some(&Expression::Null), "{module}: {v}");
        }
        let env = m.local("otel_env").to_string();
        for wanted in [
            "var.otel_collector_extension ? { OTEL_EXPORTER_OTLP_ENDPOINT = \"http://localhost:4318\" }",
            "var.otel_collector_config == null ? {} : { OPENTELEMETRY_COLLECTOR_CONFIG_URI = var.otel_collector_config }",
            "OTEL_TRACES_SAMPLER = var.otel_traces_sampler",
            "OTEL_TRACES_SAMPLER_ARG = tostring(var.otel_traces_sampler_arg)",
        ] {
            assert!(env.contains(wanted), "{module}: otel_env lacks {wanted}: {env}");
        }
        // Before the caller's environment, so a value the caller sets wins.
        let environment = m.local("environment");
        let otel = merge_position(environment, "local.otel_env");
        let callers = merge_position(environment, "var.environment");
        assert!(
            matches!((otel, callers), (Some(o), Some(c)) if o < c),
            "{module}: local.environment = {environment}"
        );
        let f = m.resource("aws_lambda_function", "this");
        let vars = nested(f.body(), "environment")
            .first()
            .and_then(|e| attr(e.body(), "variables"))
            .map(|e| e.to_string());
        assert_eq!(vars.as_deref(), Some("local.environment"), "{module}");
        // Container-image functions cannot take layers (Lambda refuses them): the collector
        // extension has to be in the image.
        assert_eq!(
            attr(f.body(), "package_type").map(|e| e.to_string()).as_deref(),
            Some("\"Image\"")
        );
        assert!(
            attr(f.body(), "layers").is_none(),
            "{module}: layers on an image function"
        );
    }
    // The collector writes to X-Ray even when the function's own tracing is PassThrough.
    let ingest = Module::named("ingest-lambda");
    let count = attr(
        ingest.resource("aws_iam_role_policy_attachment", "xray").body(),
        "count",
    )
    .unwrap()
    .to_string();
    assert!(count.contains("var.otel_collector_extension"), "{count}");

    // The example passes its switch and sampler to both functions.
    let example = Module::example();
    for name in ["ingest", "ecs_bridge"] {
        let call = example.blocks("module").find(|b| label(b, 0) == name).unwrap();
        for (arg, value) in [
            ("otel_collector_extension", "var.lambda_otel_collector"),
            ("otel_traces_sampler", "var.otel_traces_sampler"),
            ("otel_traces_sampler_arg", "var.otel_traces_sampler_arg"),
        ] {
            assert_eq!(
                attr(call.body(), arg).map(|e| e.to_string()).as_deref(),
                Some(value),
                "module.{name}.{arg}"
            );
        }
    }
}

#[test]
fn ecs_services_run_a_collector_sidecar_only_when_given_its_image() {
    let m = Module::named("jetrun-service");
    assert_eq!(default_of(&m, "otel_collector_image"), Some(&Expression::Null));
    for v in ["otel_traces_sampler", "otel_traces_sampler_arg"] {
        assert_eq!(default_of(&m, v), Some(&Expression::Null), "{v}");
    }
    assert_eq!(
        m.local("otel_sidecar").to_string(),
        "var.otel_collector_image != null"
    );

    // The sidecar: the given image, not essential, logging like the jetrun container.
    let collector = m.local("otel_collector");
    assert_eq!(
        field(collector, "image").map(|e| e.to_string()).as_deref(),
        Some("var.otel_collector_image")
    );
    assert_eq!(
        field(collector, "essential"),
        Some(&Expression::Bool(false)),
        "a dead collector must not stop jetrun"
    );
    let jetrun = m.local("container_base");
    assert_eq!(field(jetrun, "essential"), Some(&Expression::Bool(true)));
    let logs = field(collector, "logConfiguration").map(|e| e.to_string());
    assert!(logs.is_some(), "the sidecar logs");
    assert_eq!(logs, field(jetrun, "logConfiguration").map(|e| e.to_string()));
    assert_eq!(
        field(m.local("log_configuration"), "logDriver"),
        Some(&Expression::String("awslogs".into()))
    );

    // Only with an image: the task's containers filter the sidecar on local.otel_sidecar.
    let mut parts = Vec::new();
    walk(m.local("containers"), &mut parts);
    assert!(
        parts.iter().any(|e| matches!(e, Expression::ForExpr(f)
            if f.collection_expr.to_string().contains("local.otel_collector")
                && f.cond_expr.as_ref().map(|c| c.to_string()).as_deref() == Some("local.otel_sidecar"))),
        "local.containers = {}",
        m.local("containers")
    );
    assert_eq!(
        attr(
            m.resource("aws_ecs_task_definition", "this").body(),
            "container_definitions"
        )
        .map(|e| e.to_string())
        .as_deref(),
        Some("jsonencode(local.containers)")
    );
    // jetrun's own container: the collector starts first (dependsOn, only with it), and
    // the endpoint is set for it unless the caller's environment names one.
    let container = m.local("container").to_string();
    assert!(
        container.contains("dependsOn") && container.contains("if local.otel_sidecar"),
        "{container}"
    );
    let env = m.local("otel_env").to_string();
    assert!(
        env.contains("local.otel_sidecar ? { OTEL_EXPORTER_OTLP_ENDPOINT = \"http://localhost:4318\" }"),
        "{env}"
    );
    assert_eq!(merge_position(m.local("environment"), "local.otel_env"), Some(0));
    assert_eq!(merge_position(m.local("environment"), "var.environment"), Some(1));
    assert!(
        field(jetrun, "environment")
            .unwrap()
            .to_string()
            .contains("local.environment")
    );

    // X-Ray writes for the collector: exactly two actions, only with the sidecar.
    let doc = m.data("aws_iam_policy_document", "otel_collector");
    assert_eq!(
        attr(doc.body(), "count").map(|e| e.to_string()).as_deref(),
        Some("local.otel_sidecar ? 1 : 0")
    );
    let actions: Vec<String> = nested(doc.body(), "statement")
        .iter()
        .flat_map(|s| attr(s.body(), "actions").map(strings).unwrap_or_default())
        .collect();
    assert_eq!(actions, vec!["xray:PutTraceSegments", "xray:PutTelemetryRecords"]);
    let policy = m.resource("aws_iam_role_policy", "otel_collector");
    assert_eq!(
        attr(policy.body(), "count").map(|e| e.to_string()).as_deref(),
        Some("local.otel_sidecar ? 1 : 0")
    );
    assert_eq!(
        attr(policy.body(), "role").map(|e| e.to_string()).as_deref(),
        Some("aws_iam_role.task.id")
    );
    // ... and no other statement of any module grants an X-Ray action (the Lambda
    // functions use the AWS-managed X-Ray policy).
    let mut modules = all_modules();
    modules.push(Module::example());
    for module in &modules {
        for (_, _, body) in &module.files {
            for top in body.blocks() {
                let mut all = Vec::new();
                fn collect<'a>(body: &'a Body, out: &mut Vec<&'a Block>) {
                    for b in body.blocks() {
                        out.push(b);
                        collect(b.body(), out);
                    }
                }
                collect(top.body(), &mut all);
                let xray = all.iter().any(|b| {
                    attr(b.body(), "actions")
                        .map(strings)
                        .unwrap_or_default()
                        .iter()
                        .any(|a| a.starts_with("xray:"))
                });
                let is_the_collector_doc = module.label() == "modules/jetrun-service"
                    && top.identifier() == "data"
                    && label(top, 1) == "otel_collector";
                assert!(
                    !xray || is_the_collector_doc,
                    "{}: {} {} grants X-Ray actions",
                    module.label(),
                    top.identifier(),
                    top.labels()
                        .iter()
                        .map(|l| l.as_str())
                        .collect::<Vec<_>>()
                        .join(".")
                );
            }
        }
    }

    // The example gives route, worker and autoscale the same collector and sampler.
    let example = Module::example();
    for name in ["route", "worker", "autoscale"] {
        let call = example.blocks("module").find(|b| label(b, 0) == name).unwrap();
        for (arg, value) in [
            ("otel_collector_image", "var.otel_collector_image"),
            ("otel_traces_sampler", "var.otel_traces_sampler"),
            ("otel_traces_sampler_arg", "var.otel_traces_sampler_arg"),
        ] {
            assert_eq!(
                attr(call.body(), arg).map(|e| e.to_string()).as_deref(),
                Some(value),
                "module.{name}.{arg}"
            );
        }
    }
}

/// What the modules write into OTEL_* is what jetrun's exporter accepts: the collector's
/// endpoint, and every sampler the variables' validation lets through.
#[test]
fn the_otel_settings_the_modules_write_are_ones_jetrun_accepts() {
    for module in ["ingest-lambda", "ecs-bridge", "jetrun-service"] {
        let m = Module::named(module);
        let mut parts = Vec::new();
        walk(m.local("otel_env"), &mut parts);
        let endpoints: Vec<&String> = parts
            .iter()
            .filter_map(|e| match e {
                Expression::String(s) if s.starts_with("http") => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(
            endpoints,
            vec!["http://localhost:4318"],
            "{module}: the collector's OTLP/HTTP port"
        );
        let samplers = allowed_values(&m, "otel_traces_sampler");
        assert!(samplers.len() >= 6, "{module}: {samplers:?}");
        for sampler in &samplers {
            let env = BTreeMap::from([
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoints[0].clone()),
                ("OTEL_TRACES_SAMPLER", sampler.clone()),
                // tostring(0.1), as the modules render otel_traces_sampler_arg.
                ("OTEL_TRACES_SAMPLER_ARG", "0.1".to_string()),
            ]);
            let cfg = jetrun_telemetry::OtelConfig::from_lookup(|k| env.get(k).cloned(), "jetrun")
                .unwrap_or_else(|e| panic!("{module}: jetrun refuses {sampler}: {e}"))
                .unwrap_or_else(|| panic!("{module}: export off with {env:?}"));
            assert_eq!(cfg.traces_endpoint, "http://localhost:4318/v1/traces");
        }
        // The ratio bounds are jetrun's: [0, 1].
        let vars = m.variables();
        let arg = nested(vars["otel_traces_sampler_arg"].body(), "validation")
            .first()
            .and_then(|v| attr(v.body(), "condition"))
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(arg.contains(">= 0") && arg.contains("<= 1"), "{module}: {arg}");
        for bad in ["-0.1", "1.5"] {
            let env = BTreeMap::from([
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoints[0].clone()),
                ("OTEL_TRACES_SAMPLER", "traceidratio".to_string()),
                ("OTEL_TRACES_SAMPLER_ARG", bad.to_string()),
            ]);
            assert!(
                jetrun_telemetry::OtelConfig::from_lookup(|k| env.get(k).cloned(), "jetrun").is_err(),
                "jetrun accepts ratio {bad}, which the validation refuses"
            );
        }
    }
}

/// `cond ? [a, b] : [c]` (or a concat against a list literal) is not a choice between two
/// lists in Terraform: tuples of different lengths either fail at plan ("Inconsistent
/// conditional result types") or are unified into a list of string maps, so numbers reach
/// JSON as strings. An empty list on one side is fine; anything else goes through a
/// filter (`[for x in [...] : x if cond]`).
#[test]
fn no_conditional_chooses_between_tuples() {
    fn tuple_like(e: &Expression) -> Option<Option<usize>> {
        match e {
            Expression::Array(items) => Some(Some(items.len())),
            Expression::FuncCall(f) if ["concat", "flatten"].contains(&f.name.name.as_str()) => Some(None),
            Expression::ForExpr(f) if f.key_expr.is_none() => Some(None),
            Expression::Parenthesis(p) => tuple_like(p),
            _ => None,
        }
    }
    let mut problems = Vec::new();
    let mut modules = all_modules();
    modules.push(Module::example());
    for m in &modules {
        for e in m.all_expressions() {
            let Expression::Conditional(c) = e else { continue };
            let (Some(t), Some(f)) = (tuple_like(&c.true_expr), tuple_like(&c.false_expr)) else {
                continue;
            };
            let fine = t == Some(0) || f == Some(0) || (t.is_some() && t == f);
            if !fine {
                problems.push(format!("{}: {e}", m.label()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
