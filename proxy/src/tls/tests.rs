//! The TLS store fed by SDS secrets: pending until they arrive, real mTLS handshakes with
//! them on both sides, rotation without a rebuild of the listener or cluster, bad secrets
//! refused.

use super::*;
use crate::metrics::TlsMetrics;
use sluice_config::{CertificateFiles, ClientCertificate, PrivateKeyPem};
use tokio::net::{TcpListener, TcpStream};

const FRONTEND: &str = "spiffe://sluice.local/ns/demo/sa/frontend";
const BACKEND: &str = "spiffe://sluice.local/ns/demo/sa/backend";

struct Root {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

fn root() -> Root {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).unwrap();
    Root {
        issuer: rcgen::Issuer::new(params, key),
        pem: cert.pem(),
    }
}

/// A certificate secret named `name` for `spiffe_id`, signed by `root`.
fn leaf(root: &Root, name: &str, spiffe_id: &str) -> Secret {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe_id.try_into().unwrap())];
    let cert = params.signed_by(&key, &root.issuer).unwrap();
    Secret {
        name: name.into(),
        kind: SecretKind::Certificate {
            cert_chain: cert.pem(),
            private_key: PrivateKeyPem(key.serialize_pem()),
        },
    }
}

fn bundle(root: &Root) -> Secret {
    Secret {
        name: "ROOTCA".into(),
        kind: SecretKind::TrustBundle {
            ca: root.pem.clone(),
        },
    }
}

fn server_settings() -> DownstreamTls {
    DownstreamTls {
        certificates: vec![CertificateFiles {
            cert: None,
            key: None,
            secret: Some("server-cert".into()),
            server_names: Vec::new(),
        }],
        client_certificate: ClientCertificate::Required,
        client_ca: None,
        client_ca_secret: Some("ROOTCA".into()),
        alpn: vec!["http/1.1".into()],
        min_version: TlsVersion::Tls13,
        handshake_timeout: sluice_config::Duration::from_secs(5),
        forward_client_cert: Default::default(),
    }
}

fn client_settings() -> UpstreamTls {
    UpstreamTls {
        sni: None,
        ca: None,
        ca_secret: Some("ROOTCA".into()),
        verify_subject_alt_names: vec![BACKEND.into()],
        cert: None,
        key: None,
        cert_secret: Some("client-cert".into()),
        min_version: TlsVersion::Tls13,
    }
}

/// One mTLS handshake between the two entries: the identities each side saw.
async fn handshake(server: &ServerTls, client: &ClientTls) -> Result<(String, String), String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = async {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(tcp, server).await.map_err(|e| format!("{e:?}"))
    };
    let connecting = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        UpstreamIo::tls(tcp, client, Alpn::None)
            .await
            .map_err(|e| e.to_string())
    };
    let (accepted, connected) = tokio::join!(accepting, connecting);
    let (_, info) = accepted?;
    let UpstreamIo::Tls(stream) = connected? else {
        return Err("not TLS".into());
    };
    let server_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| load::info(c))
        .and_then(|i| i.spiffe_id().map(str::to_string))
        .unwrap_or_default();
    Ok((info.peer_identity.unwrap_or_default(), server_cert))
}

#[tokio::test]
async fn entries_wait_for_their_secrets_then_handshake_with_them() {
    let store = TlsStore::new(TlsMetrics::default());
    let server = store.server(&server_settings()).unwrap();
    let client = store.client(&client_settings(), None).unwrap();
    // Accepted, but pending: handshakes fail with a clear error.
    assert!(server.entry.current().is_none());
    assert!(client.entry.current().is_none());
    let err = handshake(&server, &client).await.unwrap_err();
    assert!(err.contains("SDS secret"), "{err}");

    let ca = root();
    assert!(store.set_secret(&bundle(&ca)).unwrap());
    assert!(
        store
            .set_secret(&leaf(&ca, "server-cert", BACKEND))
            .unwrap()
    );
    assert!(server.entry.current().is_some());
    assert!(client.entry.current().is_none(), "still waits for its own");
    assert!(
        store
            .set_secret(&leaf(&ca, "client-cert", FRONTEND))
            .unwrap()
    );
    assert_eq!(
        handshake(&server, &client).await.unwrap(),
        (FRONTEND.to_string(), BACKEND.to_string())
    );
    assert_eq!(
        server.identity().load_full().as_deref().map(String::as_str),
        Some(BACKEND)
    );
    // The same secret again changes nothing.
    assert!(!store.set_secret(&bundle(&ca)).unwrap());
}

#[tokio::test]
async fn a_rotated_secret_replaces_the_config_in_place_and_a_bad_one_is_refused() {
    let store = TlsStore::new(TlsMetrics::default());
    let ca = root();
    for s in [
        bundle(&ca),
        leaf(&ca, "server-cert", BACKEND),
        leaf(&ca, "client-cert", FRONTEND),
    ] {
        store.set_secret(&s).unwrap();
    }
    let server = store.server(&server_settings()).unwrap();
    let client = store.client(&client_settings(), None).unwrap();
    let before = server.entry.current().unwrap();
    handshake(&server, &client).await.unwrap();

    store
        .set_secret(&leaf(&ca, "server-cert", BACKEND))
        .unwrap();
    let after = server.entry.current().unwrap();
    assert!(!Arc::ptr_eq(&before, &after), "not rebuilt");
    handshake(&server, &client).await.unwrap();

    // A key that is not the certificate's: refused, the last good one stays.
    let (a, b) = (
        leaf(&ca, "server-cert", BACKEND),
        leaf(&ca, "server-cert", BACKEND),
    );
    let (SecretKind::Certificate { cert_chain, .. }, SecretKind::Certificate { private_key, .. }) =
        (a.kind, b.kind)
    else {
        unreachable!()
    };
    let mismatched = Secret {
        name: "server-cert".into(),
        kind: SecretKind::Certificate {
            cert_chain,
            private_key,
        },
    };
    let e = store.set_secret(&mismatched).unwrap_err();
    assert!(e.contains("not the certificate's"), "{e}");
    assert!(Arc::ptr_eq(&after, &server.entry.current().unwrap()));
    handshake(&server, &client).await.unwrap();

    // A server certificate from another CA fails the client's check against the bundle.
    store
        .set_secret(&leaf(&root(), "server-cert", BACKEND))
        .unwrap();
    assert!(handshake(&server, &client).await.is_err());
}

#[test]
fn a_secret_of_the_wrong_kind_is_an_error_naming_it() {
    let store = TlsStore::new(TlsMetrics::default());
    let ca = root();
    let mut wrong = leaf(&ca, "ROOTCA", BACKEND);
    wrong.name = "ROOTCA".into();
    store.set_secret(&wrong).unwrap();
    store
        .set_secret(&leaf(&ca, "server-cert", BACKEND))
        .unwrap();
    let e = store.server(&server_settings()).unwrap_err();
    assert!(
        e.contains("secret `ROOTCA` is a certificate, not a trust bundle"),
        "{e}"
    );
}
