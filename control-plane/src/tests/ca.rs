//! The built-in CA: who gets a certificate, what it is, rotation, and delivery over ADS.

use std::collections::BTreeMap;

use super::*;
use crate::ca::{BUNDLE_SECRET, CERT_SECRET, Ca, CaMetrics, CaSettings, Refusal};
use crate::cache::NodeKey;
use crate::snapshot::type_url::SECRET;
use sluice_config::{Resource, SecretKind};

const FRONTEND_TOKEN: &str = "frontend-token-0123456789";
const BACKEND_TOKEN: &str = "backend-token-0123456789";

fn settings(dir: &std::path::Path, ttl: &str) -> CaSettings {
    std::fs::write(dir.join("fe"), format!("{FRONTEND_TOKEN}\n")).unwrap();
    std::fs::write(dir.join("be"), BACKEND_TOKEN).unwrap();
    let yaml = format!(
        "trust_domain: sluice.local\nworkload_cert_ttl: {ttl}\nidentities:\n\
         \x20 - {{ namespace: demo, service_account: frontend, nodes: [frontend], token_file: fe }}\n\
         \x20 - {{ spiffe_id: spiffe://sluice.local/backend, nodes: [backends], token_file: be }}\n"
    );
    let mut s: CaSettings = serde_yaml_ng::from_str(&yaml).unwrap();
    s.resolve_paths(dir);
    s
}

fn key(id: &str, cluster: &str) -> NodeKey {
    NodeKey {
        id: id.into(),
        cluster: cluster.into(),
    }
}

/// The secrets in an encoded set, decoded back into the model.
fn secrets(resources: &crate::snapshot::Resources) -> BTreeMap<String, SecretKind> {
    resources
        .items()
        .iter()
        .map(|(name, r)| {
            let decoded = sluice_config::xds::decode(SECRET, &r.any).unwrap();
            let [Resource::Secret(s)] = decoded.as_slice() else {
                panic!("not one secret: {decoded:?}");
            };
            (name.clone(), s.kind.clone())
        })
        .collect()
}

fn chain(kind: &SecretKind) -> &str {
    match kind {
        SecretKind::Certificate { cert_chain, .. } => cert_chain,
        SecretKind::TrustBundle { .. } => panic!("not a certificate"),
    }
}

