//! The operations assets in `ops/` agree with the switch they watch: the Prometheus rules
//! load and pass their unit tests (promtool), every alert is labelled, annotated, tested
//! both ways and has its runbook section, the Grafana dashboard is well formed, and every
//! metric and label value the rules and the dashboard name is one a running switch exports.
//! The switch's own `/metrics`, after a call, passes `promtool check metrics` and carries
//! no label that names a customer, a number or a call.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use waswitch::store::CdrRepository;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files of `ops/prometheus` ending in `suffix`, sorted.
fn prometheus_files(suffix: &str) -> Vec<PathBuf> {
    let dir = repo().join("ops/prometheus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// The rule files (every `.yml` that is not a unit test).
fn rule_files() -> Vec<PathBuf> {
    let files: Vec<PathBuf> = prometheus_files(".yml")
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".test.yml"))
        .collect();
    assert!(
        files.len() >= 2,
        "no rule files in ops/prometheus: {files:?}"
    );
    files
}

/// Runs promtool with `args` (and `stdin`): whether it succeeded, and what it printed.
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian: the prometheus package; .ci/run installs it)");
    {
        let mut input = child.stdin.take().expect("promtool's stdin");
        if let Some(text) = stdin {
            input
                .write_all(text.as_bytes())
                .expect("/metrics text written to promtool");
        }
    }
    let out = child.wait_with_output().expect("promtool's output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------------------
// The rule files, read as far as this test needs: the subset of YAML they are written in
// (block mappings and lists, `|` and `>-` scalars, quoted and flow values).

#[derive(Debug, Default, Clone)]
struct Rule {
    /// `alert` or `record`.
    kind: String,
    name: String,
    expr: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// A flow mapping, `{a: b, c: "d"}`.
fn flow_map(value: &str) -> BTreeMap<String, String> {
    value
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split(',')
        .filter_map(|pair| pair.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), unquote(v)))
        .collect()
}

/// The value of `key: value` at `lines[*i]`, reading a block scalar's lines after it
/// (`|` keeps the line breaks, `>`/`>-` folds them into spaces); `*i` ends on its last line.
fn scalar(lines: &[&str], i: &mut usize, value: &str) -> String {
    let value = value.trim();
    if !(value.starts_with('|') || value.starts_with('>')) {
        return unquote(value);
    }
    let key_indent = indent(lines[*i]);
    let mut parts = Vec::new();
    while *i + 1 < lines.len()
        && (lines[*i + 1].trim().is_empty() || indent(lines[*i + 1]) > key_indent)
    {
        *i += 1;
        parts.push(lines[*i].trim());
    }
    while parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts.join(if value.starts_with('|') { "\n" } else { " " })
}

/// The rules (alerting and recording) of a rule file.
fn parse_rules(path: &Path) -> Vec<Rule> {
    let text = read(path);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut rule_indent = 0;
    // The mapping being filled: `labels` or `annotations`, and the indent of its key.
    let mut nested: Option<(String, usize)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let entry = trimmed.strip_prefix("- ");
        if let Some((kind, name)) = entry.and_then(|e| e.split_once(':')) {
            if kind == "alert" || kind == "record" {
                rules.push(Rule {
                    kind: kind.to_string(),
                    name: unquote(name),
                    ..Rule::default()
                });
                rule_indent = indent(line) + 2;
                nested = None;
                i += 1;
                continue;
            }
        }
        let Some(rule) = rules.last_mut() else {
            i += 1;
            continue;
        };
        if trimmed.is_empty() {
            i += 1;
            continue;
        }
        if indent(line) < rule_indent {
            // Out of the rule (a new group, `rules:`).
            nested = None;
            i += 1;
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            i += 1;
            continue;
        };
        match &nested {
            Some((map, at)) if indent(line) > *at => {
                let v = scalar(&lines, &mut i, value);
                let target = if map == "labels" {
                    &mut rule.labels
                } else {
                    &mut rule.annotations
                };
                target.insert(key.trim().to_string(), v);
            }
            _ => {
                nested = None;
                match key.trim() {
                    "expr" => rule.expr = scalar(&lines, &mut i, value),
                    map @ ("labels" | "annotations") => {
                        if value.trim().is_empty() {
                            nested = Some((map.to_string(), indent(line)));
                        } else {
                            let flow = flow_map(value);
                            let target = if map == "labels" {
                                &mut rule.labels
                            } else {
                                &mut rule.annotations
                            };
                            target.extend(flow);
                        }
                    }
                    _ => {}
                }
            }
        }
        i += 1;
    }
    rules
}

