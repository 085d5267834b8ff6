//! A route's compiled hash policy (Envoy `hash_policy`) and the request hash it computes for
//! the hash-based balancers (ring hash, Maglev). A pure function of the request head and the
//! peer address, called by the forwarder only for routes that have a policy.
//!
//! As Envoy: the policies are evaluated in order; each that finds its input (the header, the
//! cookie, the query parameter; the source IP always) contributes a hash, combined as
//! `hash = rotl(hash, 1) ^ new`; a `terminal` policy ends the list once a hash exists. No
//! input found: no hash, and the balancer picks at random.

use super::CompileError;
use crate::lb::{hash_bytes, mix64};
use http::header::COOKIE;
use http::{HeaderMap, HeaderName, Uri};
use sluice_config::{HashOn, HashPolicy};
use std::net::IpAddr;

/// A route's hash policies, compiled.
#[derive(Debug)]
pub struct RequestHash {
    policies: Vec<(Input, bool)>,
}

#[derive(Debug)]
enum Input {
    Header(HeaderName),
    Cookie(String),
    SourceIp,
    QueryParameter(String),
}

impl RequestHash {
    /// Compiles a route's policies; `None` when it has none (no cost per request).
    pub fn compile(policies: &[HashPolicy]) -> Result<Option<Box<Self>>, CompileError> {
        if policies.is_empty() {
            return Ok(None);
        }
        let policies = policies
            .iter()
            .map(|p| {
                let input = match &p.on {
                    HashOn::Header(h) => Input::Header(
                        HeaderName::from_bytes(h.as_bytes())
                            .map_err(|_| CompileError::Invalid("hash policy header"))?,
                    ),
                    HashOn::Cookie(c) => Input::Cookie(c.clone()),
                    HashOn::SourceIp => Input::SourceIp,
                    HashOn::QueryParameter(q) => Input::QueryParameter(q.clone()),
                };
                Ok((input, p.terminal))
            })
            .collect::<Result<_, CompileError>>()?;
        Ok(Some(Box::new(RequestHash { policies })))
    }

    /// The request's hash, or `None` when no policy found its input.
    pub fn hash(&self, uri: &Uri, headers: &HeaderMap, peer: IpAddr) -> Option<u64> {
        let mut hash: Option<u64> = None;
        for (input, terminal) in &self.policies {
            if let Some(new) = input.hash(uri, headers, peer) {
                hash = Some(hash.map_or(new, |h| h.rotate_left(1) ^ new));
            }
            if *terminal && hash.is_some() {
                break;
            }
        }
        hash
    }
}

impl Input {
    fn hash(&self, uri: &Uri, headers: &HeaderMap, peer: IpAddr) -> Option<u64> {
        match self {
            Input::Header(name) => {
                let mut values = headers.get_all(name).iter();
                let first = hash_bytes(values.next()?.as_bytes());
                Some(values.fold(first, |h, v| mix64(h ^ hash_bytes(v.as_bytes()))))
            }
            Input::Cookie(name) => headers
                .get_all(COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
                .find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let eq = pair.iter().position(|&b| b == b'=')?;
                    let (k, v) = (pair.get(..eq)?, pair.get(eq + 1..)?);
                    (k == name.as_bytes()).then(|| hash_bytes(v))
                }),
            Input::SourceIp => Some(match peer {
                IpAddr::V4(v4) => hash_bytes(&v4.octets()),
                IpAddr::V6(v6) => hash_bytes(&v6.octets()),
            }),
            Input::QueryParameter(name) => uri.query()?.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == name).then(|| hash_bytes(v.as_bytes()))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy(on: HashOn, terminal: bool) -> HashPolicy {
        HashPolicy { on, terminal }
    }

    fn compile(p: &[HashPolicy]) -> Box<RequestHash> {
        RequestHash::compile(p).unwrap().unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[test]
    fn each_input_hashes_its_value_and_only_its_value() {
        let uri: Uri = "/p?a=1&user=bob&user=eve".parse().unwrap();
        let h = headers(&[("x-user", "bob"), ("cookie", "a=1; sid=xyz; b=2")]);
        let by = |on| compile(&[policy(on, false)]).hash(&uri, &h, PEER);
        assert_eq!(
            by(HashOn::Header("x-user".into())),
            Some(hash_bytes(b"bob"))
        );
        assert_eq!(by(HashOn::Header("x-none".into())), None);
        assert_eq!(by(HashOn::Cookie("sid".into())), Some(hash_bytes(b"xyz")));
        assert_eq!(by(HashOn::Cookie("none".into())), None);
        assert_eq!(
            by(HashOn::QueryParameter("user".into())),
            Some(hash_bytes(b"bob")),
            "first occurrence"
        );
        assert_eq!(by(HashOn::QueryParameter("x".into())), None);
        assert_eq!(by(HashOn::SourceIp), Some(hash_bytes(&[10, 0, 0, 1])));
        assert!(RequestHash::compile(&[]).unwrap().is_none());
        // Different values, different hashes; repeated headers all count.
        let two = headers(&[("x-user", "bob"), ("x-user", "eve")]);
        let p = compile(&[policy(HashOn::Header("x-user".into()), false)]);
        assert_ne!(p.hash(&uri, &two, PEER), Some(hash_bytes(b"bob")));
    }

    #[test]
    fn policies_combine_in_order_and_terminal_stops_once_a_hash_exists() {
        let uri: Uri = "/".parse().unwrap();
        let h = headers(&[("x-a", "1"), ("x-b", "2")]);
        let (a, b) = (hash_bytes(b"1"), hash_bytes(b"2"));
        let both = compile(&[
            policy(HashOn::Header("x-a".into()), false),
            policy(HashOn::Header("x-b".into()), false),
        ]);
        assert_eq!(both.hash(&uri, &h, PEER), Some(a.rotate_left(1) ^ b));
        let terminal = compile(&[
            policy(HashOn::Header("x-a".into()), true),
            policy(HashOn::Header("x-b".into()), false),
        ]);
        assert_eq!(terminal.hash(&uri, &h, PEER), Some(a));
        // A terminal policy without its input falls through.
        let fallthrough = compile(&[
            policy(HashOn::Cookie("sid".into()), true),
            policy(HashOn::Header("x-b".into()), false),
        ]);
        assert_eq!(fallthrough.hash(&uri, &h, PEER), Some(b));
    }
}
