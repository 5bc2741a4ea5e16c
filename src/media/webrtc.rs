//! The WebRTC leg toward WhatsApp: ICE, DTLS-SRTP and RTP through str0m, driven sans-IO.
//!
//! str0m is used through its direct API, with our own SDP: Meta wants things str0m's SDP
//! layer does not produce. Our answer says `a=setup:active` (we are the DTLS client, as Meta
//! asks; str0m's SDP layer always answers `passive`), and it carries Meta's
//! telephone-event payload type (126 at 8000 Hz), which str0m does not negotiate. The ICE
//! role follows RFC 8445: toward an ICE-lite peer (Meta's media servers) we are the full,
//! controlling agent; toward a full peer the offerer controls. Every candidate is in the
//! SDP (no trickle). RTP crosses in str0m's RTP mode: whole packets, no depacketising.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::change::DirectApi;
use str0m::config::Fingerprint;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcConfig};

/// Payload type of Opus in our SDP (Meta's too).
pub const OPUS_PT: u8 = 111;
/// Payload type of telephone-event/8000 in our SDP (Meta's too).
pub const DTMF_PT: u8 = 126;

/// Why a WebRTC leg could not be set up or driven.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebRtcError {
    /// The peer's SDP lacks something WebRTC needs, or is not SDP at all.
    #[error("unusable SDP: {0}")]
    Sdp(String),
    /// str0m refused an input or a setting.
    #[error("WebRTC: {0}")]
    Rtc(#[from] str0m::RtcError),
}

/// What the peer's SDP says that the leg needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDescription {
    /// ICE credentials.
    pub ufrag: String,
    /// ICE password.
    pub pwd: String,
    /// DTLS certificate fingerprint (`sha-256 AA:BB:…`).
    pub fingerprint: String,
    /// `a=setup` value (`actpass`, `active`, `passive`).
    pub setup: String,
    /// The peer is ICE-lite (Meta is).
    pub ice_lite: bool,
    /// Its candidates (`a=candidate` values without the `candidate:` prefix kept as given).
    pub candidates: Vec<String>,
    /// The audio stream's `a=mid`.
    pub mid: String,
    /// Opus payload type.
    pub opus_pt: u8,
    /// telephone-event/8000 payload type, if offered.
    pub dtmf_pt: Option<u8>,
    /// The peer's SSRC, if it says.
    pub ssrc: Option<u32>,
}

impl PeerDescription {
    /// Reads the WebRTC parts of an SDP (Meta's, or a browser's).
    pub fn parse(sdp: &str) -> Result<PeerDescription, WebRtcError> {
        let missing = |what: &str| WebRtcError::Sdp(format!("no {what}"));
        let mut ufrag = None;
        let mut pwd = None;
        let mut fingerprint = None;
        let mut setup = None;
        let mut ice_lite = false;
        let mut candidates = Vec::new();
        let mut mid = None;
        let mut opus_pt = None;
        let mut dtmf_pt = None;
        let mut ssrc = None;
        let mut in_audio = false;
        let mut seen_audio = false;
        for line in sdp.lines().map(str::trim_end) {
            if let Some(m) = line.strip_prefix("m=") {
                in_audio = m.starts_with("audio ") && !seen_audio;
                seen_audio |= in_audio;
                continue;
            }
            let Some(attr) = line.strip_prefix("a=") else {
                continue;
            };
            let (name, value) = attr.split_once(':').unwrap_or((attr, ""));
            // Session-level attributes apply unless the audio section overrides them.
            let here = in_audio || !seen_audio;
            match name {
                "ice-lite" => ice_lite = true,
                "ice-ufrag" if here => ufrag = Some(value.to_string()),
                "ice-pwd" if here => pwd = Some(value.to_string()),
                "fingerprint"
                    if here
                        && (fingerprint.is_none()
                            || value.to_ascii_lowercase().starts_with("sha-256 ")) =>
                {
                    fingerprint = Some(value.to_string());
                }
                "setup" if here => setup = Some(value.to_string()),
                "candidate" if in_audio => candidates.push(value.to_string()),
                "mid" if in_audio => mid = Some(value.to_string()),
                "rtpmap" if in_audio => {
                    let Some((pt, codec)) = value.split_once(' ') else {
                        continue;
                    };
                    let Ok(pt) = pt.parse::<u8>() else {
                        continue;
                    };
                    let codec = codec.to_ascii_lowercase();
                    if codec.starts_with("opus/48000") && opus_pt.is_none() {
                        opus_pt = Some(pt);
                    } else if codec == "telephone-event/8000" && dtmf_pt.is_none() {
                        dtmf_pt = Some(pt);
                    }
                }
                "ssrc" if in_audio && ssrc.is_none() => {
                    ssrc = value.split(' ').next().and_then(|s| s.parse().ok());
                }
                _ => {}
            }
        }
        if !seen_audio {
            return Err(missing("audio stream"));
        }
        Ok(PeerDescription {
            ufrag: ufrag.ok_or_else(|| missing("a=ice-ufrag"))?,
            pwd: pwd.ok_or_else(|| missing("a=ice-pwd"))?,
            fingerprint: fingerprint.ok_or_else(|| missing("a=fingerprint"))?,
            setup: setup.unwrap_or_else(|| "actpass".to_string()),
            ice_lite,
            candidates,
            mid: mid.unwrap_or_else(|| "0".to_string()),
            opus_pt: opus_pt.ok_or_else(|| missing("Opus at 48000 Hz"))?,
            dtmf_pt,
            ssrc,
        })
    }

