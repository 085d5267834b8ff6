//! `Host` / `:authority` validation before routing (RFC 9110 §4.2.4 and §7.2, RFC 3986 §3.2.2):
//! `host [":" port]` where host is a reg-name (unreserved and sub-delims; no percent-encoding,
//! no userinfo) or a bracketed IPv6 literal, and port is digits. Anything else (`evil.com/.x`,
//! `user@host`, `host:abc`, `[not-an-ip]`, an empty value) is refused with 400, so it can neither
//! match a wildcard virtual host nor end up in a `Location`.

use std::borrow::Cow;
use std::net::Ipv6Addr;

/// Checks an authority; returns it with one trailing dot removed from the host when
/// `strip_trailing_dot` (`api.example.com.:8080` → `api.example.com:8080`), or `None` when it is
/// invalid.
pub(crate) fn check(authority: &str, strip_trailing_dot: bool) -> Option<Cow<'_, str>> {
    let (host, port) = split(authority)?;
    // RFC 3986 allows an empty port (`host:`); it means the scheme's default.
    if let Some(p) = port
        && (p.len() > 5
            || !p.bytes().all(|b| b.is_ascii_digit())
            || (!p.is_empty() && p.parse::<u32>().map_or(true, |n| n > 65535)))
    {
        return None;
    }
    if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']')?.parse::<Ipv6Addr>().ok()?;
        return Some(Cow::Borrowed(authority));
    }
    if host.is_empty() || !host.bytes().all(reg_name_byte) {
        return None;
    }
    match host.strip_suffix('.') {
        Some(bare) if strip_trailing_dot && !bare.is_empty() && !bare.ends_with('.') => {
            Some(Cow::Owned(match port {
                Some(p) => format!("{bare}:{p}"),
                None => bare.to_string(),
            }))
        }
        // `a.com..` is not a name with one trailing dot.
        Some(bare) if bare.is_empty() || bare.ends_with('.') => None,
        _ => Some(Cow::Borrowed(authority)),
    }
}

/// `host:port` → (`host`, `Some(port)`); `[v6]:port` keeps the brackets on the host.
fn split(a: &str) -> Option<(&str, Option<&str>)> {
    if a.starts_with('[') {
        let end = a.find(']')?;
        let (host, rest) = a.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(p) => Some((host, Some(p))),
            None if rest.is_empty() => Some((host, None)),
            None => None,
        };
    }
    // Hosts are short: a plain reverse scan beats a `memrchr` call.
    Some(match a.bytes().rposition(|b| b == b':') {
        Some(i) => (a.get(..i)?, Some(a.get(i + 1..)?)),
        None => (a, None),
    })
}

/// RFC 3986 reg-name without pct-encoded: unreserved / sub-delims.
fn reg_name_byte(b: u8) -> bool {
    REG_NAME.get(usize::from(b)).copied().unwrap_or(false)
}

#[allow(clippy::indexing_slicing)] // const evaluation: an out-of-bounds index fails the build
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_authorities() {
        for a in [
            "api.example.com",
            "API.Example.COM:8080",
            "localhost",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "a-b_c~d",
            "host:",
        ] {
            assert_eq!(check(a, true).as_deref(), Some(a), "{a}");
        }
    }

    #[test]
    fn the_probes_are_refused() {
        for a in [
            "evil.com/.corp.example.com",
            "user@api.example.com",
            "user:pw@api.example.com",
            "api.example.com:abc",
            "api.example.com:99999",
            "api.example.com:123456",
            "[api.example.com]",
            "[::1",
            "[::1]x",
            "",
            ":80",
            "a b",
            "a%2fb",
            "evil.com\\.corp.example.com",
            "evil.com?.corp.example.com",
            "evil.com#.corp.example.com",
            "a.com..",
            ".",
        ] {
            assert_eq!(check(a, true), None, "{a:?}");
        }
    }

    #[test]
    fn one_trailing_dot_is_stripped_when_asked() {
        assert_eq!(
            check("api.example.com.", true).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            check("api.example.com.:8080", true).as_deref(),
            Some("api.example.com:8080")
        );
        assert_eq!(
            check("api.example.com.", false).as_deref(),
            Some("api.example.com.")
        );
    }
}
