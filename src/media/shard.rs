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
//!
//! Calls reach the shards through [`MediaPlane`](super::plane::MediaPlane), which starts
//! them, queues their commands and starts a failed one again. This file holds the shard's
//! state (its legs, pairs and what it is inserting into streams) and the commands it takes;
//! `run` is its event loop, `relay` the RTP relay of a pair, `rtc` its WebRTC sockets and
//! legs, and `playout` the prompts, ringback and DTMF it sends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Poll, Token};

use super::batch::MAX_PACKET;
use super::dtmf::DtmfReceiver;
use super::plane::{EventSink, LegStats};
use super::record::Recorder;
use super::rtcp::ReceiverStats;
use super::smoother::Smoother;
use super::types::{Remote, Side, SourcePolicy};
use super::webrtc::WebRtcLeg;

mod capture;
mod latency;
mod playout;
mod relay;
mod rtc;
mod run;
mod stream;

/// How often timeouts are checked and counters published.
const TICK: Duration = Duration::from_millis(250);

/// The poller token of the waker that announces queued commands.
pub(super) const WAKER: Token = Token(usize::MAX);

/// Tokens of the shared WebRTC sockets start here (leg sockets use `2 * slot` and
/// `2 * slot + 1` below it).
const RTC_TOKENS: usize = 1 << 40;

/// How long a shard sleeps at most when it has no WebRTC timer due.
const RTC_IDLE: Duration = Duration::from_secs(3600);

/// A pair whose side A is a WebRTC leg on a shared socket; side B is a plain RTP leg, or
/// none (the pair echoes side A's audio back to it).
pub(super) struct NewWebRtcPair {
    pub(super) id: u64,
    pub(super) leg: Box<WebRtcLeg>,
    /// The shared socket's index.
    pub(super) socket: usize,
    /// The peer addresses the leg's packets come from (its SDP's candidates).
    pub(super) remotes: Vec<SocketAddr>,
    /// Side B's RTP and RTCP sockets.
    pub(super) b: Option<LegSockets>,
    pub(super) policy: SourcePolicy,
    pub(super) timeout: Duration,
    pub(super) events: EventSink,
}

/// What the shard hands back when it removes a pair: its final counters, and where each
/// side's plain sockets (side A, side B) rest in the shard, still bound and registered, for
/// the port pool to keep for a later call.
#[derive(Debug)]
pub(super) struct Removed {
    pub(super) stats: [LegStats; 2],
    /// The slots where they rest.
    pub(super) resting: [Option<usize>; 2],
    /// The shard's life (see [`Inbox::epoch`]).
    pub(super) epoch: u64,
}

/// A plain leg's sockets for a new pair.
pub(super) enum LegSockets {
    /// Bound for it (or taken from elsewhere): registered by the shard.
    Bound(std::net::UdpSocket, std::net::UdpSocket),
    /// Resting in this shard since an earlier call, registered still.
    Resting(super::ports::Resting),
}

/// A shard's command queue as the shard sees it. `notified` is set by whoever wakes the
/// shard and cleared by the shard before it drains the queue, so commands queued while a
/// wake is pending share it: one wake-up, not one per command.
pub(super) struct Inbox {
    pub(super) rx: Receiver<Command>,
    pub(super) notified: Arc<std::sync::atomic::AtomicBool>,
    /// The shard's life: counted up each time it is started again after a panic (what it
    /// held before, resting sockets included, is gone).
    pub(super) epoch: Arc<std::sync::atomic::AtomicU64>,
}

