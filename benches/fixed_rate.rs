//! Open-loop, fixed-rate HTTP/1.1 latency client (wrk cannot hold a fixed rate, h2load prints
//! no percentiles). Used by `benches/load.sh`; also runnable by hand:
//!
//! ```text
//! cargo bench --bench fixed_rate -- --url http://127.0.0.1:18080/ --rate 2000 --duration 10
//! ```
//!
//! A pacer thread wakes at `start + i/rate` (std `thread::sleep`, i.e. `clock_nanosleep`,
//! ~50–60 µs precision; tokio's timer has 1 ms granularity and would send bursts) and hands the
//! wake-up instant to a single-threaded tokio runtime, which sends the request on an idle
//! keep-alive connection from a fixed pool. The rate does not depend on how fast responses come
//! back (open loop). Latency is measured from the pacer's wake-up to the end of the response
//! body, so time spent waiting for a free connection counts (no coordinated omission). Requests
//! in the first `--warmup` seconds are sent but not recorded.
//!
//! Output: one human line and one machine line starting with `fixed_rate ` made of `key=value`
//! pairs (`p50_us=`, `p99_us=`, ...). `--samples FILE` also writes every recorded latency (ns,
//! one per line) so that several runs can be merged.

// Wall-clock timing on a std thread (the pacer) and in a real-time runtime: tokio's paused-time
// `Instant` (which clippy.toml asks for, for tests) has no use here.
#![allow(clippy::disallowed_types)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

struct Args {
    addr: SocketAddr,
    host: String,
    path: String,
    rate: u64,
    duration: f64,
    warmup: f64,
    connections: usize,
    label: String,
    samples: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: fixed_rate --url http://HOST:PORT/PATH [--rate 2000] [--duration 10] \
         [--warmup 1] [--connections 16] [--label NAME] [--samples FILE]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut url = None;
    let mut rate = 2000u64;
    let mut duration = 10.0f64;
    let mut warmup = 1.0f64;
    let mut connections = 16usize;
    let mut label = String::from("target");
    let mut samples = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--url" => url = Some(val()),
            "--rate" => rate = val().parse().unwrap_or_else(|_| usage()),
            "--duration" => duration = val().parse().unwrap_or_else(|_| usage()),
            "--warmup" => warmup = val().parse().unwrap_or_else(|_| usage()),
            "--connections" => connections = val().parse().unwrap_or_else(|_| usage()),
            "--label" => label = val(),
            "--samples" => samples = Some(val()),
            // `cargo bench` passes `--bench`; ignore it and other harness flags.
            "--bench" | "--nocapture" => {}
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other}");
                usage()
            }
        }
    }
    let url = url.unwrap_or_else(|| usage());
    let rest = url.strip_prefix("http://").unwrap_or_else(|| usage());
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr: SocketAddr = authority.parse().unwrap_or_else(|_| {
        eprintln!("--url must use a literal IP:PORT, got {authority}");
        std::process::exit(2)
    });
    if rate == 0 || connections == 0 || duration <= 0.0 {
        usage()
    }
    Args {
        addr,
        host: authority.to_string(),
        path,
        rate,
        duration,
        warmup,
        connections,
        label,
        samples,
    }
}

type Sender = SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

struct Sample {
    index: u64,
    latency: Duration,
    ok: bool,
}

async fn one_request(sender: &mut Sender, host: &str, path: &str) -> bool {
    let req = match hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(_) => return false,
    };
    match sender.send_request(req).await {
        Ok(resp) => {
            let status_ok = resp.status().is_success();
            let body_ok = resp.into_body().collect().await.is_ok();
            status_ok && body_ok
        }
        Err(_) => false,
    }
}

/// What the pacer saw: how late it woke up relative to the schedule.
struct PacerStats {
    late_over_100us: u64,
    max_lag: Duration,
}

