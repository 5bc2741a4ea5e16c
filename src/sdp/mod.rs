//! SDP (RFC 4566) as the switch needs it, sans-IO: read a session description, find where a
//! peer wants its audio and in which formats, and rewrite the description so that media
//! flows through the switch (anchoring) while every other line stays as the peer wrote it.

use std::net::{IpAddr, SocketAddr};

mod answer;

pub use answer::NotAcceptable;

/// Where the switch receives a call's media: the address its SDP names, and the port
/// facing each side of the media pair (side A, side B). A SIP bridge writes `ports[0]` in
/// the SDP it sends leg A and `ports[1]` in what it sends leg B.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// The address in SDP.
    pub ip: IpAddr,
    /// The RTP port facing side A, and the one facing side B.
    pub ports: [u16; 2],
}

impl Anchor {
    /// The same anchor with the sides swapped: for a bridge whose leg A is the media pair's
    /// side B (a business-initiated call: the PBX calls, the WhatsApp customer is side A of
    /// the pair).
    pub fn swapped(self) -> Anchor {
        Anchor {
            ip: self.ip,
            ports: [self.ports[1], self.ports[0]],
        }
    }
}

/// Whether `body` is a WebRTC session description (DTLS-SRTP: a `UDP/TLS/RTP/SAVPF`
/// stream with a certificate fingerprint), as browsers offer.
pub fn is_webrtc(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("UDP/TLS/RTP/SAVPF") && text.contains("a=fingerprint:")
}

/// Why a body is not a usable session description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// Not UTF-8 text.
    #[error("not text")]
    NotText,
    /// A line is not `x=value`.
    #[error("malformed line {0}")]
    Line(usize),
    /// `v=`, `o=` or `s=` missing or out of place.
    #[error("missing {0}= line")]
    Missing(char),
    /// An `m=` or `c=` line that cannot be read.
    #[error("malformed {0}= line")]
    Field(char),
}

/// Media direction (RFC 4566 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both ways (the default).
    SendRecv,
    /// The peer only sends.
    SendOnly,
    /// The peer only receives.
    RecvOnly,
    /// No media.
    Inactive,
}

/// A payload format of an `m=` line with its `a=rtpmap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// Payload type.
    pub pt: u8,
    /// Encoding name (`PCMU`, `opus`, `telephone-event`), from rtpmap or the static table.
    pub name: String,
    /// Clock rate in Hz.
    pub clock: u32,
}

/// The first audio stream of a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    /// Where the peer receives RTP (`None`: port 0, the stream is disabled).
    pub target: Option<SocketAddr>,
    /// Formats in the peer's order of preference.
    pub formats: Vec<Format>,
    /// Direction.
    pub direction: Direction,
    /// RTP and RTCP share the port (RFC 5761).
    pub rtcp_mux: bool,
    /// The transport protocol of the `m=` line (`RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`).
    pub proto: String,
    /// The `a=crypto` values (RFC 4568 SDES keys), in the peer's order of preference.
    pub crypto: Vec<String>,
}

impl Audio {
    /// Secure RTP keyed in the SDP itself (SDES): an `RTP/SAVP` or `RTP/SAVPF` stream, as
    /// opposed to plain RTP or DTLS-SRTP (`UDP/TLS/…`).
    pub fn sdes(&self) -> bool {
        matches!(self.proto.as_str(), "RTP/SAVP" | "RTP/SAVPF")
    }

    /// The first format that is not telephone-event or comfort noise: the codec in use.
    pub fn codec(&self) -> Option<&Format> {
        self.formats.iter().find(|f| {
            !f.name.eq_ignore_ascii_case("telephone-event") && !f.name.eq_ignore_ascii_case("CN")
        })
    }

    /// This offer's formats narrowed to those an answer to it kept (matched by name and
    /// clock; the offer's payload types and order stay): what the offerer may send once
    /// the answer is in (RFC 3264 §6.1).
    pub fn narrowed_to(&self, answer: &[Format]) -> Audio {
        let mut narrowed = self.clone();
        narrowed.formats.retain(|f| {
            answer
                .iter()
                .any(|a| a.name.eq_ignore_ascii_case(&f.name) && a.clock == f.clock)
        });
        narrowed
    }

    /// The telephone-event payload type (RFC 4733) at the codec's clock rate, if offered.
    pub fn telephone_event(&self) -> Option<u8> {
        self.telephone_event_format().map(|f| f.pt)
    }

