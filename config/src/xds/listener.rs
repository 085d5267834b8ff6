//! Listener ↔ `envoy.config.listener.v3.Listener` (an `HttpConnectionManager` or `TcpProxy`
//! filter chain).

use super::hcm::{fcc, hcm_mapping, hcm_pb};
use super::tls::{downstream_tls_mapping, downstream_tls_pb};
use super::value::{
    any, apply_metadata, dur, finish, metadata, opt_dur, put, remainder, socket_addr, u32v, unany,
    yv,
};
use super::{DecodeError, FieldError, Fr};
use crate::raw::RawListener;
use crate::{Listener, ListenerKind, Resource, TcpListener};
use envoy_types::pb::envoy::config::listener::v3::{
    self as pbl, Filter, FilterChain, FilterChainMatch, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::UInt32Value;
use serde_yaml_ng::{Mapping, Value};

/// Filter names (Envoy's well-known names).
pub(crate) const HCM: &str = "envoy.filters.network.http_connection_manager";
pub(crate) const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
pub(crate) const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
pub(crate) const ROUTER: &str = "envoy.filters.http.router";
pub(crate) const GRPC_WEB: &str = "envoy.filters.http.grpc_web";

pub(super) fn encode(l: &Listener) -> pbl::Listener {
    let mut pb = native(l);
    let full = yv(RawListener::from(l.clone()));
    let native = to_mapping(&pb).map(|(m, _)| m).unwrap_or_default();
    pb.metadata = metadata(&remainder::<RawListener>(&full, native));
    pb
}

fn typed_filter<T: prost::Name + prost::Message>(name: &str, m: &T) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(m))),
    }
}

fn tcp_proxy(name: &str, cluster: &str, t: &TcpListener) -> Filter {
    typed_filter(
        TCP_PROXY,
        &TcpProxy {
            stat_prefix: name.into(),
            idle_timeout: Some(dur(t.idle_timeout)),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
            access_log: t
                .access_log
                .as_deref()
                .map(super::access_log::to_pb)
                .into_iter()
                .collect(),
            ..TcpProxy::default()
        },
    )
}

pub(crate) fn kib(b: crate::ByteSize) -> u32 {
    u32::try_from(b.bytes().div_ceil(1024)).unwrap_or(u32::MAX)
}

pub(crate) fn bytes32(b: crate::ByteSize) -> Option<UInt32Value> {
    u32v(u32::try_from(b.bytes()).unwrap_or(u32::MAX))
}

fn native(l: &Listener) -> pbl::Listener {
    let mut pb = pbl::Listener {
        name: l.name.clone(),
        address: Some(super::value::address(l.address)),
        ..pbl::Listener::default()
    };
    match &l.kind {
        ListenerKind::Http(h) => {
            pb.per_connection_buffer_limit_bytes = bytes32(h.per_connection_buffer_limit_bytes);
            let m = hcm_pb(l, h);
            let hcm = typed_filter(HCM, &m);
            pb.filter_chains = match &l.tls {
                None => vec![FilterChain {
                    filters: vec![hcm],
                    ..FilterChain::default()
                }],
                Some(t) => {
                    // One chain per set of server names, in order of first appearance.
                    let mut groups: Vec<(Vec<String>, Vec<&crate::CertificateFiles>)> = Vec::new();
                    for c in &t.certificates {
                        match groups.iter_mut().find(|(n, _)| *n == c.server_names) {
                            Some((_, certs)) => certs.push(c),
                            None => groups.push((c.server_names.clone(), vec![c])),
                        }
                    }
                    if groups.iter().any(|(names, _)| !names.is_empty()) {
                        pb.listener_filters = vec![tls_inspector()];
                    }
                    groups
                        .into_iter()
                        .map(|(names, certs)| FilterChain {
                            filter_chain_match: (!names.is_empty()).then(|| FilterChainMatch {
                                server_names: names,
                                ..FilterChainMatch::default()
                            }),
                            filters: vec![hcm.clone()],
                            transport_socket: Some(downstream_tls_pb(t, &certs)),
                            transport_socket_connect_timeout: Some(dur(t.handshake_timeout)),
                            ..FilterChain::default()
                        })
                        .collect()
                }
            };
        }
        ListenerKind::Tcp(t) => {
            if t.sni.is_empty() {
                pb.filter_chains = vec![FilterChain {
                    filters: vec![tcp_proxy(
                        &l.name,
                        t.cluster.as_deref().unwrap_or_default(),
                        t,
                    )],
                    ..FilterChain::default()
                }];
            } else {
                pb.listener_filters = vec![tls_inspector()];
                pb.listener_filters_timeout = Some(dur(t.tls_inspector_timeout));
                pb.continue_on_listener_filters_timeout = true;
                pb.filter_chains = t
                    .sni
                    .iter()
                    .map(|r| FilterChain {
                        filter_chain_match: Some(FilterChainMatch {
                            server_names: r.server_names.clone(),
                            ..FilterChainMatch::default()
                        }),
                        filters: vec![tcp_proxy(&l.name, &r.cluster, t)],
                        ..FilterChain::default()
                    })
                    .collect();
                pb.default_filter_chain = t.cluster.as_ref().map(|c| FilterChain {
                    filters: vec![tcp_proxy(&l.name, c, t)],
                    ..FilterChain::default()
                });
            }
        }
    }
    pb
}

fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: TLS_INSPECTOR.into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..ListenerFilter::default()
    }
}

pub(super) fn decode(pb: &pbl::Listener) -> Result<Vec<Resource>, DecodeError> {
    let named = |e: FieldError| e.named(&pb.name);
    let (mut m, table) = to_mapping(pb).map_err(named)?;
    apply_metadata(&mut m, pb.metadata.as_ref());
    let l: Listener = finish(m, "metadata.filter_metadata.sluice").map_err(named)?;
    let mut out = vec![Resource::Listener(l)];
    if let Some((t, path)) = table {
        let t = super::route::finish_table(t, &path).map_err(named)?;
        out.push(Resource::RouteTable(t));
    }
    Ok(out)
}

/// The listener's mapping from Envoy fields, and an inline route table's mapping (with its
/// path) if the HCM has one.
type Decoded = (Mapping, Option<(super::route::TableMapping, String)>);

fn to_mapping(pb: &pbl::Listener) -> Fr<Decoded> {
    if pb.name.is_empty() {
        return Err(FieldError::new("name", "is required"));
    }
    let mut m = Mapping::new();
    put(&mut m, "name", &pb.name);
    put(
        &mut m,
        "address",
        socket_addr(pb.address.as_ref(), "address")?,
    );
    for (bad, what) in [
        (!pb.additional_addresses.is_empty(), "additional_addresses"),
        (pb.filter_chain_matcher.is_some(), "filter_chain_matcher"),
        (
            pb.use_original_dst.as_ref().is_some_and(|b| b.value),
            "use_original_dst",
        ),
        (pb.udp_listener_config.is_some(), "udp_listener_config"),
        (pb.api_listener.is_some(), "api_listener"),
        (pb.fcds_config.is_some(), "fcds_config"),
        (
            pb.bind_to_port.as_ref().is_some_and(|b| !b.value),
            "bind_to_port",
        ),
        // Connection-level access logs: Sluice logs HTTP requests (the HCM's `access_log`);
        // refused rather than dropped, so a NACK says the logs will not be written.
        (!pb.access_log.is_empty(), "access_log"),
    ] {
        if bad {
            return Err(FieldError::new(what, "is not supported"));
        }
    }
    let mut inspector = false;
    for (i, f) in pb.listener_filters.iter().enumerate() {
        if f.name == TLS_INSPECTOR {
            inspector = true;
        } else {
            return Err(FieldError::new(
                format!("listener_filters[{i}]"),
                format!("unsupported listener filter `{}`", f.name),
            ));
        }
    }
    let chains: Vec<(String, &FilterChain)> = pb
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .chain(
            pb.default_filter_chain
                .iter()
                .map(|c| ("default_filter_chain".to_string(), c)),
        )
        .collect();
    let Some(first) = chains.first() else {
        return Err(FieldError::new(
            "filter_chains",
            "needs at least one filter chain",
        ));
    };
    for (p, c) in &chains {
        let fm = c.filter_chain_match.clone().unwrap_or_default();
        if fm
            != (FilterChainMatch {
                server_names: fm.server_names.clone(),
                transport_protocol: fm.transport_protocol.clone(),
                ..FilterChainMatch::default()
            })
            || !(fm.transport_protocol.is_empty() || fm.transport_protocol == "tls")
        {
            return Err(FieldError::new(
                format!("{p}.filter_chain_match"),
                "only `server_names` (and transport_protocol `tls`) are supported",
            ));
        }
        if c.use_proxy_proto.as_ref().is_some_and(|b| b.value) {
            return Err(FieldError::new(
                format!("{p}.use_proxy_proto"),
                "is not supported",
            ));
        }
        match c.filters.as_slice() {
            [_] => {}
            _ => {
                return Err(FieldError::new(
                    format!("{p}.filters"),
                    "exactly one network filter (http_connection_manager or tcp_proxy) is supported",
                ));
            }
        }
    }
    let first_filter = first
        .1
        .filters
        .first()
        .map(|f| f.name.as_str())
        .unwrap_or_default();
    let mut table = None;
    if first_filter == HCM {
        let (p, c) = first;
        let fp = format!("{p}.filters[0]");
        let f = c
            .filters
            .first()
            .ok_or_else(|| FieldError::new(&fp, "is required"))?;
        let (mut h, t) = hcm_mapping(f, &fp)?;
        table = t;
        if let Some(b) = &pb.per_connection_buffer_limit_bytes {
            put(
                &mut h,
                "per_connection_buffer_limit_bytes",
                crate::ByteSize(u64::from(b.value)),
            );
        }
        m.insert("http".into(), Value::Mapping(h));
        // TLS: every chain has the same HCM and TLS settings; the chains' certificates
        // (with their chain's server names) make the listener's.
        let mut tls: Option<Mapping> = None;
        let mut certs = Vec::new();
        for (i, (p, c)) in chains.iter().enumerate() {
            if c.filters.first() != Some(f) {
                return Err(FieldError::new(
                    format!("{p}.filters[0]"),
                    "every filter chain of an HTTP listener must have the same http_connection_manager",
                ));
            }
            let names = c
                .filter_chain_match
                .as_ref()
                .map(|m| m.server_names.clone())
                .unwrap_or_default();
            if !names.is_empty() && !inspector {
                return Err(FieldError::new(
                    format!("{p}.filter_chain_match.server_names"),
                    "needs the `envoy.filters.listener.tls_inspector` listener filter",
                ));
            }
            let Some(ts) = &c.transport_socket else {
                if chains.len() > 1 {
                    return Err(FieldError::new(
                        format!("{p}.transport_socket"),
                        "several filter chains on an HTTP listener are for TLS certificates by server name",
                    ));
                }
                continue;
            };
            let mut x = downstream_tls_mapping(ts, &format!("{p}.transport_socket"))?;
            if let Some(d) = opt_dur(
                c.transport_socket_connect_timeout.as_ref(),
                &format!("{p}.transport_socket_connect_timeout"),
            )? {
                put(&mut x, "handshake_timeout", d);
            }
            if let Some(Value::Sequence(cs)) = x.remove("certificates") {
                for mut cert in cs {
                    if let (Value::Mapping(cm), false) = (&mut cert, names.is_empty()) {
                        put(cm, "server_names", &names);
                    }
                    certs.push(cert);
                }
            }
            match &tls {
                None => tls = Some(x),
                Some(first) if *first == x => {}
                Some(_) => {
                    return Err(FieldError::new(
                        format!("{p}.transport_socket"),
                        format!(
                            "TLS settings other than certificates differ from filter_chains[0]'s (chain {i})"
                        ),
                    ));
                }
            }
        }
        if let Some(mut x) = tls {
            x.insert("certificates".into(), Value::Sequence(certs));
            put(&mut x, "forward_client_cert", fcc(f, &fp)?);
            m.insert("tls".into(), Value::Mapping(x));
        }
    } else {
        let mut t = Mapping::new();
        let mut sni = Vec::new();
        let mut tcp_log = None;
        for (p, c) in &chains {
            if c.transport_socket.is_some() {
                return Err(FieldError::new(
                    format!("{p}.transport_socket"),
                    "TLS termination on TCP listeners is not supported (use an HTTP listener or SNI passthrough)",
                ));
            }
            let fp = format!("{p}.filters[0]");
            let f = c
                .filters
                .first()
                .ok_or_else(|| FieldError::new(&fp, "is required"))?;
            let (cluster, idle, log) = tcp_proxy_fields(f, &fp)?;
            if let Some(idle) = idle {
                put(&mut t, "idle_timeout", idle);
            }
            // One log per listener: every chain's tcp_proxy carries the same one.
            match (&tcp_log, log) {
                (None, log) => tcp_log = Some(log),
                (Some(first), log) if *first == log => {}
                (Some(_), _) => {
                    return Err(FieldError::new(
                        format!("{fp}.typed_config.access_log"),
                        "differs from filter_chains[0]'s (a TCP listener has one access log)",
                    ));
                }
            }
            let names = c
                .filter_chain_match
                .as_ref()
                .map(|m| m.server_names.clone())
                .unwrap_or_default();
            if names.is_empty() {
                if t.contains_key("cluster") {
                    return Err(FieldError::new(
                        p.clone(),
                        "only one filter chain may match every server name",
                    ));
                }
                put(&mut t, "cluster", cluster);
            } else {
                if !inspector {
                    return Err(FieldError::new(
                        format!("{p}.filter_chain_match.server_names"),
                        "needs the `envoy.filters.listener.tls_inspector` listener filter",
                    ));
                }
                let mut r = Mapping::new();
                put(&mut r, "server_names", names);
                put(&mut r, "cluster", cluster);
                sni.push(Value::Mapping(r));
            }
        }
        if let Some(Some(log)) = tcp_log {
            put(&mut t, "access_log", log);
        }
        if !sni.is_empty() {
            t.insert("sni".into(), Value::Sequence(sni));
            if let Some(d) = opt_dur(
                pb.listener_filters_timeout.as_ref(),
                "listener_filters_timeout",
            )? {
                put(&mut t, "tls_inspector_timeout", d);
            }
        }
        m.insert("tcp".into(), Value::Mapping(t));
    }
    Ok((m, table))
}

