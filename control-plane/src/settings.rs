//! The control plane's own config file (`sluice control-plane -c FILE`).
//!
//! ```yaml
//! xds: { address: 127.0.0.1:7180 }     # ADS over gRPC; `tls: { server_names: [cp.example] }`
//!                                      # (a certificate from the CA) or `tls: { cert, key }`
//! http: { address: 127.0.0.1:7181 }    # registry API, /status, /metrics, /ready
//! directory: { path: mesh/ }           # YAML in the proxy's schema, watched (relative paths
//!                                      # are relative to this file)
//! registry: { default_ttl: 30s, max_ttl: 300s, max_endpoints: 100000 }
//! debounce: 100ms                      # bursts of changes become one push
//! ca:                                  # the built-in CA (optional)
//!   trust_domain: sluice.local
//!   workload_cert_ttl: 24h             # rotated at 70%
//!   identities:
//!     - { namespace: demo, service_account: frontend, nodes: [frontend], token_file: tokens/frontend }
//! ```
//!
//! Unknown fields are errors; an error names the file, line and column.

use crate::source::registry::RegistrySettings;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The default ADS address (the control plane's port block, docs/architecture.md "Ports").
pub const DEFAULT_XDS: &str = "127.0.0.1:7180";
/// The default HTTP address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7181";

/// The control plane's settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The ADS server.
    #[serde(default)]
    pub xds: XdsListen,
    /// The HTTP server: registry API, status, metrics.
    #[serde(default)]
    pub http: Address<Http>,
    /// The watched directory, if any.
    #[serde(default)]
    pub directory: Option<Directory>,
    /// Registry limits.
    #[serde(default)]
    pub registry: RegistrySettings,
    /// How long the control plane waits after a change for more before it builds and pushes
    /// snapshots. Default `100ms`.
    #[serde(default = "default_debounce")]
    pub debounce: sluice_config::Duration,
    /// The built-in CA (absent: no certificates are issued).
    #[serde(default)]
    pub ca: Option<crate::ca::CaSettings>,
}

fn default_debounce() -> sluice_config::Duration {
    sluice_config::Duration::from_millis(100)
}

/// A server address with a per-server default.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address<D: DefaultAddress> {
    /// `ip:port`.
    pub address: SocketAddr,
    #[serde(skip)]
    _d: std::marker::PhantomData<D>,
}

/// Which default an [`Address`] takes.
pub trait DefaultAddress {
    /// The default.
    const DEFAULT: &'static str;
}
/// The ADS server's default.
#[derive(Clone, Debug, PartialEq)]
pub struct Xds;
impl DefaultAddress for Xds {
    const DEFAULT: &'static str = DEFAULT_XDS;
}
/// The HTTP server's default.
#[derive(Clone, Debug, PartialEq)]
pub struct Http;
impl DefaultAddress for Http {
    const DEFAULT: &'static str = DEFAULT_HTTP;
}

impl<D: DefaultAddress> Default for Address<D> {
    fn default() -> Self {
        Address {
            address: D::DEFAULT
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            _d: std::marker::PhantomData,
        }
    }
}

impl<D: DefaultAddress> Address<D> {
    /// An explicit address.
    pub fn new(address: SocketAddr) -> Self {
        Address {
            address,
            _d: std::marker::PhantomData,
        }
    }
}

/// The watched directory.
/// Where ADS is served, and with what TLS.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsListen {
    /// The address (default `127.0.0.1:7180`).
    #[serde(default = "default_xds_address")]
    pub address: SocketAddr,
    /// TLS on the ADS listener (proxies then use `--xds https://…`). Absent: plaintext.
    #[serde(default)]
    pub tls: Option<XdsTls>,
}

fn default_xds_address() -> SocketAddr {
    Address::<Xds>::default().address
}

impl Default for XdsListen {
    fn default() -> Self {
        XdsListen {
            address: default_xds_address(),
            tls: None,
        }
    }
}

/// The ADS listener's certificate: PEM files (`cert` and `key`), or issued by the built-in CA
/// for `server_names` (DNS names or IP addresses the proxies dial) and renewed at 70% of its
/// lifetime.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsTls {
    /// PEM certificate chain.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Names for a certificate from the built-in CA (instead of `cert` and `key`).
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    /// Its path.
    pub path: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            xds: XdsListen::default(),
            http: Address::default(),
            directory: None,
            registry: RegistrySettings::default(),
            debounce: default_debounce(),
            ca: None,
        }
    }
}

/// Reads the settings file; relative directory paths are resolved against its directory.
pub fn load(path: &Path) -> Result<Settings, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    let mut s = parse(&text).map_err(|e| format!("{name}:{e}"))?;
    let base = path.parent().unwrap_or(Path::new("."));
    if let Some(d) = &mut s.directory
        && d.path.is_relative()
    {
        d.path = base.join(&d.path);
    }
    if let Some(ca) = &mut s.ca {
        ca.resolve_paths(base);
    }
    if let Some(tls) = &mut s.xds.tls {
        for p in [&mut tls.cert, &mut tls.key].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
    Ok(s)
}

/// Parses settings text; the error starts with `LINE:COL: `.
pub fn parse(text: &str) -> Result<Settings, String> {
    if text.trim().is_empty() {
        return Ok(Settings::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| {
        let e = sluice_config::yaml_error("", text, &e);
        let at = e
            .position
            .map(|p| format!("{}:{}: ", p.line, p.column))
            .unwrap_or_default();
        let path = if e.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", e.path)
        };
        format!("{at}{path}{}", e.message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_a_full_file() {
        let s = parse("").unwrap();
        assert_eq!(s.xds.address.to_string(), DEFAULT_XDS);
        assert_eq!(s.http.address.to_string(), DEFAULT_HTTP);
        let s = parse(
            "xds: { address: 127.0.0.1:0 }\ndirectory: { path: mesh }\nregistry: { default_ttl: 5s }\ndebounce: 10ms\n",
        )
        .unwrap();
        assert_eq!(s.xds.address.port(), 0);
        assert_eq!(s.http.address.to_string(), DEFAULT_HTTP);
        assert_eq!(
            s.registry.default_ttl.get(),
            std::time::Duration::from_secs(5)
        );
        assert_eq!(s.debounce.get(), std::time::Duration::from_millis(10));
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let e = parse("xds: { address: 127.0.0.1:0 }\ndirectroy: { path: x }\n").unwrap_err();
        assert!(e.starts_with("2:1: unknown field `directroy`"), "{e}");
        let e = parse("debounce: soon\n").unwrap_err();
        assert!(e.starts_with("1:11:"), "{e}");
    }
}
