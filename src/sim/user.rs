//! A simulated WhatsApp user with real media: WebRTC as Meta's media servers do it (ICE-lite,
//! DTLS `actpass`, Opus 48 kHz and telephone-event/8000 on PT 126, one SSRC), a known tone
//! sent, and what comes back checked.
//!
//! A user-initiated call: [`SimUser::offer`] gives Meta's SDP offer for the connect webhook;
//! the business's answer (from its `pre_accept`/`accept`) goes to
//! [`SimUser::apply_answer`]; [`SimUser::run`] then carries the call on its socket.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

/// Meta's payload types.
const OPUS_PT: u8 = 111;
const DTMF_PT: u8 = 126;

/// Why a simulated user could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// The business's SDP was refused.
    #[error("answer refused: {0}")]
    Answer(String),
    /// WebRTC failed.
    #[error("WebRTC: {0}")]
    Rtc(#[from] str0m::RtcError),
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// What a call looked like from the user's phone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserReport {
    /// ICE and DTLS completed.
    pub connected: bool,
    /// From the offer to connected.
    pub setup: Option<Duration>,
    /// Opus packets sent and received.
    pub packets_out: u64,
    /// Opus packets received.
    pub packets_in: u64,
    /// Share of the received audio's power at the expected frequency (0-1), after the
    /// first half second.
    pub tone_share: f32,
    /// DTMF digits received (RFC 4733 on Meta's payload type 126), in order.
    pub digits_in: String,
    /// The listened-for tones heard, in order (one entry per run of 100 ms blocks in
    /// which one of them carries most of the power), when the user listens for tones.
    pub tones: Vec<u32>,
    /// When the user last heard sound (a 20 ms frame above -30 dBFS), Unix milliseconds,
    /// when the user listens for tones.
    pub last_sound_unix_ms: Option<u64>,
}

impl UserReport {
    /// Audio came back and carried the expected tone.
    pub fn audio_verified(&self) -> bool {
        self.connected && self.packets_in >= 25 && self.tone_share > 0.5
    }
}

/// One simulated WhatsApp user in one call.
pub struct SimUser {
    rtc: Rtc,
    mid: Mid,
    pending: Option<SdpPendingOffer>,
    socket: UdpSocket,
    started: Instant,
    dtmf: Option<DtmfPlan>,
    /// Tones listened for through the whole call (an IVR's tone-coded prompts).
    listen: Vec<f32>,
}

/// Digits a user presses during a call: each held 200 ms, 100 ms apart.
#[derive(Debug, Clone)]
struct DtmfPlan {
    events: std::collections::VecDeque<u8>,
    after: Duration,
    /// The event being sent: its code, its timestamp, frames sent.
    current: Option<(u8, u32, u32)>,
    gap: u32,
}

/// Frames (20 ms) a key is held.
const PRESS_FRAMES: u32 = 10;

impl DtmfPlan {
    /// The telephone-event to send in this 20 ms frame (payload, timestamp, marker), or
    /// `None` for audio. `audio_ts` is the audio's timestamp for the frame.
    fn next_packet(
        &mut self,
        since_connect: Duration,
        audio_ts: u32,
    ) -> Option<([u8; 4], u32, bool)> {
        if since_connect < self.after {
            return None;
        }
        if self.gap > 0 {
            self.gap -= 1;
            return None;
        }
        if self.current.is_none() {
            let event = self.events.pop_front()?;
            self.current = Some((event, audio_ts, 0));
        }
        let (event, ts, frame) = self.current.as_mut()?;
        *frame += 1;
        let end = *frame > PRESS_FRAMES;
        // Meta counts event durations at 8000 Hz beside Opus's 48000.
        let duration = ((*frame).min(PRESS_FRAMES) * 160) as u16;
        let payload = crate::media::dtmf::EventPayload {
            event: *event,
            end,
            volume: 10,
            duration,
        }
        .to_bytes();
        let out = (payload, *ts, *frame == 1);
        if *frame >= PRESS_FRAMES + 3 {
            // Three end packets sent: a pause, then the next key.
            self.current = None;
            self.gap = 5;
        }
        Some(out)
    }
}

impl std::fmt::Debug for SimUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimUser").finish_non_exhaustive()
    }
}

