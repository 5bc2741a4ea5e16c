//! Media shards: the RTP relay.
//!
//! A shard is one OS thread with its own epoll instance (mio), owning the UDP sockets of the
//! call legs it carries. A packet is read into the shard's buffer, checked (source address,
//! RTP validity), counted, rewritten in place when the stream needs smoothing, and sent from
//! the other leg's socket to the other leg's peer: no copy, no allocation, no lock and no
//! actor on the way. Calls talk to a shard through a bounded command queue (plus a waker)
//! and hear back through an event callback: first packet, media timeout, DTMF digit.
//!
//! Source policy (RFC 3550 symmetric RTP / latching, safely): a leg accepts packets only from
//! the address its peer's SDP gave (`Strict`), or latches to the first source and then locks
//! to it (`Latch`, for peers behind NAT). Anything else is dropped and counted, so no one can
//! inject audio into a call and no call's audio bleeds into another.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use super::dtmf::{Digit, DtmfReceiver};
use super::ports::{PortAllocator, PortLease};
use super::record::{Frame, Recorder};
use super::rtcp::ReceiverStats;
use super::rtp::{is_rtcp, RtpView};
use super::types::{Remote, Side, SourcePolicy};
use super::webrtc::{LegOutput, WebRtcError, WebRtcLeg};
use crate::telemetry;

/// Commands queued toward one shard before senders are refused.
const COMMAND_QUEUE: usize = 4096;
use super::batch::{Batch, MAX_PACKET};
/// How often timeouts are checked and counters published.
const TICK: Duration = Duration::from_millis(250);
/// Socket buffers asked of the kernel (it may grant less).
const SOCKET_BUFFER: usize = 256 * 1024;
/// DSCP EF (46) in the IP TOS octet.
const TOS_EF: u32 = 46 << 2;
const WAKER: Token = Token(usize::MAX);
/// Tokens of the shared WebRTC sockets start here (leg sockets use `2 * slot` and
/// `2 * slot + 1` below it).
const RTC_TOKENS: usize = 1 << 40;
/// How long a shard sleeps at most when it has no WebRTC timer due.
const RTC_IDLE: Duration = Duration::from_secs(3600);

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

enum Command {
    Add {
        id: u64,
        sockets: [(std::net::UdpSocket, std::net::UdpSocket); 2],
        policy: SourcePolicy,
        timeout: Duration,
        events: EventSink,
        recorder: Option<Recorder>,
    },
    Remote {
        id: u64,
        side: Side,
        remote: Remote,
    },
    /// A shared socket for WebRTC legs, `index` in the plane's list.
    RtcSocket {
        index: usize,
        socket: std::net::UdpSocket,
    },
    /// A pair whose side A is a WebRTC leg on a shared socket; side B is a plain RTP leg,
    /// or none (the pair echoes side A's audio back to it).
    AddWebRtc {
        id: u64,
        leg: Box<WebRtcLeg>,
        socket: usize,
        remotes: Vec<SocketAddr>,
        b: Option<(std::net::UdpSocket, std::net::UdpSocket)>,
        policy: SourcePolicy,
        timeout: Duration,
        events: EventSink,
        recorder: Option<Recorder>,
    },
    /// The peer's answer to a WebRTC leg's offer.
    WebRtcAnswer {
        id: u64,
        sdp: String,
        reply: SyncSender<Result<(), String>>,
    },
    Remove {
        id: u64,
        reply: Option<SyncSender<[LegStats; 2]>>,
    },
    Stats {
        id: u64,
        reply: SyncSender<[LegStats; 2]>,
    },
    Dtmf {
        id: u64,
        side: Side,
        event: u8,
        duration: Duration,
    },
    Play {
        id: u64,
        side: Side,
        prompt: super::prompt::Prompt,
        barge_in: bool,
    },
    /// Start or stop ringback toward a side (looped, until stopped).
    Ringback {
        id: u64,
        side: Side,
        on: bool,
    },
    /// Makes the shard panic (supervision tests).
    #[cfg(any(test, feature = "fault-injection"))]
    Panic,
    Stop,
}

/// A prompt playing toward one side's peer.
struct PlayOut {
    /// The leg whose peer hears it.
    slot: usize,
    prompt: super::prompt::Prompt,
    pos: usize,
    next_at: Instant,
    barge_in: bool,
    encode: fn(i16) -> u8,
    pt: u8,
    /// Starts again at its end, until stopped (ringback).
    looping: bool,
    /// Toward an Opus side: the G.711 frames are transcoded to Opus.
    opus: Option<Box<super::transcode::Transcoder>>,
}

/// How often a telephone-event in progress is refreshed (RFC 4733 §2.5.1.2: 50 ms).
const DTMF_UPDATE: Duration = Duration::from_millis(50);

/// A DTMF digit being sent toward one side's peer.
struct DtmfOut {
    /// The leg whose peer hears the digit.
    slot: usize,
    event: u8,
    /// RTP timestamp of the event (its start).
    timestamp: u32,
    /// Duration to send, in timestamp units.
    total: u32,
    /// When the digit started.
    started: Instant,
    next_at: Instant,
    /// End packets sent (three in all).
    ends: u8,
}

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
    record_dir: std::sync::OnceLock<std::path::PathBuf>,
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