    /// The addresses of the peer's UDP candidates of one address family (`v4`: IPv4).
    pub fn candidate_addrs(&self, v4: bool) -> Vec<SocketAddr> {
        self.candidates
            .iter()
            .filter_map(|c| {
                // foundation component transport priority address port typ ...
                let f: Vec<&str> = c.split_ascii_whitespace().collect();
                if f.len() < 6 || !f[2].eq_ignore_ascii_case("udp") {
                    return None;
                }
                let ip: std::net::IpAddr = f[4].parse().ok()?;
                let port: u16 = f[5].parse().ok()?;
                (ip.is_ipv4() == v4).then_some(SocketAddr::new(ip, port))
            })
            .collect()
    }

    fn fingerprint(&self) -> Result<Fingerprint, WebRtcError> {
        let bad = || WebRtcError::Sdp(format!("unreadable fingerprint {:?}", self.fingerprint));
        let (hash_func, hex) = self.fingerprint.split_once(' ').ok_or_else(bad)?;
        let bytes = hex
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad())?;
        Ok(Fingerprint {
            hash_func: hash_func.to_ascii_lowercase(),
            bytes,
        })
    }
}

/// Something the leg asks its driver to do, or tells it.
#[derive(Debug)]
#[non_exhaustive]
pub enum LegOutput {
    /// Send this datagram from the leg's socket.
    Transmit {
        /// Destination.
        to: SocketAddr,
        /// Datagram.
        data: Vec<u8>,
    },
    /// ICE and DTLS are up: media can flow.
    Connected,
    /// ICE lost the peer (str0m may recover from this state: a caller decides how long to
    /// wait before ending the call).
    Disconnected,
    /// An RTP packet from the peer, decrypted.
    Rtp {
        /// Payload type.
        pt: u8,
        /// Sequence number.
        seq: u16,
        /// RTP timestamp.
        timestamp: u32,
        /// Marker bit.
        marker: bool,
        /// The sender's SSRC.
        ssrc: u32,
        /// Payload.
        payload: std::sync::Arc<[u8]>,
    },
    /// Nothing to do before this time (then call [`WebRtcLeg::handle_timeout`]).
    Timeout(Instant),
}

/// One WebRTC audio leg.
pub struct WebRtcLeg {
    rtc: Rtc,
    tx_ssrc: Ssrc,
    local: SocketAddr,
    peer_dtmf_pt: Option<u8>,
    opus_pt: u8,
    /// An offer of ours still waits for its answer.
    awaiting_answer: bool,
    local_sdp: String,
    /// Outputs taken from str0m after an input and not yet polled: in RTP mode str0m holds
    /// one received packet at a time, which the next input would replace.
    queued: std::collections::VecDeque<LegOutput>,
    /// str0m's next timeout, as last polled.
    timeout: Instant,
    /// The time of the last input given to str0m (a datagram, a timeout, a packet sent).
    now: Instant,
}

