//! Request conditions of one route: path (prefix, exact, regex), methods, headers and query
//! parameters. Matching is a pure function of the request head.

use super::RequestHead;
use crate::route::CompileError;
use http::{HeaderName, Method};
use regex::Regex;
use sluice_config as config;
use std::borrow::Cow;

#[derive(Debug)]
pub(crate) enum PathMatch {
    Prefix(String),
    /// Whole segments: the path equals it or continues with `/` (stored without a trailing
    /// `/`; empty for `/`, which matches every path).
    Segments(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug)]
pub(crate) struct RouteMatcher {
    pub(crate) path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<HeaderCondition>,
    query: Vec<QueryCondition>,
}

#[derive(Debug)]
enum ValueMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(Regex),
    Present(bool),
}

#[derive(Debug)]
struct HeaderCondition {
    name: HeaderName,
    value: ValueMatch,
    invert: bool,
}

#[derive(Debug)]
struct QueryCondition {
    name: String,
    value: ValueMatch,
}

fn regex(p: &str) -> Result<Regex, CompileError> {
    config::full_match_regex(p).map_err(CompileError::Regex)
}

impl RouteMatcher {
    pub(crate) fn compile(m: &config::RouteMatch) -> Result<Self, CompileError> {
        let path = match (&m.prefix, &m.path, &m.regex) {
            (Some(p), _, _) => PathMatch::Prefix(p.clone()),
            _ if m.path_prefix.is_some() => PathMatch::Segments(
                m.path_prefix
                    .as_deref()
                    .unwrap_or_default()
                    .trim_end_matches('/')
                    .to_string(),
            ),
            (_, Some(p), _) => PathMatch::Exact(p.clone()),
            (_, _, Some(r)) => PathMatch::Regex(regex(r)?),
            _ => {
                return Err(CompileError::Invalid(
                    "route match without a path condition",
                ));
            }
        };
        let methods = m
            .methods
            .iter()
            .map(|s| Method::from_bytes(s.as_bytes()).map_err(|_| CompileError::Invalid("method")))
            .collect::<Result<_, _>>()?;
        let headers = m
            .headers
            .iter()
            .map(|h| {
                Ok(HeaderCondition {
                    name: HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| CompileError::Invalid("header name"))?,
                    value: value_match(&h.exact, &h.prefix, &h.suffix, &h.regex, h.present)?,
                    invert: h.invert,
                })
            })
            .collect::<Result<_, CompileError>>()?;
        let query = m
            .query_parameters
            .iter()
            .map(|q| {
                Ok(QueryCondition {
                    name: q.name.clone(),
                    value: value_match(&q.exact, &q.prefix, &None, &q.regex, q.present)?,
                })
            })
            .collect::<Result<_, CompileError>>()?;
        Ok(RouteMatcher {
            path,
            methods,
            headers,
            query,
        })
    }

    /// True when the request meets every condition; `Err(name)` when a query parameter this
    /// route tests appears more than once in a request that meets every other condition.
    pub(crate) fn matches(&self, req: &RequestHead<'_>) -> Result<bool, &str> {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => req.path.starts_with(p.as_str()),
            PathMatch::Segments(p) => req
                .path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Regex(r) => r.is_match(req.path),
        };
        if !(path_ok
            && (self.methods.is_empty() || self.methods.contains(req.method))
            && self.headers.iter().all(|c| c.matches(req)))
        {
            return Ok(false);
        }
        for c in &self.query {
            if !c.matches(req)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl RouteMatcher {
    /// The first condition `req` fails, in words (`None` when it meets them all), checked in
    /// the order [`RouteMatcher::matches`] checks them: for `sluice explain`.
    pub(crate) fn why_not(&self, req: &RequestHead<'_>) -> Option<String> {
        let path = req.path;
        let path_fails = match &self.path {
            PathMatch::Prefix(p) if !path.starts_with(p.as_str()) => {
                Some(format!("path `{path}` does not start with `{p}`"))
            }
            PathMatch::Segments(p)
                if !path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')) =>
            {
                Some(format!("path `{path}` is not `{p}` or under `{p}/`"))
            }
            PathMatch::Exact(p) if path != p => Some(format!("path `{path}` is not `{p}`")),
            PathMatch::Regex(r) if !r.is_match(path) => Some(format!(
                "path `{path}` does not match the regex `{}`",
                r.as_str()
            )),
            _ => None,
        };
        if path_fails.is_some() {
            return path_fails;
        }
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            let list: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            return Some(format!(
                "method {} is not one of {}",
                req.method,
                list.join(", ")
            ));
        }
        for c in &self.headers {
            if !c.matches(req) {
                let value = req
                    .headers
                    .get(&c.name)
                    .map(|v| format!("`{}`", String::from_utf8_lossy(v.as_bytes())));
                let wanted = c.value.describe();
                return Some(match (value, c.invert) {
                    (None, false) => format!("header `{}` is absent (wanted: {wanted})", c.name),
                    (Some(v), false) => {
                        format!("header `{}` is {v} (wanted: {wanted})", c.name)
                    }
                    (v, true) => format!(
                        "header `{}` {} (the condition is inverted: it must not be {wanted})",
                        c.name,
                        v.map_or_else(|| "is absent".to_string(), |v| format!("is {v}"))
                    ),
                });
            }
        }
        for c in &self.query {
            match c.matches(req) {
                Ok(true) => {}
                Ok(false) => {
                    return Some(format!(
                        "query parameter `{}` fails (wanted: {})",
                        c.name,
                        c.value.describe()
                    ));
                }
                Err(name) => {
                    return Some(format!(
                        "query parameter `{name}` appears more than once (the request is refused \
                         with 400)"
                    ));
                }
            }
        }
        None
    }
}

