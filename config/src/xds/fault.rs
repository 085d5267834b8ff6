//! A route's `fault` ↔ the fault filter's per-route `HTTPFault`.

use super::value::{dur, from_dur, put, unany};
use super::{FieldError, Fr};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    FaultDelay as CommonFaultDelay, fault_delay,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use serde_yaml_ng::{Mapping, Value};

/// The fault filter's name (its per-route config carries a route's `fault`).
pub(crate) const FAULT: &str = "envoy.filters.http.fault";

fn percent(p: f64) -> Option<FractionalPercent> {
    // Millionths: Sluice percentages allow fractions.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let numerator = (p * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32;
    Some(FractionalPercent {
        numerator,
        denominator: fractional_percent::DenominatorType::Million as i32,
    })
}

fn from_percent(p: Option<&FractionalPercent>, field: &str) -> Fr<f64> {
    use fractional_percent::DenominatorType as D;
    let Some(p) = p else {
        return Ok(100.0); // Envoy: unset means every request
    };
    let scale = match D::try_from(p.denominator) {
        Ok(D::Hundred) => 1.0,
        Ok(D::TenThousand) => 100.0,
        Ok(D::Million) => 10_000.0,
        Err(_) => {
            return Err(FieldError::new(
                format!("{field}.denominator"),
                "unknown denominator",
            ));
        }
    };
    Ok((f64::from(p.numerator) / scale).min(100.0))
}

pub(crate) fn fault_pb(f: &crate::Fault) -> HttpFault {
    HttpFault {
        delay: f.delay.as_ref().map(|d| CommonFaultDelay {
            percentage: percent(d.percentage),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(dur(d.fixed))),
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            percentage: percent(a.percentage),
            error_type: match (a.http_status, a.grpc_status) {
                (_, Some(g)) => Some(fault_abort::ErrorType::GrpcStatus(g)),
                (h, None) => Some(fault_abort::ErrorType::HttpStatus(u32::from(
                    h.unwrap_or(503),
                ))),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn fault_mapping(a: &envoy_types::pb::google::protobuf::Any, p: &str) -> Fr<Mapping> {
    let f: HttpFault = unany(a, p)?;
    for (bad, what) in [
        (!f.upstream_cluster.is_empty(), "upstream_cluster"),
        (!f.headers.is_empty(), "headers"),
        (!f.downstream_nodes.is_empty(), "downstream_nodes"),
        (f.response_rate_limit.is_some(), "response_rate_limit"),
    ] {
        if bad {
            return Err(FieldError::new(format!("{p}.{what}"), "is not supported"));
        }
    }
    let mut m = Mapping::new();
    if let Some(d) = &f.delay {
        let dp = format!("{p}.delay");
        let mut x = Mapping::new();
        match &d.fault_delay_secifier {
            Some(fault_delay::FaultDelaySecifier::FixedDelay(t)) => {
                put(&mut x, "fixed", from_dur(t, &format!("{dp}.fixed_delay"))?);
            }
            _ => {
                return Err(FieldError::new(
                    format!("{dp}.header_delay"),
                    "only fixed delays are supported",
                ));
            }
        }
        put(
            &mut x,
            "percentage",
            from_percent(d.percentage.as_ref(), &format!("{dp}.percentage"))?,
        );
        m.insert("delay".into(), Value::Mapping(x));
    }
    if let Some(a) = &f.abort {
        let ap = format!("{p}.abort");
        let mut x = Mapping::new();
        match &a.error_type {
            Some(fault_abort::ErrorType::HttpStatus(s)) => put(&mut x, "http_status", s),
            Some(fault_abort::ErrorType::GrpcStatus(s)) => put(&mut x, "grpc_status", s),
            _ => {
                return Err(FieldError::new(
                    format!("{ap}.header_abort"),
                    "only http_status and grpc_status aborts are supported",
                ));
            }
        }
        put(
            &mut x,
            "percentage",
            from_percent(a.percentage.as_ref(), &format!("{ap}.percentage"))?,
        );
        m.insert("abort".into(), Value::Mapping(x));
    }
    Ok(m)
}
