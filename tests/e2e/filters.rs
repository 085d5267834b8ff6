//! The HTTP filter chain: order on the request and response heads, a filter that answers, a
//! filter that waits, and the completion hook (status, bytes, duration, upstream, outcome) for
//! a normal response, an upstream body that breaks, and a client that goes away.

use crate::support::*;
use sluice_proxy::http::filters::{
    Completion, HttpFilter, Outcome, RequestHead, ResponseHead, Verdict,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records what it sees; answers 403 to `/deny`, waits on `/wait`.
#[derive(Debug)]
struct Recorder {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    done: Arc<Mutex<Vec<Completion>>>,
}

impl HttpFilter for Recorder {
    fn on_request(&self, req: &mut RequestHead<'_>) -> Verdict {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} request {}", self.name, req.uri.path()));
        req.headers
            .append("x-filter-order", self.name.parse().unwrap());
        match req.uri.path() {
            "/deny" if self.name == "first" => {
                let mut r = http::Response::new(bytes::Bytes::new());
                *r.status_mut() = http::StatusCode::FORBIDDEN;
                Verdict::Respond(r)
            }
            "/wait" if self.name == "first" => {
                let log = Arc::clone(&self.log);
                Verdict::Wait(Box::pin(async move {
                    tokio::task::yield_now().await;
                    log.lock().unwrap().push("first waited".into());
                    Verdict::Continue
                }))
            }
            _ => Verdict::Continue,
        }
    }

    fn on_response(&self, resp: &mut ResponseHead<'_>) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} response {}", self.name, resp.status.as_u16()));
        resp.headers
            .append("x-response-order", self.name.parse().unwrap());
    }

    fn wants_completion(&self) -> bool {
        self.name == "first"
    }

    fn on_complete(&self, done: &Completion) {
        self.done.lock().unwrap().push(done.clone());
    }
}

struct Setup {
    proxy: InProcess,
    log: Arc<Mutex<Vec<String>>>,
    done: Arc<Mutex<Vec<Completion>>>,
}

fn setup(upstream: SocketAddr) -> Setup {
    let log = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(Mutex::new(Vec::new()));
    let filters: Vec<Arc<dyn HttpFilter>> = ["first", "second"]
        .into_iter()
        .map(|name| {
            Arc::new(Recorder {
                name,
                log: Arc::clone(&log),
                done: Arc::clone(&done),
            }) as Arc<dyn HttpFilter>
        })
        .collect();
    let yaml = format!(
        r#"
listeners:
  - {{ name: l, address: 127.0.0.1:0, http: {{ route_table: t }} }}
route_tables:
  - name: t
    virtual_hosts:
      - name: all
        domains: ["*"]
        response_headers: {{ add: {{ x-response-order: configured }} }}
        routes:
          - {{ match: {{ prefix: / }}, cluster: c }}
clusters:
  - {{ name: c, endpoints: [{upstream}] }}
"#
    );
    Setup {
        proxy: InProcess::start_with_filters(&yaml, filters),
        log,
        done,
    }
}

fn completions(s: &Setup, n: usize) -> Vec<Completion> {
    eventually("completions", || {
        let d = s.done.lock().unwrap();
        (d.len() >= n).then(|| d.clone())
    })
}

#[test]
fn filters_run_in_order_and_configured_filters_after_extra_ones() {
    let up = echo("up");
    let s = setup(up);
    let c = curl(&[&s.proxy.url("l", "/x")]);
    assert_eq!(c.status, 200);
    let body = c.json();
    assert_eq!(
        body["headers"]["x-filter-order"],
        serde_json::json!(["first", "second"])
    );
    assert!(
        body["headers"]["x-forwarded-for"].is_array(),
        "standard filters ran too"
    );
    let orders: Vec<&str> = c
        .headers
        .iter()
        .filter(|(k, _)| k == "x-response-order")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(orders, vec!["first", "second", "configured"]);
    assert_eq!(
        *s.log.lock().unwrap(),
        vec![
            "first request /x",
            "second request /x",
            "first response 200",
            "second response 200"
        ]
    );
}

#[test]
fn a_filter_can_answer_and_a_filter_can_wait() {
    let up = echo("up");
    let s = setup(up);
    let c = curl(&[&s.proxy.url("l", "/deny")]);
    assert_eq!(c.status, 403);
    assert_eq!(c.header("x-upstream"), None, "never reached the upstream");
    assert_eq!(
        c.header("x-response-order"),
        Some("first"),
        "response filters see it"
    );
    let c = curl(&[&s.proxy.url("l", "/wait")]);
    assert_eq!(c.status, 200);
    assert_eq!(
        c.json()["headers"]["x-filter-order"],
        serde_json::json!(["first", "second"])
    );
    let log = s.log.lock().unwrap().clone();
    let at = |e: &str| log.iter().position(|l| l == e).unwrap();
    assert!(at("first request /wait") < at("first waited"));
    assert!(at("first waited") < at("second request /wait"));
}

#[test]
fn completion_reports_a_normal_response() {
    let up = echo("up");
    let s = setup(up);
    let c = curl(&[&s.proxy.url("l", "/bytes/12345")]);
    assert_eq!(c.body.len(), 12345);
    let d = &completions(&s, 1)[0];
    assert_eq!(d.status, 200);
    assert_eq!(d.body_bytes, 12345);
    assert_eq!(d.upstream, Some(up));
    assert_eq!(d.outcome, Outcome::Complete);
    assert_eq!(d.flag, None);
    assert!(d.duration > Duration::ZERO && d.duration < Duration::from_secs(10));
}

#[test]
fn completion_reports_an_upstream_body_that_breaks() {
    // An upstream that promises 100000 bytes, sends 10 and closes.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789");
        }
    });
    let s = setup(up);
    let (_, closed) = raw_exchange(
        s.proxy.addr("l"),
        b"GET /broken HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(closed);
    let d = &completions(&s, 1)[0];
    assert_eq!(d.status, 200);
    assert_eq!(d.body_bytes, 10);
    assert_eq!(d.outcome, Outcome::UpstreamReset);
}

#[test]
fn completion_reports_a_client_that_goes_away() {
    let up = echo("up");
    let s = setup(up);
    let mut c = TcpStream::connect(s.proxy.addr("l")).unwrap();
    c.write_all(b"GET /bytes/50000000?chunked=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1024];
    let n = c.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(c);
    let d = &completions(&s, 1)[0];
    assert_eq!(d.outcome, Outcome::DownstreamGone);
    assert!(d.body_bytes < 50_000_000);
}

#[test]
fn completion_reports_local_failures_with_their_flag() {
    let s = setup("127.0.0.1:1".parse().unwrap());
    let c = curl(&[&s.proxy.url("l", "/")]);
    assert_eq!(c.status, 503);
    let d = &completions(&s, 1)[0];
    assert_eq!(
        (d.status.as_u16(), d.flag, d.upstream),
        (503, Some("UF"), None)
    );
    assert_eq!(d.outcome, Outcome::Complete);
}
