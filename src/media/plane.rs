//! The media plane as calls see it: [`MediaPlane`] starts the shards (one thread each) and
//! places each call's pair of legs in one, binds their ports, makes WebRTC legs off the
//! shard threads and picks the shared socket each receives on, and queues commands to the
//! shard that carries a pair ([`MediaPair`]). Each shard thread is supervised: a shard that
//! panics is started again, empty, and the calls it carried hear
//! [`MediaEvent::ShardFailed`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Poll, Waker};

use super::dtmf::Digit;
use super::ports::{PortAllocator, PortLease, Resting};
use super::shard::{Command, LegSockets, NewWebRtcPair, Shard, WAKER};
use super::types::{Side, SourcePolicy};
use super::webrtc::{WebRtcError, WebRtcLeg};
use crate::telemetry;

mod pair;

/// Commands queued toward one shard before senders are refused.
const COMMAND_QUEUE: usize = 4096;

/// Socket buffers asked of the kernel (it may grant less).
const SOCKET_BUFFER: usize = 256 * 1024;

/// DSCP EF (46) in the IP TOS octet.
const TOS_EF: u32 = 46 << 2;

/// Something a shard tells the call that owns a pair.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// The first packet arrived on this side.
    FirstPacket(Side),
    /// This side sent nothing for the configured time.
    Timeout(Side),
    /// A DTMF digit arrived on this side.
    Dtmf(Side, Digit),
    /// ICE and DTLS are up on this side's WebRTC leg: media can flow.
    Connected(Side),
    /// ICE lost this side's WebRTC peer (it may come back; the media timeout decides).
    Disconnected(Side),
    /// The shard relaying the pair failed (it panicked and was started again, empty): the
    /// pair's sockets are closed and its media is gone.
    ShardFailed,
    /// The side being captured was silent for the capture's silence limit.
    Silence(Side),
    /// A capture's file is final: its path, or why there is none.
    CaptureDone(Result<std::path::PathBuf, String>),
    /// A prompt played toward this side ended: played to its end, or cut short by a digit
    /// from this side (barge-in), or not playable (no G.711 codec on this side).
    PromptDone {
        /// Toward which side it played.
        side: Side,
        /// A digit stopped it.
        barged_in: bool,
        /// It played at all.
        played: bool,
    },
}

/// Counters of one side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LegStats {
    /// RTP packets received and accepted.
    pub packets_in: u64,
    /// Their octets.
    pub bytes_in: u64,
    /// Packets sent toward this side's peer.
    pub packets_out: u64,
    /// Packets dropped (foreign source, malformed, nowhere to send).
    pub dropped: u64,
    /// Packets lost on the way to us (RFC 3550 §A.3, duplicates not offsetting loss below 0).
    pub lost: i64,
    /// Interarrival jitter, milliseconds.
    pub jitter_ms: u32,
}

/// What a call gets back when it adds a pair. The plane keeps a copy for as long as the
/// pair lives, so the call hears of its shard failing.
pub type EventSink = Arc<dyn Fn(MediaEvent) + Send + Sync>;

/// The event sinks of the pairs one shard carries, by pair id: who to tell when it fails.
/// Touched when a pair is added or removed, never per packet.
type Owners = Arc<std::sync::Mutex<HashMap<u64, EventSink>>>;

