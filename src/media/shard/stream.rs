//! A media stream's audio in the shard: the customer's packets decoded into the stream's
//! format and handed to its connection, and the bot's audio played out of a buffer every
//! 20 ms, encoded to the customer's codec.
//!
//! The playout buffer starts playing once it holds `prefill` (or its oldest audio waited
//! that long), and waits again when it runs dry: the bot's jitter (bursty speech synthesis)
//! is absorbed there, and the customer hears whole 20 ms frames; silence while the bot says
//! nothing, so the customer's stream has no gaps. A clear empties it. Marks
//! sit at the position the bot put them and are reported when playout passes them.
//! Everything is sized when the stream starts; a packet allocates nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Shard;
use crate::media::batch::MAX_PACKET;
use crate::media::stream::audio::{Down2, Up2};
use crate::media::stream::{Down, Format, Frame, Tap, Up};
use crate::media::types::Side;
use crate::media::{g711, rtp, transcode};

/// Playout period.
const PERIOD: Duration = Duration::from_millis(20);
/// Periods a late shard plays at once to catch up (more are lost).
const MAX_CATCH_UP: u128 = 5;

/// How the customer's audio is decoded for the stream.
enum FromCaller {
    /// An Opus side: decoded at the stream's rate.
    Opus(Box<opus::Decoder>),
    /// A G.711 side (μ-law or A-law), at 8 kHz.
    G711,
}

/// How the bot's audio is encoded toward the customer.
enum ToCaller {
    /// An Opus side: encoded at the stream's rate.
    Opus(Box<opus::Encoder>),
    /// A G.711 side.
    G711(fn(i16) -> u8),
}

/// A stream on one side of a pair.
pub(super) struct Stream {
    side: Side,
    format: Format,
    up: tokio::sync::mpsc::Sender<Up>,
    down: std::sync::mpsc::Receiver<Down>,
    from: FromCaller,
    to: Option<ToCaller>,
    /// The customer's codec's payload type.
    pt: u8,
    up2: Up2,
    down2: Down2,
    pcm: [i16; 5760],
    /// The bot's audio, in the stream's format.
    buffer: VecDeque<u8>,
    max_buffer: usize,
    prefill: usize,
    prefill_time: Duration,
    playing: bool,
    /// When the oldest audio in a buffer that is not playing arrived.
    waiting_since: Option<Instant>,
    /// Bytes ever put in the buffer and taken from it (cleared bytes count as taken).
    written: u64,
    read: u64,
    /// Marks at a position of the byte stream.
    marks: VecDeque<(u64, u32)>,
    /// A frame of the bot's being timed through the buffer: its position and arrival (one
    /// at a time, of those reaching a buffer that holds at most the prefill and a frame).
    stamp: Option<(u64, Instant)>,
    overflow: u32,
    /// The tap's number (a stop for another is ignored).
    seq: u64,
    pub(super) next_at: Instant,
}

