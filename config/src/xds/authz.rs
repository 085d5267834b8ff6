//! [`Authorization`] ↔ Envoy's RBAC: one ALLOW policy whose principal is
//! `and_ids[or_ids[allow…], not_id(or_ids[deny…])]` over `authenticated.principal_name`
//! (exact, or prefix for entries ending in `*`). A listener's authorization is the RBAC HTTP
//! filter `envoy.filters.http.rbac`; a route's is the per-route config (`RBACPerRoute`) of a
//! second RBAC filter, [`ROUTE_RBAC`], so that both apply, as in Sluice (Envoy's per-route
//! config would replace the listener's).

use super::{FieldError, Fr};
use crate::Authorization;
use envoy_types::pb::envoy::config::rbac::v3::{
    self as rbac, Permission, Policy, Principal, permission, principal,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{Rbac, RbacPerRoute};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use std::collections::HashMap;

/// The listener-level RBAC filter's name.
pub(crate) const RBAC: &str = "envoy.filters.http.rbac";
/// The name of the second RBAC filter, which carries routes' authorization.
pub(crate) const ROUTE_RBAC: &str = "sluice.filters.http.route_rbac";
/// The policy's name.
const POLICY: &str = "sluice";

fn id(entry: &str) -> Principal {
    let pattern = match entry.strip_suffix('*') {
        Some(prefix) => MatchPattern::Prefix(prefix.to_string()),
        None => MatchPattern::Exact(entry.to_string()),
    };
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(StringMatcher {
                    match_pattern: Some(pattern),
                    ..Default::default()
                }),
            },
        )),
    }
}

fn or_ids(entries: &[String]) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set {
            ids: entries.iter().map(|e| id(e)).collect(),
        })),
    }
}

/// The RBAC rules enforcing `a` (`None` when it allows everyone).
pub(crate) fn rules(a: &Authorization) -> Option<rbac::Rbac> {
    if a.is_empty() {
        return None;
    }
    let mut ids = Vec::new();
    if !a.allow.is_empty() {
        ids.push(or_ids(&a.allow));
    }
    if !a.deny.is_empty() {
        ids.push(Principal {
            identifier: Some(principal::Identifier::NotId(Box::new(or_ids(&a.deny)))),
        });
    }
    Some(rbac::Rbac {
        action: rbac::rbac::Action::Allow as i32,
        policies: HashMap::from([(
            POLICY.to_string(),
            Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::Any(true)),
                }],
                principals: vec![Principal {
                    identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
                }],
                ..Default::default()
            },
        )]),
        ..Default::default()
    })
}

/// The RBAC filter config of a listener.
pub(crate) fn filter(a: &Authorization) -> Rbac {
    Rbac {
        rules: rules(a),
        ..Default::default()
    }
}

/// The per-route config of a route.
pub(crate) fn per_route(a: &Authorization) -> RbacPerRoute {
    RbacPerRoute {
        rbac: Some(filter(a)),
    }
}

fn entries(p: &Principal, f: &str) -> Fr<Vec<String>> {
    let bad = || {
        FieldError::new(
            f,
            "only `or_ids` of `authenticated.principal_name` exact or prefix matches are supported",
        )
    };
    let Some(principal::Identifier::OrIds(set)) = &p.identifier else {
        return Err(bad());
    };
    let mut out = Vec::new();
    for x in &set.ids {
        let Some(principal::Identifier::Authenticated(a)) = &x.identifier else {
            return Err(bad());
        };
        match a
            .principal_name
            .as_ref()
            .and_then(|m| m.match_pattern.as_ref())
        {
            Some(MatchPattern::Exact(s)) => out.push(s.clone()),
            Some(MatchPattern::Prefix(s)) => out.push(format!("{s}*")),
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// The authorization an RBAC filter config enforces; `p` is its path. Shapes other than the one
/// [`rules`] writes are errors (RBAC is security policy: nothing is dropped silently).
pub(crate) fn from_filter(r: &Rbac, p: &str) -> Fr<Authorization> {
    if r.matcher.is_some() {
        return Err(FieldError::new(format!("{p}.matcher"), "is not supported"));
    }
    let Some(rules) = &r.rules else {
        return Ok(Authorization::default());
    };
    let rp = format!("{p}.rules");
    if rules.action != rbac::rbac::Action::Allow as i32 {
        return Err(FieldError::new(
            format!("{rp}.action"),
            "only ALLOW is supported",
        ));
    }
    let mut a = Authorization::default();
    let [(name, policy)] = rules.policies.iter().collect::<Vec<_>>()[..] else {
        return Err(FieldError::new(
            format!("{rp}.policies"),
            "exactly one policy is supported",
        ));
    };
    let pp = format!("{rp}.policies[\"{name}\"]");
    let any = matches!(
        policy.permissions.as_slice(),
        [Permission {
            rule: Some(permission::Rule::Any(true))
        }]
    );
    if !any || policy.condition.is_some() || policy.checked_condition.is_some() {
        return Err(FieldError::new(
            format!("{pp}.permissions"),
            "only `any: true` permissions without conditions are supported",
        ));
    }
    let [principal] = policy.principals.as_slice() else {
        return Err(FieldError::new(
            format!("{pp}.principals"),
            "exactly one principal is supported",
        ));
    };
    let f = format!("{pp}.principals[0]");
    let parts: Vec<&Principal> = match &principal.identifier {
        Some(principal::Identifier::AndIds(set)) => set.ids.iter().collect(),
        _ => vec![principal],
    };
    for (i, part) in parts.iter().enumerate() {
        let f = format!("{f}.and_ids[{i}]");
        match &part.identifier {
            Some(principal::Identifier::NotId(inner)) if a.deny.is_empty() => {
                a.deny = entries(inner, &format!("{f}.not_id"))?;
            }
            _ if a.allow.is_empty() => a.allow = entries(part, &f)?,
            _ => return Err(FieldError::new(f, "one allow set and one deny set at most")),
        }
    }
    Ok(a)
}

/// The authorization of a route's `RBACPerRoute`.
pub(crate) fn from_per_route(r: &RbacPerRoute, p: &str) -> Fr<Authorization> {
    match &r.rbac {
        Some(x) => from_filter(x, &format!("{p}.rbac")),
        None => Ok(Authorization::default()),
    }
}
