//! The media path: the per-packet work of the relay (validate, count, rewrite in place), a
//! packet through a real shard over loopback, G.711 and Opus per 20 ms frame, and the SRTP
//! of SDES (SIP) and of WebRTC (DTLS-SRTP) legs per packet.
//!
//! `cargo bench --bench media`
//! `cargo bench --bench media --features webrtc-aws-lc -- webrtc` (WebRTC's crypto from
//! aws-lc instead of the RustCrypto crates)

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use waswitch::media::g711;
use waswitch::media::plane::MediaPlane;
use waswitch::media::ports::PortAllocator;
use waswitch::media::rtcp::ReceiverStats;
use waswitch::media::rtp::{write_packet, RtpView};
use waswitch::media::types::{Remote, Side, SourcePolicy};

#[path = "../loadtest/webrtc_pair.rs"]
#[allow(dead_code)]
mod webrtc_pair;

fn packet() -> [u8; 172] {
    let mut p = [0u8; 172];
    let _ = write_packet(&mut p, false, 8, 1000, 160_000, 0x1234_5678, &[0xd5; 160]);
    p
}

fn per_packet(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay_userspace");
    g.throughput(Throughput::Elements(1));
    let mut buf = packet();
    let mut stats = ReceiverStats::default();
    let mut seq = 0u16;
    g.bench_function("validate_count_rewrite", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let mut v = RtpView::parse(black_box(&mut buf[..])).expect("valid");
            stats.on_packet(v.sequence(), v.timestamp(), u32::from(seq) * 160);
            v.set_sequence(seq);
            v.set_timestamp(u32::from(seq) * 160);
            v.set_ssrc(7);
            black_box(v.payload().len())
        })
    });
    g.finish();
}

fn through_a_shard(c: &mut Criterion) {
    let plane = MediaPlane::start(
        "127.0.0.1".parse().expect("ip"),
        PortAllocator::new(26_000, 26_099),
        1,
        SourcePolicy::Strict,
        Duration::from_secs(3600),
    )
    .expect("plane");
    let pair = plane.add_pair(std::sync::Arc::new(|_| {})).expect("pair");
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    b.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let remote = |s: &UdpSocket| Remote {
        addr: Some(s.local_addr().expect("addr")),
        rtcp_mux: false,
        clock: 8000,
        dtmf_pt: None,
        dtmf_clock: 8000,
        sends: true,
        codec_pt: Some(0),
        codec: None,
    };
    pair.set_remote(Side::A, remote(&a)).expect("remote");
    pair.set_remote(Side::B, remote(&b)).expect("remote");
    let to = SocketAddr::from(([127, 0, 0, 1], pair.ports()[0]));
    let p = packet();
    let mut buf = [0u8; 2048];
    let mut g = c.benchmark_group("relay_loopback");
    g.throughput(Throughput::Elements(1));
    g.bench_function("send_relay_receive", |bench| {
        bench.iter(|| {
            a.send_to(&p, to).expect("send");
            black_box(b.recv(&mut buf).expect("relayed"))
        })
    });
    g.finish();
    drop(pair);
    plane.stop();
}

fn g711_frames(c: &mut Criterion) {
    let samples: Vec<i16> = (0..160)
        .map(|i| ((i as f64 * 0.39).sin() * 12_000.0) as i16)
        .collect();
    let mut codes = [0u8; 160];
    let mut back = [0i16; 160];
    let mut g = c.benchmark_group("g711_20ms_frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pcmu_encode", |b| {
        b.iter(|| g711::linear_to_ulaw(black_box(&samples), &mut codes))
    });
    g.bench_function("pcmu_decode", |b| {
        b.iter(|| g711::ulaw_to_linear(black_box(&codes), &mut back))
    });
    g.bench_function("pcma_encode", |b| {
        b.iter(|| g711::linear_to_alaw(black_box(&samples), &mut codes))
    });
    g.bench_function("pcma_decode", |b| {
        b.iter(|| g711::alaw_to_linear(black_box(&codes), &mut back))
    });
    g.finish();
}

