//! Route table ↔ `envoy.config.route.v3.RouteConfiguration`.

use super::fault::{FAULT, fault_mapping, fault_pb};
use super::hash::{hash_policy_mapping, hash_policy_pb};
use super::matching::{match_mapping, match_pb, regex};
use super::value::{
    any, apply_metadata, dur, finish, metadata, opt_dur, put, remainder, u32v, unany, yv,
};
use super::{DecodeError, FieldError, Fr};
use crate::raw::{RawRoute, RawVirtualHost};
use crate::{HeaderList, HeaderMutation, Resource, RetryOn, RouteTable};
use envoy_types::pb::envoy::config::core::v3::{
    self as core, HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    self as pbr, redirect_action, route, route_action, weighted_cluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;
use serde_yaml_ng::{Mapping, Value};
use std::collections::HashMap;

pub(super) fn encode(t: &RouteTable) -> pbr::RouteConfiguration {
    let raw: crate::RawRouteTable = t.clone().into();
    pbr::RouteConfiguration {
        name: raw.name.clone(),
        virtual_hosts: raw.virtual_hosts.iter().map(encode_vhost).collect(),
        ..Default::default()
    }
}

fn encode_vhost(v: &RawVirtualHost) -> pbr::VirtualHost {
    let (request_headers_to_add, request_headers_to_remove) = headers_pb(&v.request_headers);
    let (response_headers_to_add, response_headers_to_remove) = headers_pb(&v.response_headers);
    let mut pb = pbr::VirtualHost {
        name: v.name.clone(),
        domains: v.domains.clone(),
        routes: v.routes.iter().map(encode_route).collect(),
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        ..Default::default()
    };
    let full = yv(RawVirtualHost {
        routes: Vec::new(),
        ..v.clone()
    });
    let native = vhost_mapping(&pb, "")
        .map(|(m, _, _)| m)
        .unwrap_or_default();
    pb.metadata = metadata(&remainder::<RawVirtualHost>(&full, native));
    pb
}

fn header_options(list: &HeaderList, action: HeaderAppendAction) -> Vec<HeaderValueOption> {
    list.0
        .iter()
        .map(|(k, v)| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        })
        .collect()
}

fn headers_pb(h: &HeaderMutation) -> (Vec<HeaderValueOption>, Vec<String>) {
    let mut add = header_options(&h.add, HeaderAppendAction::AppendIfExistsOrAdd);
    add.extend(header_options(
        &h.set,
        HeaderAppendAction::OverwriteIfExistsOrAdd,
    ));
    (add, h.remove.clone())
}

