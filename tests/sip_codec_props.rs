//! Property: every message the builder makes parses back to itself, as a datagram and from a
//! stream cut at arbitrary points.

use bytes::Bytes;
use proptest::prelude::*;
use waswitch::sip::build::MessageBuilder;
use waswitch::sip::msg::{parse_datagram, HeaderName, Method, SipMessage, StreamFramer};

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]{0,15}"
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Invite),
        Just(Method::Ack),
        Just(Method::Bye),
        Just(Method::Cancel),
        Just(Method::Options),
        Just(Method::Update),
        token().prop_map(|t| Method::from_token(Bytes::from(t))),
    ]
}

/// A header value as the parser returns it: no CR/LF, no leading or trailing white space.
fn value() -> impl Strategy<Value = String> {
    "([!-~]([ -~]{0,60}[!-~])?)?"
}

fn header() -> impl Strategy<Value = (HeaderName, String)> {
    (token(), value())
        .prop_map(|(name, v)| (HeaderName::from_bytes(Bytes::from(name)), v))
        .prop_filter("Content-Length is the builder's", |(n, _)| {
            *n != HeaderName::ContentLength
        })
}

fn message() -> impl Strategy<Value = SipMessage> {
    let request = (method(), "sip:[a-z0-9]{1,8}@[a-z0-9.]{1,20}(:[0-9]{1,5})?");
    let response = (100u16..=699, "[ -~]{0,30}");
    let start = prop_oneof![
        request.prop_map(|(m, uri)| MessageBuilder::request(m, &uri)),
        response.prop_map(|(code, reason)| MessageBuilder::response(code, &reason)),
    ];
    (
        start,
        proptest::collection::vec(header(), 0..12),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
    )
        .prop_map(|(mut b, headers, body)| {
            for (name, v) in headers {
                b = b.header(name, v);
            }
            if let Some(body) = body {
                b = b.body("application/octet-stream", body);
            }
            b.build()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn build_then_parse_is_identity(msg in message()) {
        let wire = msg.to_bytes();
        let parsed = parse_datagram(wire.clone()).expect("our own message parses");
        prop_assert_eq!(&parsed, &msg);
        // Encoding is stable: the parsed message encodes to the same octets.
        prop_assert_eq!(parsed.to_bytes(), wire);
    }

    #[test]
    fn stream_framing_matches_datagram_framing(
        msgs in proptest::collection::vec(message(), 1..4),
        cuts in proptest::collection::vec(1usize..200, 1..20),
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend_from_slice(&m.to_bytes());
        }
        let mut framer = StreamFramer::new();
        let mut out = Vec::new();
        let mut rest = &wire[..];
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let n = (*cut.next().unwrap_or(&1)).min(rest.len());
            framer.push(&rest[..n]);
            rest = &rest[n..];
            while let Some(m) = framer.next_message().expect("frames") {
                out.push(m);
            }
        }
        prop_assert_eq!(out, msgs);
        prop_assert_eq!(framer.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = waswitch::sip::validate::screen(parse_datagram(Bytes::from(data.clone())));
        let mut f = StreamFramer::new();
        f.push(&data);
        let _ = f.next_message();
    }
}
