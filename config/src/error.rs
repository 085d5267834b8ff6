//! Config errors: each names the file, the line and column, and the field path.

use crate::locate::{Position, PositionIndex};
use std::fmt;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (as given on the command line) or a source name such as `<inline>`.
    pub file: String,
    /// Where in the file, when known.
    pub position: Option<Position>,
    /// Field path such as `clusters[2].endpoints[0]`; empty for whole-file problems.
    pub path: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one config file (at least one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// A single error without a position (unreadable file and the like).
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            position: None,
            path: String::new(),
            message: message.into(),
        }])
    }

    /// Converts a deserialisation error. serde_yaml_ng renders it as `path: message at line L
    /// column C`; the parts are split apart so that all errors print the same way.
    /// `syntax`: the text did not even read as a YAML value (then a message without a field
    /// path is a syntax error and gets its likely cause).
    pub(crate) fn from_yaml(
        file: &str,
        source: &str,
        err: &serde_yaml_ng::Error,
        syntax: bool,
    ) -> Self {
        let position = err.location().map(|l| Position {
            line: l.line(),
            column: l.column(),
        });
        let text = err.to_string();
        let (path, message) = split_path(&text);
        let message = if syntax && path.is_empty() {
            syntax_message(message, source, position.map(|p| p.line))
        } else {
            let message = match message.rfind(" at line ") {
                Some(i) => &message[..i],
                None => message,
            };
            message_hint(message, None)
        };
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            position,
            path: path.to_string(),
            message,
        }])
    }

    /// Locates semantic problems found by validation.
    pub(crate) fn from_issues(file: &str, index: &PositionIndex, issues: Vec<Issue>) -> Self {
        let mut errors: Vec<ConfigError> = issues
            .into_iter()
            .map(|i| ConfigError {
                file: file.to_string(),
                position: if i.message.starts_with("unknown field") {
                    index.locate_key(&i.path)
                } else {
                    index.locate(&i.path)
                },
                path: i.path,
                message: i.message,
            })
            .collect();
        // In file order; those without a position last. The sort is stable: problems at one
        // place keep the order they were found in.
        errors.sort_by_key(|e| {
            e.position
                .map_or((usize::MAX, usize::MAX), |p| (p.line, p.column))
        });
        ConfigErrors(errors)
    }
}

/// `listeners[0].address: invalid ...` → (`listeners[0].address`, `invalid ...`). A message
/// without a leading path is returned whole.
pub(crate) fn split_path(text: &str) -> (&str, &str) {
    if let Some((head, rest)) = text.split_once(": ") {
        let looks_like_path = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
        if looks_like_path {
            return (head, rest);
        }
    }
    ("", text)
}

