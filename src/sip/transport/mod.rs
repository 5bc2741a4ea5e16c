//! The tokio driver of the SIP core: owns the sockets, feeds [`SipCore`] what arrives and the
//! time, sends what it asks, re-arms its timer. No SIP logic lives here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod tcp;

use super::core::SipCore;
use super::overload::RateLimiter;
use super::trunk::{ProbeTarget, TrunkHealth, TrunkMonitor};
use super::txn::{TimerConfig, Transport};

/// Largest UDP datagram read (a SIP message over UDP must fit one).
const MAX_DATAGRAM: usize = 65_535;

/// What every SIP listener of a node shares.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Transaction timers.
    pub timers: TimerConfig,
    /// New-INVITE rate limit, shared by all listeners.
    pub admission: Arc<Mutex<RateLimiter>>,
    /// Trunks the UDP listener probes with OPTIONS.
    pub probes: Vec<ProbeTarget>,
    /// Where probe results go.
    pub health: TrunkHealth,
}

impl ListenerSettings {
    /// Settings with the given timers, no rate limit and no probes.
    pub fn new(timers: TimerConfig) -> Self {
        Self {
            timers,
            admission: Arc::new(Mutex::new(RateLimiter::new(0))),
            probes: Vec::new(),
            health: TrunkHealth::default(),
        }
    }
}

/// A running SIP listener (a UDP socket, or a TCP acceptor and its connections).
pub struct SipListener {
    local: SocketAddr,
    draining: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a listener's tasks watch: drain (new INVITEs get 503) and stop.
struct Signals {
    draining: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

impl SipListener {
    /// A listener at `local` whose tasks `start` spawns, given the signals to watch.
    fn start(local: SocketAddr, start: impl FnOnce(Signals) -> Vec<JoinHandle<()>>) -> Self {
        let (draining, draining_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let tasks = start(Signals {
            draining: draining_rx,
            stop: stop_rx,
        });
        Self {
            local,
            draining,
            stop,
            tasks,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// New INVITEs get 503 from now on.
    pub fn begin_drain(&self) {
        let _ = self.draining.send(true);
    }

    /// Stops serving (open TCP connections are closed) and waits for the tasks to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Serves SIP on a bound UDP socket, probing the configured trunks.
pub fn serve_udp_socket(
    socket: UdpSocket,
    settings: ListenerSettings,
) -> std::io::Result<SipListener> {
    let local = socket.local_addr()?;
    Ok(SipListener::start(local, |signals| {
        vec![tokio::spawn(serve_udp(socket, settings, signals))]
    }))
}

async fn serve_udp(socket: UdpSocket, settings: ListenerSettings, signals: Signals) {
    let Signals {
        mut draining,
        mut stop,
    } = signals;
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5060)));
    let ListenerSettings {
        timers,
        admission,
        probes,
        health,
    } = settings;
    let mut core =
        SipCore::new(Transport::Unreliable, timers, local, rand_seed()).with_admission(admission);
    let mut monitor = TrunkMonitor::new(Instant::now(), local, probes);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let deadline = [core.poll_timeout(), monitor.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => core.handle_datagram(Instant::now(), Bytes::copy_from_slice(&buf[..n]), from),
                // ICMP port unreachable from an earlier send shows up here on Linux; the
                // socket is still good.
                Err(e) => tracing::debug!(error = %e, "SIP UDP receive error"),
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                let now = Instant::now();
                core.handle_timeout(now);
                monitor.handle_timeout(now, &mut core);
            }
            changed = draining.changed() => {
                if changed.is_ok() {
                    core.set_draining(*draining.borrow());
                }
            }
            _ = stop.changed() => break,
        }
        while let Some(event) = core.poll_event() {
            if let Some(change) = monitor.handle_event(Instant::now(), &event) {
                health.apply(&change);
            }
        }
        while let Some((to, bytes)) = core.poll_transmit() {
            if let Err(e) = socket.send_to(&bytes, to).await {
                tracing::debug!(%to, error = %e, "SIP UDP send failed");
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(at) = deadline {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Binds SIP on `addr` for UDP and/or TCP on the same port. With port 0 (tests), a port
/// free for both is found.
pub async fn bind_sip(
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
