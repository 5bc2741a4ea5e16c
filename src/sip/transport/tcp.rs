//! SIP over TCP: one task per connection frames the byte stream (Content-Length required),
//! one task runs the core for every connection; responses go back on the connection the
//! request came in on.
//!
//! Bounded everywhere: at most [`MAX_CONNECTIONS`] connections, a frame buffer of at most
//! [`crate::sip::msg::MAX_MESSAGE_SIZE`] per connection, bounded queues between the tasks
//! (a slow core slows the readers down; a peer that does not read its responses is
//! disconnected), and an idle timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener as TokioTcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::sip::core::SipCore;
use crate::sip::msg::{ParseFailure, SipMessage, StreamFramer};
use crate::sip::txn::Transport;

use super::{ListenerSettings, SipListener};

/// Most TCP connections served at once; further connections are accepted and closed.
pub(crate) const MAX_CONNECTIONS: usize = 10_000;
/// A connection with no traffic for this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A message must arrive whole within this long of its first octet (a sender trickling bytes
/// to hold the connection is cut off).
pub(crate) const MESSAGE_DEADLINE: Duration = Duration::from_secs(32);
/// Most connections from one IP address.
pub(crate) const MAX_CONNECTIONS_PER_IP: usize = 256;
/// Frames queued from all connections toward the core.
pub(super) const INBOUND_QUEUE: usize = 4096;
/// Responses queued toward one connection before the peer counts as not reading.
pub(super) const OUTBOUND_QUEUE: usize = 256;

pub(super) enum Inbound {
    Opened(SocketAddr, mpsc::Sender<Bytes>),
    ConnectFailed(SocketAddr),
    Frame(SocketAddr, Result<SipMessage, ParseFailure>),
    Closed(SocketAddr),
}

