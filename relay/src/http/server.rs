//! The HTTP server loop: accepts connections up to `connections_max` in all and
//! `connections_per_ip_max` per client address (further ones are closed at once; behind a
//! trusted proxy with `connections_per_ip_forwarded`, per forwarded client and request), gives each
//! client `header_read_timeout_ms` to send its request headers, closes a connection whose client
//! has taken nothing of what the relay sends for `write_stall_timeout_ms` (`StallGuard`), serves
//! HTTP/1.1 with upgrades (WebSocket), and on shutdown stops accepting and drains open
//! connections for at most a bounded time.

use super::request::forwarded_client;
use super::Shared;
use crate::engine::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use axum::Router;
use formica_protocol::{ErrorCode, Value};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Longest time open connections get to finish after a shutdown signal.
pub const DRAIN_MS_MAX: u64 = 10_000;

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    app: Shared,
    router: Router,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = app.engine.policy.limits.clone();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.connections_max));
    let per_ip: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    let stall = Duration::from_millis(limits.write_stall_timeout_ms);
    tokio::pin!(shutdown);
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the connection limit: close at once; the client may retry.
            drop(sock);
            continue;
        };
        // Behind a trusted proxy, optionally, the per-address cap is the forwarded client's,
        // taken per request below; the proxy's connection counts only under connections_max.
        let by_client = limits.connections_per_ip_forwarded
            && app
                .trusted_proxies
                .iter()
                .any(|t| t.to_canonical() == peer.ip().to_canonical());
        let ip_slot = if by_client {
            None
        } else {
            match IpSlot::take(&per_ip, peer.ip(), limits.connections_per_ip_max) {
                Some(s) => Some(s),
                None => {
                    drop(sock);
                    continue;
                }
            }
        };
        let _ = sock.set_nodelay(true);
        let router = router.clone();
        // The connection's slots live as long as the connection, or as long as a WebSocket
        // upgraded from it (the handler keeps a clone), so upgraded streams count too.
        let hold = ConnHold(Arc::new((permit, ip_slot)));
        let req_hold = hold.clone();
        let meter = ReadMeter::default();
        let req_meter = meter.clone();
        let (per_ip, app_req, per_ip_max) =
            (per_ip.clone(), app.clone(), limits.connections_per_ip_max);
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(req_hold.clone());
            req.extensions_mut().insert(req_meter.clone());
            let router = router.clone();
            let client = by_client
                .then(|| forwarded_client(peer.ip(), &app_req.trusted_proxies, req.headers()));
            let slot = client.map(|c| IpSlot::take(&per_ip, c, per_ip_max));
            async move {
                match slot {
                    None => router.oneshot(req).await,
                    Some(None) => Ok(ApiError::new(
                        ErrorCode::RateLimited,
                        "this client has as many requests open as one address may have connections (limits.connections_per_ip_max)",
                    )
                    .with("retry_after_s", Value::Int(1))
                    .into_response()),
                    Some(Some(slot)) => {
                        // Held by the request (a WebSocket keeps it, `inbox::ws`) and by the
                        // answer's body until it is sent (a stream, until it ends).
                        let hold = ClientHold(Arc::new(slot));
                        req.extensions_mut().insert(hold.clone());
                        let resp = router.oneshot(req).await?;
                        Ok(resp.map(|inner| Body::new(HeldBody { inner, _hold: hold })))
                    }
                }
            }
        });
        let io = StallGuard::new(sock, stall, app.clone(), meter);
        let conn = http.serve_connection(TokioIo::new(io), svc).with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped(&mut stop) => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(hold);
        });
    }
    app.engine
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    app.engine.stopping.send_replace(true);
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.connections_max).unwrap_or(u32::MAX);
    tokio::select! {
        _ = permits.acquire_many(all) => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(Duration::from_millis(DRAIN_MS_MAX)) => tracing::warn!("drain time over; closing the remaining connections"),
    }
}

async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// A connection's place under `connections_max` and `connections_per_ip_max` (none under the
/// latter for a trusted proxy's connection with `connections_per_ip_forwarded`); the places are
/// released when the last clone is dropped.
#[derive(Clone)]
pub struct ConnHold(#[allow(dead_code)] Arc<(tokio::sync::OwnedSemaphorePermit, Option<IpSlot>)>);

/// A request's place of its forwarded client under `connections_per_ip_max`
/// (`connections_per_ip_forwarded`); released when the request, its answer's body and any
/// WebSocket upgraded from it are done.
#[derive(Clone)]
pub struct ClientHold(#[allow(dead_code)] Arc<IpSlot>);

impl std::fmt::Debug for ClientHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientHold")
    }
}

/// An answer's body that keeps its request's [`ClientHold`] until it is sent.
struct HeldBody {
    inner: Body,
    _hold: ClientHold,
}

impl hyper::body::Body for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for ConnHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnHold")
    }
}

/// One connection's share of its address's allowance; released on drop.
struct IpSlot {
    map: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl IpSlot {
    fn take(
        map: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        max: usize,
    ) -> Option<IpSlot> {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// A connection's socket with a bound on how long a write may wait for the client to read.
///
/// A write or flush that cannot proceed because the client's receive window and our send buffer
/// are full starts a timer; any progress clears it. If the timer runs out first, the write fails
/// with `TimedOut`, hyper drops the connection, and its slot, its buffers and (for a stream) its
/// page are released. The same guard stays on the socket after a WebSocket upgrade. A client
/// that is merely slow keeps its connection; one that stopped reading loses it and resumes from
/// its cursor on the next one, so nothing is lost (HTTP-12).
struct StallGuard<T> {
    io: T,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    app: Shared,
    meter: ReadMeter,
}

/// The bytes read from a connection's client so far, also after an upgrade: the WebSocket
/// inbox compares it with the bytes of the frames it has received, so that a frame the client
/// began and did not finish is noticed (`inbox::ws`).
#[derive(Clone, Debug, Default)]
pub struct ReadMeter(Arc<std::sync::atomic::AtomicU64>);

impl ReadMeter {
    /// Bytes read from the client so far.
    pub fn bytes(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<T> StallGuard<T> {
    fn new(io: T, limit: Duration, app: Shared, meter: ReadMeter) -> Self {
        StallGuard {
            io,
            limit,
            stalled: None,
            app,
            meter,
        }
    }

    /// Passes a finished write through and clears the timer; keeps a pending one pending until
    /// the timer runs out.
    fn guard<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.stalled = None;
        self.app
            .engine
            .metrics
            .write_stalls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took nothing for limits.write_stall_timeout_ms",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before) as u64;
        if read > 0 {
            self.meter
                .0
                .fetch_add(read, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.guard(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.guard(cx, r)
    }
}
