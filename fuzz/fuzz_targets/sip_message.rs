//! Arbitrary octets through the SIP codec as a datagram, through the stream framer in two
//! pieces, through validation, and (for whatever parses) through encode and parse again.
//!
//! `cargo fuzz run sip_message` (from the repository root).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use waswitch::sip::header::{AuthParams, CSeq, NameAddr, Reason, SessionExpires, Via};
use waswitch::sip::msg::{parse_datagram, HeaderName, StreamFramer};
use waswitch::sip::validate::screen;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let parsed = parse_datagram(bytes.clone());
    if let Ok(msg) = &parsed {
        for h in &msg.headers {
            match h.name {
                HeaderName::Via => drop(Via::parse_all(&h.value)),
                HeaderName::From | HeaderName::To => drop(NameAddr::parse(&h.value)),
                HeaderName::Contact | HeaderName::Route | HeaderName::RecordRoute => {
                    drop(NameAddr::parse_all(&h.value))
                }
                HeaderName::CSeq => drop(CSeq::parse(&h.value)),
                HeaderName::Reason => drop(Reason::parse_all(&h.value)),
                HeaderName::SessionExpires => drop(SessionExpires::parse(&h.value)),
                HeaderName::Authorization | HeaderName::WwwAuthenticate => {
                    drop(AuthParams::parse(&h.value))
                }
                _ => {}
            }
        }
        // What we parsed, we can write, and it reads back the same.
        let again = parse_datagram(msg.to_bytes()).expect("re-encoded message parses");
        assert_eq!(again.start, msg.start);
        assert_eq!(again.body, msg.body);
    }
    let _ = screen(parsed);
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut framer = StreamFramer::new();
    framer.push(&data[..split]);
    let _ = framer.next_message();
    framer.push(&data[split..]);
    while let Ok(Some(_)) = framer.next_message() {}
});