fn alerts() -> Vec<Rule> {
    let rules = parse_rules(&repo().join("ops/prometheus/alerts.yml"));
    assert!(
        rules.iter().all(|r| r.kind == "alert"),
        "alerts.yml holds alerting rules only"
    );
    rules
}

// ---------------------------------------------------------------------------------------
// PromQL, read as far as this test needs: the series an expression selects, with their
// label matchers, and the labels it groups by.

#[derive(Debug, Clone)]
struct Selector {
    name: String,
    /// (label, operator, value)
    matchers: Vec<(String, String, String)>,
}

#[derive(Debug, Default)]
struct Query {
    selectors: Vec<Selector>,
    grouping: BTreeSet<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Skips a quoted string starting at `chars[i]`; returns the index after it and its text.
fn quoted(chars: &[char], i: usize) -> (usize, String) {
    let quote = chars[i];
    let mut j = i + 1;
    let mut text = String::new();
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && j + 1 < chars.len() {
            j += 1;
        }
        text.push(chars[j]);
        j += 1;
    }
    (j + 1, text)
}

fn parse_query(expr: &str) -> Query {
    // A Grafana variable query names its metric first.
    let expr = match expr.trim().strip_prefix("label_values(") {
        Some(rest) => rest.split(',').next().unwrap_or(rest),
        None => expr,
    };
    let chars: Vec<char> = expr.chars().collect();
    let mut query = Query::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = quoted(&chars, i).0;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable, or a number (1e-9, 0.7).
            i += 1;
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let follows = chars.get(next).copied();
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
            {
                if follows == Some('(') {
                    let close = chars[next..]
                        .iter()
                        .position(|&c| c == ')')
                        .map_or(chars.len(), |p| next + p);
                    let inside: String = chars[next + 1..close].iter().collect();
                    if word == "by" || word == "without" {
                        query.grouping.extend(
                            inside
                                .split(',')
                                .map(|l| l.trim().to_string())
                                .filter(|l| !l.is_empty()),
                        );
                    }
                    i = close + 1;
                }
                continue;
            }
            if follows == Some('(')
                || AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
            {
                continue;
            }
            // A metric name, with or without matchers.
            let mut selector = Selector {
                name: word,
                matchers: Vec::new(),
            };
            if follows == Some('{') {
                let mut j = next + 1;
                loop {
                    while j < chars.len() && (chars[j].is_whitespace() || chars[j] == ',') {
                        j += 1;
                    }
                    if j >= chars.len() || chars[j] == '}' {
                        break;
                    }
                    let label_start = j;
                    while j < chars.len() && is_ident(chars[j]) {
                        j += 1;
                    }
                    let label: String = chars[label_start..j].iter().collect();
                    while j < chars.len() && chars[j].is_whitespace() {
                        j += 1;
                    }
                    let op_start = j;
                    while j < chars.len() && ['=', '!', '~'].contains(&chars[j]) {
                        j += 1;
                    }
                    let op: String = chars[op_start..j].iter().collect();
                    while j < chars.len() && chars[j].is_whitespace() {
                        j += 1;
                    }
                    assert!(
                        j < chars.len() && ['"', '\''].contains(&chars[j]) && !label.is_empty(),
                        "a label matcher not understood in {expr}"
                    );
                    let (after, value) = quoted(&chars, j);
                    selector.matchers.push((label, op, value));
                    j = after;
                }
                i = j + 1;
            }
            query.selectors.push(selector);
        } else {
            i += 1;
        }
    }
    query
}

// ---------------------------------------------------------------------------------------
// The Prometheus text of a running switch.

