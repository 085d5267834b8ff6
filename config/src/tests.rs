//! Config loading tests: one per error kind, each asserting the message and its location.

use super::*;

const BASE: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
    http: { route_table: main }
route_tables:
  - name: main
    virtual_hosts:
      - name: any
        domains: ['*']
        routes:
          - match: { prefix: / }
            cluster: web
clusters:
  - name: web
    endpoints: [127.0.0.1:9001]
";

fn errors(src: &str) -> Vec<String> {
    match parse(src, "test.yaml") {
        Ok(_) => panic!("expected errors for:\n{src}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(src: &str) -> String {
    let e = errors(src);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    e.into_iter().next().unwrap()
}

#[test]
fn base_is_valid_and_has_defaults() {
    let c = parse(BASE, "test.yaml").unwrap();
    assert_eq!(c.admin.address.to_string(), "127.0.0.1:7191");
    let ListenerKind::Http(h) = &c.listeners[0].kind else {
        panic!("an HTTP listener");
    };
    assert_eq!(h.max_request_header_bytes, ByteSize::kib(60));
    assert_eq!(h.http2.max_concurrent_streams, 100);
    assert_eq!(h.request_header_timeout, Duration::from_secs(10));
    assert_eq!(h.stream_idle_timeout, Duration::from_secs(300));
    assert_eq!(h.per_connection_buffer_limit_bytes, ByteSize::kib(32));
    assert_eq!(
        c.clusters[0].per_connection_buffer_limit_bytes,
        ByteSize::kib(64)
    );
    assert_eq!(c.clusters[0].endpoints[0].weight, 1);
    assert_eq!(c.clusters[0].protocol, UpstreamProtocol::Http1);
}

#[test]
fn unknown_field_names_field_and_location() {
    let src = BASE.replace(
        "    address: 127.0.0.1:8080\n",
        "    address: 127.0.0.1:8080\n    adress: x\n",
    );
    let e = one_error(&src);
    assert!(
        e.starts_with(
            "test.yaml:4:5: listeners[0].adress: unknown field `adress`; did you mean `address`?"
        ),
        "{e}"
    );
}

#[test]
fn bad_type_is_located() {
    let src = BASE.replace("endpoints: [127.0.0.1:9001]", "endpoints: [nope]");
    let e = one_error(&src);
    assert!(
        e.starts_with("test.yaml:15:17: clusters[0].endpoints[0]: `nope` is not an IP address"),
        "{e}"
    );
}

#[test]
fn bad_duration_is_located() {
    let src = BASE.replace(
        "  - name: web\n",
        "  - name: web\n    connect_timeout: 5 parsecs\n",
    );
    let e = one_error(&src);
    assert!(
        e.starts_with(
            "test.yaml:15:22: clusters[0].connect_timeout: duration `5 parsecs` has unknown unit"
        ),
        "{e}"
    );
}

#[test]
fn yaml_syntax_error_is_located() {
    let e = one_error("listeners: [\n  - {");
    assert!(e.starts_with("test.yaml:"), "{e}");
    assert!(e.contains(':'), "{e}");
}

#[test]
fn empty_file() {
    assert_eq!(one_error("  \n"), "test.yaml: file is empty");
}

#[test]
fn unreadable_file() {
    let e = load_file(std::path::Path::new("/nonexistent/sluice.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/sluice.yaml: cannot read file:"),
        "{e}"
    );
}

#[test]
fn prefix_must_start_with_slash() {
    let src = BASE.replace("prefix: /", "prefix: api");
    assert_eq!(
        one_error(&src),
        "test.yaml:11:30: route_tables[0].virtual_hosts[0].routes[0].match.prefix: must start with '/'"
    );
}

#[test]
fn unknown_cluster_in_route() {
    let src = BASE.replace("cluster: web", "cluster: nowhere");
    assert_eq!(
        one_error(&src),
        "test.yaml:12:22: route_tables[0].virtual_hosts[0].routes[0].cluster: unknown cluster `nowhere`"
    );
}

#[test]
fn unknown_route_table() {
    let src = BASE.replace("route_table: main", "route_table: other");
    assert_eq!(
        one_error(&src),
        "test.yaml:4:26: listeners[0].http.route_table: unknown route table `other`"
    );
}

#[test]
fn unknown_cluster_in_tcp_listener() {
    let src = format!("{BASE}  - name: db\n    endpoints: [127.0.0.1:5432]\n")
        .replace("    http: { route_table: main }\n", "    http: { route_table: main }\n  - name: pg\n    address: 127.0.0.1:5433\n    tcp: { cluster: dbx }\n");
    assert_eq!(
        one_error(&src),
        "test.yaml:7:21: listeners[1].tcp.cluster: unknown cluster `dbx`"
    );
}

#[test]
fn duplicate_names() {
    let src = format!("{BASE}  - name: web\n    endpoints: [127.0.0.1:9002]\n");
    assert_eq!(
        one_error(&src),
        "test.yaml:16:11: clusters[1].name: duplicate name `web` (also used by clusters[0])"
    );
}

#[test]
fn two_listeners_on_one_address() {
    let src = BASE.replace(
        "    http: { route_table: main }\n",
        "    http: { route_table: main }\n  - name: again\n    address: 0.0.0.0:8080\n    http: { route_table: main }\n",
    );
    assert_eq!(
        one_error(&src),
        "test.yaml:6:14: listeners[1].address: address 0.0.0.0:8080 clashes with listeners[0] (public)"
    );
}

#[test]
fn listener_clashing_with_admin() {
    let src = BASE.replace("address: 127.0.0.1:8080", "address: 127.0.0.1:7191");
    assert_eq!(
        one_error(&src),
        "test.yaml:3:14: listeners[0].address: address 127.0.0.1:7191 clashes with admin"
    );
}

#[test]
fn invalid_regex() {
    let src = BASE.replace("{ prefix: / }", "{ regex: '/a(b' }");
    let e = one_error(&src);
    assert!(
        e.starts_with("test.yaml:11:29: route_tables[0].virtual_hosts[0].routes[0].match.regex: invalid regex `/a(b`"),
        "{e}"
    );
}

#[test]
fn match_needs_exactly_one_path_specifier() {
    let src = BASE.replace("{ prefix: / }", "{ prefix: /, path: /x }");
    assert_eq!(
        one_error(&src),
        "test.yaml:11:13: route_tables[0].virtual_hosts[0].routes[0].match: set only one of `prefix`, `path_prefix`, `path` or `regex`"
    );
    let src = BASE.replace("{ prefix: / }", "{ methods: [GET] }");
    assert!(
        one_error(&src).ends_with("match: needs one of `prefix`, `path_prefix`, `path` or `regex`")
    );
}

#[test]
fn route_needs_one_action() {
    let src = BASE.replace(
        "            cluster: web\n",
        "            cluster: web\n            direct_response: { status: 200 }\n",
    );
    assert_eq!(
        one_error(&src),
        "test.yaml:11:13: route_tables[0].virtual_hosts[0].routes[0]: set only one of `cluster`, `weighted_clusters`, `redirect`, `direct_response`"
    );
    let src = BASE.replace("            cluster: web\n", "");
    assert!(one_error(&src).ends_with("routes[0]: needs an action: one of `cluster`, `weighted_clusters`, `redirect`, `direct_response`"));
}

#[test]
fn header_matcher_needs_one_condition() {
    let src = BASE.replace(
        "{ prefix: / }",
        "{ prefix: /, headers: [{ name: x-a, exact: b, prefix: c }] }",
    );
    assert_eq!(
        one_error(&src),
        "test.yaml:11:45: route_tables[0].virtual_hosts[0].routes[0].match.headers[0]: set exactly one of `exact`, `prefix`, `suffix`, `regex` or `present`"
    );
}

#[test]
fn bad_header_name_in_matcher() {
    let src = BASE.replace(
        "{ prefix: / }",
        "{ prefix: /, headers: [{ name: 'x a', present: true }] }",
    );
    assert!(one_error(&src).ends_with("match.headers[0].name: `x a` is not a valid header name"));
}

#[test]
fn weighted_clusters_checks() {
    let src = BASE.replace(
        "cluster: web",
        "weighted_clusters: [{ cluster: web, weight: 0 }, { cluster: gone, weight: 0 }]",
    );
    let e = errors(&src);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].ends_with("routes[0].weighted_clusters: weights must not all be 0"),
        "{e:#?}"
    );
    assert!(
        e[1].ends_with("routes[0].weighted_clusters[1].cluster: unknown cluster `gone`"),
        "{e:#?}"
    );
}

