//! HTTP/1.1 ↔ HTTP/2 translation in both directions: trailers, 10 MiB bodies checked by hash,
//! HEAD/204/304, and h2c details, with hyper clients, curl, nghttp and h2load.

use crate::support::*;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body::Frame;
use http_body_util::StreamBody;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

const TEN_MIB: usize = 10 * 1024 * 1024;

fn setup() -> InProcess {
    let h1 = echo("h1");
    let h2 = echo("h2");
    InProcess::start(&format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    http: {{ route_table: main }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - {{ match: {{ prefix: /to-h2/ }}, cluster: h2, rewrite: {{ prefix: / }} }}
          - {{ match: {{ prefix: /auto/ }}, cluster: auto, rewrite: {{ prefix: / }} }}
          - {{ match: {{ prefix: / }}, cluster: h1 }}
clusters:
  - {{ name: h1, protocol: http1, endpoints: [{h1}] }}
  - {{ name: h2, protocol: http2, endpoints: [{h2}] }}
  - {{ name: auto, protocol: auto, endpoints: [{h2}] }}
"#
    ))
}

/// A body of `data` in 64 KiB frames followed by `x-checksum` trailers.
fn body_with_trailers(data: Vec<u8>, checksum: &str) -> TestBody {
    let data = Bytes::from(data);
    let mut frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..data.len())
        .step_by(65536)
        .map(|i| Ok(Frame::data(data.slice(i..(i + 65536).min(data.len())))))
        .collect();
    let mut t = HeaderMap::new();
    t.insert("x-checksum", HeaderValue::from_str(checksum).unwrap());
    frames.push(Ok(Frame::trailers(t)));
    StreamBody::new(futures_util::stream::iter(frames))
}

fn random_body() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..TEN_MIB).map(|_| rng.u8(..)).collect()
}

type TestBody = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
>;

async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// The echo's `/echo` answer: the 10 MiB body back, with the request's checksum trailer.
async fn assert_echoed_with_trailers(
    resp: http::Response<hyper::body::Incoming>,
    upstream: &str,
    sum: &str,
) {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], upstream);
    let (body, trailers) = collect(resp.into_body()).await;
    assert_eq!(body.len(), TEN_MIB);
    assert_eq!(sha256_hex(&body), sum);
    let trailers = trailers.expect("trailers forwarded across the protocol change");
    assert_eq!(trailers["x-checksum"], sum);
}

#[test]
fn h1_downstream_to_h2_upstream_streams_10mib_with_trailers() {
    let p = setup();
    let addr = p.addr("main");
    let data = random_body();
    let sum = sha256_hex(&data);
    rt().block_on(async move {
        let mut sender = h1_client(addr).await;
        let req = Request::post("/to-h2/echo")
            .header("host", "example.com")
            .header("te", "trailers")
            .header("trailer", "x-checksum")
            .header("content-type", "application/octet-stream")
            .body(body_with_trailers(data, &sum))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_11);
        assert_echoed_with_trailers(resp, "h2", &sum).await;
    });
}

#[test]
fn h2_downstream_to_h1_upstream_streams_10mib_with_trailers() {
    let p = setup();
    let addr = p.addr("main");
    let data = random_body();
    let sum = sha256_hex(&data);
    rt().block_on(async move {
        let mut sender = h2_connect(addr).await;
        let req = Request::post(format!("http://{addr}/echo"))
            .header("trailer", "x-checksum")
            .header("te", "trailers")
            .body(body_with_trailers(data, &sum))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_echoed_with_trailers(resp, "h1", &sum).await;
    });
}

#[test]
fn h2_to_h2_upload_is_hashed_by_upstream() {
    let p = setup();
    let addr = p.addr("main");
    let data = random_body();
    let sum = sha256_hex(&data);
    rt().block_on(async move {
        let mut sender = h2_connect(addr).await;
        let req = Request::post(format!("http://{addr}/auto/upload"))
            .body(body_with_trailers(data, &sum))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (body, _) = collect(resp.into_body()).await;
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(j["version"], "HTTP/2.0", "auto keeps HTTP/2");
        assert_eq!(j["body_bytes"], TEN_MIB);
        assert_eq!(j["body_sha256"], sum);
        assert_eq!(j["trailers"]["x-checksum"][0], sum);
    });
}

#[test]
fn downloads_10mib_both_directions_with_curl() {
    let p = setup();
    let expected = sha256_hex(&sluice_proxy::demo::echo::pattern(0, TEN_MIB));
    for (args, path) in [
        (vec![], "/to-h2/bytes/10485760"),
        (vec!["--http2-prior-knowledge"], "/bytes/10485760"),
        (
            vec!["--http2-prior-knowledge"],
            "/to-h2/bytes/10485760?chunked=1",
        ),
        (vec![], "/bytes/10485760?chunked=1"),
    ] {
        let mut a: Vec<&str> = args.clone();
        let url = p.url("main", path);
        a.push(&url);
        let r = curl(&a);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body.len(), TEN_MIB, "{args:?} {path}");
        assert_eq!(sha256_hex(&r.body), expected, "{args:?} {path}");
    }
}