/// A problem found by validation, before it is given a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// Field path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The accepted values a serde message lists: `expected one of `a`, `b``, `expected `a` or
/// `b``, `expected `a``.
pub(crate) fn expected_values(message: &str) -> Vec<String> {
    let Some(i) = message.find("expected ") else {
        return Vec::new();
    };
    let list = &message[i + "expected ".len()..];
    let list = list.strip_prefix("one of ").unwrap_or(list);
    if !list.starts_with('`') {
        return Vec::new();
    }
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The closest of `options` to `word`, if it is close enough to be a typo.
pub(crate) fn closest<'a>(
    word: &str,
    options: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    options
        .into_iter()
        .map(|o| (distance(&word.to_ascii_lowercase(), o), o))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

fn backquoted(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A deserialiser's message in words an operator can act on: "did you mean" for unknown
/// fields and values, accepted forms for addresses and numbers, and no Rust type names.
/// `value` is the node the message is about, when it can be found.
pub(crate) fn message_hint(message: &str, value: Option<&serde_yaml_ng::Value>) -> String {
    for (prefix, what) in [("unknown field `", "field"), ("unknown variant `", "value")] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some((word, _)) = rest.split_once('`') else {
            continue;
        };
        let expected = expected_values(message);
        if expected.is_empty() {
            return format!("unknown {what} `{word}`: nothing is accepted here");
        }
        return match closest(word, expected.iter().map(String::as_str)) {
            Some(best) => format!("unknown {what} `{word}`; did you mean `{best}`?"),
            None => format!(
                "unknown {what} `{word}`; expected one of {}",
                backquoted(&expected)
            ),
        };
    }
    if message == "invalid socket address syntax" {
        return address_hint(value.and_then(|v| v.as_str()));
    }
    rust_names_out(message)
}

/// Why an address did not parse, and the forms that do.
fn address_hint(text: Option<&str>) -> String {
    const FORMS: &str =
        "write an IP address and port: `127.0.0.1:8080`, `0.0.0.0:8080`, `[::1]:8080`";
    let Some(text) = text else {
        return format!("not an address; {FORMS}");
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        match rest.split_once("]:") {
            Some((h, p)) => (h, Some(p)),
            None => (rest.trim_end_matches(']'), None),
        }
    } else if text.matches(':').count() > 1 {
        return format!("`{text}`: an IPv6 address takes brackets: `[::1]:8080`");
    } else {
        match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.parse::<std::net::IpAddr>().is_err() {
        return format!(
            "`{text}`: `{host}` is not an IP address (host names are for cluster endpoints); \
             {FORMS}"
        );
    }
    match port {
        None => format!("`{text}` has no port; {FORMS}"),
        Some(p) if p.parse::<u64>().is_ok_and(|n| n > 65535) => {
            format!("`{text}`: port {p} is out of range (0 to 65535)")
        }
        Some(p) => format!("`{text}`: `{p}` is not a port number (0 to 65535)"),
    }
}

/// Replaces the Rust type names serde puts in messages (`expected struct RawConfig`,
/// `expected u16`, `sequence`) by words for YAML.
fn rust_names_out(message: &str) -> String {
    let mut out = message
        .replace("invalid type: sequence", "invalid type: a list")
        .replace("invalid type: map", "invalid type: a mapping")
        .replace("expected a sequence", "expected a list")
        .replace("expected a map", "expected a mapping")
        .replace("expected a boolean", "expected `true` or `false`");
    for (rust, words) in [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number (0 or more)"),
        ("usize", "a whole number (0 or more)"),
        ("i32", "a whole number"),
        ("i64", "a whole number"),
        ("f32", "a number"),
        ("f64", "a number"),
    ] {
        let from = format!("expected {rust}");
        if out.ends_with(&from) {
            let cut = out.len() - rust.len();
            out.truncate(cut);
            out.push_str(words);
        }
    }
    for kind in ["struct ", "enum ", "tuple struct "] {
        while let Some(i) = out.find(&format!("expected {kind}")) {
            let start = i + "expected ".len();
            let name_start = start + kind.len();
            let name_end = out[name_start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(out.len(), |e| name_start + e);
            let words = if kind == "enum " {
                "one of the accepted values"
            } else {
                "a mapping (`key: value` lines)"
            };
            out.replace_range(start..name_end, words);
        }
    }
    out
}

/// A YAML syntax error, with the likely cause: `problem at line L column C[, context at line
/// L2 column C2]` → a message and a hint. `source` is the file's text.
pub(crate) fn syntax_message(text: &str, source: &str, line: Option<usize>) -> String {
    let (problem, context) = match text.split_once(", ") {
        Some((p, c)) if c.starts_with("while ") => (p, Some(c)),
        _ => (text, None),
    };
    let problem = match problem.rfind(" at line ") {
        Some(i) => &problem[..i],
        None => problem,
    };
    let (context, opened) = match context {
        Some(c) => match c.rfind(" at line ") {
            Some(i) => (Some(&c[..i]), Some(&c[i + " at ".len()..])),
            None => (Some(c), None),
        },
        None => (None, None),
    };
    let here = line
        .and_then(|l| source.lines().nth(l.saturating_sub(1)))
        .unwrap_or("");
    let opened = opened.unwrap_or("the line above");
    let hint = if problem.contains("cannot start any token") && here.contains('\t') {
        "a tab character: YAML indents with spaces only".to_string()
    } else if problem.contains("cannot start any token") {
        "a value cannot start with this character; quote the value".to_string()
    } else if context == Some("while parsing a flow mapping") {
        format!(
            "the `{{` opened at {opened} is not closed, or a `,` is missing between its entries"
        )
    } else if context == Some("while parsing a flow sequence") {
        format!("the `[` opened at {opened} is not closed, or a `,` is missing between its items")
    } else if context.is_some_and(|c| c.contains("quoted scalar")) {
        format!("the quote opened at {opened} is not closed")
    } else if problem == "unknown anchor" {
        "a value starting with `*` refers to an anchor (`&name`) defined earlier; there is none \
         by this name (quote the value if the `*` is meant literally)"
            .to_string()
    } else if problem.contains("mapping values are not allowed") {
        "a `: ` where a value was expected: quote a value that contains `: `, or indent this \
         line to match its siblings"
            .to_string()
    } else if context == Some("while parsing a block mapping") {
        format!(
            "this line is not indented like the keys of the mapping that starts at {opened}; \
             keys of one mapping line up"
        )
    } else if context == Some("while parsing a block collection") {
        format!(
            "the list that starts at {opened} continues here with something that is not an item: \
             items start with `- ` at the list's indentation"
        )
    } else if let Some(c) = context {
        format!("{c} that starts at {opened}")
    } else {
        String::new()
    };
    if hint.is_empty() {
        format!("YAML syntax: {problem}")
    } else {
        format!("YAML syntax: {problem}: {hint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_closest_option_and_no_rust_types() {
        assert_eq!(
            message_hint(
                "unknown field `adress`, expected one of `name`, `address`, `http`",
                None
            ),
            "unknown field `adress`; did you mean `address`?"
        );
        assert_eq!(
            message_hint("unknown variant `zzz`, expected `a` or `b`", None),
            "unknown value `zzz`; expected one of `a`, `b`"
        );
        assert_eq!(
            message_hint("invalid type: sequence, expected struct RawConfig", None),
            "invalid type: a list, expected a mapping (`key: value` lines)"
        );
        assert_eq!(
            message_hint("invalid value: integer `70000`, expected u16", None),
            "invalid value: integer `70000`, expected a whole number from 0 to 65535"
        );
        let v = serde_yaml_ng::Value::String("localhost:8080".into());
        assert!(
            message_hint("invalid socket address syntax", Some(&v))
                .starts_with("`localhost:8080`: `localhost` is not an IP address"),
        );
        let v = serde_yaml_ng::Value::String("127.0.0.1:99999".into());
        assert_eq!(
            message_hint("invalid socket address syntax", Some(&v)),
            "`127.0.0.1:99999`: port 99999 is out of range (0 to 65535)"
        );
        assert_eq!(
            closest("roundrobin", ["round_robin", "random"]),
            Some("round_robin")
        );
        assert_eq!(closest("xyz", ["round_robin", "random"]), None);
    }
}
