//! Resilience end to end: retries (conditions, replay of the body, Retry-After, per-try
//! timeouts, budgets), circuit breakers (cluster and route), outlier ejection and return, and
//! no lost idempotent requests while an upstream is killed and restarted under load. The
//! upstreams are real hyper servers whose behaviour each test scripts.

use crate::connection::holding_upstream;
use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a scripted upstream does with its n-th request (counted from 0).
#[derive(Clone, Copy, Debug)]
pub enum Act {
    /// 200 with the request body echoed and `x-upstream: NAME`.
    Echo,
    /// This status.
    Status(u16),
    /// 200 with `grpc-status` (a trailers-only gRPC answer).
    Grpc(&'static str),
    /// This status with `Retry-After`.
    RetryAfter(u16, &'static str),
    /// Close the connection without an answer.
    Reset,
    /// Never answer.
    Hang,
    /// Send the head and part of the body, then close.
    CloseMidBody,
}

type Script = Arc<dyn Fn(usize) -> Act + Send + Sync>;

/// A response body that sends a few bytes, waits for them to go out, and then fails (hyper
/// closes the connection mid-body).
struct Cut(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl http_body::Body for Cut {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        match self.0.as_mut() {
            None => {
                self.0 = Some(Box::pin(tokio::time::sleep(Duration::from_millis(200))));
                std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                    b"partial",
                )))))
            }
            Some(sleep) => sleep
                .as_mut()
                .poll(cx)
                .map(|()| Some(Err(std::io::Error::other("cut")))),
        }
    }
}

/// A request as an upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub body: Bytes,
}

/// A scripted HTTP/1.1 upstream on its own runtime, which can be killed and restarted on the
/// same port.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Upstream {
    pub fn start(
        name: &'static str,
        script: impl Fn(usize) -> Act + Send + Sync + 'static,
    ) -> Self {
        Self::start_at(
            name,
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(script),
            Arc::default(),
        )
    }

    fn start_at(
        name: &'static str,
        addr: SocketAddr,
        script: Script,
        seen: Arc<Mutex<Vec<Seen>>>,
    ) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // The port may take a moment to be free again after a kill.
        let listener = eventually("the upstream port", || {
            let _g = rt.enter();
            std::net::TcpListener::bind(addr).ok()
        });
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let counter = Arc::new(AtomicUsize::new(0));
        let seen2 = Arc::clone(&seen);
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (script, seen, counter) = (
                    Arc::clone(&script),
                    Arc::clone(&seen2),
                    Arc::clone(&counter),
                );
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (script, seen, counter) =
                                (Arc::clone(&script), Arc::clone(&seen), Arc::clone(&counter));
                            async move {
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                let n = counter.fetch_add(1, Ordering::SeqCst);
                                seen.lock().unwrap().push(Seen { body: body.clone() });
                                let resp = |status: u16, body: Bytes| {
                                    http::Response::builder()
                                        .status(status)
                                        .header("x-upstream", name)
                                        .body(Either::Left(Full::new(body)))
                                        .unwrap()
                                };
                                match script(n) {
                                    Act::Echo => Ok(resp(200, body)),
                                    Act::Status(s) => {
                                        Ok(resp(s, Bytes::from_static(b"scripted\n")))
                                    }
                                    Act::Grpc(code) => {
                                        let mut r = resp(200, Bytes::new());
                                        r.headers_mut().insert(
                                            "content-type",
                                            "application/grpc".parse().unwrap(),
                                        );
                                        r.headers_mut()
                                            .insert("grpc-status", code.parse().unwrap());
                                        Ok(r)
                                    }
                                    Act::RetryAfter(s, after) => {
                                        let mut r = resp(s, Bytes::new());
                                        r.headers_mut()
                                            .insert("retry-after", after.parse().unwrap());
                                        Ok(r)
                                    }
                                    Act::Reset => Err(std::io::Error::other("scripted reset")),
                                    Act::Hang => std::future::pending().await,
                                    Act::CloseMidBody => {
                                        let mut r = resp(200, Bytes::new());
                                        *r.body_mut() = Either::Right(Cut(None));
                                        Ok(r)
                                    }
                                }
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            rt: Some(rt),
        }
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Kills the upstream (its listener and every connection close).
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Restarts a killed upstream on the same port with `script`.
    pub fn restart(&mut self, name: &'static str, script: Script) {
        let u = Self::start_at(name, self.addr, script, Arc::clone(&self.seen));
        self.rt = u.into_runtime();
    }

    fn into_runtime(mut self) -> Option<tokio::runtime::Runtime> {
        self.rt.take()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A proxy with one route per (path prefix, cluster, route settings) and the given clusters.
fn proxy(routes: &[(&str, &str, &str)], clusters: &[(&str, &[SocketAddr], &str)]) -> InProcess {
    let routes: Vec<String> = routes
        .iter()
        .map(|(prefix, cluster, extra)| {
            format!("          - {{ match: {{ prefix: {prefix} }}, cluster: {cluster}, timeout: 10s{extra} }}")
        })
        .collect();
    let clusters: Vec<String> = clusters
        .iter()
        .map(|(name, eps, extra)| {
            let eps: Vec<String> = eps.iter().map(ToString::to_string).collect();
            format!(
                "  - {{ name: {name}, lb_policy: round_robin, endpoints: [{}]{extra} }}",
                eps.join(", ")
            )
        })
        .collect();
    InProcess::start(&format!(
        r#"
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main }} }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
{}
clusters:
{}
"#,
        routes.join("\n"),
        clusters.join("\n")
    ))
}

