//! Hot reload of the real binary: under load with zero failed requests, on SIGHUP, with an
//! invalid file (the old config keeps serving), and with listeners added and removed.

use crate::support::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

fn config(
    version: u32,
    cluster: &str,
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    extra: &str,
) -> String {
    format!(
        r#"
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main }} }}
{extra}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        response_headers:
          set: {{ x-config-version: "{version}" }}
        routes:
          - {{ match: {{ prefix: / }}, cluster: {cluster} }}
clusters:
  - {{ name: a, endpoints: [{a}] }}
  - {{ name: b, endpoints: [{b}] }}
"#
    )
}

/// Waits until a response carries `x-config-version: version`.
fn wait_version(addr: std::net::SocketAddr, version: u32) {
    let mut c = KeepAlive::new(addr);
    eventually(&format!("config version {version}"), || {
        let r = c.get("/").ok()?;
        (r.header("x-config-version") == Some(version.to_string().as_str())).then_some(())
    });
}

#[test]
fn reload_under_load_fails_no_request() {
    let (a, b) = (echo("a"), echo("b"));
    let bin = Binary::start(&config(1, "a", a, b, ""), &[]);
    let addr = bin.addr("main");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for i in 0..4 {
        let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
        workers.push(std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut c = KeepAlive::new(addr);
            while !stop.load(Ordering::Relaxed) {
                // Half the clients reconnect every time, half keep their connection.
                if i % 2 == 0 {
                    c = KeepAlive::new(addr);
                }
                match c.get("/load") {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status)),
                    Err(e) => failures.push(format!("error {e}")),
                }
            }
            failures
        }));
    }
    for version in 2..=6 {
        let cluster = if version % 2 == 0 { "b" } else { "a" };
        bin.write_config(&config(version, cluster, a, b, ""));
        wait_version(addr, version);
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "failed requests during reloads: {failures:?}"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        bin.metric("sluice_config_reloads_total{result=\"success\"}"),
        5.0
    );
}

#[test]
fn invalid_config_is_rejected_and_old_config_keeps_serving() {
    let (a, b) = (echo("a"), echo("b"));
    let mut bin = Binary::start(&config(1, "a", a, b, ""), &[]);
    let addr = bin.addr("main");
    let bad = config(2, "a", a, b, "").replace("prefix: /", "prefix: nope");
    bin.write_config(&bad);
    let line = bin.wait_log("config reload rejected");
    let file = bin.config.display().to_string();
    assert!(
        line.contains(&format!("{file}:14:32: route_tables[0].virtual_hosts[0].routes[0].match.prefix: must start with '/'")),
        "{line}"
    );
    let r = KeepAlive::new(addr).get("/").unwrap();
    assert_eq!((r.status, r.header("x-config-version")), (200, Some("1")));
    eventually("failure counted", || {
        (bin.metric("sluice_config_reloads_total{result=\"failure\"}") == 1.0).then_some(())
    });
    // Unparseable YAML is rejected the same way.
    bin.write_config("listeners: [ {");
    let line = bin.wait_log("sluice.yaml:");
    assert!(line.contains("config reload rejected"), "{line}");
    assert_eq!(
        KeepAlive::new(addr)
            .get("/")
            .unwrap()
            .header("x-config-version"),
        Some("1")
    );
    // A good file afterwards is applied.
    bin.write_config(&config(3, "b", a, b, ""));
    wait_version(addr, 3);
}

/// A broken config next to a busy log file is reported once: events for other files in the
/// directory are ignored, and the same text is not re-read and re-reported until it changes.
#[test]
fn a_broken_config_is_reported_once_whatever_else_changes_in_its_directory() {
    let (a, b) = (echo("a"), echo("b"));
    let mut bin = Binary::start(&config(1, "a", a, b, ""), &[]);
    let addr = bin.addr("main");
    let bad = config(2, "a", a, b, "").replace("prefix: /", "prefix: nope");
    bin.write_config(&bad);
    bin.wait_log("config reload rejected");
    let log = bin.dir.path().join("sluice.log");
    for i in 0..50 {
        std::fs::write(&log, format!("line {i}\n")).unwrap();
    }
    // The same broken text written again: an event for the file itself, but nothing new.
    bin.write_config(&bad);
    bin.wait_log("nothing to do");
    assert_eq!(
        bin.metric("sluice_config_reloads_total{result=\"failure\"}"),
        1.0
    );
    bin.write_config(&config(3, "b", a, b, ""));
    wait_version(addr, 3);
    assert_eq!(
        bin.metric("sluice_config_reloads_total{result=\"failure\"}"),
        1.0
    );
    assert_eq!(
        bin.metric("sluice_config_reloads_total{result=\"success\"}"),
        1.0
    );
}

#[test]
fn sighup_reloads_without_file_watching() {
    let (a, b) = (echo("a"), echo("b"));
    let bin = Binary::start(&config(1, "a", a, b, ""), &["--no-watch"]);
    let addr = bin.addr("main");
    bin.write_config(&config(2, "b", a, b, ""));
    // Not watched: still version 1 until the signal.
    assert_eq!(
        KeepAlive::new(addr)
            .get("/")
            .unwrap()
            .header("x-config-version"),
        Some("1")
    );
    bin.signal("HUP");
    wait_version(addr, 2);
    assert_eq!(
        KeepAlive::new(addr).get("/").unwrap().header("x-upstream"),
        Some("b")
    );
}