/// Each series name in a `/metrics` text, with each of its labels and the values seen.
type Exported = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// The samples of a `/metrics` text: (name, labels).
fn samples(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find('{') {
            Some(brace) => (&line[..brace], &line[brace..]),
            None => (line.split_whitespace().next().unwrap_or(line), ""),
        };
        let mut labels = Vec::new();
        if !rest.is_empty() {
            let chars: Vec<char> = rest.chars().collect();
            let mut j = 1;
            while j < chars.len() && chars[j] != '}' {
                let start = j;
                while j < chars.len() && chars[j] != '=' {
                    j += 1;
                }
                let label: String = chars[start..j].iter().collect();
                let (after, value) = quoted(&chars, j + 1);
                labels.push((label.trim_matches(',').trim().to_string(), value));
                j = after;
                if j < chars.len() && chars[j] == ',' {
                    j += 1;
                }
            }
        }
        out.push((name.to_string(), labels));
    }
    out
}

fn exported(text: &str) -> Exported {
    let mut out = Exported::new();
    for (name, labels) in samples(text) {
        let entry = out.entry(name).or_default();
        for (label, value) in labels {
            entry.entry(label).or_default().insert(value);
        }
    }
    out
}

/// The name a series is catalogued under: a histogram's or summary's `_bucket`, `_sum` and
/// `_count` series are its own.
fn base_name(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .filter(|base| {
            waswitch::telemetry::catalogue()
                .iter()
                .any(|m| m.name == *base)
        })
        .unwrap_or(series)
}

/// A node configured with a trunk, an agent in a queue and an HTTP app, so the series
/// labelled by them are exported too.
const NODE_TOML: &str =
    "[[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5070\"\noptions_interval_secs = 0\n\
     [[agent]]\nuser = \"alice\"\npassword = \"a\"\nqueues = [\"support\"]\n\
     [[queue]]\nname = \"support\"\n\
     [[app]]\nname = \"demo\"\nurl = \"http://127.0.0.1:8700/\"\n\
     secret = \"metrics-app-secret-01\"\n";

fn node_toml(dir: &Path) -> String {
    format!(
        "{NODE_TOML}recording_dir = \"{}\"\n",
        dir.join("recordings").display()
    )
}

// ---------------------------------------------------------------------------------------

#[test]
fn prometheus_rules_load_and_pass_their_unit_tests() {
    for file in rule_files() {
        let path = file.to_string_lossy();
        let (ok, out) = promtool(&["check", "rules", &path], None);
        assert!(ok, "promtool check rules {path}:\n{out}");
        // promtool counts the rules; this test's reading of the file must find as many.
        let found: usize = out
            .split("SUCCESS: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("promtool check rules {path} gave no count:\n{out}"));
        let parsed = parse_rules(&file);
        assert_eq!(
            parsed.len(),
            found,
            "{path}: promtool found {found} rules, this test read {parsed:#?}"
        );
        for rule in &parsed {
            assert!(!rule.expr.is_empty(), "{path}: {} has no expr", rule.name);
        }
    }
    let tests = prometheus_files(".test.yml");
    assert!(
        tests.iter().any(|t| t.ends_with("alerts.test.yml")),
        "ops/prometheus/alerts.test.yml is missing: {tests:?}"
    );
    for test in tests {
        let path = test.to_string_lossy();
        let (ok, out) = promtool(&["test", "rules", &path], None);
        assert!(ok, "promtool test rules {path}:\n{out}");
        assert!(
            out.contains("SUCCESS"),
            "promtool test rules {path}:\n{out}"
        );
    }
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces
/// to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_is_labelled_annotated_tested_and_has_a_runbook_section() {
    let alerts = alerts();
    assert!(alerts.len() >= 10, "{alerts:#?}");
    let runbook = read(&repo().join("ops/RUNBOOK.md"));
    let headings: Vec<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    let anchors: BTreeSet<String> = headings.iter().map(|h| anchor(h)).collect();
    let tests = read(&repo().join("ops/prometheus/alerts.test.yml"));
    // Which alerts a test case expects to fire, and which to stay silent.
    let (mut fires, mut silent) = (BTreeSet::new(), BTreeSet::new());
    let mut current = String::new();
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = name.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("exp_alerts:") {
            if rest.trim() == "[]" {
                silent.insert(current.clone());
            } else {
                fires.insert(current.clone());
            }
        }
    }

    let mut names = BTreeSet::new();
    for alert in &alerts {
        let name = &alert.name;
        assert!(names.insert(name.clone()), "{name} is defined twice");
        let severity = alert.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                alert
                    .annotations
                    .get(key)
                    .is_some_and(|v| !v.trim().is_empty()),
                "{name} has no {key} annotation: {:?}",
                alert.annotations
            );
        }
        let url = &alert.annotations["runbook_url"];
        let target = url
            .strip_prefix("ops/RUNBOOK.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not ops/RUNBOOK.md#…"));
        assert!(
            anchors.contains(target),
            "{name}: runbook_url {url} names no section of ops/RUNBOOK.md ({anchors:?})"
        );
        assert_eq!(
            target,
            anchor(name),
            "{name}: its runbook section is the one named after it"
        );
        assert!(
            fires.contains(name),
            "no test case of alerts.test.yml fires {name}"
        );
        assert!(
            silent.contains(name),
            "no test case of alerts.test.yml expects {name} to stay silent"
        );
    }
    // Every alert section of the runbook is an alert's; its links lead somewhere.
    for heading in headings.iter().filter(|h| h.starts_with("Waswitch")) {
        assert!(
            names.contains(*heading),
            "ops/RUNBOOK.md has a section for {heading}, which is no alert"
        );
    }
    for link in runbook.split("](#").skip(1) {
        let target = link.split(')').next().unwrap_or(link);
        assert!(
            anchors.contains(target),
            "ops/RUNBOOK.md links to #{target}, which is no section"
        );
    }
}

