//! Shared pieces of the mapping: the model's YAML-shaped values and `google.protobuf.Struct`,
//! the Sluice metadata (what Envoy cannot express), durations and wrappers.

use super::{FieldError, Fr};
use crate::units::Duration;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{
    self as pb, Any, ListValue, Struct, UInt32Value, value::Kind,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Number, Value};
use std::collections::HashMap;

/// The `filter_metadata` key of Sluice-only settings.
pub(crate) const SLUICE: &str = "sluice";

/// A model value in its YAML shape (`Null` if it cannot be serialized, which the model's
/// types never do).
pub(crate) fn yv<T: Serialize>(x: T) -> Value {
    serde_yaml_ng::to_value(x).unwrap_or(Value::Null)
}

/// Sets `key` in a YAML mapping.
pub(crate) fn put<T: Serialize>(m: &mut Mapping, key: &str, x: T) {
    m.insert(Value::String(key.to_string()), yv(x));
}

/// A YAML mapping as a protobuf `Struct`.
pub(crate) fn to_struct(m: &Mapping) -> Struct {
    Struct {
        fields: m
            .iter()
            .filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), to_pb(v))))
            .collect(),
    }
}

fn to_pb(v: &Value) -> pb::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Sequence(s) => Kind::ListValue(ListValue {
            values: s.iter().map(to_pb).collect(),
        }),
        Value::Mapping(m) => Kind::StructValue(to_struct(m)),
        Value::Tagged(t) => return to_pb(&t.value),
    };
    pb::Value { kind: Some(kind) }
}

/// A protobuf `Struct` as a YAML mapping (integral numbers become integers, so they read back
/// into integer fields).
pub(crate) fn from_struct(s: &Struct) -> Mapping {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    let mut m = Mapping::new();
    for k in keys {
        if let Some(v) = s.fields.get(k) {
            m.insert(Value::String(k.clone()), from_pb(v));
        }
    }
    m
}

fn from_pb(v: &pb::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(f)) => {
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            if f.fract() == 0.0 && f.abs() < EXACT {
                // Integral and exact: an integer, so it deserializes into integer fields.
                #[allow(clippy::cast_possible_truncation)]
                let i = *f as i64;
                Value::Number(Number::from(i))
            } else {
                Value::Number(Number::from(*f))
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Sequence(l.values.iter().map(from_pb).collect()),
        Some(Kind::StructValue(s)) => Value::Mapping(from_struct(s)),
    }
}

/// What of `full` a decoder reading only Envoy's fields (`native`, normalized through the
/// model type `T` so defaults are filled in) would not reproduce: the Sluice-only remainder.
pub(crate) fn remainder<T: Serialize + DeserializeOwned>(full: &Value, native: Mapping) -> Mapping {
    let native = serde_yaml_ng::from_value::<T>(Value::Mapping(native.clone()))
        .ok()
        .map(yv)
        .unwrap_or(Value::Mapping(native));
    match (full, &native) {
        (Value::Mapping(f), Value::Mapping(n)) => diff(f, n),
        (Value::Mapping(f), _) => f.clone(),
        _ => Mapping::new(),
    }
}