/// A bridged pair of legs in a shard; removed from it when dropped (its ports return to the
/// pool once the shard has closed the sockets).
pub struct MediaPair {
    id: u64,
    shard: usize,
    plane: MediaPlane,
    ports: [u16; 2],
    _leases: Vec<PortLease>,
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
            let complexity = opus_complexity.clone();
            let owners = Owners::default();
            let supervised = Supervised {
                n,
                owners: owners.clone(),
                rtc: rtc.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("media-{n}"))
                .spawn(move || supervised.run(Shard::new(poll, rx, complexity)))?;
            handles.push(ShardHandle { tx, waker, owners });
            threads.push(thread);
        }
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
                record_dir: std::sync::OnceLock::new(),
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

    /// Records every pair added with a name from now on, as `<dir>/<name>.wav`.
    pub fn set_record_dir(&self, dir: std::path::PathBuf) -> Result<(), crate::once::SetTwice> {
        crate::once::set(&self.inner.record_dir, dir, "the recording directory")
    }

    /// The address legs bind and SDP advertises.
    pub fn ip(&self) -> IpAddr {
        self.inner.ip
    }

    fn send(&self, shard: usize, command: Command) -> Result<(), MediaError> {
        let handle = self.inner.shards.get(shard).ok_or(MediaError::Shard)?;
        match handle.tx.try_send(command) {
            Ok(()) => {
                let _ = handle.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(MediaError::Shard),
        }
    }

    /// Binds two legs (RTP on an even port, RTCP on the next) and bridges them in the next
    /// shard; `events` hears what happens on them.
    pub fn add_pair(&self, events: EventSink) -> Result<MediaPair, MediaError> {
        self.add_pair_on([None, None], events, None)
    }

    /// Like [`add_pair`](Self::add_pair), on ports already leased where given (a port that
    /// cannot be bound is replaced by another from the pool).
    /// With `record` and a recording directory, the pair's audio (G.711 as received, Opus
    /// as transcoded) is recorded as `<dir>/<record>.wav` (side A left, side B right).
    pub fn add_pair_on(
        &self,
        leases: [Option<PortLease>; 2],
        events: EventSink,
        record: Option<&str>,
    ) -> Result<MediaPair, MediaError> {
        let recorder = self.recorder(record);
        let [a, b] = leases;
        let (a_lease, a) = self.bind_leased(a)?;
        let (b_lease, b) = self.bind_leased(b)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let shard = self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % self.inner.shards.len();
        let ports = [a_lease.port(), b_lease.port()];
        self.own(shard, id, &events);
        if let Err(e) = self.send(
            shard,
            Command::Add {
                id,
                sockets: [a, b],
                policy: self.inner.policy,
                timeout: self.inner.timeout,
                events,
                recorder,
            },
        ) {
            self.disown(shard, id);
            return Err(e);
        }
        Ok(MediaPair {
            id,
            shard,
            plane: self.clone(),
            ports,
            _leases: vec![a_lease, b_lease],
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

    fn prepare_webrtc(
        &self,
        remotes: Vec<SocketAddr>,
        build: impl FnOnce(SocketAddr, Instant) -> Result<WebRtcLeg, WebRtcError>,
    ) -> Result<PreparedWebRtc, MediaError> {
        let (shard, socket, local) = self.place_rtc(&remotes)?;
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

    /// Picks the shared socket a new WebRTC leg receives on: the next shard's first socket
    /// none of whose legs' peers has one of `remotes`; binds a new one when there is none.
    fn place_rtc(&self, remotes: &[SocketAddr]) -> Result<(usize, usize, SocketAddr), MediaError> {
        let shard = self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % self.inner.shards.len();
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
                let (lease, (socket, rtcp)) = self.bind_leg()?;
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
    /// differ. `record` as for [`add_pair_on`](Self::add_pair_on).
    pub fn add_webrtc_pair(
        &self,
        mut prepared: PreparedWebRtc,
        far: FarSide,
        events: EventSink,
        record: Option<&str>,
    ) -> Result<MediaPair, MediaError> {
        let recorder = self.recorder(record);
        let Some(leg) = prepared.leg.take() else {
            return Err(MediaError::Shard);
        };
        let remotes = std::mem::take(&mut prepared.remotes);
        let (shard, socket) = (prepared.shard, prepared.socket);
        let a_port = leg.local().port();
        let (leases, b, b_port) = match far {
            FarSide::Rtp(lease) => match self.bind_leased(lease) {
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
        self.own(shard, id, &events);
        if let Err(e) = self.send(
            shard,
            Command::AddWebRtc {
                id,
                leg,
                socket,
                remotes,
                b,
                policy: self.inner.policy,
                timeout: self.inner.timeout,
                events,
                recorder,
            },
        ) {
            self.disown(shard, id);
            self.release_rtc(socket, &kept);
            return Err(e);
        }
        Ok(MediaPair {
            id,
            shard,
            plane: self.clone(),
            ports: [a_port, b_port],
            _leases: leases,
            rtc: Some((socket, kept)),
            removed: false,
        })
    }

    fn recorder(&self, record: Option<&str>) -> Option<Recorder> {
        match (record, self.inner.record_dir.get()) {
            (Some(name), Some(dir)) => match Recorder::start(&dir.join(format!("{name}.wav"))) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, dir = %dir.display(), "recording could not start; the call goes on unrecorded");
                    None
                }
            },
            _ => None,
        }
    }

    fn bind_leased(
        &self,
        lease: Option<PortLease>,
    ) -> Result<(PortLease, (std::net::UdpSocket, std::net::UdpSocket)), MediaError> {
        if let Some(lease) = lease {
            let port = lease.port();
            if let (Ok(rtp), Ok(rtcp)) = (bind(self.inner.ip, port), bind(self.inner.ip, port + 1))
            {
                return Ok((lease, (rtp, rtcp)));
            }
            tracing::warn!(
                port,
                "leased RTP port taken by another process; using another"
            );
        }
        self.bind_leg()
    }

    /// Leases a port pair and binds it; ports someone else holds are skipped.
    fn bind_leg(
        &self,
    ) -> Result<(PortLease, (std::net::UdpSocket, std::net::UdpSocket)), MediaError> {
        let mut last = None;
        // Ports another process holds (another instance sharing the range) are skipped;
        // each skipped lease goes to the back of the pool.
        for _ in 0..64 {
            let lease = self
                .inner
                .ports
                .lease()
                .map_err(|e| MediaError::Ports(e.to_string()))?;
            let port = lease.port();
            match (bind(self.inner.ip, port), bind(self.inner.ip, port + 1)) {
                (Ok(rtp), Ok(rtcp)) => return Ok((lease, (rtp, rtcp))),
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
    Ok(socket.into())
}

impl MediaPair {
    /// The shard that relays the pair.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Local RTP ports of side A and side B.
    pub fn ports(&self) -> [u16; 2] {
        self.ports
    }

    /// Tells the shard where `side`'s peer receives and what it sends (from its SDP).
    pub fn set_remote(&self, side: Side, remote: Remote) -> Result<(), MediaError> {
        self.plane.send(
            self.shard,
            Command::Remote {
                id: self.id,
                side,
                remote,
            },
        )
    }

    /// Sends DTMF `digit` (RFC 4733 telephone-events) toward `side`'s peer for `duration`,
    /// in the stream the peer already receives (same SSRC, continuing sequence numbers).
    /// Fails when the digit is not a DTMF key or the shard is unavailable; a peer whose SDP
    /// offered no telephone-event gets nothing.
    pub fn send_dtmf(&self, side: Side, digit: char, duration: Duration) -> Result<(), MediaError> {
        let event = super::dtmf::event_of(digit)
            .ok_or_else(|| MediaError::Ports(format!("{digit:?} is not a DTMF key")))?;
        self.plane.send(
            self.shard,
            Command::Dtmf {
                id: self.id,
                side,
                event,
                duration,
            },
        )
    }

    /// Plays `prompt` toward `side`'s peer, replacing what the other side sends meanwhile;
    /// with `barge_in`, a DTMF digit from that side stops it. A [`MediaEvent::PromptDone`]
    /// follows.
    pub fn play(
        &self,
        side: Side,
        prompt: super::prompt::Prompt,
        barge_in: bool,
    ) -> Result<(), MediaError> {
        self.plane.send(
            self.shard,
            Command::Play {
                id: self.id,
                side,
                prompt,
                barge_in,
            },
        )
    }

    /// Starts (`on`) or stops ringback toward `side`'s peer: a looped 425 Hz cadence in its
    /// codec (an Opus side gets it transcoded), in place of what the other side sends, for
    /// a caller waiting on a phone that rings without early media.
    pub fn ringback(&self, side: Side, on: bool) -> Result<(), MediaError> {
        self.plane.send(
            self.shard,
            Command::Ringback {
                id: self.id,
                side,
                on,
            },
        )
    }

    /// Current counters of both sides (waits briefly for the shard).
    pub fn stats(&self) -> Option<[LegStats; 2]> {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        self.plane
            .send(self.shard, Command::Stats { id: self.id, reply })
            .ok()?;
        rx.recv_timeout(Duration::from_secs(1)).ok()
    }

    /// Applies the peer's answer to side A's WebRTC offer (made by
    /// [`MediaPlane::webrtc_offer`]); waits briefly for the shard.
    pub fn webrtc_answer(&self, sdp: &str) -> Result<(), MediaError> {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        self.plane.send(
            self.shard,
            Command::WebRtcAnswer {
                id: self.id,
                sdp: sdp.to_string(),
                reply,
            },
        )?;
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(MediaError::WebRtc(WebRtcError::Sdp(e))),
            Err(_) => Err(MediaError::Shard),
        }
    }

    /// Removes the pair and returns its final counters.
    pub fn close(mut self) -> Option<[LegStats; 2]> {
        self.removed = true;
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        let sent = self
            .plane
            .send(
                self.shard,
                Command::Remove {
                    id: self.id,
                    reply: Some(reply),
                },
            )
            .ok();
        // After the removal is queued: a leg placed later finds the peer's address free.
        if let Some((socket, remotes)) = self.rtc.take() {
            self.plane.release_rtc(socket, &remotes);
        }
        sent?;
        rx.recv_timeout(Duration::from_secs(1)).ok()
    }
}

impl Drop for MediaPair {
    fn drop(&mut self) {
        self.plane.disown(self.shard, self.id);
        if !self.removed {
            let _ = self.plane.send(
                self.shard,
                Command::Remove {
                    id: self.id,
                    reply: None,
                },
            );
        }
        if let Some((socket, remotes)) = self.rtc.take() {
            self.plane.release_rtc(socket, &remotes);
        }
    }
}

/// Output stream state of one direction: keeps SSRC, sequence and timestamp continuous for
/// the receiver when the sender restarts or jumps.
#[derive(Debug, Clone, Copy, Default)]
struct Smoother {
    started: bool,
    out_ssrc: u32,
    in_ssrc: u32,
    seq_offset: u16,
    ts_offset: u32,
    last_in_seq: u16,
    last_in_ts: u32,
    last_out_seq: u16,
    last_out_ts: u32,
    ts_step: u32,
    /// The switch inserted media: the next relayed packet continues after it.
    resync: bool,
}

impl Smoother {
    /// The sequence number and timestamp to send for an input packet, and whether the
    /// packet must be rewritten.
    fn next(&mut self, ssrc: u32, seq: u16, ts: u32) -> (u16, u32, bool) {
        if !self.started {
            self.started = true;
            self.out_ssrc = ssrc;
            self.in_ssrc = ssrc;
            self.ts_step = 160;
        } else {
            let seq_jump = seq.wrapping_sub(self.last_in_seq);
            let ts_jump = ts.wrapping_sub(self.last_in_ts);
            let restarted = std::mem::take(&mut self.resync)
                || ssrc != self.in_ssrc
                || (seq_jump > 3000 && seq_jump < 0xffff - 100)
                || (ts_jump > 8000 * 60 && ts_jump < u32::MAX - 8000 * 60);
            if restarted {
                // Continue the output where it left off, one packet later.
                self.in_ssrc = ssrc;
                self.seq_offset = self.last_out_seq.wrapping_add(1).wrapping_sub(seq);
                self.ts_offset = self.last_out_ts.wrapping_add(self.ts_step).wrapping_sub(ts);
            } else if seq_jump == 1 && ts_jump > 0 && ts_jump < 8000 {
                self.ts_step = ts_jump;
            }
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        // Only advance on packets that move forward (a late packet keeps its place).
        if seq.wrapping_sub(self.last_in_seq) < 0x8000 || !self.started {
            self.last_in_seq = seq;
            self.last_in_ts = ts;
            self.last_out_seq = out_seq;
            self.last_out_ts = out_ts;
        }
        let rewrite = self.seq_offset != 0 || self.ts_offset != 0 || ssrc != self.out_ssrc;
        (out_seq, out_ts, rewrite)
    }

    /// Takes one sequence number for a packet the switch inserts into this output stream
    /// (relayed packets after it are shifted by one); with the stream's SSRC.
    fn inject(&mut self) -> (u16, u32) {
        if !self.started {
            // Nothing relayed yet: the inserted packets start the stream.
            self.started = true;
            self.out_ssrc = 0x5753_0000 | (self.last_out_seq as u32);
            self.ts_step = 160;
        }
        self.seq_offset = self.seq_offset.wrapping_add(1);
        self.last_out_seq = self.last_out_seq.wrapping_add(1);
        (self.last_out_seq, self.out_ssrc)
    }

    /// Takes the sequence number and timestamp for `samples` of media the switch inserts
    /// into this output stream (a prompt); relayed packets continue after it.
    fn inject_media(&mut self, samples: u32) -> (u16, u32, u32) {
        if !self.started {
            self.started = true;
            self.out_ssrc = 0x5753_0000 | u32::from(self.last_out_seq);
            self.ts_step = samples;
            self.last_out_ts = 0u32.wrapping_sub(samples);
        }
        self.last_out_seq = self.last_out_seq.wrapping_add(1);
        self.last_out_ts = self.last_out_ts.wrapping_add(self.ts_step.max(1));
        self.ts_step = samples;
        self.resync = true;
        (self.last_out_seq, self.last_out_ts, self.out_ssrc)
    }

    /// The timestamp of an event starting now in this output stream: one packet after the
    /// last one sent.
    fn next_event_timestamp(&self) -> u32 {
        self.last_out_ts.wrapping_add(self.ts_step.max(1))
    }
}

/// How a leg's packets come and go.
enum Io {
    /// Its own RTP and RTCP sockets.
    Plain { rtp: UdpSocket, rtcp: UdpSocket },
    /// A WebRTC leg (SRTP in str0m) on one of the shard's shared sockets.
    WebRtc(Box<RtcIo>),
}

struct RtcIo {
    leg: Box<WebRtcLeg>,
    /// Index of its shared socket.
    socket: usize,
    /// Peer addresses routed to this leg on that socket.
    remotes: Vec<SocketAddr>,
    /// Extended sequence number of the last packet sent (str0m counts past 16 bits).
    seq: Option<u64>,
    /// Sends only once the peer's answer is known (legs that made an offer).
    ready: bool,
}

impl RtcIo {
    /// The extended sequence number for an outgoing 16-bit one.
    fn extend(&mut self, seq: u16) -> u64 {
        let ext = match self.seq {
            // The rollover count starts at 0, as the receiver's SRTP context assumes
            // (RFC 3711 §3.3.1): the extended number is the SRTP index.
            None => u64::from(seq),
            Some(last) => {
                let delta = i64::from(seq.wrapping_sub(last as u16) as i16);
                (last as i64 + delta).max(0) as u64
            }
        };
        if self.seq.is_none_or(|last| ext > last) {
            self.seq = Some(ext);
        }
        ext
    }
}

/// A socket shared by a shard's WebRTC legs.
struct RtcSocket {
    socket: UdpSocket,
    /// Which leg (slot) a peer address belongs to.
    by_remote: HashMap<SocketAddr, usize>,
}

struct Leg {
    io: Io,
    pair: u64,
    peer: usize,
    side: Side,
    policy: SourcePolicy,
    remote: Option<SocketAddr>,
    latched: bool,
    rtcp_mux: bool,
    clock: u32,
    dtmf_pt: Option<u8>,
    dtmf_clock: u32,
    codec_pt: Option<u8>,
    codec: Option<super::transcode::Codec>,
    /// Packets arriving on this leg are transcoded into the peer's codec.
    transcode: Option<Box<Transcoding>>,
    sends: bool,
    /// A prompt plays toward this leg's peer: what the other side sends is held back.
    playing: bool,
    epoch: Instant,
    last_rx: Instant,
    timeout: Duration,
    timed_out: bool,
    got_first: bool,
    rx: ReceiverStats,
    dtmf: DtmfReceiver,
    smoother: Smoother,
    stats: LegStats,
}

impl Leg {
    fn new(
        io: Io,
        pair: u64,
        peer: usize,
        side: Side,
        policy: SourcePolicy,
        timeout: Duration,
    ) -> Leg {
        let now = Instant::now();
        Leg {
            io,
            pair,
            peer,
            side,
            policy,
            remote: None,
            latched: false,
            rtcp_mux: false,
            clock: 8000,
            dtmf_pt: None,
            dtmf_clock: 8000,
            codec_pt: None,
            codec: None,
            transcode: None,
            sends: false,
            playing: false,
            epoch: now,
            last_rx: now,
            timeout,
            timed_out: false,
            got_first: false,
            rx: ReceiverStats::default(),
            dtmf: DtmfReceiver::default(),
            smoother: Smoother::default(),
            stats: LegStats::default(),
        }
    }

    /// A WebRTC leg's media description, from its negotiation: Opus at 48 kHz both ways,
    /// telephone-event at 8 kHz when the peer has it, RTCP multiplexed.
    fn set_webrtc_remote(&mut self) {
        let Io::WebRtc(rtc) = &self.io else {
            return;
        };
        self.rtcp_mux = true;
        self.clock = 48_000;
        self.codec_pt = Some(rtc.leg.opus_pt());
        self.codec = Some(super::transcode::Codec::Opus);
        self.dtmf_pt = rtc.leg.dtmf_pt();
        self.dtmf_clock = 8000;
    }
}

/// One direction of a transcoded pair.
struct Transcoding {
    tx: super::transcode::Transcoder,
    /// Payload type of the incoming codec, and of the outgoing one.
    in_pt: u8,
    out_pt: u8,
    /// Timestamp scale (out clock / in clock).
    num: u64,
    den: u64,
    /// First incoming (smoothed) timestamp, and the outgoing one it maps to.
    base: Option<(u32, u32)>,
}

impl Transcoding {
    /// The outgoing timestamp of an incoming one, on the outgoing clock.
    fn timestamp(&mut self, ts: u32) -> u32 {
        let (in0, out0) = *self.base.get_or_insert((ts, ts));
        let delta = u64::from(ts.wrapping_sub(in0));
        out0.wrapping_add((delta * self.num / self.den) as u32)
    }
}

struct Pair {
    legs: [usize; 2],
    events: EventSink,
    recorder: Option<Recorder>,
}

/// Counters published to the metrics registry every tick.
#[derive(Default)]
struct Counters {
    rx: u64,
    tx: u64,
    foreign: u64,
    malformed: u64,
    no_destination: u64,
}

struct Shard {
    poll: Poll,
    /// Shared WebRTC sockets, by the plane's index.
    rtc_sockets: Vec<Option<RtcSocket>>,
    /// Slots of the WebRTC legs.
    rtc_slots: Vec<usize>,
    /// The earliest WebRTC timer.
    rtc_due: Instant,
    commands: Receiver<Command>,
    legs: Vec<Option<Leg>>,
    free: Vec<usize>,
    pairs: HashMap<u64, Pair>,
    counters: Counters,
    dtmf_out: Vec<DtmfOut>,
    playing: Vec<PlayOut>,
    /// Where transcoded packets are built.
    out_buf: [u8; MAX_PACKET],
    opus_complexity: Arc<std::sync::atomic::AtomicU8>,
}

/// Hands a G.711 packet's audio to the call's recorder. Other codecs are recorded from
/// their transcoded G.711 (the media plane reads no Opus it does not transcode).
fn record(rec: &mut Recorder, side: Side, pt: u8, ts: u32, arrival: Instant, payload: &[u8]) {
    let decode: fn(u8) -> i16 = match pt {
        0 => super::g711::ulaw_decode,
        8 => super::g711::alaw_decode,
        _ => return,
    };
    let mut frame = Frame {
        side: side.index() as u8,
        timestamp: ts,
        arrival,
        len: payload.len().min(super::record::MAX_FRAME) as u16,
        samples: [0; super::record::MAX_FRAME],
    };
    for (s, &c) in frame.samples.iter_mut().zip(payload) {
        *s = decode(c);
    }
    rec.push(frame);
}

/// A STUN message (RFC 5389 §6: top two bits zero, the magic cookie at octets 4-7).
fn is_stun(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] < 4 && data[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// Sends whatever a WebRTC leg has to send from its shared socket, and notes its next timer.
fn rtc_flush(rtc: &mut RtcIo, sockets: &[Option<RtcSocket>], due: &mut Instant) {
    let Some(socket) = sockets.get(rtc.socket).and_then(Option::as_ref) else {
        return;
    };
    let mut send = |to: SocketAddr, data: &[u8]| {
        let _ = socket.socket.send_to(data, to);
    };
    if let Err(e) = rtc.leg.transmit_into(&mut send) {
        tracing::debug!(error = %e, "WebRTC leg output failed");
    }
    *due = (*due).min(rtc.leg.timeout());
}

/// Sends one RTP packet through a WebRTC leg; false when it cannot go (not connected yet,
/// not an RTP packet).
fn send_webrtc(
    rtc: &mut RtcIo,
    sockets: &[Option<RtcSocket>],
    due: &mut Instant,
    packet: &[u8],
) -> bool {
    if !rtc.ready {
        return false;
    }
    let Ok(view) = RtpView::parse(packet) else {
        return false;
    };
    let seq = rtc.extend(view.sequence());
    let sent = rtc
        .leg
        .send_rtp(
            Instant::now(),
            view.payload_type(),
            seq,
            view.timestamp(),
            view.marker(),
            view.payload(),
        )
        .is_ok();
    rtc_flush(rtc, sockets, due);
    sent
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

impl Shard {
    fn new(
        poll: Poll,
        commands: Receiver<Command>,
        opus_complexity: Arc<std::sync::atomic::AtomicU8>,
    ) -> Self {
        Self {
            poll,
            rtc_sockets: Vec::new(),
            rtc_slots: Vec::new(),
            rtc_due: Instant::now() + RTC_IDLE,
            commands,
            legs: Vec::new(),
            free: Vec::new(),
            pairs: HashMap::new(),
            counters: Counters::default(),
            dtmf_out: Vec::new(),
            playing: Vec::new(),
            out_buf: [0; MAX_PACKET],
            opus_complexity,
        }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut batch = Batch::new();
        let mut forward = Vec::with_capacity(super::batch::BATCH);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let due = self
                .dtmf_out
                .iter()
                .map(|d| d.next_at)
                .chain(self.playing.iter().map(|p| p.next_at))
                .min()
                .map_or(next_tick, |d| d.min(next_tick))
                .min(self.rtc_due);
            let wait = due.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(error = %e, "media shard poll failed");
                    return;
                }
            }
            for event in events.iter() {
                let token = event.token();
                if token == WAKER {
                    if !self.run_commands() {
                        self.close_all();
                        return;
                    }
                    continue;
                }
                if token.0 >= RTC_TOKENS {
                    self.drain_rtc_socket(token.0 - RTC_TOKENS, &mut batch);
                    continue;
                }
                let (slot, is_rtcp_socket) = (token.0 / 2, token.0 % 2 == 1);
                self.drain_socket(slot, is_rtcp_socket, &mut batch, &mut forward);
            }
            let now = Instant::now();
            if now >= self.rtc_due {
                self.rtc_timers(now);
            }
            if !self.dtmf_out.is_empty() {
                self.send_dtmf(now);
            }
            if !self.playing.is_empty() {
                self.send_prompts(now);
            }
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick(now);
            }
        }
    }

    /// Sends the prompt packets that are due (20 ms of G.711 each) and ends prompts that
    /// are over.
    fn send_prompts(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.playing.len() {
            if self.playing[i].next_at > now {
                i += 1;
                continue;
            }
            let p = &mut self.playing[i];
            if p.looping && p.pos >= p.prompt.samples().len() {
                p.pos = 0;
            }
            let samples = p.prompt.samples();
            if p.pos >= samples.len() {
                let slot = p.slot;
                self.playing.swap_remove(i);
                self.end_prompt(slot, false);
                continue;
            }
            let mut payload = [0u8; 160];
            for (k, out) in payload.iter_mut().enumerate() {
                *out = (p.encode)(samples.get(p.pos + k).copied().unwrap_or(0));
            }
            let marker = p.pos == 0;
            p.pos += 160;
            p.next_at += Duration::from_millis(20);
            let (slot, pt) = (p.slot, p.pt);
            let Some((to, peer)) = self.legs[slot]
                .as_ref()
                .and_then(|l| Some((l.remote?, l.peer)))
            else {
                i += 1;
                continue;
            };
            let Some(source) = self.legs[peer].as_mut() else {
                i += 1;
                continue;
            };
            let mut packet = [0u8; MAX_PACKET];
            let written = match self.playing[i].opus.as_mut() {
                // Opus at 48 kHz: the 20 ms frame is 960 timestamp units.
                Some(opus) => {
                    let (head, body) = packet.split_at_mut(super::rtp::HEADER_LEN);
                    match opus.transcode(&payload, body) {
                        Ok(n) => {
                            let (seq, ts, ssrc) = source.smoother.inject_media(960);
                            super::rtp::write_packet(head, marker, pt, seq, ts, ssrc, &[])
                                .map(|h| h + n)
                        }
                        Err(_) => None,
                    }
                }
                None => {
                    let (seq, ts, ssrc) = source.smoother.inject_media(160);
                    super::rtp::write_packet(&mut packet, marker, pt, seq, ts, ssrc, &payload)
                }
            };
            if let Some(n) = written {
                self.send_inserted(slot, &packet[..n], to);
            }
            i += 1;
        }
    }

    /// Sets up or removes transcoding on both directions of the pair of leg `slot`: when
    /// both sides' codecs are known and differ, each direction gets a transcoder (built
    /// here, once); equal or unknown codecs are relayed untouched.
    fn plan_transcoding(&mut self, slot: usize) {
        let Some(peer) = self.legs[slot].as_ref().map(|l| l.peer) else {
            return;
        };
        let codec = |s: &Self, i: usize| {
            s.legs[i]
                .as_ref()
                .and_then(|l| Some((l.codec?, l.codec_pt?)))
        };
        let (a, b) = (codec(self, slot), codec(self, peer));
        let complexity = self.opus_complexity.load(Ordering::Relaxed);
        for (from, to, i) in [(a, b, slot), (b, a, peer)] {
            let wanted = match (from, to) {
                (Some((fc, fpt)), Some((tc, tpt))) if fc != tc => Some((fc, fpt, tc, tpt)),
                _ => None,
            };
            let Some(leg) = self.legs[i].as_mut() else {
                continue;
            };
            let had = leg.transcode.is_some();
            leg.transcode = wanted.and_then(|(fc, fpt, tc, tpt)| {
                let (num, den) = super::transcode::timestamp_factor(fc, tc);
                match super::transcode::Transcoder::with_complexity(fc, tc, complexity) {
                    Ok(tx) => Some(Box::new(Transcoding {
                        tx,
                        in_pt: fpt,
                        out_pt: tpt,
                        num: u64::from(num),
                        den: u64::from(den),
                        base: None,
                    })),
                    Err(e) => {
                        tracing::error!(error = %e, "transcoder could not be built");
                        None
                    }
                }
            });
            match (had, leg.transcode.is_some()) {
                (false, true) => metrics::gauge!(telemetry::TRANSCODING_LEGS_ACTIVE).increment(1.0),
                (true, false) => metrics::gauge!(telemetry::TRANSCODING_LEGS_ACTIVE).decrement(1.0),
                _ => {}
            }
        }
    }

    /// A prompt toward the peer of leg `slot` is over: relaying resumes, the call is told.
    fn end_prompt(&mut self, slot: usize, barged_in: bool) {
        let Some(leg) = self.legs[slot].as_mut() else {
            return;
        };
        leg.playing = false;
        let (pair, side) = (leg.pair, leg.side);
        if let Some(p) = self.pairs.get(&pair) {
            (p.events)(MediaEvent::PromptDone {
                side,
                barged_in,
                played: true,
            });
        }
    }

    /// Sends the telephone-event packets that are due: an update every 50 ms, then three
    /// end packets (RFC 4733 §2.5.1.4), all with the event's timestamp.
    fn send_dtmf(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.dtmf_out.len() {
            if self.dtmf_out[i].next_at > now {
                i += 1;
                continue;
            }
            let d = &mut self.dtmf_out[i];
            let Some(leg) = self.legs.get(d.slot).and_then(Option::as_ref) else {
                self.dtmf_out.swap_remove(i);
                continue;
            };
            let clock = u64::from(leg.dtmf_clock.max(1));
            let elapsed = (now.duration_since(d.started).as_micros() as u64 * clock / 1_000_000)
                .min(u64::from(d.total)) as u32;
            let end = elapsed >= d.total;
            let (slot, event, timestamp) = (d.slot, d.event, d.timestamp);
            if end {
                d.ends += 1;
                d.next_at = now + Duration::from_millis(20);
            } else {
                d.next_at = (now + DTMF_UPDATE)
                    .min(d.started + Duration::from_micros(u64::from(d.total) * 1_000_000 / clock));
            }
            let done = d.ends >= 3;
            let marker = elapsed == 0;
            let duration = if end { d.total } else { elapsed.max(1) };
            self.emit_event(slot, event, timestamp, duration, end, marker);
            if done {
                self.dtmf_out.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// One telephone-event packet toward the peer of leg `slot`, in the stream that peer
    /// receives.
    fn emit_event(
        &mut self,
        slot: usize,
        event: u8,
        timestamp: u32,
        duration: u32,
        end: bool,
        marker: bool,
    ) {
        let Some(leg) = self.legs.get(slot).and_then(Option::as_ref) else {
            return;
        };
        let (Some(to), Some(pt), peer) = (leg.remote, leg.dtmf_pt, leg.peer) else {
            return;
        };
        // The stream toward this leg's peer is the one relayed from the other leg.
        let Some(source) = self.legs.get_mut(peer).and_then(Option::as_mut) else {
            return;
        };
        let (seq, ssrc) = source.smoother.inject();
        let payload = super::dtmf::EventPayload {
            event,
            end,
            volume: 10,
            duration: duration.min(u32::from(u16::MAX)) as u16,
        }
        .to_bytes();
        let mut packet = [0u8; 16];
        let Some(n) =
            super::rtp::write_packet(&mut packet, marker, pt, seq, timestamp, ssrc, &payload)
        else {
            return;
        };
        self.send_inserted(slot, &packet[..n], to);
    }

    /// Sends a packet the switch made (prompt, DTMF) from leg `slot` to its peer at `to`.
    fn send_inserted(&mut self, slot: usize, packet: &[u8], to: SocketAddr) {
        self.send_to_leg(slot, packet, to);
    }

    /// Sends `packet` (RTP) to leg `slot`'s peer at `to`: from its socket, or through its
    /// WebRTC leg (which encrypts it and sends from the shared socket). Counts it.
    fn send_to_leg(&mut self, slot: usize, packet: &[u8], to: SocketAddr) {
        Self::send_via(
            &mut self.legs,
            &self.rtc_sockets,
            &mut self.rtc_due,
            &mut self.counters,
            slot,
            packet,
            to,
        );
    }

    /// [`send_to_leg`](Self::send_to_leg) over the shard's parts, for a packet built in
    /// one of the shard's own buffers.
    fn send_via(
        legs: &mut [Option<Leg>],
        rtc_sockets: &[Option<RtcSocket>],
        rtc_due: &mut Instant,
        counters: &mut Counters,
        slot: usize,
        packet: &[u8],
        to: SocketAddr,
    ) {
        let Some(leg) = legs.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let sent = match &mut leg.io {
            Io::Plain { rtp, .. } => rtp.send_to(packet, to).is_ok(),
            Io::WebRtc(rtc) => send_webrtc(rtc, rtc_sockets, rtc_due, packet),
        };
        if sent {
            leg.stats.packets_out += 1;
            counters.tx += 1;
        } else {
            leg.stats.dropped += 1;
            counters.no_destination += 1;
        }
    }

    /// Runs queued commands; false on Stop.
    fn run_commands(&mut self) -> bool {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Add {
                    id,
                    sockets,
                    policy,
                    timeout,
                    events,
                    recorder,
                } => self.add(id, sockets, policy, timeout, events, recorder),
                Command::RtcSocket { index, socket } => self.add_rtc_socket(index, socket),
                Command::AddWebRtc {
                    id,
                    leg,
                    socket,
                    remotes,
                    b,
                    policy,
                    timeout,
                    events,
                    recorder,
                } => self.add_webrtc(
                    id, leg, socket, remotes, b, policy, timeout, events, recorder,
                ),
                Command::WebRtcAnswer { id, sdp, reply } => {
                    let _ = reply.try_send(self.webrtc_answer(id, &sdp));
                }
                Command::Remote { id, side, remote } => {
                    if let Some(slot) = self.pairs.get(&id).map(|p| p.legs[side.index()]) {
                        if self.legs[slot]
                            .as_ref()
                            .is_some_and(|l| matches!(l.io, Io::WebRtc(_)))
                        {
                            // A WebRTC leg's media follows its own negotiation.
                            continue;
                        }
                        if let Some(leg) = self.legs[slot].as_mut() {
                            leg.remote = remote.addr;
                            // A new address from SDP re-opens latching.
                            leg.latched = false;
                            leg.rtcp_mux = remote.rtcp_mux;
                            leg.clock = remote.clock.max(1);
                            leg.dtmf_pt = remote.dtmf_pt;
                            leg.dtmf_clock = remote.dtmf_clock.max(1);
                            leg.codec_pt = remote.codec_pt;
                            leg.codec = remote.codec;
                            leg.sends = remote.sends;
                            leg.last_rx = Instant::now();
                            leg.timed_out = false;
                        }
                        self.plan_transcoding(slot);
                    }
                }
                Command::Remove { id, reply } => {
                    let stats = self.remove(id);
                    if let (Some(reply), Some(stats)) = (reply, stats) {
                        let _ = reply.try_send(stats);
                    }
                }
                Command::Stats { id, reply } => {
                    if let Some(pair) = self.pairs.get(&id) {
                        let _ = reply.try_send(self.pair_stats(pair.legs));
                    }
                }
                Command::Dtmf {
                    id,
                    side,
                    event,
                    duration,
                } => {
                    let Some(slot) = self.pairs.get(&id).map(|p| p.legs[side.index()]) else {
                        continue;
                    };
                    let Some(leg) = self.legs[slot].as_ref() else {
                        continue;
                    };
                    let peer = leg.peer;
                    let clock = u64::from(leg.dtmf_clock.max(1));
                    let total =
                        (duration.as_micros() as u64 * clock / 1_000_000).clamp(1, 0xffff) as u32;
                    let timestamp = self.legs[peer]
                        .as_mut()
                        .map_or(0, |p| p.smoother.next_event_timestamp());
                    let now = Instant::now();
                    self.dtmf_out.push(DtmfOut {
                        slot,
                        event,
                        timestamp,
                        total,
                        started: now,
                        next_at: now,
                        ends: 0,
                    });
                }
                Command::Play {
                    id,
                    side,
                    prompt,
                    barge_in,
                } => {
                    let Some(pair) = self.pairs.get(&id) else {
                        continue;
                    };
                    let slot = pair.legs[side.index()];
                    let Some(leg) = self.legs[slot].as_mut() else {
                        continue;
                    };
                    let encode: fn(i16) -> u8 = match leg.codec_pt {
                        Some(0) => super::g711::ulaw_encode,
                        Some(8) => super::g711::alaw_encode,
                        _ => {
                            (pair.events)(MediaEvent::PromptDone {
                                side,
                                barged_in: false,
                                played: false,
                            });
                            continue;
                        }
                    };
                    let pt = leg.codec_pt.unwrap_or(0);
                    // One prompt at a time toward a side: a new one replaces the old.
                    self.playing.retain(|p| p.slot != slot);
                    leg.playing = true;
                    self.playing.push(PlayOut {
                        slot,
                        prompt,
                        pos: 0,
                        next_at: Instant::now(),
                        barge_in,
                        encode,
                        pt,
                        looping: false,
                        opus: None,
                    });
                }
                Command::Ringback { id, side, on } => self.ringback(id, side, on),
                #[cfg(any(test, feature = "fault-injection"))]
                Command::Panic => panic!("media shard: panic injected by a test"),
                Command::Stop => return false,
            }
        }
        true
    }

    /// Starts or stops ringback toward `side` of pair `id`: in its G.711 codec, or
    /// transcoded to its Opus (a WhatsApp side). What the other side sends meanwhile is
    /// held back; stopping gives it the floor again. No event follows.
    fn ringback(&mut self, id: u64, side: Side, on: bool) {
        let Some(slot) = self.pairs.get(&id).map(|p| p.legs[side.index()]) else {
            return;
        };
        self.playing.retain(|p| p.slot != slot);
        let complexity = self.opus_complexity.load(Ordering::Relaxed);
        let Some(leg) = self.legs[slot].as_mut() else {
            return;
        };
        leg.playing = false;
        if !on {
            return;
        }
        let (encode, opus): (fn(i16) -> u8, _) = match (leg.codec, leg.codec_pt) {
            (Some(super::transcode::Codec::Opus), Some(_)) => {
                use super::transcode::{Codec, Transcoder};
                match Transcoder::with_complexity(Codec::Pcmu, Codec::Opus, complexity) {
                    Ok(t) => (super::g711::ulaw_encode as fn(i16) -> u8, Some(Box::new(t))),
                    Err(e) => {
                        tracing::warn!(error = %e, "no Opus encoder for ringback");
                        return;
                    }
                }
            }
            (_, Some(8)) => (super::g711::alaw_encode as fn(i16) -> u8, None),
            (_, Some(0)) => (super::g711::ulaw_encode as fn(i16) -> u8, None),
            _ => return,
        };
        let Some(pt) = leg.codec_pt else {
            return;
        };
        leg.playing = true;
        self.playing.push(PlayOut {
            slot,
            prompt: super::prompt::Prompt::ringback(),
            pos: 0,
            next_at: Instant::now(),
            barge_in: false,
            encode,
            pt,
            looping: true,
            opus,
        });
    }

    fn add(
        &mut self,
        id: u64,
        sockets: [(std::net::UdpSocket, std::net::UdpSocket); 2],
        policy: SourcePolicy,
        timeout: Duration,
        events: EventSink,
        recorder: Option<Recorder>,
    ) {
        let slots = [self.slot(), self.slot()];
        for (i, (rtp, rtcp)) in sockets.into_iter().enumerate() {
            let io = self.plain_io(slots[i], rtp, rtcp);
            let side = if i == 0 { Side::A } else { Side::B };
            self.legs[slots[i]] = Some(Leg::new(io, id, slots[1 - i], side, policy, timeout));
        }
        self.pairs.insert(
            id,
            Pair {
                legs: slots,
                events,
                recorder,
            },
        );
        metrics::gauge!(telemetry::MEDIA_LEGS_ACTIVE).increment(2.0);
    }

    /// Registers a plain leg's sockets under slot `slot`'s tokens.
    fn plain_io(&mut self, slot: usize, rtp: std::net::UdpSocket, rtcp: std::net::UdpSocket) -> Io {
        let mut rtp = UdpSocket::from_std(rtp);
        let mut rtcp = UdpSocket::from_std(rtcp);
        let registry = self.poll.registry();
        if let Err(e) = registry
            .register(&mut rtp, Token(2 * slot), Interest::READABLE)
            .and_then(|()| registry.register(&mut rtcp, Token(2 * slot + 1), Interest::READABLE))
        {
            tracing::error!(error = %e, "media socket registration failed");
        }
        Io::Plain { rtp, rtcp }
    }

    fn add_rtc_socket(&mut self, index: usize, socket: std::net::UdpSocket) {
        let mut socket = UdpSocket::from_std(socket);
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            Token(RTC_TOKENS + index),
            Interest::READABLE,
        ) {
            tracing::error!(error = %e, "WebRTC socket registration failed");
        }
        if self.rtc_sockets.len() <= index {
            self.rtc_sockets.resize_with(index + 1, || None);
        }
        self.rtc_sockets[index] = Some(RtcSocket {
            socket,
            by_remote: HashMap::new(),
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn add_webrtc(
        &mut self,
        id: u64,
        leg: Box<WebRtcLeg>,
        socket: usize,
        remotes: Vec<SocketAddr>,
        b: Option<(std::net::UdpSocket, std::net::UdpSocket)>,
        policy: SourcePolicy,
        timeout: Duration,
        events: EventSink,
        recorder: Option<Recorder>,
    ) {
        let a = self.slot();
        let b_slot = match b {
            Some((rtp, rtcp)) => {
                let slot = self.slot();
                let io = self.plain_io(slot, rtp, rtcp);
                self.legs[slot] = Some(Leg::new(io, id, a, Side::B, policy, timeout));
                slot
            }
            // An echo: side A's packets go back to side A.
            None => a,
        };
        if let Some(s) = self.rtc_sockets.get_mut(socket).and_then(Option::as_mut) {
            for r in &remotes {
                s.by_remote.insert(*r, a);
            }
        }
        // A leg that answered an offer knows its peer; one that made an offer waits for
        // the answer before it sends or expects anything.
        let ready = !leg.awaiting_answer();
        let mut a_leg = Leg::new(
            Io::WebRtc(Box::new(RtcIo {
                socket,
                remotes,
                seq: None,
                ready,
                leg,
            })),
            id,
            b_slot,
            Side::A,
            policy,
            timeout,
        );
        a_leg.set_webrtc_remote();
        a_leg.sends = ready;
        self.legs[a] = Some(a_leg);
        self.rtc_slots.push(a);
        // Its first timer (ICE checks start at once).
        if let Some(Io::WebRtc(rtc)) = self.legs[a].as_mut().map(|l| &mut l.io) {
            rtc_flush(rtc, &self.rtc_sockets, &mut self.rtc_due);
        }
        self.rtc_due = Instant::now();
        self.pairs.insert(
            id,
            Pair {
                legs: [a, b_slot],
                events,
                recorder,
            },
        );
        let legs = if b_slot == a { 1.0 } else { 2.0 };
        metrics::gauge!(telemetry::MEDIA_LEGS_ACTIVE).increment(legs);
        if b_slot != a {
            self.plan_transcoding(a);
        }
    }

    /// Applies the peer's answer to the WebRTC offer of pair `id`'s side A.
    fn webrtc_answer(&mut self, id: u64, sdp: &str) -> Result<(), String> {
        let slot = self
            .pairs
            .get(&id)
            .map(|p| p.legs[0])
            .ok_or("no such media pair")?;
        let leg = self.legs[slot].as_mut().ok_or("no such media leg")?;
        let Io::WebRtc(rtc) = &mut leg.io else {
            return Err("side A is not a WebRTC leg".into());
        };
        rtc.leg.accept_answer(sdp).map_err(|e| e.to_string())?;
        let v4 = rtc.leg.local().is_ipv4();
        let remotes = super::webrtc::PeerDescription::parse(sdp)
            .map(|p| p.candidate_addrs(v4))
            .unwrap_or_default();
        if let Some(s) = self
            .rtc_sockets
            .get_mut(rtc.socket)
            .and_then(Option::as_mut)
        {
            for r in &remotes {
                s.by_remote.insert(*r, slot);
            }
        }
        rtc.remotes.extend(remotes);
        rtc.ready = true;
        rtc_flush(rtc, &self.rtc_sockets, &mut self.rtc_due);
        leg.set_webrtc_remote();
        leg.sends = true;
        leg.last_rx = Instant::now();
        self.plan_transcoding(slot);
        Ok(())
    }

    /// Reads what arrived on a shared WebRTC socket and hands each datagram to its leg:
    /// found by the peer's address, or else, for an ICE check from an address not in any
    /// SDP, by asking the socket's legs (the leg's STUN credentials decide), which then
    /// learns the address.
    fn drain_rtc_socket(&mut self, index: usize, batch: &mut Batch) {
        use std::os::fd::AsRawFd;
        let mut errors = 0;
        loop {
            let Some(shared) = self.rtc_sockets.get(index).and_then(Option::as_ref) else {
                return;
            };
            let n = match batch.recv(shared.socket.as_raw_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    errors += 1;
                    if errors >= 8 {
                        return;
                    }
                    continue;
                }
            };
            let now = Instant::now();
            for i in 0..n {
                let (data, from) = batch.packet(i);
                let known = self.rtc_sockets[index]
                    .as_ref()
                    .and_then(|s| s.by_remote.get(&from).copied());
                let taken = match known {
                    Some(slot) => self.rtc_receive(slot, index, now, from, data),
                    // A peer's new address shows itself with an ICE check first; DTLS or
                    // SRTP from an address no leg knows is nobody's, and costs no scan.
                    None if !is_stun(data) => false,
                    None => {
                        let mut taken = false;
                        for k in 0..self.rtc_slots.len() {
                            let slot = self.rtc_slots[k];
                            let on_socket = matches!(
                                self.legs[slot].as_ref().map(|l| &l.io),
                                Some(Io::WebRtc(r)) if r.socket == index
                            );
                            if on_socket && self.rtc_receive(slot, index, now, from, data) {
                                if let Some(s) = self.rtc_sockets[index].as_mut() {
                                    s.by_remote.insert(from, slot);
                                }
                                if let Some(Io::WebRtc(r)) =
                                    self.legs[slot].as_mut().map(|l| &mut l.io)
                                {
                                    r.remotes.push(from);
                                }
                                taken = true;
                                break;
                            }
                        }
                        taken
                    }
                };
                if !taken {
                    self.counters.foreign += 1;
                }
            }
            if n < super::batch::BATCH {
                return;
            }
        }
    }

    /// Hands one datagram to the WebRTC leg in `slot`; false when the leg does not take it.
    fn rtc_receive(
        &mut self,
        slot: usize,
        socket: usize,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Some(leg) = self.legs.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        let Io::WebRtc(rtc) = &mut leg.io else {
            return false;
        };
        let Some(shared) = self.rtc_sockets.get(socket).and_then(Option::as_ref) else {
            return false;
        };
        let mut send = |to: SocketAddr, d: &[u8]| {
            let _ = shared.socket.send_to(d, to);
        };
        let taken = match rtc.leg.receive_into(now, from, data, &mut send) {
            Ok(taken) => taken,
            Err(e) => {
                tracing::debug!(error = %e, %from, "WebRTC datagram refused");
                true
            }
        };
        if taken {
            self.rtc_due = self.rtc_due.min(rtc.leg.timeout());
            if leg.remote.is_none() {
                // Where the peer's media comes from: sent there once connected.
                leg.remote = Some(from);
            }
            self.rtc_events(slot);
        }
        taken
    }

    /// Acts on what a WebRTC leg reported: connection changes, and RTP to relay.
    fn rtc_events(&mut self, slot: usize) {
        let mut buf = [0u8; MAX_PACKET];
        loop {
            let Some(leg) = self.legs.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            let Io::WebRtc(rtc) = &mut leg.io else {
                return;
            };
            let Some(event) = rtc.leg.next_event() else {
                return;
            };
            let (pair, side) = (leg.pair, leg.side);
            let from = leg.remote.unwrap_or(super::batch::UNSPECIFIED);
            let notice = match event {
                LegOutput::Connected => Some(MediaEvent::Connected(side)),
                LegOutput::Disconnected => Some(MediaEvent::Disconnected(side)),
                LegOutput::Rtp {
                    pt,
                    seq,
                    timestamp,
                    marker,
                    ssrc,
                    payload,
                } => {
                    let Some(n) = super::rtp::write_packet(
                        &mut buf, marker, pt, seq, timestamp, ssrc, &payload,
                    ) else {
                        continue;
                    };
                    if let Some(to) = self.relay_rtp(slot, &mut buf[..n], from) {
                        if let Some(peer) = self.legs[slot].as_ref().map(|l| l.peer) {
                            self.send_to_leg(peer, &buf[..n], to);
                        }
                    }
                    None
                }
                LegOutput::Transmit { to, data } => {
                    if let Some(s) = self.rtc_sockets.get(rtc.socket).and_then(Option::as_ref) {
                        let _ = s.socket.send_to(&data, to);
                    }
                    None
                }
                _ => None,
            };
            if let (Some(e), Some(p)) = (notice, self.pairs.get(&pair)) {
                (p.events)(e);
            }
        }
    }

    /// Runs the WebRTC legs' timers that are due (ICE checks, DTLS retransmits, RTCP) and
    /// finds the next one.
    fn rtc_timers(&mut self, now: Instant) {
        let mut due = now + RTC_IDLE;
        for k in 0..self.rtc_slots.len() {
            let slot = self.rtc_slots[k];
            let Some(Io::WebRtc(rtc)) = self.legs[slot].as_mut().map(|l| &mut l.io) else {
                continue;
            };
            if rtc.leg.timeout() <= now {
                if let Err(e) = rtc.leg.handle_timeout(now) {
                    tracing::debug!(error = %e, "WebRTC timer failed");
                }
                let mut ignored = now + RTC_IDLE;
                rtc_flush(rtc, &self.rtc_sockets, &mut ignored);
                self.rtc_events(slot);
            }
            if let Some(Io::WebRtc(rtc)) = self.legs[slot].as_ref().map(|l| &l.io) {
                due = due.min(rtc.leg.timeout());
            }
        }
        // str0m asks for "now" again when it has nothing planned; never spin on it.
        self.rtc_due = due.max(now + Duration::from_millis(1));
    }

    fn slot(&mut self) -> usize {
        match self.free.pop() {
            Some(s) => s,
            None => {
                self.legs.push(None);
                self.legs.len() - 1
            }
        }
    }

    fn pair_stats(&self, legs: [usize; 2]) -> [LegStats; 2] {
        legs.map(|slot| match &self.legs[slot] {
            Some(leg) => LegStats {
                // Duplicates make RFC 3550's count negative; a call's loss is never below 0.
                lost: leg.rx.lost().max(0),
                jitter_ms: leg.rx.jitter() * 1000 / leg.clock.max(1),
                ..leg.stats
            },
            None => LegStats::default(),
        })
    }

    fn remove(&mut self, id: u64) -> Option<[LegStats; 2]> {
        let pair = self.pairs.remove(&id)?;
        let stats = self.pair_stats(pair.legs);
        let distinct = if pair.legs[0] == pair.legs[1] { 1 } else { 2 };
        for &slot in &pair.legs[..distinct] {
            if let Some(mut leg) = self.legs[slot].take() {
                if leg.transcode.is_some() {
                    metrics::gauge!(telemetry::TRANSCODING_LEGS_ACTIVE).decrement(1.0);
                }
                match &mut leg.io {
                    Io::Plain { rtp, rtcp } => {
                        let registry = self.poll.registry();
                        let _ = registry.deregister(rtp);
                        let _ = registry.deregister(rtcp);
                    }
                    Io::WebRtc(rtc) => {
                        if let Some(s) = self
                            .rtc_sockets
                            .get_mut(rtc.socket)
                            .and_then(Option::as_mut)
                        {
                            for r in &rtc.remotes {
                                if s.by_remote.get(r) == Some(&slot) {
                                    s.by_remote.remove(r);
                                }
                            }
                        }
                        self.rtc_slots.retain(|&s| s != slot);
                    }
                }
            }
            self.free.push(slot);
        }
        metrics::gauge!(telemetry::MEDIA_LEGS_ACTIVE).decrement(distinct as f64);
        Some(stats)
    }

    fn close_all(&mut self) {
        let ids: Vec<u64> = self.pairs.keys().copied().collect();
        for id in ids {
            self.remove(id);
        }
        self.publish();
    }

    /// Reads everything queued on one of leg `slot`'s sockets, [`BATCH`] packets per
    /// system call, and relays it; packets relayed untouched leave in one `sendmmsg` per
    /// batch from the peer leg's socket.
    ///
    /// [`BATCH`]: super::batch::BATCH
    fn drain_socket(
        &mut self,
        slot: usize,
        rtcp_socket: bool,
        batch: &mut Batch,
        forward: &mut Vec<(usize, SocketAddr)>,
    ) {
        use std::os::fd::AsRawFd;
        // Edge-triggered: read until the socket is empty. A short batch means it was
        // empty when the kernel looked; a packet arriving after that raises a new edge.
        let mut errors = 0;
        loop {
            let Some(leg) = self.legs.get(slot).and_then(Option::as_ref) else {
                return;
            };
            let Io::Plain { rtp, rtcp } = &leg.io else {
                return;
            };
            let fd = if rtcp_socket { rtcp } else { rtp }.as_raw_fd();
            let n = match batch.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ICMP errors from earlier sends surface here; the socket stays usable. A
                // socket that keeps failing is left until its next readiness, never spun on.
                Err(_) => {
                    errors += 1;
                    if errors >= 8 {
                        return;
                    }
                    continue;
                }
            };
            forward.clear();
            for i in 0..n {
                let (packet, from) = batch.packet(i);
                if rtcp_socket || is_rtcp(packet) {
                    self.relay_rtcp(slot, packet, from);
                } else if let Some(to) = self.relay_rtp(slot, packet, from) {
                    forward.push((i, to));
                    if self.legs[slot]
                        .as_ref()
                        .is_some_and(|l| l.transcode.is_some())
                    {
                        // Telephone-events among transcoded audio keep their place.
                        self.flush(slot, batch, forward);
                        forward.clear();
                    }
                }
            }
            if !forward.is_empty() {
                self.flush(slot, batch, forward);
            }
            if n < super::batch::BATCH {
                return;
            }
        }
    }

    /// Sends the packets `relay_rtp` passed through untouched from the peer of leg `slot`.
    fn flush(&mut self, slot: usize, batch: &mut Batch, forward: &[(usize, SocketAddr)]) {
        use std::os::fd::AsRawFd;
        let Some(peer) = self.legs[slot].as_ref().map(|l| l.peer) else {
            return;
        };
        let Some(peer_leg) = self.legs[peer].as_mut() else {
            return;
        };
        let fd = match &peer_leg.io {
            Io::Plain { rtp, .. } => rtp.as_raw_fd(),
            Io::WebRtc(_) => {
                // Toward WebRTC each packet is encrypted on its own.
                for &(i, to) in forward {
                    let (packet, _) = batch.packet(i);
                    self.send_to_leg(peer, packet, to);
                }
                return;
            }
        };
        let sent = batch.send(fd, forward) as u64;
        let failed = forward.len() as u64 - sent;
        peer_leg.stats.packets_out += sent;
        peer_leg.stats.dropped += failed;
        self.counters.tx += sent;
        self.counters.no_destination += failed;
    }

    /// Whether a leg takes `packet` from `from`, latching if its policy allows. A leg latches
    /// only to a valid RTP packet of a payload type its peer agreed to, so a stray or forged
    /// datagram arriving first can neither take the call's audio nor lock the peer out.
    fn accepts(leg: &mut Leg, from: SocketAddr, packet: &[u8]) -> bool {
        if matches!(leg.io, Io::WebRtc(_)) {
            // SRTP authenticated it.
            return true;
        }
        if leg.remote == Some(from) {
            leg.latched = true;
            return true;
        }
        if leg.policy != SourcePolicy::Latch || leg.latched {
            return false;
        }
        let agreed = RtpView::parse(packet).is_ok_and(|rtp| {
            let pt = rtp.payload_type();
            leg.codec_pt.is_none_or(|c| c == pt) || leg.dtmf_pt == Some(pt)
        });
        if agreed {
            leg.remote = Some(from);
            leg.latched = true;
        }
        agreed
    }

    /// Relays one RTP packet from leg `slot`: the destination when it is to be passed on
    /// untouched (rewritten in place) by the caller, `None` when it was dropped, held back,
    /// or transcoded and sent here.
    fn relay_rtp(
        &mut self,
        slot: usize,
        packet: &mut [u8],
        from: SocketAddr,
    ) -> Option<SocketAddr> {
        let now = Instant::now();
        let leg = self.legs[slot].as_mut()?;
        if !Self::accepts(leg, from, packet) {
            leg.stats.dropped += 1;
            self.counters.foreign += 1;
            return None;
        }
        let Ok(mut rtp) = RtpView::parse(&mut *packet) else {
            leg.stats.dropped += 1;
            self.counters.malformed += 1;
            return None;
        };
        self.counters.rx += 1;
        leg.stats.packets_in += 1;
        leg.stats.bytes_in += rtp.as_bytes().len() as u64;
        leg.last_rx = now;
        leg.timed_out = false;
        let elapsed = now.duration_since(leg.epoch);
        let arrival = (elapsed.as_micros() as u64 * u64::from(leg.clock) / 1_000_000) as u32;
        let (seq, ts, ssrc, pt) = (
            rtp.sequence(),
            rtp.timestamp(),
            rtp.ssrc(),
            rtp.payload_type(),
        );
        leg.rx.on_packet(seq, ts, arrival);
        let mut event = None;
        if !leg.got_first {
            leg.got_first = true;
            event = Some(MediaEvent::FirstPacket(leg.side));
        }
        let mut dtmf = false;
        let mut barge = false;
        if Some(pt) == leg.dtmf_pt {
            dtmf = true;
            if let Some(d) = leg.dtmf.on_packet(ts, rtp.payload()) {
                event = Some(MediaEvent::Dtmf(leg.side, d));
                barge = leg.playing;
            }
        }
        let (pair, peer, side) = (leg.pair, leg.peer, leg.side);
        if barge {
            if let Some(i) = self
                .playing
                .iter()
                .position(|p| p.slot == slot && p.barge_in)
            {
                self.playing.swap_remove(i);
                self.end_prompt(slot, true);
            }
        }
        if let Some(p) = self.pairs.get_mut(&pair) {
            if let Some(e) = event {
                (p.events)(e);
            }
            if let Some(rec) = p.recorder.as_mut() {
                record(rec, side, pt, ts, now, rtp.payload());
            }
        }
        if self.legs[peer].as_ref().is_none_or(|l| l.playing) {
            // Gone, or a prompt has the floor toward that side.
            return None;
        }
        let leg = self.legs[slot].as_mut()?;
        let (out_seq, out_ts, rewrite) = leg.smoother.next(ssrc, seq, ts);
        let out_ssrc = leg.smoother.out_ssrc;
        if let Some(t) = leg.transcode.as_mut().filter(|t| t.in_pt == pt) {
            // Decode and encode into the shard's second buffer; the header is written anew.
            let marker = rtp.marker();
            let (head, body) = self.out_buf.split_at_mut(super::rtp::HEADER_LEN);
            let n = match t.tx.transcode(rtp.payload(), body) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "packet not transcoded");
                    leg.stats.dropped += 1;
                    self.counters.malformed += 1;
                    return None;
                }
            };
            let ts = t.timestamp(out_ts);
            let _ = super::rtp::write_packet(head, marker, t.out_pt, out_seq, ts, out_ssrc, &[]);
            // A side that speaks Opus is recorded from its audio as transcoded to G.711.
            if let Some(rec) = self.pairs.get_mut(&pair).and_then(|p| p.recorder.as_mut()) {
                record(rec, side, t.out_pt, ts, now, &body[..n]);
            }
            let peer_leg = self.legs[peer].as_mut()?;
            let Some(to) = peer_leg.remote else {
                peer_leg.stats.dropped += 1;
                self.counters.no_destination += 1;
                return None;
            };
            Self::send_via(
                &mut self.legs,
                &self.rtc_sockets,
                &mut self.rtc_due,
                &mut self.counters,
                peer,
                &self.out_buf[..super::rtp::HEADER_LEN + n],
                to,
            );
            return None;
        }
        // On a transcoded direction only telephone-events pass besides the audio; anything
        // else is in a format the other side never agreed to.
        let mapped_ts = match leg.transcode.as_mut() {
            Some(_) if !dtmf => {
                leg.stats.dropped += 1;
                self.counters.malformed += 1;
                return None;
            }
            // Events share the outgoing stream's timestamps, which run on its clock.
            Some(t) => Some(t.timestamp(out_ts)),
            None => None,
        };
        let in_dtmf_clock = leg.dtmf_clock;
        let peer_leg = self.legs[peer].as_mut()?;
        let Some(to) = peer_leg.remote else {
            peer_leg.stats.dropped += 1;
            self.counters.no_destination += 1;
            return None;
        };
        if rewrite || mapped_ts.is_some() {
            rtp.set_sequence(out_seq);
            rtp.set_timestamp(mapped_ts.unwrap_or(out_ts));
            rtp.set_ssrc(out_ssrc);
        }
        if dtmf {
            // Telephone-events keep their meaning under the receiver's payload type, and
            // their duration is counted on the receiver's event clock.
            if let Some(peer_pt) = peer_leg.dtmf_pt {
                if peer_pt != pt {
                    rtp.set_payload_type(peer_pt);
                }
            }
            if peer_leg.dtmf_clock != in_dtmf_clock {
                super::dtmf::rescale_duration(
                    rtp.payload_mut(),
                    in_dtmf_clock,
                    peer_leg.dtmf_clock,
                );
            }
        }
        Some(to)
    }

    fn relay_rtcp(&mut self, slot: usize, packet: &[u8], from: SocketAddr) {
        let Some(leg) = self.legs[slot].as_ref() else {
            return;
        };
        // RTCP comes from the peer's host (port +1, or the RTP port with rtcp-mux).
        if leg.remote.map(|r| r.ip()) != Some(from.ip()) {
            self.counters.foreign += 1;
            return;
        }
        let peer = leg.peer;
        let Some(peer_leg) = self.legs[peer].as_ref() else {
            return;
        };
        let Some(to) = peer_leg.remote else {
            return;
        };
        // A WebRTC leg's RTCP is its own (str0m reports on each side's stream).
        let Io::Plain { rtp, rtcp } = &peer_leg.io else {
            return;
        };
        let to = if peer_leg.rtcp_mux {
            to
        } else {
            SocketAddr::new(to.ip(), to.port().wrapping_add(1))
        };
        let socket = if peer_leg.rtcp_mux { rtp } else { rtcp };
        let _ = socket.send_to(packet, to);
    }

    fn tick(&mut self, now: Instant) {
        for leg in self.legs.iter_mut().flatten() {
            // A WebRTC leg that never connects times out too.
            let expected = leg.remote.is_some() || matches!(leg.io, Io::WebRtc(_));
            if leg.sends
                && !leg.timed_out
                && expected
                && now.duration_since(leg.last_rx) >= leg.timeout
            {
                leg.timed_out = true;
                if let Some(p) = self.pairs.get(&leg.pair) {
                    (p.events)(MediaEvent::Timeout(leg.side));
                }
            }
        }
        self.publish();
    }

    fn publish(&mut self) {
        let c = std::mem::take(&mut self.counters);
        if c.rx > 0 {
            metrics::counter!(telemetry::RTP_PACKETS_TOTAL, "direction" => "in").increment(c.rx);
        }
        if c.tx > 0 {
            metrics::counter!(telemetry::RTP_PACKETS_TOTAL, "direction" => "out").increment(c.tx);
        }
        for (reason, n) in [
            ("foreign_source", c.foreign),
            ("malformed", c.malformed),
            ("no_destination", c.no_destination),
        ] {
            if n > 0 {
                metrics::counter!(telemetry::RTP_DROPPED_TOTAL, "reason" => reason).increment(n);
            }
        }
    }
}

#[cfg(test)]
mod tests;
