//! The mapping between the resource model and Envoy's xDS v3 protos (feature `xds`).

pub use envoy_types;
