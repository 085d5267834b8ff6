//! Convergence of one config change across N ADS clients (tasks in this process, each on its
//! own HTTP/2 connection, SotW, subscribed to CDS with a wildcard and to EDS by name), plus
//! control-plane memory per connected client and snapshot build time.
//!
//! Run: `cargo bench -p sluice-control-plane --bench xds_converge`
//! Knobs (environment): `CLIENTS` (comma-separated, default `100,1000`), `SERVICES` (clusters in
//! the served snapshot, default 100), `CONNS` (connections the clients share, default one
//! each; the file limit must allow 2 per client), `BUILD_SERVICES` (default 1000, each with 10
//! endpoints, for the snapshot build time).
//!
//! The control plane runs in a child process (this binary re-executed with
//! `XDS_CONVERGE_SERVER=SERVICES`; it publishes the changed snapshot when a line arrives on its
//! stdin), the clients in this one, so the server's RSS is measured alone: RSS per client is
//! the server's RSS growth while the clients connected, divided by their number.
//! Convergence time of a client = from writing that line to the moment the client has
//! received the new CDS version and queued its ACK (so it includes the pipe and the
//! snapshot build of `SERVICES` services in the server, both small).

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Address, Node, SocketAddress, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::util::pack_any;
use sluice_control_plane::snapshot::type_url::{CLUSTER, ENDPOINT};
use sluice_control_plane::{AdsServer, Snapshot, SnapshotCache};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint as GrpcEndpoint};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match std::env::var(SERVER_ENV) {
        Ok(services) => runtime.block_on(serve(services.parse()?)),
        Err(_) => runtime.block_on(run()),
    }
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn env_num(name: &str, default: usize) -> usize {
    env_list(name, &default.to_string())
        .first()
        .copied()
        .unwrap_or(default)
}

async fn run() -> Result<(), Error> {
    let build_services = env_num("BUILD_SERVICES", 1000);
    let mut builds: Vec<Duration> = (0..5)
        .map(|i| {
            let start = Instant::now();
            std::hint::black_box(snapshot(build_services, 10, &format!("b{i}")));
            start.elapsed()
        })
        .collect();
    builds.sort();
    println!(
        "snapshot build, {build_services} services x 10 endpoints (pack + hash): median {:.1} ms, min {:.1} ms",
        ms(builds[2]),
        ms(builds[0])
    );
    let (cold, warm) = model_build(build_services);
    println!(
        "snapshot build from the Sluice model, {build_services} services x 10 endpoints + one route each \
         (translate with sluice_config::xds::encode + pack + hash): first build {:.1} ms, \
         rebuild after one endpoint change {:.1} ms (unchanged resources keep their encoding)",
        ms(cold),
        ms(warm)
    );
    println!();
    println!("| clients | connections | services | p50 | p99 | max | server RSS per client |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let services = env_num("SERVICES", 100);
    for clients in env_list("CLIENTS", "100,1000") {
        let row = converge(clients, services).await?;
        println!("{row}");
    }
    Ok(())
}

/// The control plane in a child process (this binary, re-executed), so its memory is
/// measured apart from the clients'.
struct ServerProcess {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    addr: String,
}

impl ServerProcess {
    fn start(services: usize) -> Result<Self, Error> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe()?)
            .env(SERVER_ENV, services.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut addr = String::new();
        stdout.read_line(&mut addr)?;
        Ok(Self {
            child,
            stdin,
            stdout,
            addr: addr.trim().to_owned(),
        })
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(&format!("/proc/{}/status", self.child.id()))
    }

    /// Has the server publish the next snapshot.
    fn publish(&mut self) -> Result<(), Error> {
        use std::io::Write;
        self.stdin.write_all(b"v2\n")?;
        self.stdin.flush()?;
        Ok(())
    }

    fn stop(mut self) {
        drop(self.stdin);
        let _ = self.child.wait();
        let _ = &mut self.stdout;
    }
}

const SERVER_ENV: &str = "XDS_CONVERGE_SERVER";

/// Server mode: serve `snapshot(services, 3, "v1")`, print the address, publish "v2" on
/// each line of stdin, exit at its end.
async fn serve(services: usize) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let server = AdsServer::new(SnapshotCache::new());
    server.cache().set("*", snapshot(services, 3, "v1"));
    tokio::spawn(sluice_control_plane::serve(listener, server.clone()));
    let cache = server.cache().clone();
    tokio::task::spawn_blocking(move || {
        for line in std::io::stdin().lines() {
            if line.is_err() {
                break;
            }
            cache.set("*", snapshot(services, 3, "v2"));
        }
    })
    .await?;
    Ok(())
}

