//! What the call plane's unit tests share: a PBX's INVITE toward a WhatsApp customer.

use crate::sip::build::MessageBuilder;
use crate::sip::msg::{HeaderName, Method, SipMessage};

/// A PBX's offer: G.729, PCMA, PCMU and telephone-events.
pub(crate) const PBX_OFFER: &str =
    "v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
     m=audio 40000 RTP/AVP 18 8 0 101\r\na=rtpmap:18 G729/8000\r\na=rtpmap:8 PCMA/8000\r\n\
     a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";

/// A PBX's INVITE for a WhatsApp customer, carrying `body` as its SDP.
pub(crate) fn pbx_invite(body: &str) -> SipMessage {
    MessageBuilder::request(Method::Invite, "sip:4915112345678@whatsapp.invalid")
        .header(
            HeaderName::Via,
            "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKb1",
        )
        .header(HeaderName::From, "<sip:15551112222@pbx.invalid>;tag=b1")
        .header(HeaderName::To, "<sip:4915112345678@whatsapp.invalid>")
        .header(HeaderName::CallId, "b-leg@waswitch")
        .header(HeaderName::CSeq, "1 INVITE")
        .header(HeaderName::Contact, "<sip:waswitch@127.0.0.1:5060>")
        .body("application/sdp", body.to_string())
        .build()
}