impl std::fmt::Debug for WebRtcLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcLeg")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl WebRtcLeg {
    fn new(
        rtc: Rtc,
        tx_ssrc: Ssrc,
        local: SocketAddr,
        peer_dtmf_pt: Option<u8>,
        opus_pt: u8,
        local_sdp: String,
        now: Instant,
    ) -> WebRtcLeg {
        WebRtcLeg {
            timeout: now,
            now,
            awaiting_answer: false,
            opus_pt,
            rtc,
            tx_ssrc,
            local,
            peer_dtmf_pt,
            local_sdp,
            queued: std::collections::VecDeque::new(),
        }
    }

    /// Answers the peer's `offer` with a leg receiving on `local`; the answer SDP is
    /// [`local_sdp`](Self::local_sdp).
    pub fn accept_offer(
        offer: &str,
        local: SocketAddr,
        now: Instant,
    ) -> Result<WebRtcLeg, WebRtcError> {
        let peer = PeerDescription::parse(offer)?;
        let mut rtc = build(peer.opus_pt, peer.dtmf_pt, local, now)?;
        // RFC 8445 §6.1.1: a full agent facing a lite one controls; otherwise the offerer
        // does, and we answer. We take the DTLS client role unless the peer insists on it.
        let dtls_client = peer.setup != "active";
        let tx_ssrc = apply_offer(&mut rtc, &peer, local, peer.ice_lite, dtls_client)?;
        let setup = if dtls_client { "active" } else { "passive" };
        let answer = sdp_text(
            &mut rtc,
            &peer.mid,
            peer.opus_pt,
            peer.dtmf_pt,
            setup,
            local,
            tx_ssrc,
        );
        Ok(Self::new(
            rtc,
            tx_ssrc,
            local,
            peer.dtmf_pt,
            peer.opus_pt,
            answer,
            now,
        ))
    }

    /// Makes our offer (business-initiated calls: it goes to Meta's `connect`), for a leg
    /// receiving on `local`; complete it with [`accept_answer`](Self::accept_answer). As
    /// offerer we control ICE; the DTLS roles follow the answer's `a=setup`.
    pub fn offer(local: SocketAddr, now: Instant) -> Result<WebRtcLeg, WebRtcError> {
        let mut rtc = build(OPUS_PT, Some(DTMF_PT), local, now)?;
        let tx_ssrc = {
            let mut api = rtc.direct_api();
            api.set_ice_controlling(true);
            let mid = Mid::from(OFFER_MID);
            api.declare_media(mid, MediaKind::Audio);
            let ssrc = api.new_ssrc();
            api.declare_stream_tx(ssrc, None, mid, None);
            ssrc
        };
        let offer = sdp_text(
            &mut rtc,
            OFFER_MID,
            OPUS_PT,
            Some(DTMF_PT),
            "actpass",
            local,
            tx_ssrc,
        );
        let mut leg = Self::new(rtc, tx_ssrc, local, None, OPUS_PT, offer, now);
        leg.awaiting_answer = true;
        Ok(leg)
    }

    /// Applies the peer's answer to our offer.
    pub fn accept_answer(&mut self, answer: &str) -> Result<(), WebRtcError> {
        let peer = PeerDescription::parse(answer)?;
        if peer.opus_pt != OPUS_PT {
            return Err(WebRtcError::Sdp(format!(
                "the answer moved Opus to payload type {}",
                peer.opus_pt
            )));
        }
        add_candidates(&mut self.rtc, &peer, self.local);
        let mut api = self.rtc.direct_api();
        api.set_remote_fingerprint(peer.fingerprint()?);
        api.set_remote_ice_credentials(IceCreds {
            ufrag: peer.ufrag.clone(),
            pass: peer.pwd.clone(),
        });
        // The answerer chose its DTLS role: its `active` makes us the server.
        api.start_dtls(peer.setup != "active")?;
        match peer.ssrc {
            Some(ssrc) => {
                api.expect_stream_rx(Ssrc::from(ssrc), None, Mid::from(OFFER_MID), None);
            }
            None => tracing::warn!("the answer has no a=ssrc: its audio may not be received"),
        }
        self.peer_dtmf_pt = peer.dtmf_pt;
        self.awaiting_answer = false;
        Ok(())
    }

    /// Our SDP (CRLF line ends): the answer, the same for `pre_accept` and `accept`; for a
    /// leg made by [`offer`](Self::offer), the offer.
    pub fn local_sdp(&self) -> &str {
        &self.local_sdp
    }

    /// The address the leg receives on.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The peer's telephone-event payload type.
    pub fn dtmf_pt(&self) -> Option<u8> {
        self.peer_dtmf_pt
    }

    /// The leg made an offer whose answer has not been applied.
    pub fn awaiting_answer(&self) -> bool {
        self.awaiting_answer
    }

    /// The payload type of Opus on this leg (both ways).
    pub fn opus_pt(&self) -> u8 {
        self.opus_pt
    }

    /// A datagram arrived on the leg's socket; false when it is not this leg's (another
    /// leg's STUN, DTLS or SRTP, or neither).
    pub fn handle_receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<bool, WebRtcError> {
        if !self.input(now, from, data)? {
            return Ok(false);
        }
        // Take what the datagram produced now, before another input replaces it.
        loop {
            match self.next_output()? {
                LegOutput::Timeout(_) => break,
                other => self.queued.push_back(other),
            }
        }
        Ok(true)
    }

    /// Like [`handle_receive`](Self::handle_receive) for a driver that sends at once:
    /// datagrams to send go to `transmit` (no copy), events wait for
    /// [`next_event`](Self::next_event), and the next timeout is
    /// [`timeout`](Self::timeout).
    pub fn receive_into(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        transmit: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<bool, WebRtcError> {
        if !self.input(now, from, data)? {
            return Ok(false);
        }
        self.transmit_into(transmit)?;
        Ok(true)
    }

    /// Sends what str0m has to send through `transmit`, keeps its events for
    /// [`next_event`](Self::next_event) and notes its next timeout. Call after
    /// [`send_rtp`](Self::send_rtp) and [`handle_timeout`](Self::handle_timeout).
    ///
    /// str0m asks for a timeout at once after each packet it sends (its pacer takes a fresh
    /// look at its queues only then); that one is given here, so the leg's
    /// [`timeout`](Self::timeout) is its next real timer and a driver is not woken for
    /// nothing after every packet.
    pub fn transmit_into(
        &mut self,
        transmit: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<(), WebRtcError> {
        let mut caught_up = false;
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(at) if at <= self.now && !caught_up => {
                    caught_up = true;
                    self.rtc.handle_input(Input::Timeout(self.now))?;
                }
                Output::Timeout(at) => {
                    self.timeout = at;
                    return Ok(());
                }
                Output::Transmit(t) => transmit(t.destination, &t.contents),
                Output::Event(e) => {
                    if let Some(out) = event_output(e) {
                        self.queued.push_back(out);
                    }
                }
            }
        }
    }

    /// The next event kept by [`receive_into`](Self::receive_into) or
    /// [`transmit_into`](Self::transmit_into).
    pub fn next_event(&mut self) -> Option<LegOutput> {
        self.queued.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due, as last seen by
    /// [`transmit_into`](Self::transmit_into).
    pub fn timeout(&self) -> Instant {
        self.timeout
    }

    fn input(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Result<bool, WebRtcError> {
        let Ok(contents) = data.try_into() else {
            // Neither STUN, DTLS nor SRTP: not for us.
            return Ok(false);
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: self.local,
                contents,
            },
        );
        if !self.rtc.accepts(&input) {
            return Ok(false);
        }
        self.rtc.handle_input(input)?;
        self.now = self.now.max(now);
        Ok(true)
    }

    /// The time asked for by the last [`LegOutput::Timeout`] has come.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), WebRtcError> {
        self.rtc.handle_input(Input::Timeout(now))?;
        self.now = self.now.max(now);
        Ok(())
    }

    /// Sends an RTP packet (Opus or telephone-event) toward the peer.
    pub fn send_rtp(
        &mut self,
        now: Instant,
        pt: u8,
        seq: u64,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<(), WebRtcError> {
        let mut api = self.rtc.direct_api();
        let Some(stream) = api.stream_tx(&self.tx_ssrc) else {
            return Err(WebRtcError::Sdp("no send stream".into()));
        };
        stream.write_rtp(
            RtpWrite::new(Pt::from(pt), SeqNo::from(seq), timestamp, now, payload).marker(marker),
        );
        // str0m queues the packet; its pacer releases it on the next timeout, given now so
        // that the packet leaves with the next transmit rather than a timer pass later.
        let now = now.max(self.now);
        self.rtc.handle_input(Input::Timeout(now))?;
        self.now = now;
        Ok(())
    }

    /// The next thing to do; call until it returns [`LegOutput::Timeout`].
    pub fn poll(&mut self) -> Result<LegOutput, WebRtcError> {
        match self.queued.pop_front() {
            Some(out) => Ok(out),
            None => self.next_output(),
        }
    }

    fn next_output(&mut self) -> Result<LegOutput, WebRtcError> {
        loop {
            return Ok(match self.rtc.poll_output()? {
                Output::Timeout(at) => {
                    self.timeout = at;
                    LegOutput::Timeout(at)
                }
                Output::Transmit(t) => LegOutput::Transmit {
                    to: t.destination,
                    data: t.contents.to_vec(),
                },
                Output::Event(e) => match event_output(e) {
                    Some(out) => out,
                    None => continue,
                },
            });
        }
    }
}

