//! `sluice demo`: starts the example upstreams named by `examples/demo.yaml` (HTTP echo servers
//! and a TCP echo server) in this process, then the proxy in front of them.

use sluice_proxy::Proxy;
use sluice_proxy::Source;
use std::collections::HashSet;
use std::net::SocketAddr;

const DEMO: &str = include_str!("../examples/demo.yaml");

/// The demo's config, with the ports it really uses.
pub(crate) struct Prepared {
    /// The config to run.
    pub(crate) source: Source,
    /// One line per default port that was busy, saying what was used instead.
    pub(crate) notes: Vec<String>,
}

/// `addr` when it can be bound now, else the same IP with port 0 (a free port) and a note.
fn free_or_any(addr: SocketAddr, what: &str, notes: &mut Vec<String>) -> SocketAddr {
    if addr.port() == 0 || std::net::TcpListener::bind(addr).is_ok() {
        return addr;
    }
    notes.push(format!(
        "port {} is busy: {what} uses a free port instead",
        addr.port()
    ));
    SocketAddr::new(addr.ip(), 0)
}

/// Starts the upstreams and returns the demo config. `port` moves the `web` listener (and
/// `echo-tcp` to the port after it; 0 picks free ones); any default port that is busy — a
/// listener's, the admin API's or an upstream's — is replaced by a free one.
pub(crate) fn prepare(port: Option<u16>) -> anyhow::Result<Prepared> {
    let config = sluice_config::parse(DEMO, "examples/demo.yaml")?;
    let mut text = DEMO.to_string();
    let mut notes = Vec::new();
    let moved = |from: SocketAddr, to: SocketAddr, text: &mut String| {
        if from != to {
            *text = text.replace(&from.to_string(), &to.to_string());
        }
    };
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
            let name = format!("{}-{i}", c.name);
            let spawn = |addr| {
                if tcp.contains(c.name.as_str()) {
                    sluice_proxy::demo::spawn_tcp_echo(addr)
                } else {
                    sluice_proxy::demo::spawn_echo(addr, &name)
                }
            };
            let bound = match spawn(e.address) {
                Ok(bound) => bound,
                Err(_) => {
                    let bound = spawn(SocketAddr::new(e.address.ip(), 0))
                        .map_err(|err| anyhow::anyhow!("upstream {name}: {err}"))?;
                    notes.push(format!(
                        "port {} is busy: upstream {name} listens on {bound} instead",
                        e.address.port()
                    ));
                    bound
                }
            };
            moved(e.address, bound, &mut text);
        }
    }
    for (i, l) in config.listeners.iter().enumerate() {
        let wanted = match port {
            Some(0) => SocketAddr::new(l.address.ip(), 0),
            Some(p) => SocketAddr::new(l.address.ip(), p.saturating_add(i as u16)),
            None => l.address,
        };
        let used = free_or_any(wanted, &format!("listener {}", l.name), &mut notes);
        moved(l.address, used, &mut text);
    }
    let admin = free_or_any(config.admin.address, "the admin API", &mut notes);
    moved(config.admin.address, admin, &mut text);
    Ok(Prepared {
        source: Source::Inline {
            name: "examples/demo.yaml".into(),
            text,
        },
        notes,
    })
}

pub(crate) fn print_usage(proxy: &Proxy, notes: &[String]) {
    let web = proxy
        .listener_addr("web")
        .map(|a| a.to_string())
        .unwrap_or_default();
    let tcp = proxy.listener_addr("echo-tcp");
    let tcp_host = tcp.map(|a| a.ip().to_string()).unwrap_or_default();
    let tcp_port = tcp.map(|a| a.port()).unwrap_or_default();
    let admin = proxy.admin_addr();
    let mut out = String::from("\nSluice demo is running");
    out.push_str(&format!(
        ": listener `web` on {web}, `echo-tcp` on {tcp_host}:{tcp_port}, admin API on {admin}.\n"
    ));
    for n in notes {
        out.push_str(&format!("  ({n})\n"));
    }
    out.push_str(&format!(
        "Try:\n\
         \n  curl -si 'http://{web}/hello'                        # 90% web (round robin web-0/web-1), 10% web-canary: see x-upstream\
         \n  curl -si 'http://{web}/api/users?id=7'               # /api/ → api cluster over HTTP/2 (prefix rewritten to /v1/)\
         \n  curl -s --http2-prior-knowledge 'http://{web}/hello' # HTTP/2 downstream → HTTP/1.1 upstream\
         \n  curl -si -H 'x-canary: 1' 'http://{web}/hello'       # header match → canary cluster\
         \n  curl -si 'http://{web}/old/page'                     # 301 redirect\
         \n  curl -si 'http://{web}/healthz'                      # direct response\
         \n  curl -si --http1.1 -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \\\
         \n       -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' 'http://{web}/ws'\
         \n                                                      # WebSocket: 101, then the tunnel to an echo (Ctrl-C ends curl)\
         \n  exec 3<>/dev/tcp/{tcp_host}/{tcp_port}; echo hello >&3; head -1 <&3   # TCP proxy to an echo server (bash)\
         \n  curl -s 'http://{admin}/'                           # the admin API's endpoints\
         \n  curl -s 'http://{admin}/metrics'                    # Prometheus metrics\
         \n  curl -s 'http://{admin}/clusters'                   # endpoints: health, requests, errors\
         \n  curl -s 'http://{admin}/config_dump'                # the live config\
         \n\nCtrl-C drains and exits.\n"
    ));
    println!("{out}");
}

