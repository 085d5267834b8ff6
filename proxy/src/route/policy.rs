//! Authorization lists, compiled: who may use a listener or a route, by the client's verified
//! SPIFFE ID. Deny wins; a non-empty allow needs a match; entries are exact IDs or prefixes
//! written with a trailing `*`. The identity filter (`http/filters/identity.rs`) applies them.

use sluice_config as config;

/// A compiled allow/deny list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn new(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None => Pattern::Exact(s.to_string()),
        }
    }

    fn matches(&self, id: &str) -> bool {
        match self {
            Pattern::Exact(e) => e == id,
            Pattern::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

impl Policy {
    /// `None` for an empty block (allows everyone).
    pub fn compile(a: &config::Authorization) -> Option<Box<Policy>> {
        if a.is_empty() {
            return None;
        }
        Some(Box::new(Policy {
            allow: a.allow.iter().map(|s| Pattern::new(s)).collect(),
            deny: a.deny.iter().map(|s| Pattern::new(s)).collect(),
        }))
    }

    /// Whether a client with this verified identity (or none) may pass.
    pub fn allows(&self, id: Option<&str>) -> bool {
        match id {
            Some(id) => {
                !self.deny.iter().any(|p| p.matches(id))
                    && (self.allow.is_empty() || self.allow.iter().any(|p| p.matches(id)))
            }
            None => self.allow.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> Box<Policy> {
        Policy::compile(&config::Authorization {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn deny_wins_and_allow_needs_a_match() {
        let p = policy(
            &["spiffe://corp/ns/web/*"],
            &["spiffe://corp/ns/web/sa/bad"],
        );
        assert!(p.allows(Some("spiffe://corp/ns/web/sa/frontend")));
        assert!(!p.allows(Some("spiffe://corp/ns/web/sa/bad")));
        assert!(!p.allows(Some("spiffe://corp/ns/db/sa/x")));
        assert!(!p.allows(None));
        // Prefixes are plain string prefixes: a trust domain needs its trailing slash.
        let td = policy(&["spiffe://corp/*"], &[]);
        assert!(td.allows(Some("spiffe://corp/ns/a")));
        assert!(!td.allows(Some("spiffe://corporate/ns/a")));
        let exact = policy(&["spiffe://corp/a"], &[]);
        assert!(!exact.allows(Some("spiffe://corp/ab")));
        // Deny only: everyone else, identified or not, passes.
        let d = policy(&[], &["spiffe://corp/x"]);
        assert!(d.allows(None));
        assert!(!d.allows(Some("spiffe://corp/x")));
        assert!(Policy::compile(&config::Authorization::default()).is_none());
    }
}