fn retries(p: &InProcess, cluster: &str, reason: &str) -> f64 {
    metric_value(
        &p.metrics(),
        &format!("sluice_upstream_retries_total{{cluster=\"{cluster}\",reason=\"{reason}\"}}"),
    )
}

fn limited(p: &InProcess, cluster: &str, limit: &str) -> f64 {
    metric_value(
        &p.metrics(),
        &format!("sluice_upstream_retry_limited_total{{cluster=\"{cluster}\",limit=\"{limit}\"}}"),
    )
}

#[test]
fn a_503_is_retried_after_its_retry_after_and_a_longer_one_is_not() {
    let up = Upstream::start("u", |n| match n {
        0 => Act::RetryAfter(503, "1"),
        1 => Act::Echo,
        _ => Act::RetryAfter(503, "30"),
    });
    let p = proxy(
        &[(
            "/",
            "u",
            ", retry_policy: { retry_on: [5xx], num_retries: 2, max_retry_after: 5s }",
        )],
        &[("u", &[up.addr], "")],
    );
    let start = Instant::now();
    let r = curl(&[&p.url("main", "/a")]);
    assert_eq!(r.status, 200);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
    assert_eq!(up.count(), 2);
    assert_eq!(retries(&p, "u", "status"), 1.0);
    // Retry-After 30 s is beyond max_retry_after: the 503 goes to the client at once.
    let start = Instant::now();
    let r = curl(&[&p.url("main", "/b")]);
    assert_eq!(r.status, 503);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(up.count(), 3);
    assert_eq!(limited(&p, "u", "retry_after"), 1.0);
}

