//! The relay on real loopback sockets.

use std::net::UdpSocket as StdSocket;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use super::rtc::is_stun;
use super::*;
use crate::media::dtmf::EventPayload;
use crate::media::plane::{FarSide, MediaError, MediaEvent, MediaPair, MediaPlane};
use crate::media::ports::PortAllocator;
use crate::media::rtp::write_packet;
use crate::media::rtp::RtpView;

/// A plane on its own port range (tests run in parallel).
fn plane(first: u16, policy: SourcePolicy, timeout: Duration) -> MediaPlane {
    MediaPlane::start(
        "127.0.0.1".parse().unwrap(),
        PortAllocator::new(first, first + 99),
        1,
        policy,
        timeout,
    )
    .unwrap()
}

fn peer() -> StdSocket {
    let s = StdSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

fn remote(socket: &StdSocket, dtmf_pt: Option<u8>) -> Remote {
    Remote {
        addr: Some(socket.local_addr().unwrap()),
        rtcp_mux: false,
        clock: 8000,
        dtmf_pt,
        dtmf_clock: 8000,
        sends: true,
        codec_pt: Some(0),
        codec: None,
    }
}

fn rtp(seq: u16, ts: u32, ssrc: u32, pt: u8, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + payload.len()];
    let n = write_packet(&mut buf, false, pt, seq, ts, ssrc, payload).unwrap();
    buf.truncate(n);
    buf
}

fn recv(socket: &StdSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

struct Rig {
    plane: MediaPlane,
    pair: MediaPair,
    a: StdSocket,
    b: StdSocket,
    a_port: SocketAddr,
    b_port: SocketAddr,
    events: Receiver<MediaEvent>,
}

fn rig(first: u16, policy: SourcePolicy, timeout: Duration) -> Rig {
    let plane = plane(first, policy, timeout);
    let (tx, events) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let pair = plane
        .add_pair(Arc::new(move |e| {
            let _ = tx.lock().unwrap().send(e);
        }))
        .unwrap();
    let (a, b) = (peer(), peer());
    pair.set_remote(Side::A, remote(&a, Some(101))).unwrap();
    pair.set_remote(Side::B, remote(&b, Some(96))).unwrap();
    let [pa, pb] = pair.ports();
    Rig {
        plane,
        pair,
        a,
        b,
        a_port: SocketAddr::from(([127, 0, 0, 1], pa)),
        b_port: SocketAddr::from(([127, 0, 0, 1], pb)),
        events,
    }
}

#[test]
fn packets_cross_both_ways_in_order_with_payloads_intact() {
    let r = rig(41_000, SourcePolicy::Strict, Duration::from_secs(30));
    for i in 0..50u16 {
        let payload = [i as u8; 160];
        r.a.send_to(&rtp(i, u32::from(i) * 160, 7, 0, &payload), r.a_port)
            .unwrap();
        let got = recv(&r.b).expect("relayed to B");
        let v = RtpView::parse(&got[..]).unwrap();
        assert_eq!(
            (v.sequence(), v.timestamp(), v.ssrc()),
            (i, u32::from(i) * 160, 7)
        );
        assert_eq!(v.payload(), payload);
        // And back.
        r.b.send_to(&rtp(i, 0, 9, 8, &payload), r.b_port).unwrap();
        let back = recv(&r.a).expect("relayed to A");
        assert_eq!(RtpView::parse(&back[..]).unwrap().payload(), payload);
    }
    assert_eq!(r.events.try_recv(), Ok(MediaEvent::FirstPacket(Side::A)));
    assert_eq!(r.events.try_recv(), Ok(MediaEvent::FirstPacket(Side::B)));
    let [a, b] = r.pair.stats().unwrap();
    assert_eq!((a.packets_in, b.packets_out), (50, 50));
    assert_eq!((b.packets_in, a.packets_out), (50, 50));
    assert_eq!(a.lost, 0);
    let final_stats = r.pair.close().unwrap();
    assert_eq!(final_stats[0].packets_in, 50);
    r.plane.stop();
}

#[test]
fn a_burst_longer_than_a_batch_is_relayed_whole_and_in_order_around_dropped_packets() {
    let r = rig(41_050, SourcePolicy::Strict, Duration::from_secs(30));
    let intruder = peer();
    // B reads only after the burst: room for all of it.
    socket2::SockRef::from(&r.b)
        .set_recv_buffer_size(1 << 20)
        .unwrap();
    // Queued faster than the shard reads: several batches, some of them full, with
    // packets to drop among the ones to relay.
    for i in 0..120u16 {
        r.a.send_to(&rtp(i, u32::from(i) * 160, 7, 0, &[i as u8; 160]), r.a_port)
            .unwrap();
        if i % 7 == 3 {
            intruder
                .send_to(&rtp(i, 0, 666, 0, &[0x55; 160]), r.a_port)
                .unwrap();
            r.a.send_to(b"not rtp", r.a_port).unwrap();
        }
    }
    for i in 0..120u16 {
        let got = recv(&r.b).expect("relayed to B");
        let v = RtpView::parse(&got[..]).unwrap();
        assert_eq!((v.sequence(), v.ssrc()), (i, 7));
        assert_eq!(v.payload(), [i as u8; 160]);
    }
    let [a, b] = r.pair.stats().unwrap();
    assert_eq!((a.packets_in, b.packets_out), (120, 120));
    assert_eq!(a.dropped, 2 * 17);
    r.plane.stop();
}

#[test]
fn foreign_sources_are_dropped_and_counted_never_relayed() {
    let r = rig(41_100, SourcePolicy::Strict, Duration::from_secs(30));
    let intruder = peer();
    intruder
        .send_to(&rtp(1, 160, 666, 0, &[0x55; 160]), r.a_port)
        .unwrap();
    // Garbage from the right source is dropped as malformed.
    r.a.send_to(b"not rtp", r.a_port).unwrap();
    r.a.send_to(&rtp(2, 320, 7, 0, &[1; 160]), r.a_port)
        .unwrap();
    let got = recv(&r.b).unwrap();
    assert_eq!(
        RtpView::parse(&got[..]).unwrap().ssrc(),
        7,
        "only A's packet arrives"
    );
    r.b.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(recv(&r.b).is_none());
    let [a, _] = r.pair.stats().unwrap();
    assert_eq!((a.packets_in, a.dropped), (1, 2));
    r.plane.stop();
}

#[test]
fn latching_follows_a_natted_source_then_locks() {
    let plane = plane(41_200, SourcePolicy::Latch, Duration::from_secs(30));
    let pair = plane.add_pair(Arc::new(|_| {})).unwrap();
    let (sdp_addr, natted, b, other) = (peer(), peer(), peer(), peer());
    pair.set_remote(Side::A, remote(&sdp_addr, None)).unwrap();
    pair.set_remote(Side::B, remote(&b, None)).unwrap();
    let a_port = SocketAddr::from(([127, 0, 0, 1], pair.ports()[0]));
    let b_port = SocketAddr::from(([127, 0, 0, 1], pair.ports()[1]));
    // A's packets come from another address than its SDP said (NAT): latched.
    natted
        .send_to(&rtp(1, 160, 5, 0, &[1; 20]), a_port)
        .unwrap();
    assert!(recv(&b).is_some());
    // B's answer goes back to where A really is.
    b.send_to(&rtp(1, 160, 6, 0, &[2; 20]), b_port).unwrap();
    assert!(recv(&natted).is_some());
    // Locked: a third source is refused.
    other.send_to(&rtp(2, 320, 5, 0, &[3; 20]), a_port).unwrap();
    b.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(recv(&b).is_none());
    assert_eq!(pair.stats().unwrap()[0].dropped, 1);
    plane.stop();
}

#[test]
fn a_stray_or_forged_first_packet_cannot_take_the_latch() {
    let plane = plane(41_250, SourcePolicy::Latch, Duration::from_secs(30));
    let pair = plane.add_pair(Arc::new(|_| {})).unwrap();
    let (sdp_addr, natted, b, attacker) = (peer(), peer(), peer(), peer());
    pair.set_remote(Side::A, remote(&sdp_addr, None)).unwrap();
    pair.set_remote(Side::B, remote(&b, None)).unwrap();
    let a_port = SocketAddr::from(([127, 0, 0, 1], pair.ports()[0]));
    let b_port = SocketAddr::from(([127, 0, 0, 1], pair.ports()[1]));
    // Before A's first packet: garbage, and RTP of a payload type A never agreed (PCMA; A
    // speaks PCMU).
    attacker.send_to(b"\x80junk", a_port).unwrap();
    attacker
        .send_to(&rtp(1, 160, 66, 8, &[9; 20]), a_port)
        .unwrap();
    // The real peer, from behind its NAT, still gets the latch...
    natted
        .send_to(&rtp(1, 160, 5, 0, &[1; 20]), a_port)
        .unwrap();
    let got = recv(&b).expect("A's audio reaches B");
    assert_eq!(RtpView::parse(&got[..]).unwrap().payload(), [1; 20]);
    // ...and B's audio goes to it, not to the attacker.
    b.send_to(&rtp(1, 160, 6, 0, &[2; 20]), b_port).unwrap();
    assert!(recv(&natted).is_some());
    attacker
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(recv(&attacker).is_none(), "nothing leaked to the attacker");
    assert_eq!(pair.stats().unwrap()[0].dropped, 2);
    plane.stop();
}

#[test]
fn a_new_ssrc_is_smoothed_into_one_continuous_stream() {
    let r = rig(41_300, SourcePolicy::Strict, Duration::from_secs(30));
    for i in 0..5u16 {
        r.a.send_to(
            &rtp(100 + i, 1000 + u32::from(i) * 160, 1, 0, &[0; 160]),
            r.a_port,
        )
        .unwrap();
        recv(&r.b).unwrap();
    }
    // The sender restarts: new SSRC, unrelated sequence and timestamp.
    let mut seen = Vec::new();
    for i in 0..3u16 {
        r.a.send_to(
            &rtp(9000 + i, 777_777 + u32::from(i) * 160, 2, 0, &[0; 160]),
            r.a_port,
        )
        .unwrap();
        let got = recv(&r.b).unwrap();
        let v = RtpView::parse(&got[..]).unwrap();
        seen.push((v.ssrc(), v.sequence(), v.timestamp()));
    }
    assert_eq!(
        seen,
        [(1, 105, 1800), (1, 106, 1960), (1, 107, 2120)],
        "the receiver sees the same stream continue"
    );
    r.plane.stop();
}

#[test]
fn dtmf_is_reported_once_and_mapped_to_the_other_sides_payload_type() {
    let r = rig(41_400, SourcePolicy::Strict, Duration::from_secs(30));
    let ev = |end, duration| {
        EventPayload {
            event: 7,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    };
    for (seq, (end, dur)) in [
        (false, 160),
        (false, 320),
        (true, 800),
        (true, 800),
        (true, 800),
    ]
    .into_iter()
    .enumerate()
    {
        r.a.send_to(&rtp(seq as u16, 4000, 3, 101, &ev(end, dur)), r.a_port)
            .unwrap();
        let got = recv(&r.b).unwrap();
        assert_eq!(RtpView::parse(&got[..]).unwrap().payload_type(), 96);
    }
    let events: Vec<_> = r.events.try_iter().collect();
    let digits: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            MediaEvent::Dtmf(side, d) => Some((*side, d.digit, d.duration)),
            _ => None,
        })
        .collect();
    assert_eq!(digits, [(Side::A, '7', 800)]);
    r.plane.stop();
}

