//! The RTP relay of a pair: packets read in batches from a leg's sockets, checked against
//! the leg's source policy, counted, recorded, smoothed, and passed on untouched (one
//! `sendmmsg` per batch) or transcoded into the other side's codec; RTCP passed to the
//! other side's peer.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::latency::Latency;
use super::rtc::send_webrtc;
use super::{read_batch, Counters, Io, Leg, Read, RtcSocket, RtcTimers, Shard, Transcoding};
use crate::media::batch::{self, Batch};
use crate::media::plane::MediaEvent;
use crate::media::record::{self, Frame, Recorder};
use crate::media::rtp::{self, is_rtcp, RtpView};
use crate::media::types::{Side, SourcePolicy};
use crate::media::{dtmf, g711, transcode};
use crate::telemetry;

/// Hands a G.711 packet's audio to the call's recorder. Other codecs are recorded from
/// their transcoded G.711 (the media plane reads no Opus it does not transcode).
fn record(rec: &mut Recorder, side: Side, pt: u8, ts: u32, arrival: Instant, payload: &[u8]) {
    let decode: fn(u8) -> i16 = match pt {
        0 => g711::ulaw_decode,
        8 => g711::alaw_decode,
        _ => return,
    };
    let mut frame = Frame {
        side: side.index() as u8,
        timestamp: ts,
        arrival,
        len: payload.len().min(record::MAX_FRAME) as u16,
        samples: [0; record::MAX_FRAME],
    };
    for (s, &c) in frame.samples.iter_mut().zip(payload) {
        *s = decode(c);
    }
    rec.push(frame);
}

impl Transcoding {
    /// The outgoing timestamp of an incoming one, on the outgoing clock.
    fn timestamp(&mut self, ts: u32) -> u32 {
        let (in0, out0) = *self.base.get_or_insert((ts, ts));
        let delta = u64::from(ts.wrapping_sub(in0));
        out0.wrapping_add((delta * self.num / self.den) as u32)
    }
}

