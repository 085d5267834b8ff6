//! An HTTP listener's settings ↔ the `HttpConnectionManager` network filter (and its HTTP
//! filters).

use super::authz::{self, RBAC};
use super::fault::FAULT;
use super::listener::{GRPC_WEB, HCM, ROUTER, bytes32, kib};
use super::value::{any, dur, opt_dur, put, u32v, unany};
use super::{FieldError, Fr};
use crate::{EscapedSlashes, ForwardClientCert, HttpListener, Listener, UnderscoreAction};
use envoy_types::pb::envoy::config::core::v3::{
    self as core, AggregatedConfigSource, ConfigSource, config_source,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::grpc_web::v3::GrpcWeb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    self as hcm, HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::BoolValue;
use prost::Name;
use serde_yaml_ng::{Mapping, Value};

/// The `HttpConnectionManager` of an HTTP listener: RDS for its route table, its settings and
/// the HTTP filters [rbac (when the listener has `authorization`), route rbac, grpc_web (when on),
/// fault, router].
pub(crate) fn hcm_pb(l: &Listener, h: &HttpListener) -> HttpConnectionManager {
    let mut filters = Vec::new();
    if !h.authorization.is_empty() {
        filters.push(http_filter(RBAC, &authz::filter(&h.authorization)));
    }
    // Carries routes' authorization (per-route config); enforces nothing itself.
    filters.push(http_filter(authz::ROUTE_RBAC, &RbacFilter::default()));
    if h.grpc_web {
        filters.push(http_filter(GRPC_WEB, &GrpcWeb::default()));
    }
    // An empty fault filter injects nothing; routes' `fault` configure it per route.
    filters.push(http_filter(FAULT, &HttpFault::default()));
    filters.push(http_filter(ROUTER, &Router::default()));
    let p = &h.path_normalization;
    HttpConnectionManager {
        stat_prefix: l.name.clone(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: ads(),
            route_config_name: h.route_table.clone(),
        })),
        http_filters: filters,
        access_log: h
            .access_log
            .iter()
            .map(|a| super::access_log::to_pb(a))
            .collect(),
        max_request_headers_kb: u32v(kib(h.max_request_header_bytes)),
        request_headers_timeout: Some(dur(h.request_header_timeout)),
        stream_idle_timeout: Some(dur(h.stream_idle_timeout)),
        drain_timeout: Some(dur(h.graceful_close_timeout)),
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: Some(dur(h.idle_timeout)),
            max_headers_count: u32v(h.max_request_headers),
            headers_with_underscores_action: match h.headers_with_underscores {
                UnderscoreAction::Allow => {
                    core::http_protocol_options::HeadersWithUnderscoresAction::Allow
                }
                UnderscoreAction::Drop => {
                    core::http_protocol_options::HeadersWithUnderscoresAction::DropHeader
                }
                UnderscoreAction::Reject => {
                    core::http_protocol_options::HeadersWithUnderscoresAction::RejectRequest
                }
            } as i32,
            ..Default::default()
        }),
        http2_protocol_options: Some(core::Http2ProtocolOptions {
            max_concurrent_streams: u32v(h.http2.max_concurrent_streams),
            initial_stream_window_size: bytes32(h.http2.initial_stream_window_size),
            initial_connection_window_size: bytes32(h.http2.initial_connection_window_size),
            ..Default::default()
        }),
        generate_request_id: Some(BoolValue {
            value: h.generate_request_id,
        }),
        normalize_path: Some(BoolValue { value: p.normalize }),
        merge_slashes: p.merge_slashes,
        path_with_escaped_slashes_action: match p.escaped_slashes {
            EscapedSlashes::Reject => {
                hcm::http_connection_manager::PathWithEscapedSlashesAction::RejectRequest
            }
            EscapedSlashes::UnescapeAndRedirect => {
                hcm::http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndRedirect
            }
            EscapedSlashes::UnescapeAndForward => {
                hcm::http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndForward
            }
            EscapedSlashes::Keep => {
                hcm::http_connection_manager::PathWithEscapedSlashesAction::KeepUnchanged
            }
        } as i32,
        use_remote_address: Some(BoolValue { value: true }),
        xff_num_trusted_hops: h.trust.trusted_hops,
        strip_trailing_host_dot: h.strip_trailing_host_dot,
        forward_client_cert_details: l.tls.as_ref().map_or(0, |t| match t.forward_client_cert {
            ForwardClientCert::Sanitize => {
                http_connection_manager::ForwardClientCertDetails::Sanitize
            }
            ForwardClientCert::ForwardOnly => {
                http_connection_manager::ForwardClientCertDetails::ForwardOnly
            }
            ForwardClientCert::AppendForward => {
                http_connection_manager::ForwardClientCertDetails::AppendForward
            }
            ForwardClientCert::SanitizeSet => {
                http_connection_manager::ForwardClientCertDetails::SanitizeSet
            }
            ForwardClientCert::AlwaysForwardOnly => {
                http_connection_manager::ForwardClientCertDetails::AlwaysForwardOnly
            }
        } as i32),
        ..HttpConnectionManager::default()
    }
}

