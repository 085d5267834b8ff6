//! Load-balancing config tests: defaults, parsing and round trip, located errors.

use crate::parse;

const BASE: &str = "\
listeners:
  - { name: l, address: 127.0.0.1:8080, http: { route_table: main } }
route_tables:
  - name: main
    virtual_hosts:
      - name: any
        domains: ['*']
        routes:
          - match: { prefix: / }
            cluster: web
HASH
clusters:
  - name: web
EXTRA
    endpoints: [127.0.0.1:9001, { address: 127.0.0.1:9002, weight: 2, zone: b }]
";

fn with(hash: &str, extra: &str) -> String {
    BASE.replace("HASH\n", hash).replace("EXTRA\n", extra)
}

fn errors(src: &str) -> Vec<String> {
    match parse(src, "t.yaml") {
        Ok(_) => panic!("expected errors for:\n{src}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn defaults_are_envoys_and_linkerds() {
    let c = parse(&with("", ""), "t.yaml").unwrap();
    let cl = &c.clusters[0];
    assert_eq!(cl.lb_policy, crate::LbPolicy::PeakEwma);
    assert_eq!(cl.peak_ewma.decay, crate::Duration::from_secs(10));
    assert_eq!(cl.peak_ewma.default_rtt, crate::Duration::from_millis(30));
    assert_eq!(cl.ring_hash.minimum_ring_size, 1024);
    assert_eq!(cl.ring_hash.maximum_ring_size, 8 << 20);
    assert_eq!(cl.ring_hash.hash_balance_factor, None);
    assert_eq!(cl.maglev.table_size, 65537);
    assert_eq!(cl.least_request.choice_count, 2);
    assert_eq!(cl.panic_threshold, 50);
    assert_eq!(cl.locality.min_healthy_percent, 70);
    assert_eq!(cl.locality.min_cluster_size, 6);
    assert!(cl.locality.enabled);
    assert_eq!(cl.endpoints[0].zone, None);
    assert_eq!(cl.endpoints[1].zone.as_deref(), Some("b"));
    assert_eq!(c.node.zone, None);
}

#[test]
fn settings_and_hash_policies_parse_and_round_trip() {
    let src = format!(
        "node: {{ id: n1, zone: a }}\n{}",
        with(
            "            hash_policy:\n              - header: x-user\n              - cookie: { name: sid }\n                terminal: true\n              - source_ip: true\n              - query_parameter: u\n",
            "    lb_policy: maglev\n    maglev: { table_size: 251, hash_balance_factor: 150 }\n    ring_hash: { minimum_ring_size: 64, maximum_ring_size: 128 }\n    panic_threshold: 0\n    locality: { min_healthy_percent: 100, min_cluster_size: 1 }\n",
        )
    );
    let c = parse(&src, "t.yaml").unwrap();
    assert_eq!(c.node.zone.as_deref(), Some("a"));
    let cl = &c.clusters[0];
    assert_eq!(cl.lb_policy, crate::LbPolicy::Maglev);
    assert_eq!(cl.maglev.table_size, 251);
    assert_eq!(cl.maglev.hash_balance_factor, Some(150));
    assert_eq!(cl.panic_threshold, 0);
    let route = &c.route_tables[0].virtual_hosts[0].routes[0];
    use crate::{HashOn, HashPolicy};
    assert_eq!(
        route.hash_policy,
        vec![
            HashPolicy {
                on: HashOn::Header("x-user".into()),
                terminal: false
            },
            HashPolicy {
                on: HashOn::Cookie("sid".into()),
                terminal: true
            },
            HashPolicy {
                on: HashOn::SourceIp,
                terminal: false
            },
            HashPolicy {
                on: HashOn::QueryParameter("u".into()),
                terminal: false
            },
        ]
    );
    // The dump parses back to the same config.
    let yaml = serde_yaml_ng::to_string(&c).unwrap();
    assert_eq!(parse(&yaml, "dump.yaml").unwrap(), c);
}

#[test]
fn bad_settings_name_their_fields() {
    let src = with(
        "            hash_policy:\n              - { header: x-a, cookie: { name: b } }\n              - { source_ip: false }\n              - { header: 'bad name' }\n",
        "    maglev: { table_size: 65536, hash_balance_factor: 99 }\n    ring_hash: { minimum_ring_size: 2048, maximum_ring_size: 1024 }\n    panic_threshold: 101\n    locality: { min_healthy_percent: 200 }\n    peak_ewma: { decay: 0s }\n    least_request: { choice_count: 1 }\n",
    );
    let e = errors(&src);
    let want = [
        "hash_policy[0]: set exactly one of",
        "hash_policy[1]: set exactly one of",
        "hash_policy[1].source_ip: `false` hashes nothing",
        "hash_policy[2].header: not a valid header name",
        "clusters[0].ring_hash.maximum_ring_size: must not be less than minimum_ring_size",
        "clusters[0].maglev.hash_balance_factor: must be at least 100",
        "clusters[0].maglev.table_size: must be a prime",
        "clusters[0].panic_threshold: must be a percentage",
        "clusters[0].locality.min_healthy_percent: must be a percentage",
        "clusters[0].peak_ewma.decay: must be greater than 0s",
        "clusters[0].least_request.choice_count: must be between 2 and 100",
    ];
    for w in want {
        assert!(e.iter().any(|m| m.contains(w)), "missing `{w}` in {e:#?}");
    }
    assert_eq!(e.len(), want.len(), "{e:#?}");
    // Located: the line of the field.
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.yaml:19:") && m.contains("panic_threshold")),
        "{e:#?}"
    );
}

#[test]
fn hash_policy_needs_a_forwarding_route_and_zones_must_not_be_empty() {
    let src = with("", "")
        .replace(
            "            cluster: web\n",
            "            direct_response: { status: 200 }\n            hash_policy: [{ source_ip: true }]\n",
        )
        .replace("zone: b", "zone: ''");
    let src = format!("node: {{ zone: '' }}\n{src}");
    let e = errors(&src);
    assert!(
        e.iter()
            .any(|m| m.contains("routes[0].hash_policy: only applies")),
        "{e:#?}"
    );
    assert!(
        e.iter().any(|m| m.contains("node.zone: must not be empty")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("endpoints[1].zone: must not be empty")),
        "{e:#?}"
    );
}

#[test]
fn primes() {
    assert!(super::is_prime(65537));
    assert!(super::is_prime(3));
    assert!(!super::is_prime(65536));
    assert!(!super::is_prime(1));
    assert!(super::is_prime(5_000_011));
}