/// Why media could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// No free port pair, or the ports could not be bound.
    #[error("{0}")]
    Ports(String),
    /// The shard is gone or its queue is full.
    #[error("media shard unavailable")]
    Shard,
    /// A socket option could not be set.
    #[error("socket: {0}")]
    Socket(#[from] std::io::Error),
    /// A WebRTC leg could not be made from the peer's SDP.
    #[error("{0}")]
    WebRtc(#[from] WebRtcError),
}

struct ShardHandle {
    tx: SyncSender<Command>,
    waker: Arc<Waker>,
    /// A wake-up is pending (the shard has not begun draining its queue since).
    notified: Arc<std::sync::atomic::AtomicBool>,
    /// The shard's life (see [`Inbox::epoch`](crate::media::shard::Inbox)).
    epoch: Arc<std::sync::atomic::AtomicU64>,
    owners: Owners,
}

struct PlaneInner {
    shards: Vec<ShardHandle>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
    next_shard: AtomicUsize,
    next_id: std::sync::atomic::AtomicU64,
    ip: IpAddr,
    ports: PortAllocator,
    policy: SourcePolicy,
    timeout: Duration,
    opus_complexity: Arc<std::sync::atomic::AtomicU8>,
    /// The shared WebRTC sockets, touched only when a WebRTC leg is set up or removed.
    rtc: Arc<std::sync::Mutex<Vec<RtcSocketInfo>>>,
}

/// A socket WebRTC legs share, as the plane sees it.
struct RtcSocketInfo {
    shard: usize,
    addr: SocketAddr,
    /// The peers' addresses of its legs, with how many legs name each. Datagrams are told
    /// apart by source address, so two legs whose peers share an address (Meta's media
    /// servers receive every call on one port) never share a socket.
    remotes: HashMap<SocketAddr, u32>,
    /// The port, while the socket lives (`None` once its shard failed and closed it).
    lease: Option<PortLease>,
}

/// A WebRTC leg made off the shard threads, waiting to join a pair in its shard
/// ([`MediaPlane::add_webrtc_pair`]). Dropped unused, it gives its socket's place back.
pub struct PreparedWebRtc {
    plane: MediaPlane,
    shard: usize,
    socket: usize,
    remotes: Vec<SocketAddr>,
    leg: Option<Box<WebRtcLeg>>,
}

impl std::fmt::Debug for PreparedWebRtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedWebRtc")
            .field("shard", &self.shard)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl PreparedWebRtc {
    /// Our SDP: the answer to the peer's offer, or our offer.
    pub fn local_sdp(&self) -> &str {
        self.leg.as_deref().map_or("", WebRtcLeg::local_sdp)
    }

    /// The address the leg receives on (the shared socket's).
    pub fn local(&self) -> Option<SocketAddr> {
        self.leg.as_deref().map(WebRtcLeg::local)
    }
}

impl Drop for PreparedWebRtc {
    fn drop(&mut self) {
        if self.leg.is_some() {
            self.plane.release_rtc(self.socket, &self.remotes);
        }
    }
}

/// What side B of a pair with a WebRTC side A is.
#[derive(Debug)]
pub enum FarSide {
    /// A plain RTP leg on a port pair (leased here when `None`).
    Rtp(Option<PortLease>),
    /// No leg: side A's audio is sent back to it (an echo test line).
    Echo,
}

/// The node's media plane: its shards and port pool. Cheap to clone.
#[derive(Clone)]
pub struct MediaPlane {
    inner: Arc<PlaneInner>,
}

impl std::fmt::Debug for MediaPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaPlane")
            .field("shards", &self.inner.shards.len())
            .field("ip", &self.inner.ip)
            .finish()
    }
}

/// A bridged pair of legs in a shard; removed from it when dropped (or closed, when its
/// sockets rest in the shard for a later call).
pub struct MediaPair {
    id: u64,
    shard: usize,
    plane: MediaPlane,
    ports: [u16; 2],
    leases: Vec<PortLease>,
    /// A WebRTC side's shared socket and its peer's addresses, released with the pair.
    rtc: Option<(usize, Vec<SocketAddr>)>,
    removed: bool,
}

