//! SDES-SRTP (`media::srtp`) against an independent implementation: baresip with
//! `mediaenc=srtp-mand` answers a call whose offer carries our `a=crypto` key; its answer
//! carries its own. Each side encrypts a tone with its key and the other hears it: baresip's
//! 1 kHz, checked and decrypted here; our 600 Hz, in baresip's recording of what it decoded.
//! All on 127.0.0.1.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use waswitch::media::g711;
use waswitch::media::quality::tone_power;
use waswitch::media::srtp::{
    Crypto, MasterKey, SrtpError, SrtpReceiver, SrtpSender, Suite, MAX_TRAILER,
};

mod common;

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

#[test]
fn sdes_srtp_media_flows_both_ways_with_baresip() {
    let work = tempfile::tempdir().expect("workdir");
    let port = common::free_udp_port();
    let (mut baresip, log_path) = common::start_baresip(
        work.path(),
        port,
        "10100-10199",
        &["srtp.so"],
        ";audio_codecs=PCMU;mediaenc=srtp-mand",
    );
    let baresip_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Our side: a SIP socket, an RTP socket, and our key in the offer.
    let sip = UdpSocket::bind("127.0.0.1:0").expect("sip socket");
    sip.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp socket");
    rtp.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let (sip_port, rtp_port) = (
        sip.local_addr().expect("addr").port(),
        rtp.local_addr().expect("addr").port(),
    );
    let ours = Crypto {
        tag: 1,
        suite: Suite::AesCm128HmacSha1_80,
        key: MasterKey::random().expect("random"),
    };
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {rtp_port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:{}\r\n\
         a=ptime:20\r\na=sendrecv\r\n",
        ours.line()
    );
    let to = format!("<sip:agent@127.0.0.1:{port}>");
    let from = format!("<sip:test@127.0.0.1:{sip_port}>;tag=sdes1");
    let invite = format!(
        "INVITE sip:agent@127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK-sdes-1;rport\r\n\
         Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: sdes-test@127.0.0.1\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:test@127.0.0.1:{sip_port}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    let baresip_sip = format!("127.0.0.1:{port}");
    sip.send_to(invite.as_bytes(), &baresip_sip)
        .expect("INVITE");
    let mut buf = [0u8; 4096];
    let ok = loop {
        let (n, _) = sip
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no answer from baresip ({e}):\n{}", baresip_log()));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let status = msg.split_whitespace().nth(1).unwrap_or("");
        if status.starts_with('2') {
            break msg;
        }
        assert!(
            status.starts_with('1'),
            "baresip refused: {msg}\n{}",
            baresip_log()
        );
    };
    let to_tagged = header(&ok, "To").expect("To").to_string();
    let body = ok.split("\r\n\r\n").nth(1).expect("an SDP answer");
    let answer = waswitch::sdp::Sdp::parse(body.as_bytes())
        .expect("SDP")
        .audio()
        .expect("audio")
        .expect("a stream");
    assert!(answer.sdes(), "{body}");
    let theirs = Crypto::parse(answer.crypto.first().expect("their a=crypto")).expect("usable");
    assert_eq!(theirs.tag, ours.tag, "the answer keeps the offer's tag");
    assert_eq!(theirs.suite, ours.suite);
    assert_ne!(theirs.key, ours.key);
    let target = answer.target.expect("where baresip takes RTP");
    let ack = format!(
        "ACK sip:agent@127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK-sdes-2;rport\r\n\
         Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to_tagged}\r\n\
         Call-ID: sdes-test@127.0.0.1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    sip.send_to(ack.as_bytes(), &baresip_sip).expect("ACK");

    // 3 s of media both ways: our 600 Hz out, protected with our key; baresip's in,
    // checked and decrypted with its key.
    let mut tx = SrtpSender::new(ours.suite, &ours.key);
    let mut rx = SrtpReceiver::new(theirs.suite, &theirs.key);
    let mut heard: Vec<f32> = Vec::new();
    let (mut accepted, mut refused) = (0u32, 0u32);
    let mut seq = 1u16;
    let start = Instant::now();
    let mut next = start;
    let mut packet = [0u8; 12 + 160 + MAX_TRAILER];
    let mut inbound = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(3) {
        if Instant::now() >= next {
            let mut pcm = [0i16; 160];
            for (k, s) in pcm.iter_mut().enumerate() {
                let t = (u32::from(seq) * 160 + k as u32) as f32 / 8000.0;
                *s = ((2.0 * std::f32::consts::PI * 600.0 * t).sin() * 8000.0) as i16;
            }
            packet[0] = 0x80;
            packet[1] = 0;
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            packet[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            packet[8..12].copy_from_slice(&0x5d35_0001u32.to_be_bytes());
            g711::linear_to_ulaw(&pcm, &mut packet[12..172]);
            let n = tx.protect_rtp(&mut packet, 172).expect("protect");
            rtp.send_to(&packet[..n], target).expect("RTP out");
            seq = seq.wrapping_add(1);
            next += Duration::from_millis(20);
        }
        if let Ok(n) = rtp.recv(&mut inbound) {
            match rx.unprotect_rtp(&mut inbound[..n]) {
                Ok(len) => {
                    accepted += 1;
                    let header = 12 + 4 * usize::from(inbound[0] & 0x0f);
                    heard.extend(
                        inbound[header..len]
                            .iter()
                            .map(|&c| f32::from(g711::ulaw_decode(c)) / 32768.0),
                    );
                }
                Err(SrtpError::Short) => {}
                Err(_) => refused += 1,
            }
        }
    }
    let bye = format!(
        "BYE sip:agent@127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK-sdes-3;rport\r\n\
         Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to_tagged}\r\n\
         Call-ID: sdes-test@127.0.0.1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    sip.send_to(bye.as_bytes(), &baresip_sip).expect("BYE");
    std::thread::sleep(Duration::from_millis(700));
    baresip.stop();

    // baresip's packets: every one authenticated under its key, and its tone in them.
    assert!(
        accepted >= 100,
        "{accepted} SRTP packets from baresip taken, {refused} refused:\n{}",
        baresip_log()
    );
    assert_eq!(
        refused,
        0,
        "packets from baresip refused:\n{}",
        baresip_log()
    );
    let tail = &heard[heard.len() / 4..];
    let (p1000, p600) = (
        tone_power(tail, 1000.0, 8000.0),
        tone_power(tail, 600.0, 8000.0),
    );
    assert!(
        p1000 > 1e-4 && p1000 > 20.0 * p600,
        "baresip's 1 kHz: {p1000} vs {p600}"
    );

    // Ours, as baresip decrypted and decoded it.
    let recording = common::baresip_recording(work.path())
        .unwrap_or_else(|| panic!("baresip's recording of what it decoded:\n{}", baresip_log()));
    let (samples, rate) = common::read_wav(&recording);
    assert!(
        samples.len() as f32 >= rate * 2.0,
        "{} samples",
        samples.len()
    );
    let tail = &samples[samples.len() / 4..];
    let (p600, p1000) = (
        tone_power(tail, 600.0, rate),
        tone_power(tail, 1000.0, rate),
    );
    assert!(
        p600 > 1e-4 && p600 > 20.0 * p1000,
        "baresip heard our 600 Hz: {p600} vs {p1000}"
    );
}
