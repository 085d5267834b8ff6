//! A route's `match` ↔ Envoy's `RouteMatch` (path, headers, query parameters, methods).

use super::value::put;
use super::{FieldError, Fr};
use crate::{HeaderMatcher, RouteMatch};
use envoy_types::pb::envoy::config::route::v3::{
    self as pbr, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, route_match,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use serde_yaml_ng::{Mapping, Value};

/// A route's match as Envoy's `RouteMatch` (methods become a `:method` header matcher).
pub(crate) fn match_pb(m: &RouteMatch) -> pbr::RouteMatch {
    let path_specifier = if let Some(p) = &m.prefix {
        Some(route_match::PathSpecifier::Prefix(p.clone()))
    } else if let Some(p) = &m.path_prefix {
        Some(route_match::PathSpecifier::PathSeparatedPrefix(p.clone()))
    } else if let Some(p) = &m.path {
        Some(route_match::PathSpecifier::Path(p.clone()))
    } else {
        m.regex
            .as_ref()
            .map(|p| route_match::PathSpecifier::SafeRegex(regex(p)))
    };
    let mut headers: Vec<pbr::HeaderMatcher> = Vec::new();
    if !m.methods.is_empty() {
        headers.push(pbr::HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(if let [one] = m.methods.as_slice() {
                    MatchPattern::Exact(one.clone())
                } else {
                    MatchPattern::SafeRegex(regex(&m.methods.join("|")))
                }),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    headers.extend(m.headers.iter().map(header_matcher_pb));
    let query_parameters = m
        .query_parameters
        .iter()
        .map(|q| pbr::QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: if let Some(p) = q.present {
                Some(QueryParameterMatchSpecifier::PresentMatch(p))
            } else {
                let p = if let Some(x) = &q.exact {
                    Some(MatchPattern::Exact(x.clone()))
                } else if let Some(x) = &q.prefix {
                    Some(MatchPattern::Prefix(x.clone()))
                } else {
                    q.regex.as_ref().map(|x| MatchPattern::SafeRegex(regex(x)))
                };
                p.and_then(string_matcher)
                    .map(QueryParameterMatchSpecifier::StringMatch)
            },
        })
        .collect();
    pbr::RouteMatch {
        path_specifier,
        headers,
        query_parameters,
        ..Default::default()
    }
}

/// Envoy's `RouteMatch` as the model's `match` mapping; `mp` is its path.
pub(crate) fn match_mapping(rm: Option<&pbr::RouteMatch>, mp: &str) -> Fr<Mapping> {
    let Some(rm) = rm else {
        return Err(FieldError::new(mp, "is required"));
    };
    let mut mm = Mapping::new();
    for (bad, what) in [
        (
            rm.case_sensitive.as_ref().is_some_and(|c| !c.value),
            "case_sensitive",
        ),
        (rm.runtime_fraction.is_some(), "runtime_fraction"),
        (!rm.cookies.is_empty(), "cookies"),
        (rm.tls_context.is_some(), "tls_context"),
        (!rm.dynamic_metadata.is_empty(), "dynamic_metadata"),
        (!rm.filter_state.is_empty(), "filter_state"),
    ] {
        if bad {
            return Err(FieldError::new(format!("{mp}.{what}"), "is not supported"));
        }
    }
    use route_match::PathSpecifier as P;
    match &rm.path_specifier {
        Some(P::Prefix(x)) => put(&mut mm, "prefix", x),
        Some(P::Path(x)) => put(&mut mm, "path", x),
        Some(P::PathSeparatedPrefix(x)) => put(&mut mm, "path_prefix", x),
        Some(P::SafeRegex(x)) => put(&mut mm, "regex", &x.regex),
        Some(P::ConnectMatcher(_)) => {
            return Err(FieldError::new(
                format!("{mp}.connect_matcher"),
                "CONNECT is not supported",
            ));
        }
        Some(P::PathMatchPolicy(_)) => {
            return Err(FieldError::new(
                format!("{mp}.path_match_policy"),
                "is not supported",
            ));
        }
        None => {
            return Err(FieldError::new(
                format!("{mp}.prefix"),
                "a path match is required",
            ));
        }
    }
    let mut headers = Vec::new();
    for (i, h) in rm.headers.iter().enumerate() {
        let hp = format!("{mp}.headers[{i}]");
        let mut x = Mapping::new();
        use HeaderMatchSpecifier as H;
        let (k, v): (&str, Value) = match &h.header_match_specifier {
            Some(H::StringMatch(s)) => {
                let (k, v) = pattern(Some(s), &format!("{hp}.string_match"))?;
                (k, Value::String(v))
            }
            Some(H::ExactMatch(v)) => ("exact", Value::String(v.clone())),
            Some(H::PrefixMatch(v)) => ("prefix", Value::String(v.clone())),
            Some(H::SuffixMatch(v)) => ("suffix", Value::String(v.clone())),
            Some(H::SafeRegexMatch(v)) => ("regex", Value::String(v.regex.clone())),
            Some(H::PresentMatch(b)) => ("present", Value::Bool(*b)),
            Some(H::RangeMatch(_) | H::ContainsMatch(_)) => {
                return Err(FieldError::new(
                    hp,
                    "range and contains matches are not supported",
                ));
            }
            None => ("present", Value::Bool(true)),
        };
        if h.name == ":method" && !h.invert_match && (k == "exact" || k == "regex") {
            let s = v.as_str().unwrap_or_default();
            let methods: Vec<&str> = s.split('|').collect();
            if k == "exact"
                || methods
                    .iter()
                    .all(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()))
            {
                put(
                    &mut mm,
                    "methods",
                    if k == "exact" { vec![s] } else { methods },
                );
                continue;
            }
        }
        put(&mut x, "name", &h.name);
        x.insert(k.into(), v);
        if h.invert_match {
            put(&mut x, "invert", true);
        }
        headers.push(Value::Mapping(x));
    }
    if rm.grpc.is_some() {
        // Envoy's gRPC match: content-type `application/grpc` or `application/grpc+…`.
        let mut x = Mapping::new();
        put(&mut x, "name", "content-type");
        put(&mut x, "regex", r"application/grpc(\+.*)?");
        headers.push(Value::Mapping(x));
    }
    if !headers.is_empty() {
        mm.insert("headers".into(), Value::Sequence(headers));
    }
    let mut qs = Vec::new();
    for (i, q) in rm.query_parameters.iter().enumerate() {
        let qp = format!("{mp}.query_parameters[{i}]");
        let mut x = Mapping::new();
        put(&mut x, "name", &q.name);
        match &q.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(s)) => {
                let (k, v) = pattern(Some(s), &format!("{qp}.string_match"))?;
                if k == "suffix" {
                    return Err(FieldError::new(
                        format!("{qp}.string_match.suffix"),
                        "is not supported",
                    ));
                }
                put(&mut x, k, v);
            }
            Some(QueryParameterMatchSpecifier::PresentMatch(b)) => put(&mut x, "present", b),
            None => put(&mut x, "present", true),
        }
        qs.push(Value::Mapping(x));
    }
    if !qs.is_empty() {
        mm.insert("query_parameters".into(), Value::Sequence(qs));
    }
    Ok(mm)
}

