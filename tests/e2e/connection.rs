//! Connection-level protections, driven with raw bytes over real sockets: protocol detection
//! that sleeps on a stalled preface, graceful closes that end even when the peer ignores them,
//! the header timeout over HTTP/2, premature HTTP/2 stream resets, and the Content-Length +
//! Transfer-Encoding check on every pipelined HTTP/1.1 head.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const END_HEADERS: u8 = 0x4;

/// Frame types in `bytes` (whole frames only).
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        if rest.len() < 9 + len {
            break;
        }
        types.push(rest[3]);
        rest = &rest[9 + len..];
    }
    types
}

/// Reads until the peer closes (EOF or reset) or `timeout` passes; returns the bytes and
/// whether it closed.
fn read_to_close(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return (out, false);
        };
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => {}
        }
    }
}

fn proxy(settings: &str, extra_routes: &str) -> InProcess {
    proxy_with(settings, extra_routes, "")
}

fn proxy_with(settings: &str, extra_routes: &str, extra_clusters: &str) -> InProcess {
    let up = echo("up");
    InProcess::start(&format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    http:
      route_table: main
      {settings}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          {extra_routes}
          - {{ match: {{ prefix: / }}, cluster: up }}
clusters:
  - {{ name: up, endpoints: [{up}] }}
  {extra_clusters}
"#
    ))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn stalled_http2_prefaces_do_not_spin_the_worker() {
    let up = echo("up");
    let b = Binary::start(
        &format!(
            r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    http: {{ route_table: main, request_header_timeout: 60s }}
route_tables:
  - name: main
    virtual_hosts:
      - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, cluster: up }}] }}
clusters:
  - {{ name: up, endpoints: [{up}] }}
"#
        ),
        &[],
    );
    let addr = b.addr("main");
    const CONNS: usize = 2000;
    let mut held = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let mut s = TcpStream::connect(addr).unwrap();
        // Half a preface, or a lone byte of it.
        let part: &[u8] = if i % 2 == 0 {
            &H2_PREFACE[..16]
        } else {
            &H2_PREFACE[..1]
        };
        s.write_all(part).unwrap();
        held.push(s);
    }
    eventually("every connection accepted", || {
        (b.metric("sluice_downstream_connections_total{listener=\"main\"}") >= CONNS as f64)
            .then_some(())
    });
    let pid = b.child.id();
    let hz = clock_ticks_per_second();
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    // A measurement window, not a synchronisation.
    std::thread::sleep(Duration::from_secs(1));
    let (elapsed, used) = (t0.elapsed(), cpu_ticks(pid) - c0);
    let share = used as f64 / hz as f64 / elapsed.as_secs_f64();
    eprintln!(
        "CPU with {CONNS} stalled prefaces: {used} ticks in {elapsed:?} ({share:.3} of a core)"
    );
    assert!(
        share < 0.10,
        "{share:.3} of a core while every client is silent"
    );
    // Detection still completes for a preface that arrives in pieces, and an ordinary client
    // is served meanwhile.
    assert_eq!(curl(&[&format!("http://{addr}/")]).status, 200);
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&H2_PREFACE[..7]).unwrap();
    s.write_all(&H2_PREFACE[7..]).unwrap();
    s.write_all(&h2_frame(SETTINGS, 0, 0, &[])).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 9];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf[3], SETTINGS, "the server's SETTINGS");
    drop(held);
}

#[test]
fn http2_peer_ignoring_goaway_is_closed_after_the_graceful_close_timeout() {
    let p = proxy(
        "idle_timeout: 300ms\n      graceful_close_timeout: 500ms",
        "",
    );
    let mut s = TcpStream::connect(p.addr("main")).unwrap();
    // Preface and SETTINGS, then silence: no SETTINGS ack, no PING answer.
    s.write_all(H2_PREFACE).unwrap();
    s.write_all(&h2_frame(SETTINGS, 0, 0, &[])).unwrap();
    let t0 = Instant::now();
    let (bytes, closed) = read_to_close(&mut s, Duration::from_secs(15));
    assert!(closed, "connection still open: {:?}", frame_types(&bytes));
    assert!(
        frame_types(&bytes).contains(&GOAWAY),
        "{:?}",
        frame_types(&bytes)
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
    eventually("the close counted", || {
        (rejected(&p, "graceful_close_timeout") == 1.0).then_some(())
    });
}

#[test]
fn http1_close_with_a_client_that_never_reads_is_bounded() {
    let big = "a".repeat(16 << 20);
    let p = proxy(
        "idle_timeout: 300ms\n      graceful_close_timeout: 500ms",
        &format!(
            "- {{ match: {{ prefix: /big }}, direct_response: {{ status: 200, body: \"{big}\" }} }}"
        ),
    );
    let addr = p.addr("main");
    rt().block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Never read: the response stays queued, then the idle timeout asks hyper to close,
        // which waits for the flush. The close timeout ends it.
        let active = "sluice_downstream_connections_active{listener=\"main\"}";
        eventually("the connection counted", || {
            (metric_value(&p.metrics(), active) == 1.0).then_some(())
        });
        eventually("the connection closed", || {
            (metric_value(&p.metrics(), active) == 0.0).then_some(())
        });
        drop(s);
    });
    assert_eq!(rejected(&p, "graceful_close_timeout"), 1.0);
}

