//! Docs that cannot rot: every YAML snippet in README.md and docs/architecture.md is read the
//! way Sluice reads it. A whole config must validate with no error; a fragment (a listener's
//! `http:`, a virtual host's `routes:`, a cluster's `health_checks:`) is placed in a minimal
//! config first, and the clusters and route tables it names but does not define are added —
//! every other error (a wrong field, a bad value) fails the test. Control-plane settings are
//! parsed as the control plane parses them. The README's `sluice explain` and `sluice
//! validate` samples are compared with what the binary prints.

use crate::support::*;

/// The fenced blocks of `lang` in `text`, with the line each starts on.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<(usize, String)> {
    let fence = format!("```{lang}");
    let mut out = Vec::new();
    let mut current: Option<(usize, Vec<&'a str>)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed == fence => current = Some((i + 2, Vec::new())),
            Some((start, lines)) if trimmed == "```" => {
                out.push((*start, dedent(lines)));
                current = None;
            }
            Some((_, lines)) => lines.push(line),
            None => {}
        }
    }
    out
}

fn dedent(lines: &[&str]) -> String {
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn indent(text: &str, by: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(by)))
        .collect()
}

/// Top-level keys of a whole config.
const CONFIG_KEYS: [&str; 6] = [
    "admin",
    "listeners",
    "route_tables",
    "clusters",
    "node",
    "tracing",
];

/// The snippet as a config to validate, and whether it is a fragment (may name clusters and
/// route tables defined elsewhere). `None`: control-plane settings.
fn as_config(snippet: &str) -> Option<(String, bool)> {
    let first = snippet
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .unwrap_or("");
    let key = first.split(':').next().unwrap_or("").trim();
    // A fragment's lines up to the next top-level config key; the rest is whole config.
    let split = |snippet: &str| -> (String, String) {
        let mut head = String::new();
        let mut tail = String::new();
        let mut in_tail = false;
        for (i, l) in snippet.lines().enumerate() {
            let k = l.split(':').next().unwrap_or("");
            if i > 0 && CONFIG_KEYS.contains(&k) {
                in_tail = true;
            }
            let out = if in_tail { &mut tail } else { &mut head };
            out.push_str(l);
            out.push('\n');
        }
        (head, tail)
    };
    match key {
        "xds" | "directory" | "registry" | "ca" | "debounce" if !snippet.contains("listeners:") => {
            None
        }
        k if CONFIG_KEYS.contains(&k) => Some((snippet.to_string(), false)),
        "http" | "tcp" => {
            let (head, tail) = split(snippet);
            Some((
                format!(
                    "listeners:\n  - name: snippet\n    address: 127.0.0.1:1\n{}{tail}",
                    indent(&head, 4)
                ),
                true,
            ))
        }
        "routes" => {
            let (head, tail) = split(snippet);
            Some((
                format!(
                    "route_tables:\n  - name: snippet\n    virtual_hosts:\n      - name: v\n        domains: ['*']\n{}{tail}",
                    indent(&head, 8)
                ),
                true,
            ))
        }
        "health_checks" | "outlier_detection" | "retry_budget" | "circuit_breakers" => Some((
            format!(
                "clusters:\n  - name: snippet\n    endpoints: [127.0.0.1:1]\n{}",
                indent(snippet, 4)
            ),
            true,
        )),
        other => panic!(
            "a YAML snippet starting with `{other}:` has no context in this test:\n{snippet}"
        ),
    }
}

/// Validates `yaml`; a fragment gets the clusters and route tables it names added.
fn check(yaml: &str, fragment: bool) -> Result<(), String> {
    let mut yaml = yaml.to_string();
    for _ in 0..20 {
        let errors = match sluice_config::parse(&yaml, "snippet.yaml") {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if !fragment {
            return Err(errors.to_string());
        }
        let mut added = false;
        for e in &errors.0 {
            let named = |prefix: &str| {
                e.message
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix('`'))
                    .map(str::to_string)
            };
            if let Some(c) = named("unknown cluster `") {
                let entry = format!("  - {{ name: {c}, endpoints: [127.0.0.1:1] }}\n");
                yaml = match yaml.find("\nclusters:\n") {
                    Some(i) => {
                        let at = i + "\nclusters:\n".len();
                        format!("{}{entry}{}", &yaml[..at], &yaml[at..])
                    }
                    None => format!("{yaml}clusters:\n{entry}"),
                };
                added = true;
            } else if let Some(t) = named("unknown route table `") {
                let entry = format!(
                    "  - {{ name: {t}, virtual_hosts: [{{ name: v, domains: ['*'], routes: [{{ match: {{ prefix: / }}, direct_response: {{ status: 200 }} }}] }}] }}\n"
                );
                yaml = match yaml.find("route_tables:\n") {
                    Some(i) if i == 0 || yaml[..i].ends_with('\n') => {
                        let at = i + "route_tables:\n".len();
                        format!("{}{entry}{}", &yaml[..at], &yaml[at..])
                    }
                    _ => format!("{yaml}route_tables:\n{entry}"),
                };
                added = true;
            }
        }
        if !added {
            return Err(format!("{errors}\n--- as checked:\n{yaml}"));
        }
    }
    Err(format!("too many missing references in\n{yaml}"))
}