    /// The telephone-event format nearest the codec's clock rate (RFC 4733 wants them
    /// equal; some peers pair telephone-event/8000 with Opus), if offered.
    pub fn telephone_event_format(&self) -> Option<&Format> {
        let clock = self.codec().map_or(8000, |c| c.clock);
        self.formats
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("telephone-event"))
            .min_by_key(|f| f.clock.abs_diff(clock))
    }
}

/// Static payload types of RFC 3551 the switch knows by number.
fn static_format(pt: u8) -> Option<(&'static str, u32)> {
    match pt {
        0 => Some(("PCMU", 8000)),
        8 => Some(("PCMA", 8000)),
        9 => Some(("G722", 8000)),
        13 => Some(("CN", 8000)),
        18 => Some(("G729", 8000)),
        _ => None,
    }
}

/// A session description: its lines, kept as written, and what the switch reads from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    lines: Vec<String>,
}

fn connection_addr(value: &str) -> Option<IpAddr> {
    // c=IN IP4 192.0.2.1[/ttl[/n]]
    let mut parts = value.split_whitespace();
    if parts.next()? != "IN" {
        return None;
    }
    let family = parts.next()?;
    let addr = parts.next()?.split('/').next()?;
    let ip: IpAddr = addr.parse().ok()?;
    match (family, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Some(ip),
        _ => None,
    }
}

