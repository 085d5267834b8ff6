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
    pub(crate) fn from_yaml(file: &str, err: &serde_yaml_ng::Error) -> Self {
        let position = err.location().map(|l| Position {
            line: l.line(),
            column: l.column(),
        });
        let text = err.to_string();
        let text = match text.rfind(" at line ") {
            Some(i) if position.is_some() => &text[..i],
            _ => text.as_str(),
        };
        let (path, message) = split_path(text);
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            position,
            path: path.to_string(),
            message: message.to_string(),
        }])
    }

    /// Locates semantic problems found by validation.
    pub(crate) fn from_issues(file: &str, index: &PositionIndex, issues: Vec<Issue>) -> Self {
        ConfigErrors(
            issues
                .into_iter()
                .map(|i| ConfigError {
                    file: file.to_string(),
                    position: index.locate(&i.path),
                    path: i.path,
                    message: i.message,
                })
                .collect(),
        )
    }
}

/// `listeners[0].address: invalid ...` → (`listeners[0].address`, `invalid ...`). A message
/// without a leading path is returned whole.
fn split_path(text: &str) -> (&str, &str) {
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