fn opus_frames(c: &mut Criterion) {
    use waswitch::media::transcode::{Codec, Transcoder};
    let samples: Vec<i16> = (0..160)
        .map(|i| ((i as f64 * 0.39).sin() * 12_000.0) as i16)
        .collect();
    let pcmu: Vec<u8> = samples.iter().map(|&s| g711::ulaw_encode(s)).collect();
    let mut to_opus = Transcoder::new(Codec::Pcmu, Codec::Opus).expect("encoder");
    let mut opus_packet = [0u8; 400];
    let n = to_opus.transcode(&pcmu, &mut opus_packet).expect("encode");
    let mut to_pcmu = Transcoder::new(Codec::Opus, Codec::Pcmu).expect("decoder");
    let mut out = [0u8; 960];
    let mut g = c.benchmark_group("transcode_20ms_frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pcmu_to_opus", |b| {
        b.iter(|| {
            to_opus
                .transcode(black_box(&pcmu), &mut opus_packet)
                .expect("encode")
        })
    });
    for complexity in [0u8, 10] {
        let mut tx =
            Transcoder::with_complexity(Codec::Pcmu, Codec::Opus, complexity).expect("encoder");
        let mut packet = [0u8; 400];
        g.bench_function(format!("pcmu_to_opus_complexity_{complexity}"), |b| {
            b.iter(|| tx.transcode(black_box(&pcmu), &mut packet).expect("encode"))
        });
    }
    g.bench_function("opus_to_pcmu", |b| {
        b.iter(|| {
            to_pcmu
                .transcode(black_box(&opus_packet[..n]), &mut out)
                .expect("decode")
        })
    });
    g.finish();
}

/// SDES-SRTP of a 20 ms G.711 packet (160 bytes of payload), in place: protect on the way
/// out, check and decrypt on the way in.
fn srtp_packets(c: &mut Criterion) {
    use waswitch::media::srtp::{MasterKey, SrtpReceiver, SrtpSender, Suite, MAX_TRAILER};
    let mut g = c.benchmark_group("srtp_aes_cm_128_hmac_sha1_80");
    g.throughput(Throughput::Elements(1));
    let key = MasterKey::random().expect("random");
    let mut tx = SrtpSender::new(Suite::AesCm128HmacSha1_80, &key);
    let mut rx = SrtpReceiver::new(Suite::AesCm128HmacSha1_80, &key);
    let plain = packet();
    let mut buf = [0u8; 172 + MAX_TRAILER];
    let mut seq = 0u16;
    g.bench_function("protect_then_unprotect", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            buf[..172].copy_from_slice(&plain);
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            let n = tx.protect_rtp(&mut buf, 172).expect("protect");
            black_box(rx.unprotect_rtp(&mut buf[..n]).expect("unprotect"))
        })
    });
    g.finish();
}