impl Shard {
    /// Sets up or removes transcoding on both directions of the pair of leg `slot`: when
    /// both sides' codecs are known and differ, each direction gets a transcoder (built
    /// here, once); equal or unknown codecs are relayed untouched.
    pub(super) fn plan_transcoding(&mut self, slot: usize) {
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
                let (num, den) = transcode::timestamp_factor(fc, tc);
                match transcode::Transcoder::with_complexity(fc, tc, complexity) {
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

    /// Sends `packet` (RTP) to leg `slot`'s peer at `to`: from its socket, or through its
    /// WebRTC leg (which encrypts it and sends from the shared socket). Counts it.
    pub(super) fn send_to_leg(&mut self, slot: usize, packet: &[u8], to: SocketAddr) {
        Self::send_via(
            &mut self.legs,
            &self.rtc_sockets,
            &mut self.rtc_timers,
            &mut self.counters,
            (&self.latency, self.arrived),
            slot,
            packet,
            to,
        );
    }

    /// [`send_to_leg`](Self::send_to_leg) over the shard's parts, for a packet built in
    /// one of the shard's own buffers. (The shard's parts are borrowed one by one, hence
    /// the arguments.)
    #[allow(clippy::too_many_arguments)]
    fn send_via(
        legs: &mut [Option<Leg>],
        rtc_sockets: &[Option<RtcSocket>],
        rtc_timers: &mut RtcTimers,
        counters: &mut Counters,
        (latency, arrived): (&Latency, u64),
        slot: usize,
        packet: &[u8],
        to: SocketAddr,
    ) {
        let Some(leg) = legs.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let sent = match (&mut leg.io, leg.srtp.as_mut()) {
            (Io::Plain { rtp, .. }, Some(srtp)) => srtp
                .protect(packet, false)
                .is_some_and(|p| rtp.send_to(p, to).is_ok()),
            (Io::Plain { rtp, .. }, None) => rtp.send_to(packet, to).is_ok(),
            (Io::WebRtc(rtc), _) => send_webrtc(rtc, rtc_sockets, rtc_timers, slot, packet),
        };
        if sent {
            leg.stats.packets_out += 1;
            counters.tx += 1;
            latency.sent(leg, arrived);
        } else {
            leg.stats.dropped += 1;
            counters.no_destination += 1;
        }
    }

    /// Reads everything queued on one of leg `slot`'s sockets, [`BATCH`] packets per
    /// system call, and relays it; packets relayed untouched leave in one `sendmmsg` per
    /// batch from the peer leg's socket.
    ///
    /// [`BATCH`]: batch::BATCH
    pub(super) fn drain_socket(
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
        if self.legs.get(slot).is_some_and(Option::is_none) {
            if let Some((rtp, rtcp)) = self.resting.get(&slot) {
                // A socket resting between calls: what reaches it (a straggler of the
                // ended call) is dropped, so the next call starts empty.
                let fd = if rtcp_socket { rtcp } else { rtp }.as_raw_fd();
                let mut stale = 0;
                loop {
                    match read_batch(batch, fd, &mut errors) {
                        Read::Packets(n) => stale += n as u64,
                        Read::Again => {}
                        Read::Done => break,
                    }
                }
                if stale > 0 {
                    metrics::counter!(telemetry::RTP_DROPPED_TOTAL, "reason" => "stale")
                        .increment(stale);
                }
            }
            return;
        }
        loop {
            let Some(leg) = self.legs.get(slot).and_then(Option::as_ref) else {
                return;
            };
            let Io::Plain { rtp, rtcp } = &leg.io else {
                return;
            };
            let fd = if rtcp_socket { rtcp } else { rtp }.as_raw_fd();
            let n = match read_batch(batch, fd, &mut errors) {
                Read::Packets(n) => n,
                Read::Again => continue,
                Read::Done => return,
            };
            forward.clear();
            for i in 0..n {
                self.arrived = batch.arrived(i);
                if !self.unprotect(slot, batch, i) {
                    continue;
                }
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
            self.arrived = 0;
            if n < batch::BATCH {
                return;
            }
        }
    }

    /// Authenticates and decrypts packet `i` of `batch` in place when leg `slot` speaks
    /// SDES-SRTP; whether the packet goes on (plain RTP always does). A packet that fails
    /// (forged, replayed, not from the peer's key) is dropped and counted.
    fn unprotect(&mut self, slot: usize, batch: &mut Batch, i: usize) -> bool {
        let Some(leg) = self.legs[slot].as_mut() else {
            return false;
        };
        let Some(srtp) = leg.srtp.as_mut() else {
            return true;
        };
        let (buf, len) = batch.buffer(i);
        let packet = &mut buf[..len];
        let done = if is_rtcp(packet) {
            srtp.rx.unprotect_rtcp(packet)
        } else {
            srtp.rx.unprotect_rtp(packet)
        };
        match done {
            Ok(n) => {
                batch.set_len(i, n);
                true
            }
            Err(e) => {
                tracing::trace!(error = %e, "SRTP packet refused");
                leg.stats.dropped += 1;
                self.counters.foreign += 1;
                false
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
            Io::Plain { rtp, .. } => {
                if let Some(srtp) = peer_leg.srtp.as_mut() {
                    // Encrypted in place in the batch's buffers, still sent in one call. A
                    // packet with no room left for the trailer leaves empty (the peer
                    // ignores it): never in the clear.
                    for &(i, _) in forward {
                        let (buf, len) = batch.buffer(i);
                        let n = srtp.tx.protect_rtp(buf, len).unwrap_or(0);
                        batch.set_len(i, n);
                    }
                }
                rtp.as_raw_fd()
            }
            Io::WebRtc(_) => {
                // Toward WebRTC each packet is encrypted on its own.
                for &(i, to) in forward {
                    self.arrived = batch.arrived(i);
                    let (packet, _) = batch.packet(i);
                    self.send_to_leg(peer, packet, to);
                }
                return;
            }
        };
        let sent = batch.send(fd, forward) as u64;
        if sent == forward.len() as u64 {
            for &(i, _) in forward {
                self.latency.sent(peer_leg, batch.arrived(i));
            }
        }
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
        if leg.srtp.is_some() {
            // Authenticated with the peer's key: the peer, wherever it sends from now.
            leg.remote = Some(from);
            leg.latched = true;
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
    pub(super) fn relay_rtp(
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
                self.take_playout(i);
                self.end_prompt(slot, true);
            }
        }
        if let Some(p) = self.pairs.get_mut(&pair) {
            if let Some(e) = event {
                (p.events)(e);
            }
            if let Some(rec) = p.recorder.as_mut() {
                match p.record_opus[side.index()].as_mut() {
                    Some(opus) if opus.pt == pt => {
                        super::capture::record_opus(rec, opus, side, ts, now, rtp.payload())
                    }
                    // G.711 (a side whose codec changed) is recorded as is; others are not.
                    Some(_) | None => record(rec, side, pt, ts, now, rtp.payload()),
                }
            }
            if let Some(c) = p.capture.as_mut().filter(|c| c.side == side && !dtmf) {
                super::capture::capture_packet(c, pt, ts, now, rtp.payload());
            }
            if let Some(s) = p.stream.as_mut().filter(|s| s.side() == side && !dtmf) {
                s.caller_packet(pt, rtp.payload(), now);
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
            let (head, body) = self.out_buf.split_at_mut(rtp::HEADER_LEN);
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
            let _ = rtp::write_packet(head, marker, t.out_pt, out_seq, ts, out_ssrc, &[]);
            // A side that speaks Opus is recorded from its audio as transcoded to G.711.
            // (Unless it is decoded for the recording already.)
            if let Some(p) = self
                .pairs
                .get_mut(&pair)
                .filter(|p| p.record_opus[side.index()].is_none())
            {
                if let Some(rec) = p.recorder.as_mut() {
                    record(rec, side, t.out_pt, ts, now, &body[..n]);
                }
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
                &mut self.rtc_timers,
                &mut self.counters,
                (&self.latency, self.arrived),
                peer,
                &self.out_buf[..rtp::HEADER_LEN + n],
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
        let (in_codec, in_codec_pt) = (leg.codec, leg.codec_pt);
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
        if !dtmf && in_codec.is_some() && in_codec == peer_leg.codec && in_codec_pt == Some(pt) {
            // One codec both sides, under each side's own payload type.
            if let Some(out_pt) = peer_leg.codec_pt.filter(|&p| p != pt) {
                rtp.set_payload_type(out_pt);
            }
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
                dtmf::rescale_duration(rtp.payload_mut(), in_dtmf_clock, peer_leg.dtmf_clock);
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
        let Some(peer_leg) = self.legs[peer].as_mut() else {
            return;
        };
        let Some(to) = peer_leg.remote else {
            return;
        };
        // A WebRTC leg's RTCP is its own (str0m reports on each side's stream).
        let Io::Plain { rtp, rtcp } = &peer_leg.io else {
            return;
        };
        let packet = match peer_leg.srtp.as_mut() {
            Some(srtp) => match srtp.protect(packet, true) {
                Some(p) => p,
                None => return,
            },
            None => packet,
        };
        let to = if peer_leg.rtcp_mux {
            to
        } else {
            SocketAddr::new(to.ip(), to.port().wrapping_add(1))
        };
        let socket = if peer_leg.rtcp_mux { rtp } else { rtcp };
        let _ = socket.send_to(packet, to);
    }
}