#[test]
fn a_reset_is_retried_on_another_endpoint_with_the_body_replayed() {
    let bad = Upstream::start("bad", |_| Act::Reset);
    let good = Upstream::start("good", |_| Act::Echo);
    let p = proxy(
        &[
            ("/both", "both", ", retry_policy: { retry_on: [reset] }"),
            ("/bad", "bad", ", retry_policy: { retry_on: [reset] }"),
        ],
        &[
            ("both", &[bad.addr, good.addr], ""),
            ("bad", &[bad.addr], ""),
        ],
    );
    let body: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, &body).unwrap();
    let data = format!("@{}", file.display());
    // A chunked PUT (idempotent): whichever endpoint comes first, the good one answers with
    // the whole body.
    for _ in 0..4 {
        let r = curl(&[
            "-X",
            "PUT",
            "-H",
            "transfer-encoding: chunked",
            "--data-binary",
            &data,
            &p.url("main", "/both"),
        ]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), Some("good"));
        assert_eq!(sha256_hex(&r.body), sha256_hex(&body));
    }
    assert!(
        retries(&p, "both", "reset") >= 1.0,
        "round robin sent some to the bad one first"
    );
    // The same over HTTP/2 from the client (the attempt loop is the same for both).
    for _ in 0..2 {
        let r = curl(&[
            "--http2-prior-knowledge",
            "-X",
            "PUT",
            "--data-binary",
            &data,
            &p.url("main", "/both"),
        ]);
        assert_eq!(r.status, 200);
        assert_eq!(sha256_hex(&r.body), sha256_hex(&body));
    }
    for s in good.seen.lock().unwrap().iter() {
        assert_eq!(
            s.body.len(),
            body.len(),
            "every attempt carried the whole body"
        );
    }
    // A POST may have been processed: never resent.
    let before = bad.count();
    let r = curl(&["-X", "POST", "--data-binary", &data, &p.url("main", "/bad")]);
    assert_eq!(r.status, 502);
    assert_eq!(bad.count(), before + 1);
    // Unless it carries an Idempotency-Key: then it is tried three times (two retries).
    let before = bad.count();
    let r = curl(&[
        "-X",
        "POST",
        "-H",
        "idempotency-key: k1",
        "--data-binary",
        &data,
        &p.url("main", "/bad"),
    ]);
    assert_eq!(r.status, 502);
    assert_eq!(bad.count(), before + 3);
}

#[test]
fn a_body_beyond_the_replay_limit_is_not_resent() {
    let bad = Upstream::start("bad", |_| Act::Reset);
    let p = proxy(
        &[(
            "/",
            "bad",
            ", retry_policy: { retry_on: [reset], replay_limit: 8KiB }",
        )],
        &[("bad", &[bad.addr], "")],
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, vec![b'x'; 64 << 10]).unwrap();
    let data = format!("@{}", file.display());
    let r = curl(&[
        "-X",
        "PUT",
        "-H",
        "transfer-encoding: chunked",
        "--data-binary",
        &data,
        &p.url("main", "/"),
    ]);
    assert_eq!(r.status, 502);
    assert_eq!(bad.count(), 1, "not resent");
    assert_eq!(limited(&p, "bad", "replay_limit"), 1.0);
    // A declared length over the limit is not even kept.
    let r = curl(&["-X", "PUT", "--data-binary", &data, &p.url("main", "/")]);
    assert_eq!(r.status, 502);
    assert_eq!(bad.count(), 2);
}

#[test]
fn a_response_cut_mid_body_is_never_retried() {
    let up = Upstream::start("u", |_| Act::CloseMidBody);
    let p = proxy(
        &[(
            "/",
            "u",
            ", retry_policy: { retry_on: [5xx, reset], num_retries: 3 }",
        )],
        &[("u", &[up.addr], "")],
    );
    let (out, closed) = raw_exchange(
        p.addr("main"),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    // The head went downstream: the client sees the cut, and nothing is resent.
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("partial") && closed, "{out}");
    assert_eq!(up.count(), 1);
}

