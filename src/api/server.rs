//! The HTTP listener: the limits a public endpoint needs, applied before any handler runs.
//!
//! - At most `max_connections` connections; one more is closed at once.
//! - A request's head must be complete within `header_timeout` of the connection waiting
//!   for it (a new connection, or a kept-alive one after its last response): slow headers
//!   and idle keep-alive connections are closed.
//! - A body must arrive whole within `body_timeout` and within its size limit (413 as soon
//!   as it is exceeded, or at once when `Content-Length` says so; 408 when it is too slow).
//! - A connection on which nothing moves either way for `idle_timeout` is closed (a client
//!   that stops reading its response, a stalled body).
//!
//! Each refusal is counted in `waswitch_http_refused_total{reason}`. The webhook route reads
//! its own body ([`read_body`]) so it can sign it as it streams in; every other route gets
//! its body buffered by [`buffer_body`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::config::HttpLimits;
use crate::telemetry;

/// How long connections still open at shutdown may take to finish their request.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Counts one refusal.
pub(crate) fn refused(reason: &'static str) {
    metrics::counter!(telemetry::HTTP_REFUSED_TOTAL, "reason" => reason).increment(1);
}

/// Serves `router` on `listener` within `limits` until `stop` resolves (over TLS when
/// `tls` is given: HTTPS, and WSS for SIP over WebSocket); connections still open then get
/// a few seconds to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl Future<Output = ()>,
) {
    let router = router.layer(axum::middleware::from_fn_with_state(limits, buffer_body));
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Stopping: every connection finishes the request it serves, then closes.
    let (shutdown, shutting_down) = tokio::sync::watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was taken: the
                    // listener itself is fine.
                    tracing::warn!(error = %e, "HTTP connection not accepted");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refused("connection_limit");
            tracing::debug!(%peer, "HTTP connection over the limit; closed");
            drop(stream);
            continue;
        };
        let connection = Connection {
            builder: builder.clone(),
            router: router.clone(),
            peer,
            idle: limits.idle_timeout,
            shutting_down: shutting_down.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => connection.run(stream).await,
                // The handshake is bounded like a request head.
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => connection.run(stream).await,
                        Ok(Err(e)) => {
                            refused("tls_handshake");
                            tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                        }
                        Err(_) => {
                            refused("tls_handshake");
                            tracing::debug!(%peer, "HTTPS handshake too slow; closed");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = shutdown.send(true);
    // Every connection's permit back: all are closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_WAIT, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::info!("HTTP connections still open at shutdown were closed");
    }
}

/// One accepted connection, served until it ends, idles out, or the server stops.
struct Connection {
    builder: hyper::server::conn::http1::Builder,
    router: Router,
    peer: std::net::SocketAddr,
    idle: Duration,
    shutting_down: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    async fn run<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let activity = Activity::new();
        let io = hyper_util::rt::TokioIo::new(Watched {
            inner: stream,
            activity: Arc::clone(&activity),
        });
        // Handlers learn the peer's address (`ConnectInfo`), and a WebSocket upgrade takes
        // the connection over (SIP over WebSocket).
        let inner = hyper_util::service::TowerToHyperService::new(self.router.clone());
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                hyper::service::Service::call(&inner, req)
            });
        let conn = self.builder.serve_connection(io, service).with_upgrades();
        let mut conn = std::pin::pin!(conn);
        let mut closing = false;
        loop {
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        if e.is_timeout() {
                            refused("header_timeout");
                        } else {
                            tracing::debug!(%peer, error = %e, "HTTP connection ended");
                        }
                    }
                    break;
                }
                () = activity.idle_for(self.idle) => {
                    refused("idle_timeout");
                    tracing::debug!(%peer, "HTTP connection idle; closed");
                    break;
                }
                _ = self.shutting_down.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// When bytes last moved on a connection.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last read or write.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A connection that notes when bytes move.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a request body was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyRefused {
    /// Larger than the limit (by `Content-Length`, or as it arrived).
    TooLarge,
    /// Not complete within the body timeout.
    Timeout,
    /// The connection failed mid-body.
    Broken,
}

impl BodyRefused {
    /// The answer: 413 or 408 (the connection is closed after it), or 400.
    pub(crate) fn response(self, limit: usize) -> Response {
        let (status, reason, text) = match self {
            BodyRefused::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {limit} bytes"),
            ),
            BodyRefused::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the body did not arrive in time".to_string(),
            ),
            BodyRefused::Broken => (
                StatusCode::BAD_REQUEST,
                "body_broken",
                "the body could not be read".to_string(),
            ),
        };
        refused(reason);
        let mut response =
            (status, axum::Json(serde_json::json!({ "error": text }))).into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// The body's declared length, if any.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads `body` whole, at most `max` bytes and by `deadline`, handing each piece to
/// `piece` as it arrives (to hash it as it streams in). Refused at once when
/// `declared` (the `Content-Length`) is already over the limit.
pub(crate) async fn read_body(
    body: Body,
    declared: Option<u64>,
    max: usize,
    deadline: Instant,
    mut piece: impl FnMut(&[u8]),
) -> Result<Bytes, BodyRefused> {
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyRefused::TooLarge);
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::with_capacity(declared.map_or(0, |n| n as usize).min(max));
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyRefused::Timeout),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(_))) => return Err(BodyRefused::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(BodyRefused::TooLarge);
            }
            piece(&data);
            buf.extend_from_slice(&data);
        }
    }
}

/// Middleware: every request's body read whole within the limits before its handler runs
/// (the webhook route, which reads its own, is left alone).
pub(crate) async fn buffer_body(
    State(limits): State<HttpLimits>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == crate::meta::ingress::PATH {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let declared = declared_length(&parts.headers);
    let deadline = Instant::now() + limits.body_timeout;
    match read_body(body, declared, limits.max_body, deadline, |_| {}).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(refused) => refused.response(limits.max_body),
    }
}