#[test]
fn http2_header_block_trickle_is_cut_by_the_header_timeout() {
    let p = proxy("request_header_timeout: 1s", "");
    let addr = p.addr("main");
    // A HEADERS frame whose 20-byte block arrives one byte per 300 ms.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(H2_PREFACE).unwrap();
    s.write_all(&h2_frame(SETTINGS, 0, 0, &[])).unwrap();
    let mut header = h2_frame(HEADERS, END_HEADERS, 1, &[0x82; 20]);
    header.truncate(9);
    s.write_all(&header).unwrap();
    let t0 = Instant::now();
    let mut closed = false;
    for _ in 0..20 {
        if s.write_all(&[0x82]).is_err() {
            closed = true;
            break;
        }
        // Waits 300 ms for the close (the trickle's pace).
        if read_to_close(&mut s, Duration::from_millis(300)).1 {
            closed = true;
            break;
        }
    }
    let took = t0.elapsed();
    assert!(closed, "trickled header block kept the connection open");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    // The preface and first SETTINGS are bounded too.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(H2_PREFACE).unwrap();
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(10));
    assert!(closed, "a connection without SETTINGS stayed open");
    eventually("both counted", || {
        (rejected(&p, "header_timeout") == 2.0).then_some(())
    });
}

/// An HTTP/1.1 upstream that reports each request head it receives and never answers (so
/// every stream the client resets is reset before its response completed).
pub fn holding_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let _ = tx.send(());
                // Hold the request until the proxy gives up on it.
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    (addr, rx)
}

#[test]
fn http2_streams_reset_before_their_response_close_the_connection() {
    let (hold, mut arrived) = holding_upstream();
    let p = proxy_with(
        "",
        "- { match: { prefix: /hold }, cluster: hold }",
        &format!("- {{ name: hold, endpoints: [{hold}] }}"),
    );
    let addr = p.addr("main");
    const STREAMS: usize = 400;
    let sent = rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        let mut conn = tokio::spawn(conn);
        // Well-behaved streams first: they count as streams, not as resets.
        for _ in 0..10 {
            client = client.ready().await.unwrap();
            let req = http::Request::get(format!("http://{addr}/"))
                .body(())
                .unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            let mut body = resp.await.unwrap().into_body();
            while let Some(d) = body.data().await {
                d.unwrap();
            }
        }
        // Then streams reset once their request has reached the upstream (so hyper has
        // accepted them: the h2 crate's own bound on streams reset before they are accepted
        // does not apply).
        let mut sent = 0;
        let mut ended = false;
        for _ in 0..STREAMS {
            client = match client.ready().await {
                Ok(c) => c,
                Err(_) => break,
            };
            let req = http::Request::get(format!("http://{addr}/hold"))
                .body(())
                .unwrap();
            let Ok((_, mut stream)) = client.send_request(req, true) else {
                break;
            };
            tokio::select! {
                _ = arrived.recv() => {}
                _ = &mut conn => {
                    ended = true;
                    break;
                }
            }
            stream.send_reset(h2::Reason::CANCEL);
            sent += 1;
        }
        if !ended {
            let r = tokio::time::timeout(Duration::from_secs(10), conn).await;
            assert!(
                r.is_ok(),
                "connection still open after {sent} reset streams"
            );
        }
        sent
    });
    eprintln!("streams reset before the connection closed: {sent}");
    assert!(sent < STREAMS / 4, "{sent} streams reset before the close");
    eventually("the premature resets counted", || {
        (rejected(&p, "premature_resets") == 1.0).then_some(())
    });
    let held = counter_or_zero(
        &p.metrics(),
        "sluice_upstream_requests_total{cluster=\"hold\"}",
    );
    assert!(
        held <= (sent + 1) as f64,
        "{held} requests reached the upstream"
    );
}

#[test]
fn pipelined_head_with_content_length_and_transfer_encoding_is_rejected() {
    let p = proxy("", "");
    for second_prefix in ["", "\r\n"] {
        let two = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello{second_prefix}POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        );
        let (out, closed) = raw_exchange(p.addr("main"), two.as_bytes(), Duration::from_secs(5));
        let first = out.find("HTTP/1.1 200").expect(&out);
        let second = out.find("HTTP/1.1 400").expect(&out);
        assert!(first < second, "{out}");
        assert!(closed, "{out}");
        assert!(!out.contains("/smuggle"), "{out}");
    }
    assert_eq!(upstream_requests(&p), 2.0, "only the first of each pair");
    assert_eq!(rejected(&p, "content_length_with_transfer_encoding"), 2.0);
}
