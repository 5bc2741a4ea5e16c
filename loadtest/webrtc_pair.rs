//! One of our WebRTC legs connected to a str0m peer configured as Meta is (ICE-lite, DTLS
//! `actpass`, no RTP header extensions), datagrams passed between the two in memory on a
//! virtual clock. Shared by the setup-cost example and the per-packet benches.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use waswitch::media::webrtc::{LegOutput, WebRtcLeg};

/// Our leg's address for leg `n`.
pub fn ours(n: u32) -> SocketAddr {
    SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 40_000))
}

/// The peer's address for leg `n`.
pub fn theirs(n: u32) -> SocketAddr {
    SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 3_484))
}

/// Hands the peer of leg `n` a datagram our leg sent.
pub fn deliver_to_peer(peer: &mut Rtc, n: u32, now: Instant, datagram: &[u8]) {
    let input = Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source: ours(n),
            destination: theirs(n),
            contents: datagram.try_into().expect("datagram"),
        },
    );
    peer.handle_input(input).expect("peer input");
}

/// A leg and its peer, connected.
pub struct Connected {
    /// Our leg.
    pub leg: WebRtcLeg,
    /// The peer.
    pub peer: Rtc,
    /// The peer's audio media.
    pub mid: Mid,
    /// CPU time spent in our leg while it connected.
    pub our_cpu: Duration,
    /// The virtual clock when both were connected.
    pub now: Instant,
}

/// Sets up one leg against one ICE-lite peer.
pub fn setup(n: u32, start: Instant) -> Connected {
    let (ours, theirs) = (ours(n), theirs(n));
    let mut now = start;
    // Meta's offers carry no RTP header extensions.
    let mut peer = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .clear_extension_map()
        .enable_opus(true)
        .build(now);
    peer.add_local_candidate(Candidate::host(theirs, "udp").expect("candidate"));
    let mut change = peer.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = change.apply().expect("offer");
    let offer = offer.to_sdp_string();

    let mut spent = Duration::ZERO;
    let t = Instant::now();
    let mut leg = WebRtcLeg::accept_offer(&offer, ours, now).expect("answer");
    let answer = leg.local_sdp().to_string();
    spent += t.elapsed();
    peer.sdp_api()
        .accept_answer(
            pending,
            SdpAnswer::from_sdp_string(&answer).expect("answer"),
        )
        .expect("accepted");

    let (mut to_peer, mut to_leg): (VecDeque<Vec<u8>>, VecDeque<Vec<u8>>) = Default::default();
    let (mut leg_up, mut peer_up) = (false, false);
    for _ in 0..10_000 {
        let t = Instant::now();
        let leg_next = loop {
            match leg.poll().expect("poll") {
                LegOutput::Timeout(at) => break at,
                LegOutput::Transmit { data, .. } => to_peer.push_back(data),
                LegOutput::Connected => leg_up = true,
                _ => {}
            }
        };
        spent += t.elapsed();
        let peer_next = loop {
            match peer.poll_output().expect("peer") {
                Output::Timeout(at) => break at,
                Output::Transmit(tx) => to_leg.push_back(tx.contents.to_vec()),
                Output::Event(Event::Connected) => peer_up = true,
                Output::Event(_) => {}
            }
        };
        if leg_up && peer_up {
            return Connected {
                leg,
                peer,
                mid,
                our_cpu: spent,
                now,
            };
        }
        if to_peer.is_empty() && to_leg.is_empty() {
            // Nothing in flight: the virtual clock jumps to the next timer.
            now = now.max(leg_next.min(peer_next));
            let t = Instant::now();
            leg.handle_timeout(now).expect("timeout");
            spent += t.elapsed();
            peer.handle_input(Input::Timeout(now))
                .expect("peer timeout");
            continue;
        }
        while let Some(d) = to_peer.pop_front() {
            deliver_to_peer(&mut peer, n, now, &d);
        }
        let t = Instant::now();
        while let Some(d) = to_leg.pop_front() {
            leg.handle_receive(now, theirs, &d).expect("leg input");
        }
        spent += t.elapsed();
    }
    panic!("leg {n} did not connect");
}
