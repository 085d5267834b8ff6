//! The ADS client task, on the control thread's runtime: opens the stream, (re)sends the
//! subscriptions, hands each decoded response to the control loop as an update and answers it
//! with the ACK or NACK the writer's results make, and reconnects with jittered exponential
//! backoff. The last good config keeps serving through any outage: nothing is removed when the
//! stream goes. It reports readiness once, when the first config is complete or when the
//! initial-fetch timeout passes, whichever comes first.

use super::XdsOptions;
use super::delta::Delta;
use super::state::{AdsState, Sotw, Wire, backoff, node};
use crate::metrics::Metrics;
use crate::state::Applied;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use sluice_config::Update;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

/// Bounds connecting to the server (a black-holed address would otherwise wait for the
/// kernel's timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 PINGs on the otherwise quiet stream, so a server that vanished without closing the
/// connection (a partition, a killed VM) is noticed and the client reconnects.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client asks of the control loop.
#[derive(Debug)]
pub(crate) enum XdsEvent {
    /// Apply this update as xDS's (`Origin::Xds`) and send back the results.
    Apply {
        /// The update.
        update: Update,
        /// The writer's per-resource results.
        reply: oneshot::Sender<Applied>,
    },
    /// The first config is complete (`timed_out` false) or the initial-fetch timeout passed
    /// (`timed_out` true): the proxy may report ready. Acknowledged once handled.
    Ready {
        /// True when the timeout, not a complete config, made it ready.
        timed_out: bool,
        /// Sent once readiness is set.
        done: oneshot::Sender<()>,
    },
}

/// How a flavour of the protocol opens its stream on the ADS service.
trait Open: Wire<Request: Send + 'static, Response: prost::Message + Default + 'static> {
    /// Opens the stream, sending `requests`.
    fn open(
        client: AggregatedDiscoveryServiceClient<Channel>,
        requests: tonic::Request<UnboundedReceiverStream<Self::Request>>,
    ) -> impl Future<Output = Result<Streaming<Self::Response>, tonic::Status>> + Send;
}

