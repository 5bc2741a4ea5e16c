//! The shard's event loop: one thread waiting on its sockets, its command queue and its
//! timers; the commands that add, change and remove pairs; the tick that raises media
//! timeouts and publishes the shard's counters.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Token};

use super::{Command, DtmfOut, Io, Leg, Pair, PlayOut, Shard, RTC_TOKENS, TICK, WAKER};
use crate::media::batch::{self, Batch};
use crate::media::plane::{EventSink, LegStats, MediaEvent};
use crate::media::types::{Side, SourcePolicy};
use crate::telemetry;

impl Shard {
    pub(crate) fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut batch = Batch::new();
        let mut forward = Vec::with_capacity(batch::BATCH);
        let mut next_tick = Instant::now() + TICK;
        // A shard started again after a panic may find commands whose wake-up it lost.
        if !self.run_commands() {
            self.close_all();
            return;
        }
        loop {
            let due = self
                .dtmf_out
                .iter()
                .map(|d| d.next_at)
                .chain(self.playing.iter().map(|p| p.next_at))
                .min()
                .map_or(next_tick, |d| d.min(next_tick))
                .min(self.rtc_timers.due)
                .min(self.stream_due);
            let wait = due.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(error = %e, "media shard poll failed");
                    return;
                }
            }
            // Commands first, whatever woke the shard: some are queued without a wake-up
            // (peers' addresses, a pair's addition on resting sockets) and wait for the next
            // one (a packet, another command, the tick).
            if !self.run_commands() {
                self.close_all();
                return;
            }
            for event in events.iter() {
                let token = event.token();
                if token == WAKER {
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
            if now >= self.rtc_timers.due {
                self.rtc_timers(now);
            }
            if !self.dtmf_out.is_empty() {
                self.send_dtmf(now);
            }
            if !self.playing.is_empty() {
                self.send_prompts(now);
            }
            if now >= self.stream_due {
                self.run_streams(now);
            }
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick(now);
            }
        }
    }

    /// Runs queued commands; false on Stop.
    fn run_commands(&mut self) -> bool {
        // Cleared before draining: a command queued from here on wakes the shard again.
        self.commands
            .notified
            .store(false, std::sync::atomic::Ordering::SeqCst);
        while let Ok(command) = self.commands.rx.try_recv() {
            match command {
                Command::Add {
                    id,
                    sockets,
                    policy,
                    timeout,
                    events,
                } => self.add(id, sockets, policy, timeout, events),
                Command::RtcSocket { index, socket } => self.add_rtc_socket(index, socket),
                Command::AddWebRtc(pair) => self.add_webrtc(pair),
                Command::WebRtcAnswer {
                    id,
                    side,
                    sdp,
                    reply,
                } => {
                    let _ = reply.try_send(self.webrtc_answer(id, side, &sdp));
                }
                Command::WebRtcB { id, leg, socket } => self.webrtc_b(id, leg, socket),
                Command::DropWebRtcB { id } => self.drop_webrtc_b(id),
                Command::Remote { id, remotes } => {
                    for (i, remote) in remotes.into_iter().enumerate() {
                        if let Some(remote) = remote {
                            self.set_remote(id, i, remote);
                        }
                    }
                }
                Command::Srtp { id, side, srtp } => {
                    if let Some(slot) = self.pairs.get(&id).map(|p| p.legs[side.index()]) {
                        if let Some(leg) = self.legs[slot]
                            .as_mut()
                            .filter(|l| matches!(l.io, Io::Plain { .. }))
                        {
                            leg.srtp = Some(srtp);
                        }
                    }
                }
                Command::Remove { id, reply } => {
                    let keep = reply.is_some();
                    let removed = self.remove(id, keep);
                    if let Some(reply) = reply {
                        // A pair the shard does not have (its addition failed) is answered
                        // too, so nobody waits for it.
                        let removed = removed.unwrap_or_else(|| super::Removed {
                            stats: [LegStats::default(); 2],
                            resting: [None, None],
                            epoch: self.epoch(),
                        });
                        if let Err(e) = reply.try_send(removed) {
                            // Nobody took them (the caller gave up waiting): closed.
                            let (std::sync::mpsc::TrySendError::Full(removed)
                            | std::sync::mpsc::TrySendError::Disconnected(removed)) = e;
                            for slot in removed.resting.into_iter().flatten() {
                                if self.resting.remove(&slot).is_some() {
                                    self.free.push(slot);
                                }
                            }
                        }
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
                    let Some((slot, events)) = self
                        .pairs
                        .get(&id)
                        .map(|p| (p.legs[side.index()], p.events.clone()))
                    else {
                        continue;
                    };
                    // One prompt at a time toward a side: a new one replaces the old.
                    self.stop_playing(slot);
                    let complexity = self
                        .opus_complexity
                        .load(std::sync::atomic::Ordering::Relaxed);
                    let Some(leg) = self.legs[slot].as_mut() else {
                        continue;
                    };
                    let Some((encode, opus, pt)) = super::playout::encoder(leg, complexity) else {
                        events(MediaEvent::PromptDone {
                            side,
                            barged_in: false,
                            played: false,
                        });
                        continue;
                    };
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
                        opus,
                    });
                }
                Command::Capture {
                    id,
                    side,
                    recorder,
                    silence,
                } => self.capture(id, side, recorder, silence),
                Command::Record { id, recorder } => self.record(id, recorder),
                Command::StopCapture { id } => {
                    // Dropping the capture closes its recorder, which finalises the file.
                    if let Some(pair) = self.pairs.get_mut(&id) {
                        pair.capture = None;
                    }
                }
                Command::Ringback { id, side, on } => self.ringback(id, side, on),
                Command::Stream { id, side, tap } => self.start_stream(id, side, *tap),
                Command::StopStream { id, seq } => self.stop_stream(id, seq),
                Command::Evict(r) => {
                    if r.epoch == self.epoch() && self.resting.remove(&r.slot).is_some() {
                        // Closing the sockets takes them off the poller.
                        self.free.push(r.slot);
                    }
                }
                #[cfg(any(test, feature = "fault-injection"))]
                Command::Panic => panic!("media shard: panic injected by a test"),
                Command::Stop => return false,
            }
        }
        true
    }

    /// Where side `side` (0: A, 1: B) of pair `id` sends and what it hears, from its SDP.
    fn set_remote(&mut self, id: u64, side: usize, remote: crate::media::types::Remote) {
        let Some(slot) = self.pairs.get(&id).map(|p| p.legs[side]) else {
            return;
        };
        let Some(leg) = self.legs[slot].as_mut() else {
            return;
        };
        if matches!(leg.io, Io::WebRtc(_)) {
            // A WebRTC leg's media follows its own negotiation.
            return;
        }
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
        self.plan_transcoding(slot);
    }

    fn add(
        &mut self,
        id: u64,
        sockets: [super::LegSockets; 2],
        policy: SourcePolicy,
        timeout: Duration,
        events: EventSink,
    ) {
        let [a, b] = sockets;
        let ios = [self.leg_io(a), self.leg_io(b)];
        let [Some((slot_a, io_a)), Some((slot_b, io_b))] = ios else {
            // Only when the shard was started again between the lease and now: its calls
            // hear that it failed.
            tracing::error!(
                pair = id,
                "media pair not added: its resting sockets are gone"
            );
            for (slot, io) in ios.into_iter().flatten() {
                drop(io);
                self.free.push(slot);
            }
            events(MediaEvent::ShardFailed);
            return;
        };
        let slots = [slot_a, slot_b];
        for (i, io) in [io_a, io_b].into_iter().enumerate() {
            let side = if i == 0 { Side::A } else { Side::B };
            self.legs[slots[i]] = Some(Leg::new(io, id, slots[1 - i], side, policy, timeout));
        }
        self.pairs.insert(
            id,
            Pair {
                legs: slots,
                parked: None,
                events,
                recorder: None,
                record_opus: [None, None],
                capture: None,
                stream: None,
            },
        );
        metrics::gauge!(telemetry::MEDIA_LEGS_ACTIVE).increment(2.0);
    }

    /// A plain leg's sockets and their slot: sockets resting here keep theirs (and their
    /// poller tokens), others get one and are registered. `None`: resting sockets this
    /// shard no longer holds (it was started again since).
    pub(super) fn leg_io(&mut self, sockets: super::LegSockets) -> Option<(usize, Io)> {
        match sockets {
            super::LegSockets::Bound(rtp, rtcp) => {
                let slot = self.slot();
                Some((slot, self.plain_io(slot, rtp, rtcp)))
            }
            super::LegSockets::Resting(r) if r.epoch == self.epoch() => {
                let (rtp, rtcp) = self.resting.remove(&r.slot)?;
                Some((r.slot, Io::Plain { rtp, rtcp }))
            }
            super::LegSockets::Resting(_) => None,
        }
    }

    /// Registers a plain leg's sockets under slot `slot`'s tokens.
    pub(super) fn plain_io(
        &mut self,
        slot: usize,
        rtp: std::net::UdpSocket,
        rtcp: std::net::UdpSocket,
    ) -> Io {
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

    pub(super) fn slot(&mut self) -> usize {
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

    /// Takes a pair out. With `keep`, its two sides' plain sockets (when they are still the
    /// pair's own: no WebRTC leg standing in for side B) rest in the shard, bound and
    /// registered, rather than being closed.
    fn remove(&mut self, id: u64, keep: bool) -> Option<super::Removed> {
        self.streams.retain(|s| *s != id);
        let pair = self.pairs.remove(&id)?;
        let stats = self.pair_stats(pair.legs);
        let mut resting = [None, None];
        let shared = pair.legs[1] == pair.legs[0];
        let mut distinct = 0;
        for (i, &slot) in pair.legs.iter().enumerate() {
            if i == 1 && shared {
                continue;
            }
            let own = i == 0 || pair.parked.is_none();
            resting[i] = self.release_leg(slot, keep && own);
            distinct += 1;
        }
        if let Some(slot) = pair.parked {
            self.free_leg(slot);
            distinct += 1;
        }
        metrics::gauge!(telemetry::MEDIA_LEGS_ACTIVE).decrement(f64::from(distinct));
        Some(super::Removed {
            stats,
            resting,
            epoch: self.epoch(),
        })
    }

    /// The shard's life (see [`Inbox::epoch`](super::Inbox)).
    fn epoch(&self) -> u64 {
        self.commands
            .epoch
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the leg in `slot` out of the shard: its sockets deregistered (a plain leg's
    /// close when dropped), a WebRTC leg's peers unrouted from its shared socket.
    pub(super) fn free_leg(&mut self, slot: usize) {
        let _ = self.release_leg(slot, false);
    }

    /// As [`free_leg`](Self::free_leg); with `keep`, a plain leg's sockets rest in its
    /// slot, still bound and registered, instead of being closed: the slot is returned.
    fn release_leg(&mut self, slot: usize, keep: bool) -> Option<usize> {
        // Whatever plays toward this leg's peer ends with it: a looping ringback would
        // otherwise outlive the call and play into the next leg given this slot.
        self.stop_playing(slot);
        if let Some(mut leg) = self.legs[slot].take() {
            if leg.transcode.is_some() {
                metrics::gauge!(telemetry::TRANSCODING_LEGS_ACTIVE).decrement(1.0);
            }
            match &mut leg.io {
                Io::Plain { .. } if keep => {}
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
            if let (true, Io::Plain { rtp, rtcp }) = (keep, leg.io) {
                self.resting.insert(slot, (rtp, rtcp));
                return Some(slot);
            }
        }
        self.free.push(slot);
        None
    }

    fn close_all(&mut self) {
        let ids: Vec<u64> = self.pairs.keys().copied().collect();
        for id in ids {
            self.remove(id, false);
        }
        self.publish();
    }

    fn tick(&mut self, now: Instant) {
        for pair in self.pairs.values_mut() {
            if let Some(event) = pair
                .capture
                .as_mut()
                .and_then(|c| super::capture::silence_due(c, now))
            {
                (pair.events)(event);
            }
        }
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