impl Sdp {
    /// Reads a description. Lines may end in CRLF or LF; empty lines are ignored.
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
        let lines: Vec<String> = text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        for (i, l) in lines.iter().enumerate() {
            let b = l.as_bytes();
            if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
                return Err(SdpError::Line(i + 1));
            }
        }
        let kinds: Vec<u8> = lines.iter().map(|l| l.as_bytes()[0]).collect();
        if kinds.first() != Some(&b'v') {
            return Err(SdpError::Missing('v'));
        }
        if !kinds.contains(&b'o') {
            return Err(SdpError::Missing('o'));
        }
        if !kinds.contains(&b's') {
            return Err(SdpError::Missing('s'));
        }
        Ok(Sdp { lines })
    }

    /// The description as text, CRLF line ends.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.lines.iter().map(|l| l.len() + 2).sum());
        for l in &self.lines {
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Index of the first `m=audio` line, and the end of its section.
    fn audio_section(&self) -> Option<(usize, usize)> {
        let start = self.lines.iter().position(|l| l.starts_with("m=audio "))?;
        let end = self.lines[start + 1..]
            .iter()
            .position(|l| l.starts_with("m="))
            .map_or(self.lines.len(), |i| start + 1 + i);
        Some((start, end))
    }

    /// The first audio stream.
    pub fn audio(&self) -> Result<Option<Audio>, SdpError> {
        let Some((start, end)) = self.audio_section() else {
            return Ok(None);
        };
        let first_media = self
            .lines
            .iter()
            .position(|l| l.starts_with("m="))
            .unwrap_or(self.lines.len());
        let session_c = self.lines[..first_media]
            .iter()
            .find_map(|l| l.strip_prefix("c="));
        let media_c = self.lines[start..end]
            .iter()
            .find_map(|l| l.strip_prefix("c="));
        let ip = match media_c.or(session_c) {
            Some(c) => Some(connection_addr(c).ok_or(SdpError::Field('c'))?),
            None => None,
        };
        // m=audio <port>[/n] <proto> <fmt> ...
        let m = &self.lines[start][2..];
        let mut parts = m.split_whitespace();
        parts.next();
        let port: u16 = parts
            .next()
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse().ok())
            .ok_or(SdpError::Field('m'))?;
        let proto = parts.next().ok_or(SdpError::Field('m'))?.to_string();
        let pts: Vec<u8> = parts.filter_map(|p| p.parse().ok()).collect();
        let section = &self.lines[start + 1..end];
        let attr = |name: &str| {
            section
                .iter()
                .chain(self.lines[..first_media].iter())
                .any(|l| l.strip_prefix("a=") == Some(name))
        };
        let direction = if attr("inactive") {
            Direction::Inactive
        } else if attr("sendonly") {
            Direction::SendOnly
        } else if attr("recvonly") {
            Direction::RecvOnly
        } else {
            Direction::SendRecv
        };
        let formats = pts
            .iter()
            .filter_map(|&pt| {
                let rtpmap = section.iter().find_map(|l| {
                    let v = l.strip_prefix("a=rtpmap:")?;
                    let (n, rest) = v.split_once(' ')?;
                    (n.parse::<u8>().ok()? == pt).then_some(rest)
                });
                match rtpmap {
                    Some(r) => {
                        let mut it = r.split('/');
                        let name = it.next()?.to_string();
                        let clock = it.next()?.parse().ok()?;
                        Some(Format { pt, name, clock })
                    }
                    None => static_format(pt).map(|(n, c)| Format {
                        pt,
                        name: n.to_string(),
                        clock: c,
                    }),
                }
            })
            .collect();
        Ok(Some(Audio {
            target: match (ip, port) {
                (Some(ip), p) if p != 0 && !ip.is_unspecified() => Some(SocketAddr::new(ip, p)),
                _ => None,
            },
            formats,
            direction,
            rtcp_mux: section.iter().any(|l| l == "a=rtcp-mux"),
            proto,
            crypto: section
                .iter()
                .filter_map(|l| l.strip_prefix("a=crypto:"))
                .map(|v| v.trim().to_string())
                .collect(),
        }))
    }

    /// Points the first audio stream at `ip:port` (the switch's anchor): every `c=` line
    /// names `ip`, `m=audio` names `port`, `a=rtcp:` lines are dropped (RTCP goes to
    /// `port + 1`, or to `port` with rtcp-mux), ICE candidates of the peer are dropped (they
    /// are not ours to offer), and the origin version is increased.
    pub fn anchor(&mut self, ip: IpAddr, port: u16) {
        let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
        let Some((start, _)) = self.audio_section() else {
            return;
        };
        let mut out = Vec::with_capacity(self.lines.len());
        for (i, l) in self.lines.iter().enumerate() {
            if l.starts_with("c=") {
                out.push(format!("c=IN {family} {ip}"));
            } else if i == start {
                let rest: Vec<&str> = l[2..].split_whitespace().skip(2).collect();
                out.push(format!("m=audio {port} {}", rest.join(" ")));
            } else if l.starts_with("a=rtcp:") || l.starts_with("a=candidate:") {
                continue;
            } else if let Some(o) = l.strip_prefix("o=") {
                // o=<user> <sess-id> <sess-version> IN IP4 <addr>
                let f: Vec<&str> = o.split_whitespace().collect();
                if f.len() == 6 {
                    let version = f[2].parse::<u64>().map_or(1, |v| v.wrapping_add(1));
                    out.push(format!("o={} {} {version} IN {family} {ip}", f[0], f[1]));
                } else {
                    out.push(l.clone());
                }
            } else {
                out.push(l.clone());
            }
        }
        self.lines = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\n\
        c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=rtcp:49171\r\n\
        a=sendrecv\r\nm=video 0 RTP/AVP 31\r\n";

    #[test]
    fn an_sdes_stream_names_its_protocol_and_its_keys_in_order() {
        let sdes = "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\n\
            t=0 0\r\nm=audio 3480 RTP/SAVP 111 126\r\na=rtpmap:111 opus/48000/2\r\n\
            a=rtpmap:126 telephone-event/8000\r\n\
            a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
            a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";
        let audio = Sdp::parse(sdes.as_bytes())
            .expect("parses")
            .audio()
            .expect("audio")
            .expect("a stream");
        assert!(audio.sdes());
        assert_eq!(audio.proto, "RTP/SAVP");
        assert_eq!(audio.crypto.len(), 2);
        assert!(audio.crypto[0].starts_with("1 AES_CM_128_HMAC_SHA1_80 inline:"));
        let plain = Sdp::parse(OFFER.as_bytes())
            .expect("parses")
            .audio()
            .expect("a")
            .expect("s");
        assert!(!plain.sdes());
        assert!(plain.crypto.is_empty());
    }

    #[test]
    fn reads_the_audio_stream() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let audio = sdp.audio().unwrap().unwrap();
        assert_eq!(audio.target, Some("192.0.2.10:49170".parse().unwrap()));
        let names: Vec<_> = audio
            .formats
            .iter()
            .map(|f| (f.pt, f.name.as_str(), f.clock))
            .collect();
        assert_eq!(
            names,
            [
                (0, "PCMU", 8000),
                (8, "PCMA", 8000),
                (101, "telephone-event", 8000)
            ]
        );
        assert_eq!(audio.codec().map(|c| c.pt), Some(0));
        assert_eq!(audio.telephone_event(), Some(101));
        assert_eq!(audio.telephone_event_format().map(|f| f.clock), Some(8000));
        assert_eq!(audio.direction, Direction::SendRecv);
        assert!(!audio.rtcp_mux);
    }

    #[test]
    fn anchoring_rewrites_address_port_and_version_and_keeps_the_rest() {
        let mut sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        sdp.anchor("127.0.0.1".parse().unwrap(), 20000);
        let text = String::from_utf8(sdp.to_bytes()).unwrap();
        assert!(
            text.contains("o=alice 2890844526 2890844527 IN IP4 127.0.0.1\r\n"),
            "{text}"
        );
        assert!(text.contains("c=IN IP4 127.0.0.1\r\n"));
        assert!(text.contains("m=audio 20000 RTP/AVP 0 8 101\r\n"));
        assert!(text.contains("a=fmtp:101 0-15\r\n"));
        assert!(!text.contains("a=rtcp:"));
        assert!(
            text.contains("m=video 0 RTP/AVP 31\r\n"),
            "other streams untouched"
        );
        let again = Sdp::parse(text.as_bytes())
            .unwrap()
            .audio()
            .unwrap()
            .unwrap();
        assert_eq!(again.target, Some("127.0.0.1:20000".parse().unwrap()));
    }

    #[test]
    fn hold_and_disabled_streams_are_told_apart() {
        let hold = OFFER.replace("a=sendrecv", "a=sendonly");
        let a = Sdp::parse(hold.as_bytes())
            .unwrap()
            .audio()
            .unwrap()
            .unwrap();
        assert_eq!(a.direction, Direction::SendOnly);
        let old_hold = OFFER.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0");
        let a = Sdp::parse(old_hold.as_bytes())
            .unwrap()
            .audio()
            .unwrap()
            .unwrap();
        assert_eq!(a.target, None);
        let disabled = OFFER.replace("m=audio 49170", "m=audio 0");
        let a = Sdp::parse(disabled.as_bytes())
            .unwrap()
            .audio()
            .unwrap()
            .unwrap();
        assert_eq!(a.target, None);
    }

    #[test]
    fn broken_descriptions_are_refused() {
        assert_eq!(Sdp::parse(b"o=x\r\n"), Err(SdpError::Missing('v')));
        assert_eq!(Sdp::parse(b"v=0\r\nhello\r\n"), Err(SdpError::Line(2)));
        assert_eq!(Sdp::parse(b"v=0\r\ns=-\r\n"), Err(SdpError::Missing('o')));
        let bad_c = OFFER.replace("c=IN IP4 192.0.2.10", "c=IN IP4 nowhere");
        assert_eq!(
            Sdp::parse(bad_c.as_bytes()).unwrap().audio(),
            Err(SdpError::Field('c'))
        );
        assert_eq!(Sdp::parse(&[0xff, 0xfe]), Err(SdpError::NotText));
    }

    #[test]
    fn a_description_without_audio_has_none() {
        let sdp = Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n").unwrap();
        assert_eq!(sdp.audio(), Ok(None));
    }
}

