//! The deploy files in `conf/` use only what faultline exports: every `faultline_*` series named
//! in the Prometheus alert rules, their unit tests and the Grafana dashboard, and every label
//! they select, group or template by, is in the `/metrics` of the real binary, started with a
//! TLS listener, a DNS-discovered upstream and a backend that refuses connections, and driven
//! so that each series has samples. Checks of syntax and alert behaviour are promtool's
//! (`scripts/check-conf`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client;
use crate::dns::Dns;
use crate::harness::{Binary, find_metric, metric_value};
use crate::origin::{Behavior, Origin, refused_addr};
use crate::tls::{Pki, https1};

/// Labels Prometheus adds to every series it scrapes.
const SCRAPE_LABELS: [&str; 2] = ["job", "instance"];

/// What a scrape exports: every series name (with a histogram's `_bucket`, `_sum` and `_count`)
/// and the label names seen on its samples.
#[derive(Debug, Default)]
struct Exposition {
    names: HashSet<String>,
    labels: HashMap<String, BTreeSet<String>>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                    panic!("bad TYPE line {line}");
                };
                e.names.insert(name.to_string());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        e.names.insert(format!("{name}{suffix}"));
                    }
                }
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split_whitespace().next().expect("HELP name");
                e.names.insert(name.to_string());
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).expect("a sample line");
                let name = &line[..end];
                let labels = e.labels.entry(name.to_string()).or_default();
                if line[end..].starts_with('{') {
                    labels.extend(sample_labels(&line[end + 1..]));
                }
                e.names.insert(name.to_string());
            }
        }
        e
    }
}

/// The label names of a sample, from just after its `{`.
fn sample_labels(s: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let name = name.trim_start_matches(',').trim();
        if name.starts_with('}') || name.is_empty() {
            return names;
        }
        names.push(name.to_string());
        assert_eq!(chars.next(), Some('"'), "label {name} has no quoted value");
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => escaped = false,
            }
        }
        if chars.peek() == Some(&'}') {
            return names;
        }
    }
}

/// What one PromQL expression (or a test's input series, or a `label_values` query) uses:
/// metrics with the labels each is selected by, labels grouped or joined by, and labels read
/// by `label_values(metric, label)`.
#[derive(Debug, Default)]
struct Uses {
    selected: Vec<(String, Vec<String>)>,
    grouped: Vec<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// Reads the label names of a selector or a grouping list, from just after its opening
/// bracket to its `close`; quoted values are skipped. Returns the names and the index after.
fn label_list(chars: &[char], mut i: usize, close: char) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut expect_name = true;
    while i < chars.len() && chars[i] != close {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(chars, i);
            continue;
        }
        if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            if expect_name {
                names.push(chars[start..i].iter().collect());
                expect_name = false;
            }
            continue;
        }
        if c == ',' {
            expect_name = true;
        }
        i += 1;
    }
    (names, i + 1)
}

/// The index just after the string literal starting at `i`.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

impl Uses {
    fn of(expr: &str) -> Uses {
        let chars: Vec<char> = expr.chars().collect();
        let mut uses = Uses::default();
        let mut i = 0;
        let mut label_values_of: Option<String> = None;
        while i < chars.len() {
            let c = chars[i];
            if c == '"' || c == '\'' || c == '`' {
                i = skip_string(&chars, i);
                continue;
            }
            if c == '[' {
                // A range or a subquery: durations and Grafana's $__rate_interval.
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                continue;
            }
            // `$__rate_interval`, `$job`: Grafana's, not PromQL's.
            if c == '$' {
                i += 1;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                continue;
            }
            if c.is_ascii_digit() {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                continue;
            }
            if !is_ident_start(c) {
                i += 1;
                continue;
            }
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let opens = |c: char| chars.get(next) == Some(&c);
            if word.starts_with("faultline_") {
                let labels = if opens('{') {
                    let (labels, after) = label_list(&chars, next + 1, '}');
                    i = after;
                    labels
                } else {
                    Vec::new()
                };
                if label_values_of.is_some() {
                    label_values_of = Some(word.clone());
                }
                uses.selected.push((word, labels));
            } else if word == "label_values" && opens('(') {
                label_values_of = Some(String::new());
                i = next + 1;
            } else if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) && opens('(')
            {
                let (labels, after) = label_list(&chars, next + 1, ')');
                uses.grouped.extend(labels);
                i = after;
            } else if let Some(metric) = label_values_of.take_if(|m| !m.is_empty()) {
                // label_values(metric{...}, label): the word after the selector.
                uses.selected.push((metric, vec![word]));
            }
        }
        uses
    }
}