pub(crate) fn hcm_config(f: &Filter, p: &str) -> Fr<HttpConnectionManager> {
    if f.name != HCM {
        return Err(FieldError::new(
            p,
            format!("unsupported network filter `{}`", f.name),
        ));
    }
    let Some(filter::ConfigType::TypedConfig(a)) = &f.config_type else {
        return Err(FieldError::new(format!("{p}.typed_config"), "is required"));
    };
    unany(a, &format!("{p}.typed_config"))
}

pub(crate) fn fcc(f: &Filter, p: &str) -> Fr<ForwardClientCert> {
    use http_connection_manager::ForwardClientCertDetails as D;
    let h = hcm_config(f, p)?;
    Ok(match D::try_from(h.forward_client_cert_details) {
        Ok(D::Sanitize) | Err(_) => ForwardClientCert::Sanitize,
        Ok(D::ForwardOnly) => ForwardClientCert::ForwardOnly,
        Ok(D::AppendForward) => ForwardClientCert::AppendForward,
        Ok(D::SanitizeSet) => ForwardClientCert::SanitizeSet,
        Ok(D::AlwaysForwardOnly) => ForwardClientCert::AlwaysForwardOnly,
    })
}

pub(crate) fn typed_config(hf: &HttpFilter) -> Option<&envoy_types::pb::google::protobuf::Any> {
    match &hf.config_type {
        Some(http_filter::ConfigType::TypedConfig(a)) => Some(a),
        _ => None,
    }
}

/// What an HTTP filter is: by its typed config's type when it has one, else by its name.
pub(crate) fn filter_kind(hf: &HttpFilter) -> &str {
    match typed_config(hf).map(|a| a.type_url.as_str()) {
        Some(t) if t == Router::type_url() => ROUTER,
        Some(t) if t == GrpcWeb::type_url() => GRPC_WEB,
        Some(t) if t == HttpFault::type_url() => FAULT,
        Some(t) if t == RbacFilter::type_url() => RBAC,
        Some(_) => "",
        None => hf.name.as_str(),
    }
}

