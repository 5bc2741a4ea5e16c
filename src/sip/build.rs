//! Writing SIP messages: a builder for requests and responses, and the wire encoding.
//!
//! The encoder writes canonical long header names and always writes exactly one
//! Content-Length, computed from the body, last: a message we send is never framed wrong.

use bytes::{BufMut, Bytes, BytesMut};

use super::msg::{Header, HeaderName, Method, SipMessage, StartLine};

const VERSION: &[u8] = b"SIP/2.0";

/// Builds a [`SipMessage`].
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    start: StartLine,
    headers: Vec<Header>,
    body: Bytes,
}

impl MessageBuilder {
    /// A request line `METHOD uri SIP/2.0`.
    pub fn request(method: Method, uri: &str) -> Self {
        Self {
            start: StartLine::Request {
                method,
                uri: Bytes::copy_from_slice(uri.as_bytes()),
                version: Bytes::from_static(VERSION),
            },
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A status line `SIP/2.0 code reason`.
    pub fn response(code: u16, reason: &str) -> Self {
        Self {
            start: StartLine::Response {
                version: Bytes::from_static(VERSION),
                code,
                reason: Bytes::copy_from_slice(reason.as_bytes()),
            },
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A response to `request` (RFC 3261 §8.2.6.2): Via, From, To, Call-ID and CSeq copied;
    /// `to_tag` added to To when it has none (not on 100 Trying). A provisional (101–199)
    /// or success response also carries the request's Record-Route values, in order
    /// (§12.1.1): the proxies that record-routed stay on the dialog's path, so the caller's
    /// ACK and later requests go through them.
    pub fn response_to(
        request: &SipMessage,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
    ) -> Self {
        Self::response_to_headers(&request.headers, code, reason, to_tag)
    }

    /// A response built from the headers of a request (also one whose start line or body
    /// framing was broken, see [`super::msg::ParseFailure`]).
    pub fn response_to_headers(
        headers: &[Header],
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
    ) -> Self {
        let mut b = Self::response(code, reason);
        for h in headers {
            match h.name {
                HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                    b.headers.push(h.clone())
                }
                HeaderName::RecordRoute if (101..300).contains(&code) => b.headers.push(h.clone()),
                HeaderName::To => {
                    let has_tag = super::header::NameAddr::parse(&h.value)
                        .map(|a| a.tag().is_some())
                        .unwrap_or(true);
                    match to_tag {
                        Some(tag) if !has_tag && code != 100 => {
                            let mut v = BytesMut::with_capacity(h.value.len() + tag.len() + 5);
                            v.put_slice(&h.value);
                            v.put_slice(b";tag=");
                            v.put_slice(tag.as_bytes());
                            b.headers.push(Header::new(HeaderName::To, v.freeze()));
                        }
                        _ => b.headers.push(h.clone()),
                    }
                }
                _ => {}
            }
        }
        b
    }

    /// Appends a header.
    pub fn header(mut self, name: HeaderName, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// Sets the body and its Content-Type.
    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.headers.retain(|h| h.name != HeaderName::ContentType);
        self.headers.push(Header::new(
            HeaderName::ContentType,
            Bytes::copy_from_slice(content_type.as_bytes()),
        ));
        self.body = body.into();
        self
    }

    /// The message, with its Content-Length header last.
    pub fn build(mut self) -> SipMessage {
        self.headers.retain(|h| h.name != HeaderName::ContentLength);
        self.headers.push(Header::new(
            HeaderName::ContentLength,
            Bytes::from(self.body.len().to_string()),
        ));
        SipMessage {
            start: self.start,
            headers: self.headers,
            body: self.body,
        }
    }
}

impl SipMessage {
    /// Writes the message as it goes on the wire. Content-Length headers are replaced by one,
    /// written last, that matches the body.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len_hint());
        match &self.start {
            StartLine::Request {
                method,
                uri,
                version,
            } => {
                out.put_slice(method.as_bytes());
                out.put_u8(b' ');
                out.put_slice(uri);
                out.put_u8(b' ');
                out.put_slice(version);
            }
            StartLine::Response {
                version,
                code,
                reason,
            } => {
                out.put_slice(version);
                out.put_u8(b' ');
                out.put_slice(code.to_string().as_bytes());
                out.put_u8(b' ');
                out.put_slice(reason);
            }
        }
        out.put_slice(b"\r\n");
        for h in &self.headers {
            if h.name == HeaderName::ContentLength {
                continue;
            }
            out.put_slice(h.name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(&h.value);
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"Content-Length: ");
        out.put_slice(self.body.len().to_string().as_bytes());
        out.put_slice(b"\r\n\r\n");
        out.put_slice(&self.body);
    }

    /// The encoded message.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    fn encoded_len_hint(&self) -> usize {
        64 + self.body.len()
            + self
                .headers
                .iter()
                .map(|h| h.name.as_str().len() + h.value.len() + 4)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> SipMessage {
        let text = "INVITE sip:+4915100000001@10.0.0.11:5060 SIP/2.0\r\n\
            Record-Route: <sip:10.0.0.2;lr>\r\n\
            Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK-p\r\n\
            Via: SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bK-a\r\n\
            Record-Route: <sip:10.0.0.1;lr;ftag=x>\r\n\
            From: <sip:+15551112222@10.0.0.9>;tag=a\r\n\
            To: <sip:+4915100000001@10.0.0.2>\r\n\
            Call-ID: c1\r\n\
            CSeq: 1 INVITE\r\n\
            Content-Length: 0\r\n\r\n";
        crate::sip::msg::parse_datagram(Bytes::from(text)).expect("an INVITE")
    }

    fn routes(msg: &SipMessage) -> Vec<String> {
        msg.headers_named(&HeaderName::RecordRoute)
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
            .collect()
    }

    #[test]
    fn provisional_and_success_answers_keep_the_record_route_in_order() {
        let invite = invite();
        for code in [180, 183, 200] {
            let r = MessageBuilder::response_to(&invite, code, "x", Some("t")).build();
            assert_eq!(
                routes(&r),
                ["<sip:10.0.0.2;lr>", "<sip:10.0.0.1;lr;ftag=x>"],
                "{code}"
            );
        }
        for code in [100, 486, 503] {
            let r = MessageBuilder::response_to(&invite, code, "x", Some("t")).build();
            assert!(routes(&r).is_empty(), "{code}");
        }
    }
}