impl Stream {
    /// A stream of `tap` on `side`, whose leg speaks `codec` with payload type `pt`.
    pub(super) fn new(
        side: Side,
        tap: Tap,
        codec: Option<transcode::Codec>,
        pt: u8,
        complexity: u8,
    ) -> Result<Stream, String> {
        let rate = tap.format.rate();
        let (from, to) = match codec {
            Some(transcode::Codec::Opus) => {
                let dec = opus::Decoder::new(rate, opus::Channels::Mono)
                    .map_err(|e| format!("opus decoder: {e}"))?;
                let mut enc =
                    opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip)
                        .map_err(|e| format!("opus encoder: {e}"))?;
                let bitrate = if rate > 8000 { 32_000 } else { 24_000 };
                let _ = enc.set_bitrate(opus::Bitrate::Bits(bitrate));
                let _ = enc.set_complexity(i32::from(complexity.min(10)));
                (
                    FromCaller::Opus(Box::new(dec)),
                    Some(ToCaller::Opus(Box::new(enc))),
                )
            }
            _ => (
                FromCaller::G711,
                match pt {
                    0 => Some(ToCaller::G711(g711::ulaw_encode)),
                    8 => Some(ToCaller::G711(g711::alaw_encode)),
                    _ => None,
                },
            ),
        };
        let per_ms = tap.format.bytes_per_ms();
        let max_buffer = tap.max_buffer_ms as usize * per_ms;
        Ok(Stream {
            side,
            format: tap.format,
            up: tap.up,
            down: tap.down,
            from,
            to,
            pt,
            up2: Up2::default(),
            down2: Down2::default(),
            pcm: [0; 5760],
            // Room for a second to start with; it grows to its bound if the bot bursts.
            buffer: VecDeque::with_capacity(max_buffer.min(per_ms * 1000)),
            max_buffer,
            prefill: tap.prefill_ms as usize * per_ms,
            prefill_time: Duration::from_millis(u64::from(tap.prefill_ms)),
            playing: false,
            waiting_since: None,
            written: 0,
            read: 0,
            marks: VecDeque::new(),
            stamp: None,
            overflow: 0,
            seq: tap.seq,
            next_at: Instant::now() + PERIOD,
        })
    }

    pub(super) fn side(&self) -> Side {
        self.side
    }

    /// One packet of the customer's audio (`pt`, its payload): decoded, converted, handed
    /// to the connection in 20 ms frames (dropped when its queue is full).
    pub(super) fn caller_packet(&mut self, pt: u8, payload: &[u8], arrived: Instant) {
        if pt != self.pt {
            return;
        }
        let n = match &mut self.from {
            FromCaller::Opus(dec) => match dec.decode(payload, &mut self.pcm, false) {
                Ok(n) => n,
                Err(_) => return,
            },
            FromCaller::G711 => {
                let decode = if pt == 8 {
                    g711::alaw_decode
                } else {
                    g711::ulaw_decode
                };
                let narrow = payload.len().min(960);
                let mut tmp = [0i16; 960];
                for (s, &b) in tmp.iter_mut().zip(&payload[..narrow]) {
                    *s = decode(b);
                }
                match self.format {
                    Format::Twilio => {
                        self.pcm[..narrow].copy_from_slice(&tmp[..narrow]);
                        narrow
                    }
                    Format::L16 => self.up2.process(&tmp[..narrow], &mut self.pcm),
                }
            }
        };
        let per_frame = self.format.frame_bytes() / self.format.sample_bytes();
        for chunk in self.pcm[..n.min(self.pcm.len())].chunks(per_frame) {
            let mut frame = Frame {
                len: 0,
                data: [0; crate::media::stream::FRAME_BYTES],
                arrived,
            };
            let len = match self.format {
                Format::Twilio => {
                    for (o, &s) in frame.data.iter_mut().zip(chunk) {
                        *o = g711::ulaw_encode(s);
                    }
                    chunk.len()
                }
                Format::L16 => {
                    for (o, &s) in frame.data.chunks_exact_mut(2).zip(chunk) {
                        o.copy_from_slice(&s.to_le_bytes());
                    }
                    chunk.len() * 2
                }
            };
            frame.len = len as u16;
            if self.up.try_send(Up::Audio(frame)).is_err() {
                // The connection is behind (or gone): this frame is lost, the call is not.
                break;
            }
        }
    }

    /// Takes what the connection sent: audio into the buffer (within its bound), marks
    /// at the buffer's end, clears.
    fn drain(&mut self, now: Instant) {
        while let Ok(d) = self.down.try_recv() {
            match d {
                Down::Audio(f) => {
                    let bytes = f.bytes();
                    let room = self.max_buffer.saturating_sub(self.buffer.len());
                    let take = bytes.len().min(room);
                    if take < bytes.len() {
                        self.overflow += (bytes.len() - take) as u32;
                    }
                    // One frame at a time is timed through the buffer, among those that
                    // arrive when it holds no more than the prefill and a frame: what the
                    // switch adds, not the queue of a bot sending ahead (or in bursts).
                    let frame = self.format.frame_bytes();
                    if self.stamp.is_none() && take > 0 && self.buffer.len() <= self.prefill + frame
                    {
                        self.stamp = Some((self.written, f.arrived));
                    }
                    if !self.playing && self.waiting_since.is_none() && take > 0 {
                        self.waiting_since = Some(f.arrived.min(now));
                    }
                    self.buffer.extend(&bytes[..take]);
                    self.written += take as u64;
                }
                Down::Mark(id) => self.marks.push_back((self.written, id)),
                Down::Clear => {
                    self.buffer.clear();
                    self.read = self.written;
                    self.playing = false;
                    self.waiting_since = None;
                    self.stamp = None;
                }
            }
        }
        if self.overflow > 0 && self.up.try_send(Up::Overflow(self.overflow)).is_ok() {
            self.overflow = 0;
        }
    }

    /// Marks playout has passed: the last of them reported (the connection reports all
    /// before it).
    fn passed_marks(&mut self) {
        let mut last = None;
        while let Some(&(at, id)) = self.marks.front() {
            if at > self.read {
                break;
            }
            last = Some(id);
            self.marks.pop_front();
        }
        if let Some(id) = last {
            if self.up.try_send(Up::Played(id)).is_err() {
                // Tried again at the next period.
                self.marks.push_front((self.read, id));
            }
        }
    }

    /// The next 20 ms toward the customer, encoded into `out`: the bot's audio, or
    /// silence while there is none (the customer's stream never stops while the bot is
    /// quiet, so their jitter buffer sees no gap); its length, `None` when the side has no
    /// codec the switch speaks.
    fn next_payload(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        let mut pcm = [0i16; 320];
        if self.fill(now, &mut pcm) {
            let stamp_due = self.stamp.is_some_and(|(at, _)| at < self.read);
            if stamp_due {
                if let Some((_, arrived)) = self.stamp.take() {
                    let _ = self
                        .up
                        .try_send(Up::Latency(now.saturating_duration_since(arrived)));
                }
            }
        }
        self.encode(&pcm, out)
    }

    /// The next 20 ms of the buffer into `pcm`, when it plays now (false: silence, while
    /// the prefill fills or the bot says nothing).
    fn fill(&mut self, now: Instant, pcm: &mut [i16; 320]) -> bool {
        let frame = self.format.frame_bytes();
        if !self.playing {
            let waited = self
                .waiting_since
                .is_some_and(|since| now.duration_since(since) >= self.prefill_time);
            if self.buffer.is_empty() || (self.buffer.len() < self.prefill && !waited) {
                return false;
            }
            self.playing = true;
            self.waiting_since = None;
        }
        if self.buffer.is_empty() {
            // Ran dry: wait for the prefill again.
            self.playing = false;
            return false;
        }
        let take = frame.min(self.buffer.len());
        let samples = take / self.format.sample_bytes();
        match self.format {
            Format::Twilio => {
                for (s, b) in pcm.iter_mut().zip(self.buffer.drain(..take)) {
                    *s = g711::ulaw_decode(b);
                }
            }
            Format::L16 => {
                let mut drained = self.buffer.drain(..take);
                for s in pcm.iter_mut().take(samples) {
                    let lo = drained.next().unwrap_or(0);
                    let hi = drained.next().unwrap_or(0);
                    *s = i16::from_le_bytes([lo, hi]);
                }
            }
        }
        self.read += take as u64;
        true
    }

    /// 20 ms of `pcm` (the stream's rate) in the customer's codec, into `out`.
    fn encode(&mut self, pcm: &[i16; 320], out: &mut [u8]) -> Option<usize> {
        let frame = self.format.frame_bytes();
        // A short last piece is padded with silence to a whole frame.
        let full = frame / self.format.sample_bytes();
        match self.to.as_mut()? {
            ToCaller::Opus(enc) => enc.encode(&pcm[..full], out).ok(),
            ToCaller::G711(encode) => {
                let encode = *encode;
                let narrow = match self.format {
                    Format::Twilio => {
                        for (o, &s) in out.iter_mut().zip(&pcm[..full]) {
                            *o = encode(s);
                        }
                        full
                    }
                    Format::L16 => {
                        let mut n8 = [0i16; 160];
                        let n = self.down2.process(&pcm[..full], &mut n8);
                        for (o, &s) in out.iter_mut().zip(&n8[..n]) {
                            *o = encode(s);
                        }
                        n
                    }
                };
                Some(narrow)
            }
        }
    }
}