#[test]
fn a_per_try_timeout_moves_on_to_another_endpoint() {
    let hang = Upstream::start("hang", |_| Act::Hang);
    let good = Upstream::start("good", |_| Act::Echo);
    let p = proxy(
        &[(
            "/",
            "c",
            ", retry_policy: { retry_on: [reset], per_try_timeout: 200ms }",
        )],
        &[("c", &[hang.addr, good.addr], "")],
    );
    for _ in 0..4 {
        let start = Instant::now();
        let r = curl(&[&p.url("main", "/")]);
        assert_eq!(r.status, 200);
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }
    assert!(hang.count() >= 1);
    assert!(retries(&p, "c", "per_try_timeout") >= 1.0);
    // Without a retry condition for it, a per-try timeout answers 504.
    let p = proxy(
        &[(
            "/",
            "h",
            ", retry_policy: { retry_on: [connect-failure], per_try_timeout: 200ms }",
        )],
        &[("h", &[hang.addr], "")],
    );
    let start = Instant::now();
    let r = curl(&[&p.url("main", "/")]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (504, "upstream request timeout\n")
    );
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn retries_stop_at_the_budget() {
    let up = Upstream::start("u", |_| Act::Status(503));
    let p = proxy(
        &[(
            "/",
            "u",
            ", retry_policy: { retry_on: [5xx], num_retries: 3, back_off: { base_interval: 1ms, max_interval: 2ms } }",
        )],
        &[(
            "u",
            &[up.addr],
            ", retry_budget: { retry_percent: 0, min_retries_per_second: 1, ttl: 3s }",
        )],
    );
    for _ in 0..10 {
        assert_eq!(curl(&[&p.url("main", "/")]).status, 503);
    }
    // 1 per second over 3 s: three retries in all, then the budget refuses.
    assert_eq!(retries(&p, "u", "status"), 3.0);
    assert_eq!(up.count(), 13);
    assert!(limited(&p, "u", "budget") >= 7.0);
}

#[test]
fn a_full_circuit_breaker_answers_503_at_once() {
    let (held, mut arrivals) = holding_upstream();
    let p = proxy(
        &[
            ("/cluster", "c", ""),
            (
                "/route",
                "r",
                ", name: capped, circuit_breakers: { max_requests: 1 }",
            ),
        ],
        &[
            ("c", &[held], ", circuit_breakers: { max_requests: 1 }"),
            ("r", &[held], ""),
        ],
    );
    let addr = p.addr("main");
    for (path, metric) in [
        (
            "/cluster",
            "sluice_upstream_overflows_total{cluster=\"c\",breaker=\"max_requests\"}",
        ),
        (
            "/route",
            "sluice_route_overflows_total{route=\"capped\",breaker=\"max_requests\"}",
        ),
    ] {
        // One request holds the only slot.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(
            &mut s,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .unwrap();
        eventually("the held request", || arrivals.try_recv().ok());
        let start = Instant::now();
        let r = curl(&["-D", "-", &p.url("main", path)]);
        assert_eq!(
            (r.status, r.text().contains("upstream overflow")),
            (503, true),
            "{path}"
        );
        assert!(start.elapsed() < Duration::from_secs(1), "refused at once");
        assert_eq!(metric_value(&p.metrics(), metric), 1.0, "{path}");
        drop(s);
    }
}

#[test]
fn a_failing_endpoint_is_ejected_and_returns() {
    let bad = Upstream::start("bad", |_| Act::Status(500));
    let good = Upstream::start("good", |_| Act::Echo);
    let p = proxy(
        &[("/", "c", ", retry_policy: { num_retries: 0 }")],
        &[(
            "c",
            &[bad.addr, good.addr],
            ", outlier_detection: { consecutive_5xx: 3, base_ejection_time: 1s, max_ejection_percent: 50, interval: 100ms }",
        )],
    );
    let mut client = KeepAlive::new(p.addr("main"));
    eventually("three 500s", || {
        client.get("/").unwrap();
        (bad.count() >= 3).then_some(())
    });
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "sluice_outlier_ejections_total{cluster=\"c\",reason=\"consecutive_5xx\"}"
        ),
        1.0,
        "{m}"
    );
    let before = bad.count();
    for _ in 0..20 {
        assert_eq!(
            client.get("/").unwrap().status,
            200,
            "only the good endpoint answers"
        );
    }
    assert_eq!(bad.count(), before);
    // Back after its ejection time.
    eventually("the ejected endpoint's return", || {
        let g = metric_value(
            &p.metrics(),
            "sluice_outlier_ejected_endpoints{cluster=\"c\"}",
        );
        (g == 0.0).then_some(())
    });
    eventually("traffic to the returned endpoint", || {
        client.get("/").unwrap();
        (bad.count() > before).then_some(())
    });
}

