//! A route's `hash_policy` ↔ `RouteAction.hash_policy`.

use super::value::put;
use super::{FieldError, Fr};
use envoy_types::pb::envoy::config::route::v3::route_action;
use serde_yaml_ng::{Mapping, Value};

pub(crate) fn hash_policy_pb(h: &crate::RawHashPolicy) -> route_action::HashPolicy {
    use route_action::hash_policy::{self as hp, PolicySpecifier as S};
    let spec = if let Some(name) = &h.header {
        Some(S::Header(hp::Header {
            header_name: name.clone(),
            ..Default::default()
        }))
    } else if let Some(c) = &h.cookie {
        Some(S::Cookie(hp::Cookie {
            name: c.name.clone(),
            ..Default::default()
        }))
    } else if let Some(q) = &h.query_parameter {
        Some(S::QueryParameter(hp::QueryParameter { name: q.clone() }))
    } else {
        h.source_ip
            .map(|source_ip| S::ConnectionProperties(hp::ConnectionProperties { source_ip }))
    };
    route_action::HashPolicy {
        terminal: h.terminal,
        policy_specifier: spec,
    }
}

pub(crate) fn hash_policy_mapping(h: &route_action::HashPolicy, p: &str) -> Fr<Mapping> {
    use route_action::hash_policy::PolicySpecifier as S;
    let mut m = Mapping::new();
    match &h.policy_specifier {
        Some(S::Header(x)) => {
            if x.regex_rewrite.is_some() {
                return Err(FieldError::new(
                    format!("{p}.header.regex_rewrite"),
                    "is not supported",
                ));
            }
            put(&mut m, "header", &x.header_name);
        }
        Some(S::Cookie(x)) => {
            if x.ttl.is_some() {
                return Err(FieldError::new(
                    format!("{p}.cookie.ttl"),
                    "generated cookies are not supported",
                ));
            }
            let mut c = Mapping::new();
            put(&mut c, "name", &x.name);
            m.insert("cookie".into(), Value::Mapping(c));
        }
        Some(S::ConnectionProperties(x)) => put(&mut m, "source_ip", x.source_ip),
        Some(S::QueryParameter(x)) => put(&mut m, "query_parameter", &x.name),
        Some(S::FilterState(_)) => {
            return Err(FieldError::new(
                format!("{p}.filter_state"),
                "is not supported",
            ));
        }
        None => return Err(FieldError::new(p, "needs a policy")),
    }
    if h.terminal {
        put(&mut m, "terminal", true);
    }
    Ok(m)
}
