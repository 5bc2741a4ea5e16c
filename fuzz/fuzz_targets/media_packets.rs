//! Everything the media plane reads from the network or from a peer's SDP: RTP packets
//! (parsed and rewritten in place), RTCP compound packets, telephone-events, and SDP bodies
//! (read and anchored). None of it may panic, whatever arrives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waswitch::media::dtmf::DtmfReceiver;
use waswitch::media::rtcp::{for_each_report, ReceiverStats};
use waswitch::media::rtp::RtpView;
use waswitch::sdp::Sdp;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    if let Ok(mut v) = RtpView::parse(&mut buf[..]) {
        let (seq, ts) = (v.sequence(), v.timestamp());
        let mut stats = ReceiverStats::default();
        stats.on_packet(seq, ts, ts.wrapping_add(160));
        let _ = (v.csrcs().count(), v.extension(), stats.lost(), stats.jitter());
        let mut dtmf = DtmfReceiver::default();
        let _ = dtmf.on_packet(ts, v.payload());
        v.set_sequence(seq.wrapping_add(1));
        v.set_ssrc(1);
        v.set_payload_type(v.payload_type().wrapping_add(1));
    }
    let _ = for_each_report(data, |r| {
        let _ = r.blocks.len();
    });
    if let Ok(mut sdp) = Sdp::parse(data) {
        let _ = sdp.audio();
        sdp.anchor("127.0.0.1".parse().expect("ip"), 20_000);
        let again = Sdp::parse(&sdp.to_bytes());
        assert!(again.is_ok(), "an anchored description parses again");
    }
});
