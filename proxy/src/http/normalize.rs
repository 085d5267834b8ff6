//! Request-target normalization before routing (RFC 3986 §6.2.2 and §5.2.4), so that routing and
//! the upstream see the same path and `..`, escapes and doubled slashes cannot walk around a
//! prefix rule.
//!
//! The path is checked and normalized in one pass that does nothing on the common path (an
//! already-normal path is detected without allocating):
//! - bytes ≥ 0x80 and characters RFC 3986 does not allow in a path (`"`, `[`, `]`, `^`, `{`,
//!   `|`, `}`; the `http` crate already refuses controls, space, `<`, `>` and `` ` ``) → reject;
//!   an invalid escape (`%zz`, a truncated `%4`) → reject;
//! - percent-encoded unreserved characters are decoded (`%61` → `a`, `%2e` → `.`) and other
//!   escapes upper-cased (`%3f` → `%3F`);
//! - `%2F`, `%5C` and `\` get the configured action: reject, unescape to `/` (and redirect, or
//!   forward), or keep;
//! - runs of `/` are merged (when configured) and dot segments removed (`/a/./b/../c` → `/a/c`),
//!   including ones that were encoded.
//!
//! The query is only checked (bytes ≥ 0x80 → reject); it is never normalized. It may contain the
//! characters browsers send unencoded in a query (WHATWG URL: `[ ] { } | ^ \` and `` ` ``).

use sluice_config::{EscapedSlashes, PathNormalization};

/// The result of normalizing one path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Normalized {
    /// The path is already normal: route and forward it as received.
    Unchanged,
    /// Route and forward this path instead.
    Changed(String),
    /// Answer 307 with this path (escaped slashes were unescaped; Envoy's
    /// `UNESCAPE_AND_REDIRECT`).
    Redirect(String),
    /// Answer 400; the reason is for logs.
    Reject(&'static str),
}

// Byte classes of the fast scan.
const OK: u8 = 0;
const SLASH: u8 = 1;
const DOT: u8 = 2;
const PERCENT: u8 = 3;
const BACKSLASH: u8 = 4;
const BAD: u8 = 5;

/// RFC 3986 `pchar` and `/` are OK (plus `%`, `.` and `\` handled on their own); everything
/// else, and every byte ≥ 0x80, is BAD.
#[allow(clippy::indexing_slicing)] // const evaluation: an out-of-bounds index fails the build
const CLASS: [u8; 256] = {
    let mut t = [BAD; 256];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        t[i] = match b {
            b'/' => SLASH,
            b'.' => DOT,
            b'%' => PERCENT,
            b'\\' => BACKSLASH,
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'~' => OK,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => OK,
            b':' | b'@' => OK,
            _ => BAD,
        };
        i += 1;
    }
    t
};

fn class(b: u8) -> u8 {
    // A `u8` always indexes a 256-entry table.
    CLASS.get(usize::from(b)).copied().unwrap_or(BAD)
}

/// True for RFC 3986 unreserved characters.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True when a query may be forwarded: no byte ≥ 0x80 (the `http` crate refuses controls,
/// space, `"`, `<` and `>` in a query already).
pub(crate) fn valid_query(q: &str) -> bool {
    q.is_ascii()
}

/// Checks and normalizes `path` (without the query) under `policy`.
pub(crate) fn normalize(path: &str, policy: &PathNormalization) -> Normalized {
    if !policy.normalize {
        return Normalized::Unchanged;
    }
    // `*` (OPTIONS *) and anything not starting with `/` is left to the caller's checks.
    if !path.starts_with('/') {
        return Normalized::Unchanged;
    }
    match scan(path.as_bytes(), policy.merge_slashes) {
        Scan::Normal => Normalized::Unchanged,
        Scan::Bad => Normalized::Reject("character not allowed in a path"),
        Scan::Rewrite => rewrite(path.as_bytes(), policy),
    }
}