fn dashboard() -> serde_json::Value {
    let path = repo().join("ops/grafana/waswitch.json");
    serde_json::from_str(&read(&path)).expect("ops/grafana/waswitch.json is JSON")
}

/// Every panel, those inside collapsed rows too.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"]
        .as_array()
        .expect("the dashboard's panels")
    {
        out.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Every query of the dashboard (its panels' targets and its variables): (where, expr).
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((format!("panel {:?}", panel["title"]), expr.to_string()));
            }
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("the dashboard's variables")
    {
        if var["type"] == "query" {
            let query = var["query"]["query"]
                .as_str()
                .or_else(|| var["query"].as_str())
                .expect("a query variable's query");
            out.push((format!("variable {:?}", var["name"]), query.to_string()));
        }
    }
    out
}

#[test]
fn the_dashboard_is_well_formed() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(schema >= 36, "schemaVersion {schema}");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let instance = var("instance");
    assert_eq!(instance["type"], "query");
    assert_eq!(instance["datasource"]["uid"], "${datasource}");

    let panels = panels(&d);
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut kinds = 0;
    for panel in &panels {
        let title = panel["title"].as_str().expect("a panel's title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel's id")),
            "{title}: panel id used twice"
        );
        let grid = &panel["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
            grid[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(h > 0 && w > 0 && x + w <= 24, "{title}: gridPos {grid}");
        for row in y..y + h {
            for col in x..x + w {
                if let Some(other) = cells.insert((row, col), title.to_string()) {
                    panic!("panels {other:?} and {title:?} overlap");
                }
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        kinds += 1;
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: its data source is the variable"
        );
        let targets = panel["targets"].as_array().expect("a panel's targets");
        assert!(!targets.is_empty(), "{title} has no targets");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            // Series of the switch are filtered by the node variable; recording rules are
            // over all nodes.
            if parse_query(expr)
                .selectors
                .iter()
                .any(|s| s.name.starts_with("waswitch_"))
            {
                assert!(
                    expr.contains("instance=~\"$instance\""),
                    "{title}: {expr} is not filtered by $instance"
                );
            }
        }
    }
    assert!(kinds >= 12, "{kinds} panels");
    let all: String = dashboard_queries(&d)
        .into_iter()
        .map(|(_, e)| e)
        .collect::<Vec<_>>()
        .join("\n");
    // The panels the dashboard is for.
    for metric in [
        "waswitch_calls_total",
        "waswitch_call_duration_seconds_sum",
        "waswitch_call_setup_seconds",
        "waswitch_call_mos_bucket",
        "waswitch_rtp_packets_total",
        "waswitch_rtp_dropped_total",
        "waswitch:permission_grant_rate:1d",
        "waswitch_queue_answered_within_sl_total",
    ] {
        assert!(all.contains(metric), "no panel shows {metric}");
    }
}