/// `sluice demo --mesh DIR`: the example backend apps, the control plane serving `DIR` (its
/// `control-plane.yaml`), and two sidecars fed over xDS (node ids `frontend` and `backend`),
/// all in this process on loopback. Editing the weights in
/// `DIR/config/nodes/frontend/sidecar.yaml` shifts traffic without a restart.
pub(crate) struct Mesh {
    _runtime: tokio::runtime::Runtime,
    _control_plane: sluice_control_plane::serve::ControlPlane,
    /// The frontend's sidecar.
    pub(crate) frontend: Proxy,
    /// The backend's sidecar.
    pub(crate) backend: Proxy,
    http: std::net::SocketAddr,
    dir: std::path::PathBuf,
}

/// The example backend apps the mesh config names (`x-upstream` says which answered).
const MESH_APPS: [(&str, &str); 2] = [
    ("127.0.0.1:9201", "backend-v1"),
    ("127.0.0.1:9202", "backend-v2"),
];

pub(crate) fn mesh(
    dir: &std::path::Path,
    options: impl Fn(Source, sluice_proxy::XdsOptions) -> sluice_proxy::Options,
    decode: sluice_proxy::source::xds::Decode,
) -> anyhow::Result<Mesh> {
    use anyhow::Context;
    let settings_path = dir.join("control-plane.yaml");
    let settings =
        sluice_control_plane::settings::load(&settings_path).map_err(anyhow::Error::msg)?;
    for (addr, name) in MESH_APPS {
        let addr: std::net::SocketAddr = addr.parse()?;
        sluice_proxy::demo::spawn_echo(addr, name)
            .with_context(|| format!("starting {name} on {addr}"))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sluice-cp")
        .enable_all()
        .build()?;
    let cp = runtime
        .block_on(sluice_control_plane::serve::start(settings))
        .map_err(anyhow::Error::msg)
        .context("starting the control plane")?;
    let server = format!("http://{}", cp.xds);
    let sidecar = |node: &str, admin: u16| {
        let source = Source::Inline {
            name: format!("{node} sidecar bootstrap"),
            text: format!("admin: {{ address: 127.0.0.1:{admin} }}\n"),
        };
        let mut xds = sluice_proxy::XdsOptions::new(server.clone(), node.to_string(), decode);
        // The bootstrap token proving the sidecar's identity to the CA, when the example has one.
        let token = dir.join(format!("tokens/{node}.token"));
        if let Ok(text) = std::fs::read_to_string(&token) {
            xds.token = Some(text.trim().to_string());
        }
        Proxy::start(options(source, xds)).with_context(|| format!("starting the {node} sidecar"))
    };
    let backend = sidecar("backend", 7192)?;
    let frontend = sidecar("frontend", 7191)?;
    Ok(Mesh {
        http: cp.http,
        _control_plane: cp,
        _runtime: runtime,
        frontend,
        backend,
        dir: dir.to_path_buf(),
    })
}

impl Mesh {
    pub(crate) fn print_usage(&self) {
        let edit = self.dir.join("config/nodes/frontend/sidecar.yaml");
        let edit = edit.display();
        let http = self.http;
        let fe = self.frontend.admin_addr();
        println!(
            "\nSluice mesh demo is running: a control plane (xDS 127.0.0.1:7180, HTTP {http}), the frontend's\
             \nsidecar (outbound 127.0.0.1:7140, admin {fe}) and the backend's sidecar (inbound 127.0.0.1:7143/7144, mTLS,\
             \nadmin {be}) in front of backend-v1 and backend-v2. Try:\
             \n\
             \n  for i in $(seq 20); do curl -s -o /dev/null -w '%{{header_json}}\\n' http://127.0.0.1:7140/ | grep -o 'backend-v[12]'; done | sort | uniq -c\
             \n                                  # ~90% backend-v1, ~10% backend-v2\
             \n  $EDITOR {edit}\
             \n                                  # change the weights, save: the control plane pushes, traffic shifts\
             \n  sluice control-plane status --http {http}   # what each sidecar ACKed (or NACKed)\
             \n  curl -s http://{http}/metrics                # control plane metrics (sluice_xds_*)\
             \n  curl -s http://{fe}/metrics | grep sluice_xds   # the sidecar's xDS client\
             \n  curl -s -X PUT --data '{{\"address\":\"127.0.0.1:9201\",\"ttl\":\"30s\"}}' http://{http}/v1/registry/extra\
             \n                                  # register an endpoint (renew it before its TTL lapses)\
             \n\nCtrl-C stops everything.\n",
            be = self.backend.admin_addr(),
        );
    }
}