impl Open for Sotw {
    async fn open(
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        requests: tonic::Request<UnboundedReceiverStream<Self::Request>>,
    ) -> Result<Streaming<Self::Response>, tonic::Status> {
        Ok(client
            .stream_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}

impl Open for Delta {
    async fn open(
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        requests: tonic::Request<UnboundedReceiverStream<Self::Request>>,
    ) -> Result<Streaming<Self::Response>, tonic::Status> {
        Ok(client
            .delta_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}

/// Why a stream ended.
enum Ended {
    /// The control loop is gone: stop.
    Stopped,
    /// The stream failed or closed; `responded` when a response had arrived on it.
    Lost { responded: bool, why: String },
}

/// Runs the client until the control loop drops its receiver.
pub(crate) async fn run(
    options: XdsOptions,
    events: mpsc::UnboundedSender<XdsEvent>,
    metrics: Arc<Metrics>,
) {
    metrics.xds.preinitialize();
    let mut state = AdsState::new(node(&options.node_id, &options.cluster));
    let warm = Warmup {
        deadline: Instant::now() + options.initial_fetch_timeout,
        done: AtomicBool::new(false),
    };
    let mut failures: u32 = 0;
    loop {
        let ended = warm
            .race(&events, async {
                if options.delta {
                    session::<Delta>(&options, &mut state, &events, &metrics, &warm).await
                } else {
                    session::<Sotw>(&options, &mut state, &events, &metrics, &warm).await
                }
            })
            .await;
        metrics.xds.connected.set(0);
        match ended {
            None | Some(Ended::Stopped) => return,
            Some(Ended::Lost { responded, why }) => {
                if responded {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                let delay = backoff(failures, options.backoff_base, options.backoff_max);
                tracing::warn!(server = %options.server, error = %why, retry_in = ?delay, "xDS stream lost; the last good config keeps serving");
                if warm
                    .race(&events, async {
                        tokio::time::sleep(delay).await;
                        Some(())
                    })
                    .await
                    .is_none()
                {
                    return;
                }
                metrics.xds.reconnects.inc();
            }
        }
    }
}

/// The initial-fetch deadline, raced against whatever the client is doing.
struct Warmup {
    deadline: Instant,
    /// Readiness was reported.
    done: AtomicBool,
}

impl Warmup {
    /// Runs `work`, reporting readiness if the deadline passes first. `None` when the control
    /// loop is gone.
    async fn race<T>(
        &self,
        events: &mpsc::UnboundedSender<XdsEvent>,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                () = tokio::time::sleep_until(self.deadline), if !self.done.load(Ordering::Relaxed) => {
                    tracing::warn!("xDS: no complete config within the initial fetch timeout; reporting ready with what has arrived");
                    if !self.report(events, true).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Reports readiness once; false when the control loop is gone.
    async fn report(&self, events: &mpsc::UnboundedSender<XdsEvent>, timed_out: bool) -> bool {
        if self.done.swap(true, Ordering::Relaxed) {
            return true;
        }
        let (done, rx) = oneshot::channel();
        events.send(XdsEvent::Ready { timed_out, done }).is_ok() && rx.await.is_ok()
    }
}

/// One stream: connect, subscribe, answer responses until it ends.
async fn session<W: Open>(
    options: &XdsOptions,
    state: &mut AdsState,
    events: &mpsc::UnboundedSender<XdsEvent>,
    metrics: &Metrics,
    warm: &Warmup,
) -> Ended {
    let lost = |why: String| Ended::Lost {
        responded: false,
        why,
    };
    let endpoint = match tonic::transport::Endpoint::from_shared(options.server.clone()) {
        Ok(e) => e
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true),
        Err(e) => return lost(format!("invalid server URI: {e}")),
    };
    let connected = if options.server.starts_with("https://") {
        match super::transport::TlsConnector::new(options.ca.as_deref()) {
            Ok(tls) => endpoint.connect_with_connector(tls).await,
            Err(e) => return lost(format!("cannot set up TLS to the server: {e}")),
        }
    } else {
        endpoint.connect().await
    };
    let channel = match connected {
        Ok(c) => c,
        Err(e) => return lost(format!("cannot connect: {}", chain(&e))),
    };
    let client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::unbounded_channel::<W::Request>();
    for request in state.reconnect_as::<W>() {
        let _ = tx.send(request);
    }
    let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
    if let Some(token) = &options.token {
        match format!("Bearer {token}").parse() {
            Ok(v) => {
                request.metadata_mut().insert("authorization", v);
            }
            Err(_) => return lost("the xDS token is not a valid header value".into()),
        }
    }
    let mut inbound = match W::open(client, request).await {
        Ok(r) => r,
        Err(status) => return lost(format!("stream refused: {status}")),
    };
    metrics.xds.connected.set(1);
    tracing::info!(server = %options.server, node = %options.node_id, delta = options.delta, "xDS stream open");
    let mut responded = false;
    loop {
        let response = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Ended::Lost {
                    responded,
                    why: "the server closed the stream".into(),
                };
            }
            Err(status) => {
                return Ended::Lost {
                    responded,
                    why: status.to_string(),
                };
            }
        };
        responded = true;
        let Some(requests) = answer::<W>(options, state, events, metrics, warm, &response).await
        else {
            return Ended::Stopped;
        };
        for request in requests {
            if tx.send(request).is_err() {
                return Ended::Lost {
                    responded,
                    why: "the request stream closed".into(),
                };
            }
        }
    }
}

/// Decodes and applies one response; returns the requests that answer it (`None` when the
/// control loop is gone).
async fn answer<W: Wire>(
    options: &XdsOptions,
    state: &mut AdsState,
    events: &mpsc::UnboundedSender<XdsEvent>,
    metrics: &Metrics,
    warm: &Warmup,
    response: &W::Response,
) -> Option<Vec<W::Request>> {
    let [_, _, version] = W::head(response);
    let prepared = match state.prepare_as::<W>(response, options.decode) {
        Ok(p) => p,
        Err(refused) => {
            let kind = refused.kind.map_or("unknown", |k| k.as_str());
            metrics.xds.update(kind, "nack");
            tracing::warn!(r#type = kind, version = %version, "xDS update rejected (NACK), nothing applied: {}", refused.why);
            return Some(vec![refused.nack]);
        }
    };
    let kind = prepared.kind;
    let applied = apply(events, prepared.update.clone()).await?;
    let finished = state.finish_as::<W>(prepared, &applied);
    if !finished.cleanup.is_empty() {
        apply(events, finished.cleanup).await?;
    }
    match &finished.nack {
        None => {
            metrics.xds.update(kind.as_str(), "ack");
            tracing::debug!(r#type = kind.as_str(), version = %version, "xDS update applied (ACK)");
        }
        Some(why) => {
            metrics.xds.update(kind.as_str(), "nack");
            tracing::warn!(
                r#type = kind.as_str(),
                version = %version,
                kept = state.version(kind),
                "xDS update rejected (NACK); the accepted resources apply, the rejected ones keep their last good version: {why}"
            );
        }
    }
    if !warm.done.load(Ordering::Relaxed) && state.complete() && !warm.report(events, false).await {
        return None;
    }
    Some(finished.requests)
}

/// An error with its sources (tonic's transport error alone says only "transport error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // io::Error wrapping another error prints it again: say each cause once.
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Has the control loop apply `update`; `None` when it is gone.
async fn apply(events: &mpsc::UnboundedSender<XdsEvent>, update: Update) -> Option<Applied> {
    let (reply, rx) = oneshot::channel();
    events.send(XdsEvent::Apply { update, reply }).ok()?;
    rx.await.ok()
}
