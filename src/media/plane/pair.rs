//! A call's handle on its pair of legs in a shard: where each side's peer is, DTMF,
//! prompts and ringback toward a side, counters, the peer's answer to a WebRTC offer, and
//! the pair's removal (on close or drop).

use std::time::Duration;

use super::{LegStats, MediaError, MediaPair};
use crate::media::ports::PortLease;
use crate::media::shard::Command;
use crate::media::types::{Remote, Side};
use crate::media::webrtc::WebRtcError;
use crate::media::{dtmf, prompt};

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
        let mut remotes = [None, None];
        remotes[side.index()] = Some(remote);
        self.set_remotes(remotes)
    }

    /// Like [`set_remote`](Self::set_remote) for both sides at once (`None` leaves a side
    /// as it is): one command, one wake-up of the shard.
    pub fn set_remotes(&self, remotes: [Option<Remote>; 2]) -> Result<(), MediaError> {
        self.plane.send(
            self.shard,
            Command::Remote {
                id: self.id,
                remotes,
            },
        )
    }

    /// Like [`set_remotes`](Self::set_remotes), without waking the shard: it takes them
    /// with its next command or packet (commands run before packets are read), within a
    /// tick at the latest. Enough for a pair whose sockets are registered (any pair but one
    /// just added on resting sockets, which is taken the same way): addresses matter only
    /// to the packets that arrive.
    pub fn queue_remotes(&self, remotes: [Option<Remote>; 2]) -> Result<(), MediaError> {
        self.plane.queue(
            self.shard,
            Command::Remote {
                id: self.id,
                remotes,
            },
        )
    }

    /// Makes `side` (a plain leg) speak SDES-SRTP with these keys (ours to send, the peer's
    /// to receive). A WebRTC side is left alone: it has DTLS-SRTP of its own.
    pub fn set_srtp(
        &self,
        side: Side,
        keying: &crate::media::srtp::Keying,
    ) -> Result<(), MediaError> {
        self.plane.send(
            self.shard,
            Command::Srtp {
                id: self.id,
                side,
                srtp: crate::media::shard::Sdes::new(keying),
            },
        )
    }

    /// Sends DTMF `digit` (RFC 4733 telephone-events) toward `side`'s peer for `duration`,
    /// in the stream the peer already receives (same SSRC, continuing sequence numbers).
    /// Fails when the digit is not a DTMF key or the shard is unavailable; a peer whose SDP
    /// offered no telephone-event gets nothing.
    pub fn send_dtmf(&self, side: Side, digit: char, duration: Duration) -> Result<(), MediaError> {
        let event = dtmf::event_of(digit)
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
    /// with `barge_in`, a DTMF digit from that side stops it. A
    /// [`MediaEvent::PromptDone`](super::MediaEvent::PromptDone) follows.
    pub fn play(
        &self,
        side: Side,
        prompt: prompt::Prompt,
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

    /// Captures `side`'s audio to a one-channel WAV at `path` (a voicemail), replacing a
    /// capture running; with `silence`, [`MediaEvent::Silence`](super::MediaEvent::Silence)
    /// when that side is quiet that long. The capture ends with
    /// [`stop_capture`](Self::stop_capture) or with the pair, and `on_done` then hears the
    /// final file (from another thread).
    pub fn capture(
        &self,
        side: Side,
        path: &std::path::Path,
        silence: Option<Duration>,
        on_done: impl FnOnce(std::io::Result<std::path::PathBuf>) + Send + 'static,
    ) -> Result<(), MediaError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let recorder = crate::media::record::Recorder::start_mono(path, Box::new(on_done))?;
        self.plane.send(
            self.shard,
            Command::Capture {
                id: self.id,
                side,
                recorder,
                silence,
            },
        )
    }

    /// Starts a media stream on `side`: the shard hands that side's audio to `tap`'s
    /// connection and plays the bot's audio from it (the other side is held back meanwhile).
    pub fn stream(&self, side: Side, tap: crate::media::stream::Tap) -> Result<(), MediaError> {
        self.plane.send(
            self.shard,
            Command::Stream {
                id: self.id,
                side,
                tap: Box::new(tap),
            },
        )
    }

    /// Ends the pair's media stream `seq` (the tap's; a later stream is left alone).
    pub fn stop_stream(&self, seq: u64) -> Result<(), MediaError> {
        self.plane
            .send(self.shard, Command::StopStream { id: self.id, seq })
    }

    /// Starts recording both sides to `path` in `format` (side A left, side B right; with
    /// `swap`, side B left),
    /// finalising a recording running; `on_done` hears the file once it is final.
    pub fn record(
        &self,
        path: &std::path::Path,
        format: crate::media::record::Format,
        swap: bool,
        on_done: impl FnOnce(std::io::Result<std::path::PathBuf>) + Send + 'static,
    ) -> Result<(), MediaError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                MediaError::Ports(format!("recording directory {}: {e}", dir.display()))
            })?;
        }
        let recorder =
            crate::media::record::Recorder::start_stereo(path, format, swap, Box::new(on_done))
                .map_err(|e| {
                    MediaError::Ports(format!("recording file {}: {e}", path.display()))
                })?;
        self.plane.send(
            self.shard,
            Command::Record {
                id: self.id,
                recorder: Some(recorder),
            },
        )
    }

    /// Ends the recording of both sides; its file is finalised and reported.
    pub fn stop_recording(&self) -> Result<(), MediaError> {
        self.plane.send(
            self.shard,
            Command::Record {
                id: self.id,
                recorder: None,
            },
        )
    }

    /// Ends the capture; its file is finalised and reported.
    pub fn stop_capture(&self) -> Result<(), MediaError> {
        self.plane
            .send(self.shard, Command::StopCapture { id: self.id })
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
    /// [`MediaPlane::webrtc_offer`](super::MediaPlane::webrtc_offer)); waits briefly for the
    /// shard.
    pub fn webrtc_answer(&self, sdp: &str) -> Result<(), MediaError> {
        self.webrtc_answer_on(Side::A, sdp)
    }

    /// Applies the peer's answer to `side`'s WebRTC offer; waits briefly for the shard.
    pub fn webrtc_answer_on(&self, side: Side, sdp: &str) -> Result<(), MediaError> {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        self.plane.send(
            self.shard,
            Command::WebRtcAnswer {
                id: self.id,
                side,
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

    /// Puts `prepared` (our WebRTC offer, made by
    /// [`MediaPlane::webrtc_offer_in`](super::MediaPlane::webrtc_offer_in) for this pair's
    /// shard) in place of side B: an agent's browser phone, answered with
    /// [`webrtc_answer_on`](Self::webrtc_answer_on)`(Side::B, …)`. A plain side B waits
    /// parked until [`drop_webrtc_b`](Self::drop_webrtc_b); an earlier WebRTC side B is
    /// replaced.
    pub fn set_webrtc_b(&self, mut prepared: super::PreparedWebRtc) -> Result<(), MediaError> {
        if prepared.shard != self.shard {
            return Err(MediaError::Shard);
        }
        let Some(leg) = prepared.leg.take() else {
            return Err(MediaError::Shard);
        };
        let socket = prepared.socket;
        self.plane.send(
            self.shard,
            Command::WebRtcB {
                id: self.id,
                leg,
                socket,
            },
        )
    }

    /// Ends side B's WebRTC leg; the plain side B it stood in for is side B again.
    pub fn drop_webrtc_b(&self) -> Result<(), MediaError> {
        self.plane
            .send(self.shard, Command::DropWebRtcB { id: self.id })
    }

    /// Removes the pair and returns its final counters.
    pub fn close(mut self) -> Option<[LegStats; 2]> {
        self.removed = true;
        let plain = self.rtc.is_none();
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
        let removed = rx.recv_timeout(Duration::from_secs(1)).ok()?;
        // Each plain side's sockets rest in the shard, bound with its port, for the pool to
        // keep (a WebRTC side stands on a shared socket, leased differently).
        // The leases by side: a plain pair's both, a WebRTC pair's side B (when plain).
        let sides: [Option<&mut PortLease>; 2] = match (plain, self.leases.as_mut_slice()) {
            (true, [a, b]) => [Some(a), Some(b)],
            (false, [b]) => [None, Some(b)],
            _ => [None, None],
        };
        for (lease, slot) in sides.into_iter().zip(removed.resting) {
            let Some(slot) = slot else { continue };
            let resting = crate::media::ports::Resting {
                shard: self.shard,
                epoch: removed.epoch,
                slot,
            };
            match lease {
                Some(lease) => lease.give_back(resting),
                // No lease to keep them with: closed.
                None => {
                    let _ = self.plane.send(self.shard, Command::Evict(resting));
                }
            }
        }
        Some(removed.stats)
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