#[test]
fn redirect_checks() {
    let src = BASE.replace("cluster: web", "redirect: { code: 200, scheme: ftp }");
    let e = errors(&src);
    assert!(
        e[0].ends_with("routes[0].redirect.code: must be 301, 302, 303, 307 or 308"),
        "{e:#?}"
    );
    assert!(
        e[1].ends_with("routes[0].redirect.scheme: must be `http` or `https`"),
        "{e:#?}"
    );
}

#[test]
fn direct_response_status() {
    let src = BASE.replace("cluster: web", "direct_response: { status: 99 }");
    assert!(
        one_error(&src).ends_with("routes[0].direct_response.status: must be between 200 and 599")
    );
}

#[test]
fn prefix_rewrite_needs_prefix_match() {
    let src = BASE.replace("{ prefix: / }", "{ path: /a }").replace(
        "cluster: web",
        "cluster: web\n            rewrite: { prefix: /b }",
    );
    assert!(one_error(&src).ends_with(
        "routes[0].rewrite.prefix: needs the route to match by `prefix` or `path_prefix`"
    ));
}

#[test]
fn header_mutation_checks() {
    let src = BASE.replace(
        "cluster: web",
        "cluster: web\n            request_headers: { set: { host: x }, remove: [connection] }",
    );
    let e = errors(&src);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].ends_with("request_headers.set.host: header `host` cannot be changed by configuration (use `rewrite.host`)"), "{e:#?}");
    assert!(
        e[1].ends_with(
            "request_headers.remove[0]: header `connection` cannot be changed by configuration"
        ),
        "{e:#?}"
    );
}

