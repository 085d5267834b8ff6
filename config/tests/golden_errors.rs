//! Golden tests for what `sluice validate` prints: every file in `tests/errors/` is parsed and
//! its report (each error `file:line:col: path: message`, in file order, then their count;
//! or any warnings, then `ok`: what `sluice validate` prints) must equal the `.expected` file beside it, byte for byte.
//!
//! After a deliberate change of wording, regenerate with `SLUICE_BLESS=1 cargo test -p
//! sluice-config --test golden_errors` and review the diff.

use std::path::Path;

fn report(name: &str, source: &str) -> String {
    let mut out = String::new();
    match sluice_config::parse(source, name) {
        Ok(config) => {
            for w in sluice_config::warning_lines(name, source, &config) {
                out.push_str(&format!("{w}\n"));
            }
            out.push_str(&format!("{name}: ok\n"));
        }
        Err(errors) => {
            for e in &errors.0 {
                out.push_str(&format!("{e}\n"));
            }
            out.push_str(&format!("{name}: {} error(s)\n", errors.0.len()));
        }
    }
    out
}

#[test]
fn every_broken_config_gets_its_golden_report() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/errors");
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/errors")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 40, "the corpus has {} files", names.len());
    let mut failures = Vec::new();
    for path in &names {
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        let source = std::fs::read_to_string(path).expect("read");
        let got = report(name, &source);
        let expected_path = path.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).expect("write");
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == got => {}
            Ok(expected) => {
                failures.push(format!("{name}:\n--- expected\n{expected}--- got\n{got}"))
            }
            Err(_) => failures.push(format!("{name}: no .expected file; got\n{got}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