pub(super) enum Command {
    Add {
        id: u64,
        sockets: [LegSockets; 2],
        policy: SourcePolicy,
        timeout: Duration,
        events: EventSink,
    },
    /// Where each side's peer receives and what it sends (from its SDP); `None` leaves a
    /// side as it is.
    Remote {
        id: u64,
        remotes: [Option<Remote>; 2],
    },
    /// A plain leg's SDES-SRTP contexts (RFC 4568): what it receives is authenticated and
    /// decrypted, what it sends encrypted.
    Srtp {
        id: u64,
        side: Side,
        srtp: Box<Sdes>,
    },
    /// A shared socket for WebRTC legs, `index` in the plane's list.
    RtcSocket {
        index: usize,
        socket: std::net::UdpSocket,
    },
    /// A pair whose side A is a WebRTC leg on a shared socket.
    AddWebRtc(NewWebRtcPair),
    /// A WebRTC leg of ours (an offer, awaiting its answer) stands in for side B: the plain
    /// side B is parked until [`Command::DropWebRtcB`] (an agent's browser phone).
    WebRtcB {
        id: u64,
        leg: Box<WebRtcLeg>,
        socket: usize,
    },
    /// Side B's WebRTC leg goes; the parked plain leg is side B again.
    DropWebRtcB {
        id: u64,
    },
    /// The peer's answer to a WebRTC leg's offer.
    WebRtcAnswer {
        id: u64,
        side: Side,
        sdp: String,
        reply: SyncSender<Result<(), String>>,
    },
    Remove {
        id: u64,
        reply: Option<SyncSender<Removed>>,
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
    /// Capture one side's audio to the recorder (replacing a capture running).
    Capture {
        id: u64,
        side: Side,
        recorder: Recorder,
        silence: Option<Duration>,
    },
    /// End the capture (the recorder finalises the file and reports it).
    StopCapture {
        id: u64,
    },
    /// Start (with a recorder) or stop the pair's recording of both sides; a recording
    /// running is finalised either way.
    Record {
        id: u64,
        recorder: Option<Recorder>,
    },
    /// Start or stop ringback toward a side (looped, until stopped).
    Ringback {
        id: u64,
        side: Side,
        on: bool,
    },
    /// Start a media stream on one side (replacing one running).
    Stream {
        id: u64,
        side: Side,
        tap: Box<super::stream::Tap>,
    },
    /// End the pair's media stream `seq` (a later one is left alone).
    StopStream {
        id: u64,
        seq: u64,
    },
    /// Close sockets resting here (the port pool has no room for them).
    Evict(super::ports::Resting),
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
    /// The time of its entry in the shard's [`RtcTimers`] (`None`: no entry).
    scheduled: Option<Instant>,
}

/// The WebRTC legs' timers: a heap of (due, slot). A leg's entry is pushed only when its
/// timer moves earlier than the entry it has; a timer that moved later is found when the
/// entry fires, and pushed again. Entries of legs gone or moved are skipped when they fire.
/// So a timer pass visits the legs that are due, not every leg.
pub(super) struct RtcTimers {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, usize)>>,
    /// The earliest entry (or later, never earlier): when the shard next runs the pass.
    due: Instant,
    /// No entry is due before this: 1 ms after the last pass began (str0m asks for "now"
    /// again when it has nothing planned; a pass never spins on it).
    floor: Instant,
}

impl RtcTimers {
    fn new() -> RtcTimers {
        RtcTimers {
            heap: std::collections::BinaryHeap::new(),
            due: Instant::now() + RTC_IDLE,
            floor: Instant::now(),
        }
    }

    /// Notes WebRTC leg `slot`'s next timer.
    fn schedule(&mut self, slot: usize, rtc: &mut RtcIo) {
        let at = rtc.leg.timeout().max(self.floor);
        if rtc.scheduled.is_none_or(|s| at < s) {
            self.heap.push(std::cmp::Reverse((at, slot)));
            rtc.scheduled = Some(at);
            self.due = self.due.min(at);
        }
    }

    /// After a pass at `now`: the next pass is due at the earliest entry.
    fn settle(&mut self, now: Instant) {
        self.due = self
            .heap
            .peek()
            .map_or(now + RTC_IDLE, |std::cmp::Reverse((at, _))| *at);
    }

    /// The next entry due by `now`, taken off the heap.
    fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        match self.heap.peek() {
            Some(std::cmp::Reverse((at, _))) if *at <= now => {
                self.heap.pop().map(|std::cmp::Reverse(entry)| entry)
            }
            _ => None,
        }
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
    /// The Opus encoder of what the switch inserts toward this leg's peer (prompts,
    /// ringback), kept between prompts so they continue one encoded stream.
    inserted_opus: Option<Box<super::transcode::Transcoder>>,
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
    /// Sampling of the time its packets spent in the switch.
    latency: latency::Sampling,
    /// SDES-SRTP of a plain leg (Meta's SIP interface); `None`: plain RTP.
    srtp: Option<Box<Sdes>>,
}

/// A plain leg's SRTP: the contexts of each direction, and a buffer where a packet built
/// elsewhere is copied to be encrypted (with room for the trailer).
pub(crate) struct Sdes {
    tx: super::srtp::SrtpSender,
    rx: super::srtp::SrtpReceiver,
    buf: [u8; MAX_PACKET],
}

impl Sdes {
    /// Contexts from both sides' keys.
    pub(crate) fn new(keying: &super::srtp::Keying) -> Box<Sdes> {
        let (tx, rx) = keying.contexts();
        Box::new(Sdes {
            tx,
            rx,
            buf: [0; MAX_PACKET],
        })
    }

    /// Encrypts `packet` (RTP, or RTCP when `rtcp`) into the leg's buffer; the bytes to
    /// send, or `None` when it cannot be protected (too long).
    fn protect(&mut self, packet: &[u8], rtcp: bool) -> Option<&[u8]> {
        let len = packet.len();
        if len + super::srtp::MAX_TRAILER > MAX_PACKET {
            return None;
        }
        self.buf[..len].copy_from_slice(packet);
        let n = if rtcp {
            self.tx.protect_rtcp(&mut self.buf, len)
        } else {
            self.tx.protect_rtp(&mut self.buf, len)
        }
        .ok()?;
        Some(&self.buf[..n])
    }
}

