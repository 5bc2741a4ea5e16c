//! The tokio driver of the SIP core: owns the sockets, feeds [`SipCore`] what arrives and the
//! time, sends what it asks, re-arms its timer. No SIP logic lives here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub(crate) mod tcp;
pub(crate) mod tls;
pub(crate) mod ws;

use super::core::{CoreEvent, SipCommand, SipCore};
use super::overload::RateLimiter;
use super::trunk::{ProbeTarget, TrunkHealth, TrunkMonitor};
use super::txn::{TimerConfig, Transport};

/// Largest UDP datagram read (a SIP message over UDP must fit one).
const MAX_DATAGRAM: usize = 65_535;

/// Datagrams read in one pass of a UDP listener before it looks at its timers and commands.
const RECV_BATCH: usize = 32;

/// Commands queued toward one listener's core; senders wait when it is full.
const COMMAND_QUEUE: usize = 8192;

/// Sends commands to the SIP core of one listener (the task that owns it runs them).
#[derive(Debug, Clone)]
pub(crate) struct SipHandle {
    tx: mpsc::Sender<SipCommand>,
    local: SocketAddr,
    kind: Kind,
}

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket (RFC 7118), on the HTTP listener.
    Ws,
    /// Secure WebSocket (RFC 7118), on the HTTP listener when it speaks TLS.
    Wss,
}

impl Kind {
    /// A WebSocket (a browser phone's), secure or not.
    pub(crate) fn is_websocket(self) -> bool {
        matches!(self, Kind::Ws | Kind::Wss)
    }
}

impl SipHandle {
    /// A TLS handle bound to no listener, and what is queued on it (sans-IO tests).
    #[cfg(test)]
    pub(crate) fn detached_for_tests() -> (SipHandle, mpsc::Receiver<SipCommand>) {
        let (tx, rx) = mpsc::channel(16);
        let handle = SipHandle {
            tx,
            local: SocketAddr::from(([127, 0, 0, 1], 5061)),
            kind: Kind::Tls,
        };
        (handle, rx)
    }

    /// Queues `command`; false when the listener is gone.
    pub(crate) async fn send(&self, command: SipCommand) -> bool {
        self.tx.send(command).await.is_ok()
    }

    /// Queues `command` without waiting (from a `Drop`, which may run outside the
    /// runtime); false when the listener is gone or its queue is full.
    pub(crate) fn try_send(&self, command: SipCommand) -> bool {
        self.tx.try_send(command).is_ok()
    }

    /// The listener's address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// TCP or TLS (no retransmissions).
    pub(crate) fn is_reliable(&self) -> bool {
        self.kind != Kind::Udp
    }

    /// TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.kind == Kind::Tls
    }

    /// The listener's transport.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }
}

/// The transaction user of a node's listeners: takes new INVITEs and requests inside
/// dialogs, and the outcomes of the requests it sends.
pub(crate) trait SipUser: Send + Sync + 'static {
    /// An event from the core behind `origin`. A returned command runs on that core at
    /// once (an immediate answer such as 403 or 481).
    fn on_event(&self, event: CoreEvent, origin: &SipHandle) -> Option<SipCommand>;
}

/// What every SIP listener of a node shares.
#[derive(Debug, Clone)]
pub(crate) struct ListenerSettings {
    /// Transaction timers.
    pub timers: TimerConfig,
    /// New-INVITE rate limit, shared by all listeners.
    pub admission: Arc<Mutex<RateLimiter>>,
    /// Trunks the UDP listener probes with OPTIONS.
    pub probes: Vec<ProbeTarget>,
    /// Where probe results go.
    pub health: TrunkHealth,
    /// Takes INVITEs and dialogs; without one the switch answers them itself (404, 481).
    pub user: Option<Arc<dyn SipUser>>,
    /// Who may start calls (`None`: anyone; the transaction user decides).
    pub sources: Option<Arc<super::source::Sources>>,
    /// Agents whose phones register here (`None`: REGISTER is refused 405).
    pub agents: Option<Arc<super::registrar::Agents>>,
}