/// The leg's view of a str0m event (`None`: nothing a driver acts on).
fn event_output(event: Event) -> Option<LegOutput> {
    Some(match event {
        Event::Connected => LegOutput::Connected,
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
            LegOutput::Disconnected
        }
        Event::RtpPacket(p) => LegOutput::Rtp {
            pt: *p.header.payload_type,
            seq: p.header.sequence_number,
            timestamp: p.header.timestamp,
            marker: p.header.marker,
            ssrc: *p.header.ssrc,
            payload: p.payload.clone(),
        },
        _ => return None,
    })
}

/// The `a=mid` of our offers.
const OFFER_MID: &str = "audio";

/// A str0m instance for one audio leg: RTP mode, full ICE, Opus and telephone-event under
/// the given payload types (str0m drops payload types it does not know), a host candidate.
fn build(
    opus_pt: u8,
    dtmf_pt: Option<u8>,
    local: SocketAddr,
    now: Instant,
) -> Result<Rtc, WebRtcError> {
    let mut config = RtcConfig::new()
        .clear_codecs()
        .set_rtp_mode(true)
        .set_ice_lite(false);
    config.codec_config().add_config(
        Pt::from(opus_pt),
        None,
        Codec::Opus,
        Frequency::FORTY_EIGHT_KHZ,
        Some(2),
        FormatParams {
            min_p_time: Some(20),
            use_inband_fec: Some(true),
            ..Default::default()
        },
    );
    if let Some(pt) = dtmf_pt {
        config.codec_config().add_config(
            Pt::from(pt),
            None,
            Codec::Unknown,
            Frequency::EIGHT_KHZ,
            Some(1),
            FormatParams::default(),
        );
    }
    if let Some(cert) = shared_certificate() {
        config = config.set_dtls_cert(cert);
    }
    let mut rtc = config.build(now);
    let candidate = Candidate::host(local, "udp")
        .map_err(|e| WebRtcError::Sdp(format!("local candidate {local}: {e}")))?;
    rtc.add_local_candidate(candidate);
    Ok(rtc)
}

