//! A customer's call as the SIP the bridge offers the business's trunks: the INVITE leg A
//! would have sent, carrying the customer's identity and the codecs the switch offers.

use crate::sip::build::MessageBuilder;
use crate::sip::msg::{HeaderName, Method, SipMessage};

/// The WhatsApp user of a call delivered to SIP, as the trunk learns it.
#[derive(Debug, Clone)]
pub(crate) struct WhatsAppCaller {
    /// Meta's call id.
    pub wa_call_id: String,
    /// The customer's WhatsApp number (digits).
    pub wa_id: String,
    /// Their WhatsApp profile name.
    pub name: Option<String>,
    /// The business number called (digits).
    pub business_number: String,
}

impl WhatsAppCaller {
    fn uri(&self) -> String {
        format!("sip:+{}@whatsapp.invalid", self.wa_id)
    }

    /// `"Name" <sip:+wa_id@whatsapp.invalid>`.
    pub(super) fn asserted_identity(&self) -> String {
        match &self.name {
            Some(n) => format!("\"{}\" <{}>", display_safe(n), self.uri()),
            None => format!("<{}>", self.uri()),
        }
    }

    /// The INVITE leg A would have sent: the customer calls the business number, offering
    /// `codecs` (the first trunk's, in its order) and telephone-events.
    pub(super) fn invite(&self, seed: u64, codecs: &[String]) -> SipMessage {
        let mut pts = Vec::new();
        let mut maps = String::new();
        for c in codecs {
            match c.to_ascii_lowercase().as_str() {
                "opus" => {
                    pts.push("111");
                    maps.push_str("a=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n");
                }
                "pcmu" => {
                    pts.push("0");
                    maps.push_str("a=rtpmap:0 PCMU/8000\r\n");
                }
                "pcma" => {
                    pts.push("8");
                    maps.push_str("a=rtpmap:8 PCMA/8000\r\n");
                }
                _ => {}
            }
        }
        pts.push("101");
        maps.push_str("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n");
        let sdp = format!(
            "v=0\r\no=waswitch {seed} 1 IN IP4 0.0.0.0\r\ns=WhatsApp call\r\nc=IN IP4 0.0.0.0\r\n\
             t=0 0\r\nm=audio 9 RTP/AVP {}\r\n{maps}a=ptime:20\r\na=sendrecv\r\n",
            pts.join(" ")
        );
        let to = format!("<sip:{}@whatsapp.invalid>", self.business_number);
        let from = match &self.name {
            Some(n) => format!("\"{}\" <{}>;tag={seed:x}w", display_safe(n), self.uri()),
            None => format!("<{}>;tag={seed:x}w", self.uri()),
        };
        MessageBuilder::request(
            Method::Invite,
            &format!("sip:{}@whatsapp.invalid", self.business_number),
        )
        .header(
            HeaderName::Via,
            format!("SIP/2.0/TLS whatsapp.invalid;branch=z9hG4bK{seed:x}w"),
        )
        .header(HeaderName::MaxForwards, "70")
        .header(HeaderName::From, from)
        .header(HeaderName::To, to)
        .header(HeaderName::CallId, format!("wa-{seed:x}@waswitch"))
        .header(HeaderName::CSeq, "1 INVITE")
        .header(HeaderName::Contact, format!("<{}>", self.uri()))
        .body("application/sdp", sdp)
        .build()
    }
}

/// A profile name as a quoted display name: no quotes, backslashes or line breaks.
fn display_safe(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '"' | '\\' | '\r' | '\n'))
        .take(64)
        .collect()
}