impl SimUser {
    /// A user on `socket` (bound to the address its candidate names), and Meta's SDP offer.
    pub fn offer(socket: UdpSocket) -> Result<(SimUser, String), UserError> {
        let now = Instant::now();
        let local = socket.local_addr()?;
        let mut rtc = Self::config().build(now);
        let candidate =
            Candidate::host(local, "udp").map_err(|e| UserError::Answer(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| UserError::Answer("no offer to make".into()))?;
        // Meta offers telephone-event/8000 on 126 beside Opus.
        let text = with_telephone_event(&offer.to_sdp_string());
        socket.set_nonblocking(true)?;
        Ok((
            SimUser {
                rtc,
                mid,
                pending: Some(pending),
                socket,
                started: now,
                dtmf: None,
                listen: Vec::new(),
            },
            text,
        ))
    }

    /// A user on `socket` answering the business's `offer` (a business-initiated call), and
    /// Meta's SDP answer for the connect webhook. As Meta's servers: ICE-lite, Opus and
    /// telephone-event/8000 on 126 when the offer has it.
    pub fn answer(socket: UdpSocket, offer: &str) -> Result<(SimUser, String), UserError> {
        let now = Instant::now();
        let local = socket.local_addr()?;
        let mid = crate::media::webrtc::PeerDescription::parse(offer)
            .map_err(|e| UserError::Answer(e.to_string()))?
            .mid;
        let mut rtc = Self::config().build(now);
        let candidate =
            Candidate::host(local, "udp").map_err(|e| UserError::Answer(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let offer = str0m::change::SdpOffer::from_sdp_string(offer)
            .map_err(|e| UserError::Answer(e.to_string()))?;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| UserError::Answer(e.to_string()))?;
        let mut text = answer.to_sdp_string();
        if !text.contains("telephone-event") {
            text = with_telephone_event(&text);
        }
        socket.set_nonblocking(true)?;
        Ok((
            SimUser {
                rtc,
                mid: Mid::from(mid.as_str()),
                pending: None,
                socket,
                started: now,
                dtmf: None,
                listen: Vec::new(),
            },
            text,
        ))
    }

    /// Meta's media servers as str0m plays them: ICE-lite, RTP mode, Opus, and
    /// telephone-event let through, no header extensions.
    fn config() -> RtcConfig {
        // No RTP header extensions: Meta's SDP has none (so no transport-wide congestion
        // control feedback either, whose cost would otherwise show in the switch's).
        let mut config = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            .clear_extension_map()
            .enable_opus(true);
        // Let telephone-events through (str0m drops payload types it does not know).
        config.codec_config().add_config(
            Pt::from(DTMF_PT),
            None,
            Codec::Unknown,
            Frequency::EIGHT_KHZ,
            Some(1),
            FormatParams::default(),
        );
        config
    }

    /// Listens for `tones` (Hz) through the whole call: the report lists them as heard,
    /// in order (an IVR's tone-coded prompts, then the agent's echo).
    pub fn listening_for(mut self, tones: &[f32]) -> SimUser {
        self.listen = tones.to_vec();
        self
    }

    /// Presses `digits` (0-9, *, #, A-D) `after` the call connects, each for 200 ms, as
    /// RFC 4733 telephone-events on payload type 126. Other characters are skipped.
    pub fn with_dtmf(mut self, digits: &str, after: Duration) -> SimUser {
        self.dtmf = Some(DtmfPlan {
            events: digits
                .chars()
                .filter_map(crate::media::dtmf::event_of)
                .collect(),
            after,
            current: None,
            gap: 0,
        });
        self
    }

    /// Applies the business's SDP answer.
    pub fn apply_answer(&mut self, answer: &str) -> Result<(), UserError> {
        let pending = self
            .pending
            .take()
            .ok_or_else(|| UserError::Answer("an answer was already applied".into()))?;
        let answer =
            SdpAnswer::from_sdp_string(answer).map_err(|e| UserError::Answer(e.to_string()))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| UserError::Answer(e.to_string()))
    }

    /// Carries the call for `hold` after it connects (or until `stop`): sends a `send_hz`
    /// tone in Opus every 20 ms and checks the received audio for `expect_hz`.
    pub fn run(
        self,
        hold: Duration,
        send_hz: f32,
        expect_hz: f32,
        stop: &AtomicBool,
    ) -> Result<UserReport, UserError> {
        let mut call = Running::new(self, hold, send_hz, expect_hz)?;
        let mut buf = [0u8; 2048];
        loop {
            let now = Instant::now();
            let Some(due) = call.tick(now, stop.load(Ordering::Relaxed))? else {
                break;
            };
            let mut got = false;
            while let Ok((n, from)) = call.user.socket.recv_from(&mut buf) {
                got = true;
                call.receive(from, &buf[..n])?;
            }
            if !got {
                // Sleep until a datagram, str0m's timer or the next frame, whichever is first.
                let wait = due
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_micros(200), Duration::from_millis(100));
                wait_readable(&call.user.socket, wait)?;
            }
        }
        Ok(call.finish())
    }