#[test]
fn silence_raises_a_timeout_once_per_side() {
    let r = rig(41_500, SourcePolicy::Strict, Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut timeouts = Vec::new();
    while timeouts.len() < 2 && Instant::now() < deadline {
        if let Ok(MediaEvent::Timeout(side)) = r.events.recv_timeout(Duration::from_millis(100)) {
            timeouts.push(side);
        }
    }
    timeouts.sort_by_key(|s| s.index());
    assert_eq!(timeouts, [Side::A, Side::B]);
    std::thread::sleep(Duration::from_millis(600));
    assert!(r.events.try_recv().is_err(), "reported once");
    r.plane.stop();
}

/// One shard over two port pairs from `first`, keeping at most `keep` pairs bound, each
/// resting 100 ms.
fn keeping_plane(first: u16, keep: usize) -> (PortAllocator, MediaPlane) {
    let ports = PortAllocator::new(first, first + 3).keeping(keep, Duration::from_millis(100));
    let plane = MediaPlane::start(
        "127.0.0.1".parse().unwrap(),
        ports.clone(),
        1,
        SourcePolicy::Latch,
        Duration::from_secs(30),
    )
    .unwrap();
    (ports, plane)
}

#[test]
fn closing_a_pair_keeps_its_sockets_bound_for_a_later_call_without_what_they_received() {
    let (ports, plane) = keeping_plane(41_600, 8);
    let pair = plane.add_pair(Arc::new(|_| {})).unwrap();
    let [a, b] = pair.ports();
    pair.close().unwrap();
    // Both sides' sockets are kept bound with their ports, not closed, and no call uses them.
    assert_eq!((ports.kept_bound(), ports.in_use()), (2, 0));
    assert!(StdSocket::bind(("127.0.0.1", a)).is_err(), "still bound");
    // A straggler of the ended call reaches a kept socket while it rests.
    let old_peer = peer();
    old_peer
        .send_to(&rtp(1, 160, 5, 0, &[1; 160]), ("127.0.0.1", a))
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    // The next call gets the same ports, and nothing of the ended call reaches either side
    // (the emptying of kept sockets itself: media::plane::tests).
    let (tx, events) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let next = plane
        .add_pair(Arc::new(move |e| {
            let _ = tx.lock().unwrap().send(e);
        }))
        .unwrap();
    let mut reused = next.ports();
    reused.sort_unstable();
    let mut before = [a, b];
    before.sort_unstable();
    assert_eq!(reused, before, "the kept pairs, taken as they were");
    let (pa, pb) = (peer(), peer());
    next.set_remote(Side::A, remote(&pa, None)).unwrap();
    next.set_remote(Side::B, remote(&pb, None)).unwrap();
    assert!(
        recv(&pb).is_none() && recv(&pa).is_none(),
        "nothing stale relayed"
    );
    // And the new call's own audio crosses.
    let [na, _] = next.ports();
    pa.send_to(&rtp(7, 1120, 8, 0, &[2; 160]), ("127.0.0.1", na))
        .unwrap();
    assert!(recv(&pb).is_some(), "the new call's audio crosses");
    drop(events);
    next.close().unwrap();
    plane.stop();
}

/// Sockets the pool has no room to keep are closed by the shard they rest in: their port
/// can be bound again, while the kept side's stays bound.
#[test]
fn kept_sockets_the_pool_has_no_room_for_are_closed_by_their_shard() {
    let (ports, plane) = keeping_plane(41_650, 1);
    let pair = plane.add_pair(Arc::new(|_| {})).unwrap();
    let [a, b] = pair.ports();
    pair.close().unwrap();
    assert_eq!((ports.kept_bound(), ports.in_use()), (1, 0));
    let closed = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        StdSocket::bind(("127.0.0.1", b)).is_ok()
    });
    assert!(closed, "side B's sockets closed by the shard");
    assert!(
        StdSocket::bind(("127.0.0.1", a)).is_err(),
        "side A's rest, bound"
    );
    plane.stop();
}

