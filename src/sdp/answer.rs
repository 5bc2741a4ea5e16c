//! Answering a later offer from our own description (RFC 3264 §6, §8): what a side of the
//! switch that is not a SIP peer (the WhatsApp leg, the switch placing a call) says when the
//! far side re-offers (hold, resume, a codec change).
//!
//! The answer is our description narrowed to the offer: the same `m=` lines as the offer
//! and in its order (streams we do not take are refused with port 0), one codec (the
//! offer's first that we also listed, under the offer's payload type) and the offer's
//! telephone-event when we listed one too, the direction mirrored, and our address, port
//! and other attributes kept. An offer sharing no codec with us, or asking for another
//! transport, is not acceptable (the caller answers 488 and the session stays as it was).

use super::{Direction, Format, Sdp, SdpError};

/// Why a later offer cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAcceptable {
    /// A description that could not be read.
    #[error("unreadable SDP: {0}")]
    Unreadable(#[from] SdpError),
    /// The offer has no audio stream.
    #[error("the offer has no audio stream")]
    NoAudio,
    /// The offer's audio uses another transport than ours (`RTP/SAVP` against `RTP/AVP`).
    #[error("the offer's transport {theirs} is not ours ({ours})")]
    Transport {
        /// The offer's `m=` protocol.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// None of the offer's codecs is one we listed.
    #[error("the offer shares no codec with us")]
    NoCodec,
}

fn same(a: &Format, b: &Format) -> bool {
    a.name.eq_ignore_ascii_case(&b.name) && a.clock == b.clock
}

fn is_dtmf(f: &Format) -> bool {
    f.name.eq_ignore_ascii_case("telephone-event")
}

fn is_codec(f: &Format) -> bool {
    !is_dtmf(f) && !f.name.eq_ignore_ascii_case("CN")
}

/// The attribute name of an `a=` line (`rtpmap` for `a=rtpmap:0 PCMU/8000`).
fn attribute(line: &str) -> Option<&str> {
    let a = line.strip_prefix("a=")?;
    Some(a.split_once(':').map_or(a, |(name, _)| name))
}

/// The payload type an `a=rtpmap:`/`a=fmtp:` line is about, and the rest of the line.
fn about_pt<'a>(line: &'a str, attr: &str) -> Option<(u8, &'a str)> {
    let v = line
        .strip_prefix("a=")?
        .strip_prefix(attr)?
        .strip_prefix(':')?;
    let (pt, rest) = v.split_once(' ')?;
    Some((pt.parse().ok()?, rest))
}

impl Sdp {
    /// The origin's session version (`o=` third field), if readable.
    pub fn version(&self) -> Option<u64> {
        let o = self.lines.iter().find_map(|l| l.strip_prefix("o="))?;
        o.split_whitespace().nth(2)?.parse().ok()
    }

    /// Sets the origin's session version.
    pub fn set_version(&mut self, version: u64) {
        for l in &mut self.lines {
            if let Some(o) = l.strip_prefix("o=") {
                let mut f: Vec<String> = o.split_whitespace().map(str::to_string).collect();
                if f.len() == 6 {
                    f[2] = version.to_string();
                    *l = format!("o={}", f.join(" "));
                }
                return;
            }
        }
    }

    /// Whether two descriptions say the same thing, their origin versions aside.
    pub fn same_content(&self, other: &Sdp) -> bool {
        let content = |s: &Sdp| -> Vec<String> {
            s.lines
                .iter()
                .filter(|l| !l.starts_with("o="))
                .cloned()
                .collect()
        };
        content(self) == content(other)
    }