/// Every `{{label}}` of a Grafana legend, and every `$labels.name` of an alert template.
fn template_labels(text: &str) -> Vec<String> {
    let mut labels = Vec::new();
    for part in text.split("{{").skip(1) {
        let inner = part.split("}}").next().unwrap_or("").trim();
        if inner.chars().all(is_ident) && !inner.is_empty() {
            labels.push(inner.to_string());
        }
        for p in inner.split("$labels.").skip(1) {
            labels.push(p.chars().take_while(|c| is_ident(*c)).collect());
        }
    }
    labels
}

/// One place in the deploy files that uses series: where, the expression, and the label
/// templates that render its result.
struct Use {
    at: String,
    expr: String,
    templates: Vec<String>,
}

fn conf(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf")
        .join(path)
}

fn yaml(path: &Path) -> serde_norway::Value {
    let text = std::fs::read_to_string(path).expect("read");
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn str_of<'a>(v: &'a serde_norway::Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(serde_norway::Value::as_str)
}

/// Every expression of the alert rules (with their label and annotation templates), every
/// input series of their unit tests, and every query of the dashboard (with its legend).
fn deploy_uses() -> Vec<Use> {
    let mut uses = Vec::new();
    let rules = yaml(&conf("prometheus/faultline-alerts.yml"));
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = str_of(rule, "alert")
                .or(str_of(rule, "record"))
                .expect("named");
            let mut templates = Vec::new();
            for key in ["labels", "annotations"] {
                if let Some(m) = rule.get(key).and_then(|m| m.as_mapping()) {
                    templates.extend(m.values().filter_map(|v| v.as_str()).map(String::from));
                }
            }
            uses.push(Use {
                at: format!("faultline-alerts.yml {name}"),
                expr: str_of(rule, "expr").expect("expr").to_string(),
                templates,
            });
        }
    }
    let tests = yaml(&conf("prometheus/faultline-alerts.test.yml"));
    for test in tests["tests"].as_sequence().expect("tests") {
        for input in test["input_series"].as_sequence().expect("input_series") {
            uses.push(Use {
                at: "faultline-alerts.test.yml input_series".into(),
                expr: str_of(input, "series").expect("series").to_string(),
                templates: Vec::new(),
            });
        }
    }
    let text = std::fs::read_to_string(conf("grafana/faultline-dashboard.json")).expect("read");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            uses.push(Use {
                at: format!("dashboard panel {:?}", panel["title"]),
                expr: target["expr"].as_str().expect("expr").to_string(),
                templates: target["legendFormat"]
                    .as_str()
                    .map(String::from)
                    .into_iter()
                    .collect(),
            });
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if var["type"] == "query" {
            uses.push(Use {
                at: format!("dashboard variable {}", var["name"]),
                expr: var["query"]["query"].as_str().expect("query").to_string(),
                templates: Vec::new(),
            });
        }
    }
    uses
}