    /// The socket the user's media goes through.
    pub(super) fn socket(&self) -> &UdpSocket {
        &self.socket
    }
}

/// The tone loops encoded so far, by frequency: every user sending the same tone sends the
/// same Opus frames, encoded once.
static TONE_LOOPS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<u32, ToneLoop>>> =
    std::sync::LazyLock::new(Default::default);

/// One second of a tone's Opus frames, shared by the users sending it.
pub(super) type ToneLoop = std::sync::Arc<Vec<Vec<u8>>>;

/// One second of a `hz` tone as Opus frames (a whole number of cycles: it loops).
pub(super) fn tone_loop(hz: f32) -> Result<ToneLoop, UserError> {
    let key = hz.to_bits();
    let mut loops = TONE_LOOPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(frames) = loops.get(&key) {
        return Ok(std::sync::Arc::clone(frames));
    }
    let mut encoder = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
        .map_err(|e| UserError::Answer(e.to_string()))?;
    let frames: Vec<Vec<u8>> = (0..TONE_LOOP_FRAMES)
        .map(|k| tone_frame(&mut encoder, k, hz))
        .collect();
    let frames = std::sync::Arc::new(frames);
    loops.insert(key, std::sync::Arc::clone(&frames));
    Ok(frames)
}

/// A user's call in progress, driven by the time and the datagrams it is given: by
/// [`SimUser::run`] on a thread of its own, or with many others by a [`super::pool`].
pub(super) struct Running {
    pub(super) user: SimUser,
    hold: Duration,
    expect_hz: f32,
    report: UserReport,
    decoder: opus::Decoder,
    decoded: Heard,
    dtmf_in: crate::media::dtmf::DtmfReceiver,
    dtmf_plan: Option<DtmfPlan>,
    tone: ToneLoop,
    connect_deadline: Instant,
    end: Option<Instant>,
    next_frame: Instant,
    /// str0m's next timer.
    rtc_due: Instant,
    local: std::net::SocketAddr,
}

impl Running {
    /// `user`'s call, to carry for `hold` after it connects with a `send_hz` tone out and
    /// `expect_hz` expected back.
    pub(super) fn new(
        mut user: SimUser,
        hold: Duration,
        send_hz: f32,
        expect_hz: f32,
    ) -> Result<Running, UserError> {
        let decoder = opus::Decoder::new(48_000, opus::Channels::Mono)
            .map_err(|e| UserError::Answer(e.to_string()))?;
        let local = user.socket.local_addr()?;
        let now = Instant::now();
        Ok(Running {
            dtmf_plan: user.dtmf.take(),
            connect_deadline: user.started + Duration::from_secs(20),
            user,
            hold,
            expect_hz,
            report: UserReport::default(),
            decoder,
            decoded: Heard::default(),
            dtmf_in: crate::media::dtmf::DtmfReceiver::default(),
            tone: tone_loop(send_hz)?,
            end: None,
            next_frame: now,
            rtc_due: now,
            local,
        })
    }