#[test]
fn every_yaml_snippet_in_the_docs_reads_as_sluice_reads_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    let mut failures = Vec::new();
    for doc in ["README.md", "docs/architecture.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (line, snippet) in blocks(&text, "yaml") {
            checked += 1;
            let result = match as_config(&snippet) {
                Some((yaml, fragment)) => check(&yaml, fragment),
                None => sluice_control_plane::settings::parse(&snippet).map(|_| ()),
            };
            if let Err(e) = result {
                failures.push(format!("{doc}:{line}:\n{e}"));
            }
        }
    }
    assert!(checked >= 10, "only {checked} snippets found");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_readme_samples_are_what_the_binary_prints() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    // `sluice explain` over the bundled demo.
    let sample = blocks(&readme, "")
        .into_iter()
        .map(|(_, b)| b)
        .find(|b| b.starts_with("$ sluice explain -c examples/demo.yaml"))
        .expect("the explain sample");
    let (command, expected) = sample.split_once('\n').unwrap();
    let request = command
        .split_once(" '")
        .and_then(|(_, r)| r.strip_suffix('\''))
        .expect("a quoted request");
    let out = std::process::Command::new(sluice_bin())
        .args(["explain", "-c"])
        .arg(root.join("examples/demo.yaml"))
        .arg(request)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    // `sluice validate` over the corpus file the README shows.
    let sample = blocks(&readme, "")
        .into_iter()
        .map(|(_, b)| b)
        .find(|b| b.starts_with("sluice.yaml:3:5:"))
        .expect("the validate sample");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    std::fs::copy(root.join("config/tests/errors/readme-example.yaml"), &file).unwrap();
    let out = std::process::Command::new(sluice_bin())
        .current_dir(dir.path())
        .args(["validate", "sluice.yaml"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), sample);
}

/// `sluice explain` over the bundled examples: each request in `tests/explain/requests.txt`
/// must get, byte for byte, the text and JSON in its `.expected` file.
#[test]
fn explain_over_the_examples_matches_its_golden_answers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/explain");
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let spec = std::fs::read_to_string(dir.join("requests.txt")).unwrap();
    let mut failures = Vec::new();
    let mut n = 0;
    for line in spec
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        n += 1;
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [example, request, headers, listener, sni] = fields[..] else {
            panic!("bad line: {line}");
        };
        let opt = |s: &str| (s != "-").then(|| s.to_string());
        let (method, url) = request.split_once(' ').unwrap();
        let q = sluice_proxy::explain::Query {
            method: method.into(),
            url: url.into(),
            headers: opt(headers)
                .map(|h| {
                    h.split(';')
                        .map(|kv| {
                            let (k, v) = kv.split_once(':').unwrap();
                            (k.trim().to_string(), v.trim().to_string())
                        })
                        .collect()
                })
                .unwrap_or_default(),
            listener: opt(listener),
            sni: opt(sni),
        };
        let config = sluice_config::load_file(&root.join("examples").join(example))
            .unwrap_or_else(|e| panic!("{e}"));
        let got = match sluice_proxy::explain::explain(&config, &q) {
            Ok(e) => format!(
                "{}--- json\n{}\n",
                e.text(),
                serde_json::to_string_pretty(&e).unwrap()
            ),
            Err(e) => format!("error: {e}\n"),
        };
        let file = dir.join(format!(
            "{n:02}-{}.expected",
            example.trim_end_matches(".yaml")
        ));
        if bless {
            std::fs::write(&file, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&file) {
            Ok(expected) if expected == got => {}
            Ok(expected) => failures.push(format!(
                "{line}\n--- expected ({})\n{expected}--- got\n{got}",
                file.display()
            )),
            Err(_) => failures.push(format!("{line}: no {}", file.display())),
        }
    }
    assert!(n >= 15, "only {n} requests");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `-H` has its environment variable too: one header per line.
#[test]
fn explain_headers_come_from_the_environment_too() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(sluice_bin())
        .args(["explain", "-c"])
        .arg(root.join("examples/demo.yaml"))
        .arg("http://localhost:8080/hello")
        .env("SLUICE_EXPLAIN_HEADERS", "x-other: 2\nx-canary: 1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("route #3 canary: MATCH"), "{text}");
}
