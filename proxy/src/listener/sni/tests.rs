use super::*;
use crate::metrics::SNI_UNMATCHED_REASONS;

/// A ClientHello `openssl s_client -servername A.Example -alpn h2,http/1.1` sent (OpenSSL
/// 3.0), as read from the socket.
const OPENSSL_HELLO: &[u8] = include_bytes!("openssl_client_hello.bin");

fn hello(server_name: Option<&str>, alpn: &[&str]) -> Inspected {
    Inspected::Hello(ClientHello {
        server_name: server_name.map(str::to_string),
        alpn: alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
    })
}

/// A ClientHello record with the given extensions (type, body).
fn build(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]); // random
    body.push(32); // session id
    body.extend_from_slice(&[1; 32]);
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]); // cipher suites
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut ext = Vec::new();
    for (kind, data) in extensions {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(data);
    }
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![CLIENT_HELLO];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![HANDSHAKE, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

fn sni_ext(name: &[u8]) -> (u16, Vec<u8>) {
    let mut entry = vec![0];
    entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
    entry.extend_from_slice(name);
    let mut data = (entry.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&entry);
    (EXT_SERVER_NAME, data)
}

#[test]
fn reads_server_name_and_alpn_of_a_real_client_hello() {
    assert_eq!(
        inspect(OPENSSL_HELLO),
        hello(Some("a.example"), &["h2", "http/1.1"])
    );
}

#[test]
fn every_truncation_of_a_real_client_hello_asks_for_more() {
    for n in 0..OPENSSL_HELLO.len() {
        assert_eq!(
            inspect(&OPENSSL_HELLO[..n]),
            Inspected::Incomplete,
            "{n} bytes"
        );
    }
    // Bytes after the record (the client's next flight) change nothing.
    let mut more = OPENSSL_HELLO.to_vec();
    more.extend_from_slice(b"\x14\x03\x03\x00\x01\x01");
    assert_eq!(
        inspect(&more),
        hello(Some("a.example"), &["h2", "http/1.1"])
    );
}

#[test]
fn not_tls_is_told_from_the_first_byte() {
    assert_eq!(inspect(b"G"), Inspected::NotTls);
    assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), Inspected::NotTls);
    assert_eq!(inspect(b"SSH-2.0-OpenSSH"), Inspected::NotTls);
    assert_eq!(inspect(b"\x16\x04"), Inspected::NotTls);
    assert_eq!(inspect(b""), Inspected::Incomplete);
    assert_eq!(inspect(b"\x16"), Inspected::Incomplete);
}

#[test]
fn malformed_records_are_told_early() {
    // Not a ClientHello (a ServerHello), decided on the sixth byte.
    assert_eq!(inspect(b"\x16\x03\x03\x00\x40\x02"), Inspected::Malformed);
    // Empty and oversized records.
    assert_eq!(inspect(b"\x16\x03\x01\x00\x00"), Inspected::Malformed);
    assert_eq!(inspect(b"\x16\x03\x01\x40\x01\x01"), Inspected::Malformed);
    // The largest record is read to its end.
    assert_eq!(inspect(b"\x16\x03\x01\x40\x00\x01"), Inspected::Incomplete);
}

#[test]
fn a_client_hello_split_across_records_is_malformed() {
    // The first record holds only the first 100 bytes of the handshake message.
    let whole = &OPENSSL_HELLO[5..];
    let mut first = vec![HANDSHAKE, 3, 1, 0, 100];
    first.extend_from_slice(&whole[..100]);
    assert_eq!(inspect(&first), Inspected::Malformed);
}

#[test]
fn synthetic_client_hellos() {
    assert_eq!(inspect(&build(&[])), hello(None, &[]));
    assert_eq!(
        inspect(&build(&[sni_ext(b"Api.Example.COM.")])),
        hello(Some("api.example.com"), &[])
    );
    // Other name types are skipped; a host name that is not one, or two SNI extensions, make
    // the hello malformed.
    let mut other = sni_ext(b"a.example");
    other.1[2] = 1;
    assert_eq!(inspect(&build(&[other])), hello(None, &[]));
    assert_eq!(inspect(&build(&[sni_ext(b"a b")])), Inspected::Malformed);
    assert_eq!(inspect(&build(&[sni_ext(b"")])), Inspected::Malformed);
    assert_eq!(
        inspect(&build(&[sni_ext(b"a.example"), sni_ext(b"b.example")])),
        Inspected::Malformed
    );
    // Unknown extensions are skipped; an empty ALPN protocol is malformed.
    assert_eq!(
        inspect(&build(&[(0xfe0d, vec![1, 2, 3]), sni_ext(b"x.y")])),
        hello(Some("x.y"), &[])
    );
    assert_eq!(
        inspect(&build(&[(EXT_ALPN, vec![0, 1, 0])])),
        Inspected::Malformed
    );
    // No extensions block at all (old clients).
    let mut bare = build(&[]);
    bare.truncate(bare.len() - 2);
    let hs_len = bare.len() - 9;
    bare[6..9].copy_from_slice(&(hs_len as u32).to_be_bytes()[1..]);
    bare[3..5].copy_from_slice(&((hs_len + 4) as u16).to_be_bytes());
    assert_eq!(inspect(&bare), hello(None, &[]));
}