#[test]
fn ringback_ends_with_its_call_and_never_plays_into_the_next() {
    let r = rig(42_800, SourcePolicy::Strict, Duration::from_secs(30));
    r.pair.ringback(Side::A, true).unwrap();
    let got = recv(&r.a).expect("ringback toward A");
    assert_eq!(RtpView::parse(&got[..]).unwrap().payload_type(), 0);
    // The call ends while it rings (the caller gave up).
    r.pair.close().unwrap();
    // The next call takes the freed legs; nothing plays toward either of its sides.
    let next = r.plane.add_pair(Arc::new(|_| {})).unwrap();
    let (pa, pb) = (peer(), peer());
    pa.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    pb.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    next.set_remote(Side::A, remote(&pa, None)).unwrap();
    next.set_remote(Side::B, remote(&pb, None)).unwrap();
    assert!(
        recv(&pa).is_none(),
        "no ringback of the ended call toward A"
    );
    assert!(recv(&pb).is_none(), "nor toward B");
    next.close().unwrap();
    r.plane.stop();
}

#[test]
fn dtmf_is_sent_into_the_stream_a_side_receives() {
    let r = rig(41_700, SourcePolicy::Strict, Duration::from_secs(30));
    // B talks to A: A receives B's stream (SSRC 9).
    for i in 0..3u16 {
        r.b.send_to(
            &rtp(10 + i, 3200 + u32::from(i) * 160, 9, 0, &[0; 160]),
            r.b_port,
        )
        .unwrap();
        recv(&r.a).unwrap();
    }
    // A 200 ms '5' toward A, in A's telephone-event payload type (101).
    r.pair
        .send_dtmf(Side::A, '5', Duration::from_millis(200))
        .unwrap();
    let mut events = Vec::new();
    loop {
        let got = recv(&r.a).expect("telephone-event packets");
        let v = RtpView::parse(&got[..]).unwrap();
        let e = EventPayload::parse(v.payload()).unwrap();
        events.push((v.payload_type(), v.sequence(), v.timestamp(), v.ssrc(), e));
        if events.iter().filter(|(.., e)| e.end).count() == 3 {
            break;
        }
    }
    assert!(events.iter().all(|(pt, _, ts, ssrc, e)| *pt == 101
        && *ts == 3200 + 2 * 160 + 160
        && *ssrc == 9
        && e.event == 5));
    let seqs: Vec<u16> = events.iter().map(|(_, s, ..)| *s).collect();
    let expected: Vec<u16> = (13..13 + seqs.len() as u16).collect();
    assert_eq!(seqs, expected, "the sequence continues after B's packets");
    let durations: Vec<u16> = events.iter().map(|(.., e)| e.duration).collect();
    assert!(durations.windows(2).all(|w| w[0] <= w[1]), "{durations:?}");
    assert_eq!(*durations.last().unwrap(), 1600, "200 ms at 8 kHz");
    assert!(
        events.len() >= 5,
        "updates while the key is held: {durations:?}"
    );
    // B's next packet follows the inserted ones.
    r.b.send_to(&rtp(13, 3200 + 3 * 160, 9, 0, &[0; 160]), r.b_port)
        .unwrap();
    let got = recv(&r.a).unwrap();
    assert_eq!(
        RtpView::parse(&got[..]).unwrap().sequence(),
        13 + seqs.len() as u16
    );
    assert!(r
        .pair
        .send_dtmf(Side::A, 'x', Duration::from_millis(100))
        .is_err());
    r.plane.stop();
}

fn prompt_tone(freq: f64, ms: u32) -> crate::media::prompt::Prompt {
    let n = (8 * ms) as usize;
    crate::media::prompt::Prompt::from_samples(
        (0..n)
            .map(|i| {
                ((2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin() * 8000.0) as i16
            })
            .collect(),
    )
}

#[test]
fn a_prompt_plays_toward_a_side_in_its_codec_and_holds_back_the_other_side() {
    let r = rig(41_800, SourcePolicy::Strict, Duration::from_secs(30));
    r.pair
        .play(Side::A, prompt_tone(440.0, 400), false)
        .unwrap();
    // B talks meanwhile: held back while the prompt has the floor.
    r.b.send_to(&rtp(1, 160, 9, 0, &[0x11; 160]), r.b_port)
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        let p = recv(&r.a).expect("prompt packets");
        let v = RtpView::parse(&p[..]).unwrap();
        assert_ne!(v.payload()[0], 0x11, "B's audio held back");
        got.push((v.sequence(), v.timestamp(), v.payload().to_vec()));
    }
    // Continuous stream: sequence +1, timestamp +160.
    for w in got.windows(2) {
        assert_eq!(w[1].0, w[0].0.wrapping_add(1));
        assert_eq!(w[1].1, w[0].1.wrapping_add(160));
    }
    let samples: Vec<i16> = got
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|&c| crate::media::g711::ulaw_decode(c)))
        .collect();
    let power = |f: f64| {
        let w = 2.0 * std::f64::consts::PI * f / 8000.0;
        let (mut s1, mut s2) = (0.0, 0.0);
        for &x in &samples {
            let s = f64::from(x) + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2
    };
    assert!(power(440.0) > 100.0 * power(1000.0));
    let deadline = Instant::now() + Duration::from_secs(2);
    let done = loop {
        match r.events.recv_timeout(Duration::from_millis(100)) {
            Ok(MediaEvent::PromptDone {
                side,
                barged_in,
                played,
            }) => break (side, barged_in, played),
            _ => assert!(Instant::now() < deadline, "no PromptDone"),
        }
    };
    assert_eq!(done, (Side::A, false, true));
    // After the prompt B is heard again, continuing the same stream.
    r.b.send_to(&rtp(2, 320, 9, 0, &[0x22; 160]), r.b_port)
        .unwrap();
    let p = recv(&r.a).unwrap();
    let v = RtpView::parse(&p[..]).unwrap();
    assert_eq!(v.payload()[0], 0x22);
    assert_eq!(v.sequence(), got.last().unwrap().0.wrapping_add(1));
    r.plane.stop();
}

#[test]
fn a_digit_from_the_listener_barges_in() {
    let r = rig(41_900, SourcePolicy::Strict, Duration::from_secs(30));
    r.pair
        .play(Side::A, prompt_tone(440.0, 5000), true)
        .unwrap();
    for _ in 0..5 {
        recv(&r.a).expect("prompt playing");
    }
    let end = EventPayload {
        event: 3,
        end: true,
        volume: 10,
        duration: 800,
    }
    .to_bytes();
    r.a.send_to(&rtp(1, 8000, 5, 101, &end), r.a_port).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match r.events.recv_timeout(Duration::from_millis(100)) {
            Ok(MediaEvent::PromptDone {
                side, barged_in, ..
            }) => {
                assert_eq!((side, barged_in), (Side::A, true));
                break;
            }
            _ => assert!(
                Instant::now() < deadline,
                "the digit did not stop the prompt"
            ),
        }
    }
    // Nothing more of the prompt arrives (a packet or two in flight at most).
    r.a.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut late = 0;
    while recv(&r.a).is_some() {
        late += 1;
    }
    assert!(late <= 2, "{late} prompt packets after the barge-in");
    r.plane.stop();
}

