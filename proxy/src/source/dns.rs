//! The DNS source: one task per DNS cluster (`discovery: { type: strict_dns | logical_dns |
//! dns_srv }`) on the control thread's runtime resolves the cluster's names with
//! hickory-resolver and hands the control loop a `ClusterLoadAssignment` whenever the answer
//! changes; the control loop applies it through the state's one writer, like any source's
//! update. Tasks start, restart and stop as DNS clusters appear, change and go in the live
//! resources (whatever source brought them).
//!
//! Re-resolution follows the records' TTL (the resolver's cache counts it down), clamped to
//! `[min_refresh, max_refresh]`. A failed resolution (timeout, SERVFAIL, NXDOMAIN, no usable
//! records) keeps the last good endpoints, is counted
//! (`sluice_dns_resolutions_total{cluster, result="failure"}`) and logged, and is retried after
//! `min_refresh`, doubling per consecutive failure up to `max_refresh`.

use crate::metrics::{DnsCounters, Metrics};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use sluice_config::{
    AddressFamily, ClusterLoadAssignment, Discovery, DiscoveryType, DnsName, Endpoint, Resource,
    ResourceKey, Update,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What a cluster's task reports.
#[derive(Debug)]
pub(crate) struct Resolved {
    cluster: String,
    /// Which task (a restarted task's predecessor may still have a report queued).
    task: u64,
    /// The new endpoints; `None` when nothing changed (a first resolution that failed).
    endpoints: Option<Vec<Endpoint>>,
}

/// The running DNS tasks, by cluster.
#[derive(Debug)]
pub(crate) struct DnsSource {
    tasks: HashMap<String, Task>,
    tx: mpsc::UnboundedSender<Resolved>,
    metrics: Arc<Metrics>,
    next_task: u64,
    /// Clusters whose first resolution has not finished (the proxy is not ready until the ones
    /// of the first config have).
    warming: HashSet<String>,
}

#[derive(Debug)]
struct Task {
    discovery: Discovery,
    id: u64,
    handle: JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl DnsSource {
    /// A source with no task; reports arrive on the receiver.
    pub(crate) fn new(metrics: Arc<Metrics>) -> (Self, mpsc::UnboundedReceiver<Resolved>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let source = DnsSource {
            tasks: HashMap::new(),
            tx,
            metrics,
            next_task: 1,
            warming: HashSet::new(),
        };
        (source, rx)
    }

    /// Starts, restarts and stops tasks to match the DNS clusters among `live` (call on the
    /// control runtime after every applied update). A restarted cluster keeps its endpoints
    /// until its new task answers.
    pub(crate) fn sync(&mut self, live: &BTreeMap<ResourceKey, Resource>) {
        let wanted: HashMap<&str, &Discovery> = live
            .values()
            .filter_map(|r| match r {
                Resource::Cluster(c) => c.discovery.as_ref().map(|d| (c.name.as_str(), d)),
                _ => None,
            })
            .collect();
        self.tasks.retain(|name, task| {
            let keep = wanted.get(name.as_str()) == Some(&&task.discovery);
            if !keep {
                tracing::info!(cluster = %name, "dns discovery: stopping resolution");
            }
            keep
        });
        self.warming.retain(|name| self.tasks.contains_key(name));
        for (name, discovery) in wanted {
            if self.tasks.contains_key(name) {
                continue;
            }
            let id = self.next_task;
            self.next_task += 1;
            let counters = self.metrics.dns.counters(name);
            let handle = match resolver(discovery) {
                Ok(resolver) => {
                    tracing::info!(cluster = %name, kind = discovery.kind.as_str(), names = ?discovery.names, "dns discovery: starting resolution");
                    self.warming.insert(name.to_string());
                    tokio::spawn(run(
                        name.to_string(),
                        discovery.clone(),
                        resolver,
                        id,
                        self.tx.clone(),
                        counters,
                    ))
                }
                Err(e) => {
                    // No system configuration to read (`/etc/resolv.conf`), say: nothing to
                    // wait for; the cluster keeps its endpoints until its config changes.
                    counters.failure.inc();
                    tracing::warn!(cluster = %name, error = %e, "dns discovery: cannot build a resolver; the cluster keeps its endpoints");
                    tokio::spawn(async {})
                }
            };
            self.tasks.insert(
                name.to_string(),
                Task {
                    discovery: discovery.clone(),
                    id,
                    handle,
                },
            );
        }
    }

    /// Turns a task's report into the update for the writer (`None`: nothing to apply, or the
    /// report is from a task since stopped).
    pub(crate) fn accept(&mut self, r: Resolved) -> Option<Update> {
        if self.tasks.get(&r.cluster).map(|t| t.id) != Some(r.task) {
            return None;
        }
        self.warming.remove(&r.cluster);
        let endpoints = r.endpoints?;
        Some(Update {
            upserts: vec![Resource::Endpoints(ClusterLoadAssignment {
                cluster_name: r.cluster,
                endpoints,
            })],
            removals: Vec::new(),
        })
    }

    /// True while some cluster's first resolution has not finished.
    pub(crate) fn warming(&self) -> bool {
        !self.warming.is_empty()
    }
}

/// A resolver for one cluster: its own servers (or the system's), its timeout and family,
/// and a cache that never keeps an answer longer than `max_refresh` (nor a failure longer
/// than `min_refresh`).
fn resolver(d: &Discovery) -> Result<TokioResolver, String> {
    let mut builder = if d.resolvers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| e.to_string())?
    } else {
        let servers = d
            .resolvers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        let mut b = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        b.options_mut().use_hosts_file = ResolveHosts::Never;
        b
    };
    let o: &mut ResolverOpts = builder.options_mut();
    o.timeout = d.timeout.get();
    o.attempts = 2;
    o.ip_strategy = match d.family {
        AddressFamily::Auto => LookupIpStrategy::Ipv4AndIpv6,
        AddressFamily::V4 => LookupIpStrategy::Ipv4Only,
        AddressFamily::V6 => LookupIpStrategy::Ipv6Only,
    };
    o.positive_max_ttl = Some(d.max_refresh.get());
    o.negative_max_ttl = Some(d.min_refresh.get());
    builder.build().map_err(|e| e.to_string())
}