fn encode_route(r: &RawRoute) -> pbr::Route {
    let matcher = match_pb(&r.matcher);
    let action = if let Some(rd) = &r.redirect {
        route::Action::Redirect(pbr::RedirectAction {
            host_redirect: rd.host.clone().unwrap_or_default(),
            port_redirect: rd.port.map_or(0, u32::from),
            response_code: match rd.code {
                302 => redirect_action::RedirectResponseCode::Found,
                303 => redirect_action::RedirectResponseCode::SeeOther,
                307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
                308 => redirect_action::RedirectResponseCode::PermanentRedirect,
                _ => redirect_action::RedirectResponseCode::MovedPermanently,
            } as i32,
            strip_query: rd.strip_query,
            scheme_rewrite_specifier: rd
                .scheme
                .clone()
                .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: if let Some(p) = &rd.path {
                Some(redirect_action::PathRewriteSpecifier::PathRedirect(
                    p.clone(),
                ))
            } else {
                rd.prefix_rewrite
                    .clone()
                    .map(redirect_action::PathRewriteSpecifier::PrefixRewrite)
            },
        })
    } else if let Some(d) = &r.direct_response {
        route::Action::DirectResponse(pbr::DirectResponseAction {
            status: u32::from(d.status),
            body: d.body.as_ref().map(|b| core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(b.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
    } else {
        let cluster_specifier = if let Some(w) = &r.weighted_clusters {
            Some(route_action::ClusterSpecifier::WeightedClusters(
                pbr::WeightedCluster {
                    clusters: w
                        .iter()
                        .map(|c| weighted_cluster::ClusterWeight {
                            name: c.cluster.clone(),
                            weight: u32v(c.weight),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
            ))
        } else {
            r.cluster
                .clone()
                .map(route_action::ClusterSpecifier::Cluster)
        };
        let rw = r.rewrite.clone().unwrap_or_default();
        route::Action::Route(pbr::RouteAction {
            cluster_specifier,
            timeout: r.timeout.map(dur),
            prefix_rewrite: rw.prefix.unwrap_or_default(),
            regex_rewrite: rw.regex.map(|x| RegexMatchAndSubstitute {
                pattern: Some(regex(&x.pattern)),
                substitution: x.substitution,
            }),
            host_rewrite_specifier: rw
                .host
                .map(route_action::HostRewriteSpecifier::HostRewriteLiteral),
            hash_policy: r.hash_policy.iter().map(hash_policy_pb).collect(),
            retry_policy: r.retry_policy.as_ref().map(|p| pbr::RetryPolicy {
                retry_on: p
                    .retry_on
                    .iter()
                    .filter_map(|o| yv(o).as_str().map(str::to_string))
                    .collect::<Vec<_>>()
                    .join(","),
                num_retries: u32v(p.num_retries),
                per_try_timeout: p.per_try_timeout.map(dur),
                retriable_status_codes: p
                    .retriable_status_codes
                    .iter()
                    .map(|c| u32::from(*c))
                    .collect(),
                retry_back_off: Some(pbr::retry_policy::RetryBackOff {
                    base_interval: Some(dur(p.back_off.base_interval)),
                    max_interval: Some(dur(p.back_off.max_interval)),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let (request_headers_to_add, request_headers_to_remove) = headers_pb(&r.request_headers);
    let (response_headers_to_add, response_headers_to_remove) = headers_pb(&r.response_headers);
    let mut pb = pbr::Route {
        name: r.name.clone().unwrap_or_default(),
        r#match: Some(matcher),
        action: Some(action),
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        typed_per_filter_config: {
            let mut c = HashMap::new();
            if let Some(f) = &r.fault {
                c.insert(FAULT.to_string(), any(&fault_pb(f)));
            }
            if !r.authorization.is_empty() {
                c.insert(
                    super::authz::ROUTE_RBAC.to_string(),
                    any(&super::authz::per_route(&r.authorization)),
                );
            }
            c
        },
        ..Default::default()
    };
    let native = route_mapping(&pb, "").unwrap_or_default();
    pb.metadata = metadata(&remainder::<RawRoute>(&yv(r), native));
    pb
}

pub(super) fn decode(pb: &pbr::RouteConfiguration) -> Result<Resource, DecodeError> {
    let named = |e: FieldError| e.named(&pb.name);
    let t = finish_table(table_mapping(pb).map_err(named)?, "").map_err(named)?;
    Ok(Resource::RouteTable(t))
}

/// A route table's YAML mapping, and the header changes of its virtual hosts and routes as
/// decoded: a YAML mapping cannot hold a header name twice (`add: { x-a: "1", x-a: "2" }` is
/// two values in the model), so [`finish_table`] puts the repeats back.
#[derive(Debug)]
pub(crate) struct TableMapping {
    mapping: Mapping,
    headers: Vec<VhostHeaders>,
}

/// Request and response header changes.
type Headers = (HeaderMutation, HeaderMutation);

/// A virtual host's header changes and each of its routes'.
type VhostHeaders = (Headers, Vec<Headers>);

/// The route table of a [`TableMapping`]; `path` names where it came from in errors.
pub(crate) fn finish_table(t: TableMapping, path: &str) -> Fr<RouteTable> {
    let mut table: RouteTable = finish(t.mapping, path)?;
    for (v, (vh, routes)) in table.virtual_hosts.iter_mut().zip(t.headers) {
        restore(&mut v.request_headers, &mut v.response_headers, vh);
        for (r, rh) in v.routes.iter_mut().zip(routes) {
            restore(&mut r.request_headers, &mut r.response_headers, rh);
        }
    }
    Ok(table)
}

/// Puts back the decoded header changes where the mapping collapsed their repeated names (a
/// change the Sluice metadata replaced is left alone).
fn restore(request: &mut HeaderMutation, response: &mut HeaderMutation, decoded: Headers) {
    let collapsed =
        |h: &HeaderMutation| serde_yaml_ng::from_value::<HeaderMutation>(yv(h)).unwrap_or_default();
    for (current, decoded) in [(request, decoded.0), (response, decoded.1)] {
        if *current == collapsed(&decoded) {
            *current = decoded;
        }
    }
}

/// The model's YAML mapping of a route table (Sluice metadata applied at every level).
pub(crate) fn table_mapping(pb: &pbr::RouteConfiguration) -> Fr<TableMapping> {
    if pb.name.is_empty() {
        return Err(FieldError::new("name", "is required"));
    }
    if pb.vhds.is_some() {
        return Err(FieldError::new(
            "vhds",
            "on-demand virtual hosts are not supported",
        ));
    }
    if !pb.request_headers_to_add.is_empty()
        || !pb.response_headers_to_add.is_empty()
        || !pb.request_headers_to_remove.is_empty()
        || !pb.response_headers_to_remove.is_empty()
    {
        return Err(FieldError::new(
            "request_headers_to_add",
            "route-table-wide header changes are not supported (set them per virtual host)",
        ));
    }
    let mut m = Mapping::new();
    put(&mut m, "name", &pb.name);
    let mut vhosts = Vec::new();
    let mut headers = Vec::new();
    for (i, v) in pb.virtual_hosts.iter().enumerate() {
        let p = format!("virtual_hosts[{i}]");
        let (mut vm, routes, h) = vhost_mapping(v, &p)?;
        apply_metadata(&mut vm, v.metadata.as_ref());
        vm.insert("routes".into(), Value::Sequence(routes));
        vhosts.push(Value::Mapping(vm));
        headers.push(h);
    }
    m.insert("virtual_hosts".into(), Value::Sequence(vhosts));
    apply_metadata(&mut m, pb.metadata.as_ref());
    Ok(TableMapping {
        mapping: m,
        headers,
    })
}

/// A virtual host's own mapping (without `routes`), its routes' mappings, and its and its
/// routes' header changes.
fn vhost_mapping(v: &pbr::VirtualHost, p: &str) -> Fr<(Mapping, Vec<Value>, VhostHeaders)> {
    let f = |x: &str| {
        if p.is_empty() {
            x.to_string()
        } else {
            format!("{p}.{x}")
        }
    };
    for (bad, what) in [
        (v.require_tls != 0, "require_tls"),
        (!v.rate_limits.is_empty(), "rate_limits"),
        (v.cors.is_some(), "cors"),
        (v.retry_policy.is_some(), "retry_policy"),
        (v.hedge_policy.is_some(), "hedge_policy"),
        (v.matcher.is_some(), "matcher"),
        (
            !v.request_mirror_policies.is_empty(),
            "request_mirror_policies",
        ),
    ] {
        if bad {
            return Err(FieldError::new(f(what), "is not supported"));
        }
    }
    if let Some(k) = v.typed_per_filter_config.keys().next() {
        return Err(FieldError::new(
            f(&format!("typed_per_filter_config[\"{k}\"]")),
            "per-virtual-host filter config is not supported",
        ));
    }
    let request = headers_mapping(
        &v.request_headers_to_add,
        &v.request_headers_to_remove,
        &f("request_headers_to_add"),
    )?;
    let response = headers_mapping(
        &v.response_headers_to_add,
        &v.response_headers_to_remove,
        &f("response_headers_to_add"),
    )?;
    let mut m = Mapping::new();
    put(&mut m, "name", &v.name);
    put(&mut m, "domains", &v.domains);
    put(&mut m, "request_headers", &request);
    put(&mut m, "response_headers", &response);
    put(&mut m, "routes", Vec::<Value>::new());
    let mut routes = Vec::new();
    let mut route_headers = Vec::new();
    for (j, r) in v.routes.iter().enumerate() {
        let rp = f(&format!("routes[{j}]"));
        let mut rm = route_mapping(r, &rp)?;
        apply_metadata(&mut rm, r.metadata.as_ref());
        routes.push(Value::Mapping(rm));
        route_headers.push((
            headers_mapping(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                &format!("{rp}.request_headers_to_add"),
            )?,
            headers_mapping(
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
                &format!("{rp}.response_headers_to_add"),
            )?,
        ));
    }
    Ok((m, routes, ((request, response), route_headers)))
}

fn headers_mapping(add: &[HeaderValueOption], remove: &[String], p: &str) -> Fr<HeaderMutation> {
    let mut h = HeaderMutation {
        remove: remove.to_vec(),
        ..HeaderMutation::default()
    };
    for (i, o) in add.iter().enumerate() {
        let Some(hv) = &o.header else {
            return Err(FieldError::new(format!("{p}[{i}].header"), "is required"));
        };
        if !hv.raw_value.is_empty() {
            return Err(FieldError::new(
                format!("{p}[{i}].header.raw_value"),
                "use `value`",
            ));
        }
        // The deprecated `append` (default true) wins when set, as in Envoy.
        let append = match &o.append {
            Some(a) => a.value,
            None => o.append_action == HeaderAppendAction::AppendIfExistsOrAdd as i32,
        };
        if o.append.is_none()
            && o.append_action != HeaderAppendAction::AppendIfExistsOrAdd as i32
            && o.append_action != HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        {
            return Err(FieldError::new(
                format!("{p}[{i}].append_action"),
                "only APPEND_IF_EXISTS_OR_ADD and OVERWRITE_IF_EXISTS_OR_ADD are supported",
            ));
        }
        let entry = (hv.key.clone(), hv.value.clone());
        if append {
            h.add.0.push(entry);
        } else {
            h.set.0.push(entry);
        }
    }
    Ok(h)
}

/// A route's mapping from Envoy fields (`p` is its path).
fn route_mapping(r: &pbr::Route, p: &str) -> Fr<Mapping> {
    let f = |x: &str| {
        if p.is_empty() {
            x.to_string()
        } else {
            format!("{p}.{x}")
        }
    };
    let mut m = Mapping::new();
    if !r.name.is_empty() {
        put(&mut m, "name", &r.name);
    }
    let mut per_filter: Vec<_> = r.typed_per_filter_config.iter().collect();
    per_filter.sort_by_key(|(k, _)| *k);
    for (k, a) in per_filter {
        let fp = f(&format!("typed_per_filter_config[\"{k}\"]"));
        if k == FAULT {
            m.insert("fault".into(), Value::Mapping(fault_mapping(a, &fp)?));
        } else if k == super::authz::ROUTE_RBAC {
            let r: envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute =
                unany(a, &fp)?;
            put(
                &mut m,
                "authorization",
                super::authz::from_per_route(&r, &fp)?,
            );
        } else if k == super::authz::RBAC {
            return Err(FieldError::new(
                fp,
                "a per-route RBAC config replaces the listener's policy in Envoy; Sluice applies \
                 both (use the `sluice.filters.http.route_rbac` filter's per-route config)",
            ));
        } else {
            return Err(FieldError::new(fp, "unsupported per-route filter config"));
        }
    }
    let mm = match_mapping(r.r#match.as_ref(), &f("match"))?;
    m.insert("match".into(), Value::Mapping(mm));
    // Action.
    match &r.action {
        Some(route::Action::Route(a)) => route_action(a, &f("route"), &mut m)?,
        Some(route::Action::Redirect(rd)) => {
            let mut x = Mapping::new();
            if !rd.host_redirect.is_empty() {
                put(&mut x, "host", &rd.host_redirect);
            }
            if rd.port_redirect != 0 {
                let port = u16::try_from(rd.port_redirect)
                    .map_err(|_| FieldError::new(f("redirect.port_redirect"), "is not a port"))?;
                put(&mut x, "port", port);
            }
            use redirect_action::RedirectResponseCode as C;
            let code = match C::try_from(rd.response_code) {
                Ok(C::MovedPermanently) => 301,
                Ok(C::Found) => 302,
                Ok(C::SeeOther) => 303,
                Ok(C::TemporaryRedirect) => 307,
                Ok(C::PermanentRedirect) => 308,
                Err(_) => return Err(FieldError::new(f("redirect.response_code"), "unknown code")),
            };
            put(&mut x, "code", code);
            if rd.strip_query {
                put(&mut x, "strip_query", true);
            }
            match &rd.scheme_rewrite_specifier {
                Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) => {
                    put(&mut x, "scheme", s)
                }
                Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true)) => {
                    put(&mut x, "scheme", "https")
                }
                _ => {}
            }
            match &rd.path_rewrite_specifier {
                Some(redirect_action::PathRewriteSpecifier::PathRedirect(s)) => {
                    put(&mut x, "path", s)
                }
                Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(s)) => {
                    put(&mut x, "prefix_rewrite", s)
                }
                Some(_) => {
                    return Err(FieldError::new(
                        f("redirect.regex_rewrite"),
                        "only path_redirect and prefix_rewrite are supported",
                    ));
                }
                None => {}
            }
            m.insert("redirect".into(), Value::Mapping(x));
        }
        Some(route::Action::DirectResponse(d)) => {
            let mut x = Mapping::new();
            put(&mut x, "status", d.status);
            match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => {}
                Some(core::data_source::Specifier::InlineString(s)) => put(&mut x, "body", s),
                Some(core::data_source::Specifier::InlineBytes(b)) => {
                    match std::str::from_utf8(b) {
                        Ok(s) => put(&mut x, "body", s),
                        Err(_) => {
                            return Err(FieldError::new(
                                f("direct_response.body.inline_bytes"),
                                "must be UTF-8",
                            ));
                        }
                    }
                }
                Some(_) => {
                    return Err(FieldError::new(
                        f("direct_response.body"),
                        "only inline bodies are supported",
                    ));
                }
            }
            m.insert("direct_response".into(), Value::Mapping(x));
        }
        Some(_) => {
            return Err(FieldError::new(
                f("action"),
                "only route, redirect and direct_response actions are supported",
            ));
        }
        None => return Err(FieldError::new(f("route"), "an action is required")),
    }
    put(
        &mut m,
        "request_headers",
        headers_mapping(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &f("request_headers_to_add"),
        )?,
    );
    put(
        &mut m,
        "response_headers",
        headers_mapping(
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
            &f("response_headers_to_add"),
        )?,
    );
    Ok(m)
}

fn route_action(a: &pbr::RouteAction, p: &str, m: &mut Mapping) -> Fr<()> {
    for (bad, what) in [
        (
            !a.request_mirror_policies.is_empty(),
            "request_mirror_policies",
        ),
        (!a.rate_limits.is_empty(), "rate_limits"),
        (a.cors.is_some(), "cors"),
        (a.hedge_policy.is_some(), "hedge_policy"),
        (a.path_rewrite_policy.is_some(), "path_rewrite_policy"),
        (!a.path_rewrite.is_empty(), "path_rewrite"),
        (a.metadata_match.is_some(), "metadata_match"),
        (
            a.internal_redirect_policy.is_some(),
            "internal_redirect_policy",
        ),
        (
            a.retry_policy_typed_config.is_some(),
            "retry_policy_typed_config",
        ),
        // The listener's stream idle timeout applies to every route in Sluice.
        (a.idle_timeout.is_some(), "idle_timeout"),
        (a.max_stream_duration.is_some(), "max_stream_duration"),
    ] {
        if bad {
            return Err(FieldError::new(format!("{p}.{what}"), "is not supported"));
        }
    }
    match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => put(m, "cluster", c),
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            let mut out = Vec::new();
            for (i, c) in w.clusters.iter().enumerate() {
                let cp = format!("{p}.weighted_clusters.clusters[{i}]");
                if !c.cluster_header.is_empty()
                    || c.metadata_match.is_some()
                    || !c.typed_per_filter_config.is_empty()
                    || !c.request_headers_to_add.is_empty()
                    || !c.response_headers_to_add.is_empty()
                    || !c.request_headers_to_remove.is_empty()
                    || !c.response_headers_to_remove.is_empty()
                    || c.host_rewrite_specifier.is_some()
                {
                    return Err(FieldError::new(
                        cp,
                        "only `name` and `weight` are supported",
                    ));
                }
                let mut x = Mapping::new();
                put(&mut x, "cluster", &c.name);
                put(&mut x, "weight", c.weight.as_ref().map_or(0, |w| w.value));
                out.push(Value::Mapping(x));
            }
            m.insert("weighted_clusters".into(), Value::Sequence(out));
        }
        Some(_) => {
            return Err(FieldError::new(
                format!("{p}.cluster_header"),
                "only `cluster` and `weighted_clusters` are supported",
            ));
        }
        None => return Err(FieldError::new(format!("{p}.cluster"), "is required")),
    }
    if let Some(t) = opt_dur(a.timeout.as_ref(), &format!("{p}.timeout"))? {
        put(m, "timeout", t);
    }
    let mut rw = Mapping::new();
    if !a.prefix_rewrite.is_empty() {
        put(&mut rw, "prefix", &a.prefix_rewrite);
    }
    if let Some(r) = &a.regex_rewrite {
        let mut x = Mapping::new();
        put(
            &mut x,
            "pattern",
            r.pattern
                .as_ref()
                .map(|p| p.regex.clone())
                .unwrap_or_default(),
        );
        put(&mut x, "substitution", &r.substitution);
        rw.insert("regex".into(), Value::Mapping(x));
    }
    match &a.host_rewrite_specifier {
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => put(&mut rw, "host", h),
        Some(_) => {
            return Err(FieldError::new(
                format!("{p}.host_rewrite_literal"),
                "only a literal host rewrite is supported",
            ));
        }
        None => {}
    }
    if !rw.is_empty() {
        m.insert("rewrite".into(), Value::Mapping(rw));
    }
    if !a.hash_policy.is_empty() {
        let mut out = Vec::new();
        for (i, h) in a.hash_policy.iter().enumerate() {
            out.push(Value::Mapping(hash_policy_mapping(
                h,
                &format!("{p}.hash_policy[{i}]"),
            )?));
        }
        m.insert("hash_policy".into(), Value::Sequence(out));
    }
    if let Some(rp) = &a.retry_policy {
        let pp = format!("{p}.retry_policy");
        let mut x = Mapping::new();
        let mut on = Vec::new();
        for c in rp
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            let parsed: RetryOn =
                serde_yaml_ng::from_value(Value::String(c.to_string())).map_err(|_| {
                    FieldError::new(
                        format!("{pp}.retry_on"),
                        format!("unsupported condition `{c}`"),
                    )
                })?;
            on.push(parsed);
        }
        put(&mut x, "retry_on", on);
        // Envoy's default is one retry.
        put(
            &mut x,
            "num_retries",
            rp.num_retries.as_ref().map_or(1, |n| n.value),
        );
        if let Some(t) = opt_dur(
            rp.per_try_timeout.as_ref(),
            &format!("{pp}.per_try_timeout"),
        )? {
            put(&mut x, "per_try_timeout", t);
        }
        if !rp.retriable_status_codes.is_empty() {
            let mut codes = Vec::new();
            for c in &rp.retriable_status_codes {
                codes.push(u16::try_from(*c).map_err(|_| {
                    FieldError::new(
                        format!("{pp}.retriable_status_codes"),
                        format!("{c} is not a status"),
                    )
                })?);
            }
            put(&mut x, "retriable_status_codes", codes);
        }
        if let Some(b) = &rp.retry_back_off {
            let mut bm = Mapping::new();
            if let Some(d) = opt_dur(
                b.base_interval.as_ref(),
                &format!("{pp}.retry_back_off.base_interval"),
            )? {
                put(&mut bm, "base_interval", d);
            }
            if let Some(d) = opt_dur(
                b.max_interval.as_ref(),
                &format!("{pp}.retry_back_off.max_interval"),
            )? {
                put(&mut bm, "max_interval", d);
            }
            x.insert("back_off".into(), Value::Mapping(bm));
        }
        for (bad, what) in [
            (rp.retry_priority.is_some(), "retry_priority"),
            (!rp.retry_host_predicate.is_empty(), "retry_host_predicate"),
            (!rp.retriable_headers.is_empty(), "retriable_headers"),
            (
                !rp.retriable_request_headers.is_empty(),
                "retriable_request_headers",
            ),
            (
                rp.rate_limited_retry_back_off.is_some(),
                "rate_limited_retry_back_off",
            ),
        ] {
            if bad {
                return Err(FieldError::new(format!("{pp}.{what}"), "is not supported"));
            }
        }
        m.insert("retry_policy".into(), Value::Mapping(x));
    }
    Ok(())
}
