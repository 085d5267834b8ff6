//! DNS discovery end to end, against a local DNS server started by each test
//! (`tests/e2e/dns_server.py`, Python `dnslib`, on 127.0.0.1 UDP+TCP port 0) whose zone the test
//! rewrites (mode `ok`, `servfail`, or `hold`: no answer until the mode changes): strict DNS
//! spreads over every address and follows changes, logical DNS uses the first address, SRV
//! gives hosts and ports, a failing resolver keeps the last good endpoints, a 1s TTL is
//! re-resolved, a reload keeps discovered endpoints and readiness waits for the first answer.

use crate::support::*;
use serde_json::{Value, json};
use sluice_config::{Resource, Update};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The test's DNS server.
struct DnsServer {
    child: Child,
    zone: PathBuf,
    dir: PathBuf,
    addr: SocketAddr,
}

impl DnsServer {
    fn start(zone: Value) -> Self {
        let python = if std::path::Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let has_dnslib = Command::new(python)
            .args(["-c", "import dnslib"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            has_dnslib,
            "the DNS tests need Python's dnslib: apt-get install -y python3-dnslib (./test.sh installs it)"
        );
        let dir = std::env::temp_dir().join(format!(
            "sluice-dns-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let zone_path = dir.join("zone.json");
        std::fs::write(&zone_path, zone.to_string()).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/dns_server.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(&zone_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the DNS server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("DNS server printed {line:?}"));
        DnsServer {
            child,
            zone: zone_path,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Replaces the zone (atomically: the server re-reads it on every query).
    fn set(&self, zone: Value) {
        let tmp = self.dir.join("zone.json.tmp");
        std::fs::write(&tmp, zone.to_string()).unwrap();
        std::fs::rename(&tmp, &self.zone).unwrap();
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn a(name: &str, ip: &str, ttl: u32) -> Value {
    json!({ "name": name, "type": "A", "value": ip, "ttl": ttl })
}

fn srv(name: &str, priority: u16, weight: u16, port: u16, target: &str) -> Value {
    json!({ "name": name, "type": "SRV", "ttl": 1, "priority": priority, "weight": weight,
            "port": port, "target": target })
}

fn zone(records: Vec<Value>) -> Value {
    json!({ "mode": "ok", "records": records })
}

/// A proxy whose one route goes to cluster `up`, described by `cluster` (YAML flow map body).
fn proxy(cluster: &str) -> InProcess {
    InProcess::start(&format!(
        r#"
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main }} }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes: [{{ match: {{ prefix: / }}, cluster: up, timeout: 5s }}]
clusters:
  - {{ name: up, {cluster} }}
"#
    ))
}

fn wait_ready(p: &InProcess) {
    let admin = p.proxy().admin_addr();
    eventually("the proxy to be ready", || {
        (http_get(admin, "/ready").0 == 200).then_some(())
    });
}

/// Which upstream answered each of `n` requests (`x-upstream`; `503` for no endpoint). The
/// cluster balances round robin, so a few requests reach every endpoint.
fn answers(p: &InProcess, n: usize) -> Vec<String> {
    let mut client = KeepAlive::new(p.addr("main"));
    (0..n)
        .map(|_| {
            let r = client.get("/").unwrap();
            match r.status {
                200 => r.header("x-upstream").unwrap_or("?").to_string(),
                s => s.to_string(),
            }
        })
        .collect()
}

/// Waits until `n` requests in a row are all answered by `name`.
fn wait_all_from(p: &InProcess, name: &str, n: usize) {
    eventually(&format!("every request answered by {name}"), || {
        answers(p, n).iter().all(|u| u == name).then_some(())
    });
}

/// Two echo upstreams on the same port: one on 127.0.0.1, one on 127.0.0.2.
fn same_port_pair() -> (u16, SocketAddr, SocketAddr) {
    for _ in 0..20 {
        let one = echo("one");
        let second = SocketAddr::from(([127, 0, 0, 2], one.port()));
        if let Ok(two) = sluice_proxy::demo::spawn_echo(second, "two") {
            return (one.port(), one, two);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

fn resolutions(p: &InProcess, result: &str) -> f64 {
    metric_value(
        &p.metrics(),
        &format!("sluice_dns_resolutions_total{{cluster=\"up\",result=\"{result}\"}}"),
    )
}

#[test]
fn strict_dns_spreads_over_every_address_and_follows_changes() {
    let (port, _, _) = same_port_pair();
    let dns = DnsServer::start(zone(vec![
        a("backend.test.", "127.0.0.1", 1),
        a("backend.test.", "127.0.0.2", 1),
    ]));
    let p = proxy(&format!(
        "lb_policy: round_robin, discovery: {{ type: strict_dns, names: ['backend.test:{port}'], resolvers: ['{}'], min_refresh: 1s }}",
        dns.addr
    ));
    wait_ready(&p);
    let seen = answers(&p, 10);
    assert!(seen.iter().any(|u| u == "one"), "{seen:?}");
    assert!(seen.iter().any(|u| u == "two"), "{seen:?}");
    assert!(seen.iter().all(|u| u == "one" || u == "two"), "{seen:?}");
    // The record set changes: the endpoints follow (within the 1s TTL).
    dns.set(zone(vec![
        a("backend.test.", "127.0.0.2", 1),
        a("other.test.", "127.0.0.1", 1),
    ]));
    wait_all_from(&p, "two", 6);
    // A changed cluster (here through `Proxy::apply`, as xDS will) restarts its resolution.
    let mut cluster = p.proxy().live().snapshot().clusters["up"]
        .settings()
        .unwrap()
        .config
        .clone();
    cluster.discovery.as_mut().unwrap().names = vec![format!("other.test:{port}")];
    let applied = p
        .proxy()
        .apply(Update {
            upserts: vec![Resource::Cluster(cluster)],
            removals: Vec::new(),
        })
        .unwrap();
    assert!(applied.is_ok());
    wait_all_from(&p, "one", 6);
}

#[test]
fn logical_dns_uses_the_first_address() {
    let (port, _, _) = same_port_pair();
    let dns = DnsServer::start(zone(vec![
        a("backend.test.", "127.0.0.1", 1),
        a("backend.test.", "127.0.0.2", 1),
    ]));
    let p = proxy(&format!(
        "discovery: {{ type: logical_dns, names: ['backend.test:{port}'], resolvers: ['{}'], min_refresh: 1s }}",
        dns.addr
    ));
    wait_ready(&p);
    let seen = answers(&p, 6);
    assert!(seen.iter().all(|u| u == "one"), "{seen:?}");
    // The first address changes: new requests go to it.
    dns.set(zone(vec![
        a("backend.test.", "127.0.0.2", 1),
        a("backend.test.", "127.0.0.1", 1),
    ]));
    wait_all_from(&p, "two", 6);
}

#[test]
fn dns_srv_gives_hosts_and_ports_of_the_lowest_priority() {
    let (one, two) = (echo("one"), echo("two"));
    // A higher-priority-number (less preferred) record points at a closed port: never used.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let name = "_http._tcp.backend.test.";
    let dns = DnsServer::start(zone(vec![
        srv(name, 10, 1, one.port(), "a.test."),
        srv(name, 10, 1, two.port(), "b.test."),
        srv(name, 20, 1, closed_port, "a.test."),
        a("a.test.", "127.0.0.1", 1),
        a("b.test.", "127.0.0.1", 1),
    ]));
    let p = proxy(&format!(
        "lb_policy: round_robin, discovery: {{ type: dns_srv, names: ['_http._tcp.backend.test'], resolvers: ['{}'], min_refresh: 1s }}",
        dns.addr
    ));
    wait_ready(&p);
    let seen = answers(&p, 10);
    assert!(seen.iter().any(|u| u == "one"), "{seen:?}");
    assert!(seen.iter().any(|u| u == "two"), "{seen:?}");
    assert!(seen.iter().all(|u| u == "one" || u == "two"), "{seen:?}");
    // The endpoints are the targets' addresses at the records' ports.
    let eps = p.proxy().live().snapshot().clusters["up"].endpoints();
    let mut ports: Vec<u16> = eps.endpoints.iter().map(|e| e.address.port()).collect();
    ports.sort_unstable();
    let mut want = vec![one.port(), two.port()];
    want.sort_unstable();
    assert_eq!(ports, want);
}

#[test]
fn a_failing_resolver_keeps_the_last_good_endpoints() {
    let up = echo("one");
    let dns = DnsServer::start(zone(vec![a("backend.test.", "127.0.0.1", 1)]));
    let p = proxy(&format!(
        "discovery: {{ type: strict_dns, names: ['backend.test:{}'], resolvers: ['{}'], min_refresh: 200ms, max_refresh: 1s, timeout: 200ms }}",
        up.port(),
        dns.addr
    ));
    wait_ready(&p);
    assert_eq!(answers(&p, 3), vec!["one"; 3]);
    assert_eq!(resolutions(&p, "failure"), 0.0, "pre-initialised at 0");
    // SERVFAIL: counted, the endpoints stay.
    dns.set(json!({ "mode": "servfail", "records": [] }));
    eventually("a failed resolution", || {
        (resolutions(&p, "failure") >= 1.0).then_some(())
    });
    assert_eq!(answers(&p, 3), vec!["one"; 3]);
    // No answer at all (the query times out): the same.
    let before = resolutions(&p, "failure");
    dns.set(json!({ "mode": "hold", "records": [] }));
    eventually("a timed-out resolution", || {
        (resolutions(&p, "failure") > before).then_some(())
    });
    // NXDOMAIN: the same.
    dns.set(zone(vec![]));
    let before = resolutions(&p, "failure");
    eventually("an NXDOMAIN resolution", || {
        (resolutions(&p, "failure") > before).then_some(())
    });
    assert_eq!(answers(&p, 3), vec!["one"; 3]);
    // A config reload of the same file keeps the discovered endpoints (the file has none for
    // a DNS cluster, and must not clear them).
    p.proxy().reload().unwrap();
    assert_eq!(answers(&p, 3), vec!["one"; 3]);
    // The resolver recovers.
    let ok = resolutions(&p, "success");
    dns.set(zone(vec![a("backend.test.", "127.0.0.1", 1)]));
    eventually("a successful resolution", || {
        (resolutions(&p, "success") > ok).then_some(())
    });
}

#[test]
fn a_one_second_ttl_is_re_resolved() {
    let up = echo("one");
    let dns = DnsServer::start(zone(vec![a("backend.test.", "127.0.0.1", 1)]));
    // max_refresh is long: only the TTL (clamped to min_refresh 1s) can bring the next query.
    let p = proxy(&format!(
        "discovery: {{ type: strict_dns, names: ['backend.test:{}'], resolvers: ['{}'], min_refresh: 1s, max_refresh: 300s }}",
        up.port(),
        dns.addr
    ));
    wait_ready(&p);
    eventually("three resolutions", || {
        (resolutions(&p, "success") >= 3.0).then_some(())
    });
    assert_eq!(resolutions(&p, "failure"), 0.0);
}

#[test]
fn readiness_waits_for_the_first_resolution() {
    let up = echo("one");
    // The server holds the first query (no answer) until the zone is set: not ready until
    // then (the resolver waits up to its 3s timeout).
    let dns = DnsServer::start(json!({ "mode": "hold", "records": [] }));
    let p = proxy(&format!(
        "discovery: {{ type: strict_dns, names: ['backend.test:{}'], resolvers: ['{}'], timeout: 3s }}",
        up.port(),
        dns.addr
    ));
    let admin = p.proxy().admin_addr();
    assert_eq!(http_get(admin, "/ready").0, 503, "warming");
    dns.set(zone(vec![a("backend.test.", "127.0.0.1", 60)]));
    wait_ready(&p);
    wait_all_from(&p, "one", 3);
}