/// One cluster's resolution loop.
async fn run(
    cluster: String,
    d: Discovery,
    resolver: TokioResolver,
    task: u64,
    tx: mpsc::UnboundedSender<Resolved>,
    counters: DnsCounters,
) {
    let with_port = d.kind != DiscoveryType::DnsSrv;
    let names: Vec<Option<DnsName>> = d
        .names
        .iter()
        .map(|n| DnsName::parse(n, with_port).ok())
        .collect();
    // The last good answer of each name: a name that fails keeps its previous addresses.
    let mut answers: Vec<Option<Vec<(SocketAddr, u32)>>> = vec![None; names.len()];
    let mut sent: Option<Vec<Endpoint>> = None;
    let mut failures: u32 = 0;
    let mut first = true;
    loop {
        let mut ttl: Option<u32> = None;
        let mut failed = false;
        for (name, answer) in names.iter().zip(answers.iter_mut()) {
            let result = match name {
                Some(n) => lookup(&resolver, d.kind, n).await,
                None => Err("invalid name".to_string()),
            };
            match result {
                Ok((addrs, t)) => {
                    counters.success.inc();
                    ttl = Some(ttl.map_or(t, |m| m.min(t)));
                    *answer = Some(addrs);
                }
                Err(e) => {
                    counters.failure.inc();
                    failed = true;
                    let name = name.as_ref().map(|n| n.host.as_str()).unwrap_or("?");
                    tracing::warn!(cluster = %cluster, name, error = %e, "dns discovery: resolution failed; keeping the last good endpoints");
                }
            }
        }
        let endpoints = assignment(d.kind, &answers);
        let changed = answers.iter().any(Option::is_some) && sent.as_ref() != Some(&endpoints);
        if changed {
            tracing::info!(cluster = %cluster, endpoints = ?endpoints.iter().map(|e| e.address).collect::<Vec<_>>(), "dns discovery: endpoints changed");
            sent = Some(endpoints.clone());
        }
        if changed || first {
            let report = Resolved {
                cluster: cluster.clone(),
                task,
                endpoints: changed.then_some(endpoints),
            };
            if tx.send(report).is_err() {
                return;
            }
        }
        first = false;
        let wait = if failed {
            failures = failures.saturating_add(1);
            retry_after(failures, d.min_refresh.get(), d.max_refresh.get())
        } else {
            failures = 0;
            refresh_after(ttl, d.min_refresh.get(), d.max_refresh.get())
        };
        tokio::time::sleep(wait).await;
    }
}