#[test]
fn domain_checks() {
    let src = BASE.replace("domains: ['*']", "domains: ['a.*.com', '*']");
    assert!(one_error(&src).contains("domains[0]: domain `a.*.com`: a wildcard must be"));
    let src = BASE.replace("domains: ['*']", "domains: ['*', '*']");
    assert!(
        one_error(&src).ends_with(
            "domains[1]: domain `*` is already served by route_tables[0].virtual_hosts[0]"
        )
    );
}

#[test]
fn listener_needs_http_or_tcp() {
    let src = BASE.replace("    http: { route_table: main }\n", "");
    assert_eq!(
        one_error(&src),
        "test.yaml:2:5: listeners[0]: one of `http` or `tcp` is required"
    );
}

#[test]
fn cluster_checks() {
    let src = BASE.replace(
        "endpoints: [127.0.0.1:9001]",
        "endpoints: [{ address: 127.0.0.1:9001, weight: 0 }, 127.0.0.1:9001]",
    );
    let e = errors(&src);
    assert!(
        e[0].ends_with("clusters[0].endpoints[0].weight: must be at least 1"),
        "{e:#?}"
    );
    assert!(
        e[1].ends_with("clusters[0].endpoints[1]: duplicate endpoint 127.0.0.1:9001"),
        "{e:#?}"
    );
    let src = BASE.replace("endpoints: [127.0.0.1:9001]", "endpoints: []");
    assert!(one_error(&src).ends_with("clusters[0].endpoints: must list at least one endpoint"));
}

#[test]
fn http2_limits_checked() {
    let src = BASE.replace(
        "{ route_table: main }",
        "{ route_table: main, http2: { initial_stream_window_size: 100 } }",
    );
    assert!(one_error(&src).ends_with(
        "listeners[0].http.http2.initial_stream_window_size: must be between 65535 bytes and 2GiB - 1 (RFC 9113 §6.9.2)"
    ));
}