/// A description of one SDES-SRTP audio stream (RFC 4568): `RTP/SAVP` at `ip:port`
/// with `formats` (in order; Opus gets its usual parameters, telephone-event its 0-15) and
/// the `a=crypto` value `crypto` (`<tag> <suite> inline:<key>`); `rtcp_mux` when the peer
/// multiplexes RTCP. No ICE and no DTLS: the keys travel in the SDP, over TLS signalling.
pub fn sdes_description(
    ip: IpAddr,
    port: u16,
    session: u64,
    formats: &[Format],
    crypto: &str,
    rtcp_mux: bool,
) -> String {
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let pts: Vec<String> = formats.iter().map(|f| f.pt.to_string()).collect();
    let mut sdp = format!(
        "v=0\r\no=waswitch {session} 1 IN {family} {ip}\r\ns=waswitch\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/SAVP {}\r\n",
        pts.join(" ")
    );
    for f in formats {
        if f.name.eq_ignore_ascii_case("opus") {
            sdp.push_str(&format!(
                "a=rtpmap:{pt} opus/{clock}/2\r\na=fmtp:{pt} minptime=10;useinbandfec=1\r\n",
                pt = f.pt,
                clock = f.clock
            ));
        } else if f.name.eq_ignore_ascii_case("telephone-event") {
            sdp.push_str(&format!(
                "a=rtpmap:{pt} telephone-event/{clock}\r\na=fmtp:{pt} 0-15\r\n",
                pt = f.pt,
                clock = f.clock
            ));
        } else {
            sdp.push_str(&format!("a=rtpmap:{} {}/{}\r\n", f.pt, f.name, f.clock));
        }
    }
    sdp.push_str(&format!("a=crypto:{crypto}\r\n"));
    if rtcp_mux {
        sdp.push_str("a=rtcp-mux\r\n");
    }
    sdp.push_str("a=ptime:20\r\na=sendrecv\r\n");
    sdp
}