#[test]
fn curl_h1_and_h2_prior_knowledge_see_the_right_versions() {
    let p = setup();
    let r = curl(&["--http2-prior-knowledge", &p.url("main", "/v")]);
    assert_eq!(r.version, "HTTP/2");
    let j = r.json();
    assert_eq!(j["version"], "HTTP/1.1", "upstream h1");
    assert_eq!(
        j["headers"]["host"][0],
        p.addr("main").to_string(),
        ":authority became Host"
    );
    let r = curl(&[&p.url("main", "/to-h2/v")]);
    assert_eq!(r.version, "HTTP/1.1");
    let j = r.json();
    assert_eq!(j["version"], "HTTP/2.0");
    assert!(j["headers"].get("host").is_none(), "Host became :authority");
    assert_eq!(j["uri"], format!("http://{}/v", p.addr("main")));
}

#[test]
fn head_204_304_have_no_body() {
    let p = setup();
    let addr = p.addr("main");
    for prefix in ["", "/to-h2"] {
        // HTTP/1.1: a HEAD response followed on the same connection by another response shows
        // that no body bytes were sent after the HEAD response's headers.
        let req = format!(
            "HEAD {prefix}/bytes/1000 HTTP/1.1\r\nHost: x\r\n\r\n\
             GET {prefix}/status/204 HTTP/1.1\r\nHost: x\r\n\r\n\
             GET {prefix}/status/304 HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /exact-missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let (out, closed) = raw_exchange(addr, req.as_bytes(), std::time::Duration::from_secs(10));
        assert!(closed, "{out}");
        let responses: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(responses.len(), 4, "{out}");
        assert!(responses[0].starts_with("200"), "{out}");
        assert!(
            responses[0]
                .to_ascii_lowercase()
                .contains("content-length: 1000"),
            "{out}"
        );
        assert!(
            responses[0].ends_with("\r\n\r\n"),
            "HEAD response carried a body: {out}"
        );
        for (r, code) in [(responses[1], "204"), (responses[2], "304")] {
            assert!(r.starts_with(code), "{out}");
            assert!(r.ends_with("\r\n\r\n"), "{code} carried a body: {out}");
            assert!(
                !r.to_ascii_lowercase().contains("transfer-encoding"),
                "{out}"
            );
        }
        // HTTP/2.
        for (method, path, status) in [
            ("HEAD", "/bytes/1000", 200),
            ("GET", "/status/204", 204),
            ("GET", "/status/304", 304),
        ] {
            let url = p.url("main", &format!("{prefix}{path}"));
            rt().block_on(async {
                let mut sender = h2_connect(addr).await;
                let req = Request::builder()
                    .method(method)
                    .uri(&url)
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                let resp = sender
                    .send_request(req)
                    .await
                    .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
                assert_eq!(resp.status(), status, "{method} {url}");
                let (body, _) = collect(resp.into_body()).await;
                assert!(body.is_empty(), "{method} {url} had a body");
            });
        }
    }
}

#[test]
fn nghttp_prior_knowledge_and_advertised_settings() {
    require_tool("nghttp", "nghttp2-client");
    let p = setup();
    let out = std::process::Command::new("nghttp")
        .args(["-nv", &p.url("main", "/to-h2/anything")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(":status: 200"), "{text}");
    assert!(
        text.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100"),
        "{text}"
    );
    assert!(
        text.contains("SETTINGS_INITIAL_WINDOW_SIZE(0x04):65536"),
        "{text}"
    );
    assert!(
        text.contains("SETTINGS_MAX_HEADER_LIST_SIZE(0x06):61440"),
        "{text}"
    );
}

#[test]
fn h2load_multiplexes_to_both_upstream_protocols() {
    require_tool("h2load", "nghttp2-client");
    let p = setup();
    for path in ["/x", "/to-h2/x"] {
        let out = std::process::Command::new("h2load")
            .args(["-n", "2000", "-c", "4", "-m", "20", &p.url("main", path)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("2000 succeeded, 0 failed, 0 errored"),
            "{path}: {text}"
        );
        assert!(text.contains("status codes: 2000 2xx"), "{path}: {text}");
    }
}

#[test]
fn h2c_upgrade_is_stripped_and_answered_in_http1() {
    let p = setup();
    // curl --http2 on http:// sends `Upgrade: h2c` and `HTTP2-Settings`.
    let r = curl(&["--http2", &p.url("main", "/up")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.version, "HTTP/1.1", "the proxy must not switch to h2c");
    let j = r.json();
    assert!(
        j["headers"].get("upgrade").is_none(),
        "Upgrade: h2c forwarded: {j}"
    );
    assert!(j["headers"].get("http2-settings").is_none());
}
