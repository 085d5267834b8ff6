//! The mapping between the resource model and Envoy's xDS v3 protos (feature `xds`).
//!
//! [`encode`] turns one model [`Resource`] into the Envoy message it maps to, packed in an
//! `Any`; [`decode`] turns one Envoy resource back into model resources. Every setting Envoy
//! can express is written in Envoy's own fields, so an Envoy fed by Sluice behaves as a Sluice
//! proxy would on that subset. Settings Envoy has no field for (Sluice-only ones, such as the
//! retry budget or `peak_ewma`) are carried in the resource's
//! `metadata.filter_metadata["sluice"]` (a `google.protobuf.Struct` in the model's YAML
//! shape), which Envoy ignores and [`decode`] applies over the Envoy fields: model → Envoy →
//! model is the identity. An Envoy resource written by anyone else has no such metadata and
//! gets the model's defaults for them. See "xDS mapping" in `docs/architecture.md`.

// Deprecated Envoy fields (`dns_refresh_rate`, `HeaderValueOption.append`, the old header
// matchers) are still what many control planes send: they are read, and written where no
// replacement exists yet.
#![allow(deprecated)]

pub use envoy_types;

mod access_log;
mod authz;
mod cluster;
mod endpoints;
mod fault;
mod hash;
mod hcm;
mod health;
mod listener;
mod matching;
mod node;
mod route;
mod secret;
mod tls;
mod value;

#[cfg(test)]
mod tests;

pub use node::{USER_AGENT, decode_node, encode_node};

use crate::{Resource, ResourceType};
use envoy_types::pb::google::protobuf::Any;
use std::fmt;

/// Type URL of `envoy.config.listener.v3.Listener` (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of `envoy.config.route.v3.RouteConfiguration` (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Type URL of `envoy.config.cluster.v3.Cluster` (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The type URL of the Envoy message a model resource type maps to.
pub fn type_url(kind: ResourceType) -> &'static str {
    match kind {
        ResourceType::Listener => LISTENER,
        ResourceType::RouteTable => ROUTE,
        ResourceType::Cluster => CLUSTER,
        ResourceType::Endpoints => ENDPOINT,
        ResourceType::Secret => SECRET,
    }
}

/// The model resource type an Envoy type URL maps to (`None` for others).
pub fn resource_type(type_url: &str) -> Option<ResourceType> {
    match type_url {
        LISTENER => Some(ResourceType::Listener),
        ROUTE => Some(ResourceType::RouteTable),
        CLUSTER => Some(ResourceType::Cluster),
        ENDPOINT => Some(ResourceType::Endpoints),
        SECRET => Some(ResourceType::Secret),
        _ => None,
    }
}

/// One model resource as the Envoy message it maps to, packed
/// (`envoy_types::pb::google::protobuf::Any`).
pub fn encode(r: &Resource) -> Any {
    match r {
        Resource::Cluster(c) => pack(cluster::encode(c)),
        Resource::Endpoints(e) => pack(endpoints::encode_endpoints(e)),
        Resource::RouteTable(t) => pack(route::encode(t)),
        Resource::Listener(l) => pack(listener::encode(l)),
        Resource::Secret(s) => pack(secret::encode(s)),
    }
}

/// One Envoy resource as model resources: usually one; a STATIC/STRICT_DNS cluster with an
/// inline `load_assignment` gives Cluster + Endpoints (STATIC only: a DNS cluster's endpoints
/// are discovered), a listener with an inline `route_config` gives Listener + RouteTable.
/// Unsupported fields that change behaviour are errors naming the field path; unknown but
/// harmless ones are ignored. Every resource returned passed the model's own per-resource
/// validation ([`crate::validate_resource`]).
pub fn decode(type_url: &str, any: &Any) -> Result<Vec<Resource>, DecodeError> {
    if any.type_url != type_url {
        return Err(DecodeError {
            name: String::new(),
            field: "type_url".into(),
            message: format!("is `{}`, expected `{type_url}`", any.type_url),
        });
    }
    let resources = match type_url {
        CLUSTER => cluster::decode(&unpack(any)?)?,
        ENDPOINT => vec![endpoints::decode_endpoints(&unpack(any)?)?],
        ROUTE => vec![route::decode(&unpack(any)?)?],
        LISTENER => listener::decode(&unpack(any)?)?,
        SECRET => {
            let pb: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret =
                unpack(any)?;
            vec![Resource::Secret(
                secret::decode(&pb).map_err(|e| e.named(&pb.name))?,
            )]
        }
        other => {
            return Err(DecodeError {
                name: String::new(),
                field: "type_url".into(),
                message: format!("unsupported resource type `{other}`"),
            });
        }
    };
    for r in &resources {
        if let Some(issue) = crate::validate_resource(r).into_iter().next() {
            return Err(DecodeError {
                name: r.name().to_string(),
                field: issue.path,
                message: issue.message,
            });
        }
    }
    Ok(resources)
}

/// Why an Envoy resource could not be decoded: the resource's name, the field path inside it
/// (Envoy's field names; for an error found by the model's validation, the model's path such
/// as `cluster.endpoints[0].weight`) and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// The resource's name (empty when it could not be read).
    pub name: String,
    /// The field path, e.g. `filter_chains[0].filters[0].typed_config.http_filters[1]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl DecodeError {
    /// The error as an xDS NACK's `error_detail` message names it:
    /// `cluster "backend": connect_timeout: must be positive` (the type is not stored in the
    /// error; the caller knows it from the type URL).
    pub fn describe(&self, kind: ResourceType) -> String {
        format!("{} {self}", kind.as_str())
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: ", self.name)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {}

/// An error inside one resource, before its name is attached.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn named(self, name: &str) -> DecodeError {
        DecodeError {
            name: name.to_string(),
            field: self.field,
            message: self.message,
        }
    }
}

pub(crate) type Fr<T> = Result<T, FieldError>;

fn pack<T: prost::Name + prost::Message>(m: T) -> Any {
    envoy_types::pb::google::protobuf::Any {
        type_url: T::type_url(),
        value: m.encode_to_vec(),
    }
}

fn unpack<T: prost::Message + Default>(any: &Any) -> Result<T, DecodeError> {
    T::decode(any.value.as_slice()).map_err(|e| DecodeError {
        name: String::new(),
        field: String::new(),
        message: format!("not a valid protobuf message: {e}"),
    })
}