#[test]
fn legs_of_different_codecs_are_transcoded_with_timestamps_on_each_clock() {
    use crate::media::transcode::Codec;
    let plane = plane(42_000, SourcePolicy::Strict, Duration::from_secs(30));
    let pair = plane.add_pair(Arc::new(|_| {})).unwrap();
    let (a, b) = (peer(), peer());
    let with = |s: &StdSocket, pt, codec, clock| Remote {
        addr: Some(s.local_addr().unwrap()),
        rtcp_mux: false,
        clock,
        dtmf_pt: None,
        dtmf_clock: 8000,
        codec_pt: Some(pt),
        codec: Some(codec),
        sends: true,
    };
    pair.set_remote(Side::A, with(&a, 0, Codec::Pcmu, 8000))
        .unwrap();
    pair.set_remote(Side::B, with(&b, 111, Codec::Opus, 48_000))
        .unwrap();
    let [pa, pb] = pair.ports();
    let (a_port, b_port) = (
        SocketAddr::from(([127, 0, 0, 1], pa)),
        SocketAddr::from(([127, 0, 0, 1], pb)),
    );
    let tone: Vec<u8> = (0..160)
        .map(|i| {
            crate::media::g711::ulaw_encode(
                ((2.0 * std::f64::consts::PI * 1000.0 * f64::from(i) / 8000.0).sin() * 8000.0)
                    as i16,
            )
        })
        .collect();
    let mut decoder = opus::Decoder::new(8000, opus::Channels::Mono).unwrap();
    let mut stamps = Vec::new();
    for i in 0..10u32 {
        a.send_to(&rtp(i as u16, 1000 + i * 160, 4, 0, &tone), a_port)
            .unwrap();
        let got = recv(&b).expect("Opus toward B");
        let v = RtpView::parse(&got[..]).unwrap();
        assert_eq!(v.payload_type(), 111);
        let mut pcm = [0i16; 960];
        assert_eq!(decoder.decode(v.payload(), &mut pcm, false).unwrap(), 160);
        stamps.push(v.timestamp());
    }
    // 20 ms apart on Opus's 48 kHz clock.
    assert!(
        stamps.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 960),
        "{stamps:?}"
    );
    // And back: Opus from B becomes PCMU toward A.
    let mut encoder =
        opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    let mut packet = [0u8; 400];
    let n = encoder.encode(&[500i16; 160], &mut packet).unwrap();
    b.send_to(&rtp(1, 48_000, 8, 111, &packet[..n]), b_port)
        .unwrap();
    let got = recv(&a).expect("PCMU toward A");
    let v = RtpView::parse(&got[..]).unwrap();
    assert_eq!((v.payload_type(), v.payload().len()), (0, 160));
    plane.stop();
}

#[test]
fn dtmf_across_a_transcoded_pair_follows_the_outgoing_clock_and_foreign_formats_stop() {
    use crate::media::dtmf::EventPayload;
    use crate::media::transcode::Codec;
    let plane = plane(42_100, SourcePolicy::Strict, Duration::from_secs(30));
    let (tx, events) = mpsc::channel();
    let pair = plane
        .add_pair(Arc::new(move |e| {
            let _ = tx.send(e);
        }))
        .unwrap();
    let (a, b) = (peer(), peer());
    let with = |s: &StdSocket, pt, codec, clock, dtmf_pt, dtmf_clock| Remote {
        addr: Some(s.local_addr().unwrap()),
        rtcp_mux: false,
        clock,
        dtmf_pt: Some(dtmf_pt),
        dtmf_clock,
        codec_pt: Some(pt),
        codec: Some(codec),
        sends: true,
    };
    // A: PCMU with telephone-event/8000 on 101. B: Opus with telephone-event/48000 on 96.
    pair.set_remote(Side::A, with(&a, 0, Codec::Pcmu, 8000, 101, 8000))
        .unwrap();
    pair.set_remote(Side::B, with(&b, 111, Codec::Opus, 48_000, 96, 48_000))
        .unwrap();
    let a_port = SocketAddr::from(([127, 0, 0, 1], pair.ports()[0]));
    a.send_to(&rtp(0, 1000, 4, 0, &[0xff; 160]), a_port)
        .unwrap();
    let audio = recv(&b).expect("Opus toward B");
    let audio_ts = RtpView::parse(&audio[..]).unwrap().timestamp();
    // A digit '5' starting 20 ms later, 100 ms long, ended; its end packet sent twice.
    let event = |end, duration| {
        EventPayload {
            event: 5,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    };
    a.send_to(&rtp(1, 1160, 4, 101, &event(false, 160)), a_port)
        .unwrap();
    a.send_to(&rtp(2, 1160, 4, 101, &event(true, 800)), a_port)
        .unwrap();
    a.send_to(&rtp(3, 1160, 4, 101, &event(true, 800)), a_port)
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let got = recv(&b).expect("event toward B");
        let v = RtpView::parse(&got[..]).unwrap();
        let e = EventPayload::parse(v.payload()).unwrap();
        seen.push((
            v.payload_type(),
            v.timestamp().wrapping_sub(audio_ts),
            e.end,
            e.duration,
        ));
    }
    // Same 96 PT and 48 kHz timestamps as B's audio (20 ms = 960), durations on 48 kHz.
    assert_eq!(
        seen,
        [
            (96, 960, false, 960),
            (96, 960, true, 4800),
            (96, 960, true, 4800)
        ]
    );
    let digit = events
        .iter()
        .find_map(|e| match e {
            MediaEvent::Dtmf(Side::A, d) => Some(d),
            _ => None,
        })
        .expect("digit reported");
    assert_eq!((digit.digit, digit.duration), ('5', 800));
    // Comfort noise (PT 13) was never agreed with B: not passed into its Opus stream.
    a.send_to(&rtp(4, 1320, 4, 13, &[40]), a_port).unwrap();
    a.send_to(&rtp(5, 1480, 4, 0, &[0xff; 160]), a_port)
        .unwrap();
    let next = recv(&b).expect("audio toward B");
    assert_eq!(RtpView::parse(&next[..]).unwrap().payload_type(), 111);
    assert_eq!(pair.stats().unwrap()[0].dropped, 1);
    plane.stop();
}

