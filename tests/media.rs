//! Media through the switch: SIPp caller → waswitch → SIPp callee echoing RTP (`-rtp_echo`),
//! with waswitch anchoring both legs. RTP sent by the test itself checks order and payload
//! integrity end to end; SIPp's own pcaps (G.711 A-law, an RFC 4733 digit) check what the
//! switch reports.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{free_udp_port, run_sipp_with, runtime, Uas};
use waswitch::call::media::MediaPorts;
use waswitch::config::Config;
use waswitch::media::rtp::{write_packet, RtpView};
use waswitch::node::Node;
use waswitch::store::{CdrFilter, CdrRepository, Store};

/// A node routing every call to the SIPp callee on `uas_port`. Media ports come from a range
/// of its own below the kernel's ephemeral ports (which SIPp and the tests' sockets use).
fn node(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    uas_port: u16,
    policy: &str,
    media_min: u16,
) -> Node {
    let media_max = media_min + 999;
    let toml = format!(
        "[media]\nport_min = {media_min}\nport_max = {media_max}\nsource_policy = \"{policy}\"\n\
         [[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:{uas_port}\"\n\
         accept_from = [\"127.0.0.1\"]\noptions_interval_secs = 0\n\
         [[route]]\nname = \"all\"\ntrunks = [\"pbx\"]\n"
    );
    rt.block_on(async {
        let config = Config::loopback(&toml, &dir.join("m.db")).expect("config");
        Node::start(config).await.expect("node")
    })
}