pub(crate) fn hcm_mapping(
    f: &Filter,
    p: &str,
) -> Fr<(Mapping, Option<(super::route::TableMapping, String)>)> {
    let h = hcm_config(f, p)?;
    let p = format!("{p}.typed_config");
    let mut m = Mapping::new();
    let mut table = None;
    match &h.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(r)) => {
            put(&mut m, "route_table", &r.route_config_name)
        }
        Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
            let rp = format!("{p}.route_config");
            let t = super::route::table_mapping(rc)
                .map_err(|e| FieldError::new(format!("{rp}.{}", e.field), e.message))?;
            put(&mut m, "route_table", &rc.name);
            table = Some((t, rp));
        }
        _ => {
            return Err(FieldError::new(
                format!("{p}.rds"),
                "`rds` or `route_config` is required (scoped routes are not supported)",
            ));
        }
    }
    use http_connection_manager::CodecType;
    if h.codec_type == CodecType::Http3 as i32 {
        return Err(FieldError::new(
            format!("{p}.codec_type"),
            "HTTP/3 is not supported",
        ));
    }
    for (bad, what) in [
        (
            !h.original_ip_detection_extensions.is_empty(),
            "original_ip_detection_extensions",
        ),
        (h.local_reply_config.is_some(), "local_reply_config"),
        (h.request_id_extension.is_some(), "request_id_extension"),
    ] {
        if bad {
            return Err(FieldError::new(format!("{p}.{what}"), "is not supported"));
        }
    }
    // HTTP filters, known by their typed config's type (or, without one, their name): the
    // router last; grpc_web, fault and RBAC mapped; optional unknown ones skipped.
    let mut grpc_web = false;
    let mut authorization = None;
    let n = h.http_filters.len();
    for (i, hf) in h.http_filters.iter().enumerate() {
        let fp = format!("{p}.http_filters[{i}]");
        if hf.disabled {
            continue;
        }
        let typed = typed_config(hf);
        let kind = filter_kind(hf);
        match kind {
            ROUTER if i + 1 == n => {}
            ROUTER => {
                return Err(FieldError::new(
                    fp,
                    "the router must be the last HTTP filter",
                ));
            }
            GRPC_WEB => grpc_web = true,
            FAULT => {
                // Faults are configured per route; a filter-wide fault would hit every route.
                if let Some(a) = typed {
                    let f: HttpFault = unany(a, &format!("{fp}.typed_config"))?;
                    if f != HttpFault::default() {
                        return Err(FieldError::new(
                            format!("{fp}.typed_config"),
                            "listener-wide faults are not supported (configure them per route)",
                        ));
                    }
                }
            }
            RBAC => {
                let r: RbacFilter = match typed {
                    Some(a) => unany(a, &format!("{fp}.typed_config"))?,
                    None => RbacFilter::default(),
                };
                let a = authz::from_filter(&r, &format!("{fp}.typed_config"))?;
                if hf.name == authz::ROUTE_RBAC {
                    if !a.is_empty() {
                        return Err(FieldError::new(
                            format!("{fp}.typed_config.rules"),
                            "the route authorization filter takes no rules of its own",
                        ));
                    }
                } else if authorization.replace(a).is_some() {
                    return Err(FieldError::new(fp, "one RBAC filter per listener"));
                }
            }
            _ if hf.is_optional => {}
            _ => {
                return Err(FieldError::new(
                    fp,
                    format!("unsupported filter \"{}\"", hf.name),
                ));
            }
        }
    }
    if h.http_filters
        .last()
        .is_none_or(|f| f.disabled || filter_kind(f) != ROUTER)
    {
        return Err(FieldError::new(
            format!("{p}.http_filters"),
            "must end with `envoy.filters.http.router`",
        ));
    }
    if let Some(a) = authorization {
        put(&mut m, "authorization", a);
    }
    if let Some(a) = super::access_log::from_pb(&h.access_log, &format!("{p}.access_log"))? {
        put(&mut m, "access_log", a);
    }
    put(&mut m, "grpc_web", grpc_web);
    if let Some(kb) = &h.max_request_headers_kb {
        put(
            &mut m,
            "max_request_header_bytes",
            crate::ByteSize::kib(u64::from(kb.value)),
        );
    }
    for (k, d, f) in [
        (
            "request_header_timeout",
            &h.request_headers_timeout,
            "request_headers_timeout",
        ),
        (
            "stream_idle_timeout",
            &h.stream_idle_timeout,
            "stream_idle_timeout",
        ),
        ("graceful_close_timeout", &h.drain_timeout, "drain_timeout"),
    ] {
        if let Some(d) = opt_dur(d.as_ref(), &format!("{p}.{f}"))? {
            put(&mut m, k, d);
        }
    }
    if let Some(c) = &h.common_http_protocol_options {
        let cp = format!("{p}.common_http_protocol_options");
        if let Some(d) = opt_dur(c.idle_timeout.as_ref(), &format!("{cp}.idle_timeout"))? {
            put(&mut m, "idle_timeout", d);
        }
        if let Some(n) = &c.max_headers_count {
            put(&mut m, "max_request_headers", n.value);
        }
        use core::http_protocol_options::HeadersWithUnderscoresAction as U;
        put(
            &mut m,
            "headers_with_underscores",
            match U::try_from(c.headers_with_underscores_action) {
                Ok(U::Allow) | Err(_) => UnderscoreAction::Allow,
                Ok(U::RejectRequest) => UnderscoreAction::Reject,
                Ok(U::DropHeader) => UnderscoreAction::Drop,
            },
        );
    } else {
        // Envoy's default: headers with underscores are allowed.
        put(&mut m, "headers_with_underscores", UnderscoreAction::Allow);
    }
    if let Some(h2) = &h.http2_protocol_options {
        let mut x = Mapping::new();
        if let Some(v) = &h2.max_concurrent_streams {
            put(&mut x, "max_concurrent_streams", v.value);
        }
        if let Some(v) = &h2.initial_stream_window_size {
            put(
                &mut x,
                "initial_stream_window_size",
                crate::ByteSize(u64::from(v.value)),
            );
        }
        if let Some(v) = &h2.initial_connection_window_size {
            put(
                &mut x,
                "initial_connection_window_size",
                crate::ByteSize(u64::from(v.value)),
            );
        }
        m.insert("http2".into(), Value::Mapping(x));
    }
    put(
        &mut m,
        "generate_request_id",
        h.generate_request_id.as_ref().is_none_or(|b| b.value),
    );
    let mut pn = Mapping::new();
    put(
        &mut pn,
        "normalize",
        h.normalize_path.as_ref().is_some_and(|b| b.value),
    );
    put(&mut pn, "merge_slashes", h.merge_slashes);
    use http_connection_manager::PathWithEscapedSlashesAction as E;
    put(
        &mut pn,
        "escaped_slashes",
        match E::try_from(h.path_with_escaped_slashes_action) {
            Ok(E::ImplementationSpecificDefault | E::KeepUnchanged) | Err(_) => {
                EscapedSlashes::Keep
            }
            Ok(E::RejectRequest) => EscapedSlashes::Reject,
            Ok(E::UnescapeAndRedirect) => EscapedSlashes::UnescapeAndRedirect,
            Ok(E::UnescapeAndForward) => EscapedSlashes::UnescapeAndForward,
        },
    );
    m.insert("path_normalization".into(), Value::Mapping(pn));
    put(&mut m, "strip_trailing_host_dot", h.strip_trailing_host_dot);
    let mut trust = Mapping::new();
    put(&mut trust, "trusted_hops", h.xff_num_trusted_hops);
    m.insert("trust".into(), Value::Mapping(trust));
    Ok((m, table))
}

pub(crate) fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..ConfigSource::default()
    })
}

pub(crate) fn http_filter<T: prost::Name + prost::Message>(name: &str, m: &T) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(m))),
        ..HttpFilter::default()
    }
}