    /// Our answer to `offer`, from this description of ours (see the module doc). The
    /// origin version is left as ours; the caller moves it on when the answer differs from
    /// what it said last.
    pub fn answer(&self, offer: &Sdp) -> Result<Sdp, NotAcceptable> {
        let theirs = offer.audio()?.ok_or(NotAcceptable::NoAudio)?;
        let ours = self.audio()?.ok_or(NotAcceptable::NoAudio)?;
        let (our_start, our_end) = self.audio_section().ok_or(NotAcceptable::NoAudio)?;
        let (their_start, _) = offer.audio_section().ok_or(NotAcceptable::NoAudio)?;
        let disabled = offer.lines[their_start]
            .split_whitespace()
            .nth(1)
            .is_some_and(|p| p.split('/').next() == Some("0"));
        if theirs.proto != ours.proto {
            return Err(NotAcceptable::Transport {
                theirs: theirs.proto,
                ours: ours.proto,
            });
        }
        // The codec: the offer's first that we listed, under the offer's payload type.
        let codec = theirs
            .formats
            .iter()
            .filter(|f| is_codec(f))
            .find_map(|t| ours.formats.iter().find(|o| same(t, o)).map(|o| (t, o)));
        let Some((codec, our_codec)) = codec else {
            return Err(NotAcceptable::NoCodec);
        };
        let mut chosen = vec![(codec.clone(), our_codec.pt)];
        if let Some(our_dtmf) = ours.formats.iter().find(|f| is_dtmf(f)) {
            let dtmf = theirs
                .formats
                .iter()
                .filter(|f| is_dtmf(f))
                .min_by_key(|f| f.clock.abs_diff(codec.clock));
            if let Some(d) = dtmf {
                chosen.push((d.clone(), our_dtmf.pt));
            }
        }
        let mirrored = match theirs.direction {
            Direction::SendRecv => "a=sendrecv",
            Direction::SendOnly => "a=recvonly",
            Direction::RecvOnly => "a=sendonly",
            Direction::Inactive => "a=inactive",
        };

        let first_media = |s: &Sdp| {
            s.lines
                .iter()
                .position(|l| l.starts_with("m="))
                .unwrap_or(s.lines.len())
        };
        let direction_attr =
            |l: &str| matches!(l, "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive");
        let mut lines: Vec<String> = self.lines[..first_media(self)]
            .iter()
            .filter(|l| !direction_attr(l))
            .cloned()
            .collect();

        let mut audio_done = false;
        for (i, m) in offer.lines.iter().enumerate().skip(first_media(offer)) {
            if !m.starts_with("m=") {
                continue;
            }
            let mut f = m[2..].split_whitespace();
            let media = f.next().unwrap_or("audio");
            let _port = f.next();
            let proto = f.next().unwrap_or("RTP/AVP");
            let first_fmt = f.next().unwrap_or("0");
            if i != their_start || audio_done {
                // A stream we do not take: refused (RFC 3264 §6).
                lines.push(format!("m={media} 0 {proto} {first_fmt}"));
                continue;
            }
            audio_done = true;
            let our_m = &self.lines[our_start];
            let our_port = our_m.split_whitespace().nth(1).unwrap_or("0");
            if disabled {
                lines.push(format!("m=audio 0 {proto} {first_fmt}"));
                continue;
            }
            let pts: Vec<String> = chosen.iter().map(|(t, _)| t.pt.to_string()).collect();
            lines.push(format!("m=audio {our_port} {proto} {}", pts.join(" ")));
            for l in &self.lines[our_start + 1..our_end] {
                match attribute(l) {
                    Some("rtpmap" | "fmtp") => {}
                    Some("rtcp-mux") if !theirs.rtcp_mux => {}
                    _ if direction_attr(l) => {}
                    _ => lines.push(l.clone()),
                }
            }
            for (t, our_pt) in &chosen {
                // The offer's own rtpmap (its spelling, its channels), or ours renumbered.
                let rtpmap = offer.lines[their_start + 1..]
                    .iter()
                    .take_while(|l| !l.starts_with("m="))
                    .find_map(|l| about_pt(l, "rtpmap").filter(|(pt, _)| *pt == t.pt))
                    .map(|(_, rest)| rest.to_string())
                    .or_else(|| {
                        self.lines[our_start + 1..our_end]
                            .iter()
                            .find_map(|l| about_pt(l, "rtpmap").filter(|(pt, _)| pt == our_pt))
                            .map(|(_, rest)| rest.to_string())
                    });
                if let Some(r) = rtpmap {
                    lines.push(format!("a=rtpmap:{} {r}", t.pt));
                }
                let fmtp = self.lines[our_start + 1..our_end]
                    .iter()
                    .find_map(|l| about_pt(l, "fmtp").filter(|(pt, _)| pt == our_pt));
                if let Some((_, params)) = fmtp {
                    lines.push(format!("a=fmtp:{} {params}", t.pt));
                }
            }
            lines.push(mirrored.to_string());
        }
        Ok(Sdp { lines })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the switch offered a PBX for a WhatsApp call.
    const OURS: &str = "v=0\r\no=waswitch 7 1 IN IP4 127.0.0.1\r\ns=waswitch\r\n\
        c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 111 0 8 101\r\n\
        a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
        a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n";

    fn text(sdp: &Sdp) -> String {
        String::from_utf8(sdp.to_bytes()).expect("text")
    }

    fn answer(offer: &str) -> Result<String, NotAcceptable> {
        let ours = Sdp::parse(OURS.as_bytes()).expect("ours");
        let offer = Sdp::parse(offer.as_bytes()).expect("offer");
        ours.answer(&offer).map(|a| text(&a))
    }

    #[test]
    fn a_hold_is_answered_with_one_codec_under_the_offers_numbers_and_recvonly() {
        let hold = "v=0\r\no=pbx 5 6 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\n\
            t=0 0\r\nm=audio 30000 RTP/AVP 18 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\n\
            a=fmtp:96 0-16\r\na=sendonly\r\n";
        let a = answer(hold).expect("acceptable");
        assert!(a.contains("m=audio 40000 RTP/AVP 8 96\r\n"), "{a}");
        assert!(a.contains("a=rtpmap:8 PCMA/8000\r\n"), "{a}");
        assert!(a.contains("a=rtpmap:96 telephone-event/8000\r\n"), "{a}");
        assert!(a.contains("a=fmtp:96 0-15\r\n"), "our own DTMF range: {a}");
        assert!(
            a.contains("a=recvonly\r\n") && !a.contains("a=sendrecv"),
            "{a}"
        );
        assert!(!a.contains("opus") && !a.contains("PCMU"), "narrowed: {a}");
        assert!(a.contains("c=IN IP4 127.0.0.1\r\n") && a.contains("a=ptime:20\r\n"));
        let parsed = Sdp::parse(a.as_bytes())
            .expect("parses")
            .audio()
            .expect("a");
        let audio = parsed.expect("audio");
        assert_eq!(audio.direction, Direction::RecvOnly);
        assert_eq!(audio.codec().map(|c| c.pt), Some(8));
    }

    #[test]
    fn every_direction_is_mirrored() {
        let base = "v=0\r\no=pbx 5 6 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\n\
            t=0 0\r\nm=audio 30000 RTP/AVP 0\r\n";
        for (theirs, ours) in [
            ("a=sendonly", "a=recvonly"),
            ("a=recvonly", "a=sendonly"),
            ("a=inactive", "a=inactive"),
            ("a=sendrecv", "a=sendrecv"),
            ("", "a=sendrecv"),
        ] {
            let offer = format!("{base}{theirs}\r\n");
            let a = answer(&offer).expect("acceptable");
            assert!(a.ends_with(&format!("{ours}\r\n")), "{theirs}: {a}");
        }
    }

    #[test]
    fn an_opus_offer_keeps_our_parameters_under_its_payload_type() {
        let offer = "v=0\r\no=pbx 5 6 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\n\
            t=0 0\r\nm=audio 30000 RTP/AVP 96 0\r\na=rtpmap:96 OPUS/48000/2\r\n";
        let a = answer(offer).expect("acceptable");
        assert!(
            a.contains("m=audio 40000 RTP/AVP 96\r\n"),
            "no DTMF offered: {a}"
        );
        assert!(a.contains("a=rtpmap:96 OPUS/48000/2\r\n"), "{a}");
        assert!(
            a.contains("a=fmtp:96 minptime=10;useinbandfec=1\r\n"),
            "{a}"
        );
    }

    #[test]
    fn other_streams_are_refused_in_the_offers_order() {
        let offer = "v=0\r\no=pbx 5 6 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\n\
            t=0 0\r\nm=video 30002 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n\
            m=audio 30000 RTP/AVP 0\r\nm=audio 30004 RTP/AVP 8\r\n";
        let a = answer(offer).expect("acceptable");
        let m: Vec<&str> = a.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m,
            [
                "m=video 0 RTP/AVP 97",
                "m=audio 40000 RTP/AVP 0",
                "m=audio 0 RTP/AVP 8"
            ]
        );
    }

