//! WebRTC in the shard: the sockets a shard's WebRTC legs share, datagrams handed to the
//! leg whose peer sent them (an ICE check from a new address offered to the socket's
//! legs), the legs' events and timers, and RTP sent out through a leg's SRTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Token};

use super::{
    read_batch, Io, Leg, NewWebRtcPair, Pair, Read, RtcIo, RtcSocket, RtcTimers, Shard, RTC_TOKENS,
};
use crate::media::batch::{self, Batch, MAX_PACKET};
use crate::media::plane::MediaEvent;
use crate::media::rtp::{self, RtpView};
use crate::media::types::Side;
use crate::media::webrtc::WebRtcLeg;
use crate::media::webrtc::{self, LegOutput};
use crate::telemetry;

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

/// A STUN message (RFC 5389 §6: top two bits zero, the magic cookie at octets 4-7).
pub(super) fn is_stun(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] < 4 && data[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// Sends whatever WebRTC leg `slot` has to send from its shared socket, and notes its next
/// timer.
fn rtc_flush(rtc: &mut RtcIo, sockets: &[Option<RtcSocket>], timers: &mut RtcTimers, slot: usize) {
    let Some(socket) = sockets.get(rtc.socket).and_then(Option::as_ref) else {
        return;
    };
    let mut send = |to: SocketAddr, data: &[u8]| {
        let _ = socket.socket.send_to(data, to);
    };
    if let Err(e) = rtc.leg.transmit_into(&mut send) {
        tracing::debug!(error = %e, "WebRTC leg output failed");
    }
    timers.schedule(slot, rtc);
}

/// Sends one RTP packet through a WebRTC leg; false when it cannot go (not connected yet,
/// not an RTP packet).
pub(super) fn send_webrtc(
    rtc: &mut RtcIo,
    sockets: &[Option<RtcSocket>],
    timers: &mut RtcTimers,
    slot: usize,
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
    rtc_flush(rtc, sockets, timers, slot);
    sent
}

impl Shard {
    pub(super) fn add_rtc_socket(&mut self, index: usize, socket: std::net::UdpSocket) {
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

    pub(super) fn add_webrtc(&mut self, pair: NewWebRtcPair) {
        let NewWebRtcPair {
            id,
            leg,
            socket,
            remotes,
            b,
            policy,
            timeout,
            events,
        } = pair;
        let b = match b.map(|sockets| self.leg_io(sockets)) {
            Some(Some(b)) => Some(b),
            Some(None) => {
                // Only when the shard was started again between the lease and now: its
                // calls hear that it failed.
                tracing::error!(
                    pair = id,
                    "media pair not added: its resting sockets are gone"
                );
                events(MediaEvent::ShardFailed);
                return;
            }
            None => None,
        };
        let a = self.slot();
        let b_slot = match b {
            Some((slot, io)) => {
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
                scheduled: None,
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
            rtc_flush(rtc, &self.rtc_sockets, &mut self.rtc_timers, a);
        }
        self.rtc_timers.due = Instant::now();
        self.pairs.insert(
            id,
            Pair {
                legs: [a, b_slot],
                parked: None,
                events,
                recorder: None,
                record_opus: [None, None],
                capture: None,
                stream: None,
            },
        );
        let legs = if b_slot == a { 1.0 } else { 2.0 };
        metrics::gauge!(telemetry::MEDIA_LEGS_ACTIVE).increment(legs);
        if b_slot != a {
            self.plan_transcoding(a);
        }
    }

    /// Puts `leg` (our WebRTC offer, awaiting its answer) on shared socket `socket` in
    /// place of pair `id`'s side B. A plain side B is parked, to come back when the WebRTC
    /// leg goes; an earlier WebRTC side B (an agent who did not answer) is removed.
    pub(super) fn webrtc_b(&mut self, id: u64, leg: Box<WebRtcLeg>, socket: usize) {
        let Some(pair) = self.pairs.get(&id) else {
            return;
        };
        let [a, b] = pair.legs;
        if a == b {
            tracing::warn!(pair = id, "an echo pair has no side B to replace");
            return;
        }
        let (policy, timeout) = match self.legs[a].as_ref() {
            Some(l) => (l.policy, l.timeout),
            None => return,
        };
        let b_is_rtc = matches!(self.legs[b].as_ref().map(|l| &l.io), Some(Io::WebRtc(_)));
        if b_is_rtc {
            self.free_leg(b);
        } else if let Some(p) = self.pairs.get_mut(&id) {
            p.parked = Some(b);
            metrics::gauge!(telemetry::MEDIA_LEGS_ACTIVE).increment(1.0);
            // Parked: it takes nothing (no source is accepted), expects nothing (no media
            // timeout) and transcodes nothing, until it is side B again.
            if let Some(leg) = self.legs[b].as_mut() {
                leg.remote = None;
                leg.latched = true;
                leg.sends = false;
                if leg.transcode.take().is_some() {
                    metrics::gauge!(telemetry::TRANSCODING_LEGS_ACTIVE).decrement(1.0);
                }
            }
        }
        let slot = self.slot();
        // Our offer waits for its answer; a leg that answered an offer is ready.
        let ready = !leg.awaiting_answer();
        let mut new = Leg::new(
            Io::WebRtc(Box::new(RtcIo {
                socket,
                remotes: Vec::new(),
                seq: None,
                ready,
                scheduled: None,
                leg,
            })),
            id,
            a,
            Side::B,
            policy,
            timeout,
        );
        new.set_webrtc_remote();
        new.sends = ready;
        self.legs[slot] = Some(new);
        self.rtc_slots.push(slot);
        if let Some(l) = self.legs[a].as_mut() {
            l.peer = slot;
        }
        if let Some(p) = self.pairs.get_mut(&id) {
            p.legs[1] = slot;
        }
        if let Some(Io::WebRtc(rtc)) = self.legs[slot].as_mut().map(|l| &mut l.io) {
            rtc_flush(rtc, &self.rtc_sockets, &mut self.rtc_timers, slot);
        }
        self.rtc_timers.due = Instant::now();
        self.plan_transcoding(a);
    }

    /// Removes pair `id`'s WebRTC side B; the parked plain leg is side B again.
    pub(super) fn drop_webrtc_b(&mut self, id: u64) {
        let Some(pair) = self.pairs.get(&id) else {
            return;
        };
        let ([a, b], Some(parked)) = (pair.legs, pair.parked) else {
            return;
        };
        self.free_leg(b);
        metrics::gauge!(telemetry::MEDIA_LEGS_ACTIVE).decrement(1.0);
        if let Some(p) = self.pairs.get_mut(&id) {
            p.legs[1] = parked;
            p.parked = None;
        }
        if let Some(l) = self.legs[a].as_mut() {
            l.peer = parked;
        }
        // Side B again: it takes its peer's packets once its SDP names (or latches) one.
        if let Some(l) = self.legs[parked].as_mut() {
            l.latched = false;
            l.last_rx = Instant::now();
        }
        self.plan_transcoding(a);
    }

    /// Applies the peer's answer to the WebRTC offer of pair `id`'s `side`.
    pub(super) fn webrtc_answer(&mut self, id: u64, side: Side, sdp: &str) -> Result<(), String> {
        let slot = self
            .pairs
            .get(&id)
            .map(|p| p.legs[side.index()])
            .ok_or("no such media pair")?;
        let leg = self.legs[slot].as_mut().ok_or("no such media leg")?;
        let Io::WebRtc(rtc) = &mut leg.io else {
            return Err(format!("side {side:?} is not a WebRTC leg"));
        };
        rtc.leg.accept_answer(sdp).map_err(|e| e.to_string())?;
        let v4 = rtc.leg.local().is_ipv4();
        let remotes = webrtc::PeerDescription::parse(sdp)
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
        rtc_flush(rtc, &self.rtc_sockets, &mut self.rtc_timers, slot);
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
    pub(super) fn drain_rtc_socket(&mut self, index: usize, batch: &mut Batch) {
        use std::os::fd::AsRawFd;
        let mut errors = 0;
        loop {
            let Some(shared) = self.rtc_sockets.get(index).and_then(Option::as_ref) else {
                return;
            };
            let n = match read_batch(batch, shared.socket.as_raw_fd(), &mut errors) {
                Read::Packets(n) => n,
                Read::Again => continue,
                Read::Done => return,
            };
            let now = Instant::now();
            for i in 0..n {
                self.arrived = batch.arrived(i);
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
            self.arrived = 0;
            if n < batch::BATCH {
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
            self.rtc_timers.schedule(slot, rtc);
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
            let from = leg.remote.unwrap_or(batch::UNSPECIFIED);
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
                    let Some(n) =
                        rtp::write_packet(&mut buf, marker, pt, seq, timestamp, ssrc, &payload)
                    else {
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
    pub(super) fn rtc_timers(&mut self, now: Instant) {
        self.rtc_timers.floor = now + Duration::from_millis(1);
        while let Some((at, slot)) = self.rtc_timers.pop_due(now) {
            let Some(Io::WebRtc(rtc)) = self.legs[slot].as_mut().map(|l| &mut l.io) else {
                continue; // the leg is gone
            };
            if rtc.scheduled != Some(at) {
                continue; // an entry the leg no longer has (an earlier one replaced it)
            }
            rtc.scheduled = None;
            if rtc.leg.timeout() <= now {
                if let Err(e) = rtc.leg.handle_timeout(now) {
                    tracing::debug!(error = %e, "WebRTC timer failed");
                }
            }
            rtc_flush(rtc, &self.rtc_sockets, &mut self.rtc_timers, slot);
            self.rtc_events(slot);
        }
        self.rtc_timers.settle(now);
    }
}
