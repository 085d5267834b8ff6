//! WebSocket upgrades (a real client, tungstenite) and TCP listeners.

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use std::io::{Read, Write};
use tokio_tungstenite::tungstenite::Message;

fn setup() -> InProcess {
    let web = echo("ws");
    let h2 = echo("ws-h2");
    let tcp = tcp_echo();
    InProcess::start(&format!(
        r#"
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main }} }}
  - {{ name: tcp, address: 127.0.0.1:0, tcp: {{ cluster: tcp-echo }} }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - {{ match: {{ prefix: /h2/ }}, cluster: h2 }}
          - {{ match: {{ prefix: / }}, cluster: web }}
clusters:
  - {{ name: web, endpoints: [{web}] }}
  - {{ name: h2, protocol: http2, endpoints: [{h2}] }}
  - {{ name: tcp-echo, endpoints: [{tcp}] }}
"#
    ))
}

#[test]
fn websocket_echo_through_the_proxy() {
    let p = setup();
    for path in ["/chat", "/h2/chat"] {
        // Upgrades always use an HTTP/1.1 upstream connection, even for HTTP/2 clusters.
        let url = format!("ws://{}{path}", p.addr("main"));
        rt().block_on(async {
            let (mut ws, resp) = tokio_tungstenite::connect_async(&url)
                .await
                .expect("handshake");
            assert_eq!(resp.status(), 101);
            for i in 0..20 {
                let msg = format!("hello {i} {}", "x".repeat(i * 500));
                ws.send(Message::text(msg.clone())).await.unwrap();
                let got = ws.next().await.unwrap().unwrap();
                assert_eq!(got, Message::text(msg));
            }
            ws.send(Message::binary(vec![0u8, 1, 2, 255]))
                .await
                .unwrap();
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::binary(vec![0u8, 1, 2, 255])
            );
            ws.close(None).await.unwrap();
            // The server's close frame comes back, then the stream ends.
            while let Some(Ok(m)) = ws.next().await {
                assert!(m.is_close(), "{m:?}");
            }
        });
    }
}

#[test]
fn upgrade_refused_by_upstream_is_a_normal_response() {
    let p = setup();
    // The echo answers an `Upgrade: foo` request normally; the proxy strips the upgrade (only
    // WebSocket is proxied) and the client gets a plain response on a reusable connection.
    let r = curl(&[
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: foo",
        &p.url("main", "/x"),
    ]);
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("upgrade").is_none());
}

#[test]
fn tcp_listener_proxies_bytes_both_ways() {
    let p = setup();
    let addr = p.addr("tcp");
    let mut handles = Vec::new();
    for i in 0..4u8 {
        handles.push(std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let data: Vec<u8> = (0..200_000u32).map(|x| (x as u8).wrapping_add(i)).collect();
            let mut writer = s.try_clone().unwrap();
            let d2 = data.clone();
            let w = std::thread::spawn(move || {
                writer.write_all(&d2).unwrap();
                writer.shutdown(std::net::Shutdown::Write).unwrap();
            });
            let mut back = Vec::new();
            s.read_to_end(&mut back).unwrap();
            w.join().unwrap();
            assert_eq!(back.len(), data.len());
            assert!(back == data, "bytes differ");
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let m = p.metrics();
    assert_eq!(
        metric_value(&m, "sluice_downstream_connections_total{listener=\"tcp\"}"),
        4.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "sluice_upstream_connections_total{cluster=\"tcp-echo\"}"
        ),
        4.0,
        "{m}"
    );
    // Every byte each way, counted as it was read.
    for direction in ["received", "sent"] {
        assert_eq!(
            metric_value(
                &m,
                &format!(
                    "sluice_downstream_bytes_total{{listener=\"tcp\",direction=\"{direction}\"}}"
                )
            ),
            800_000.0,
            "{m}"
        );
        // ... and toward the cluster's endpoint (the echo sends each byte back).
        assert_eq!(
            metric_value(
                &m,
                &format!(
                    "sluice_upstream_bytes_total{{cluster=\"tcp-echo\",direction=\"{direction}\"}}"
                )
            ),
            800_000.0,
            "{m}"
        );
    }
    // Every connection, both sides, is counted closed once its tunnel ends.
    eventually("connections closed", || {
        let m = p.metrics();
        let closed = [
            "sluice_downstream_connections_closed_total{listener=\"tcp\"}",
            "sluice_upstream_connections_closed_total{cluster=\"tcp-echo\"}",
        ]
        .map(|q| metric_value(&m, q));
        let open = [
            "sluice_downstream_connections_active{listener=\"tcp\"}",
            "sluice_upstream_connections_active{cluster=\"tcp-echo\"}",
        ]
        .map(|q| metric_value(&m, q));
        (closed == [4.0, 4.0] && open == [0.0, 0.0]).then_some(())
    });
}

#[test]
fn tcp_listener_closes_when_upstream_is_down() {
    // A port that was just free: connecting to it is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = InProcess::start(&format!(
        "listeners:\n  - {{ name: tcp, address: 127.0.0.1:0, tcp: {{ cluster: dead }} }}\nclusters:\n  - {{ name: dead, endpoints: [{dead}] }}\n"
    ));
    let (out, closed) = raw_exchange(p.addr("tcp"), b"hello", std::time::Duration::from_secs(5));
    assert!(closed && out.is_empty(), "{out:?}");
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "sluice_upstream_connect_failures_total{cluster=\"dead\"}"
        ),
        1.0,
        "{m}"
    );
}