    #[test]
    fn a_disabled_stream_is_answered_disabled() {
        let offer = "v=0\r\no=pbx 5 6 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\n\
            t=0 0\r\nm=audio 0 RTP/AVP 0\r\n";
        let a = answer(offer).expect("acceptable");
        assert!(a.contains("m=audio 0 RTP/AVP 0\r\n"), "{a}");
    }

    #[test]
    fn offers_we_cannot_take_are_not_acceptable() {
        let g729 = "v=0\r\no=pbx 5 6 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\n\
            t=0 0\r\nm=audio 30000 RTP/AVP 18 101\r\na=rtpmap:101 telephone-event/8000\r\n";
        assert_eq!(answer(g729), Err(NotAcceptable::NoCodec));
        let srtp = "v=0\r\no=pbx 5 6 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\n\
            t=0 0\r\nm=audio 30000 RTP/SAVP 0\r\n";
        assert!(matches!(answer(srtp), Err(NotAcceptable::Transport { .. })));
        let video = "v=0\r\no=pbx 5 6 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\n\
            t=0 0\r\nm=video 30000 RTP/AVP 97\r\n";
        assert_eq!(answer(video), Err(NotAcceptable::NoAudio));
    }

    #[test]
    fn versions_are_read_and_set_and_content_compared_without_them() {
        let mut a = Sdp::parse(OURS.as_bytes()).expect("ours");
        assert_eq!(a.version(), Some(1));
        let before = a.clone();
        a.set_version(9);
        assert_eq!(a.version(), Some(9));
        assert!(text(&a).contains("o=waswitch 7 9 IN IP4 127.0.0.1\r\n"));
        assert!(a.same_content(&before));
        assert_ne!(a, before);
    }
}