/// Everything wrong with `uses` against `exported`.
fn mismatches(uses: &[Use], exported: &Exposition) -> Vec<String> {
    let mut wrong = Vec::new();
    for u in uses {
        let found = Uses::of(&u.expr);
        assert!(
            !found.selected.is_empty(),
            "{}: no faultline_* series in {}",
            u.at,
            u.expr
        );
        let mut available: BTreeSet<String> = SCRAPE_LABELS.map(String::from).into();
        for (metric, labels) in &found.selected {
            if !exported.names.contains(metric) {
                wrong.push(format!("{}: {metric} is not exported", u.at));
                continue;
            }
            let has = exported.labels.get(metric);
            if has.is_none() && !labels.is_empty() {
                wrong.push(format!(
                    "{}: {metric} has no sample in the scrape to check its labels {labels:?} against (drive it in this test)",
                    u.at
                ));
                continue;
            }
            let has = has.cloned().unwrap_or_default();
            for l in labels {
                if !has.contains(l) && !SCRAPE_LABELS.contains(&l.as_str()) {
                    wrong.push(format!(
                        "{}: {metric} has no label {l} (it has {has:?})",
                        u.at
                    ));
                }
            }
            available.extend(has);
        }
        let templated = u.templates.iter().flat_map(|t| template_labels(t));
        for l in found.grouped.iter().cloned().chain(templated) {
            if !available.contains(&l) {
                wrong.push(format!(
                    "{}: label {l} is on none of its series ({available:?})",
                    u.at
                ));
            }
        }
    }
    wrong
}

#[test]
fn the_parser_finds_series_labels_and_groupings() {
    let u = Uses::of(
        "histogram_quantile(0.9, sum by (upstream, le) (rate(faultline_upstream_header_seconds_bucket{job=~\"$job\",upstream=~\"a,b}\"}[$__rate_interval]))) / on(instance) group_left(route) faultline_x",
    );
    assert_eq!(
        u.selected,
        [
            (
                "faultline_upstream_header_seconds_bucket".to_string(),
                vec!["job".to_string(), "upstream".to_string()]
            ),
            ("faultline_x".to_string(), vec![])
        ]
    );
    assert_eq!(u.grouped, ["upstream", "le", "instance", "route"]);
    let v = Uses::of("label_values(faultline_upstream_backends{job=~\"$job\"}, upstream)");
    assert_eq!(
        v.selected,
        [
            (
                "faultline_upstream_backends".to_string(),
                vec!["job".to_string()]
            ),
            (
                "faultline_upstream_backends".to_string(),
                vec!["upstream".to_string()]
            )
        ]
    );
    assert_eq!(
        template_labels(
            "{{ $labels.backend }} of {{$labels.upstream}}: {{ $value | humanize }} {{route}}"
        ),
        ["backend", "upstream", "route"]
    );
    let e = Exposition::parse(
        "# HELP faultline_h H.\n# TYPE faultline_h histogram\nfaultline_c{a=\"x,\\\"y\",b=\"\"} 1\nfaultline_g 2\n",
    );
    assert!(e.names.contains("faultline_h_bucket") && e.names.contains("faultline_g"));
    assert_eq!(
        e.labels["faultline_c"],
        BTreeSet::from(["a".to_string(), "b".to_string()])
    );
    // A misspelled series or label is caught.
    let bad = |expr: &str| {
        mismatches(
            &[Use {
                at: "t".into(),
                expr: expr.into(),
                templates: vec!["{{ $labels.nope }}".into()],
            }],
            &e,
        )
    };
    assert_eq!(
        bad("faultline_c{a=\"1\"} > 0").len(),
        1,
        "only the template"
    );
    assert_eq!(bad("faultline_cc > 0").len(), 2);
    assert_eq!(bad("sum by (c) (faultline_c{d=\"\"})").len(), 3);
}