pub(crate) fn header_matcher_pb(h: &HeaderMatcher) -> pbr::HeaderMatcher {
    let spec = if let Some(p) = h.present {
        Some(HeaderMatchSpecifier::PresentMatch(p))
    } else {
        let p = if let Some(x) = &h.exact {
            Some(MatchPattern::Exact(x.clone()))
        } else if let Some(x) = &h.prefix {
            Some(MatchPattern::Prefix(x.clone()))
        } else if let Some(x) = &h.suffix {
            Some(MatchPattern::Suffix(x.clone()))
        } else {
            h.regex.as_ref().map(|x| MatchPattern::SafeRegex(regex(x)))
        };
        p.and_then(string_matcher)
            .map(HeaderMatchSpecifier::StringMatch)
    };
    pbr::HeaderMatcher {
        name: h.name.clone(),
        invert_match: h.invert,
        header_match_specifier: spec,
        ..Default::default()
    }
}

pub(crate) fn string_matcher(p: MatchPattern) -> Option<StringMatcher> {
    Some(StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    })
}

pub(crate) fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}

pub(crate) fn pattern(m: Option<&StringMatcher>, f: &str) -> Fr<(&'static str, String)> {
    let Some(m) = m else {
        return Err(FieldError::new(f, "is required"));
    };
    if m.ignore_case {
        return Err(FieldError::new(
            format!("{f}.ignore_case"),
            "case-insensitive matching is not supported",
        ));
    }
    match &m.match_pattern {
        Some(MatchPattern::Exact(x)) => Ok(("exact", x.clone())),
        Some(MatchPattern::Prefix(x)) => Ok(("prefix", x.clone())),
        Some(MatchPattern::Suffix(x)) => Ok(("suffix", x.clone())),
        Some(MatchPattern::SafeRegex(r)) => Ok(("regex", r.regex.clone())),
        Some(MatchPattern::Contains(_)) => {
            Err(FieldError::new(format!("{f}.contains"), "is not supported"))
        }
        Some(MatchPattern::Custom(_)) => {
            Err(FieldError::new(format!("{f}.custom"), "is not supported"))
        }
        None => Err(FieldError::new(f, "needs a match pattern")),
    }
}