fn main() {
    let args = parse_args();
    let total = ((args.warmup + args.duration) * args.rate as f64).round() as u64;
    let skip = (args.warmup * args.rate as f64).round() as u64;
    let rate = args.rate;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (tick_tx, mut tick_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let (res_tx, mut res_rx) = mpsc::unbounded_channel::<Sample>();
    let (idle_tx, mut idle_rx) = mpsc::unbounded_channel::<Sender>();

    // Open the pool before the clock starts.
    rt.block_on(async {
        for _ in 0..args.connections {
            match connect(args.addr).await {
                Ok(s) => idle_tx.send(s).expect("pool"),
                Err(e) => {
                    eprintln!("fixed_rate: cannot connect to {}: {e}", args.addr);
                    std::process::exit(1);
                }
            }
        }
    });

    let pacer = std::thread::spawn(move || {
        let mut stats = PacerStats {
            late_over_100us: 0,
            max_lag: Duration::ZERO,
        };
        let start = Instant::now() + Duration::from_millis(20);
        let period_ns = 1_000_000_000f64 / rate as f64;
        for i in 0..total {
            let due = start + Duration::from_nanos((i as f64 * period_ns) as u64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let woke = Instant::now();
            let lag = woke.saturating_duration_since(due);
            if i >= skip {
                if lag > Duration::from_micros(100) {
                    stats.late_over_100us += 1;
                }
                stats.max_lag = stats.max_lag.max(lag);
            }
            if tick_tx.send((i, woke)).is_err() {
                break;
            }
        }
        stats
    });

    let started = Instant::now();
    let addr = args.addr;
    let host = args.host.clone();
    let path = args.path.clone();
    let samples: Vec<Sample> = rt.block_on(async move {
        let collector = tokio::spawn(async move {
            let mut v = Vec::with_capacity(total as usize);
            while let Some(s) = res_rx.recv().await {
                v.push(s);
            }
            v
        });
        while let Some((index, t0)) = tick_rx.recv().await {
            // Waiting here for a free connection is counted in the latency (t0 is the tick).
            let Some(mut sender) = idle_rx.recv().await else {
                break;
            };
            let res_tx = res_tx.clone();
            let idle_tx = idle_tx.clone();
            let host = host.clone();
            let path = path.clone();
            tokio::spawn(async move {
                let ok = matches!(
                    tokio::time::timeout(
                        Duration::from_secs(5),
                        one_request(&mut sender, &host, &path)
                    )
                    .await,
                    Ok(true)
                );
                let latency = t0.elapsed();
                let _ = res_tx.send(Sample { index, latency, ok });
                // Return the connection (or a fresh one if this one broke).
                let ready = ok && sender.ready().await.is_ok();
                if ready {
                    let _ = idle_tx.send(sender);
                } else if let Ok(fresh) = connect(addr).await {
                    let _ = idle_tx.send(fresh);
                } else {
                    eprintln!("fixed_rate: reconnect to {addr} failed");
                }
            });
        }
        drop(res_tx);
        drop(idle_tx);
        collector.await.expect("collector")
    });
    let elapsed = started.elapsed();
    let pacer = pacer.join().expect("pacer thread");

    let measured: Vec<&Sample> = samples.iter().filter(|s| s.index >= skip).collect();
    let errors = measured.iter().filter(|s| !s.ok).count();
    if let Some(path) = &args.samples {
        // Latencies of the successful recorded requests, in ns, one per line (for merging runs).
        let mut text = String::with_capacity(measured.len() * 8);
        for s in measured.iter().filter(|s| s.ok) {
            text.push_str(&s.latency.as_nanos().to_string());
            text.push('\n');
        }
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("fixed_rate: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
    let mut lat: Vec<u64> = measured
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.latency.as_nanos() as u64)
        .collect();
    lat.sort_unstable();
    let pct = |q: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let mean = if lat.is_empty() {
        f64::NAN
    } else {
        lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0
    };
    println!(
        "{}: {} requests at {} req/s over {:.1}s (+{:.1}s warm-up, {} connections, {:.1}s wall): \
         p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs, {} errors, \
         pacer late >100µs: {}",
        args.label,
        measured.len(),
        args.rate,
        args.duration,
        args.warmup,
        args.connections,
        elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0),
        errors,
        pacer.late_over_100us,
    );
    println!(
        "fixed_rate label={} rate={} sent={} ok={} errors={} p50_us={:.1} p90_us={:.1} \
         p99_us={:.1} p999_us={:.1} max_us={:.1} mean_us={:.1} pacer_late_100us={} \
         pacer_max_lag_us={:.1}",
        args.label,
        args.rate,
        measured.len(),
        lat.len(),
        errors,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0),
        mean,
        pacer.late_over_100us,
        pacer.max_lag.as_secs_f64() * 1e6,
    );
    if errors > 0 || lat.is_empty() {
        std::process::exit(1);
    }
}
