//! The mapping's tests: round trips over the bundled examples, Envoy-shaped resources written
//! from Envoy's API docs, and errors naming the field.

use super::value::{SLUICE, from_struct};
use super::*;
use crate::Config;
use envoy_types::pb::envoy::config::cluster::v3 as pbc;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::listener::v3 as pbl;
use envoy_types::pb::envoy::config::route::v3 as pbr;
use prost::Message;
use serde_yaml_ng::Value;
use std::collections::BTreeSet;

fn examples() -> Vec<(String, Config)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        let name = p.display().to_string();
        let config = crate::parse(&text, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.push((name, config));
    }
    assert!(out.len() >= 5, "examples not found in {}", dir.display());
    out
}

/// Every key path under `metadata.filter_metadata.sluice`, prefixed with `at`.
fn sluice_keys(md: Option<&Metadata>, at: &str, out: &mut BTreeSet<String>) {
    fn walk(v: &Value, at: &str, out: &mut BTreeSet<String>) {
        match v {
            Value::Mapping(m) => {
                for (k, v) in m {
                    walk(v, &format!("{at}.{}", k.as_str().unwrap_or("?")), out);
                }
            }
            _ => {
                out.insert(at.to_string());
            }
        }
    }
    if let Some(s) = md.and_then(|m| m.filter_metadata.get(SLUICE)) {
        walk(&Value::Mapping(from_struct(s)), at, out);
    }
}

fn metadata_keys(any: &Any) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    match any.type_url.as_str() {
        CLUSTER => {
            let c = pbc::Cluster::decode(any.value.as_slice()).unwrap();
            sluice_keys(c.metadata.as_ref(), "cluster", &mut out);
        }
        LISTENER => {
            let l = pbl::Listener::decode(any.value.as_slice()).unwrap();
            sluice_keys(l.metadata.as_ref(), "listener", &mut out);
        }
        ROUTE => {
            let t = pbr::RouteConfiguration::decode(any.value.as_slice()).unwrap();
            sluice_keys(t.metadata.as_ref(), "route_table", &mut out);
            for v in &t.virtual_hosts {
                sluice_keys(v.metadata.as_ref(), "virtual_host", &mut out);
                for r in &v.routes {
                    sluice_keys(r.metadata.as_ref(), "route", &mut out);
                }
            }
        }
        _ => {}
    }
    out
}

#[test]
fn examples_round_trip() {
    let mut keys = BTreeSet::new();
    let mut count = 0;
    for (file, config) in examples() {
        for r in config.resources().values() {
            let any = encode(r);
            assert_eq!(any.type_url, type_url(r.kind()));
            keys.extend(metadata_keys(&any));
            let back =
                decode(&any.type_url, &any).unwrap_or_else(|e| panic!("{file}: {}: {e}", r.kind()));
            assert_eq!(back, vec![r.clone()], "{file}: {} {}", r.kind(), r.name());
            count += 1;
        }
    }
    assert!(count > 20, "{count} resources");
    eprintln!("sluice metadata keys: {keys:#?}");
}