#[test]
fn buffer_limits_checked() {
    let src = BASE
        .replace(
            "{ route_table: main }",
            "{ route_table: main, per_connection_buffer_limit_bytes: 4KiB, stream_idle_timeout: 0s }",
        )
        .replace(
            "endpoints: [127.0.0.1:9001]",
            "endpoints: [127.0.0.1:9001]\n    per_connection_buffer_limit_bytes: 32MiB",
        );
    let e = errors(&src);
    assert_eq!(
        e.len(),
        2,
        "a 0s stream idle timeout is valid (disabled): {e:#?}"
    );
    assert!(
        e[0].ends_with(
            "listeners[0].http.per_connection_buffer_limit_bytes: must be between 8KiB and 16MiB"
        ),
        "{e:#?}"
    );
    assert!(
        e[1].ends_with(
            "clusters[0].per_connection_buffer_limit_bytes: must be between 8KiB and 16MiB"
        ),
        "{e:#?}"
    );
}

#[test]
fn all_errors_are_reported() {
    let src = BASE
        .replace("prefix: /", "prefix: x")
        .replace("cluster: web", "cluster: nope")
        .replace("route_table: main", "route_table: nope");
    assert_eq!(errors(&src).len(), 3);
}

#[test]
fn round_trips_through_yaml() {
    let c = parse(BASE, "test.yaml").unwrap();
    let text = serde_yaml_ng::to_string(&c).unwrap();
    assert_eq!(parse(&text, "again.yaml").unwrap(), c);
}

/// Mutated configs (bytes flipped, dropped, duplicated) must give errors, never panic. A cheap,
/// deterministic stand-in for the fuzz target.
#[test]
fn mutated_configs_never_panic() {
    let seeds = [
        BASE,
        include_str!("../../examples/gateway.yaml"),
        include_str!("../../examples/demo.yaml"),
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b" -:[]{}\n*'\"/0123456789abcxyz.&!|>#";
    for seed in seeds {
        for _ in 0..400 {
            let mut bytes = seed.as_bytes().to_vec();
            for _ in 0..(next() % 6 + 1) {
                let i = (next() as usize) % bytes.len().max(1);
                match next() % 3 {
                    0 => bytes[i] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        bytes.remove(i);
                    }
                    _ => {
                        let end = (i + (next() as usize % 40)).min(bytes.len());
                        let chunk = bytes[i..end].to_vec();
                        bytes.splice(i..i, chunk);
                    }
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Err(e) = parse(&text, "fuzz.yaml") {
                assert!(!e.0.is_empty());
                assert!(e.to_string().starts_with("fuzz.yaml"), "{e}");
            }
        }
    }
}

#[test]
fn edge_defaults_are_safe_and_warning_free() {
    let c = parse(BASE, "test.yaml").unwrap();
    let ListenerKind::Http(h) = &c.listeners[0].kind else {
        panic!("an HTTP listener");
    };
    assert!(h.path_normalization.normalize && h.path_normalization.merge_slashes);
    assert_eq!(
        h.path_normalization.escaped_slashes,
        EscapedSlashes::UnescapeAndRedirect
    );
    assert_eq!(h.headers_with_underscores, UnderscoreAction::Drop);
    assert!(h.strip_trailing_host_dot);
    assert_eq!(h.trust, Trust::default());
    assert!(!c.admin.allow_remote);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn edge_settings_errors_are_located() {
    let src = BASE.replace(
        "    http: { route_table: main }\n",
        "    http:\n      route_table: main\n      trust: { trusted_peers: [10.1.2.3/8], internal_headers: ['x bad'] }\n",
    );
    // Both parse-level errors, in one run.
    assert_eq!(
        errors(&src),
        [
            "test.yaml:6:16: listeners[0].http.trust.trusted_peers: `10.1.2.3/8` has host bits set; did you mean `10.0.0.0/8`?",
            "test.yaml:6:64: listeners[0].http.trust.internal_headers[0]: `x bad` is not a header name (or a prefix written `x-corp-*`)",
        ]
    );
    let src = BASE.replace(
        "    http: { route_table: main }\n",
        "    http:\n      route_table: main\n      trust: { internal_headers: ['x bad', host] }\n",
    );
    let e = errors(&src);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("test.yaml:6:")
            && e[0].contains("trust.internal_headers[0]: `x bad` is not a header name"),
        "{e:?}"
    );
    assert!(e[1].contains("`host` frames the request"), "{e:?}");
    let src = BASE.replace(
        "    http: { route_table: main }\n",
        "    http: { route_table: main, path_normalization: { escaped_slashes: decode } }\n",
    );
    let e = one_error(&src);
    assert!(
        e.ends_with("escaped_slashes: unknown value `decode`; expected one of `reject`, `unescape_and_redirect`, `unescape_and_forward`, `keep`"),
        "{e}"
    );
}

#[test]
fn admin_must_stay_on_loopback_unless_allowed() {
    let src = format!("admin: {{ address: 0.0.0.0:7191 }}\n{BASE}");
    let e = one_error(&src);
    assert!(
        e.starts_with("test.yaml:1:")
            && e.contains("admin.address: 0.0.0.0:7191 is not a loopback"),
        "{e}"
    );
    let src = format!("admin: {{ address: '[::]:7191', allow_remote: true }}\n{BASE}");
    let c = parse(&src, "test.yaml").unwrap();
    assert_eq!(c.warnings().len(), 1);
    let src = BASE.replace(
        "    http: { route_table: main }\n",
        "    http:\n      route_table: main\n      headers_with_underscores: allow\n      path_normalization: { normalize: false }\n",
    );
    let w = parse(&src, "test.yaml").unwrap().warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].contains("normalize is off") && w[1].contains("headers_with_underscores"));
}