#[test]
fn ops_queries_name_only_metrics_and_label_values_the_switch_exports() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = rt.block_on(async {
        let config =
            waswitch::config::Config::loopback(&node_toml(dir.path()), &dir.path().join("m.db"))
                .expect("config");
        waswitch::node::Node::start(config).await.expect("node")
    });
    let text = rt.block_on(async { common::metrics_text(node.http_addr()).await });
    rt.block_on(node.drain_and_stop());
    let series_of = exported(&text);
    let catalogue: BTreeSet<&str> = waswitch::telemetry::catalogue()
        .iter()
        .map(|m| m.name)
        .collect();

    let mut queries: Vec<(String, String)> = Vec::new();
    let mut recorded = BTreeSet::new();
    for file in rule_files() {
        for rule in parse_rules(&file) {
            if rule.kind == "record" {
                recorded.insert(rule.name.clone());
            }
            queries.push((format!("{} in {}", rule.name, file.display()), rule.expr));
        }
    }
    assert!(recorded.len() >= 4, "{recorded:?}");
    queries.extend(dashboard_queries(&dashboard()));
    assert!(queries.len() >= 40, "{} queries", queries.len());

    let mut problems = Vec::new();
    for (place, expr) in &queries {
        let query = parse_query(expr);
        if query.selectors.is_empty() {
            problems.push(format!("{place}: no metric found in {expr}"));
        }
        let mut labels_here: BTreeSet<&str> = ["job", "instance"].into();
        let mut only_switch_series = true;
        for s in &query.selectors {
            if recorded.contains(&s.name) {
                only_switch_series = false;
                continue;
            }
            if s.name == "up" {
                only_switch_series = false;
                continue;
            }
            let Some(series) = series_of.get(&s.name) else {
                problems.push(format!(
                    "{place}: {} is not a series of the switch's /metrics",
                    s.name
                ));
                continue;
            };
            if !catalogue.contains(base_name(&s.name)) {
                problems.push(format!("{place}: {} is not catalogued", s.name));
            }
            labels_here.extend(series.keys().map(String::as_str));
            for (label, op, value) in &s.matchers {
                if label == "job" || label == "instance" || value.contains('$') {
                    continue;
                }
                let Some(values) = series.get(label) else {
                    problems.push(format!("{place}: {} has no label {label}", s.name));
                    continue;
                };
                let wanted: Vec<&str> = match op.as_str() {
                    "=" | "!=" => vec![value.as_str()],
                    // Alternatives of plain words are checked; other patterns are not.
                    _ if value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.|+-".contains(c)) =>
                    {
                        value.split('|').collect()
                    }
                    _ => Vec::new(),
                };
                for v in wanted {
                    if !values.contains(v) {
                        problems.push(format!(
                            "{place}: {}{{{label}{op}\"{value}\"}}: the switch exports {label} values {values:?}",
                            s.name
                        ));
                    }
                }
            }
        }
        if only_switch_series {
            for label in &query.grouping {
                if !labels_here.contains(label.as_str()) {
                    problems.push(format!(
                        "{place}: groups by {label}, which none of its series has"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Whether a label value looks like a customer, a number or a call: a run of seven digits
/// or more (a phone number, a WhatsApp id), sixteen hex digits or more (a call id, a UUID),
/// or anything longer than an operator would name a trunk or a queue.
fn unbounded(value: &str) -> bool {
    let longest_run = |pred: fn(char) -> bool| {
        value
            .split(|c: char| !pred(c))
            .map(str::len)
            .max()
            .unwrap_or(0)
    };
    longest_run(|c| c.is_ascii_digit()) >= 7
        || longest_run(|c| c.is_ascii_hexdigit()) >= 16
        || value.len() > 40
}

const SECRET: &str = "ops-app-secret";
const TOKEN: &str = "ops-access-token";
const PNID: &str = "106540352242922";
const NUMBER: &str = "15551234567";
const USER: &str = "4915112345678";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_carry_no_unbounded_label() {
    // The checks themselves tell what they must.
    assert!(unbounded("4915112345678") && unbounded("+15551234567"));
    assert!(unbounded("9f1c2b7e4a6d4e0f8b1a2c3d4e5f6a7b"));
    assert!(!unbounded("business_initiated") && !unbounded("0.00005") && !unbounded("503"));

    let dir = tempfile::tempdir().expect("tempdir");
    let graph = waswitch::sim::graph::SimGraph::new(
        waswitch::config::Secret::new(TOKEN),
        vec![PNID.to_string()],
    );
    let sim = graph.serve_loopback().await.expect("sim Graph API");
    let toml = format!(
        "[media]\nip = \"127.0.0.1\"\nshards = 1\nport_min = 41400\nport_max = 41599\n\
         [meta]\ngraph_url = \"http://{sim}\"\naccess_token = \"{TOKEN}\"\n\
         app_secret = \"{SECRET}\"\nverify_token = \"vt\"\n\
         [[business_number]]\nphone_number_id = \"{PNID}\"\ndisplay_number = \"{NUMBER}\"\n\
         country = \"BR\"\necho_test = true\n{}",
        node_toml(dir.path())
    );
    let config =
        waswitch::config::Config::loopback(&toml, &dir.path().join("o.db")).expect("config");
    let node = waswitch::node::Node::start(config).await.expect("node");
    let http = node.http_addr();

    // A WhatsApp user calls the echo number, with audio both ways.
    let ctx = common::sim_context(&graph, http, SECRET, PNID, NUMBER);
    let call = waswitch::sim::load::user_call(&ctx, USER, Duration::from_secs(1)).await;
    assert_eq!(call.error, None, "{call:?}");
    assert!(call.connected && call.audio_verified, "{call:?}");
    assert!(
        node.calls().wait_idle(Duration::from_secs(15)).await,
        "the call did not end"
    );
    // A forged webhook: unsigned, refused with 401.
    let forged = reqwest::Client::new()
        .post(format!("http://{http}/webhooks/meta"))
        .body("{\"object\":\"whatsapp_business_account\",\"entry\":[]}")
        .send()
        .await
        .expect("webhook POST");
    assert_eq!(forged.status().as_u16(), 401);

    // The call's MOS is counted once its CDR is through.
    let mut text = String::new();
    for _ in 0..100 {
        text = common::metrics_text(http).await;
        if text.contains("waswitch_call_mos_count{direction=\"user_initiated\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.drain_and_stop().await;
    let config = waswitch::config::Config::loopback("", &dir.path().join("o.db")).expect("config");
    let store = waswitch::store::Store::open(&config.store)
        .await
        .expect("store");
    let cdrs = store
        .list(&waswitch::store::CdrFilter {
            limit: 10,
            ..waswitch::store::CdrFilter::default()
        })
        .await
        .expect("CDRs");
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let media = cdrs[0].media.as_ref().expect("the call's media quality");
    for line in [
        "waswitch_call_mos_count{direction=\"user_initiated\"} 1".to_string(),
        format!(
            "waswitch_call_mos_sum{{direction=\"user_initiated\"}} {}",
            media.mos_centi as f64 / 100.0
        ),
        "waswitch_meta_webhooks_total{outcome=\"bad_signature\"} 1".to_string(),
        "waswitch_ready 1".to_string(),
        "waswitch_calls_total{direction=\"user_initiated\",outcome=\"answered\"} 1".to_string(),
    ] {
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }

    // promtool's lint of the exposition: names, units, suffixes, HELP.
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}\non\n{text}"
    );

    // No label names a customer, a number, or a call.
    let named = [
        USER,
        NUMBER,
        PNID,
        call.wa_call_id.as_str(),
        cdrs[0].call_id.as_str(),
    ];
    let mut problems = Vec::new();
    let all = samples(&text);
    assert!(all.len() > 300, "{} samples", all.len());
    for (name, labels) in &all {
        for (label, value) in labels {
            if unbounded(value) || named.iter().any(|n| !n.is_empty() && value.contains(n)) {
                problems.push(format!("{name}{{{label}=\"{value}\"}}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "labels that name a customer, a number or a call:\n{}",
        problems.join("\n")
    );
}