/// The per-packet work of a WebRTC leg connected as Meta connects (ICE, DTLS-SRTP, RTP
/// mode): an 80-byte Opus packet from the peer authenticated, decrypted and handed out as
/// RTP; one of ours encrypted and handed to the socket. The crypto is whichever backend
/// the build gives str0m.
fn webrtc_packets(c: &mut Criterion) {
    use str0m::media::Pt;
    use str0m::rtp::RtpWrite;
    use str0m::{Input, Output};
    use waswitch::media::webrtc::LegOutput;

    let mut g = c.benchmark_group("webrtc_srtp_opus");
    g.throughput(Throughput::Elements(1));
    let webrtc_pair::Connected {
        mut leg,
        mut peer,
        mid,
        now,
        ..
    } = webrtc_pair::setup(1, Instant::now());
    let theirs = webrtc_pair::theirs(1);
    let pt = leg.opus_pt();
    let frame = [0x5a_u8; 80];
    let mut now = now;
    let mut k: u64 = 0;
    // The peer's packets are made (and encrypted) outside the measured time, 1,024 at a
    // time; each is new to the leg (SRTP refuses replays).
    g.bench_function("receive", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut packets: Vec<Vec<u8>> = Vec::with_capacity(1024);
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(1024);
                keep_alive(&mut leg, &mut peer, now);
                packets.clear();
                while (packets.len() as u64) < chunk {
                    k += 1;
                    now += Duration::from_millis(20);
                    peer.handle_input(Input::Timeout(now)).expect("peer clock");
                    let mut api = peer.direct_api();
                    let tx = api.stream_tx_by_mid(mid, None).expect("peer stream");
                    tx.write_rtp(RtpWrite::new(
                        Pt::from(pt),
                        k.into(),
                        (k * 960) as u32,
                        now,
                        &frame[..],
                    ));
                    loop {
                        match peer.poll_output().expect("peer output") {
                            Output::Timeout(_) => break,
                            // SRTP only (RTCP has a payload type of 200 to 204).
                            Output::Transmit(t) if !(200..=204).contains(&t.contents[1]) => {
                                packets.push(t.contents.to_vec())
                            }
                            _ => {}
                        }
                    }
                }
                let t = Instant::now();
                let mut got = 0;
                for p in &packets {
                    leg.receive_into(now, theirs, p, &mut |_, d| {
                        black_box(d);
                    })
                    .expect("receive");
                    while let Some(event) = leg.next_event() {
                        if matches!(event, LegOutput::Rtp { .. }) {
                            got += 1;
                        }
                        black_box(event);
                    }
                }
                spent += t.elapsed();
                assert_eq!(got, packets.len(), "every packet decrypted");
                left -= chunk;
            }
            spent
        })
    });
    g.bench_function("send", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(1024);
                // str0m releases a packet at the time it last saw (a live leg's clock moves
                // with every datagram it receives): the chunk is sent at one instant.
                now += Duration::from_millis(20);
                keep_alive(&mut leg, &mut peer, now);
                let t = Instant::now();
                let mut sent = 0;
                for _ in 0..chunk {
                    k += 1;
                    leg.send_rtp(now, pt, k, (k * 960) as u32, false, &frame)
                        .expect("send");
                    leg.transmit_into(&mut |_, d| {
                        sent += 1;
                        black_box(d);
                    })
                    .expect("transmit");
                }
                spent += t.elapsed();
                assert!(sent >= chunk, "every packet went out");
                left -= chunk;
            }
            spent
        })
    });
    g.finish();
}

/// Runs both sides' timers at `now` and passes their STUN between them (ICE consent, as
/// between real peers), outside the measured time; media and RTCP are left out.
fn keep_alive(leg: &mut waswitch::media::webrtc::WebRtcLeg, peer: &mut str0m::Rtc, now: Instant) {
    use str0m::{Input, Output};
    let theirs = webrtc_pair::theirs(1);
    let stun = |d: &[u8]| !d.is_empty() && d[0] < 4;
    for _ in 0..8 {
        leg.handle_timeout(now).expect("leg clock");
        let mut to_peer = Vec::new();
        leg.transmit_into(&mut |_, d| {
            if stun(d) {
                to_peer.push(d.to_vec());
            }
        })
        .expect("leg output");
        while leg.next_event().is_some() {}
        peer.handle_input(Input::Timeout(now)).expect("peer clock");
        for d in &to_peer {
            webrtc_pair::deliver_to_peer(peer, 1, now, d);
        }
        let mut to_leg = Vec::new();
        loop {
            match peer.poll_output().expect("peer output") {
                Output::Timeout(_) => break,
                Output::Transmit(t) if stun(&t.contents) => to_leg.push(t.contents.to_vec()),
                _ => {}
            }
        }
        if to_peer.is_empty() && to_leg.is_empty() {
            return;
        }
        for d in &to_leg {
            leg.handle_receive(now, theirs, d).expect("leg input");
        }
    }
}

criterion_group!(
    benches,
    per_packet,
    through_a_shard,
    g711_frames,
    opus_frames,
    srtp_packets,
    webrtc_packets
);
criterion_main!(benches);