/// One DTLS certificate for every leg of the process, made once: generating a key pair
/// and certificate per leg would cost more than the rest of its setup. (Meta and browsers
/// check the certificate only against the fingerprint in our SDP.)
fn shared_certificate() -> Option<str0m::config::DtlsCert> {
    static CERT: std::sync::OnceLock<Option<str0m::config::DtlsCert>> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    })
    .clone()
}

/// The peer's candidates of our address family: Meta offers an IPv6 candidate ahead of the
/// IPv4 one, and a switch without IPv6 must not wait for it to time out.
fn add_candidates(rtc: &mut Rtc, peer: &PeerDescription, local: SocketAddr) {
    for c in &peer.candidates {
        match Candidate::from_sdp_string(&format!("candidate:{c}")) {
            Ok(c) if c.addr().is_ipv4() == local.is_ipv4() => rtc.add_remote_candidate(c),
            Ok(_) => {}
            Err(e) => tracing::debug!(candidate = %c, error = %e, "peer candidate skipped"),
        }
    }
}

/// Applies an offering peer's description; returns our send SSRC.
fn apply_offer(
    rtc: &mut Rtc,
    peer: &PeerDescription,
    local: SocketAddr,
    controlling: bool,
    dtls_client: bool,
) -> Result<Ssrc, WebRtcError> {
    add_candidates(rtc, peer, local);
    let mid = Mid::from(peer.mid.as_str());
    let mut api: DirectApi = rtc.direct_api();
    api.set_remote_fingerprint(peer.fingerprint()?);
    api.set_remote_ice_credentials(IceCreds {
        ufrag: peer.ufrag.clone(),
        pass: peer.pwd.clone(),
    });
    api.set_ice_controlling(controlling);
    api.start_dtls(dtls_client)?;
    api.declare_media(mid, MediaKind::Audio);
    let tx_ssrc = api.new_ssrc();
    api.declare_stream_tx(tx_ssrc, None, mid, None);
    match peer.ssrc {
        Some(ssrc) => {
            api.expect_stream_rx(Ssrc::from(ssrc), None, mid, None);
        }
        // Without an SSRC in the SDP (and no negotiated mid header extension) str0m cannot
        // tell which stream a packet belongs to, and drops it.
        None => tracing::warn!("the peer's SDP has no a=ssrc: its audio may not be received"),
    }
    Ok(tx_ssrc)
}

