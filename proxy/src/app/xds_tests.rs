//! The proxy with a bootstrap file and an xDS server together: the sources own their
//! resources. The ADS server and the decoder are the xDS client's test fixtures
//! (`source/xds/tests.rs`: a hand-written tonic server; a decoder that reads a cluster's name
//! and an assignment's endpoints only).

use super::{Options, Proxy};
use crate::source::Source;
use crate::source::xds::tests::{assert_ack, cla, cluster, names, options, response, server};
use crate::source::xds::{CLUSTER, ENDPOINT, LISTENER};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_proxy_with_a_static_bootstrap_owns_resources_by_source() {
    let (addr, mut conns) = server().await;
    let dir = std::env::temp_dir().join(format!(
        "sluice-xds-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bootstrap.yaml");
    let bootstrap = |port: u16| {
        format!(
            "admin: {{ address: 127.0.0.1:0 }}\nclusters:\n  - {{ name: static, endpoints: [127.0.0.1:{port}] }}\n"
        )
    };
    std::fs::write(&file, bootstrap(7)).unwrap();
    let mut xds = options(addr);
    xds.initial_fetch_timeout = Duration::from_secs(300);
    let proxy = Proxy::start(Options {
        source: Source::File(file.clone()),
        workers: 1,
        drain_timeout: Duration::from_secs(1),
        handle_signals: false,
        watch: false,
        filters: Vec::new(),
        xds: Some(xds),
        log_level: None,
    })
    .unwrap();
    assert!(!proxy.live().is_ready(), "xDS warming");

    let mut conn = conns.recv().await.unwrap();
    conn.next().await;
    conn.next().await;
    // `static` is the file's: xDS may not replace it; `dyn` applies.
    conn.send(response(
        CLUSTER,
        "c1",
        "n1",
        vec![cluster("static"), cluster("dyn")],
    ));
    let nack = conn.next().await;
    assert_eq!(nack.version_info, "");
    let message = nack.error_detail.expect("NACK").message;
    assert_eq!(
        message,
        r#"cluster "static" rejected: a static resource (from the bootstrap file) has this name"#
    );
    let eds = conn.next().await;
    assert_eq!(names(&eds), ["dyn"], "only xDS's own clusters take EDS");
    let clusters = &proxy.live().snapshot().clusters;
    assert!(clusters.contains_key("dyn") && clusters.contains_key("static"));
    assert_eq!(
        proxy.live().snapshot().clusters["static"]
            .endpoints()
            .endpoints[0]
            .address
            .port(),
        7
    );

    conn.send(response(ENDPOINT, "e1", "n2", vec![cla("dyn", &[(9, 1)])]));
    assert_ack(&conn.next().await, ENDPOINT, "e1", "n2");
    assert!(!proxy.live().is_ready(), "no LDS response yet");
    conn.send(response(LISTENER, "l1", "n3", vec![]));
    assert_ack(&conn.next().await, LISTENER, "l1", "n3");
    assert!(
        proxy.live().is_ready(),
        "ready with the first complete config"
    );

    // A file reload changes only the file's resources: xDS's stay.
    std::fs::write(&file, bootstrap(8)).unwrap();
    tokio::task::block_in_place(|| proxy.reload()).unwrap();
    let snapshot = proxy.live().snapshot();
    assert!(
        snapshot.clusters["dyn"].settings().is_some(),
        "xDS cluster kept"
    );
    assert_eq!(snapshot.clusters["dyn"].endpoints().endpoints.len(), 1);
    assert_eq!(
        snapshot.clusters["static"].endpoints().endpoints[0]
            .address
            .port(),
        8
    );
    proxy.shutdown();
    tokio::task::block_in_place(|| proxy.wait());
    let _ = std::fs::remove_dir_all(dir);
}