/// The first point of the shard's 20 ms grid (from `epoch`) after `now`.
fn next_period(epoch: Instant, now: Instant) -> Instant {
    let period = PERIOD.as_nanos();
    let k = now.saturating_duration_since(epoch).as_nanos() / period + 1;
    epoch + Duration::from_nanos((k * period).min(u128::from(u64::MAX)) as u64)
}

impl Shard {
    /// Starts a stream on `side` of pair `id` (replacing one running); what the other
    /// side sends toward that side is held back while it runs.
    pub(super) fn start_stream(&mut self, id: u64, side: Side, tap: Tap) {
        let complexity = self
            .opus_complexity
            .load(std::sync::atomic::Ordering::Relaxed);
        let Some(pair) = self.pairs.get_mut(&id) else {
            return;
        };
        let slot = pair.legs[side.index()];
        let Some(leg) = self.legs[slot].as_mut() else {
            return;
        };
        let pt = leg.codec_pt.unwrap_or(0);
        match Stream::new(side, tap, leg.codec, pt, complexity) {
            Ok(mut stream) => {
                stream.next_at = next_period(self.stream_epoch, Instant::now());
                leg.playing = true;
                let stream_next = stream.next_at;
                pair.stream = Some(Box::new(stream));
                if !self.streams.contains(&id) {
                    self.streams.push(id);
                }
                self.stream_due = self.stream_due.min(stream_next);
            }
            Err(e) => tracing::warn!(error = %e, "stream not started"),
        }
    }