impl std::fmt::Debug for dyn SipUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SipUser")
    }
}

/// A running SIP listener (a UDP socket, or a TCP acceptor and its connections).
pub(crate) struct SipListener {
    local: SocketAddr,
    handle: SipHandle,
    draining: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a listener's tasks watch: drain (new INVITEs get 503) and stop, and the commands of
/// the transaction user.
struct Signals {
    draining: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    commands: mpsc::Receiver<SipCommand>,
    handle: SipHandle,
}

impl SipListener {
    /// A listener at `local` whose tasks `start` spawns, given the signals to watch.
    fn start(
        local: SocketAddr,
        kind: Kind,
        start: impl FnOnce(Signals) -> Vec<JoinHandle<()>>,
    ) -> Self {
        let (draining, draining_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let handle = SipHandle { tx, local, kind };
        let tasks = start(Signals {
            draining: draining_rx,
            stop: stop_rx,
            commands,
            handle: handle.clone(),
        });
        Self {
            local,
            handle,
            draining,
            stop,
            tasks,
        }
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Where a transaction user sends this listener's core commands.
    pub(crate) fn handle(&self) -> SipHandle {
        self.handle.clone()
    }

    /// New INVITEs get 503 from now on.
    pub(crate) fn begin_drain(&self) {
        let _ = self.draining.send(true);
    }

    /// Stops serving (open TCP connections are closed) and waits for the tasks to end.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Serves SIP on a bound UDP socket, probing the configured trunks.
pub(crate) fn serve_udp_socket(
    socket: UdpSocket,
    settings: ListenerSettings,
) -> std::io::Result<SipListener> {
    let local = socket.local_addr()?;
    size_buffers(&socket, local);
    Ok(SipListener::start(local, Kind::Udp, |signals| {
        vec![tokio::spawn(serve_udp(socket, settings, signals))]
    }))
}

/// Socket buffers a SIP UDP listener asks for. The kernel's default (about 200 KiB, some 90
/// datagrams on loopback) overflows in the first burst of an overload, and every datagram it
/// drops is a retransmission later; 4 MiB holds a second of signalling at thousands of calls
/// per second.
const UDP_BUFFER: usize = 4 << 20;

/// Asks for [`UDP_BUFFER`] both ways; warns when the kernel grants less
/// (`net.core.rmem_max` / `wmem_max` cap what a process may ask for).
fn size_buffers(socket: &UdpSocket, local: SocketAddr) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    // Linux reports twice what it granted (it counts its bookkeeping).
    let granted = sock.recv_buffer_size().unwrap_or(0) / 2;
    if granted < UDP_BUFFER {
        tracing::warn!(
            %local,
            granted_kib = granted / 1024,
            wanted_kib = UDP_BUFFER / 1024,
            "SIP UDP receive buffer smaller than wanted: bursts may be dropped and retransmitted; \
             raise the cap with sysctl -w net.core.rmem_max={UDP_BUFFER} (and wmem_max)"
        );
    }
}

async fn serve_udp(socket: UdpSocket, settings: ListenerSettings, signals: Signals) {
    let Signals {
        mut draining,
        mut stop,
        mut commands,
        handle,
    } = signals;
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5060)));
    let ListenerSettings {
        timers,
        admission,
        probes,
        health,
        user,
        sources,
        agents,
    } = settings;
    let mut core =
        SipCore::new(Transport::Unreliable, timers, local, rand_seed()).with_admission(admission);
    if let Some(sources) = sources {
        core = core.with_sources(sources);
    }
    if let Some(agents) = agents {
        core = core.with_agents(agents, Kind::Udp);
    }
    if user.is_some() {
        core = core.with_user();
    }
    let mut monitor = TrunkMonitor::new(Instant::now(), local, probes);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // One timer for the listener, moved when the core's next deadline moves.
    let far = || tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
    let sleep = tokio::time::sleep_until(far());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        let deadline = [core.poll_timeout(), monitor.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        if deadline != armed {
            armed = deadline;
            sleep
                .as_mut()
                .reset(deadline.map_or_else(far, tokio::time::Instant::from_std));
        }
        tokio::select! {
            ready = socket.readable() => {
                if ready.is_ok() {
                    // What is queued is read in one pass (bounded, so timers and commands
                    // are not starved), each datagram handled as it comes.
                    for _ in 0..RECV_BATCH {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => core.handle_datagram(
                                Instant::now(),
                                Bytes::copy_from_slice(&buf[..n]),
                                from,
                            ),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            // ICMP port unreachable from an earlier send shows up here on
                            // Linux; the socket is still good.
                            Err(e) => tracing::debug!(error = %e, "SIP UDP receive error"),
                        }
                    }
                }
            },
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                let now = Instant::now();
                core.handle_timeout(now);
                monitor.handle_timeout(now, &mut core);
            }
            Some(command) = commands.recv() => execute_queued(&mut core, command, &mut commands),
            changed = draining.changed() => {
                if changed.is_ok() {
                    core.set_draining(*draining.borrow());
                }
            }
            _ = stop.changed() => break,
        }
        while let Some(event) = core.poll_event() {
            if monitor.is_probe(&event) {
                if let Some(change) = monitor.handle_event(Instant::now(), &event) {
                    health.apply(&change);
                }
            } else {
                hand_to_user(&mut core, user.as_deref(), &handle, event);
            }
        }
        while let Some((to, bytes)) = core.poll_transmit() {
            if let Err(e) = socket.send_to(&bytes, to).await {
                tracing::debug!(%to, error = %e, "SIP UDP send failed");
            }
        }
    }
}