enum Scan {
    Normal,
    Rewrite,
    Bad,
}

/// One pass over the bytes: is the path already normal?
fn scan(bytes: &[u8], merge_slashes: bool) -> Scan {
    let mut rewrite = false;
    // Position of the current segment's start (just after a `/`).
    let mut seg_start = 0;
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match class(b) {
            OK => {}
            SLASH => {
                if merge_slashes && prev == b'/' {
                    rewrite = true;
                }
                if is_dot_segment(bytes.get(seg_start..i).unwrap_or_default()) {
                    rewrite = true;
                }
                seg_start = i + 1;
            }
            DOT => {}
            PERCENT | BACKSLASH => rewrite = true,
            _ => return Scan::Bad,
        }
        prev = b;
    }
    if is_dot_segment(bytes.get(seg_start..).unwrap_or_default()) {
        rewrite = true;
    }
    if rewrite { Scan::Rewrite } else { Scan::Normal }
}

fn is_dot_segment(seg: &[u8]) -> bool {
    seg == b"." || seg == b".."
}

/// The slow path: decode, apply the escaped-slash action, merge slashes, remove dot segments.
fn rewrite(bytes: &[u8], policy: &PathNormalization) -> Normalized {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut unescaped_slash = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Normalized::Reject("invalid percent-encoding in the path");
                };
                let v = h << 4 | l;
                if unreserved(v) {
                    decoded.push(v);
                } else if v == b'/' || v == b'\\' {
                    match policy.escaped_slashes {
                        EscapedSlashes::Reject => {
                            return Normalized::Reject("escaped slash in the path");
                        }
                        EscapedSlashes::Keep => {
                            decoded.extend_from_slice(if v == b'/' { b"%2F" } else { b"%5C" })
                        }
                        EscapedSlashes::UnescapeAndRedirect
                        | EscapedSlashes::UnescapeAndForward => {
                            decoded.push(b'/');
                            unescaped_slash = true;
                        }
                    }
                } else {
                    decoded.push(b'%');
                    decoded.push(hex_upper(h));
                    decoded.push(hex_upper(l));
                }
                i += 3;
                continue;
            }
            b'\\' => match policy.escaped_slashes {
                EscapedSlashes::Reject => return Normalized::Reject("backslash in the path"),
                EscapedSlashes::Keep => decoded.push(b'\\'),
                EscapedSlashes::UnescapeAndRedirect | EscapedSlashes::UnescapeAndForward => {
                    decoded.push(b'/');
                    unescaped_slash = true;
                }
            },
            _ if class(b) == BAD => {
                return Normalized::Reject("character not allowed in a path");
            }
            _ => decoded.push(b),
        }
        i += 1;
    }
    if policy.merge_slashes {
        decoded.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    let out = remove_dot_segments(&decoded);
    // Built only from ASCII bytes of the input and ASCII escapes.
    let Ok(out) = String::from_utf8(out) else {
        return Normalized::Reject("character not allowed in a path");
    };
    if unescaped_slash && policy.escaped_slashes == EscapedSlashes::UnescapeAndRedirect {
        Normalized::Redirect(out)
    } else if out.as_bytes() == bytes {
        Normalized::Unchanged
    } else {
        Normalized::Changed(out)
    }
}

/// The upper-case hex digit of a nibble.
fn hex_upper(n: u8) -> u8 {
    b"0123456789ABCDEF"
        .get(usize::from(n & 0xf))
        .copied()
        .unwrap_or(b'0')
}