#[test]
fn path_prefix_is_a_path_specifier() {
    let src = BASE.replace("match: { prefix: / }", "match: { path_prefix: /api }");
    parse(&src, "test.yaml").unwrap();
    let src = BASE.replace("match: { prefix: / }", "match: { path_prefix: api }");
    assert!(one_error(&src).ends_with("match.path_prefix: must start with '/'"));
}

/// BASE plus a TCP listener `pass` (line 6 on) with the given body lines (indented 6), and
/// clusters `a` and `b`.
fn passthrough(tcp: &str) -> String {
    format!("{BASE}  - name: a\n    endpoints: [127.0.0.1:9443]\n  - name: b\n    endpoints: [127.0.0.1:9444]\n")
        .replace(
            "    http: { route_table: main }\n",
            &format!("    http: {{ route_table: main }}\n  - name: pass\n    address: 127.0.0.1:8443\n    tcp:\n{tcp}"),
        )
}

#[test]
fn tls_passthrough_listener_and_defaults() {
    let src = passthrough(
        "      sni:\n        - { server_names: [a.example, '*.a.example'], cluster: a }\n        - { server_names: [B.Example], cluster: b }\n",
    );
    let c = parse(&src, "test.yaml").unwrap();
    let ListenerKind::Tcp(t) = &c.listeners[1].kind else {
        panic!("not tcp")
    };
    assert_eq!(t.cluster, None);
    assert_eq!(t.sni.len(), 2);
    assert_eq!(
        t.tls_inspector_timeout.get(),
        std::time::Duration::from_secs(5)
    );
    assert_eq!(t.clusters().collect::<Vec<_>>(), ["a", "b"]);
    // Round trip keeps the routes and the absent default.
    let text = serde_yaml_ng::to_string(&c).unwrap();
    assert_eq!(parse(&text, "again.yaml").unwrap(), c);
    // A default and a timeout.
    let src = passthrough(
        "      cluster: web\n      tls_inspector_timeout: 300ms\n      sni: [{ server_names: [a.example], cluster: a }]\n",
    );
    let c = parse(&src, "test.yaml").unwrap();
    let ListenerKind::Tcp(t) = &c.listeners[1].kind else {
        panic!("not tcp")
    };
    assert_eq!(t.cluster.as_deref(), Some("web"));
    assert_eq!(
        t.tls_inspector_timeout.get(),
        std::time::Duration::from_millis(300)
    );
}

#[test]
fn tcp_listener_needs_a_cluster_or_sni() {
    let src = passthrough("      idle_timeout: 1m\n");
    assert_eq!(
        one_error(&src),
        "test.yaml:7:5: listeners[1].tcp: `cluster` is required (or `sni` routes, with `cluster` as their optional default)"
    );
}