/// Random mutations of real and synthetic hellos (bytes flipped, set, dropped, inserted) must
/// never panic. A cheap, deterministic stand-in for a fuzz target.
#[test]
fn mutated_client_hellos_never_panic() {
    let seeds = [
        OPENSSL_HELLO.to_vec(),
        build(&[sni_ext(b"a.example"), (EXT_ALPN, vec![0, 3, 2, b'h', b'2'])]),
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut decided = 0;
    for i in 0..20_000 {
        let mut b = seeds[i % seeds.len()].clone();
        for _ in 0..=next() % 4 {
            let at = (next() as usize) % b.len().max(1);
            match next() % 4 {
                0 if at < b.len() => b[at] ^= 1 << (next() % 8),
                1 if at < b.len() => b[at] = next() as u8,
                2 if at < b.len() => {
                    b.remove(at);
                }
                _ => b.insert(at, next() as u8),
            }
        }
        if inspect(&b) != Inspected::Incomplete {
            decided += 1;
        }
    }
    assert!(decided > 0);
}

#[test]
fn reasons_are_the_metric_labels() {
    for why in [
        Unmatched::NoSni,
        Unmatched::NoMatch,
        Unmatched::NotTls,
        Unmatched::Malformed,
        Unmatched::Timeout,
        Unmatched::ClientClosed,
    ] {
        assert!(SNI_UNMATCHED_REASONS.contains(&why.as_str()), "{why:?}");
    }
}

#[test]
fn routes_exact_first_then_the_longest_wildcard() {
    let metrics = Metrics::new();
    let mut clusters = Registry::new(Arc::new(Metrics::new()), 1);
    let route = |names: &[&str], cluster: &str| config::SniRoute {
        server_names: names.iter().map(|n| n.to_string()).collect(),
        cluster: cluster.into(),
    };
    let mut t = config::TcpListener::new("unused");
    t.cluster = None;
    t.sni = vec![
        route(&["A.example.com"], "exact"),
        route(&["*.EXAMPLE.com"], "short"),
        route(&["*.b.example.com", "x.b.example.com"], "long"),
    ];
    let routes = SniRoutes::compile("l", &t, &mut clusters, &metrics).unwrap();
    let pick = |n: &str| routes.route(n).map(|c| c.name.clone());
    assert_eq!(pick("a.example.com").as_deref(), Some("exact"));
    assert_eq!(pick("z.a.example.com").as_deref(), Some("short"));
    assert_eq!(pick("c.example.com").as_deref(), Some("short"));
    assert_eq!(pick("c.b.example.com").as_deref(), Some("long"));
    assert_eq!(pick("d.c.b.example.com").as_deref(), Some("long"));
    assert_eq!(pick("x.b.example.com").as_deref(), Some("long"));
    // A wildcard needs at least one label before its suffix.
    assert_eq!(pick("example.com"), None);
    assert_eq!(pick("b.example.com").as_deref(), Some("short"));
    assert_eq!(pick("other.org"), None);
    assert_eq!(pick(""), None);
    assert_eq!(pick("."), None);
    let text = metrics.encode_text();
    assert!(
        text.contains("sluice_tcp_sni_routed_total{listener=\"l\",cluster=\"long\"} 3"),
        "{text}"
    );
    routes.unmatched(Unmatched::NoSni);
    assert!(metrics.encode_text().contains(
        "sluice_tcp_sni_unmatched_total{listener=\"l\",reason=\"no_sni\",action=\"closed\"} 1"
    ));
    assert_eq!(routes.timeout, Duration::from_secs(5));
}

#[tokio::test]
async fn reads_until_the_hello_is_whole_and_keeps_every_byte() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut c = TcpStream::connect(addr).await.unwrap();
        // In three writes, flushed one by one.
        for part in OPENSSL_HELLO.chunks(120) {
            c.write_all(part).await.unwrap();
            c.flush().await.unwrap();
        }
        c
    });
    let (mut s, _) = l.accept().await.unwrap();
    let (buf, decided) = read_client_hello(&mut s, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(buf, OPENSSL_HELLO);
    assert_eq!(decided, Some(hello(Some("a.example"), &["h2", "http/1.1"])));
    drop(client.await.unwrap());
}

#[tokio::test]
async fn a_silent_client_times_out_with_what_it_sent() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    let (mut s, _) = l.accept().await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        c.write_all(&OPENSSL_HELLO[..10]).await.unwrap();
    }
    let (buf, decided) = read_client_hello(&mut s, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(decided, None);
    assert_eq!(buf, &OPENSSL_HELLO[..10]);
    // A client that closes without a byte: decided `Incomplete` with nothing read.
    let c2 = TcpStream::connect(addr).await.unwrap();
    let (mut s2, _) = l.accept().await.unwrap();
    drop(c2);
    let (buf, decided) = read_client_hello(&mut s2, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(buf.is_empty());
    assert_eq!(decided, Some(Inspected::Incomplete));
}
