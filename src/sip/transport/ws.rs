//! SIP over WebSocket (RFC 7118): browser phones and WebRTC softphones connect to the HTTP
//! listener at `/sip` with the `sip` subprotocol; each WebSocket message is one SIP message.
//!
//! The connections run under the same core as SIP over TCP ([`super::tcp::run_core`]):
//! responses and requests toward a phone go back over the connection it came from, a
//! request to a phone with no connection fails at once (the switch never dials a WebSocket),
//! and a connection closing removes the agent bindings made over it.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections, messages of at most
//! [`MAX_MESSAGE_SIZE`](crate::sip::msg::MAX_MESSAGE_SIZE), a ping every [`KEEPALIVE`], and
//! a connection with no traffic for [`IDLE_TIMEOUT`] is closed. A message that is not SIP
//! (or not whole) is answered 400 when it can be, and closes its connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use tokio::sync::{mpsc, watch, Semaphore};

use super::tcp::{run_core, Inbound, Outbound, INBOUND_QUEUE, OUTBOUND_QUEUE};
use super::{ListenerSettings, SipListener};
use crate::sip::msg::parse_datagram;

/// Most WebSocket connections served at once; further upgrades are closed.
pub(crate) const MAX_CONNECTIONS: usize = 10_000;
/// A ping goes to a quiet phone this often (keeps NAT bindings and proxies open).
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(30);
/// A connection with nothing received for this long (pongs included) is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the HTTP route hands its upgraded connections.
#[derive(Clone)]
pub(crate) struct WsAcceptor {
    inbound: mpsc::Sender<Inbound>,
    stop: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for WsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsAcceptor")
    }
}

/// Starts the core of SIP over WebSocket for connections arriving on the HTTP listener at
/// `local` (`secure`: it speaks TLS, so Via says `WSS`); the acceptor takes them.
pub(crate) fn serve(
    local: SocketAddr,
    settings: ListenerSettings,
    secure: bool,
) -> (SipListener, WsAcceptor) {
    let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let mut acceptor = None;
    let kind = if secure {
        super::Kind::Wss
    } else {
        super::Kind::Ws
    };
    let listener = SipListener::start(local, kind, |signals| {
        acceptor = Some(WsAcceptor {
            inbound: inbound.clone(),
            stop: signals.stop.clone(),
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        });
        let core = tokio::spawn(run_core(
            inbound_rx,
            inbound.clone(),
            settings,
            local,
            signals.draining,
            signals.stop,
            signals.commands,
            signals.handle,
            Outbound::Never,
        ));
        vec![core]
    });
    let acceptor = acceptor.unwrap_or_else(|| WsAcceptor {
        inbound,
        stop: watch::channel(true).1,
        slots: Arc::new(Semaphore::new(0)),
    });
    (listener, acceptor)
}

impl WsAcceptor {
    /// Serves one upgraded connection from `peer` until it closes.
    pub(crate) async fn serve_connection(self, socket: WebSocket, peer: SocketAddr) {
        let Ok(_permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            tracing::warn!(%peer, "SIP WebSocket connection limit reached; closing");
            return;
        };
        connection(socket, peer, self.inbound, self.stop).await;
    }
}

async fn connection(
    mut socket: WebSocket,
    peer: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    mut stop: watch::Receiver<bool>,
) {
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUTBOUND_QUEUE);
    if inbound.send(Inbound::Opened(peer, out_tx)).await.is_err() {
        return;
    }
    tracing::debug!(%peer, "SIP WebSocket connection open");
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            received = socket.recv() => {
                let data = match received {
                    Some(Ok(Message::Text(text))) => Bytes::from(text.as_str().to_owned()),
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        last_heard = tokio::time::Instant::now();
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(e)) => {
                        tracing::info!(%peer, error = %e, "SIP WebSocket connection failed");
                        break;
                    }
                };
                last_heard = tokio::time::Instant::now();
                match parse_datagram(data) {
                    Ok(msg) => {
                        if inbound.send(Inbound::Frame(peer, Ok(msg))).await.is_err() {
                            break;
                        }
                    }
                    Err(failure) => {
                        tracing::info!(%peer, error = ?failure, "not a SIP message on the WebSocket; closing the connection");
                        let _ = inbound.send(Inbound::Frame(peer, Err(failure))).await;
                        // The core's answer (a 400 when it could make one) goes out first.
                        if let Ok(Some(bytes)) = tokio::time::timeout(Duration::from_millis(200), out_rx.recv()).await {
                            let _ = socket.send(frame(bytes)).await;
                        }
                        break;
                    }
                }
            }
            outgoing = out_rx.recv() => {
                let Some(bytes) = outgoing else { break };
                if socket.send(frame(bytes)).await.is_err() {
                    break;
                }
            }
            _ = keepalive.tick() => {
                if last_heard.elapsed() >= IDLE_TIMEOUT {
                    tracing::info!(%peer, "SIP WebSocket connection silent; closing");
                    break;
                }
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
            }
            _ = stop.changed() => break,
        }
    }
    let _ = inbound.send(Inbound::Closed(peer)).await;
    let _ = socket.send(Message::Close(None)).await;
    tracing::debug!(%peer, "SIP WebSocket connection closed");
}

/// A SIP message as a WebSocket message: text when it is UTF-8 (as browsers send), else
/// binary.
fn frame(bytes: Bytes) -> Message {
    match std::str::from_utf8(&bytes) {
        Ok(text) => Message::Text(text.to_owned().into()),
        Err(_) => Message::Binary(bytes),
    }
}