#[test]
fn sni_route_errors_name_their_field() {
    let src = passthrough(
        "      cluster: nodefault\n      tls_inspector_timeout: 0s\n      sni:\n        - server_names: []\n          cluster: gone\n        - server_names: [a.example, 'A.EXAMPLE', 'a.*.example', '*', 'x y', '*.b.example']\n          cluster: b\n",
    );
    assert_eq!(
        errors(&src),
        [
            "test.yaml:8:16: listeners[1].tcp.cluster: unknown cluster `nodefault`",
            "test.yaml:9:30: listeners[1].tcp.tls_inspector_timeout: must be greater than 0s",
            "test.yaml:11:11: listeners[1].tcp.sni[0].server_names: must list at least one server name",
            "test.yaml:12:20: listeners[1].tcp.sni[0].cluster: unknown cluster `gone`",
            "test.yaml:13:37: listeners[1].tcp.sni[1].server_names[1]: duplicate server name `A.EXAMPLE` (also in listeners[1].tcp.sni[1].server_names[0])",
            "test.yaml:13:50: listeners[1].tcp.sni[1].server_names[2]: server name `a.*.example`: a wildcard must be a leading `*.` (`*.example.com`); connections no name matches go to the listener's `cluster`",
            "test.yaml:13:65: listeners[1].tcp.sni[1].server_names[3]: server name `*`: a wildcard must be a leading `*.` (`*.example.com`); connections no name matches go to the listener's `cluster`",
            "test.yaml:13:70: listeners[1].tcp.sni[1].server_names[4]: server name `x y` is not a host name (letters, digits, `-` and `_` in dot-separated labels)",
        ]
    );
    // Duplicates across routes name the first use.
    let src = passthrough(
        "      sni:\n        - { server_names: ['*.a.example'], cluster: a }\n        - { server_names: ['*.A.example'], cluster: b }\n",
    );
    assert!(
        one_error(&src).ends_with("listeners[1].tcp.sni[1].server_names[0]: duplicate server name `*.A.example` (also in listeners[1].tcp.sni[0].server_names[0])")
    );
}

/// BASE with a listener `tls` block, listener options and a cluster `tls` block.
fn with_tls(listener_tls: &str, http_extra: &str, cluster_tls: &str) -> String {
    format!(
        "\
listeners:
  - name: public
    address: 127.0.0.1:8443
    http: {{ route_table: main{http_extra} }}
    tls: {listener_tls}
route_tables:
  - name: main
    virtual_hosts:
      - name: any
        domains: ['*']
        routes:
          - match: {{ prefix: / }}
            cluster: web
clusters:
  - name: web
    endpoints: [127.0.0.1:9001]
    tls: {cluster_tls}
"
    )
}

#[test]
fn tls_blocks_have_safe_defaults() {
    let c = parse(
        &with_tls(
            "{ certificates: [{ cert: s.crt, key: s.key }] }",
            "",
            "{ sni: web.internal }",
        ),
        "test.yaml",
    )
    .unwrap();
    let t = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(t.alpn, ["h2", "http/1.1"]);
    assert_eq!(t.min_version, TlsVersion::Tls12);
    assert_eq!(t.client_certificate, ClientCertificate::None);
    assert_eq!(t.forward_client_cert, ForwardClientCert::Sanitize);
    assert_eq!(t.handshake_timeout, Duration::from_secs(10));
    let u = c.clusters[0].tls.as_ref().unwrap();
    assert_eq!((u.ca.as_ref(), u.cert.as_ref()), (None, None));
    // Round trip.
    let again = parse(&serde_yaml_ng::to_string(&c).unwrap(), "rt.yaml").unwrap();
    assert_eq!(again, c);
}