    /// Ends stream `seq` of pair `id` (a later stream is left alone): the side hears the
    /// other again.
    pub(super) fn stop_stream(&mut self, id: u64, seq: u64) {
        let Some(pair) = self.pairs.get_mut(&id) else {
            return;
        };
        if pair.stream.as_ref().is_none_or(|s| s.seq != seq) {
            return;
        }
        self.streams.retain(|s| *s != id);
        if let Some(stream) = pair.stream.take() {
            let slot = pair.legs[stream.side().index()];
            if let Some(leg) = self.legs[slot].as_mut() {
                leg.playing = false;
            }
        }
    }

    /// Plays what is due of every stream's buffer.
    pub(super) fn run_streams(&mut self, now: Instant) {
        let mut due = now + Duration::from_secs(3600);
        let mut payload = [0u8; MAX_PACKET];
        for i in 0..self.streams.len() {
            let id = self.streams[i];
            let Some(stream) = self.pairs.get(&id).and_then(|p| p.stream.as_ref()) else {
                continue;
            };
            if stream.next_at > now {
                due = due.min(stream.next_at);
                continue;
            }
            // Every period gone by plays its frame, so the customer hears the bot in real
            // time even when the shard was late (a late shard would otherwise add 20 ms to
            // the stream's delay for good with each period it missed); past a few, the
            // periods are lost. Every stream of the shard keeps to one 20 ms grid, so they
            // share the shard's wake-ups.
            let late = now.saturating_duration_since(stream.next_at);
            let periods = 1 + (late.as_nanos() / PERIOD.as_nanos()).min(MAX_CATCH_UP - 1) as usize;
            for _ in 0..periods {
                self.play_stream_period(id, now, &mut payload);
            }
            if let Some(stream) = self.pairs.get_mut(&id).and_then(|p| p.stream.as_mut()) {
                stream.next_at = next_period(self.stream_epoch, now);
                due = due.min(stream.next_at);
            }
        }
        self.stream_due = due;
    }

    /// One period of pair `id`'s stream: what the bot sent taken in, 20 ms played toward
    /// the customer (the bot's audio, or silence), marks passed reported.
    fn play_stream_period(&mut self, id: u64, now: Instant, payload: &mut [u8; MAX_PACKET]) {
        let Some(pair) = self.pairs.get_mut(&id) else {
            return;
        };
        let Some(stream) = pair.stream.as_mut() else {
            return;
        };
        stream.drain(now);
        let encoded = stream.next_payload(now, &mut payload[rtp::HEADER_LEN..]);
        stream.passed_marks();
        let (side, pt, opus) = (
            stream.side,
            stream.pt,
            matches!(stream.to, Some(ToCaller::Opus(_))),
        );
        let slot = pair.legs[side.index()];
        let Some(n) = encoded else {
            return;
        };
        let Some((to, peer)) = self.legs[slot]
            .as_ref()
            .and_then(|l| Some((l.remote?, l.peer)))
        else {
            return;
        };
        let Some(source) = self.legs[peer].as_mut() else {
            return;
        };
        let samples = if opus { 960 } else { 160 };
        let (seq, ts, ssrc) = source.smoother.inject_media(samples);
        let (head, _) = payload.split_at_mut(rtp::HEADER_LEN);
        if rtp::write_packet(head, false, pt, seq, ts, ssrc, &[]).is_none() {
            return;
        }
        self.send_to_leg(slot, &payload[..rtp::HEADER_LEN + n], to);
    }
}
