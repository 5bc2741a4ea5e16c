//! A simulated WhatsApp user as Meta's SIP interface carries it with SDES: plain UDP, SRTP
//! keyed by `a=crypto` (RFC 4568), Opus 48 kHz on payload type 111 and telephone-event/8000
//! on 126, no ICE and no DTLS. It sends a known tone and checks what comes back, as the
//! WebRTC user of [`super::user`] does.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::user::{tone_frame, wait_readable, Heard, UserError, UserReport, TONE_LOOP_FRAMES};
use crate::media::rtp::{self, RtpView};
use crate::media::srtp::{self, Crypto, Keying, SrtpReceiver, SrtpSender};
use crate::sdp::{Format, Sdp};

const OPUS_PT: u8 = 111;
const DTMF_PT: u8 = 126;

/// One simulated user's SDES media in one call.
pub struct SdesUser {
    socket: UdpSocket,
    /// Our offer's keys, until the answer picks one.
    offered: Vec<Crypto>,
    keying: Option<Keying>,
    /// Where the business's media is.
    remote: Option<SocketAddr>,
    /// The payload type the business receives Opus on (Meta mirrors an offer's).
    opus_pt: u8,
    started: Instant,
}

impl std::fmt::Debug for SdesUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdesUser").finish_non_exhaustive()
    }
}

fn formats() -> [Format; 2] {
    [
        Format {
            pt: OPUS_PT,
            name: "opus".into(),
            clock: 48_000,
        },
        Format {
            pt: DTMF_PT,
            name: "telephone-event".into(),
            clock: 8000,
        },
    ]
}

fn audio_of(sdp: &str) -> Result<crate::sdp::Audio, UserError> {
    Sdp::parse(sdp.as_bytes())
        .map_err(|e| UserError::Answer(e.to_string()))?
        .audio()
        .map_err(|e| UserError::Answer(e.to_string()))?
        .ok_or_else(|| UserError::Answer("no audio".into()))
}

impl SdesUser {
    /// A user on `socket`, and Meta's SDES offer (a customer's call over SIP).
    pub fn offer(socket: UdpSocket) -> Result<(SdesUser, String), UserError> {
        let local = socket.local_addr()?;
        let offered = srtp::offer().map_err(UserError::Answer)?;
        let mut sdp = crate::sdp::sdes_description(
            local.ip(),
            local.port(),
            u64::from(local.port()),
            &formats(),
            &offered[0].line(),
            false,
        );
        for c in &offered[1..] {
            sdp.push_str(&format!("a=crypto:{}\r\n", c.line()));
        }
        socket.set_nonblocking(true)?;
        Ok((
            SdesUser {
                socket,
                offered,
                keying: None,
                remote: None,
                opus_pt: OPUS_PT,
                started: Instant::now(),
            },
            sdp,
        ))
    }