#[test]
fn tls_errors_name_their_field_and_line() {
    let src = with_tls(
        "{ certificates: [{ cert: s.crt, key: s.key, server_names: ['a.*.example', api.example, API.example] }], client_certificate: required, alpn: [h3], handshake_timeout: 0s }",
        ", authorization: { allow: ['spiffe://corp/*'], deny: ['corp/x', 'spiffe://a*b'] }",
        "{ cert: c.crt, verify_subject_alt_names: [''] }",
    );
    assert_eq!(
        errors(&src),
        [
            "test.yaml:4:84: listeners[0].http.authorization.deny[0]: `corp/x` is not a SPIFFE ID (`spiffe://TRUST_DOMAIN/PATH`, or a prefix ending in `*`)",
            "test.yaml:4:94: listeners[0].http.authorization.deny[1]: `spiffe://a*b` is not a SPIFFE ID (`spiffe://TRUST_DOMAIN/PATH`, or a prefix ending in `*`)",
            "test.yaml:5:5: listeners[0].tls.client_ca: is required to verify client certificates (or `client_ca_secret`)",
            "test.yaml:5:69: listeners[0].tls.certificates[0].server_names[0]: `a.*.example` is not a server name (`api.example.com` or `*.example.com`)",
            "test.yaml:5:97: listeners[0].tls.certificates[0].server_names[2]: `API.example` is served by an earlier certificate",
            "test.yaml:5:151: listeners[0].tls.alpn[0]: `h3` is not served here (use `h2` or `http/1.1`)",
            "test.yaml:5:175: listeners[0].tls.handshake_timeout: must be greater than 0s",
            "test.yaml:17:5: clusters[0].tls.key: is required with `cert`",
            "test.yaml:17:52: clusters[0].tls.verify_subject_alt_names[0]: must be a URI (`spiffe://…`) or a DNS name",
        ]
    );
}

#[test]
fn tls_rules_between_blocks() {
    // Authorization needs client certificates; static IP endpoints need a server name.
    let src = with_tls(
        "{ certificates: [{ cert: s.crt, key: s.key }] }",
        ", authorization: { allow: ['spiffe://corp/*'] }",
        "{ ca: ca.pem }",
    );
    let e = errors(&src);
    assert!(
        e.iter()
            .any(|m| m.contains("listeners[0].http.authorization: needs client certificates")),
        "{e:#?}"
    );
    assert!(
        e.iter().any(|m| m.contains("clusters[0].tls.sni: is required: the endpoints are IP addresses")),
        "{e:#?}"
    );
    // TLS termination belongs to HTTP listeners.
    let src = BASE.replace(
        "    http: { route_table: main }\n",
        "    tcp: { cluster: web }\n    tls: { certificates: [{ cert: s.crt, key: s.key }] }\n",
    );
    assert!(
        one_error(&src).contains("listeners[0].tls: TLS termination is for `http` listeners"),
        "{src}"
    );
}

#[test]
fn grpc_web_settings_default_off_and_bad_values_are_located() {
    let c = parse(BASE, "test.yaml").unwrap();
    let ListenerKind::Http(h) = &c.listeners[0].kind else {
        panic!("an HTTP listener");
    };
    assert!(!h.grpc_web);
    let on = BASE
        .replace(
            "{ route_table: main }",
            "{ route_table: main, grpc_web: true }",
        )
        .replace(
            "cluster: web\n",
            "cluster: web\n            grpc_web: false\n",
        );
    let c = parse(&on, "test.yaml").unwrap();
    let ListenerKind::Http(h) = &c.listeners[0].kind else {
        panic!("an HTTP listener");
    };
    assert!(h.grpc_web);
    assert_eq!(
        c.route_tables[0].virtual_hosts[0].routes[0].grpc_web,
        Some(false)
    );
    let bad = BASE.replace(
        "cluster: web\n",
        "cluster: web\n            grpc_web: sometimes\n",
    );
    let e = one_error(&bad);
    assert!(
        e.starts_with(
            "test.yaml:13:23: route_tables[0].virtual_hosts[0].routes[0].grpc_web: invalid type"
        ),
        "{e}"
    );
}