/// TLS on top of the stream: the listener's acceptor and, for trunks, a connector.
#[derive(Clone)]
pub(crate) struct TlsStreams {
    /// Accepts TLS on every connection.
    pub acceptor: TlsAcceptor,
    /// Opens TLS toward trunks (`None`: requests to peers without a connection fail).
    pub connector: Option<TlsConnector>,
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves SIP on a bound TCP listener.
pub(crate) fn serve(
    listener: TokioTcpListener,
    settings: ListenerSettings,
) -> std::io::Result<SipListener> {
    serve_streams(listener, settings, None)
}

/// Serves SIP over TLS on a bound TCP listener.
pub(crate) fn serve_tls(
    listener: TokioTcpListener,
    settings: ListenerSettings,
    tls: TlsStreams,
) -> std::io::Result<SipListener> {
    serve_streams(listener, settings, Some(tls))
}

fn serve_streams(
    listener: TokioTcpListener,
    settings: ListenerSettings,
    tls: Option<TlsStreams>,
) -> std::io::Result<SipListener> {
    let local = listener.local_addr()?;
    let kind = if tls.is_some() {
        super::Kind::Tls
    } else {
        super::Kind::Tcp
    };
    Ok(SipListener::start(local, kind, |signals| {
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let core = tokio::spawn(run_core(
            inbound_rx,
            inbound.clone(),
            settings,
            local,
            signals.draining,
            signals.stop.clone(),
            signals.commands,
            signals.handle,
            Outbound::Connect(tls.as_ref().and_then(|t| t.connector.clone())),
        ));
        let accept = tokio::spawn(accept_loop(
            listener,
            inbound,
            signals.stop,
            tls.map(|t| t.acceptor),
        ));
        vec![core, accept]
    }))
}

async fn accept_loop(
    listener: TokioTcpListener,
    inbound: mpsc::Sender<Inbound>,
    mut stop: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_ip: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>> = Arc::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "SIP TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(%peer, "SIP TCP connection limit reached; closing");
                    continue;
                };
                {
                    let mut counts = per_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let n = counts.entry(peer.ip()).or_insert(0);
                    if *n >= MAX_CONNECTIONS_PER_IP {
                        tracing::warn!(%peer, "SIP TCP connections from this address at the limit; closing");
                        continue;
                    }
                    *n += 1;
                }
                let inbound = inbound.clone();
                let stop = stop.clone();
                let per_ip = Arc::clone(&per_ip);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    match tls {
                        None => connection(stream, peer, inbound, stop).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => connection(stream, peer, inbound, stop).await,
                                Ok(Err(e)) => tracing::info!(%peer, error = %e, "SIP TLS handshake failed"),
                                Err(_) => tracing::info!(%peer, "SIP TLS handshake timed out"),
                            }
                        }
                    }
                    let mut counts = per_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(n) = counts.get_mut(&peer.ip()) {
                        *n -= 1;
                        if *n == 0 {
                            counts.remove(&peer.ip());
                        }
                    }
                    drop(permit);
                });
            }
            _ = stop.changed() => return,
        }
    }
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUTBOUND_QUEUE);
    if inbound.send(Inbound::Opened(peer, out_tx)).await.is_err() {
        return;
    }
    let write = async move {
        while let Some(bytes) = out_rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    };
    let read = async {
        let mut framer = StreamFramer::new();
        let mut buf = vec![0u8; 16 * 1024];
        // When the partial message in the framer started arriving.
        let mut message_started: Option<tokio::time::Instant> = None;
        loop {
            let wait = match message_started {
                Some(t0) => MESSAGE_DEADLINE
                    .saturating_sub(t0.elapsed())
                    .min(IDLE_TIMEOUT),
                None => IDLE_TIMEOUT,
            };
            let n = tokio::select! {
                r = tokio::time::timeout(wait, reader.read(&mut buf)) => match r {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(n)) => n,
                    Err(_) => {
                        tracing::debug!(%peer, partial = message_started.is_some(),
                            "SIP TCP connection idle or message incomplete; closing");
                        return;
                    }
                },
                _ = stop.changed() => return,
            };
            framer.push(&buf[..n]);
            loop {
                match framer.next_message() {
                    Ok(Some(msg)) => {
                        if inbound.send(Inbound::Frame(peer, Ok(msg))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        message_started = match (framer.buffered(), message_started) {
                            (0, _) => None,
                            (_, Some(t0)) => Some(t0),
                            (_, None) => Some(tokio::time::Instant::now()),
                        };
                        break;
                    }
                    Err(failure) => {
                        // The stream cannot be re-synchronised (RFC 3261 §18.3): answer if
                        // possible, then close.
                        let _ = inbound.send(Inbound::Frame(peer, Err(failure))).await;
                        return;
                    }
                }
            }
        }
    };
    tokio::pin!(write);
    let written = tokio::select! {
        _ = read => false,
        _ = &mut write => true,
    };
    let _ = inbound.send(Inbound::Closed(peer)).await;
    if !written {
        // Let the writer flush what the core already queued for this peer (a final 400).
        let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
    }
}