fn diff(full: &Mapping, native: &Mapping) -> Mapping {
    let mut out = Mapping::new();
    for (k, fv) in full {
        match (native.get(k), fv) {
            (Some(nv), _) if nv == fv => {}
            (Some(Value::Mapping(nm)), Value::Mapping(fm)) => {
                let d = diff(fm, nm);
                if !d.is_empty() {
                    out.insert(k.clone(), Value::Mapping(d));
                }
            }
            _ => {
                out.insert(k.clone(), fv.clone());
            }
        }
    }
    for k in native.keys() {
        if !full.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    out
}

/// Applies `over` on `base`, mappings merged key by key.
pub(crate) fn merge(base: &mut Mapping, over: Mapping) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Mapping(b)), Value::Mapping(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Metadata carrying the Sluice-only remainder (`None` when there is none).
pub(crate) fn metadata(rem: &Mapping) -> Option<Metadata> {
    if rem.is_empty() {
        return None;
    }
    Some(Metadata {
        filter_metadata: HashMap::from([(SLUICE.to_string(), to_struct(rem))]),
        ..Metadata::default()
    })
}

/// Applies a resource's Sluice metadata (if any) over the mapping decoded from Envoy fields.
pub(crate) fn apply_metadata(m: &mut Mapping, md: Option<&Metadata>) {
    if let Some(s) = md.and_then(|md| md.filter_metadata.get(SLUICE)) {
        merge(m, from_struct(s));
    }
}

/// Reads the model type from the mapping; `path` names where it came from.
pub(crate) fn finish<T: DeserializeOwned>(m: Mapping, path: &str) -> Fr<T> {
    serde_yaml_ng::from_value(Value::Mapping(m)).map_err(|e| {
        FieldError::new(
            path,
            format!("does not make a valid Sluice resource (Envoy fields with `metadata.filter_metadata.sluice`): {e}"),
        )
    })
}

/// A model duration as a protobuf one.
pub(crate) fn dur(d: Duration) -> pb::Duration {
    let d = d.get();
    pb::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf duration as a model one; negative or malformed ones are errors at `field`.
pub(crate) fn from_dur(d: &pb::Duration, field: &str) -> Fr<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(FieldError::new(field, "must not be negative"));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(FieldError::new(field, "nanos must be below 1,000,000,000"));
    }
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Ok(Duration(std::time::Duration::new(secs, nanos)))
}

/// An optional protobuf duration as an optional model one.
pub(crate) fn opt_dur(d: Option<&pb::Duration>, field: &str) -> Fr<Option<Duration>> {
    d.map(|d| from_dur(d, field)).transpose()
}

/// A `UInt32Value` wrapper.
pub(crate) fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

/// Packs a message into an `Any`.
pub(crate) fn any<T: prost::Name + prost::Message>(m: &T) -> Any {
    Any {
        type_url: T::type_url(),
        value: m.encode_to_vec(),
    }
}

/// Unpacks an `Any` holding `T`, or says at `field` what it holds instead.
pub(crate) fn unany<T: prost::Name + prost::Message + Default>(a: &Any, field: &str) -> Fr<T> {
    if a.type_url != T::type_url() {
        return Err(FieldError::new(
            field,
            format!(
                "unsupported type `{}` (expected `{}`)",
                a.type_url,
                T::type_url()
            ),
        ));
    }
    T::decode(a.value.as_slice())
        .map_err(|e| FieldError::new(field, format!("not a valid `{}`: {e}", T::full_name())))
}

/// A socket address as Envoy's `Address`.
pub(crate) fn address(
    a: std::net::SocketAddr,
) -> envoy_types::pb::envoy::config::core::v3::Address {
    use envoy_types::pb::envoy::config::core::v3::{SocketAddress, address, socket_address};
    envoy_types::pb::envoy::config::core::v3::Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..SocketAddress::default()
        })),
    }
}

/// Envoy's `Address` as (host, port): a socket address with a port value; `field` is the
/// `Address`'s path.
pub(crate) fn host_port(
    a: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
    field: &str,
) -> Fr<(String, u16)> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    let Some(a) = a else {
        return Err(FieldError::new(field, "is required"));
    };
    let Some(address::Address::SocketAddress(s)) = &a.address else {
        return Err(FieldError::new(
            field,
            "only `socket_address` is supported (no pipes or internal addresses)",
        ));
    };
    let sp = format!("{field}.socket_address");
    if s.protocol != 0 {
        return Err(FieldError::new(
            format!("{sp}.protocol"),
            "only TCP is supported",
        ));
    }
    let port = match &s.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(*p).map_err(|_| {
            FieldError::new(format!("{sp}.port_value"), format!("{p} is not a port"))
        })?,
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(FieldError::new(
                format!("{sp}.named_port"),
                "named ports are not supported",
            ));
        }
        None => return Err(FieldError::new(format!("{sp}.port_value"), "is required")),
    };
    Ok((s.address.clone(), port))
}

/// Envoy's `Address` as an IP socket address.
pub(crate) fn socket_addr(
    a: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
    field: &str,
) -> Fr<std::net::SocketAddr> {
    let (host, port) = host_port(a, field)?;
    let ip: std::net::IpAddr = host.parse().map_err(|_| {
        FieldError::new(
            format!("{field}.socket_address.address"),
            format!("`{host}` is not an IP address"),
        )
    })?;
    Ok(std::net::SocketAddr::new(ip, port))
}
