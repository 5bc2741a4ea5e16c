//! Request and response validation: what a UAS answers to a well-framed but unacceptable
//! request (RFC 3261 §8.2, RFC 4475), and which responses are dropped.
//!
//! The reason phrase of every rejection names the defect, so the peer's logs say what to fix.

use super::header::{tokens, CSeq, HeaderError, NameAddr, Via};
use super::msg::{HeaderName, Method, SipMessage, StartLine};
use super::uri::SipUri;

/// Option tags this switch supports (Supported/Require).
pub const SUPPORTED_OPTIONS: &[&str] = &["timer"];

/// Why a request is refused, and how to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Status code of the answer.
    pub status: u16,
    /// Reason phrase naming the defect.
    pub reason: String,
    /// For 420: the option tags we do not support (the `Unsupported` header).
    pub unsupported: Vec<String>,
}

impl Rejection {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            unsupported: Vec::new(),
        }
    }

    fn malformed(header: &str, e: HeaderError) -> Self {
        Self::new(400, format!("Bad Request - malformed {header}: {e}"))
    }
}

/// Single-valued headers: more than one is a 400 (RFC 4475 §3.3.8).
const SINGLE: &[(HeaderName, &str)] = &[
    (HeaderName::From, "From"),
    (HeaderName::To, "To"),
    (HeaderName::CallId, "Call-ID"),
    (HeaderName::CSeq, "CSeq"),
    (HeaderName::MaxForwards, "Max-Forwards"),
    (HeaderName::ContentType, "Content-Type"),
    (HeaderName::SessionExpires, "Session-Expires"),
    (HeaderName::Expires, "Expires"),
];

fn is_sip_2_0(version: &[u8]) -> bool {
    version.eq_ignore_ascii_case(b"SIP/2.0")
}

/// Checks the headers every message must carry and that they parse.
fn check_common(msg: &SipMessage) -> Result<CSeq, Rejection> {
    for (name, label) in [
        (HeaderName::Via, "Via"),
        (HeaderName::From, "From"),
        (HeaderName::To, "To"),
        (HeaderName::CallId, "Call-ID"),
        (HeaderName::CSeq, "CSeq"),
    ] {
        if msg.header(&name).is_none() {
            return Err(Rejection::new(
                400,
                format!("Bad Request - missing {label}"),
            ));
        }
    }
    for (name, label) in SINGLE {
        if msg.headers_named(name).count() > 1 {
            return Err(Rejection::new(
                400,
                format!("Bad Request - more than one {label}"),
            ));
        }
    }
    for via in msg.headers_named(&HeaderName::Via) {
        Via::parse_all(&via.value).map_err(|e| Rejection::malformed("Via", e))?;
    }
    for (name, label) in [(HeaderName::From, "From"), (HeaderName::To, "To")] {
        if let Some(h) = msg.header(&name) {
            NameAddr::parse(&h.value).map_err(|e| Rejection::malformed(label, e))?;
        }
    }
    for (name, label) in [
        (HeaderName::Contact, "Contact"),
        (HeaderName::Route, "Route"),
        (HeaderName::RecordRoute, "Record-Route"),
    ] {
        for h in msg.headers_named(&name) {
            if name == HeaderName::Contact && &h.value[..] == b"*" {
                continue;
            }
            NameAddr::parse_all(&h.value).map_err(|e| Rejection::malformed(label, e))?;
        }
    }
    if msg
        .header(&HeaderName::CallId)
        .is_some_and(|h| h.value.is_empty())
    {
        return Err(Rejection::new(400, "Bad Request - empty Call-ID"));
    }
    let cseq = msg
        .header(&HeaderName::CSeq)
        .map(|h| CSeq::parse(&h.value))
        .transpose()
        .map_err(|e| Rejection::malformed("CSeq", e))?;
    // Presence was checked above.
    cseq.ok_or_else(|| Rejection::new(400, "Bad Request - missing CSeq"))
}

/// Decides whether a request is acceptable to this switch as a UAS; `Err` carries the
/// answer to send.
pub fn validate_request(msg: &SipMessage) -> Result<(), Rejection> {
    let StartLine::Request {
        method,
        uri,
        version,
    } = &msg.start
    else {
        return Err(Rejection::new(400, "Bad Request - not a request"));
    };
    if !is_sip_2_0(version) {
        return Err(Rejection::new(505, "Version Not Supported"));
    }
    let cseq = check_common(msg)?;
    if !method.is_known() {
        return Err(Rejection::new(501, "Not Implemented"));
    }
    if &cseq.method != method {
        return Err(Rejection::new(
            400,
            "Bad Request - CSeq method does not match the request method",
        ));
    }
    if let Some(h) = msg.header(&HeaderName::MaxForwards) {
        let hops = super::header::max_forwards(&h.value)
            .map_err(|e| Rejection::malformed("Max-Forwards", e))?;
        if hops == 0 && !matches!(method, Method::Options | Method::Ack) {
            return Err(Rejection::new(483, "Too Many Hops"));
        }
    }
    check_request_uri(uri)?;
    let mut unsupported = Vec::new();
    for h in msg.headers_named(&HeaderName::Require) {
        let tags = tokens(&h.value).map_err(|e| Rejection::malformed("Require", e))?;
        unsupported.extend(
            tags.into_iter()
                .filter(|t| !SUPPORTED_OPTIONS.iter().any(|s| s.eq_ignore_ascii_case(t))),
        );
    }
    if !unsupported.is_empty() && !matches!(method, Method::Ack | Method::Cancel) {
        return Err(Rejection {
            status: 420,
            reason: "Bad Extension".into(),
            unsupported,
        });
    }
    if !msg.body.is_empty() && msg.header(&HeaderName::ContentType).is_none() {
        return Err(Rejection::new(
            400,
            "Bad Request - body without Content-Type",
        ));
    }
    if let Some(h) = msg.header(&HeaderName::ContentType) {
        super::header::ContentType::parse(&h.value)
            .map_err(|e| Rejection::malformed("Content-Type", e))?;
    }
    Ok(())
}