async fn converge(clients: usize, services: usize) -> Result<String, Error> {
    let mut server = ServerProcess::start(services)?;
    let addr = server.addr.clone();
    let rss_before = server.rss_kib();
    let conns = env_num("CONNS", clients).clamp(1, clients);
    let mut channels = Vec::with_capacity(conns);
    for _ in 0..conns {
        channels.push(
            GrpcEndpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(clients);
    let (done_tx, mut done_rx) = mpsc::channel::<Instant>(clients);
    let target = snapshot(services, 3, "v2").version(CLUSTER);
    for i in 0..clients {
        let channel = channels[i % conns].clone();
        tokio::spawn(client(
            channel,
            i,
            services,
            target.clone(),
            ready_tx.clone(),
            done_tx.clone(),
        ));
    }
    for _ in 0..clients {
        ready_rx.recv().await.ok_or("a client failed")?;
    }
    let rss_after = server.rss_kib();

    let start = Instant::now();
    server.publish()?;
    let mut times = Vec::with_capacity(clients);
    for _ in 0..clients {
        let at = done_rx.recv().await.ok_or("a client failed")?;
        times.push(at.duration_since(start));
    }
    times.sort();
    let pick = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    let per_client = rss_after.saturating_sub(rss_before) as f64 / clients as f64;
    drop(channels);
    server.stop();
    Ok(format!(
        "| {clients} | {conns} | {services} | {:.1} ms | {:.1} ms | {:.1} ms | {per_client:.1} KiB |",
        ms(pick(0.50)),
        ms(pick(0.99)),
        ms(pick(1.0)),
    ))
}

/// One simulated proxy: CDS wildcard + EDS for its clusters, ACKs everything; reports ready
/// after the first CDS and EDS, and done when the target CDS version arrives.
async fn client(
    channel: Channel,
    id: usize,
    services: usize,
    target: String,
    ready: mpsc::Sender<()>,
    done: mpsc::Sender<Instant>,
) -> Result<(), Error> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: format!("proxy-{id}"),
            cluster: "bench".to_owned(),
            ..Default::default()
        }),
        type_url: CLUSTER.to_owned(),
        ..Default::default()
    })
    .await?;
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let eds: Vec<String> = (0..services).map(|i| format!("svc-{i}")).collect();
    let ack = |r: &DiscoveryResponse, names: Vec<String>| DiscoveryRequest {
        version_info: r.version_info.clone(),
        response_nonce: r.nonce.clone(),
        type_url: r.type_url.clone(),
        resource_names: names,
        ..Default::default()
    };
    let mut waiting_initial = 2;
    let mut eds_asked = false;
    while let Some(r) = responses.message().await? {
        if r.type_url == CLUSTER && r.version_info == target {
            tx.send(ack(&r, vec![])).await?;
            done.send(Instant::now()).await?;
            continue;
        }
        let names = if r.type_url == ENDPOINT {
            eds.clone()
        } else {
            vec![]
        };
        tx.send(ack(&r, names)).await?;
        if !eds_asked {
            eds_asked = true;
            tx.send(DiscoveryRequest {
                type_url: ENDPOINT.to_owned(),
                resource_names: eds.clone(),
                ..Default::default()
            })
            .await?;
        }
        if waiting_initial > 0 {
            waiting_initial -= 1;
            if waiting_initial == 0 {
                ready.send(()).await?;
            }
        }
    }
    Ok(())
}

/// `services` clusters (EDS) and their assignments with `endpoints` endpoints each; `tag`
/// changes the first cluster only (a one-service change).
fn snapshot(services: usize, endpoints: usize, tag: &str) -> Snapshot {
    let clusters = (0..services).map(|i| {
        let name = format!("svc-{i}");
        let c = Cluster {
            name: name.clone(),
            alt_stat_name: if i == 0 {
                tag.to_owned()
            } else {
                String::new()
            },
            ..Default::default()
        };
        (name, pack_any(c))
    });
    let assignments = (0..services).map(|i| {
        let name = format!("svc-{i}");
        let lb_endpoints = (0..endpoints)
            .map(|e| LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                            SocketAddress {
                                address: format!("10.{}.{}.{}", i / 256 % 256, i % 256, e),
                                port_specifier: Some(socket_address::PortSpecifier::PortValue(8080)),
                                ..Default::default()
                            },
                        )),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect();
        let cla = ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        };
        (name, pack_any(cla))
    });
    Snapshot::new()
        .with(CLUSTER, clusters)
        .with(ENDPOINT, assignments)
}

/// The control plane's own build path: model resources (parsed from YAML: one listener, one
/// route table with a route per service, `services` clusters with 10 endpoints each) →
/// `serve::snapshot`. Returns the first build (every resource encoded) and the median of 5
/// rebuilds after one endpoint changed (encodings reused).
fn model_build(services: usize) -> (Duration, Duration) {
    use std::fmt::Write;
    let yaml = |port: u16| {
        let mut y = String::from(
            "listeners:\n  - { name: l, address: 127.0.0.1:0, http: { route_table: t } }\n\
             route_tables:\n  - name: t\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n",
        );
        for i in 0..services {
            let _ = writeln!(
                y,
                "          - {{ match: {{ prefix: /svc-{i}/ }}, cluster: svc-{i} }}"
            );
        }
        y.push_str("clusters:\n");
        for i in 0..services {
            let eps: Vec<String> = (0..10)
                .map(|e| {
                    format!(
                        "10.{}.{}.{e}:{}",
                        i / 256 % 256,
                        i % 256,
                        if i == 0 && e == 0 { port } else { 8080 }
                    )
                })
                .collect();
            let _ = writeln!(
                y,
                "  - {{ name: svc-{i}, endpoints: [{}] }}",
                eps.join(", ")
            );
        }
        y
    };
    let resources = |port| match sluice_config::parse(&yaml(port), "bench.yaml") {
        Ok(c) => c.resources(),
        Err(e) => panic!("bench config: {e}"),
    };
    let (first, second) = (resources(8080), resources(8081));
    let mut next = sluice_control_plane::serve::Encoded::new();
    let start = Instant::now();
    std::hint::black_box(sluice_control_plane::serve::snapshot(
        &first,
        &Default::default(),
        &mut next,
    ));
    let cold = start.elapsed();
    let mut warm: Vec<Duration> = (0..5)
        .map(|i| {
            let last = std::mem::take(&mut next);
            let rs = if i % 2 == 0 { &second } else { &first };
            let start = Instant::now();
            std::hint::black_box(sluice_control_plane::serve::snapshot(rs, &last, &mut next));
            start.elapsed()
        })
        .collect();
    warm.sort();
    (cold, warm[2])
}

fn rss_kib(status: &str) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