/// Resolves one name: (address, weight) pairs and the smallest TTL among the records used.
async fn lookup(
    resolver: &TokioResolver,
    kind: DiscoveryType,
    name: &DnsName,
) -> Result<(Vec<(SocketAddr, u32)>, u32), String> {
    match (kind, name.port) {
        (DiscoveryType::DnsSrv, _) | (_, None) => srv(resolver, &name.host).await,
        (_, Some(port)) => {
            let (ips, ttl) = addresses(resolver, &name.host).await?;
            Ok((
                ips.into_iter()
                    .map(|ip| (SocketAddr::new(ip, port), 1))
                    .collect(),
                ttl,
            ))
        }
    }
}

/// The A/AAAA addresses of `host` (by the resolver's family strategy) and their smallest TTL.
async fn addresses(resolver: &TokioResolver, host: &str) -> Result<(Vec<IpAddr>, u32), String> {
    let found = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
    let mut ttl = u32::MAX;
    let mut ips = Vec::new();
    for r in found.as_lookup().answers() {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        ttl = ttl.min(r.ttl);
        ips.push(ip);
    }
    if ips.is_empty() {
        return Err(format!("no address records for `{host}`"));
    }
    Ok((ips, ttl))
}

/// The endpoints of an SRV name: the records of the lowest priority present, each target's
/// addresses at the record's port, weighted by the record's weight (0 counts as 1).
async fn srv(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<(SocketAddr, u32)>, u32), String> {
    let found = resolver.srv_lookup(name).await.map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    let mut ttl = u32::MAX;
    for r in found.answers() {
        if let RData::SRV(s) = &r.data
            && !s.target.is_root()
        {
            ttl = ttl.min(r.ttl);
            records.push(s.clone());
        }
    }
    let Some(lowest) = records.iter().map(|s| s.priority).min() else {
        return Err(format!("no usable SRV records for `{name}`"));
    };
    let mut out = Vec::new();
    let mut last_error = None;
    for s in records.iter().filter(|s| s.priority == lowest) {
        match addresses(resolver, &s.target.to_ascii()).await {
            Ok((ips, t)) => {
                ttl = ttl.min(t);
                let weight = u32::from(s.weight.max(1));
                out.extend(
                    ips.into_iter()
                        .map(|ip| (SocketAddr::new(ip, s.port), weight)),
                );
            }
            Err(e) => last_error = Some(e),
        }
    }
    match (out.is_empty(), last_error) {
        (true, Some(e)) => Err(format!("no SRV target of `{name}` resolved: {e}")),
        _ => Ok((out, ttl)),
    }
}

/// The endpoints for the answers so far (one entry per name, `None` while a name has never
/// resolved). `logical_dns`: the first address only. Otherwise every address once, sorted so
/// that a server rotating its records' order does not look like a change.
fn assignment(kind: DiscoveryType, answers: &[Option<Vec<(SocketAddr, u32)>>]) -> Vec<Endpoint> {
    let all = answers.iter().flatten().flatten();
    if kind == DiscoveryType::LogicalDns {
        return all
            .take(1)
            .map(|&(address, _)| Endpoint {
                address,
                weight: 1,
                zone: None,
            })
            .collect();
    }
    let mut seen = HashSet::new();
    let mut out: Vec<Endpoint> = all
        .filter(|(a, _)| seen.insert(*a))
        .map(|&(address, weight)| Endpoint {
            address,
            weight,
            zone: None,
        })
        .collect();
    out.sort_by_key(|e| e.address);
    out
}

/// When to resolve again after a success: the TTL, clamped to `[min, max]`.
fn refresh_after(ttl: Option<u32>, min: Duration, max: Duration) -> Duration {
    ttl.map_or(min, |t| Duration::from_secs(u64::from(t)))
        .clamp(min, max.max(min))
}