impl MediaPlane {
    /// Starts `shards` shard threads (at least one) relaying for legs bound on `ip` with
    /// ports from `ports`.
    pub fn start(
        ip: IpAddr,
        ports: PortAllocator,
        shards: usize,
        policy: SourcePolicy,
        timeout: Duration,
    ) -> std::io::Result<MediaPlane> {
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let opus_complexity = Arc::new(std::sync::atomic::AtomicU8::new(
            super::transcode::DEFAULT_OPUS_COMPLEXITY,
        ));
        let rtc: Arc<std::sync::Mutex<Vec<RtcSocketInfo>>> = Arc::default();
        for n in 0..shards.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = std::sync::mpsc::sync_channel(COMMAND_QUEUE);
            let notified = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let epoch = Arc::new(std::sync::atomic::AtomicU64::new(next_epoch()));
            let inbox = crate::media::shard::Inbox {
                rx,
                notified: notified.clone(),
                epoch: epoch.clone(),
            };
            let complexity = opus_complexity.clone();
            let owners = Owners::default();
            let supervised = Supervised {
                n,
                owners: owners.clone(),
                rtc: rtc.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("media-{n}"))
                .spawn(move || supervised.run(Shard::new(poll, inbox, complexity)))?;
            handles.push(ShardHandle {
                tx,
                waker,
                notified,
                epoch,
                owners,
            });
            threads.push(thread);
        }
        // Resting sockets the pool cannot keep are closed by their shard.
        let evict: Vec<_> = handles
            .iter()
            .map(|h| (h.tx.clone(), h.waker.clone(), h.notified.clone()))
            .collect();
        ports.set_evictor(Arc::new(move |r: Resting| {
            let Some((tx, waker, notified)) = evict.get(r.shard) else {
                return false;
            };
            if tx.try_send(Command::Evict(r)).is_err() {
                return false;
            }
            if !notified.swap(true, Ordering::SeqCst) {
                let _ = waker.wake();
            }
            true
        }));
        Ok(MediaPlane {
            inner: Arc::new(PlaneInner {
                shards: handles,
                threads: std::sync::Mutex::new(threads),
                next_shard: AtomicUsize::new(0),
                next_id: std::sync::atomic::AtomicU64::new(1),
                ip,
                ports,
                policy,
                timeout,
                opus_complexity,
                rtc,
            }),
        })
    }

    /// Makes shard `n` panic (the `fault-injection` feature): it is started again, empty,
    /// and its pairs' calls hear [`MediaEvent::ShardFailed`].
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn inject_shard_panic(&self, n: usize) -> Result<(), MediaError> {
        self.send(n, Command::Panic)
    }

    /// Notes `events` as the owner of pair `id` in `shard`, until the pair is removed.
    fn own(&self, shard: usize, id: u64, events: &EventSink) {
        if let Some(h) = self.inner.shards.get(shard) {
            h.owners
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id, Arc::clone(events));
        }
    }

    fn disown(&self, shard: usize, id: u64) {
        if let Some(h) = self.inner.shards.get(shard) {
            h.owners
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
        }
    }

    /// The Opus encoder complexity (0-10) of transcoders built from now on.
    pub fn set_opus_complexity(&self, complexity: u8) {
        self.inner
            .opus_complexity
            .store(complexity.min(10), Ordering::Relaxed);
    }

    /// The address legs bind and SDP advertises.
    pub fn ip(&self) -> IpAddr {
        self.inner.ip
    }

    fn send(&self, shard: usize, command: Command) -> Result<(), MediaError> {
        self.queue(shard, command)?;
        self.wake(shard);
        Ok(())
    }

    /// Queues `command` without waking the shard: it runs when the shard next wakes (for
    /// the next command sent, a packet, a timer), within a tick at the latest.
    fn queue(&self, shard: usize, command: Command) -> Result<(), MediaError> {
        let handle = self.inner.shards.get(shard).ok_or(MediaError::Shard)?;
        handle.tx.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => MediaError::Shard,
        })
    }

    /// Wakes `shard` to run its queued commands (one wake-up for all queued meanwhile).
    fn wake(&self, shard: usize) {
        if let Some(handle) = self.inner.shards.get(shard) {
            if !handle.notified.swap(true, Ordering::SeqCst) {
                let _ = handle.waker.wake();
            }
        }
    }

    /// Two legs (RTP on an even port, RTCP on the next), bridged at once in the shard where
    /// kept sockets rest or in the next one; `events` hears what happens on them.
    pub fn add_pair(&self, events: EventSink) -> Result<MediaPair, MediaError> {
        let pair = self.add_pair_on([None, None], events)?;
        self.wake(pair.shard);
        Ok(pair)
    }

    /// Like [`add_pair`](Self::add_pair), on ports already leased where given (a port that
    /// cannot be bound is replaced by another from the pool). A pair on sockets resting in
    /// the shard is taken with the next command or packet (commands run before packets),
    /// within a tick at the latest: a call's setup wakes the shard once less.
    pub fn add_pair_on(
        &self,
        leases: [Option<PortLease>; 2],
        events: EventSink,
    ) -> Result<MediaPair, MediaError> {
        let [a, b] = leases;
        // Where the leased ports' sockets rest, the pair is relayed; else in the next shard.
        let shard = a
            .iter()
            .chain(b.iter())
            .filter_map(PortLease::resting)
            .find(|r| self.is_current(r))
            .map_or_else(
                || self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % self.inner.shards.len(),
                |r| r.shard,
            );
        let (mut a_lease, a) = self.leg_sockets(a, shard)?;
        let (mut b_lease, b) = match self.leg_sockets(b, shard) {
            Ok(b) => b,
            Err(e) => {
                keep_resting(&mut a_lease, &a);
                return Err(e);
            }
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let ports = [a_lease.port(), b_lease.port()];
        // Resting sockets are registered already: what reaches them wakes the shard, which
        // runs its commands (this addition) before it reads them. New ones are registered
        // at once.
        let resting = matches!((&a, &b), (LegSockets::Resting(_), LegSockets::Resting(_)));
        self.own(shard, id, &events);
        let kept = [resting_of(&a), resting_of(&b)];
        let add = Command::Add {
            id,
            sockets: [a, b],
            policy: self.inner.policy,
            timeout: self.inner.timeout,
            events,
        };
        let queued = if resting {
            self.queue(shard, add)
        } else {
            self.send(shard, add)
        };
        if let Err(e) = queued {
            self.disown(shard, id);
            // The shard never took them: resting sockets stay in the pool's records.
            for (lease, r) in [&mut a_lease, &mut b_lease].into_iter().zip(kept) {
                if let Some(r) = r {
                    lease.give_back(r);
                }
            }
            return Err(e);
        }
        Ok(MediaPair {
            id,
            shard,
            plane: self.clone(),
            ports,
            leases: vec![a_lease, b_lease],
            rtc: None,
            removed: false,
        })
    }

    /// Makes a WebRTC leg answering the peer's `offer` (Meta's, in a connect webhook). This
    /// costs milliseconds of CPU (DTLS, ICE): run it off async tasks' threads.
    pub fn webrtc_answer(&self, offer: &str) -> Result<PreparedWebRtc, MediaError> {
        let peer = super::webrtc::PeerDescription::parse(offer)?;
        let remotes = peer.candidate_addrs(self.inner.ip.is_ipv4());
        self.prepare_webrtc(remotes, |local, now| {
            WebRtcLeg::accept_offer(offer, local, now)
        })
    }

    /// Makes a WebRTC leg with our offer (business-initiated calls: it goes to Meta's
    /// `connect`); the peer's answer is applied with [`MediaPair::webrtc_answer`]. Costs
    /// milliseconds of CPU, as [`webrtc_answer`](Self::webrtc_answer) does.
    pub fn webrtc_offer(&self) -> Result<PreparedWebRtc, MediaError> {
        self.prepare_webrtc(Vec::new(), WebRtcLeg::offer)
    }

    /// Makes a WebRTC leg with our offer in shard `shard`, to stand in for side B of a pair
    /// there ([`MediaPair::set_webrtc_b`]). Costs milliseconds of CPU, as
    /// [`webrtc_answer`](Self::webrtc_answer) does.
    pub fn webrtc_offer_in(&self, shard: usize) -> Result<PreparedWebRtc, MediaError> {
        self.prepare_webrtc_in(Some(shard), Vec::new(), WebRtcLeg::offer)
    }

    /// Makes a WebRTC leg answering a browser's `offer` in shard `shard`, to stand in for
    /// side B of a pair there ([`MediaPair::set_webrtc_b`]). Costs milliseconds of CPU.
    pub fn webrtc_answer_in(
        &self,
        shard: usize,
        offer: &str,
    ) -> Result<PreparedWebRtc, MediaError> {
        super::webrtc::PeerDescription::parse(offer)?;
        self.prepare_webrtc_in(Some(shard), Vec::new(), |local, now| {
            WebRtcLeg::accept_offer(offer, local, now)
        })
    }

    fn prepare_webrtc(
        &self,
        remotes: Vec<SocketAddr>,
        build: impl FnOnce(SocketAddr, Instant) -> Result<WebRtcLeg, WebRtcError>,
    ) -> Result<PreparedWebRtc, MediaError> {
        self.prepare_webrtc_in(None, remotes, build)
    }

    fn prepare_webrtc_in(
        &self,
        shard: Option<usize>,
        remotes: Vec<SocketAddr>,
        build: impl FnOnce(SocketAddr, Instant) -> Result<WebRtcLeg, WebRtcError>,
    ) -> Result<PreparedWebRtc, MediaError> {
        let (shard, socket, local) = self.place_rtc(shard, &remotes)?;
        // From here a failure gives the place back (on drop).
        let mut prepared = PreparedWebRtc {
            plane: self.clone(),
            shard,
            socket,
            remotes,
            leg: None,
        };
        let leg = match build(local, Instant::now()) {
            Ok(leg) => leg,
            Err(e) => {
                self.release_rtc(socket, &prepared.remotes);
                prepared.remotes.clear();
                prepared.socket = usize::MAX;
                return Err(e.into());
            }
        };
        prepared.leg = Some(Box::new(leg));
        Ok(prepared)
    }

    /// Picks the shared socket a new WebRTC leg receives on: the first socket of `shard`
    /// (else the next shard) none of whose legs' peers has one of `remotes`; binds a new one
    /// when there is none.
    fn place_rtc(
        &self,
        shard: Option<usize>,
        remotes: &[SocketAddr],
    ) -> Result<(usize, usize, SocketAddr), MediaError> {
        let shard = match shard {
            Some(s) if s < self.inner.shards.len() => s,
            _ => self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % self.inner.shards.len(),
        };
        let mut sockets = self
            .inner
            .rtc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let free = sockets.iter().position(|s| {
            s.shard == shard
                && s.lease.is_some()
                && !remotes.iter().any(|r| s.remotes.contains_key(r))
        });
        let index = match free {
            Some(i) => i,
            None => {
                let (lease, (socket, rtcp)) = self.bind_new()?;
                // The RTCP port of the pair stays unused: WebRTC multiplexes RTCP.
                drop(rtcp);
                let addr = socket.local_addr()?;
                let index = sockets.len();
                self.send(shard, Command::RtcSocket { index, socket })?;
                sockets.push(RtcSocketInfo {
                    shard,
                    addr,
                    remotes: HashMap::new(),
                    lease: Some(lease),
                });
                index
            }
        };
        let info = &mut sockets[index];
        for r in remotes {
            *info.remotes.entry(*r).or_default() += 1;
        }
        Ok((info.shard, index, info.addr))
    }

    fn release_rtc(&self, socket: usize, remotes: &[SocketAddr]) {
        let mut sockets = self
            .inner
            .rtc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(info) = sockets.get_mut(socket) else {
            return;
        };
        for r in remotes {
            if let Some(n) = info.remotes.get_mut(r) {
                *n -= 1;
                if *n == 0 {
                    info.remotes.remove(r);
                }
            }
        }
    }

    /// Bridges a prepared WebRTC leg (side A) with `far` (side B) in the leg's shard.
    /// Side A speaks Opus (and telephone-event, when its peer offered it); side B's codec
    /// comes from its SDP ([`MediaPair::set_remote`]), and the pair transcodes when the two
    /// differ.
    pub fn add_webrtc_pair(
        &self,
        mut prepared: PreparedWebRtc,
        far: FarSide,
        events: EventSink,
    ) -> Result<MediaPair, MediaError> {
        let Some(leg) = prepared.leg.take() else {
            return Err(MediaError::Shard);
        };
        let remotes = std::mem::take(&mut prepared.remotes);
        let (shard, socket) = (prepared.shard, prepared.socket);
        let a_port = leg.local().port();
        let (mut leases, b, b_port) = match far {
            FarSide::Rtp(lease) => match self.leg_sockets(lease, shard) {
                Ok((lease, sockets)) => {
                    let port = lease.port();
                    (vec![lease], Some(sockets), port)
                }
                Err(e) => {
                    self.release_rtc(socket, &remotes);
                    return Err(e);
                }
            },
            FarSide::Echo => (Vec::new(), None, 0),
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let kept = remotes.clone();
        let b_resting = b.as_ref().and_then(resting_of);
        self.own(shard, id, &events);
        if let Err(e) = self.send(
            shard,
            Command::AddWebRtc(NewWebRtcPair {
                id,
                leg,
                socket,
                remotes,
                b,
                policy: self.inner.policy,
                timeout: self.inner.timeout,
                events,
            }),
        ) {
            self.disown(shard, id);
            self.release_rtc(socket, &kept);
            if let (Some(r), Some(lease)) = (b_resting, leases.first_mut()) {
                lease.give_back(r);
            }
            return Err(e);
        }
        Ok(MediaPair {
            id,
            shard,
            plane: self.clone(),
            ports: [a_port, b_port],
            leases,
            rtc: Some((socket, kept)),
            removed: false,
        })
    }

    /// The shard's life now.
    fn epoch(&self, shard: usize) -> Option<u64> {
        self.inner
            .shards
            .get(shard)
            .map(|h| h.epoch.load(Ordering::Relaxed))
    }

    /// Sockets resting in a shard that still holds them (not started again since).
    fn is_current(&self, r: &Resting) -> bool {
        self.epoch(r.shard) == Some(r.epoch)
    }

    /// Sockets for a plain leg relayed in `shard` on the leased port (a port that cannot
    /// be bound is replaced by another from the pool): its resting sockets when they rest
    /// there, else sockets bound for it.
    fn leg_sockets(
        &self,
        lease: Option<PortLease>,
        shard: usize,
    ) -> Result<(PortLease, LegSockets), MediaError> {
        let Some(mut lease) = lease else {
            return self.bind_leg(shard);
        };
        match lease.take_resting() {
            Some(r) if r.shard == shard && self.is_current(&r) => {
                return Ok((lease, LegSockets::Resting(r)))
            }
            Some(r) if self.is_current(&r) => {
                // Resting in another shard: closed there (this port is leased again long
                // after), and this leg takes another port.
                self.evict(&mut lease, r);
                drop(lease);
                return self.bind_leg(shard);
            }
            // Their shard was started again since: they are closed, the port is free.
            _ => {}
        }
        let port = lease.port();
        if let (Ok(rtp), Ok(rtcp)) = (bind(self.inner.ip, port), bind(self.inner.ip, port + 1)) {
            return Ok((lease, LegSockets::Bound(rtp, rtcp)));
        }
        tracing::warn!(
            port,
            "leased RTP port taken by another process; using another"
        );
        self.bind_leg(shard)
    }

    /// Leases a port pair for a plain leg in `shard`: resting there, or bound anew; ports
    /// someone else holds are skipped.
    fn bind_leg(&self, shard: usize) -> Result<(PortLease, LegSockets), MediaError> {
        self.lease_and_bind(Some(shard))
    }

    /// Leases a port pair and binds it anew (sockets resting anywhere are closed there and
    /// another port taken).
    fn bind_new(
        &self,
    ) -> Result<(PortLease, (std::net::UdpSocket, std::net::UdpSocket)), MediaError> {
        match self.lease_and_bind(None)? {
            (lease, LegSockets::Bound(rtp, rtcp)) => Ok((lease, (rtp, rtcp))),
            (_, LegSockets::Resting(_)) => Err(MediaError::Shard),
        }
    }

    fn lease_and_bind(&self, shard: Option<usize>) -> Result<(PortLease, LegSockets), MediaError> {
        let mut last = None;
        // Ports another process holds (another instance sharing the range) are skipped;
        // each skipped lease goes to the back of the pool. Kept pairs resting in another
        // shard are leased only when no port is free: closed there, and another port taken.
        let mut tries = 0;
        let mut evicted = 0;
        while tries < 64 && evicted <= self.inner.ports.capacity() {
            let mut lease = self
                .inner
                .ports
                .lease_in(shard)
                .map_err(|e| MediaError::Ports(e.to_string()))?;
            match lease.take_resting() {
                Some(r) if Some(r.shard) == shard && self.is_current(&r) => {
                    return Ok((lease, LegSockets::Resting(r)))
                }
                Some(r) if self.is_current(&r) => {
                    self.evict(&mut lease, r);
                    evicted += 1;
                    continue;
                }
                _ => {}
            }
            tries += 1;
            let port = lease.port();
            match (bind(self.inner.ip, port), bind(self.inner.ip, port + 1)) {
                (Ok(rtp), Ok(rtcp)) => return Ok((lease, LegSockets::Bound(rtp, rtcp))),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(port, error = %e, "RTP port taken by another process; skipping it");
                    last = Some(e);
                }
            }
        }
        Err(MediaError::Ports(format!(
            "could not bind RTP ports: {}",
            last.map_or_else(String::new, |e| e.to_string())
        )))
    }

    /// Has the shard holding resting sockets close them; when it cannot be told (its queue
    /// full), `lease` keeps them, for the pool.
    fn evict(&self, lease: &mut PortLease, r: Resting) {
        if self.send(r.shard, Command::Evict(r)).is_err() {
            lease.give_back(r);
        }
    }

    /// Stops every shard and waits for the threads.
    pub fn stop(&self) {
        for (n, _) in self.inner.shards.iter().enumerate() {
            let _ = self.send(n, Command::Stop);
        }
        let threads = std::mem::take(
            &mut *self
                .inner
                .threads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for t in threads {
            let _ = t.join();
        }
    }
}

/// A shard's life, unique in the process (so no record of one plane's resting sockets
/// passes for another's).
fn next_epoch() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Where a leg's sockets rest, when they rest.
fn resting_of(sockets: &LegSockets) -> Option<Resting> {
    match sockets {
        LegSockets::Resting(r) => Some(*r),
        LegSockets::Bound(..) => None,
    }
}

/// Gives resting sockets a leg did not use back to its lease (for the pool to keep).
fn keep_resting(lease: &mut PortLease, sockets: &LegSockets) {
    if let Some(r) = resting_of(sockets) {
        lease.give_back(r);
    }
}

fn bind(ip: IpAddr, port: u16) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    if ip.is_ipv4() {
        let _ = socket.set_tos_v4(TOS_EF);
    } else {
        let _ = socket.set_tclass_v6(TOS_EF);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // Each packet's arrival, for the time it spends in the switch (best effort).
    let _ = super::batch::stamp_arrivals(&socket);
    Ok(socket.into())
}

/// A shard's thread: runs the shard, and when it panics, starts it again empty.
///
/// What the failed shard carried is gone (its sockets close as its state is dropped): the
/// calls whose pairs it relayed hear [`MediaEvent::ShardFailed`] and end, its shared WebRTC
/// sockets are forgotten by the plane (their ports go back to the pool), and the shard keeps
/// its command queue and poller, so the plane and the other shards never notice.
struct Supervised {
    n: usize,
    owners: Owners,
    rtc: Arc<std::sync::Mutex<Vec<RtcSocketInfo>>>,
}

impl Supervised {
    fn run(self, mut shard: Shard) {
        loop {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.run()));
            let Err(panic) = ran else {
                return;
            };
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(shard = self.n, panic = %what, "media shard failed; starting it again");
            metrics::counter!(telemetry::ACTOR_FAILURES_TOTAL, "actor" => "media_shard")
                .increment(1);
            let Shard {
                poll,
                commands,
                opus_complexity,
                ..
            } = shard;
            // Sockets resting in the failed shard closed with it: the pool's records of
            // them are stale from now on.
            commands.epoch.store(next_epoch(), Ordering::Relaxed);
            for info in self
                .rtc
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter_mut()
                .filter(|s| s.shard == self.n)
            {
                info.lease = None;
                info.remotes.clear();
            }
            let owners: Vec<EventSink> = self
                .owners
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .drain()
                .map(|(_, sink)| sink)
                .collect();
            for sink in owners {
                sink(MediaEvent::ShardFailed);
            }
            shard = Shard::new(poll, commands, opus_complexity);
        }
    }
}