#[test]
fn listeners_are_added_and_removed() {
    let (a, b) = (echo("a"), echo("b"));
    let tcp = tcp_echo();
    let bin = Binary::start(&config(1, "a", a, b, ""), &[]);
    let extra = "  - { name: extra, address: 127.0.0.1:0, http: { route_table: main } }\n  - { name: raw, address: 127.0.0.1:0, tcp: { cluster: t } }".to_string();
    let with_tcp = |v: u32, extra: &str| {
        format!(
            "{}  - {{ name: t, endpoints: [{tcp}] }}\n",
            config(v, "a", a, b, extra)
        )
    };
    bin.write_config(&with_tcp(2, &extra));
    wait_version(bin.addr("main"), 2);
    let extra_addr = bin.addr("extra");
    let r = KeepAlive::new(extra_addr).get("/").unwrap();
    assert_eq!(r.header("x-config-version"), Some("2"));
    let (out, _) = raw_exchange(
        bin.addr("raw"),
        b"ping",
        std::time::Duration::from_millis(300),
    );
    assert_eq!(out, "ping");
    // A request in flight on the listener that is about to go away finishes.
    let before = bin.metric("sluice_downstream_requests_total{listener=\"extra\"}");
    let req = std::thread::spawn(move || KeepAlive::new(extra_addr).get("/delay/1000"));
    eventually("request in flight", || {
        (bin.metric("sluice_downstream_requests_total{listener=\"extra\"}") > before).then_some(())
    });
    bin.write_config(&with_tcp(3, ""));
    wait_version(bin.addr("main"), 3);
    eventually("extra listener closed", || {
        std::net::TcpStream::connect(extra_addr)
            .is_err()
            .then_some(())
    });
    let r = req
        .join()
        .unwrap()
        .expect("in-flight request on a removed listener completes");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(
        r.header("x-config-version"),
        Some("2"),
        "in-flight requests finish on their config"
    );
}

#[test]
fn pools_of_unchanged_clusters_survive_reloads() {
    let (a, b) = (echo("a"), echo("b"));
    let bin = Binary::start(&config(1, "a", a, b, ""), &[]);
    // One client connection, so every request goes through the same worker and its pool.
    let mut c = KeepAlive::new(bin.addr("main"));
    let version_seen = |c: &mut KeepAlive, v: &str| {
        eventually(&format!("version {v}"), || {
            (c.get("/").ok()?.header("x-config-version") == Some(v)).then_some(())
        })
    };
    let conns = || bin.metric("sluice_upstream_connections_total{cluster=\"a\"}");
    c.get("/").unwrap();
    assert_eq!(conns(), 1.0);
    // Only a response header changes: cluster `a` and its pooled connection are kept.
    bin.write_config(&config(2, "a", a, b, ""));
    version_seen(&mut c, "2");
    assert_eq!(conns(), 1.0, "an unchanged cluster lost its pool");
    // Cluster `a` itself changes: a new pool, a new connection.
    let changed = config(3, "a", a, b, "").replace(
        "{ name: a, endpoints",
        "{ name: a, connect_timeout: 2s, endpoints",
    );
    bin.write_config(&changed);
    version_seen(&mut c, "3");
    assert_eq!(conns(), 2.0);
}

/// `sluice explain` against a file and against a running proxy: the admin API explains the
/// live config, so the answer follows a hot reload.
#[test]
fn explain_answers_from_a_file_and_from_the_live_config_after_a_reload() {
    let (a, b) = (echo("a"), echo("b"));
    let mut bin = Binary::start(&config(1, "a", a, b, ""), &[]);
    let explain = |args: &[&str]| {
        // A `SLUICE_CONFIG` in the environment does not get in the way of `--admin`.
        let out = std::process::Command::new(sluice_bin())
            .arg("explain")
            .args(args)
            .env("SLUICE_CONFIG", "/nonexistent.yaml")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let admin = bin.admin.to_string();
    let text = explain(&[
        "--admin",
        &admin,
        "GET http://example.com/x",
        "-H",
        "x-test: 1",
    ]);
    assert!(text.contains("route #0 all/0: MATCH"), "{text}");
    assert!(text.contains("cluster:      a (100%)"), "{text}");
    // The running proxy adds each endpoint's state now.
    assert!(
        text.contains(&format!("endpoint {a} (weight 1): healthy, 0 in flight")),
        "{text}"
    );
    // The same from the file, as JSON.
    let config_path = bin.config.display().to_string();
    let json: serde_json::Value = serde_json::from_str(&explain(&[
        "-c",
        &config_path,
        "--json",
        "http://example.com/x",
    ]))
    .unwrap();
    assert_eq!(json["clusters"][0]["name"], "a", "{json}");
    assert_eq!(json["listener"], "main", "{json}");
    // After a reload to cluster b, the running proxy's answer changes.
    bin.write_config(&config(2, "b", a, b, ""));
    bin.wait_log("config reloaded");
    let text = explain(&["--admin", &admin, "GET http://example.com/x"]);
    assert!(text.contains("cluster:      b (100%)"), "{text}");
    // `/config_dump` gives each resource the generation that last changed it.
    let dump: serde_json::Value =
        serde_json::from_str(&http_get(bin.admin, "/config_dump").1).unwrap();
    let generation = |kind: &str, name: &str| {
        dump["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == kind && r["name"] == name)
            .map(|r| (r["generation"].as_u64().unwrap(), r["origin"].clone()))
            .unwrap_or_else(|| panic!("{kind} {name} not in {dump}"))
    };
    let now = dump["generation"].as_u64().unwrap();
    assert_eq!(
        generation("route_table", "main"),
        (now, "file".into()),
        "{dump}"
    );
    assert!(generation("cluster", "a").0 < now, "{dump}");
    assert!(generation("listener", "main").0 < now, "{dump}");
    // A request the API cannot read gets the reason, and the CLI fails with it.
    let out = std::process::Command::new(sluice_bin())
        .args([
            "explain",
            "--admin",
            &admin,
            "--listener",
            "nope",
            "http://x/",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no listener `nope` in the config"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
