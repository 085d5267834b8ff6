//! A cluster's active health check ↔ `Cluster.health_checks[0]`.

use super::value::{dur, opt_dur, put, u32v};
use super::{FieldError, Fr};
use envoy_types::pb::envoy::config::core::v3::{self as core, health_check};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use serde_yaml_ng::{Mapping, Value};

pub(crate) fn health_check_pb(h: &crate::HealthCheck) -> core::HealthCheck {
    let checker = if let Some(http) = &h.http {
        health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
            host: http.host.clone().unwrap_or_default(),
            path: http.path.clone(),
            expected_statuses: http
                .expected_statuses
                .iter()
                .map(|r| Int64Range {
                    start: i64::from(r.start),
                    end: i64::from(r.end),
                })
                .collect(),
            ..Default::default()
        })
    } else if let Some(g) = &h.grpc {
        health_check::HealthChecker::GrpcHealthCheck(health_check::GrpcHealthCheck {
            service_name: g.service_name.clone(),
            authority: g.authority.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else {
        health_check::HealthChecker::TcpHealthCheck(health_check::TcpHealthCheck::default())
    };
    core::HealthCheck {
        timeout: Some(dur(h.timeout)),
        interval: Some(dur(h.interval)),
        // Envoy's jitter only adds; Sluice's is ± (the percentage is kept as is).
        interval_jitter_percent: h.interval_jitter_percent,
        unhealthy_threshold: u32v(h.unhealthy_threshold),
        healthy_threshold: u32v(h.healthy_threshold),
        no_traffic_interval: h.no_traffic_interval.map(dur),
        health_checker: Some(checker),
        ..Default::default()
    }
}

pub(crate) fn health_check_mapping(h: &core::HealthCheck) -> Fr<Mapping> {
    let p = "health_checks[0]";
    let mut m = Mapping::new();
    for (k, d) in [("timeout", &h.timeout), ("interval", &h.interval)] {
        match opt_dur(d.as_ref(), &format!("{p}.{k}"))? {
            Some(d) => put(&mut m, k, d),
            None => return Err(FieldError::new(format!("{p}.{k}"), "is required")),
        }
    }
    if let Some(d) = opt_dur(
        h.no_traffic_interval.as_ref(),
        &format!("{p}.no_traffic_interval"),
    )? {
        put(&mut m, "no_traffic_interval", d);
    }
    put(&mut m, "interval_jitter_percent", h.interval_jitter_percent);
    match &h.unhealthy_threshold {
        Some(v) => put(&mut m, "unhealthy_threshold", v.value),
        None => {
            return Err(FieldError::new(
                format!("{p}.unhealthy_threshold"),
                "is required",
            ));
        }
    }
    match &h.healthy_threshold {
        Some(v) => put(&mut m, "healthy_threshold", v.value),
        None => {
            return Err(FieldError::new(
                format!("{p}.healthy_threshold"),
                "is required",
            ));
        }
    }
    use health_check::HealthChecker as H;
    match &h.health_checker {
        Some(H::HttpHealthCheck(x)) => {
            let mut hm = Mapping::new();
            put(&mut hm, "path", &x.path);
            if !x.host.is_empty() {
                put(&mut hm, "host", &x.host);
            }
            if !x.expected_statuses.is_empty() {
                let mut ranges = Vec::new();
                for (i, r) in x.expected_statuses.iter().enumerate() {
                    let ok = |v: i64| u16::try_from(v).ok().filter(|v| (100..=600).contains(v));
                    let (Some(start), Some(end)) = (ok(r.start), ok(r.end)) else {
                        return Err(FieldError::new(
                            format!("{p}.http_health_check.expected_statuses[{i}]"),
                            "must be a range of HTTP statuses within [100, 600)",
                        ));
                    };
                    ranges.push(crate::StatusRange { start, end });
                }
                put(&mut hm, "expected_statuses", ranges);
            }
            if x.send.is_some() || !x.receive.is_empty() {
                return Err(FieldError::new(
                    format!("{p}.http_health_check.receive"),
                    "payload checks are not supported",
                ));
            }
            m.insert("http".into(), Value::Mapping(hm));
        }
        Some(H::GrpcHealthCheck(x)) => {
            let mut gm = Mapping::new();
            if !x.service_name.is_empty() {
                put(&mut gm, "service_name", &x.service_name);
            }
            if !x.authority.is_empty() {
                put(&mut gm, "authority", &x.authority);
            }
            m.insert("grpc".into(), Value::Mapping(gm));
        }
        Some(H::TcpHealthCheck(x)) => {
            if x.send.is_some() || !x.receive.is_empty() {
                return Err(FieldError::new(
                    format!("{p}.tcp_health_check.send"),
                    "payload checks are not supported",
                ));
            }
            m.insert("tcp".into(), Value::Mapping(Mapping::new()));
        }
        Some(H::CustomHealthCheck(c)) => {
            return Err(FieldError::new(
                format!("{p}.custom_health_check"),
                format!("unsupported health checker `{}`", c.name),
            ));
        }
        None => {
            return Err(FieldError::new(
                format!("{p}.health_checker"),
                "is required",
            ));
        }
    }
    Ok(m)
}
