//! Parsing and building a typical INVITE (with SDP), as a carrier sends it.
//!
//! `cargo bench --bench sip_codec`

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use waswitch::sip::build::MessageBuilder;
use waswitch::sip::header::{CSeq, NameAddr, Via};
use waswitch::sip::msg::{parse_datagram, HeaderName, Method};
use waswitch::sip::validate::{screen, Screened};

const SDP: &str = "v=0\r\no=- 3906117162 3906117162 IN IP4 192.0.2.10\r\ns=-\r\n\
c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 20000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n\
a=sendrecv\r\n";

fn invite() -> Bytes {
    MessageBuilder::request(Method::Invite, "sip:+4930123456@pbx.example.com:5060")
        .header(
            HeaderName::Via,
            "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-524287-1---5c1e2a3f;rport",
        )
        .header(HeaderName::MaxForwards, "70")
        .header(
            HeaderName::From,
            "\"Alice Example\" <sip:+4915112345678@wa.example.net>;tag=8a7f3c21",
        )
        .header(HeaderName::To, "<sip:+4930123456@pbx.example.com>")
        .header(
            HeaderName::CallId,
            "b9c6a2f0-3e1d-4c55-9a51-7f2d8e0c4b13@192.0.2.10",
        )
        .header(HeaderName::CSeq, "1 INVITE")
        .header(
            HeaderName::Contact,
            "<sip:waswitch@192.0.2.10:5060;transport=udp>",
        )
        .header(
            HeaderName::Allow,
            "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO",
        )
        .header(HeaderName::Supported, "timer")
        .header(HeaderName::SessionExpires, "1800;refresher=uac")
        .header(
            HeaderName::PAssertedIdentity,
            "<sip:+4915112345678@wa.example.net>",
        )
        .header(
            HeaderName::Other(Bytes::from_static(b"X-WA-Call-Id")),
            "wacid.HBgLMTIwMjU1NTAxMDAVAgASGCA",
        )
        .body("application/sdp", SDP)
        .build()
        .to_bytes()
}

fn codec(c: &mut Criterion) {
    let wire = invite();
    let mut g = c.benchmark_group("sip_invite");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter(|| parse_datagram(black_box(wire.clone())).expect("parses"))
    });
    g.bench_function("parse_and_validate", |b| {
        b.iter(|| match screen(parse_datagram(black_box(wire.clone()))) {
            Screened::Accept(m) => m,
            other => panic!("{other:?}"),
        })
    });
    let msg = parse_datagram(wire.clone()).expect("parses");
    g.bench_function("typed_b2bua_headers", |b| {
        b.iter(|| {
            let via = Via::parse_all(&msg.header(&HeaderName::Via).expect("via").value);
            let from = NameAddr::parse(&msg.header(&HeaderName::From).expect("from").value);
            let to = NameAddr::parse(&msg.header(&HeaderName::To).expect("to").value);
            let cseq = CSeq::parse(&msg.header(&HeaderName::CSeq).expect("cseq").value);
            black_box((via, from, to, cseq))
        })
    });
    let mut out = BytesMut::with_capacity(2048);
    g.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&msg).encode(&mut out);
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