    /// A datagram for the user's WebRTC leg.
    pub(super) fn receive(
        &mut self,
        from: std::net::SocketAddr,
        data: &[u8],
    ) -> Result<(), UserError> {
        let Ok(contents) = data.try_into() else {
            return Ok(());
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: self.local,
                contents,
            },
        );
        if self.user.rtc.accepts(&input) {
            self.user.rtc.handle_input(input)?;
            // str0m holds one received RTP packet at a time: take it now.
            self.drain()?;
        }
        Ok(())
    }

    /// Does what is due at `now`: str0m's timers and output, the next 20 ms frame. When
    /// the call goes on, when it is next due; `None` once it is over (its time is up, it
    /// never connected, the far end went away, or `stop`).
    pub(super) fn tick(&mut self, now: Instant, stop: bool) -> Result<Option<Instant>, UserError> {
        if stop || self.end.is_some_and(|e| now >= e) {
            return Ok(None);
        }
        if self.end.is_none() && now >= self.connect_deadline {
            return Ok(None);
        }
        if now >= self.rtc_due {
            self.user.rtc.handle_input(Input::Timeout(now))?;
        }
        self.drain()?;
        if self.report.setup.is_some() && self.end.is_none() {
            // Disconnected after connecting.
            return Ok(None);
        }
        if self.report.connected && now >= self.next_frame {
            self.next_frame += Duration::from_millis(20);
            self.send_frame(now);
            self.drain()?;
        }
        Ok(Some(self.due()))
    }

    /// When the call is next due: str0m's timer, the next frame, or its end.
    pub(super) fn due(&self) -> Instant {
        let due = self.rtc_due.min(self.end.unwrap_or(self.connect_deadline));
        if self.report.connected {
            due.min(self.next_frame)
        } else {
            due
        }
    }

    /// The frame of this 20 ms: a DTMF event while a key is pressed, else the tone.
    fn send_frame(&mut self, now: Instant) {
        let k = self.report.packets_out;
        let since_connect = self
            .user
            .started
            .elapsed()
            .saturating_sub(self.report.setup.unwrap_or_default());
        let event = self
            .dtmf_plan
            .as_mut()
            .and_then(|d| d.next_packet(since_connect, (k * 960) as u32));
        let mid = self.user.mid;
        let mut api = self.user.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        if let Some((payload, ts, marker)) = event {
            tx.write_rtp(
                RtpWrite::new(Pt::from(DTMF_PT), (k + 1).into(), ts, now, &payload[..])
                    .marker(marker),
            );
            self.report.packets_out += 1;
            return;
        }
        let frame = self
            .tone
            .get((k % TONE_LOOP_FRAMES) as usize)
            .filter(|p| !p.is_empty());
        if let Some(frame) = frame {
            tx.write_rtp(
                RtpWrite::new(
                    Pt::from(OPUS_PT),
                    (k + 1).into(),
                    (k * 960) as u32,
                    now,
                    &frame[..],
                )
                .marker(k == 0),
            );
            self.report.packets_out += 1;
        }
    }

    /// Takes everything str0m has to say until its next timer: datagrams to send, the
    /// connection, received audio.
    fn drain(&mut self) -> Result<(), UserError> {
        loop {
            match self.user.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.rtc_due = t;
                    return Ok(());
                }
                Output::Transmit(t) => {
                    let _ = self.user.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => {
                    self.report.connected = true;
                    self.report.setup = Some(self.user.started.elapsed());
                    self.end = Some(Instant::now() + self.hold);
                    // The tone starts now, not with a burst of frames owed since the offer.
                    self.next_frame = Instant::now();
                }
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                )) if self.report.connected => self.end = None,
                Output::Event(Event::RtpPacket(p)) if *p.header.payload_type == OPUS_PT => {
                    self.report.packets_in += 1;
                    // Only what is checked is decoded: the first seconds, and the last
                    // one and a half before the user hangs up.
                    let listening = !self.user.listen.is_empty();
                    let into = self.decoded.window(self.end).is_some();
                    if into || listening {
                        let mut pcm = [0f32; 5760];
                        if let Ok(n) = self.decoder.decode_float(&p.payload, &mut pcm, false) {
                            if let Some(into) = self.decoded.window(self.end) {
                                into.extend_from_slice(&pcm[..n]);
                            }
                            if listening {
                                let power: f32 =
                                    pcm[..n].iter().map(|x| x * x).sum::<f32>() / n.max(1) as f32;
                                if power > 1e-3 {
                                    self.report.last_sound_unix_ms =
                                        Some(crate::clock::now_ms() as u64);
                                }
                                self.decoded.listen(
                                    &pcm[..n],
                                    &self.user.listen,
                                    &mut self.report.tones,
                                );
                            }
                        }
                    }
                }
                Output::Event(Event::RtpPacket(p)) if *p.header.payload_type == DTMF_PT => {
                    if let Some(d) = self.dtmf_in.on_packet(p.header.timestamp, &p.payload) {
                        self.report.digits_in.push(d.digit);
                    }
                }
                Output::Event(_) => {}
            }
        }
    }

    /// What the call came to.
    pub(super) fn finish(mut self) -> UserReport {
        self.report.tone_share = self.decoded.tone_share(self.expect_hz);
        self.report
    }
}

