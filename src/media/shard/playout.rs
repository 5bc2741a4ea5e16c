//! Media the switch inserts into a stream: prompts and ringback played toward a side (in
//! its G.711 codec, or transcoded to its Opus), and DTMF digits sent as RFC 4733
//! telephone-events, each in the stream that side already receives.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{PlayOut, Shard};
use crate::media::batch::MAX_PACKET;
use crate::media::plane::MediaEvent;
use crate::media::types::Side;
use crate::media::{dtmf, g711, prompt, rtp, transcode};

/// How often a telephone-event in progress is refreshed (RFC 4733 §2.5.1.2: 50 ms).
const DTMF_UPDATE: Duration = Duration::from_millis(50);

impl Shard {
    /// Sends the prompt packets that are due (20 ms of G.711 each) and ends prompts that
    /// are over.
    pub(super) fn send_prompts(&mut self, now: Instant) {
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
                self.take_playout(i);
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
                    let (head, body) = packet.split_at_mut(rtp::HEADER_LEN);
                    match opus.transcode(&payload, body) {
                        Ok(n) => {
                            let (seq, ts, ssrc) = source.smoother.inject_media(960);
                            rtp::write_packet(head, marker, pt, seq, ts, ssrc, &[]).map(|h| h + n)
                        }
                        Err(_) => None,
                    }
                }
                None => {
                    let (seq, ts, ssrc) = source.smoother.inject_media(160);
                    rtp::write_packet(&mut packet, marker, pt, seq, ts, ssrc, &payload)
                }
            };
            if let Some(n) = written {
                self.send_inserted(slot, &packet[..n], to);
            }
            i += 1;
        }
    }

    /// Removes the `i`th playout; its Opus encoder goes back to its leg, so what the switch
    /// inserts next toward that peer continues the same encoded stream (a decoder fed a
    /// fresh encoder's frames mid-stream can go unstable).
    pub(super) fn take_playout(&mut self, i: usize) {
        let p = self.playing.swap_remove(i);
        if let (Some(opus), Some(leg)) = (p.opus, self.legs[p.slot].as_mut()) {
            leg.inserted_opus = Some(opus);
        }
    }

    /// Stops whatever plays toward the peer of leg `slot` (no event).
    pub(super) fn stop_playing(&mut self, slot: usize) {
        let mut i = 0;
        while i < self.playing.len() {
            if self.playing[i].slot == slot {
                self.take_playout(i);
            } else {
                i += 1;
            }
        }
    }

    /// A prompt toward the peer of leg `slot` is over: relaying resumes, the call is told.
    pub(super) fn end_prompt(&mut self, slot: usize, barged_in: bool) {
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
    pub(super) fn send_dtmf(&mut self, now: Instant) {
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
        let payload = dtmf::EventPayload {
            event,
            end,
            volume: 10,
            duration: duration.min(u32::from(u16::MAX)) as u16,
        }
        .to_bytes();
        let mut packet = [0u8; 16];
        let Some(n) = rtp::write_packet(&mut packet, marker, pt, seq, timestamp, ssrc, &payload)
        else {
            return;
        };
        self.send_inserted(slot, &packet[..n], to);
    }

    /// Sends a packet the switch made (prompt, DTMF) from leg `slot` to its peer at `to`.
    fn send_inserted(&mut self, slot: usize, packet: &[u8], to: SocketAddr) {
        self.send_to_leg(slot, packet, to);
    }

    /// Starts or stops ringback toward `side` of pair `id`: in its G.711 codec, or
    /// transcoded to its Opus (a WhatsApp side). What the other side sends meanwhile is
    /// held back; stopping gives it the floor again. No event follows.
    pub(super) fn ringback(&mut self, id: u64, side: Side, on: bool) {
        let Some(slot) = self.pairs.get(&id).map(|p| p.legs[side.index()]) else {
            return;
        };
        self.stop_playing(slot);
        let complexity = self.opus_complexity.load(Ordering::Relaxed);
        let Some(leg) = self.legs[slot].as_mut() else {
            return;
        };
        leg.playing = false;
        if !on {
            return;
        }
        let Some((encode, opus, pt)) = encoder(leg, complexity) else {
            return;
        };
        leg.playing = true;
        self.playing.push(PlayOut {
            slot,
            prompt: prompt::Prompt::ringback(),
            pos: 0,
            next_at: Instant::now(),
            barge_in: false,
            encode,
            pt,
            looping: true,
            opus,
        });
    }
}

/// A G.711 encoder, the Opus encoder its frames go through (an Opus side), and the
/// payload type.
pub(super) type Encoder = (fn(i16) -> u8, Option<Box<transcode::Transcoder>>, u8);

/// How audio the switch makes reaches `leg`'s peer: G.711 in the codec that side speaks, or
/// G.711 transcoded to its Opus; with the payload type. `None`: no codec the switch plays.
pub(super) fn encoder(leg: &mut super::Leg, complexity: u8) -> Option<Encoder> {
    let pt = leg.codec_pt?;
    match (leg.codec, pt) {
        (Some(transcode::Codec::Opus), _) => {
            use crate::media::transcode::{Codec, Transcoder};
            if let Some(opus) = leg.inserted_opus.take() {
                return Some((g711::ulaw_encode as fn(i16) -> u8, Some(opus), pt));
            }
            match Transcoder::with_complexity(Codec::Pcmu, Codec::Opus, complexity) {
                Ok(t) => Some((g711::ulaw_encode as fn(i16) -> u8, Some(Box::new(t)), pt)),
                Err(e) => {
                    tracing::warn!(error = %e, "no Opus encoder for a prompt");
                    None
                }
            }
        }
        (_, 8) => Some((g711::alaw_encode as fn(i16) -> u8, None, pt)),
        (_, 0) => Some((g711::ulaw_encode as fn(i16) -> u8, None, pt)),
        _ => None,
    }
}