#[tokio::test]
async fn only_a_matching_token_from_an_allowed_node_gets_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&settings(dir.path(), "1h"), CaMetrics::default()).unwrap();
    assert!(ca.authorize(None, &key("frontend", "")).unwrap().is_none());
    assert_eq!(
        ca.authorize(Some("not-a-token-at-all"), &key("frontend", ""))
            .unwrap_err(),
        Refusal::UnknownToken
    );
    assert_eq!(
        ca.authorize(Some(FRONTEND_TOKEN), &key("backend", ""))
            .unwrap_err(),
        Refusal::NodeNotAllowed {
            identity: "spiffe://sluice.local/ns/demo/sa/frontend".into()
        }
    );
    let (id, rx) = ca
        .authorize(Some(FRONTEND_TOKEN), &key("frontend", ""))
        .unwrap()
        .unwrap();
    assert_eq!(id, "spiffe://sluice.local/ns/demo/sa/frontend");
    // A grant may name a node cluster.
    let (id, _) = ca
        .authorize(Some(BACKEND_TOKEN), &key("backend-7", "backends"))
        .unwrap()
        .unwrap();
    assert_eq!(id, "spiffe://sluice.local/backend");

    let got = secrets(&rx.borrow().resources);
    assert_eq!(got.keys().collect::<Vec<_>>(), [BUNDLE_SECRET, CERT_SECRET]);
    let Some(SecretKind::TrustBundle { ca: bundle }) = got.get(BUNDLE_SECRET) else {
        panic!("no bundle");
    };
    assert_eq!(bundle, ca.bundle_pem());
    assert!(chain(&got[CERT_SECRET]).starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn settings_errors_name_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), "1h");
    s.identities[1].spiffe_id = Some("spiffe://other.domain/x".into());
    let e = Ca::new(&s, CaMetrics::default()).unwrap_err();
    assert!(e.starts_with("ca.identities[1].spiffe_id:"), "{e}");
    let mut s = settings(dir.path(), "1h");
    std::fs::write(dir.path().join("be"), "short").unwrap();
    let e = Ca::new(&s, CaMetrics::default()).unwrap_err();
    assert!(e.contains("at least 16 characters"), "{e}");
    s.identities[1].token_file = dir.path().join("fe");
    let e = Ca::new(&s, CaMetrics::default()).unwrap_err();
    assert!(e.contains("the same token grants another identity"), "{e}");
    let mut s = settings(dir.path(), "1s");
    s.identities.clear();
    let e = Ca::new(&s, CaMetrics::default()).unwrap_err();
    assert!(e.starts_with("ca.workload_cert_ttl:"), "{e}");
    let mut s = settings(dir.path(), "1h");
    s.root_cert = Some(dir.path().join("root.pem"));
    let e = Ca::new(&s, CaMetrics::default()).unwrap_err();
    assert!(e.contains("both `root_cert` and `root_key`"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn certificates_are_replaced_at_seventy_percent_of_their_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = CaMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let ca = Ca::new(&settings(dir.path(), "100s"), metrics).unwrap();
    let (_, mut rx) = ca
        .authorize(Some(FRONTEND_TOKEN), &key("frontend", ""))
        .unwrap()
        .unwrap();
    let first = secrets(&rx.borrow_and_update().resources);
    tokio::spawn(ca.clone().rotate());
    let start = tokio::time::Instant::now();
    rx.changed().await.unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(70) && waited < Duration::from_secs(71),
        "rotated after {waited:?}"
    );
    let second = secrets(&rx.borrow_and_update().resources);
    assert_ne!(chain(&first[CERT_SECRET]), chain(&second[CERT_SECRET]));
    assert_eq!(first[BUNDLE_SECRET], second[BUNDLE_SECRET]);
    // And again 70 s later.
    rx.changed().await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(140));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"sluice_ca_certificates_issued_total{reason="rotation"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sluice_ca_certificates_issued_total{reason="new"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_stream_with_a_token_gets_its_certificate_over_ads_and_a_bad_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&settings(dir.path(), "1h"), CaMetrics::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = AdsServer::new(SnapshotCache::new()).with_ca(ca);
    tokio::spawn(crate::serve(listener, server.clone()));
    let h = Harness { server, addr };
    h.set(crate::cache::DEFAULT_KEY, Snapshot::new());

    let mut s = h
        .sotw_with_token(
            first("frontend", SECRET, &[CERT_SECRET, BUNDLE_SECRET]),
            FRONTEND_TOKEN,
        )
        .await
        .unwrap();
    let r = s.recv().await;
    assert_eq!(r.type_url, SECRET);
    let mut names: Vec<String> = r
        .resources
        .iter()
        .map(
            |a| match sluice_config::xds::decode(SECRET, a).unwrap().as_slice() {
                [Resource::Secret(s)] => s.name.clone(),
                other => panic!("{other:?}"),
            },
        )
        .collect();
    names.sort();
    assert_eq!(names, [BUNDLE_SECRET, CERT_SECRET]);
    let status = h.server.status();
    assert_eq!(
        status[0].identity.as_deref(),
        Some("spiffe://sluice.local/ns/demo/sa/frontend")
    );

    // Without a token: config, but no certificate.
    let mut plain = h.sotw(first("frontend", SECRET, &[CERT_SECRET])).await;
    assert!(plain.recv().await.resources.is_empty());

    let refused = match h
        .sotw_with_token(
            first("frontend", SECRET, &[CERT_SECRET]),
            "wrong-token-0123456789",
        )
        .await
    {
        Ok(mut s) => s.rx.message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let other_node = match h
        .sotw_with_token(first("backend", SECRET, &[CERT_SECRET]), FRONTEND_TOKEN)
        .await
    {
        Ok(mut s) => s.rx.message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(other_node.code(), tonic::Code::PermissionDenied);
}