/// A `tcp_proxy` filter's cluster, idle timeout and access log.
fn tcp_proxy_fields(
    f: &Filter,
    p: &str,
) -> Fr<(String, Option<crate::Duration>, Option<crate::AccessLog>)> {
    if f.name != TCP_PROXY {
        return Err(FieldError::new(
            p,
            format!("unsupported network filter `{}`", f.name),
        ));
    }
    let Some(filter::ConfigType::TypedConfig(a)) = &f.config_type else {
        return Err(FieldError::new(format!("{p}.typed_config"), "is required"));
    };
    let p = format!("{p}.typed_config");
    let t: TcpProxy = unany(a, &p)?;
    for (bad, what) in [
        (t.tunneling_config.is_some(), "tunneling_config"),
        (t.metadata_match.is_some(), "metadata_match"),
        (!t.hash_policy.is_empty(), "hash_policy"),
        (t.on_demand.is_some(), "on_demand"),
        (
            t.max_downstream_connection_duration.is_some(),
            "max_downstream_connection_duration",
        ),
        // Periodic flushes of long connections' lines: Sluice logs a connection when it ends.
        (t.access_log_options.is_some(), "access_log_options"),
    ] {
        if bad {
            return Err(FieldError::new(format!("{p}.{what}"), "is not supported"));
        }
    }
    let cluster = match &t.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => c.clone(),
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(_)) => {
            return Err(FieldError::new(
                format!("{p}.weighted_clusters"),
                "is not supported",
            ));
        }
        None => return Err(FieldError::new(format!("{p}.cluster"), "is required")),
    };
    Ok((
        cluster,
        opt_dur(t.idle_timeout.as_ref(), &format!("{p}.idle_timeout"))?,
        super::access_log::from_pb(&t.access_log, &format!("{p}.access_log"))?,
    ))
}
