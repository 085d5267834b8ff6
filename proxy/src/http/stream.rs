//! The stream idle timeout of downstream HTTP/2 streams, once their response has started.
//!
//! hyper spawns one task per HTTP/2 stream through the connection's executor; that task
//! runs the request future and then sends the response body. While the client gives the stream
//! no flow-control window, hyper does not poll the body at all, so a timer inside the body
//! would never fire. The task is the seam: [`StreamExec`] wraps it in [`IdleStream`], which
//! treats every wake-up of the task after the response started (window updates from the
//! client, response data from the upstream) as progress, and drops the task when there has
//! been none for the timeout. Dropping hyper's stream task makes h2 reset the stream with
//! `CANCEL`; the response body goes with it, releasing the upstream connection or stream, and
//! the connection keeps serving its other streams. Before the response starts the request
//! future bounds itself (`cluster::call::RouteTimeout`), because the request body is polled by
//! the upstream connection's task, not this one: the wrapper is armed when the request future
//! hands its response to hyper ([`responding`]). The cost per stream is a non-atomic `Rc`
//! increment, a coarse clock read per wake-up and one coarse deadline (`clock.rs`), no tokio
//! timer.

use crate::clock::{Deadline, coarse_now};
use crate::http::HttpConn;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

thread_local! {
    /// Set by the request future when it hands hyper its response; read (and cleared) by the
    /// [`IdleStream`] whose poll ran it. Requests on HTTP/1.1 connections set it too and nobody
    /// reads it.
    static RESPONDED: Cell<bool> = const { Cell::new(false) };
}

/// The request future is returning its response: from now on the stream's task itself is
/// watched for progress.
pub(crate) fn responding() {
    RESPONDED.with(|r| r.set(true));
}

/// The executor of one downstream HTTP/2 connection: spawns each stream's task on the worker,
/// under the stream idle timeout when one is set.
#[derive(Clone, Debug)]
pub(crate) struct StreamExec {
    idle: Option<(Duration, Rc<HttpConn>)>,
}

impl StreamExec {
    pub(crate) fn new(conn: &Rc<HttpConn>, idle: Option<Duration>) -> Self {
        StreamExec {
            idle: idle.map(|d| (d, Rc::clone(conn))),
        }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + 'static,
{
    fn execute(&self, fut: F) {
        match &self.idle {
            None => drop(tokio::task::spawn_local(fut)),
            Some((idle, conn)) => drop(tokio::task::spawn_local(IdleStream::new(
                fut,
                *idle,
                Some(Rc::clone(conn)),
            ))),
        }
    }
}

pin_project_lite::pin_project! {
    /// One HTTP/2 stream's task under the stream idle timeout (see the module docs).
    pub(crate) struct IdleStream<F> {
        #[pin]
        fut: F,
        #[pin]
        deadline: Option<Deadline>,
        // When the task last made progress (coarse).
        last: Instant,
        idle: Duration,
        // For the metric and the log; `None` in unit tests.
        conn: Option<Rc<HttpConn>>,
    }
}

impl<F> IdleStream<F> {
    fn new(fut: F, idle: Duration, conn: Option<Rc<HttpConn>>) -> Self {
        IdleStream {
            fut,
            deadline: None,
            last: coarse_now(),
            idle,
            conn,
        }
    }
}

impl<F: Future<Output = ()>> Future for IdleStream<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let Some(deadline) = this.deadline.as_mut().as_pin_mut() else {
            // Not armed: the request future (which bounds itself) is still running.
            RESPONDED.with(|r| r.set(false));
            let polled = this.fut.poll(cx);
            if polled.is_pending() && RESPONDED.with(|r| r.replace(false)) {
                *this.last = coarse_now();
                this.deadline
                    .set(Some(Deadline::until(*this.last + *this.idle)));
                if let Some(d) = this.deadline.as_pin_mut() {
                    // Registers the deadline (it cannot have passed yet).
                    let _ = d.poll(cx);
                }
            }
            return polled;
        };
        if deadline.poll(cx).is_ready() {
            // The deadline is re-armed lazily: progress only moves `last`.
            let at = *this.last + *this.idle;
            if coarse_now() >= at {
                if let Some(conn) = this.conn.as_ref() {
                    // Sluice's reset, not the client's: not a premature reset.
                    conn.state.ending_stream_locally();
                    conn.state.metrics.rejected("stream_idle_timeout");
                    tracing::debug!(peer = %conn.info.peer, idle = ?this.idle, "HTTP/2 stream reset: no progress within the stream idle timeout");
                }
                // Dropping the stream's task (when this task ends) resets the stream.
                return Poll::Ready(());
            }
            this.deadline.set(Some(Deadline::until(at)));
            if let Some(d) = this.deadline.as_mut().as_pin_mut() {
                let _ = d.poll(cx);
            }
        } else {
            // Woken by something else than the deadline: the stream moved.
            *this.last = coarse_now();
        }
        this.fut.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream task: answers after `respond_after`, then makes progress at the given times
    /// (offsets from the start) and ends after the last one. Records how far it got.
    async fn stream(respond_after: Duration, progress: Vec<Duration>, done: Rc<Cell<usize>>) {
        tokio::time::sleep(respond_after).await;
        responding();
        let t0 = Instant::now();
        for (i, p) in progress.iter().enumerate() {
            tokio::time::sleep_until(t0 + *p).await;
            done.set(i + 1);
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_without_progress_is_dropped_after_the_idle_timeout() {
        let done = Rc::new(Cell::new(0));
        let t0 = Instant::now();
        // The request phase (30 s) is not the wrapper's to bound; then progress at 5 s and
        // 12 s, then a stall of 60 s.
        let task = stream(
            secs(30),
            vec![secs(5), secs(12), secs(72)],
            Rc::clone(&done),
        );
        IdleStream::new(task, secs(10), None).await;
        assert_eq!(done.get(), 2, "the stalled step never completed");
        assert_eq!(t0.elapsed(), secs(30 + 12 + 10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_keeps_progressing_finishes() {
        let done = Rc::new(Cell::new(0));
        let steps = (1..=10).map(|i| secs(i * 9)).collect();
        IdleStream::new(stream(secs(1), steps, Rc::clone(&done)), secs(10), None).await;
        assert_eq!(done.get(), 10);
    }
}