/// How a stream listener reaches a peer it has no connection with.
#[derive(Clone)]
pub(super) enum Outbound {
    /// Opens a TCP connection (TLS with a connector).
    Connect(Option<TlsConnector>),
    /// Cannot: the peer must connect first (WebSocket phones).
    Never,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_core(
    mut inbound: mpsc::Receiver<Inbound>,
    inbound_tx: mpsc::Sender<Inbound>,
    settings: ListenerSettings,
    local: SocketAddr,
    mut draining: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    mut commands: mpsc::Receiver<crate::sip::core::SipCommand>,
    handle: super::SipHandle,
    outbound: Outbound,
) {
    let mut core = SipCore::new(
        Transport::Reliable,
        settings.timers,
        local,
        super::rand_seed(),
    )
    .with_admission(settings.admission);
    if let Some(sources) = settings.sources.clone() {
        core = core.with_sources(sources);
    }
    let agents = settings.agents.clone();
    if let Some(agents) = agents.clone() {
        core = core.with_agents(agents, handle.kind());
    }
    match handle.kind() {
        super::Kind::Tls => core = core.with_via_protocol("TLS"),
        super::Kind::Ws => core = core.with_via_protocol("WS"),
        super::Kind::Wss => core = core.with_via_protocol("WSS"),
        super::Kind::Udp | super::Kind::Tcp => {}
    }
    let user = settings.user;
    if user.is_some() {
        core = core.with_user();
    }
    let mut conns: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    // Messages for peers we are connecting to (outbound requests), sent once connected.
    let mut connecting: HashMap<SocketAddr, Vec<Bytes>> = HashMap::new();
    loop {
        let deadline = core.poll_timeout();
        tokio::select! {
            msg = inbound.recv() => match msg {
                Some(Inbound::Opened(peer, tx)) => {
                    for bytes in connecting.remove(&peer).unwrap_or_default() {
                        let _ = tx.try_send(bytes);
                    }
                    conns.insert(peer, tx);
                }
                Some(Inbound::ConnectFailed(peer)) => {
                    connecting.remove(&peer);
                    core.transport_failed(Instant::now(), peer);
                }
                Some(Inbound::Frame(peer, framed)) => core.handle_frame(Instant::now(), framed, peer),
                Some(Inbound::Closed(peer)) => {
                    conns.remove(&peer);
                    // An agent's binding lives on its connection.
                    if let Some(agents) = &agents {
                        agents.flow_closed(peer);
                    }
                }
                None => return,
            },
            _ = super::sleep_until(deadline), if deadline.is_some() => core.handle_timeout(Instant::now()),
            Some(command) = commands.recv() => super::execute_queued(&mut core, command, &mut commands),
            changed = draining.changed() => {
                if changed.is_ok() {
                    core.set_draining(*draining.borrow());
                }
            }
            _ = stop.changed() => return,
        }
        while let Some(event) = core.poll_event() {
            super::hand_to_user(&mut core, user.as_deref(), &handle, event);
        }
        while let Some((to, bytes)) = core.poll_transmit() {
            match conns.get(&to) {
                Some(tx) => {
                    if tx.try_send(bytes).is_err() {
                        tracing::warn!(peer = %to, "SIP TCP peer not reading its messages; dropping the connection");
                        conns.remove(&to);
                    }
                }
                None if bytes.starts_with(b"SIP/2.0 ") => {
                    tracing::debug!(peer = %to, "SIP TCP response for a closed connection")
                }
                None => {
                    let connector = match &outbound {
                        Outbound::Connect(connector) => connector.clone(),
                        Outbound::Never => {
                            tracing::debug!(peer = %to, "no connection to the peer; the request fails");
                            let _ = inbound_tx.try_send(Inbound::ConnectFailed(to));
                            continue;
                        }
                    };
                    // A request to a peer with no connection: open one (RFC 3261 §18.1.1).
                    let queue = connecting.entry(to).or_default();
                    if queue.is_empty() {
                        if handle.is_tls() && connector.is_none() {
                            tracing::warn!(peer = %to, "no TLS connector (sip.tls.ca): cannot reach the peer");
                            let _ = inbound_tx.try_send(Inbound::ConnectFailed(to));
                        } else {
                            tokio::spawn(connect(to, inbound_tx.clone(), stop.clone(), connector));
                        }
                    }
                    if queue.len() < OUTBOUND_QUEUE {
                        queue.push(bytes);
                    }
                }
            }
        }
    }
}

/// How long an outbound connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(
    peer: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    stop: watch::Receiver<bool>,
    tls: Option<TlsConnector>,
) {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            let Some(connector) = tls else {
                connection(stream, peer, inbound, stop).await;
                return;
            };
            // Trunks are addressed by IP: their certificate must name that IP; a peer
            // reached by a DNS name (Meta's proxy) must carry that name.
            let name = super::tls::server_name(peer);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
                Ok(Ok(stream)) => connection(stream, peer, inbound, stop).await,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "SIP TLS connection failed");
                    let _ = inbound.send(Inbound::ConnectFailed(peer)).await;
                }
                Err(_) => {
                    tracing::warn!(%peer, "SIP TLS handshake timed out");
                    let _ = inbound.send(Inbound::ConnectFailed(peer)).await;
                }
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "SIP TCP connection failed");
            let _ = inbound.send(Inbound::ConnectFailed(peer)).await;
        }
        Err(_) => {
            tracing::warn!(%peer, "SIP TCP connection timed out");
            let _ = inbound.send(Inbound::ConnectFailed(peer)).await;
        }
    }
}