/// Waits (10 s at most) until `series` is exported in `bin`'s `/metrics` with a value `done`
/// accepts.
fn wait_for(bin: &Binary, series: &str, done: impl Fn(u64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = client::get(bin.admin, "/metrics", &[]).text();
        if find_metric(&text, series).is_some_and(&done) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} never came:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn alert_rules_and_dashboard_use_only_series_and_labels_the_binary_exports() {
    let origin = Origin::start(Behavior::named("deploy"));
    let dns = Dns::start();
    dns.set_a("api.test", &[Ipv4Addr::LOCALHOST]);
    let pki = Pki::new("deploy");
    let listener_tls = format!(
        ", tls: {{ cert: \"{}\", key: \"{}\" }}",
        pki.path("proxy.pem"),
        pki.path("proxy.key")
    );
    let body = format!(
        "discovery: {{ resolvers: [\"{dns}\"], min_refresh: 100ms, max_refresh: 300ms, timeout: 500ms }}
upstreams:
  app:
    backends: [{{ address: \"{refused}\" }}, {{ address: \"{origin}\" }}]
  discovered:
    backends: [{{ dns: \"api.test:{port}\" }}]
  dead:
    backends: [{{ address: \"{refused}\" }}]
routes:
  - {{ match: {{ path_prefix: /dead }}, upstream: dead, name: dead }}
  - {{ match: {{ path_prefix: /d }}, upstream: discovered, name: discovered }}
  - {{ upstream: app, name: main, retry: {{ attempts: 2 }} }}
",
        dns = dns.addr,
        refused = refused_addr(),
        origin = origin.addr,
        port = origin.addr.port(),
    );
    let bin = Binary::start_with_listener("deploy", "server: { threads: 1 }", &listener_tls, &body);
    // Answers from the origin, attempts refused and retried, a discovered backend.
    for _ in 0..4 {
        let (status, _, text) = https1(&pki, bin.addr, "/");
        assert_eq!((status, text.as_str()), (200, "origin deploy"));
    }
    wait_for(
        &bin,
        "faultline_discovery_refreshes_total{upstream=\"discovered\",result=\"success\"}",
        |n| n >= 1,
    );
    wait_for(
        &bin,
        "faultline_upstream_backends{upstream=\"discovered\"}",
        |n| n == 1,
    );
    let (status, _, _) = https1(&pki, bin.addr, "/d");
    assert_eq!(status, 200);
    // A request that ends in a failure.
    let (status, _, _) = https1(&pki, bin.addr, "/dead");
    assert_eq!(status, 502);
    wait_for(
        &bin,
        "faultline_request_failures_total{route=\"dead\",kind=\"connection_refused\"}",
        |n| n == 1,
    );
    wait_for(
        &bin,
        "faultline_retries_total{route=\"main\",reason=\"connection_refused\"}",
        |n| n >= 1,
    );

    // A refused reload sets faultline_config_last_reload_successful to 0 until one succeeds.
    let gauge = "faultline_config_last_reload_successful";
    let metrics = || client::get(bin.admin, "/metrics", &[]).text();
    assert_eq!(metric_value(&metrics(), gauge), 1, "before any reload");
    let good = std::fs::read_to_string(bin.file()).expect("read");
    std::fs::write(bin.file(), format!("{good}not_a_key: 1\n")).expect("write");
    assert_eq!(
        client::send_one(bin.admin, "POST", "/reload", &[]).status,
        422
    );
    let text = metrics();
    assert_eq!(metric_value(&text, gauge), 0, "after a failed reload");
    assert_eq!(
        metric_value(&text, "faultline_config_reloads_total{result=\"failure\"}"),
        1
    );
    std::fs::write(bin.file(), &good).expect("write");
    assert_eq!(
        client::send_one(bin.admin, "POST", "/reload", &[]).status,
        200
    );
    assert_eq!(metric_value(&metrics(), gauge), 1, "after a good reload");

    let exported = Exposition::parse(&metrics());
    let uses = deploy_uses();
    assert!(uses.len() > 40, "only {} uses found", uses.len());
    let wrong = mismatches(&uses, &exported);
    assert!(
        wrong.is_empty(),
        "the deploy files use what faultline does not export:\n{}",
        wrong.join("\n")
    );
}
