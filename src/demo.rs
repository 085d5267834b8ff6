//! `sluice demo`: starts the example upstreams named by `examples/demo.yaml` (HTTP echo servers
//! and a TCP echo server) in this process, then the proxy in front of them.

use sluice_proxy::Proxy;
use sluice_proxy::Source;
use std::collections::HashSet;

const DEMO: &str = include_str!("../examples/demo.yaml");

/// Starts the upstreams and returns the demo config.
pub(crate) fn prepare() -> anyhow::Result<Source> {
    let config = sluice_config::parse(DEMO, "examples/demo.yaml")?;
    let tcp: HashSet<&str> = config
        .listeners
        .iter()
        .filter_map(|l| match &l.kind {
            sluice_config::ListenerKind::Tcp(t) => t.cluster.as_deref(),
            sluice_config::ListenerKind::Http(_) => None,
        })
        .collect();
    for c in &config.clusters {
        for (i, e) in c.endpoints.iter().enumerate() {
            if tcp.contains(c.name.as_str()) {
                sluice_proxy::demo::spawn_tcp_echo(e.address)
                    .map_err(|err| anyhow::anyhow!("{}: {err}", e.address))?;
            } else {
                sluice_proxy::demo::spawn_echo(e.address, &format!("{}-{i}", c.name))
                    .map_err(|err| anyhow::anyhow!("{}: {err}", e.address))?;
            }
        }
    }
    Ok(Source::Inline {
        name: "examples/demo.yaml".into(),
        text: DEMO.into(),
    })
}

pub(crate) fn print_usage(proxy: &Proxy) {
    let web = proxy
        .listener_addr("web")
        .map(|a| a.to_string())
        .unwrap_or_default();
    let tcp = proxy.listener_addr("echo-tcp");
    let tcp_host = tcp.map(|a| a.ip().to_string()).unwrap_or_default();
    let tcp_port = tcp.map(|a| a.port()).unwrap_or_default();
    let admin = proxy.admin_addr();
    println!(
        "\nSluice demo is running. Try:\n\
         \n  curl -si http://{web}/hello                         # 90% web (round robin web-0/web-1), 10% web-canary: see x-upstream\
         \n  curl -si http://{web}/api/users?id=7                # /api/ → api cluster over HTTP/2 (prefix rewritten to /v1/)\
         \n  curl -s --http2-prior-knowledge http://{web}/hello  # HTTP/2 downstream → HTTP/1.1 upstream\
         \n  curl -si -H 'x-canary: 1' http://{web}/hello        # header match → canary cluster\
         \n  curl -si http://{web}/old/page                      # 301 redirect\
         \n  curl -si http://{web}/healthz                       # direct response\
         \n  exec 3<>/dev/tcp/{tcp_host}/{tcp_port}; echo hello >&3; head -1 <&3   # TCP proxy to an echo server (bash)\
         \n  curl -s http://{admin}/metrics                     # Prometheus metrics\
         \n\nCtrl-C drains and exits.\n"
    );
}