#[test]
fn no_idempotent_request_is_lost_while_an_upstream_is_killed_and_restarted() {
    let script: Script = Arc::new(|_| Act::Echo);
    let mut ups: Vec<Upstream> = ["a", "b", "c"]
        .iter()
        .map(|_| {
            Upstream::start_at(
                "u",
                "127.0.0.1:0".parse().unwrap(),
                Arc::clone(&script),
                Arc::default(),
            )
        })
        .collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let p = proxy(
        &[(
            "/",
            "c",
            ", retry_policy: { retry_on: [reset, connect-failure, 5xx], num_retries: 3 }",
        )],
        &[("c", &addrs, "")],
    );
    let addr = p.addr("main");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four clients with keep-alive connections, one request at a time each.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut client = KeepAlive::new(addr);
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match client.get("/") {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failed.push(format!("status {}", r.status)),
                        Err(e) => {
                            failed.push(format!("error {e}"));
                            client = KeepAlive::new(addr);
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    // Kill and restart one upstream, five times, while the load runs.
    let victim = &mut ups[0];
    for _ in 0..5 {
        let before = p.metrics();
        let served = counter_or_zero(&before, "sluice_upstream_requests_total{cluster=\"c\"}");
        eventually("load before the kill", || {
            let now = counter_or_zero(
                &p.metrics(),
                "sluice_upstream_requests_total{cluster=\"c\"}",
            );
            (now >= served + 50.0).then_some(())
        });
        victim.kill();
        eventually("load while it is down", || {
            let now = counter_or_zero(
                &p.metrics(),
                "sluice_upstream_requests_total{cluster=\"c\"}",
            );
            (now >= served + 150.0).then_some(())
        });
        victim.restart("u", Arc::clone(&script));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.join().unwrap();
        assert!(failed.is_empty(), "lost requests: {failed:?}");
        total += ok;
    }
    assert!(total > 500, "{total} requests");
    let m = p.metrics();
    let retried: f64 = ["reset", "connect_failure"]
        .iter()
        .map(|r| {
            counter_or_zero(
                &m,
                &format!("sluice_upstream_retries_total{{cluster=\"c\",reason=\"{r}\"}}"),
            )
        })
        .sum();
    assert!(retried >= 1.0, "the kills were retried: {m}");
}

#[test]
fn a_grpc_unavailable_is_retried_and_other_codes_are_not() {
    let up = Upstream::start("u", |n| match n {
        0 => Act::Grpc("14"),
        1 => Act::Grpc("0"),
        _ => Act::Grpc("13"),
    });
    let p = proxy(
        &[("/", "u", ", retry_policy: { retry_on: [unavailable] }")],
        &[("u", &[up.addr], "")],
    );
    let grpc = |path: &str| {
        curl(&[
            "-D",
            "-",
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            "--data-binary",
            "",
            &p.url("main", path),
        ])
    };
    let r = grpc("/pkg.Svc/Call");
    assert_eq!((r.status, r.header("grpc-status")), (200, Some("0")));
    assert_eq!(up.count(), 2, "UNAVAILABLE was retried");
    assert_eq!(retries(&p, "u", "grpc_status"), 1.0);
    // INTERNAL is not in retry_on: answered as is.
    let r = grpc("/pkg.Svc/Call");
    assert_eq!(r.header("grpc-status"), Some("13"));
    assert_eq!(up.count(), 3);
}

#[test]
fn a_connection_past_its_max_age_takes_no_new_request() {
    let up = Upstream::start("u", |_| Act::Echo);
    let connections = |p: &InProcess| {
        metric_value(
            &p.metrics(),
            "sluice_upstream_connections_total{cluster=\"u\"}",
        )
    };
    for (pool, expected) in [("", 1.0), (", pool: { max_connection_age: 100ms }", 2.0)] {
        let p = proxy(&[("/", "u", "")], &[("u", &[up.addr], pool)]);
        let mut client = KeepAlive::new(p.addr("main"));
        assert_eq!(client.get("/").unwrap().status, 200);
        // Let the first upstream connection age past 100 ms (the limit under test is a time).
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(client.get("/").unwrap().status, 200);
        assert_eq!(connections(&p), expected, "pool settings `{pool}`");
    }
}
