//! Virtual-host selection by `Host`/`:authority`: exact names, then `*.suffix`, then `prefix.*`,
//! then `*` (Envoy's order; among wildcards the longest pattern wins).

use std::borrow::Cow;
use std::collections::HashMap;

/// Index from host patterns to virtual-host positions.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `.example.com`, longest first.
    suffixes: Vec<(String, usize)>,
    /// `api.*` stored as `api.`, longest first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl HostIndex {
    /// Adds a validated domain pattern for virtual host `vh`.
    pub(crate) fn insert(&mut self, pattern: &str, vh: usize) {
        let p = pattern.to_ascii_lowercase();
        if p == "*" {
            self.any.get_or_insert(vh);
        } else if let Some(s) = p.strip_prefix('*') {
            self.suffixes.push((s.to_string(), vh));
        } else if let Some(s) = p.strip_suffix('*') {
            self.prefixes.push((s.to_string(), vh));
        } else {
            self.exact.entry(p).or_insert(vh);
        }
    }

    /// Call once after all inserts.
    pub(crate) fn finish(&mut self) {
        // Stable sort: equal lengths keep config order.
        self.suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        self.prefixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    }

    /// The virtual host for `host` (as sent, possibly with a port and in any case).
    pub(crate) fn find(&self, host: &str) -> Option<usize> {
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        if let Some(vh) = self.exact.get(host.as_ref()) {
            return Some(*vh);
        }
        let bare = strip_port(&host);
        if bare.len() != host.len()
            && let Some(vh) = self.exact.get(bare)
        {
            return Some(*vh);
        }
        // A wildcard must stand for at least one character.
        for (suffix, vh) in &self.suffixes {
            if bare.len() > suffix.len() && bare.ends_with(suffix.as_str()) {
                return Some(*vh);
            }
        }
        for (prefix, vh) in &self.prefixes {
            if bare.len() > prefix.len() && bare.starts_with(prefix.as_str()) {
                return Some(*vh);
            }
        }
        self.any
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(patterns: &[(&str, usize)]) -> HostIndex {
        let mut idx = HostIndex::default();
        for (p, v) in patterns {
            idx.insert(p, *v);
        }
        idx.finish();
        idx
    }

    #[test]
    fn precedence() {
        let idx = index(&[
            ("*", 0),
            ("api.*", 1),
            ("*.example.com", 2),
            ("*.api.example.com", 3),
            ("www.example.com", 4),
        ]);
        assert_eq!(idx.find("www.example.com"), Some(4));
        assert_eq!(idx.find("WWW.Example.COM:8080"), Some(4));
        assert_eq!(idx.find("v1.api.example.com"), Some(3));
        assert_eq!(idx.find("api.example.com"), Some(2), "suffix beats prefix");
        assert_eq!(idx.find("api.other.org"), Some(1));
        assert_eq!(idx.find("other.org"), Some(0));
        assert_eq!(idx.find("example.com"), Some(0), "wildcard needs one char");
    }

    #[test]
    fn exact_with_port_beats_without() {
        let idx = index(&[("a.com", 0), ("a.com:8080", 1)]);
        assert_eq!(idx.find("a.com:8080"), Some(1));
        assert_eq!(idx.find("a.com:9090"), Some(0));
        assert_eq!(idx.find("b.com"), None);
    }

    #[test]
    fn ports() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