/// RFC 3986 §5.2.4 on an absolute path: the output always starts with `/`, and `..` never climbs
/// above the root.
pub(crate) fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut input = path;
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix(b"../") {
            input = rest; // A
        } else if let Some(rest) = input.strip_prefix(b"./") {
            input = rest; // A
        } else if input.starts_with(b"/./") {
            input = input.get(2..).unwrap_or_default(); // B: "/./x" → "/x"
        } else if input == b"/." {
            input = b"/"; // B
        } else if input.starts_with(b"/../") {
            input = input.get(3..).unwrap_or_default(); // C: "/../x" → "/x", drop a segment
            pop_segment(&mut out);
        } else if input == b"/.." {
            input = b"/"; // C
            pop_segment(&mut out);
        } else if input == b"." || input == b".." {
            input = b""; // D
        } else {
            // E: move the first segment (with its leading `/`, if any) to the output.
            let start = usize::from(input.first() == Some(&b'/'));
            let end = input
                .get(start..)
                .and_then(|r| r.iter().position(|&b| b == b'/'))
                .map_or(input.len(), |p| p + start);
            let (segment, rest) = input.split_at_checked(end).unwrap_or((input, b""));
            out.extend_from_slice(segment);
            input = rest;
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn pop_segment(out: &mut Vec<u8>) {
    let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
    out.truncate(cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(merge: bool, action: EscapedSlashes) -> PathNormalization {
        PathNormalization {
            normalize: true,
            merge_slashes: merge,
            escaped_slashes: action,
        }
    }

    fn norm(path: &str) -> Normalized {
        normalize(path, &PathNormalization::default())
    }

    fn changed(s: &str) -> Normalized {
        Normalized::Changed(s.to_string())
    }

    #[test]
    fn rfc3986_remove_dot_segments_examples() {
        // §5.2.4's worked examples (the merged paths of §5.4 that start with `/`).
        let cases = [
            ("/a/b/c/./../../g", "/a/g"),
            ("/./g", "/g"),
            ("/../g", "/g"),
            ("/../../g", "/g"),
            ("/a/b/c/g.", "/a/b/c/g."),
            ("/a/b/c/.g", "/a/b/c/.g"),
            ("/a/b/c/g..", "/a/b/c/g.."),
            ("/a/b/c/..g", "/a/b/c/..g"),
            ("/a/b/c/./g/.", "/a/b/c/g/"),
            ("/a/b/c/g/./h", "/a/b/c/g/h"),
            ("/a/b/c/g/../h", "/a/b/c/h"),
            ("/a/b/c/g;x=1/./y", "/a/b/c/g;x=1/y"),
            ("/a/b/c/g;x=1/../y", "/a/b/c/y"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/a/b/c/.", "/a/b/c/"),
            ("/a/b/c/..", "/a/b/"),
            ("/a/b/c/../..", "/a/"),
            ("/..", "/"),
            ("/.", "/"),
            ("/", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(
                String::from_utf8(remove_dot_segments(input.as_bytes())).unwrap(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn the_probes_walk_nowhere() {
        // The adversarial probe's paths, all of which reached `/admin/x` at the upstream.
        for p in [
            "/public/../admin/x",
            "/public/%2e%2e/admin/x",
            "/public/%2E%2E/admin/x",
            "/./admin/x",
            "/%2e/admin/x",
            "//admin/x",
            "/%61dmin/x",
            "/v2/../../admin/x",
            "/public/.%2e/admin/x",
        ] {
            assert_eq!(norm(p), changed("/admin/x"), "{p}");
        }
        // Escaped slashes and backslashes: redirected to the unescaped path by default.
        for p in [
            "/public/..%2fadmin/x",
            "/admin%2fx",
            "/admin\\x",
            "/admin%5Cx",
        ] {
            match norm(p) {
                Normalized::Redirect(to) => assert!(to == "/admin/x", "{p} → {to}"),
                other => panic!("{p}: {other:?}"),
            }
        }
    }

    #[test]
    fn normal_paths_are_untouched() {
        for p in [
            "/",
            "/a/b/c",
            "/a/b/",
            "/file.tar.gz",
            "/.well-known/acme",
            "/a/..b/c..",
            "/a:b@c!$&'()*+,;=~_-",
            "/api..",
        ] {
            assert_eq!(norm(p), Normalized::Unchanged, "{p}");
        }
    }

    #[test]
    fn escapes_are_decoded_only_when_unreserved() {
        assert_eq!(norm("/%7Euser/%41"), changed("/~user/A"));
        assert_eq!(norm("/a%3fb"), changed("/a%3Fb"), "reserved stays encoded");
        assert_eq!(norm("/a%3Fb"), Normalized::Unchanged);
        assert_eq!(norm("/a%25b"), Normalized::Unchanged, "a literal % stays");
        assert_eq!(
            norm("/a%252e%252e/x"),
            Normalized::Unchanged,
            "no double decode"
        );
        assert_eq!(norm("/a%20b"), Normalized::Unchanged);
        assert_eq!(norm("/a%00b"), Normalized::Unchanged);
    }

    #[test]
    fn bad_bytes_and_escapes_are_rejected() {
        for p in [
            "/caf\u{e9}",
            "/a\"b",
            "/a{b}",
            "/a|b",
            "/a^b",
            "/a[0]",
            "/a%",
            "/a%4",
            "/a%zz",
            "/a%4g/x",
        ] {
            assert!(matches!(norm(p), Normalized::Reject(_)), "{p}");
        }
        assert!(valid_query("a=1&b=[x]|{y}"));
        assert!(!valid_query("a=\u{e9}"));
    }

    #[test]
    fn escaped_slash_actions() {
        let p = "/a%2Fb/../c\\d";
        assert!(matches!(
            normalize(p, &policy(true, EscapedSlashes::Reject)),
            Normalized::Reject(_)
        ));
        assert_eq!(
            normalize(p, &policy(true, EscapedSlashes::UnescapeAndForward)),
            changed("/a/c/d")
        );
        assert_eq!(
            normalize(p, &policy(true, EscapedSlashes::UnescapeAndRedirect)),
            Normalized::Redirect("/a/c/d".into())
        );
        // Kept: `%2F` is part of a segment, so `..` removes the whole `a%2Fb`.
        assert_eq!(
            normalize(p, &policy(true, EscapedSlashes::Keep)),
            changed("/c\\d")
        );
        assert_eq!(
            normalize("/a%2fb", &policy(true, EscapedSlashes::Keep)),
            changed("/a%2Fb")
        );
    }

    #[test]
    fn merging_slashes_is_configurable() {
        assert_eq!(norm("/a//b///c"), changed("/a/b/c"));
        let keep = policy(false, EscapedSlashes::UnescapeAndRedirect);
        assert_eq!(normalize("/a//b", &keep), Normalized::Unchanged);
        assert_eq!(normalize("/a//../b", &keep), changed("/a/b"));
    }

    #[test]
    fn off_means_off() {
        let off = PathNormalization {
            normalize: false,
            ..PathNormalization::default()
        };
        assert_eq!(normalize("/a/../b", &off), Normalized::Unchanged);
        assert_eq!(norm("*"), Normalized::Unchanged);
    }

    /// Every encoded spelling of a dot segment or a slash in the probe's position resolves to
    /// the same path as its plain spelling.
    #[test]
    fn encoded_variants_table() {
        let dots = ["..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%2E."];
        let slashes = ["/", "//", "///"];
        for d in dots {
            for s in slashes {
                let p = format!("/pub{s}{d}{s}admin/x");
                assert_eq!(norm(&p), changed("/admin/x"), "{p}");
            }
        }
        for one in [".", "%2e", "%2E"] {
            let p = format!("/{one}/admin/x");
            assert_eq!(norm(&p), changed("/admin/x"), "{p}");
        }
        for letter in ["%61", "%41"] {
            let p = format!("/{letter}dmin/x");
            let want = if letter == "%61" {
                "/admin/x"
            } else {
                "/Admin/x"
            };
            assert_eq!(norm(&p), changed(want), "{p}");
        }
    }
}