#[test]
fn a_transcoded_call_is_recorded_with_each_side_on_its_channel() {
    use crate::media::g711;
    use crate::media::transcode::Codec;
    let dir = tempfile::tempdir().unwrap();
    let plane = plane(42_200, SourcePolicy::Strict, Duration::from_secs(30));
    let pair = plane.add_pair_on([None, None], Arc::new(|_| {})).unwrap();
    let (a, b) = (peer(), peer());
    let with = |s: &StdSocket, pt, codec, clock| Remote {
        addr: Some(s.local_addr().unwrap()),
        rtcp_mux: false,
        clock,
        dtmf_pt: None,
        dtmf_clock: clock,
        codec_pt: Some(pt),
        codec: Some(codec),
        sends: true,
    };
    pair.set_remote(Side::A, with(&a, 0, Codec::Pcmu, 8000))
        .unwrap();
    pair.set_remote(Side::B, with(&b, 111, Codec::Opus, 48_000))
        .unwrap();
    pair.record(
        &dir.path().join("mixed.wav"),
        crate::media::record::Format::Wav,
        false,
        |_| {},
    )
    .unwrap();
    let [pa, pb] = pair.ports();
    let (a_port, b_port) = (
        SocketAddr::from(([127, 0, 0, 1], pa)),
        SocketAddr::from(([127, 0, 0, 1], pb)),
    );
    let sine = |freq: f64, n: u32| -> Vec<i16> {
        (0..160)
            .map(|i| {
                let t = f64::from(n * 160 + i) / 8000.0;
                ((2.0 * std::f64::consts::PI * freq * t).sin() * 8000.0) as i16
            })
            .collect()
    };
    let mut encoder =
        opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    // One second each: 440 Hz PCMU from A (customer), 1000 Hz Opus from B (business).
    for n in 0..50u32 {
        let ulaw: Vec<u8> = sine(440.0, n).into_iter().map(g711::ulaw_encode).collect();
        a.send_to(&rtp(n as u16, n * 160, 1, 0, &ulaw), a_port)
            .unwrap();
        let mut opus_frame = [0u8; 400];
        let len = encoder.encode(&sine(1000.0, n), &mut opus_frame).unwrap();
        b.send_to(&rtp(n as u16, n * 960, 2, 111, &opus_frame[..len]), b_port)
            .unwrap();
        assert!(
            recv(&b).is_some() && recv(&a).is_some(),
            "frame {n} relayed"
        );
    }
    assert_eq!(
        pair.close().map(|[a, b]| (a.packets_in, b.packets_in)),
        Some((50, 50))
    );
    let wav = dir.path().join("mixed.wav");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wav.exists() {
        assert!(Instant::now() < deadline, "recording finalised");
        std::thread::sleep(Duration::from_millis(20));
    }
    let bytes = std::fs::read(&wav).unwrap();
    assert_eq!(&bytes[22..24], &2u16.to_le_bytes(), "stereo");
    let frames: Vec<(f64, f64)> = bytes[44..]
        .chunks_exact(4)
        .map(|c| {
            (
                f64::from(i16::from_le_bytes([c[0], c[1]])),
                f64::from(i16::from_le_bytes([c[2], c[3]])),
            )
        })
        .collect();
    // About one second (Opus's look-ahead may shift the right channel a little).
    assert!(
        (7_800..=8_400).contains(&frames.len()),
        "{} frames",
        frames.len()
    );
    let (left, right): (Vec<f64>, Vec<f64>) = frames[1000..7000].iter().copied().unzip();
    let power = |s: &[f64], f: f64| {
        let w = 2.0 * std::f64::consts::PI * f / 8000.0;
        let (mut s1, mut s2) = (0.0, 0.0);
        for &x in s {
            let v = x + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = v;
        }
        s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2
    };
    assert!(
        power(&left, 440.0) > 100.0 * power(&left, 1000.0),
        "left is A's 440 Hz"
    );
    assert!(
        power(&right, 1000.0) > 100.0 * power(&right, 440.0),
        "right is B's 1000 Hz, decoded from Opus"
    );
    plane.stop();
}

/// A WebRTC offer as Meta's media servers make it, with one host candidate at `candidate`.
fn meta_like_offer(candidate: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE audio\r\na=ice-lite\r\n\
         m=audio {port} UDP/TLS/RTP/SAVPF 111 126\r\nc=IN IP4 {ip}\r\n\
         a=candidate:1 1 udp 2122260223 {ip} {port} typ host generation 0\r\n\
         a=ice-ufrag:AeinEGDfvqBctbtM\r\na=ice-pwd:F6/jjqL0/8/Dzluc0IoZEQ==\r\n\
         a=fingerprint:sha-256 A2:EC:E2:C4:E4:FE:75:63:39:0D:77:45:DF:70:64:BC:F9:96:73:DE:F4:92:E5:78:D0:5B:1F:8F:E7:46:D3:C6\r\n\
         a=setup:actpass\r\na=mid:audio\r\na=sendrecv\r\na=rtcp-mux\r\n\
         a=rtpmap:111 opus/48000/2\r\na=rtpmap:126 telephone-event/8000\r\n\
         a=ssrc:1047224411 cname:WhatsAppAudioStream1\r\n",
        ip = candidate.ip(),
        port = candidate.port()
    )
}

#[test]
fn webrtc_legs_share_a_socket_unless_their_peers_share_an_address() {
    let plane = plane(42_400, SourcePolicy::Strict, Duration::from_secs(30));
    let relay: SocketAddr = "127.0.0.1:3484".parse().unwrap();
    let other: SocketAddr = "127.0.0.1:3485".parse().unwrap();
    let first = plane.webrtc_answer(&meta_like_offer(relay)).unwrap();
    let second = plane.webrtc_answer(&meta_like_offer(relay)).unwrap();
    let third = plane.webrtc_answer(&meta_like_offer(other)).unwrap();
    let (p1, p2, p3) = (
        first.local().unwrap(),
        second.local().unwrap(),
        third.local().unwrap(),
    );
    // Meta's media servers receive every call on one port: two calls to the same one
    // cannot be told apart on one socket.
    assert_ne!(p1, p2);
    // A peer elsewhere shares the first socket.
    assert_eq!(p1, p3);
    assert!(first.local_sdp().contains(&format!(
        "a=candidate:1 1 udp 2130706431 127.0.0.1 {} typ host",
        p1.port()
    )));
    // A leg given up (never bridged) frees its place.
    drop(first);
    let fourth = plane.webrtc_answer(&meta_like_offer(relay)).unwrap();
    assert_eq!(fourth.local().unwrap(), p1);
    // A bridged leg holds it until the pair closes.
    let pair = plane
        .add_webrtc_pair(fourth, FarSide::Echo, Arc::new(|_| {}))
        .unwrap();
    assert_eq!(pair.ports()[0], p1.port());
    let fifth = plane.webrtc_answer(&meta_like_offer(relay)).unwrap();
    assert_ne!(fifth.local().unwrap(), p1);
    drop(fifth);
    pair.close();
    let sixth = plane.webrtc_answer(&meta_like_offer(relay)).unwrap();
    assert_eq!(sixth.local().unwrap(), p1);
    // Not WebRTC at all: a clear error, nothing held.
    assert!(matches!(
        plane.webrtc_answer("v=0\r\nm=audio 4000 RTP/AVP 0\r\n"),
        Err(MediaError::WebRtc(_))
    ));
    drop((second, third, sixth));
    plane.stop();
}