/// `sdp` with telephone-event/8000 on 126 added beside Opus (str0m's SDP leaves it out).
fn with_telephone_event(sdp: &str) -> String {
    sdp.replacen(
        &format!("UDP/TLS/RTP/SAVPF {OPUS_PT}"),
        &format!("UDP/TLS/RTP/SAVPF {OPUS_PT} {DTMF_PT}"),
        1,
    )
    .replacen(
        &format!("a=rtpmap:{OPUS_PT} opus/48000/2\r\n"),
        &format!("a=rtpmap:{OPUS_PT} opus/48000/2\r\na=rtpmap:{DTMF_PT} telephone-event/8000\r\n"),
        1,
    )
}

/// The share of the signal's power at `hz` (48 kHz samples, after the first half second).
/// Frames in the loop of encoded tone (one second).
pub(super) const TONE_LOOP_FRAMES: u64 = 50;
/// Received audio decoded from the start (2.5 s at 48 kHz).
pub(super) const FIRST_SAMPLES: usize = 120_000;
/// Received audio decoded before the end (1.5 s).
pub(super) const LAST_SAMPLES: usize = 72_000;
/// How long before the end the last window opens.
pub(super) const LAST_WINDOW: Duration = Duration::from_millis(1500);

/// The received audio that is checked.
#[derive(Default)]
pub(super) struct Heard {
    pub(super) first: Vec<f32>,
    pub(super) last: Vec<f32>,
    /// The current 100 ms block, when listening for tones.
    block: Vec<f32>,
    /// When audio last arrived, and whether a gap (silence, or another sound) has come
    /// since the last tone noted: the same tone after a gap is noted again.
    last_at: Option<Instant>,
    gap: bool,
}

/// One 20 ms Opus frame of a `hz` tone, the `k`th of the stream (one second of them,
/// [`TONE_LOOP_FRAMES`], joins up into a loop).
pub(super) fn tone_frame(encoder: &mut opus::Encoder, k: u64, hz: f32) -> Vec<u8> {
    let tone: Vec<f32> = (0..960)
        .map(|i| {
            let t = (k * 960 + i) as f32 / 48_000.0;
            0.3 * (2.0 * std::f32::consts::PI * hz * t).sin()
        })
        .collect();
    let mut packet = [0u8; 1500];
    let len = encoder.encode_float(&tone, &mut packet).unwrap_or(0);
    packet[..len].to_vec()
}

/// Waits until `socket` has a datagram, at most `wait`.
pub(super) fn wait_readable(socket: &UdpSocket, wait: Duration) -> std::io::Result<()> {
    let mut probe = [0u8; 1];
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(wait))?;
    let _ = socket.peek_from(&mut probe);
    socket.set_nonblocking(true)
}

impl Heard {
    /// Where received audio goes to be checked, if anywhere: the first seconds, and the
    /// last one and a half before the call's `end`.
    pub(super) fn window(&mut self, end: Option<Instant>) -> Option<&mut Vec<f32>> {
        let near_end = end.is_some_and(|e| Instant::now() + LAST_WINDOW >= e);
        if self.first.len() < FIRST_SAMPLES {
            Some(&mut self.first)
        } else if near_end && self.last.len() < LAST_SAMPLES {
            Some(&mut self.last)
        } else {
            None
        }
    }

    /// The share of `hz` in what was heard: at the start and, on a longer call, still at
    /// the end (the lower of the two).
    pub(super) fn tone_share(&self, hz: f32) -> f32 {
        let start = tone_share(&self.first, hz, 24_000);
        if self.last.len() >= 24_000 {
            start.min(tone_share(&self.last, hz, 12_000))
        } else {
            start
        }
    }

