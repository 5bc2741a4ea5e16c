//! Refusals of calls to WhatsApp customers, as SIP.

use super::*;
use crate::call::testing::{pbx_invite as invite, PBX_OFFER};

#[test]
fn refusals_carry_their_reason() {
    let r = refusal(&invite(PBX_OFFER), Blocked::NoPermission, "x");
    assert_eq!(r.status(), Some(403));
    let reason =
        String::from_utf8_lossy(&r.header(&HeaderName::Reason).expect("Reason").value).into_owned();
    assert_eq!(reason, "SIP;cause=403;text=\"call permission required\"");
    for b in Blocked::ALL {
        assert_eq!(Blocked::from_name(b.as_str()), Some(b));
    }
}

#[test]
fn an_offer_is_usable_only_with_a_codec_carried_to_whatsapp() {
    assert!(offer_usable(PBX_OFFER.as_bytes()));
    assert!(!offer_usable(b""));
    let g729 = "v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                m=audio 40000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
    assert!(!offer_usable(g729.as_bytes()));
}
