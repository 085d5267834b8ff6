//! A cluster's endpoints ↔ `ClusterLoadAssignment`.

use super::value::{socket_addr, u32v};
use super::{DecodeError, FieldError, Fr};
use crate::{ClusterLoadAssignment, Endpoint, Resource};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::{
    self as pbe, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};

pub(crate) fn encode_endpoints(e: &ClusterLoadAssignment) -> pbe::ClusterLoadAssignment {
    // Consecutive endpoints of one zone share a LocalityLbEndpoints, so order is kept.
    let mut groups: Vec<LocalityLbEndpoints> = Vec::new();
    let mut last_zone: Option<Option<&String>> = None;
    for ep in &e.endpoints {
        let lb = LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(pbe::Endpoint {
                address: Some(super::value::address(ep.address)),
                ..pbe::Endpoint::default()
            })),
            load_balancing_weight: u32v(ep.weight),
            ..LbEndpoint::default()
        };
        match groups.last_mut() {
            Some(g) if last_zone == Some(ep.zone.as_ref()) => g.lb_endpoints.push(lb),
            _ => {
                groups.push(LocalityLbEndpoints {
                    locality: ep.zone.as_ref().map(|z| Locality {
                        zone: z.clone(),
                        ..Locality::default()
                    }),
                    lb_endpoints: vec![lb],
                    ..LocalityLbEndpoints::default()
                });
                last_zone = Some(ep.zone.as_ref());
            }
        }
    }
    pbe::ClusterLoadAssignment {
        cluster_name: e.cluster_name.clone(),
        endpoints: groups,
        ..pbe::ClusterLoadAssignment::default()
    }
}

pub(crate) fn decode_endpoints(pb: &pbe::ClusterLoadAssignment) -> Result<Resource, DecodeError> {
    if pb.cluster_name.is_empty() {
        return Err(FieldError::new("cluster_name", "is required").named(""));
    }
    let endpoints = endpoints(pb, "").map_err(|e| e.named(&pb.cluster_name))?;
    Ok(Resource::Endpoints(ClusterLoadAssignment {
        cluster_name: pb.cluster_name.clone(),
        endpoints,
    }))
}

/// The model endpoints of an assignment; `p` is its path (empty at the top).
pub(crate) fn endpoints(pb: &pbe::ClusterLoadAssignment, p: &str) -> Fr<Vec<Endpoint>> {
    let p = if p.is_empty() {
        String::new()
    } else {
        format!("{p}.")
    };
    if !pb.named_endpoints.is_empty() {
        return Err(FieldError::new(
            format!("{p}named_endpoints"),
            "named endpoints are not supported",
        ));
    }
    if pb
        .policy
        .as_ref()
        .is_some_and(|p| !p.drop_overloads.is_empty())
    {
        return Err(FieldError::new(
            format!("{p}policy.drop_overloads"),
            "dropping traffic is not supported",
        ));
    }
    let mut out = Vec::new();
    for (i, l) in pb.endpoints.iter().enumerate() {
        let lp = format!("{p}endpoints[{i}]");
        if l.priority != 0 {
            return Err(FieldError::new(
                format!("{lp}.priority"),
                "Sluice has one priority level (0)",
            ));
        }
        if l.load_balancing_weight.is_some() {
            return Err(FieldError::new(
                format!("{lp}.load_balancing_weight"),
                "locality weights are not supported",
            ));
        }
        let zone = l
            .locality
            .as_ref()
            .map(|l| l.zone.clone())
            .filter(|z| !z.is_empty());
        for (j, e) in l.lb_endpoints.iter().enumerate() {
            let ep = format!("{lp}.lb_endpoints[{j}]");
            // Endpoints the control plane reports unhealthy or draining take no traffic.
            let status = HealthStatus::try_from(e.health_status).unwrap_or_default();
            if matches!(
                status,
                HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout
            ) {
                continue;
            }
            let Some(lb_endpoint::HostIdentifier::Endpoint(x)) = &e.host_identifier else {
                return Err(FieldError::new(
                    format!("{ep}.endpoint"),
                    "is required (endpoint_name is not supported)",
                ));
            };
            let address = socket_addr(x.address.as_ref(), &format!("{ep}.endpoint.address"))?;
            out.push(Endpoint {
                address,
                weight: e.load_balancing_weight.as_ref().map_or(1, |w| w.value),
                zone: zone.clone(),
            });
        }
    }
    Ok(out)
}
