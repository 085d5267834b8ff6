//! Every deserialisation error of a file in one run.
//!
//! serde stops at the first error, so a file with three mistakes would take three runs of
//! `sluice validate`. When the first attempt fails, the document is read as a YAML value and
//! deserialised again and again: after each error the offending node is patched — an unknown
//! field removed, a bad value removed or replaced by a placeholder of an accepted form, a
//! missing field filled in — and the next error is read, until the document deserialises (or
//! no patch gets past an error). A patch is kept only when the error it answers does not come
//! back at the same place, so the errors reported are the file's own. The patched paths are
//! returned too: semantic validation of the patched config then skips issues at or under them
//! (a placeholder is not the user's mistake).

use crate::error::{Issue, message_hint, split_path};
use crate::raw::RawConfig;
use serde_yaml_ng::{Mapping, Value};

/// At most this many errors are collected from one file.
const MAX_ERRORS: usize = 100;

/// At most this many deserialisations are spent on one file (each patch candidate is one), so
/// a large file with many errors cannot hold a reload for long.
const MAX_ATTEMPTS: usize = 500;

/// What one deserialisation pass ended with.
pub(crate) struct Recovered {
    /// The patched config, when the patches got it to deserialise.
    pub raw: Option<RawConfig>,
    /// The errors, in the order serde found them (document order).
    pub errors: Vec<Issue>,
    /// The paths patched to get past them.
    pub patched: Vec<String>,
}

/// Where a deserialisation error is, and what kind of patch gets past it.
#[derive(Clone, Debug, PartialEq)]
enum Fault {
    /// `parent` has a key it does not accept.
    Unknown { parent: String, key: String },
    /// `parent` lacks a required key.
    Missing { parent: String, key: String },
    /// The value at `path` is not accepted.
    Bad { path: String },
}

impl Fault {
    fn read(path: &str, message: &str) -> Fault {
        if let Some(key) = quoted_after(message, "unknown field `") {
            return Fault::Unknown {
                parent: path.to_string(),
                key,
            };
        }
        if let Some(key) = quoted_after(message, "missing field `") {
            return Fault::Missing {
                parent: path.to_string(),
                key,
            };
        }
        Fault::Bad {
            path: path.to_string(),
        }
    }

    /// The path the error is about (the key itself for unknown and missing fields).
    fn path(&self) -> String {
        match self {
            Fault::Unknown { parent, key } | Fault::Missing { parent, key } => join(parent, key),
            Fault::Bad { path } => path.clone(),
        }
    }
}

/// The text between `prefix` and the next backquote.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(k, _)| k.to_string())
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Whether `path` is `base` or lies under it.
pub(crate) fn within(path: &str, base: &str) -> bool {
    base.is_empty()
        || path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// A deserialisation's outcome: the config, or the error's path and message.
type Attempt = Result<RawConfig, (String, String)>;

/// One deserialisation of `value`.
fn attempt(value: &Value) -> Attempt {
    let text = serde_yaml_ng::to_string(value).map_err(|e| (String::new(), e.to_string()))?;
    serde_yaml_ng::from_str::<RawConfig>(&text).map_err(|e| {
        let text = e.to_string();
        let text = match text.rfind(" at line ") {
            Some(i) => &text[..i],
            None => text.as_str(),
        };
        let (path, message) = split_path(text);
        (path.to_string(), message.to_string())
    })
}

/// Deserialises `value` (the whole document), collecting every error; see the module docs.
pub(crate) fn recover(mut value: Value) -> Recovered {
    let mut errors = Vec::new();
    let mut patched = Vec::new();
    let mut budget = MAX_ATTEMPTS;
    let mut next = attempt(&value);
    while let Err((path, message)) = &next {
        let fault = Fault::read(path, message);
        let text = message_hint(message, lookup(&value, &fault.path()));
        // `adress` said "did you mean `address`?"; that `address` is then missing is the
        // same mistake.
        let same_mistake = matches!(&fault, Fault::Missing { parent, key }
        if errors.iter().any(|e: &Issue| {
            e.message.ends_with(&format!("did you mean `{key}`?"))
                && e.path.rsplit_once('.').map_or("", |(p, _)| p) == parent
        }));
        if !same_mistake {
            errors.push(Issue {
                path: fault.path(),
                message: text,
            });
        }
        if errors.len() >= MAX_ERRORS {
            break;
        }
        let Some((patched_value, result)) = patch(&value, &fault, message, &mut budget) else {
            return Recovered {
                raw: None,
                errors,
                patched,
            };
        };
        value = patched_value;
        patched.push(fault.path());
        next = result;
    }
    Recovered {
        raw: next.ok(),
        errors,
        patched,
    }
}

/// The first patch that gets past `fault`: the patched document and its next attempt.
fn patch(
    value: &Value,
    fault: &Fault,
    message: &str,
    budget: &mut usize,
) -> Option<(Value, Attempt)> {
    let at = fault.path();
    let (parent, key) = match fault {
        Fault::Unknown { parent, key } | Fault::Missing { parent, key } => {
            (parent.clone(), Some(key.clone()))
        }
        Fault::Bad { path } => split_last(path),
    };
    // An accepted value the message names (`expected one of `a`, `b``) is the best placeholder,
    // then one of each accepted form. Removing a bad value comes last: a required field's
    // "missing field" error comes only when its mapping ends, after errors further on, so a
    // removal can look like progress when it is not. A sequence item is never removed (that
    // would shift the indices of the items after it).
    let mut candidates: Vec<Option<Value>> = Vec::new();
    if !matches!(fault, Fault::Unknown { .. }) {
        candidates.extend(
            crate::error::expected_values(message)
                .into_iter()
                .map(|v| Some(Value::String(v))),
        );
        candidates.extend(placeholders().into_iter().map(Some));
    }
    if !matches!(fault, Fault::Missing { .. }) && key.is_some() {
        candidates.push(None);
    }
    for candidate in candidates {
        let mut v = value.clone();
        if !set(&mut v, &parent, key.as_deref(), candidate) {
            continue;
        }
        if *budget == 0 {
            return None;
        }
        *budget -= 1;
        let result = attempt(&v);
        let past = match &result {
            Ok(_) => true,
            Err((path, message)) => !within(&Fault::read(path, message).path(), &at),
        };
        if past {
            return Some((v, result));
        }
    }
    None
}

/// Placeholders of every accepted form, tried in turn.
fn placeholders() -> Vec<Value> {
    vec![
        Value::Null,
        Value::String("placeholder".into()),
        Value::Number(1.into()),
        Value::Bool(true),
        Value::String("1s".into()),
        Value::String("127.0.0.1:1".into()),
        Value::Sequence(Vec::new()),
        Value::Mapping(Mapping::new()),
    ]
}

/// `a.b[2].c` → (`a.b[2]`, Some(`c`)); `a.b[2]` → (`a.b[2]`, None): an item is replaced in place.
fn split_last(path: &str) -> (String, Option<String>) {
    if path.ends_with(']') {
        return (path.to_string(), None);
    }
    match path.rfind('.') {
        Some(i) => (path[..i].to_string(), Some(path[i + 1..].to_string())),
        None => (String::new(), Some(path.to_string())),
    }
}

/// The segments of a path: keys and sequence indices.
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let (n, after) = r.split_once(']')?;
            out.push(Segment::Index(n.parse().ok()?));
            rest = after;
        }
    }
    Some(out)
}

fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        v => v,
    }
}

fn untag_mut(v: &mut Value) -> &mut Value {
    match v {
        Value::Tagged(t) => untag_mut(&mut t.value),
        v => v,
    }
}

/// The node at `path`, if it exists.
pub(crate) fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    let mut v = value;
    for s in segments(path)? {
        v = match (s, untag(v)) {
            (Segment::Key(k), Value::Mapping(m)) => m.get(k)?,
            (Segment::Index(i), Value::Sequence(items)) => items.get(i)?,
            _ => return None,
        };
    }
    Some(v)
}

fn lookup_mut<'v>(value: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    let mut v = value;
    for s in segments(path)? {
        v = match (s, untag_mut(v)) {
            (Segment::Key(k), Value::Mapping(m)) => m.get_mut(k)?,
            (Segment::Index(i), Value::Sequence(items)) => items.get_mut(i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Sets (`Some`) or removes (`None`) `key` of the mapping at `parent`, or with no key replaces
/// the node at `parent` itself. False when the node is not there.
fn set(value: &mut Value, parent: &str, key: Option<&str>, to: Option<Value>) -> bool {
    let Some(node) = lookup_mut(value, parent) else {
        return false;
    };
    match (key, to) {
        (None, Some(to)) => {
            *node = to;
            true
        }
        (None, None) => false,
        (Some(k), to) => {
            let Value::Mapping(m) = untag_mut(node) else {
                return false;
            };
            match to {
                Some(to) => {
                    m.insert(Value::String(k.to_string()), to);
                }
                None => {
                    if m.shift_remove(k).is_none() {
                        return false;
                    }
                }
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_keys_and_indices() {
        let v: Value =
            serde_yaml_ng::from_str("a:\n  b:\n    - x\n    - c: [1, 2]\n").expect("yaml");
        assert_eq!(lookup(&v, "a.b[1].c[1]"), Some(&Value::Number(2.into())));
        assert_eq!(lookup(&v, "a.b[0]"), Some(&Value::String("x".into())));
        assert_eq!(lookup(&v, "a.b[2]"), None);
        assert_eq!(lookup(&v, "a.z"), None);
        assert_eq!(split_last("a.b[2].c"), ("a.b[2]".into(), Some("c".into())));
        assert_eq!(split_last("a.b[2]"), ("a.b[2]".into(), None));
        assert_eq!(split_last("top"), (String::new(), Some("top".into())));
        assert!(within("a.b[1].c", "a.b[1]"));
        assert!(within("a.b[1]", "a.b"));
        assert!(!within("a.bc", "a.b"));
    }
}
