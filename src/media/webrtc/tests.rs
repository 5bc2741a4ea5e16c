use std::net::UdpSocket;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::*;

fn metas_offer() -> String {
    let body = std::fs::read(format!(
        "{}/tests/data/meta/real-capture_calls-connect_user-initiated_sdp-offer_2025-10-17.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    v.pointer("/entry/0/changes/0/value/calls/0/session/sdp")
        .and_then(serde_json::Value::as_str)
        .expect("sdp")
        .to_string()
}

#[test]
fn metas_real_offer_is_read() {
    let d = PeerDescription::parse(&metas_offer()).expect("readable");
    assert!(d.ice_lite);
    assert_eq!(
        (d.opus_pt, d.dtmf_pt, d.ssrc),
        (111, Some(126), Some(1_047_224_411))
    );
    assert_eq!((d.setup.as_str(), d.mid.as_str()), ("actpass", "audio"));
    assert_eq!(
        d.candidates.len(),
        2,
        "one IPv4 and one IPv6 host candidate"
    );
    assert!(d.fingerprint.starts_with("sha-256 A2:EC:"));
    assert!(matches!(
        PeerDescription::parse("v=0\r\nm=audio 9 RTP/AVP 0\r\n"),
        Err(WebRtcError::Sdp(_))
    ));
}

#[test]
fn our_answer_to_meta_is_active_controlling_and_carries_dtmf() {
    let leg = WebRtcLeg::accept_offer(
        &metas_offer(),
        "127.0.0.1:40000".parse().unwrap(),
        Instant::now(),
    )
    .expect("answer");
    let answer = leg.local_sdp();
    for line in [
        "m=audio 40000 UDP/TLS/RTP/SAVPF 111 126\r\n",
        "a=setup:active\r\n",
        "a=rtpmap:126 telephone-event/8000\r\n",
        "a=rtcp-mux\r\n",
        "a=mid:audio\r\n",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n",
        "a=ptime:20\r\n",
    ] {
        assert!(answer.contains(line), "missing {line:?} in\n{answer}");
    }
    assert!(answer.contains("a=fingerprint:sha-256 "));
    assert_eq!(answer.matches("a=ssrc:").count(), 1, "a single SSRC");
    assert!(!answer.contains('\n') || answer.split("\r\n").all(|l| !l.contains('\n')));
    // It reads back as a WebRTC description.
    let back = PeerDescription::parse(answer).expect("our answer is readable");
    assert_eq!(back.setup, "active");
}

/// A str0m peer playing Meta's part: ICE-lite, offering Opus, DTLS `actpass`.
struct Meta {
    rtc: Rtc,
    socket: UdpSocket,
    connected: bool,
    rtp: Vec<(u8, u16)>,
}

impl Meta {
    fn poll(&mut self) -> Instant {
        loop {
            match self.rtc.poll_output().expect("meta output") {
                Output::Timeout(t) => return t,
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::RtpPacket(p)) => self
                    .rtp
                    .push((*p.header.payload_type, p.header.sequence_number)),
                Output::Event(_) => {}
            }
        }
    }
}

/// Drives our leg and the str0m peer over their loopback sockets until both have received
/// ten packets of the other's audio (or 10 s pass). Returns whether our leg connected, how
/// long connecting took, and what it received.
fn exchange(
    leg: &mut WebRtcLeg,
    our_socket: &UdpSocket,
    meta: &mut Meta,
    mid: Mid,
) -> (bool, Option<Duration>, Vec<(u8, u16)>) {
    let started = Instant::now();
    let mut connected_after = None;
    let mut ours_connected = false;
    let mut got = Vec::new();
    let mut sent = 0u64;
    let mut meta_sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline && (got.len() < 10 || meta.rtp.len() < 10) {
        let now = Instant::now();
        loop {
            match leg.poll().expect("poll") {
                LegOutput::Timeout(_) => break,
                LegOutput::Transmit { to, data } => {
                    let _ = our_socket.send_to(&data, to);
                }
                LegOutput::Connected => {
                    ours_connected = true;
                    connected_after.get_or_insert(started.elapsed());
                }
                LegOutput::Rtp { pt, seq, .. } => got.push((pt, seq)),
                LegOutput::Disconnected => panic!("ICE failed"),
            }
        }
        meta.poll();
        while let Ok((n, from)) = our_socket.recv_from(&mut buf) {
            leg.handle_receive(Instant::now(), from, &buf[..n])
                .expect("input");
        }
        while let Ok((n, from)) = meta.socket.recv_from(&mut buf) {
            let input = Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source: from,
                    destination: meta.socket.local_addr().expect("addr"),
                    contents: (&buf[..n]).try_into().expect("datagram"),
                },
            );
            meta.rtc.handle_input(input).expect("meta input");
        }
        leg.handle_timeout(now).expect("timeout");
        meta.rtc
            .handle_input(Input::Timeout(now))
            .expect("meta timeout");
        if ours_connected && meta.connected {
            // 20 ms of Opus-shaped payload each way per turn.
            if sent < 10 {
                leg.send_rtp(
                    now,
                    OPUS_PT,
                    100 + sent,
                    960 * sent as u32,
                    sent == 0,
                    &[0xf8, 0xff, 0xfe],
                )
                .expect("send");
                sent += 1;
            }
            if meta_sent < 10 {
                let mut api = meta.rtc.direct_api();
                if let Some(tx) = api.stream_tx_by_mid(mid, None) {
                    tx.write_rtp(RtpWrite::new(
                        111.into(),
                        (500 + meta_sent).into(),
                        960 * meta_sent as u32,
                        now,
                        &[0xf8, 0xff, 0xfe][..],
                    ));
                    meta_sent += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (ours_connected, connected_after, got)
}

fn sockets() -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for s in [&a, &b] {
        s.set_nonblocking(true).expect("nonblocking");
    }
    (a, b)
}

#[test]
fn a_leg_connects_to_an_ice_lite_peer_and_audio_flows_both_ways() {
    let now = Instant::now();
    let (meta_socket, our_socket) = sockets();
    let mut meta_rtc = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true)
        .build(now);
    meta_rtc.add_local_candidate(
        Candidate::host(meta_socket.local_addr().expect("addr"), "udp").expect("candidate"),
    );
    let mut change = meta_rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = change.apply().expect("offer");
    let offer_text = offer.to_sdp_string();
    assert!(offer_text.contains("a=ice-lite"));
    // Like Meta, put an IPv6 candidate first, preferred: a leg on IPv4 must not wait on it.
    let offer_text = offer_text.replacen(
        "a=candidate:",
        "a=candidate:9 1 udp 2122262783 2001:db8::1 3484 typ host\r\na=candidate:",
        1,
    );

    let mut leg = WebRtcLeg::accept_offer(&offer_text, our_socket.local_addr().expect("addr"), now)
        .expect("answer");
    let answer = SdpAnswer::from_sdp_string(leg.local_sdp()).expect("str0m reads our answer");
    meta_rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");
    let mut meta = Meta {
        rtc: meta_rtc,
        socket: meta_socket,
        connected: false,
        rtp: Vec::new(),
    };
    let (connected, after, got) = exchange(&mut leg, &our_socket, &mut meta, mid);
    assert!(connected && meta.connected, "ICE and DTLS completed");
    assert!(
        after.is_some_and(|d| d < Duration::from_secs(2)),
        "no wait on IPv6: {after:?}"
    );
    assert_eq!(
        meta.rtp.len(),
        10,
        "our audio reached the peer: {:?}",
        meta.rtp
    );
    assert!(meta.rtp.iter().all(|(pt, _)| *pt == 111));
    assert_eq!(got.len(), 10, "the peer's audio reached us: {got:?}");
    assert_eq!(got[0], (111, 500));
}

#[test]
fn our_offer_is_answered_by_a_full_ice_peer_and_audio_flows_both_ways() {
    let now = Instant::now();
    let (peer_socket, our_socket) = sockets();
    let mut leg = WebRtcLeg::offer(our_socket.local_addr().expect("addr"), now).expect("offer");
    let offer = leg.local_sdp().to_string();
    for line in [
        "a=setup:actpass\r\n",
        "m=audio ",
        " 111 126\r\n",
        "a=rtpmap:126 telephone-event/8000\r\n",
    ] {
        assert!(offer.contains(line), "missing {line:?} in\n{offer}");
    }
    let mut peer_rtc = RtcConfig::new()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true)
        .build(now);
    peer_rtc.add_local_candidate(
        Candidate::host(peer_socket.local_addr().expect("addr"), "udp").expect("candidate"),
    );
    let answer = peer_rtc
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&offer).expect("str0m reads our offer"))
        .expect("answer");
    leg.accept_answer(&answer.to_sdp_string())
        .expect("answer applied");
    let mut meta = Meta {
        rtc: peer_rtc,
        socket: peer_socket,
        connected: false,
        rtp: Vec::new(),
    };
    let (connected, _, got) = exchange(&mut leg, &our_socket, &mut meta, "audio".into());
    assert!(connected && meta.connected, "ICE and DTLS completed");
    assert_eq!(meta.rtp.len(), 10, "{:?}", meta.rtp);
    assert_eq!(got.len(), 10, "{got:?}");
    // An answer that moves Opus elsewhere is refused.
    let mut other = WebRtcLeg::offer(our_socket.local_addr().expect("addr"), now).expect("offer");
    let moved = answer.to_sdp_string().replace("111", "109");
    assert!(matches!(
        other.accept_answer(&moved),
        Err(WebRtcError::Sdp(_))
    ));
}