    /// Adds decoded audio to the tone log: each full 100 ms block whose power is mostly
    /// one of `tones` notes it (once per run).
    fn listen(&mut self, pcm: &[f32], tones: &[f32], heard: &mut Vec<u32>) {
        let now = Instant::now();
        if self
            .last_at
            .is_some_and(|t| now.duration_since(t) > Duration::from_millis(200))
        {
            // Nothing arrived for a while: the caller heard silence.
            self.gap = true;
            self.block.clear();
        }
        self.last_at = Some(now);
        for &x in pcm {
            self.block.push(x);
            if self.block.len() < 4800 {
                continue;
            }
            let total: f32 = self.block.iter().map(|x| x * x).sum::<f32>() / 4800.0;
            let best = tones
                .iter()
                .map(|&hz| {
                    (
                        hz,
                        crate::media::quality::tone_power(&self.block, hz, 48_000.0),
                    )
                })
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .filter(|(_, p)| total > 1e-5 && *p / total > 0.5);
            match best {
                Some((hz, _)) => {
                    if self.gap || heard.last() != Some(&(hz as u32)) {
                        heard.push(hz as u32);
                    }
                    self.gap = false;
                }
                None => self.gap = true,
            }
            self.block.clear();
        }
    }
}

/// Share of `samples`' power at `hz`, after skipping the first `skip` (the decoder
/// settling).
pub(super) fn tone_share(samples: &[f32], hz: f32, skip: usize) -> f32 {
    let tail = &samples[samples.len().min(skip)..];
    if tail.is_empty() {
        return 0.0;
    }
    // Block by block (100 ms, a whole number of periods of the test tones): audio with
    // gaps (frames sent as DTMF instead) jumps in phase between blocks, not within.
    let tone: f32 = tail
        .chunks(4800)
        .map(|b| crate::media::quality::tone_power(b, hz, 48_000.0) * b.len() as f32)
        .sum();
    let total: f32 = tail.iter().map(|x| x * x).sum();
    if total <= 0.0 {
        0.0
    } else {
        (tone / total).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::webrtc::{LegOutput, WebRtcLeg};

    #[test]
    fn tone_share_finds_the_tone_and_not_another() {
        let s: Vec<f32> = (0..48_000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 48_000.0).sin())
            .collect();
        assert!(tone_share(&s, 1000.0, 24_000) > 0.9);
        assert!(tone_share(&s, 440.0, 24_000) < 0.01);
        assert_eq!(tone_share(&[], 1000.0, 24_000), 0.0);
    }

    /// A user's call answered by the switch's WebRTC leg, which echoes what it hears: the
    /// user gets its own tone back.
    #[test]
    fn a_users_call_connects_to_a_leg_and_hears_its_tone_echoed() {
        let user_socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (mut user, offer) = SimUser::offer(user_socket).expect("offer");
        assert!(offer.contains("a=ice-lite") && offer.contains("111 126"));
        let leg_socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut leg = WebRtcLeg::accept_offer(
            &offer,
            leg_socket.local_addr().expect("addr"),
            Instant::now(),
        )
        .expect("answer");
        user.apply_answer(leg.local_sdp()).expect("answer applied");
        assert!(user.apply_answer(leg.local_sdp()).is_err(), "only once");
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let echo = scope.spawn(|| {
                leg_socket
                    .set_read_timeout(Some(Duration::from_millis(2)))
                    .expect("timeout");
                let mut buf = [0u8; 2048];
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    loop {
                        match leg.poll().expect("poll") {
                            LegOutput::Timeout(_) => break,
                            LegOutput::Transmit { to, data } => {
                                let _ = leg_socket.send_to(&data, to);
                            }
                            LegOutput::Rtp {
                                pt,
                                timestamp,
                                payload,
                                ..
                            } => {
                                seq += 1;
                                leg.send_rtp(Instant::now(), pt, seq, timestamp, false, &payload)
                                    .expect("echo");
                            }
                            _ => {}
                        }
                    }
                    if let Ok((n, from)) = leg_socket.recv_from(&mut buf) {
                        leg.handle_receive(Instant::now(), from, &buf[..n])
                            .expect("input");
                    }
                    leg.handle_timeout(Instant::now()).expect("timeout");
                }
            });
            let report = user
                .run(
                    Duration::from_millis(1500),
                    800.0,
                    800.0,
                    &AtomicBool::new(false),
                )
                .expect("call");
            stop.store(true, Ordering::Relaxed);
            echo.join().expect("echo thread");
            assert!(report.connected, "{report:?}");
            assert!(report.audio_verified(), "{report:?}");
            assert!(report.setup.is_some_and(|s| s < Duration::from_secs(2)));
        });
    }
}