fn check_request_uri(uri: &[u8]) -> Result<(), Rejection> {
    let text = std::str::from_utf8(uri)
        .map_err(|_| Rejection::new(400, "Bad Request - Request-URI is not UTF-8"))?;
    let scheme = text.split(':').next().unwrap_or_default();
    let scheme_ok = !scheme.is_empty()
        && text.contains(':')
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(Rejection::new(400, "Bad Request - malformed Request-URI"));
    }
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        SipUri::parse(text)
            .map(drop)
            .map_err(|e| Rejection::new(400, format!("Bad Request - Request-URI {e}")))
    } else if scheme.eq_ignore_ascii_case("tel") {
        Ok(())
    } else {
        Err(Rejection::new(416, "Unsupported URI Scheme"))
    }
}

/// Decides whether a response may be processed; an invalid one is dropped silently
/// (RFC 4475 §3.1.2.5, §3.1.2.19).
pub fn validate_response(msg: &SipMessage) -> Result<(), Rejection> {
    let StartLine::Response { version, .. } = &msg.start else {
        return Err(Rejection::new(400, "not a response"));
    };
    if !is_sip_2_0(version) {
        return Err(Rejection::new(505, "Version Not Supported"));
    }
    check_common(msg).map(drop)
}

/// What to do with a received datagram or stream frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screened {
    /// A valid request or response: hand it to the transaction layer.
    Accept(SipMessage),
    /// An unacceptable request: send this response (built from the request's headers).
    Answer(SipMessage),
    /// Nothing can or may be answered (a bad response, or no usable headers): drop it.
    Drop(String),
}

/// Screens a framing result: valid messages pass, bad requests get their answer (400 naming
/// the defect, 416, 420, 483, 501, 505), bad responses and unreadable input are dropped.
pub fn screen(parsed: Result<SipMessage, super::msg::ParseFailure>) -> Screened {
    use super::build::MessageBuilder;
    let answer = |headers: &[super::msg::Header], rejection: Rejection| {
        // A response is routed back by its Via (RFC 3261 §18.2.2); without one, nobody can
        // be answered. RFC 4475 §3.3.1 asks for an answer even without Call-ID, From, To.
        if !headers.iter().any(|h| h.name == HeaderName::Via) {
            return Screened::Drop(format!(
                "{} {} (no Via to answer to)",
                rejection.status, rejection.reason
            ));
        }
        let mut b = MessageBuilder::response_to_headers(
            headers,
            rejection.status,
            &rejection.reason,
            Some("wsw-rej"),
        );
        if !rejection.unsupported.is_empty() {
            b = b.header(HeaderName::Unsupported, rejection.unsupported.join(", "));
        }
        Screened::Answer(b.build())
    };
    // An ACK is never answered (RFC 3261 §17), however broken it is.
    let is_ack = |headers: &[super::msg::Header]| {
        headers
            .iter()
            .find(|h| h.name == HeaderName::CSeq)
            .is_some_and(|h| {
                let v = super::msg::trim(&h.value);
                v.len() >= 3 && v[v.len() - 3..].eq_ignore_ascii_case(b"ACK")
            })
    };
    match parsed {
        Ok(msg) if msg.is_request() => match validate_request(&msg) {
            Ok(()) => Screened::Accept(msg),
            Err(r) if msg.method() == Some(&Method::Ack) || is_ack(&msg.headers) => {
                Screened::Drop(format!("invalid ACK ({}) is never answered", r.reason))
            }
            Err(rejection) => answer(&msg.headers, rejection),
        },
        Ok(msg) => match validate_response(&msg) {
            Ok(()) => Screened::Accept(msg),
            Err(r) => Screened::Drop(format!("invalid response: {}", r.reason)),
        },
        Err(failure) => match failure.request_headers {
            Some(headers) if is_ack(&headers) => {
                Screened::Drop(format!("invalid ACK ({}) is never answered", failure.error))
            }
            // RFC 3261 §21.5.14: a request too large for the switch to take.
            Some(headers) if failure.error == super::msg::ParseError::TooLarge => answer(
                &headers,
                Rejection::new(513, format!("Message Too Large - {}", failure.error)),
            ),
            Some(headers) => answer(
                &headers,
                Rejection::new(400, format!("Bad Request - {}", failure.error)),
            ),
            None => Screened::Drop(failure.error.to_string()),
        },
    }
}