/// How a call's media crosses the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPlan {
    /// Codec and payload type on the offering side.
    pub offerer: Format,
    /// Codec and payload type on the answering side.
    pub answerer: Format,
}

impl MediaPlan {
    /// Whether the switch transcodes.
    pub fn transcodes(&self) -> bool {
        !self.offerer.name.eq_ignore_ascii_case(&self.answerer.name)
            || self.offerer.clock != self.answerer.clock
    }

    /// One line for logs, snapshots and CDRs: `PCMU pass-through` or `opus <-> PCMA
    /// (transcoded)`.
    pub fn summary(&self) -> String {
        if self.transcodes() {
            format!(
                "{} <-> {} (transcoded)",
                self.offerer.name, self.answerer.name
            )
        } else {
            format!("{} pass-through", self.offerer.name)
        }
    }
}

/// The cheapest way to connect an offer with a side that speaks `answerer` (its formats in
/// its order of preference): the first codec of the offer the answerer also speaks is
/// relayed untouched; only when they share none is one transcoded, into the answerer's
/// first codec the switch can transcode (`can_transcode`). `None`: no way at all.
pub fn plan(
    offer: &[Format],
    answerer: &[Format],
    can_transcode: impl Fn(&str) -> bool,
) -> Option<MediaPlan> {
    let audio = |f: &&Format| {
        !f.name.eq_ignore_ascii_case("telephone-event") && !f.name.eq_ignore_ascii_case("CN")
    };
    let same = |a: &Format, b: &Format| a.name.eq_ignore_ascii_case(&b.name) && a.clock == b.clock;
    for o in offer.iter().filter(audio) {
        if let Some(a) = answerer.iter().filter(audio).find(|a| same(o, a)) {
            return Some(MediaPlan {
                offerer: o.clone(),
                answerer: a.clone(),
            });
        }
    }
    let o = offer
        .iter()
        .filter(audio)
        .find(|f| can_transcode(&f.name))?;
    let a = answerer
        .iter()
        .filter(audio)
        .find(|f| can_transcode(&f.name))?;
    Some(MediaPlan {
        offerer: o.clone(),
        answerer: a.clone(),
    })
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    fn f(pt: u8, name: &str, clock: u32) -> Format {
        Format {
            pt,
            name: name.into(),
            clock,
        }
    }

    fn g711_or_opus(name: &str) -> bool {
        ["PCMU", "PCMA", "opus"]
            .iter()
            .any(|c| c.eq_ignore_ascii_case(name))
    }

    #[test]
    fn a_shared_codec_is_relayed_untouched_before_anything_is_transcoded() {
        let whatsapp = [
            f(111, "opus", 48_000),
            f(0, "PCMU", 8000),
            f(126, "telephone-event", 8000),
        ];
        let pbx = [f(8, "PCMA", 8000), f(0, "PCMU", 8000)];
        let p = plan(&whatsapp, &pbx, g711_or_opus).unwrap();
        assert!(!p.transcodes());
        assert_eq!((p.offerer.pt, p.answerer.pt), (0, 0));
        assert_eq!(p.summary(), "PCMU pass-through");
        let opus_both = plan(&whatsapp, &[f(96, "OPUS", 48_000)], g711_or_opus).unwrap();
        assert_eq!(opus_both.summary(), "opus pass-through");
    }

    #[test]
    fn without_a_shared_codec_one_is_transcoded() {
        let whatsapp = [f(111, "opus", 48_000), f(126, "telephone-event", 48_000)];
        let pbx = [f(18, "G729", 8000), f(8, "PCMA", 8000)];
        let p = plan(&whatsapp, &pbx, g711_or_opus).unwrap();
        assert!(p.transcodes());
        assert_eq!((p.offerer.pt, p.answerer.pt), (111, 8));
        assert_eq!(p.summary(), "opus <-> PCMA (transcoded)");
        assert_eq!(plan(&whatsapp, &[f(18, "G729", 8000)], g711_or_opus), None);
    }
}