impl ValueMatch {
    fn describe(&self) -> String {
        match self {
            ValueMatch::Exact(v) => format!("exactly `{v}`"),
            ValueMatch::Prefix(v) => format!("starting with `{v}`"),
            ValueMatch::Suffix(v) => format!("ending with `{v}`"),
            ValueMatch::Regex(r) => format!("matching `{}`", r.as_str()),
            ValueMatch::Present(true) => "present".into(),
            ValueMatch::Present(false) => "absent".into(),
        }
    }
}

fn value_match(
    exact: &Option<String>,
    prefix: &Option<String>,
    suffix: &Option<String>,
    re: &Option<String>,
    present: Option<bool>,
) -> Result<ValueMatch, CompileError> {
    Ok(match (exact, prefix, suffix, re, present) {
        (Some(v), ..) => ValueMatch::Exact(v.clone()),
        (_, Some(v), ..) => ValueMatch::Prefix(v.clone()),
        (_, _, Some(v), ..) => ValueMatch::Suffix(v.clone()),
        (_, _, _, Some(r), _) => ValueMatch::Regex(regex(r)?),
        (_, _, _, _, Some(p)) => ValueMatch::Present(p),
        _ => return Err(CompileError::Invalid("matcher without a condition")),
    })
}

impl ValueMatch {
    fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (ValueMatch::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (ValueMatch::Exact(e), Some(v)) => v == e,
            (ValueMatch::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (ValueMatch::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
            (ValueMatch::Regex(r), Some(v)) => r.is_match(v),
        }
    }
}

impl HeaderCondition {
    fn matches(&self, req: &RequestHead<'_>) -> bool {
        let mut values = req.headers.get_all(&self.name).iter();
        let joined: Option<Cow<'_, str>> = match (values.next(), values.next()) {
            (None, _) => None,
            // A value that is not visible ASCII never equals a configured string; treat it as
            // present but unmatchable.
            (Some(v), None) => Some(Cow::Borrowed(v.to_str().unwrap_or("\u{fffd}"))),
            (Some(first), Some(second)) => {
                let mut s = String::from(first.to_str().unwrap_or("\u{fffd}"));
                for v in std::iter::once(second).chain(values) {
                    s.push(',');
                    s.push_str(v.to_str().unwrap_or("\u{fffd}"));
                }
                Some(Cow::Owned(s))
            }
        };
        self.value.matches(joined.as_deref()) != self.invert
    }
}

impl QueryCondition {
    fn matches(&self, req: &RequestHead<'_>) -> Result<bool, &str> {
        let value = match req.query {
            Some(q) => unique_query_param(q, &self.name).ok_or(self.name.as_str())?,
            None => None,
        };
        Ok(self.value.matches(value.as_deref()))
    }
}

/// The decoded value of the `name` parameter; `None` (outer) when it appears more than once.
fn unique_query_param<'a>(query: &'a str, name: &str) -> Option<Option<Cow<'a, str>>> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k) == name {
            if found.is_some() {
                return None;
            }
            found = Some(percent_decode(v));
        }
    }
    Some(found)
}

/// Decodes `%XX` escapes and `+` (as space). Invalid escapes are kept as written.
pub(crate) fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(hex),
                bytes.get(i + 2).and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            _ => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