impl std::fmt::Debug for Sdes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.write_str("Sdes")
    }
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
            inserted_opus: None,
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
            latency: latency::Sampling::default(),
            srtp: None,
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

struct Pair {
    legs: [usize; 2],
    /// The plain side B, while a WebRTC leg stands in for it.
    parked: Option<usize>,
    events: EventSink,
    recorder: Option<Recorder>,
    /// For a recording started on demand, each untranscoded Opus side's decoder (to
    /// G.711): its audio is recorded as it arrives.
    record_opus: [Option<Box<RecordOpus>>; 2],
    /// One side's voice being captured (a voicemail).
    capture: Option<Box<Capture>>,
    /// A media stream to a bot on one side.
    stream: Option<Box<stream::Stream>>,
}

/// An Opus side decoded for the recording of both sides.
struct RecordOpus {
    /// The side's Opus payload type.
    pt: u8,
    decoder: super::transcode::Transcoder,
    /// RTP timestamp of the side's first packet (timestamps count from it, so a wrap of
    /// the 48 kHz clock is no jump).
    base: Option<u32>,
}

/// One side's audio captured to a file (a voicemail), with silence watched.
struct Capture {
    side: Side,
    recorder: Recorder,
    /// An Opus side's packets are decoded (to G.711, then linear).
    opus: Option<Box<super::transcode::Transcoder>>,
    /// RTP timestamp of the first packet, and the side's clock.
    base: Option<u32>,
    clock: u32,
    /// This long without voice is silence (`None`: not watched).
    silence: Option<Duration>,
    last_voice: Instant,
    silence_told: bool,
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

pub(super) struct Shard {
    pub(super) poll: Poll,
    /// Shared WebRTC sockets, by the plane's index.
    rtc_sockets: Vec<Option<RtcSocket>>,
    /// Slots of the WebRTC legs.
    rtc_slots: Vec<usize>,
    /// The WebRTC legs' timers.
    rtc_timers: RtcTimers,
    pub(super) commands: Inbox,
    legs: Vec<Option<Leg>>,
    free: Vec<usize>,
    /// Plain sockets resting between calls, by the slot whose tokens they keep (what
    /// reaches them is dropped).
    resting: HashMap<usize, (UdpSocket, UdpSocket)>,
    pairs: HashMap<u64, Pair>,
    counters: Counters,
    /// When the packet being relayed reached the switch (nanoseconds since the Unix
    /// epoch; 0 while nothing received is being relayed).
    arrived: u64,
    latency: latency::Latency,
    dtmf_out: Vec<DtmfOut>,
    playing: Vec<PlayOut>,
    /// Pairs with a media stream, and when the next of them plays.
    streams: Vec<u64>,
    stream_due: Instant,
    /// The origin of the streams' shared 20 ms grid.
    stream_epoch: Instant,
    /// Where transcoded packets are built.
    out_buf: [u8; MAX_PACKET],
    pub(super) opus_complexity: Arc<std::sync::atomic::AtomicU8>,
}

impl Shard {
    pub(super) fn new(
        poll: Poll,
        commands: Inbox,
        opus_complexity: Arc<std::sync::atomic::AtomicU8>,
    ) -> Self {
        Self {
            poll,
            rtc_sockets: Vec::new(),
            rtc_slots: Vec::new(),
            rtc_timers: RtcTimers::new(),
            commands,
            legs: Vec::new(),
            free: Vec::new(),
            resting: HashMap::new(),
            pairs: HashMap::new(),
            counters: Counters::default(),
            arrived: 0,
            latency: latency::Latency::new(),
            dtmf_out: Vec::new(),
            playing: Vec::new(),
            streams: Vec::new(),
            stream_due: Instant::now() + RTC_IDLE,
            stream_epoch: Instant::now(),
            out_buf: [0; MAX_PACKET],
            opus_complexity,
        }
    }
}

/// What one read of a socket into a batch gave.
pub(super) enum Read {
    /// This many packets are in the batch.
    Packets(usize),
    /// A transient error: read again.
    Again,
    /// The socket is empty, or keeps failing: leave it until its next readiness.
    Done,
}

/// Reads `fd` into `batch`, for a loop that drains an edge-triggered socket. ICMP errors
/// from earlier sends surface as read errors and leave the socket usable; `errors` counts
/// them, and a socket that fails 8 times in one drain is left, never spun on.
pub(super) fn read_batch(
    batch: &mut super::batch::Batch,
    fd: std::os::fd::RawFd,
    errors: &mut u32,
) -> Read {
    match batch.recv(fd) {
        Ok(n) => Read::Packets(n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Read::Done,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Read::Again,
        Err(_) => {
            *errors += 1;
            if *errors >= 8 {
                Read::Done
            } else {
                Read::Again
            }
        }
    }
}

#[cfg(test)]
mod tests;