/// The media view of the one call in progress, once it is anchored and answered.
fn wait_for_call(
    rt: &tokio::runtime::Runtime,
    node: &Node,
) -> (waswitch::call::CallId, MediaPorts) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no anchored, answered call");
        if let Some(id) = node.calls().ids().into_iter().next() {
            if let Some(snap) = rt.block_on(node.calls().snapshot(&id)) {
                if let (Some(media), Some(_)) = (snap.media, snap.answered_at) {
                    if media.anchored {
                        return (id, media);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn media_of(rt: &tokio::runtime::Runtime, node: &Node, id: &waswitch::call::CallId) -> MediaPorts {
    rt.block_on(node.calls().snapshot(id))
        .and_then(|s| s.media)
        .expect("call still up")
}

#[test]
fn rtp_crosses_the_switch_in_order_intact_and_foreign_packets_are_dropped() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let uas_port = free_udp_port();
    let node = node(&rt, dir.path(), uas_port, "strict", 24_000);
    let target = node.sip_udp_addr().expect("udp");
    let uas = Uas::start_with("b2bua_uas.xml", "u1", uas_port, 1, &["-rtp_echo"]);

    // The caller's SDP names this socket: the test is the caller's media.
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    rtp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let rtp_port = rtp.local_addr().expect("addr").port().to_string();
    let caller = std::thread::spawn(move || {
        run_sipp_with(
            "media_uac_port.xml",
            "u1",
            target,
            1,
            1,
            &["-set", "rtpport", &rtp_port],
        )
    });

    let (id, media) = wait_for_call(&rt, &node);
    let switch = SocketAddr::from(([127, 0, 0, 1], media.a));
    let mut sent = Vec::new();
    let mut buf = [0u8; 2048];
    for i in 0..100u16 {
        let payload: Vec<u8> = (0..160).map(|k| (i as usize * 7 + k) as u8).collect();
        let mut packet = [0u8; 172];
        let n = write_packet(
            &mut packet,
            i == 0,
            0,
            500 + i,
            8000 + u32::from(i) * 160,
            0xabcd,
            &payload,
        )
        .expect("fits");
        rtp.send_to(&packet[..n], switch).expect("send");
        sent.push(payload);
    }
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let Ok(n) = rtp.recv(&mut buf) else { break };
        let v = RtpView::parse(&buf[..n]).expect("RTP back from the switch");
        received.push((v.sequence(), v.payload().to_vec()));
    }
    assert_eq!(
        received.len(),
        100,
        "every packet came back through both legs"
    );
    for (i, (seq, payload)) in received.iter().enumerate() {
        assert_eq!(*seq, 500 + i as u16, "in order");
        assert_eq!(payload, &sent[i], "payload intact");
    }

    // A packet from anyone else is neither relayed nor echoed, and is counted.
    let intruder = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut packet = [0u8; 172];
    let n = write_packet(&mut packet, false, 0, 1, 1, 0x666, &[0x55; 160]).expect("fits");
    intruder.send_to(&packet[..n], switch).expect("send");
    rtp.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    assert!(
        rtp.recv(&mut buf).is_err(),
        "nothing echoed for the intruder"
    );
    let stats = media_of(&rt, &node, &id).stats.expect("stats");
    assert_eq!(stats[0].packets_in, 100);
    assert_eq!(stats[0].dropped, 1);
    assert_eq!(stats[1].packets_in, 100, "the echoes");
    let metrics = waswitch::telemetry::install_metrics().render();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("waswitch_rtp_dropped_total{reason=\"foreign_source\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );

    let (code, counters, log) = caller.join().expect("caller thread");
    assert_eq!(code, 0, "{log}");
    assert_eq!(counters.get("SuccessfulCall(C)"), Some(&1));
    let (_, uas_counters) = uas.finish();
    assert_eq!(uas_counters.get("SuccessfulCall(C)"), Some(&1));
    // The CDR carries the call's media quality.
    let cdrs = rt.block_on(async {
        assert!(node.calls().wait_idle(Duration::from_secs(10)).await);
        node.drain_and_stop().await;
        let config = Config::loopback("", &dir.path().join("m.db")).expect("config");
        let store = Store::open(&config.store).await.expect("store");
        store.list(&CdrFilter::default()).await.expect("cdrs")
    });
    assert_eq!(cdrs.len(), 1);
    let media = cdrs[0].media.expect("media quality in the CDR");
    assert_eq!(media.packets, 200, "{media:?}");
    assert_eq!(media.lost, 0);
    assert!(media.mos_centi >= 430, "{media:?}");
    // And how its audio crossed the switch: the callee answered PCMU, relayed untouched.
    assert_eq!(cdrs[0].codec_path.as_deref(), Some("PCMU pass-through"));
}

#[test]
fn sipp_pcaps_are_relayed_and_the_dtmf_digit_is_reported() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let uas_port = free_udp_port();
    let node = node(&rt, dir.path(), uas_port, "latch", 25_000);
    let target = node.sip_udp_addr().expect("udp");
    let uas = Uas::start_with("b2bua_uas.xml", "u1", uas_port, 1, &["-rtp_echo"]);
    let caller =
        std::thread::spawn(move || run_sipp_with("media_uac_pcap.xml", "u1", target, 1, 1, &[]));
    let (id, _) = wait_for_call(&rt, &node);
    // dtmf_2833_1.pcap: 10 telephone-event packets (digit 1); g711a.pcap: 236 PCMA packets
    // of 30 ms (7 s).
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut media = media_of(&rt, &node, &id);
    while media
        .stats
        .is_none_or(|s| s[0].packets_in < 246 || s[1].packets_in < 246)
    {
        assert!(Instant::now() < deadline, "pcaps not relayed: {media:?}");
        std::thread::sleep(Duration::from_millis(100));
        media = media_of(&rt, &node, &id);
    }
    let stats = media.stats.expect("stats");
    assert_eq!(stats[0].packets_in, 246, "{stats:?}");
    assert_eq!(stats[1].packets_out, 246, "all of it went to the callee");
    assert_eq!(stats[0].dropped + stats[1].dropped, 0);
    assert_eq!(
        stats[0].lost, 0,
        "two runs (DTMF, then audio), nothing lost: {stats:?}"
    );
    // The caller's digit, and the callee's echo of it: once each.
    let digits: Vec<(char, char)> = media.digits.iter().map(|d| (d.side, d.digit)).collect();
    assert_eq!(digits, [('a', '1'), ('b', '1')], "{:?}", media.digits);
    // The pcap's end packets carry a duration of 2240 timestamp units: 280 ms at 8 kHz.
    assert_eq!(media.digits[0].duration_ms, 280, "{:?}", media.digits);

    let (code, _, log) = caller.join().expect("caller thread");
    assert_eq!(code, 0, "{log}");
    let (_, uas_counters) = uas.finish();
    assert_eq!(uas_counters.get("SuccessfulCall(C)"), Some(&1));
    rt.block_on(node.drain_and_stop());
}