/// Our SDP (offer or answer): one audio stream, every candidate, one SSRC, CRLF line ends.
fn sdp_text(
    rtc: &mut Rtc,
    mid: &str,
    opus_pt: u8,
    dtmf_pt: Option<u8>,
    setup: &str,
    local: SocketAddr,
    ssrc: Ssrc,
) -> String {
    let api = rtc.direct_api();
    let creds = api.local_ice_credentials();
    let fingerprint = api.local_dtls_fingerprint().to_string();
    let (family, ip) = match local {
        SocketAddr::V4(a) => ("IP4", a.ip().to_string()),
        SocketAddr::V6(a) => ("IP6", a.ip().to_string()),
    };
    let port = local.port();
    let session = u64::from(*ssrc) << 16 | u64::from(port);
    let mut pts = format!("{opus_pt}");
    let mut dtmf = String::new();
    if let Some(pt) = dtmf_pt {
        pts.push_str(&format!(" {pt}"));
        dtmf = format!("a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} 0-15\r\n");
    }
    format!(
        "v=0\r\n\
         o=- {session} 2 IN {family} {ip}\r\n\
         s=-\r\n\
         t=0 0\r\n\
         a=group:BUNDLE {mid}\r\n\
         a=msid-semantic: WMS waswitch\r\n\
         m=audio {port} UDP/TLS/RTP/SAVPF {pts}\r\n\
         c=IN {family} {ip}\r\n\
         a=candidate:1 1 udp 2130706431 {ip} {port} typ host\r\n\
         a=end-of-candidates\r\n\
         a=ice-ufrag:{ufrag}\r\n\
         a=ice-pwd:{pwd}\r\n\
         a=fingerprint:{fingerprint}\r\n\
         a=setup:{setup}\r\n\
         a=mid:{mid}\r\n\
         a=sendrecv\r\n\
         a=msid:waswitch audio\r\n\
         a=rtcp-mux\r\n\
         a=rtpmap:{opus_pt} opus/48000/2\r\n\
         a=fmtp:{opus_pt} minptime=20;useinbandfec=1\r\n\
         {dtmf}\
         a=ptime:20\r\n\
         a=maxptime:20\r\n\
         a=ssrc:{ssrc} cname:waswitch\r\n",
        ufrag = creds.ufrag,
        pwd = creds.pass,
        ssrc = *ssrc,
    )
}

#[cfg(test)]
mod tests;