/// When to retry after `failures` consecutive failed resolutions: `min`, doubling per failure,
/// at most `max`.
fn retry_after(failures: u32, min: Duration, max: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    min.saturating_mul(factor).min(max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ttl_is_clamped_to_the_refresh_bounds() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(300));
        assert_eq!(refresh_after(Some(1), min, max), min);
        assert_eq!(refresh_after(Some(0), min, max), min);
        assert_eq!(refresh_after(Some(60), min, max), Duration::from_secs(60));
        assert_eq!(refresh_after(Some(86_400), min, max), max);
        assert_eq!(refresh_after(None, min, max), min);
    }

    #[test]
    fn failures_back_off_within_the_bounds() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(10));
        let waits: Vec<u64> = (1..=6)
            .map(|f| retry_after(f, min, max).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(retry_after(u32::MAX, min, max), max);
    }

    #[test]
    fn strict_takes_every_address_once_in_a_stable_order() {
        let answers = vec![
            Some(vec![(a("10.0.0.2:80"), 1), (a("10.0.0.1:80"), 1)]),
            None,
            Some(vec![(a("10.0.0.1:80"), 1), (a("10.0.0.3:81"), 1)]),
        ];
        let e = assignment(DiscoveryType::StrictDns, &answers);
        let addrs: Vec<_> = e.iter().map(|e| e.address).collect();
        assert_eq!(
            addrs,
            [a("10.0.0.1:80"), a("10.0.0.2:80"), a("10.0.0.3:81")]
        );
        // The order of the records does not matter.
        let rotated = vec![Some(vec![(a("10.0.0.1:80"), 1), (a("10.0.0.2:80"), 1)])];
        let once = vec![Some(vec![(a("10.0.0.2:80"), 1), (a("10.0.0.1:80"), 1)])];
        assert_eq!(
            assignment(DiscoveryType::StrictDns, &rotated),
            assignment(DiscoveryType::StrictDns, &once)
        );
    }

    #[test]
    fn logical_takes_the_first_address() {
        let answers = vec![Some(vec![(a("10.0.0.2:80"), 1), (a("10.0.0.1:80"), 1)])];
        let e = assignment(DiscoveryType::LogicalDns, &answers);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].address, a("10.0.0.2:80"));
        assert!(assignment(DiscoveryType::LogicalDns, &[None]).is_empty());
    }

    #[test]
    fn srv_weights_are_kept() {
        let answers = vec![Some(vec![
            (a("10.0.0.1:8080"), 30),
            (a("10.0.0.1:8081"), 10),
        ])];
        let e = assignment(DiscoveryType::DnsSrv, &answers);
        assert_eq!(
            e.iter()
                .map(|e| (e.address.port(), e.weight))
                .collect::<Vec<_>>(),
            [(8080, 30), (8081, 10)]
        );
    }

    fn live(yaml: &str) -> BTreeMap<ResourceKey, Resource> {
        sluice_config::parse(yaml, "t.yaml").unwrap().resources()
    }

    #[tokio::test]
    async fn tasks_follow_the_live_clusters() {
        let (mut dns, _rx) = DnsSource::new(Arc::new(Metrics::new()));
        let one = "clusters:\n  - { name: c, discovery: { type: strict_dns, names: ['b.test:1'], resolvers: ['127.0.0.1:9'] } }\n";
        dns.sync(&live(one));
        assert!(dns.warming());
        let id = dns.tasks["c"].id;
        dns.sync(&live(one));
        assert_eq!(dns.tasks["c"].id, id, "an unchanged cluster keeps its task");
        // A stale report (from a replaced task) is ignored; the current one is applied.
        let changed = one.replace("b.test:1", "b.test:2");
        dns.sync(&live(&changed));
        let new_id = dns.tasks["c"].id;
        assert_ne!(new_id, id, "a changed cluster restarts its task");
        let report = |task| Resolved {
            cluster: "c".into(),
            task,
            endpoints: Some(vec![Endpoint {
                address: a("127.0.0.1:2"),
                weight: 1,
                zone: None,
            }]),
        };
        assert!(dns.accept(report(id)).is_none());
        let u = dns.accept(report(new_id)).unwrap();
        assert_eq!(u.upserts.len(), 1);
        assert!(!dns.warming());
        dns.sync(&live(
            "clusters:\n  - { name: s, endpoints: [127.0.0.1:1] }\n",
        ));
        assert!(dns.tasks.is_empty(), "a removed DNS cluster stops its task");
    }
}