/// Runs a command of the transaction user, and the ones queued behind it in the same pass.
fn execute_queued(
    core: &mut SipCore,
    first: SipCommand,
    commands: &mut mpsc::Receiver<SipCommand>,
) {
    let now = Instant::now();
    core.execute(now, first);
    while let Ok(command) = commands.try_recv() {
        core.execute(now, command);
    }
}

/// Gives an event of the core to its transaction user; an immediate answer runs at once.
fn hand_to_user(
    core: &mut SipCore,
    user: Option<&dyn SipUser>,
    handle: &SipHandle,
    event: CoreEvent,
) {
    if let Some(command) = user.and_then(|u| u.on_event(event, handle)) {
        core.execute(Instant::now(), command);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(at) = deadline {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Binds SIP on `addr` for UDP and/or TCP on the same port. With port 0 (tests), a port
/// free for both is found.
pub(crate) async fn bind_sip(
    addr: SocketAddr,
    udp: bool,
    tcp: bool,
    settings: ListenerSettings,
) -> std::io::Result<(Option<SipListener>, Option<SipListener>)> {
    let mut last_err = None;
    for _ in 0..if addr.port() == 0 { 20 } else { 1 } {
        let udp_socket = if udp {
            match UdpSocket::bind(addr).await {
                Ok(s) => Some(s),
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            }
        } else {
            None
        };
        let port = match &udp_socket {
            Some(s) => s.local_addr()?.port(),
            None => addr.port(),
        };
        let tcp_listener = if tcp {
            match tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                Ok(l) => Some(l),
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            }
        } else {
            None
        };
        let udp = udp_socket
            .map(|s| serve_udp_socket(s, settings.clone()))
            .transpose()?;
        let tcp = tcp_listener
            .map(|l| tcp::serve(l, settings.clone()))
            .transpose()?;
        return Ok((udp, tcp));
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no free SIP port")))
}

/// A seed for transaction branches, unique per process start.
fn rand_seed() -> u64 {
    let id = uuid::Uuid::new_v4();
    let (hi, lo) = id.as_u64_pair();
    hi ^ lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sip_socket_gets_the_buffer_the_kernel_allows() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let local = socket.local_addr().expect("local");
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .expect("net.core.rmem_max");
        size_buffers(&socket, local);
        let granted = socket2::SockRef::from(&socket)
            .recv_buffer_size()
            .expect("SO_RCVBUF");
        assert_eq!(granted / 2, UDP_BUFFER.min(cap));
    }
}