#[test]
fn a_webrtc_leg_is_transcoded_to_a_pcmu_leg_both_ways() {
    use crate::media::quality::tone_power;
    use crate::sim::user::SimUser;
    let plane = plane(42_500, SourcePolicy::Strict, Duration::from_secs(30));
    let (user, offer) = SimUser::offer(StdSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    let mut user = user;
    let prepared = plane.webrtc_answer(&offer).unwrap();
    user.apply_answer(prepared.local_sdp()).unwrap();
    let (tx, events) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let pair = plane
        .add_webrtc_pair(
            prepared,
            FarSide::Rtp(None),
            Arc::new(move |e| {
                let _ = tx.lock().unwrap().send(e);
            }),
        )
        .unwrap();
    let phone = peer();
    phone
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    pair.set_remote(
        Side::B,
        Remote {
            codec: Some(crate::media::transcode::Codec::Pcmu),
            ..remote(&phone, None)
        },
    )
    .unwrap();
    let b_port = SocketAddr::from(([127, 0, 0, 1], pair.ports()[1]));

    // The WhatsApp user sends 440 Hz in Opus and expects the phone's 1 kHz back.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let user_stop = stop.clone();
    let user = std::thread::spawn(move || {
        user.run(Duration::from_millis(2500), 440.0, 1000.0, &user_stop)
    });
    // The phone sends 1 kHz in PCMU every 20 ms and keeps what arrives.
    let mut heard = Vec::new();
    let mut pcmu_packets = 0;
    let start = Instant::now();
    let mut next = start;
    let mut k: u32 = 0;
    let mut buf = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(4) {
        if Instant::now() >= next {
            next += Duration::from_millis(20);
            let payload: Vec<u8> = (0..160)
                .map(|i| {
                    let t = f64::from(k * 160 + i) / 8000.0;
                    let s = 8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin();
                    crate::media::g711::ulaw_encode(s as i16)
                })
                .collect();
            let _ = phone.send_to(&rtp(k as u16, k * 160, 0x1234, 0, &payload), b_port);
            k += 1;
        }
        if let Ok(n) = phone.recv(&mut buf) {
            let view = RtpView::parse(&buf[..n]).unwrap();
            assert_eq!(view.payload_type(), 0, "PCMU toward the phone");
            pcmu_packets += 1;
            heard.extend(
                view.payload()
                    .iter()
                    .map(|&c| f32::from(crate::media::g711::ulaw_decode(c)) / 32768.0),
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let report = user.join().unwrap().unwrap();
    assert!(report.connected, "{report:?}");
    assert!(
        report.audio_verified(),
        "the phone's tone reached WhatsApp: {report:?}"
    );
    assert!(pcmu_packets >= 50, "{pcmu_packets} PCMU packets");
    let tail = &heard[heard.len().min(4000)..];
    let (p440, p1000) = (
        tone_power(tail, 440.0, 8000.0),
        tone_power(tail, 1000.0, 8000.0),
    );
    assert!(
        p440 > 20.0 * p1000,
        "WhatsApp's tone reached the phone: {p440} vs {p1000}"
    );
    let seen: Vec<MediaEvent> = events.try_iter().collect();
    assert!(seen.contains(&MediaEvent::Connected(Side::A)), "{seen:?}");
    let stats = pair.close().unwrap();
    assert!(
        stats[0].packets_in >= 50 && stats[1].packets_in >= 50,
        "{stats:?}"
    );
    plane.stop();
}

#[test]
fn a_webrtc_offer_of_ours_is_answered_and_its_audio_echoed() {
    use crate::sim::user::SimUser;
    let plane = plane(42_600, SourcePolicy::Strict, Duration::from_secs(30));
    let prepared = plane.webrtc_offer().unwrap();
    let offer = prepared.local_sdp().to_string();
    assert!(offer.contains("a=setup:actpass"), "{offer}");
    let (tx, events) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let pair = plane
        .add_webrtc_pair(
            prepared,
            FarSide::Echo,
            Arc::new(move |e| {
                let _ = tx.lock().unwrap().send(e);
            }),
        )
        .unwrap();
    // A business-initiated call: Meta's user answers our offer.
    let (user, answer) = SimUser::answer(StdSocket::bind("127.0.0.1:0").unwrap(), &offer).unwrap();
    assert!(answer.contains("telephone-event/8000"), "{answer}");
    assert!(
        pair.webrtc_answer("v=0\r\nm=audio 9 RTP/AVP 0\r\n")
            .is_err(),
        "an answer without WebRTC is refused"
    );
    pair.webrtc_answer(&answer).unwrap();
    let report = user
        .with_dtmf("7", Duration::from_millis(300))
        .run(
            Duration::from_millis(1500),
            600.0,
            600.0,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
    assert!(report.audio_verified(), "{report:?}");
    assert_eq!(report.digits_in, "7");
    let seen: Vec<MediaEvent> = events.try_iter().collect();
    assert!(seen.contains(&MediaEvent::Connected(Side::A)), "{seen:?}");
    assert!(seen
        .iter()
        .any(|e| matches!(e, MediaEvent::Dtmf(Side::A, d) if d.digit == '7')));
    pair.close();
    plane.stop();
}

#[test]
fn only_ice_checks_from_unknown_addresses_are_offered_to_webrtc_legs() {
    let mut stun = [0u8; 20];
    stun[1] = 0x01; // Binding request
    stun[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    assert!(is_stun(&stun));
    // A DTLS record (content type 22) and an RTP packet are not.
    let mut dtls = [0u8; 20];
    dtls[0] = 22;
    assert!(!is_stun(&dtls));
    assert!(!is_stun(&rtp(1, 160, 7, 0, &[0; 8])));
    assert!(!is_stun(&stun[..12]));
}

/// A shard that panics is started again, empty: the calls whose pairs it relayed hear
/// `ShardFailed` (and end), the other shard's pairs relay on untouched, and a pair added
/// to the restarted shard relays.
#[test]
fn a_panicking_shard_restarts_and_only_its_own_pairs_fail() {
    let plane = MediaPlane::start(
        "127.0.0.1".parse().unwrap(),
        PortAllocator::new(54_000, 54_099),
        2,
        SourcePolicy::Strict,
        Duration::from_secs(30),
    )
    .unwrap();
    let pair_with_events = || {
        let (tx, events) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let pair = plane
            .add_pair(Arc::new(move |e| {
                let _ = tx.lock().unwrap().send(e);
            }))
            .unwrap();
        let (a, b) = (peer(), peer());
        pair.set_remote(Side::A, remote(&a, None)).unwrap();
        pair.set_remote(Side::B, remote(&b, None)).unwrap();
        let [pa, _] = pair.ports();
        (pair, events, a, b, SocketAddr::from(([127, 0, 0, 1], pa)))
    };
    let relays = |a: &StdSocket, b: &StdSocket, a_port: SocketAddr, seq: u16| {
        a.send_to(&rtp(seq, u32::from(seq) * 160, 5, 0, &[1; 160]), a_port)
            .unwrap();
        recv(b).is_some()
    };
    // Pairs go to the shards in turn: the first to shard 0, the second to shard 1.
    let (first, first_events, a1, b1, p1) = pair_with_events();
    let (second, second_events, a2, b2, p2) = pair_with_events();
    assert!(relays(&a1, &b1, p1, 1) && relays(&a2, &b2, p2, 1));

    plane.inject_shard_panic(0).unwrap();
    let told: Vec<MediaEvent> =
        std::iter::from_fn(|| first_events.recv_timeout(Duration::from_secs(2)).ok())
            .take_while(|e| *e != MediaEvent::ShardFailed)
            .collect();
    assert!(
        !told.contains(&MediaEvent::ShardFailed),
        "events before the failure: {told:?}"
    );
    // The failed shard's pair no longer relays; the other one does.
    assert!(!relays(&a1, &b1, p1, 2), "the failed shard still relays");
    assert!(relays(&a2, &b2, p2, 2), "the other shard was disturbed");
    assert!(!second_events
        .try_iter()
        .any(|e| e == MediaEvent::ShardFailed));
    drop(first);
    // The restarted shard takes new pairs (the third goes to shard 0 again).
    let (_third, third_events, a3, b3, p3) = pair_with_events();
    assert!(
        relays(&a3, &b3, p3, 1),
        "the restarted shard does not relay"
    );
    assert!(!third_events
        .try_iter()
        .any(|e| e == MediaEvent::ShardFailed));
    drop(second);
    plane.stop();
}

/// A voicemail: side A's audio (G.711 here) is captured to a one-channel WAV; the side
/// going quiet is reported once after the silence limit; stopping finalises the file and
/// reports it.
#[test]
fn a_capture_writes_one_sides_voice_and_reports_silence_and_its_file() {
    let r = rig(42_700, SourcePolicy::Strict, Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm").join("call.wav");
    let (done_tx, done_rx) = mpsc::channel();
    r.pair
        .capture(Side::A, &path, Some(Duration::from_millis(600)), move |f| {
            let _ = done_tx.send(f.map_err(|e| e.to_string()));
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // One second of 440 Hz from A (B's audio is not captured), then A is silent.
    let tone = prompt_tone(440.0, 1000);
    for (k, frame) in tone.samples().chunks(160).enumerate() {
        let payload: Vec<u8> = frame
            .iter()
            .map(|&s| crate::media::g711::ulaw_encode(s))
            .collect();
        let k = k as u16;
        r.a.send_to(&rtp(k, u32::from(k) * 160, 5, 0, &payload), r.a_port)
            .unwrap();
        r.b.send_to(&rtp(k, u32::from(k) * 160, 6, 0, &[0x11; 160]), r.b_port)
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut silences = 0;
    while Instant::now() < deadline {
        if let Ok(MediaEvent::Silence(side)) = r.events.recv_timeout(Duration::from_millis(100)) {
            assert_eq!(side, Side::A);
            silences += 1;
        }
    }
    assert_eq!(silences, 1, "silence is reported once");
    r.pair.stop_capture().unwrap();
    let file = done_rx
        .recv_timeout(Duration::from_secs(3))
        .expect("capture reported")
        .expect("a file");
    assert_eq!(file, path);
    let wav = std::fs::read(&file).unwrap();
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1, "one channel");
    let samples: Vec<f32> = wav[44..]
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    let secs = samples.len() as f32 / 8000.0;
    assert!((0.9..1.2).contains(&secs), "{secs} s captured");
    let total = samples.iter().map(|x| x * x).sum::<f32>() / samples.len() as f32;
    let share = crate::media::quality::tone_power(&samples, 440.0, 8000.0) / total;
    assert!(share > 0.9, "440 Hz share {share}");
    r.plane.stop();
}

#[test]
fn a_webrtc_side_b_stands_in_for_the_plain_one_and_opus_passes_between_two_browsers() {
    use crate::sim::user::SimUser;
    let plane = plane(42_700, SourcePolicy::Strict, Duration::from_secs(30));
    // The customer (side A) calls; side B starts as the plain leg an IVR or a queue holds.
    let (customer, offer) = SimUser::offer(StdSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    let mut customer = customer;
    let prepared = plane.webrtc_answer(&offer).unwrap();
    customer.apply_answer(prepared.local_sdp()).unwrap();
    let (tx, events) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let pair = plane
        .add_webrtc_pair(
            prepared,
            FarSide::Rtp(None),
            Arc::new(move |e| {
                let _ = tx.lock().unwrap().send(e);
            }),
        )
        .unwrap();
    // A first agent is offered the call and never answers; the second one does.
    let unanswered = plane.webrtc_offer_in(pair.shard()).unwrap();
    pair.set_webrtc_b(unanswered).unwrap();
    let prepared_b = plane.webrtc_offer_in(pair.shard()).unwrap();
    let our_offer = prepared_b.local_sdp().to_string();
    assert!(our_offer.contains("a=setup:actpass"), "{our_offer}");
    pair.set_webrtc_b(prepared_b).unwrap();
    let (agent, answer) =
        SimUser::answer(StdSocket::bind("127.0.0.1:0").unwrap(), &our_offer).unwrap();
    pair.webrtc_answer_on(Side::B, &answer).unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s1, s2) = (stop.clone(), stop.clone());
    let customer =
        std::thread::spawn(move || customer.run(Duration::from_millis(2000), 440.0, 1000.0, &s1));
    let agent =
        std::thread::spawn(move || agent.run(Duration::from_millis(2000), 1000.0, 440.0, &s2));
    let customer = customer.join().unwrap().unwrap();
    let agent = agent.join().unwrap().unwrap();
    assert!(
        customer.audio_verified(),
        "the customer hears the agent: {customer:?}"
    );
    assert!(
        agent.audio_verified(),
        "the agent hears the customer: {agent:?}"
    );
    let seen: Vec<MediaEvent> = events.try_iter().collect();
    assert!(seen.contains(&MediaEvent::Connected(Side::A)), "{seen:?}");
    assert!(seen.contains(&MediaEvent::Connected(Side::B)), "{seen:?}");

    // The agent's leg goes; the plain side B is back, with its own port.
    pair.drop_webrtc_b().unwrap();
    let phone = peer();
    pair.set_remote(Side::B, remote(&phone, None)).unwrap();
    let b_port = SocketAddr::from(([127, 0, 0, 1], pair.ports()[1]));
    phone
        .send_to(&rtp(1, 160, 9, 0, &[0xff; 160]), b_port)
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stats = pair.stats().unwrap();
    assert_eq!(
        stats[1].packets_in, 1,
        "the plain side B receives again: {stats:?}"
    );
    pair.close();
    plane.stop();
}

#[test]
fn an_sdes_side_is_decrypted_in_and_encrypted_out_and_forgeries_are_dropped() {
    use crate::media::srtp::{Crypto, Keying, MasterKey, SrtpReceiver, SrtpSender, Suite};
    let r = rig(42_300, SourcePolicy::Strict, Duration::from_secs(30));
    let key = |b: u8| MasterKey::new([b; 16], [b ^ 0x5a; 14]);
    let keying = Keying {
        theirs: Crypto {
            tag: 1,
            suite: Suite::AesCm128HmacSha1_80,
            key: key(1),
        },
        ours: Crypto {
            tag: 1,
            suite: Suite::AesCm128HmacSha1_80,
            key: key(2),
        },
    };
    r.pair.set_srtp(Side::A, &keying).unwrap();
    // A's peer: sends under its key, reads under ours.
    let mut tx = SrtpSender::new(Suite::AesCm128HmacSha1_80, &key(1));
    let mut rx = SrtpReceiver::new(Suite::AesCm128HmacSha1_80, &key(2));
    let mut forger = SrtpSender::new(Suite::AesCm128HmacSha1_80, &key(3));
    let protect = |tx: &mut SrtpSender, packet: Vec<u8>| {
        let mut buf = packet;
        let len = buf.len();
        buf.resize(len + crate::media::srtp::MAX_TRAILER, 0);
        let n = tx.protect_rtp(&mut buf, len).unwrap();
        buf.truncate(n);
        buf
    };
    let mut sent = Vec::new();
    for i in 0..20u16 {
        let payload = [i as u8; 160];
        let packet = protect(&mut tx, rtp(i, u32::from(i) * 160, 7, 0, &payload));
        r.a.send_to(&packet, r.a_port).unwrap();
        sent.push(packet);
        let got = recv(&r.b).expect("decrypted toward B");
        let v = RtpView::parse(&got[..]).unwrap();
        assert_eq!((v.sequence(), v.payload()), (i, &payload[..]));
    }
    // A forged packet (another key) and a replayed one reach nobody.
    r.a.send_to(
        &protect(&mut forger, rtp(20, 3200, 7, 0, &[9; 160])),
        r.a_port,
    )
    .unwrap();
    r.a.send_to(&sent[5], r.a_port).unwrap();
    assert_eq!(recv(&r.b), None, "nothing unauthenticated passes");
    // B's packets, a burst at a time (one batch, encrypted in place), reach A's peer
    // under our key.
    socket2::SockRef::from(&r.a)
        .set_recv_buffer_size(1 << 20)
        .unwrap();
    for i in 0..12u16 {
        r.b.send_to(&rtp(i, u32::from(i) * 160, 9, 0, &[i as u8; 160]), r.b_port)
            .unwrap();
    }
    for i in 0..12u16 {
        let mut got = recv(&r.a).expect("encrypted toward A");
        let n = rx.unprotect_rtp(&mut got).expect("under our key");
        let v = RtpView::parse(&got[..n]).unwrap();
        assert_eq!((v.sequence(), v.payload()), (i, &[i as u8; 160][..]));
    }
    let [a, _] = r.pair.stats().unwrap();
    assert_eq!(a.packets_in, 20);
    assert_eq!(a.dropped, 2);
    r.plane.stop();
}

/// A G.711 side on a 16 kHz stream: the side's audio reaches the connection as 20 ms
/// frames of 16 kHz PCM (resampled, the tone kept); the bot's audio is played toward the
/// side after the prefill, 20 ms a packet in its codec, holding the other side back; a mark
/// is reported once the audio before it played; a clear silences the side at once and
/// reports the marks still pending.
#[test]
fn a_stream_carries_a_g711_side_to_the_bot_and_plays_the_bots_audio_with_marks_and_clear() {
    use crate::media::stream::{queues, Down, Format, Frame, Up};
    let r = rig(40_800, SourcePolicy::Strict, Duration::from_secs(30));
    let (tap, mut up, down) = queues(Format::L16, 2000, 40, 1);
    r.pair.stream(Side::A, tap).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // The customer (side A) speaks 1 kHz in PCMU.
    for k in 0..25u32 {
        let payload: Vec<u8> = (0..160)
            .map(|i| {
                let t = f64::from(k * 160 + i) / 8000.0;
                crate::media::g711::ulaw_encode(
                    (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16,
                )
            })
            .collect();
        r.a.send_to(&rtp(k as u16, k * 160, 7, 0, &payload), r.a_port)
            .unwrap();
    }
    let mut pcm = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while pcm.len() < 25 * 320 && Instant::now() < deadline {
        match up.try_recv() {
            Ok(Up::Audio(f)) => {
                assert_eq!(f.len, 640, "20 ms of 16 kHz PCM");
                pcm.extend(
                    f.bytes()
                        .chunks_exact(2)
                        .map(|c| f64::from(i16::from_le_bytes([c[0], c[1]]))),
                );
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    assert_eq!(pcm.len(), 25 * 320);
    let at = |f: f64| {
        let w = 2.0 * std::f64::consts::PI * f / 16_000.0;
        let tail = &pcm[1600..];
        let (re, im) = tail
            .iter()
            .enumerate()
            .fold((0.0, 0.0), |(re, im), (i, &x)| {
                (re + x * (w * i as f64).cos(), im + x * (w * i as f64).sin())
            });
        2.0 * (re * re + im * im).sqrt() / tail.len() as f64
    };
    assert!(at(1000.0) > 6000.0, "1 kHz at {}", at(1000.0));
    assert!(at(7000.0) < 300.0, "an image at 7 kHz: {}", at(7000.0));

    // The bot: 200 ms of 500 Hz at 16 kHz, a mark, then 2 s more.
    let tone = |k: u64| -> Vec<u8> {
        (0..320u64)
            .flat_map(|i| {
                let t = (k * 320 + i) as f64 / 16_000.0;
                ((8000.0 * (2.0 * std::f64::consts::PI * 500.0 * t).sin()) as i16).to_le_bytes()
            })
            .collect()
    };
    let now = Instant::now();
    for k in 0..10 {
        down.send(Down::Audio(Frame::new(&tone(k), now))).unwrap();
    }
    down.send(Down::Mark(1)).unwrap();
    for k in 10..60 {
        down.send(Down::Audio(Frame::new(&tone(k), now))).unwrap();
    }
    down.send(Down::Mark(2)).unwrap();
    // B talks meanwhile: held back while the stream has the floor.
    r.b.send_to(&rtp(1, 160, 9, 0, &[0x11; 160]), r.b_port)
        .unwrap();
    // Silence until the bot's audio plays (the side's stream has no gaps), then the bot.
    let silent = |p: &[u8]| p.iter().all(|&b| b == 0xFF || b == 0x7F);
    let mut got = Vec::new();
    let mut silence = 0;
    while got.len() < 15 {
        let p = recv(&r.a).expect("packets toward the side");
        let v = RtpView::parse(&p[..]).unwrap();
        assert_eq!(v.payload_type(), 0);
        assert_eq!(v.payload().len(), 160, "20 ms of PCMU");
        assert_ne!(v.payload()[0], 0x11, "B held back");
        if got.is_empty() && silent(v.payload()) {
            silence += 1;
            assert!(silence < 20, "the bot's audio never played");
            continue;
        }
        assert!(!silent(v.payload()), "a gap in the bot's audio");
        got.push((v.sequence(), v.timestamp()));
    }
    for w in got.windows(2) {
        assert_eq!(w[1].0, w[0].0.wrapping_add(1));
        assert_eq!(w[1].1, w[0].1.wrapping_add(160));
    }
    // Mark 1 played (after 10 frames), mark 2 not yet.
    let mut played = Vec::new();
    let mut latency = None;
    while let Ok(u) = up.try_recv() {
        match u {
            Up::Played(id) => played.push(id),
            Up::Latency(d) => latency = Some(d),
            _ => {}
        }
    }
    assert_eq!(played, [1]);
    // Measured from the audio's arrival: it was buffered beyond the prefill at once, so it
    // played at the shard's next period.
    let latency = latency.expect("the latency of audio reaching an empty buffer");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    // A clear: mark 2 is reported at once, and the side goes quiet within a period.
    down.send(Down::Clear).unwrap();
    let cleared = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(1);
    let mark2 = loop {
        match up.try_recv() {
            Ok(Up::Played(2)) => break Instant::now(),
            _ if Instant::now() > deadline => panic!("mark 2 never reported"),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    assert!(mark2 - cleared < Duration::from_millis(100));
    // At most what was in flight, then silence.
    let mut after = 0;
    loop {
        let p = recv(&r.a).expect("silence after the clear");
        if silent(RtpView::parse(&p[..]).unwrap().payload()) {
            break;
        }
        after += 1;
        assert!(after <= 2, "audio after the clear");
    }
    // A stop for another stream changes nothing; with this one stopped, B is heard again.
    r.pair.stop_stream(7).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    r.b.send_to(&rtp(2, 320, 9, 0, &[0x22; 160]), r.b_port)
        .unwrap();
    let p = recv(&r.a).unwrap();
    assert_ne!(
        RtpView::parse(&p[..]).unwrap().payload()[0],
        0x22,
        "B heard under the stream"
    );
    r.pair.stop_stream(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    r.a.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while recv(&r.a).is_some() {}
    r.a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    r.b.send_to(&rtp(3, 480, 9, 0, &[0x22; 160]), r.b_port)
        .unwrap();
    let p = recv(&r.a).unwrap();
    assert_eq!(RtpView::parse(&p[..]).unwrap().payload()[0], 0x22);
    r.plane.stop();
}