#[test]
fn access_log_settings_parse_and_their_errors_are_located() {
    let src = BASE.replace(
        "    http: { route_table: main }\n",
        "    http:\n      route_table: main\n      access_log: { path: /var/log/a.log, format: { template: '%REQ(:METHOD)% %RESPONSE_CODE%' }, min_status: 500, sample: 0.5 }\n",
    );
    let c = parse(&src, "test.yaml").unwrap();
    let ListenerKind::Http(h) = &c.listeners[0].kind else {
        panic!("http listener")
    };
    let a = h.access_log.as_ref().unwrap();
    assert_eq!(a.path, "/var/log/a.log");
    assert_eq!(a.min_status, 500);
    assert_eq!(
        a.format,
        crate::AccessLogFormat::Template("%REQ(:METHOD)% %RESPONSE_CODE%".into())
    );
    // Defaults: stdout, JSON, every request.
    let src = BASE.replace(
        "    http: { route_table: main }\n",
        "    http: { route_table: main, access_log: {} }\n",
    );
    let c = parse(&src, "test.yaml").unwrap();
    let ListenerKind::Http(h) = &c.listeners[0].kind else {
        panic!("http listener")
    };
    assert_eq!(h.access_log, Some(Box::default()));
    // It survives the trip through the dump.
    let yaml = serde_yaml_ng::to_string(&c.listeners[0]).unwrap();
    assert!(yaml.contains("access_log:"), "{yaml}");

    let bad = BASE.replace(
        "    http: { route_table: main }\n",
        "    http:\n      route_table: main\n      access_log: { format: { template: '%NOPE% x' }, sample: 2, min_status: 700 }\n",
    );
    let e = errors(&bad);
    assert_eq!(e.len(), 3, "{e:#?}");
    for (field, why) in [
        (
            "access_log.format.template",
            "unknown command operator `%NOPE%`",
        ),
        ("access_log.sample", "must be between 0 and 1"),
        ("access_log.min_status", "at most 599"),
    ] {
        assert!(
            e.iter().any(|l| l.starts_with("test.yaml:6:")
                && l.contains(&format!("listeners[0].http.{field}: "))
                && l.contains(why)),
            "{field}: {e:#?}"
        );
    }
    let bad = BASE.replace(
        "    http: { route_table: main }\n",
        "    http: { route_table: main, access_log: { format: yaml } }\n",
    );
    let e = one_error(&bad);
    assert!(
        e.contains("unknown format `yaml`: expected `json`, `text` or `{ template:"),
        "{e}"
    );
}

#[test]
fn tcp_listeners_take_an_access_log_without_a_status_filter() {
    let tcp = |log: &str| {
        BASE.replace(
            "    http: { route_table: main }\n",
            &format!("    tcp: {{ cluster: web, access_log: {log} }}\n"),
        )
    };
    let c = parse(&tcp("{ path: stderr, sample: 0.25 }"), "test.yaml").unwrap();
    let ListenerKind::Tcp(t) = &c.listeners[0].kind else {
        panic!("tcp listener")
    };
    let a = t.access_log.as_deref().unwrap();
    assert_eq!((a.path.as_str(), a.sample), ("stderr", 0.25));
    let yaml = serde_yaml_ng::to_string(&c.listeners[0]).unwrap();
    assert!(yaml.contains("access_log:"), "{yaml}");
    // A connection has no status; the other checks are the HTTP log's.
    let e = errors(&tcp("{ min_status: 500, sample: -1 }"));
    assert_eq!(e.len(), 2, "{e:#?}");
    for (field, why) in [
        ("access_log.min_status", "applies to HTTP listeners only"),
        ("access_log.sample", "must be between 0 and 1"),
    ] {
        assert!(
            e.iter().any(|l| l.starts_with("test.yaml:")
                && l.contains(&format!("listeners[0].tcp.{field}: "))
                && l.contains(why)),
            "{field}: {e:#?}"
        );
    }
}

#[test]
fn tracing_settings_parse_with_defaults_and_their_errors_are_located() {
    let src = format!("tracing: {{ collector: 127.0.0.1:4317 }}\n{BASE}");
    let c = parse(&src, "test.yaml").unwrap();
    let t = c.tracing.as_ref().unwrap();
    assert_eq!(t.collector.to_string(), "127.0.0.1:4317");
    assert_eq!((t.sampling, t.service_name.as_str()), (1.0, "sluice"));
    let src = format!(
        "tracing: {{ collector: 127.0.0.1:4317, sampling: 1.5, service_name: '' }}\n{BASE}"
    );
    let e = errors(&src);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e.iter().any(|l| l.starts_with("test.yaml:1:")
            && l.contains("tracing.sampling: must be between 0 and 1")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|l| l.contains("tracing.service_name: must not be empty")),
        "{e:#?}"
    );
    let e = one_error(&format!("tracing: {{ collector: localhost }}\n{BASE}"));
    assert!(
        e.starts_with("test.yaml:1:") && e.contains("tracing.collector"),
        "{e}"
    );
}