    /// A user on `socket` answering the business's SDES offer (a business-initiated call),
    /// mirroring its payload types as Meta does; the answer's SDP.
    pub fn answer(socket: UdpSocket, offer: &str) -> Result<(SdesUser, String), UserError> {
        let audio = audio_of(offer)?;
        let keying = srtp::answer(&audio.crypto).map_err(UserError::Answer)?;
        let opus = audio
            .formats
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case("opus"))
            .cloned()
            .ok_or_else(|| UserError::Answer("the offer has no Opus".into()))?;
        let mut answered = vec![opus.clone()];
        answered.extend(audio.telephone_event_format().cloned());
        let local = socket.local_addr()?;
        let sdp = crate::sdp::sdes_description(
            local.ip(),
            local.port(),
            u64::from(local.port()),
            &answered,
            &keying.ours.line(),
            audio.rtcp_mux,
        );
        socket.set_nonblocking(true)?;
        Ok((
            SdesUser {
                socket,
                offered: Vec::new(),
                keying: Some(keying),
                remote: audio.target,
                opus_pt: opus.pt,
                started: Instant::now(),
            },
            sdp,
        ))
    }

    /// Applies the business's answer to our offer.
    pub fn apply_answer(&mut self, answer: &str) -> Result<(), UserError> {
        let audio = audio_of(answer)?;
        if !audio.sdes() {
            return Err(UserError::Answer(format!(
                "the answer is {} without a=crypto",
                audio.proto
            )));
        }
        self.keying =
            Some(srtp::of_answer(&self.offered, &audio.crypto).map_err(UserError::Answer)?);
        self.remote = audio.target;
        self.opus_pt = audio
            .formats
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case("opus"))
            .map_or(OPUS_PT, |f| f.pt);
        Ok(())
    }

    /// Carries the call for `hold` after the first packet from the business arrives (or
    /// until `stop`): sends a `send_hz` tone in Opus every 20 ms from the start, and checks
    /// the received audio for `expect_hz`.
    pub fn run(
        self,
        hold: Duration,
        send_hz: f32,
        expect_hz: f32,
        stop: &AtomicBool,
    ) -> Result<UserReport, UserError> {
        let keying = self
            .keying
            .as_ref()
            .ok_or_else(|| UserError::Answer("no keys: the call was never answered".into()))?;
        let remote = self
            .remote
            .ok_or_else(|| UserError::Answer("the business gave no media address".into()))?;
        let (mut tx, mut rx): (SrtpSender, SrtpReceiver) = keying.contexts();
        let mut report = UserReport::default();
        let mut encoder = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
            .map_err(|e| UserError::Answer(e.to_string()))?;
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono)
            .map_err(|e| UserError::Answer(e.to_string()))?;
        let mut decoded = Heard::default();
        let mut dtmf_in = crate::media::dtmf::DtmfReceiver::default();
        let mut tone_loop: Vec<Vec<u8>> = Vec::with_capacity(TONE_LOOP_FRAMES as usize);
        let ssrc = u32::from(self.socket.local_addr()?.port()) << 8 | 0x5e;
        let mut buf = [0u8; 2048];
        let mut out = [0u8; 1600];
        let connect_deadline = self.started + Duration::from_secs(20);
        let mut end: Option<Instant> = None;
        let mut next_frame = Instant::now();
        loop {
            let now = Instant::now();
            if stop.load(Ordering::Relaxed) || end.is_some_and(|e| now >= e) {
                break;
            }
            if end.is_none() && now >= connect_deadline {
                break;
            }
            while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
                if from.ip() != remote.ip() {
                    continue;
                }
                let Ok(len) = (if rtp::is_rtcp(&buf[..n]) {
                    rx.unprotect_rtcp(&mut buf[..n]).map(|_| 0)
                } else {
                    rx.unprotect_rtp(&mut buf[..n])
                }) else {
                    continue;
                };
                let Ok(packet) = RtpView::parse(&buf[..len]) else {
                    continue;
                };
                if !report.connected {
                    report.connected = true;
                    report.setup = Some(self.started.elapsed());
                    end = Some(Instant::now() + hold);
                }
                let pt = packet.payload_type();
                if pt == DTMF_PT {
                    if let Some(d) = dtmf_in.on_packet(packet.timestamp(), packet.payload()) {
                        report.digits_in.push(d.digit);
                    }
                    continue;
                }
                if pt != self.opus_pt {
                    continue;
                }
                report.packets_in += 1;
                let into = decoded.window(end);
                if let Some(into) = into {
                    let mut pcm = [0f32; 5760];
                    if let Ok(n) = decoder.decode_float(packet.payload(), &mut pcm, false) {
                        into.extend_from_slice(&pcm[..n]);
                    }
                }
            }
            let now = Instant::now();
            if now >= next_frame {
                next_frame += Duration::from_millis(20);
                let k = report.packets_out;
                let slot = (k % TONE_LOOP_FRAMES) as usize;
                if tone_loop.len() <= slot {
                    tone_loop.push(tone_frame(&mut encoder, k, send_hz));
                }
                if let Some(payload) = tone_loop.get(slot).filter(|p| !p.is_empty()) {
                    let written = rtp::write_packet(
                        &mut out,
                        k == 0,
                        self.opus_pt,
                        (k + 1) as u16,
                        (k * 960) as u32,
                        ssrc,
                        payload,
                    );
                    if let Some(len) = written {
                        if let Ok(len) = tx.protect_rtp(&mut out, len) {
                            let _ = self.socket.send_to(&out[..len], remote);
                            report.packets_out += 1;
                        }
                    }
                }
            }
            let until = next_frame.min(end.unwrap_or(connect_deadline));
            let wait = until
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_micros(200), Duration::from_millis(20));
            wait_readable(&self.socket, wait)?;
        }
        report.tone_share = decoded.tone_share(expect_hz);
        Ok(report)
    }
}
