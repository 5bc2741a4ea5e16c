//! SIP message framing and tokenizing over `bytes::Bytes` (RFC 3261 §7, §18.3).
//!
//! A parsed [`SipMessage`] keeps the received buffer; the start-line parts, every header name
//! and value, and the body are slices of it (no copy). Header values are typed on demand by
//! [`super::header`]. Framing is strict: a Content-Length that is negative, not a number,
//! duplicated, larger than a datagram or missing on a stream is an error, never a guess.

use std::fmt;

use bytes::{Bytes, BytesMut};

/// Largest message accepted on a stream before its headers end or its body is complete.
/// Bounds the memory one connection can hold.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// A SIP method. Extension methods are kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// OPTIONS
    Options,
    /// REGISTER
    Register,
    /// PRACK (RFC 3262)
    Prack,
    /// UPDATE (RFC 3311)
    Update,
    /// INFO (RFC 6086)
    Info,
    /// REFER (RFC 3515)
    Refer,
    /// NOTIFY (RFC 6665)
    Notify,
    /// SUBSCRIBE (RFC 6665)
    Subscribe,
    /// MESSAGE (RFC 3428)
    Message,
    /// Any other token.
    Extension(Bytes),
}

impl Method {
    /// Recognises a method token (methods are case-sensitive).
    pub fn from_token(token: Bytes) -> Self {
        match &token[..] {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"PRACK" => Method::Prack,
            b"UPDATE" => Method::Update,
            b"INFO" => Method::Info,
            b"REFER" => Method::Refer,
            b"NOTIFY" => Method::Notify,
            b"SUBSCRIBE" => Method::Subscribe,
            b"MESSAGE" => Method::Message,
            _ => Method::Extension(token),
        }
    }

    /// The method as written on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Method::Invite => b"INVITE",
            Method::Ack => b"ACK",
            Method::Bye => b"BYE",
            Method::Cancel => b"CANCEL",
            Method::Options => b"OPTIONS",
            Method::Register => b"REGISTER",
            Method::Prack => b"PRACK",
            Method::Update => b"UPDATE",
            Method::Info => b"INFO",
            Method::Refer => b"REFER",
            Method::Notify => b"NOTIFY",
            Method::Subscribe => b"SUBSCRIBE",
            Method::Message => b"MESSAGE",
            Method::Extension(t) => t,
        }
    }

    /// A metric label: the method for those the switch knows, `other` for extensions (their
    /// names come from the network and must not grow the label set).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Message => "MESSAGE",
            Method::Extension(_) => "other",
        }
    }

    /// Methods this switch implements as a B2BUA.
    pub fn is_known(&self) -> bool {
        !matches!(self, Method::Extension(_))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Header names the switch looks at, with their compact forms (RFC 3261 §7.3.3 and the
/// extensions that define one). Any other name is [`HeaderName::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderName {
    /// Via (v)
    Via,
    /// From (f)
    From,
    /// To (t)
    To,
    /// Call-ID (i)
    CallId,
    /// CSeq
    CSeq,
    /// Contact (m)
    Contact,
    /// Route
    Route,
    /// Record-Route
    RecordRoute,
    /// Max-Forwards
    MaxForwards,
    /// Content-Type (c)
    ContentType,
    /// Content-Length (l)
    ContentLength,
    /// Content-Encoding (e)
    ContentEncoding,
    /// Authorization
    Authorization,
    /// WWW-Authenticate
    WwwAuthenticate,
    /// Proxy-Authorization
    ProxyAuthorization,
    /// Proxy-Authenticate
    ProxyAuthenticate,
    /// Supported (k)
    Supported,
    /// Require
    Require,
    /// Proxy-Require
    ProxyRequire,
    /// Unsupported
    Unsupported,
    /// Allow
    Allow,
    /// Session-Expires (x)
    SessionExpires,
    /// Min-SE
    MinSe,
    /// Reason
    Reason,
    /// P-Asserted-Identity
    PAssertedIdentity,
    /// Subject (s)
    Subject,
    /// Event (o)
    Event,
    /// Refer-To (r)
    ReferTo,
    /// Referred-By (b)
    ReferredBy,
    /// Retry-After
    RetryAfter,
    /// User-Agent
    UserAgent,
    /// Server
    Server,
    /// Warning
    Warning,
    /// Expires
    Expires,
    /// Any other header, name as written.
    Other(Bytes),
}

impl HeaderName {
    /// Recognises a header name (case-insensitive, compact forms included).
    pub fn from_bytes(name: Bytes) -> Self {
        use HeaderName::*;
        let known = |n: &[u8]| -> Option<HeaderName> {
            Some(match n.len() {
                1 => match n[0].to_ascii_lowercase() {
                    b'v' => Via,
                    b'f' => From,
                    b't' => To,
                    b'i' => CallId,
                    b'm' => Contact,
                    b'c' => ContentType,
                    b'l' => ContentLength,
                    b'e' => ContentEncoding,
                    b'k' => Supported,
                    b'x' => SessionExpires,
                    b's' => Subject,
                    b'o' => Event,
                    b'r' => ReferTo,
                    b'b' => ReferredBy,
                    _ => return None,
                },
                len => {
                    // Only the names of this length are compared.
                    let candidates: &[(&str, HeaderName)] = match len {
                        2 => &[("To", To)],
                        3 => &[("Via", Via)],
                        4 => &[("From", From), ("CSeq", CSeq)],
                        5 => &[("Route", Route), ("Allow", Allow), ("Event", Event)],
                        6 => &[("Reason", Reason), ("Server", Server), ("Min-SE", MinSe)],
                        7 => &[
                            ("Call-ID", CallId),
                            ("Contact", Contact),
                            ("Require", Require),
                            ("Subject", Subject),
                            ("Warning", Warning),
                            ("Expires", Expires),
                        ],
                        8 => &[("Refer-To", ReferTo)],
                        9 => &[("Supported", Supported)],
                        10 => &[("User-Agent", UserAgent)],
                        11 => &[
                            ("Unsupported", Unsupported),
                            ("Referred-By", ReferredBy),
                            ("Retry-After", RetryAfter),
                        ],
                        12 => &[
                            ("Content-Type", ContentType),
                            ("Max-Forwards", MaxForwards),
                            ("Record-Route", RecordRoute),
                        ],
                        13 => &[
                            ("Authorization", Authorization),
                            ("Proxy-Require", ProxyRequire),
                        ],
                        14 => &[("Content-Length", ContentLength)],
                        15 => &[("Session-Expires", SessionExpires)],
                        16 => &[
                            ("Content-Encoding", ContentEncoding),
                            ("WWW-Authenticate", WwwAuthenticate),
                        ],
                        18 => &[("Proxy-Authenticate", ProxyAuthenticate)],
                        19 => &[
                            ("Proxy-Authorization", ProxyAuthorization),
                            ("P-Asserted-Identity", PAssertedIdentity),
                        ],
                        _ => &[],
                    };
                    return candidates
                        .iter()
                        .find(|(s, _)| n.eq_ignore_ascii_case(s.as_bytes()))
                        .map(|(_, h)| h.clone());
                }
            })
        };
        known(&name).unwrap_or(Other(name))
    }

    /// The canonical long form, as the builder writes it.
    pub fn as_str(&self) -> &str {
        use HeaderName::*;
        match self {
            Via => "Via",
            From => "From",
            To => "To",
            CallId => "Call-ID",
            CSeq => "CSeq",
            Contact => "Contact",
            Route => "Route",
            RecordRoute => "Record-Route",
            MaxForwards => "Max-Forwards",
            ContentType => "Content-Type",
            ContentLength => "Content-Length",
            ContentEncoding => "Content-Encoding",
            Authorization => "Authorization",
            WwwAuthenticate => "WWW-Authenticate",
            ProxyAuthorization => "Proxy-Authorization",
            ProxyAuthenticate => "Proxy-Authenticate",
            Supported => "Supported",
            Require => "Require",
            ProxyRequire => "Proxy-Require",
            Unsupported => "Unsupported",
            Allow => "Allow",
            SessionExpires => "Session-Expires",
            MinSe => "Min-SE",
            Reason => "Reason",
            PAssertedIdentity => "P-Asserted-Identity",
            Subject => "Subject",
            Event => "Event",
            ReferTo => "Refer-To",
            ReferredBy => "Referred-By",
            RetryAfter => "Retry-After",
            UserAgent => "User-Agent",
            Server => "Server",
            Warning => "Warning",
            Expires => "Expires",
            // Token characters are ASCII, checked when the header was parsed or built.
            Other(name) => std::str::from_utf8(name).unwrap_or("X-Invalid"),
        }
    }

    /// Headers whose value is a comma-separated list that may also be split over several
    /// header lines (RFC 3261 §7.3.1). Others must appear at most once.
    pub fn is_list(&self) -> bool {
        use HeaderName::*;
        matches!(
            self,
            Via | Contact
                | Route
                | RecordRoute
                | Supported
                | Require
                | ProxyRequire
                | Unsupported
                | Allow
                | ContentEncoding
                | Reason
                | PAssertedIdentity
                | Warning
        )
    }
}

/// One header line (folded continuation lines included), as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The name, recognised.
    pub name: HeaderName,
    /// The value without the leading and trailing white space; may contain folded line
    /// breaks (CRLF followed by SP or HTAB) exactly as received.
    pub value: Bytes,
}

impl Header {
    /// A header from a name and a value.
    pub fn new(name: HeaderName, value: impl Into<Bytes>) -> Self {
        Self {
            name,
            value: value.into(),
        }
    }

    /// The value with every folded line break replaced by one space (RFC 3261 §7.3.1).
    pub fn unfolded(&self) -> std::borrow::Cow<'_, [u8]> {
        unfold(&self.value)
    }
}

/// Replaces each `CRLF 1*WSP` inside a value by a single SP.
pub fn unfold(value: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !value.contains(&b'\n') {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b == b'\r' || b == b'\n' {
            while i < value.len() && matches!(value[i], b'\r' | b'\n' | b' ' | b'\t') {
                i += 1;
            }
            out.push(b' ');
        } else {
            out.push(b);
            i += 1;
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD Request-URI SIP/2.0`
    Request {
        /// The method.
        method: Method,
        /// The Request-URI as written.
        uri: Bytes,
        /// The version as written (`SIP/2.0`).
        version: Bytes,
    },
    /// `SIP/2.0 CODE Reason`
    Response {
        /// The version as written.
        version: Bytes,
        /// Status code, 100..=699.
        code: u16,
        /// Reason phrase (may be empty).
        reason: Bytes,
    },
}

/// A framed SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    /// Request or status line.
    pub start: StartLine,
    /// Headers in received order.
    pub headers: Vec<Header>,
    /// Body (Content-Length octets).
    pub body: Bytes,
}

impl SipMessage {
    /// All headers with this name, in order.
    pub fn headers_named<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a Header> {
        self.headers.iter().filter(move |h| &h.name == name)
    }

    /// The first header with this name.
    pub fn header(&self, name: &HeaderName) -> Option<&Header> {
        self.headers.iter().find(|h| &h.name == name)
    }

    /// The request method, for a request.
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, for a response.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// True for requests.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }
}

/// Why a message could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Nothing but white space, or no line break at all.
    #[error("empty message")]
    Empty,
    /// The header section never ends with an empty line (a truncated datagram, or a peer
    /// that does not terminate its headers).
    #[error("headers not terminated by an empty line")]
    Unterminated,
    /// The first line is neither a request line nor a status line, or has extra or missing
    /// spaces (RFC 3261 §7.1: single SP separators, nothing after the version).
    #[error("malformed start line: {0}")]
    StartLine(&'static str),
    /// The status code is not three digits from 100 to 699.
    #[error("status code out of range")]
    StatusCode,
    /// A header line has no name or no colon, or the name has non-token characters.
    #[error("malformed header line {line}")]
    HeaderLine {
        /// 1-based line number of the header in the message.
        line: usize,
    },
    /// The first header line starts with white space (a continuation of nothing).
    #[error("continuation line before any header")]
    LeadingContinuation,
    /// Content-Length appears more than once.
    #[error("Content-Length appears more than once")]
    DuplicateContentLength,
    /// Content-Length is not a decimal number (negative values included).
    #[error("Content-Length is not a non-negative number")]
    BadContentLength,
    /// Content-Length promises more octets than the datagram carries.
    #[error("Content-Length {declared} exceeds the {available} octets of body received")]
    ContentLengthExceedsDatagram {
        /// Declared length.
        declared: usize,
        /// Octets present after the headers.
        available: usize,
    },
    /// A stream message without Content-Length cannot be framed (RFC 3261 §18.3).
    #[error("Content-Length is required on a stream transport")]
    MissingContentLength,
    /// The message is larger than [`MAX_MESSAGE_SIZE`].
    #[error("message larger than {MAX_MESSAGE_SIZE} octets")]
    TooLarge,
}

/// A framing failure, with the headers of the request when they could be read, so a
/// response (400, 505) can still be formed. Responses that fail are never answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFailure {
    /// What is wrong.
    pub error: ParseError,
    /// The headers of a failed request, when its header lines were well formed.
    pub request_headers: Option<Vec<Header>>,
}

impl From<ParseError> for ParseFailure {
    fn from(error: ParseError) -> Self {
        Self {
            error,
            request_headers: None,
        }
    }
}

impl ParseFailure {
    fn with_message(error: ParseError, msg: SipMessage) -> Self {
        Self {
            error,
            request_headers: msg.is_request().then_some(msg.headers),
        }
    }
}

/// Position of the empty line ending the header section: the index of the CRLFCRLF.
fn find_header_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n")
}

/// Position of the next CRLF in `buf`.
fn find_crlf(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n")
}

/// Parses one UDP datagram (RFC 3261 §18.3): the body is Content-Length octets (the rest of
/// the datagram when Content-Length is absent); octets after it are ignored.
pub fn parse_datagram(datagram: Bytes) -> Result<SipMessage, ParseFailure> {
    let start = skip_leading_crlf(&datagram);
    let buf = datagram.slice(start..);
    let Some(head_end) = find_header_end(&buf) else {
        // Read what headers there are, so the sender can be told what is wrong.
        let end = buf.len()
            - buf
                .iter()
                .rev()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
        let request_headers = match parse_head(&buf, end) {
            Ok(msg) => msg.is_request().then_some(msg.headers),
            Err(f) => f.request_headers,
        };
        return Err(ParseFailure {
            error: if buf.is_empty() {
                ParseError::Empty
            } else {
                ParseError::Unterminated
            },
            request_headers,
        });
    };
    let mut msg = parse_head(&buf, head_end)?;
    let body_start = head_end + 4;
    let available = buf.len() - body_start;
    match content_length(&msg) {
        Err(error) => Err(ParseFailure::with_message(error, msg)),
        Ok(None) => {
            msg.body = buf.slice(body_start..);
            Ok(msg)
        }
        Ok(Some(declared)) if declared > available => Err(ParseFailure::with_message(
            ParseError::ContentLengthExceedsDatagram {
                declared,
                available,
            },
            msg,
        )),
        Ok(Some(declared)) => {
            msg.body = buf.slice(body_start..body_start + declared);
            Ok(msg)
        }
    }
}

/// CRLFs before a message are keep-alives or leftovers (RFC 3261 §7.5); skip them.
fn skip_leading_crlf(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count()
}

/// Frames messages out of a TCP or TLS byte stream.
///
/// Feed received bytes with [`StreamFramer::push`], then call [`StreamFramer::next_message`]
/// until it returns `Ok(None)`. After an error the stream cannot be re-synchronised and the
/// connection must be closed.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: BytesMut,
    /// Octets already searched for the end of the headers, so a message that trickles in is
    /// scanned once, not once per read.
    scanned: usize,
    /// Headers already parsed while the body is still arriving: the message and its total
    /// length on the wire.
    pending: Option<(SipMessage, usize, usize)>,
}

impl StreamFramer {
    /// An empty framer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Octets buffered and not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<SipMessage>, ParseFailure> {
        if self.pending.is_none() {
            if self.scanned == 0 {
                let skip = skip_leading_crlf(&self.buf);
                let _ = self.buf.split_to(skip);
            }
            let from = self.scanned.saturating_sub(3);
            let Some(head_end) = find_header_end(&self.buf[from..]).map(|p| from + p) else {
                self.scanned = self.buf.len();
                if self.buf.len() > MAX_MESSAGE_SIZE {
                    return Err(ParseError::TooLarge.into());
                }
                return Ok(None);
            };
            let head = Bytes::copy_from_slice(&self.buf[..head_end + 4]);
            let msg = parse_head(&head, head_end)?;
            let declared = match content_length(&msg) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    return Err(ParseFailure::with_message(
                        ParseError::MissingContentLength,
                        msg,
                    ))
                }
                Err(error) => return Err(ParseFailure::with_message(error, msg)),
            };
            let total = head_end + 4 + declared;
            if total > MAX_MESSAGE_SIZE {
                return Err(ParseFailure::with_message(ParseError::TooLarge, msg));
            }
            self.pending = Some((msg, head_end + 4, total));
        }
        let Some((_, _, total)) = &self.pending else {
            return Ok(None);
        };
        if self.buf.len() < *total {
            return Ok(None);
        }
        let Some((mut msg, head_len, total)) = self.pending.take() else {
            return Ok(None);
        };
        let mut frame = self.buf.split_to(total).freeze();
        msg.body = frame.split_off(head_len);
        self.scanned = 0;
        Ok(Some(msg))
    }
}

/// The declared Content-Length: `None` when absent; an error when repeated or not a number.
fn content_length(msg: &SipMessage) -> Result<Option<usize>, ParseError> {
    let mut values = msg.headers_named(&HeaderName::ContentLength);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ParseError::DuplicateContentLength);
    }
    let v = first.unfolded();
    let v = trim(&v);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::BadContentLength);
    }
    // A number, however large: beyond what any message may be, it is too large rather
    // than malformed (leading zeros do not count).
    let significant = &v[v.iter().take_while(|&&b| b == b'0').count()..];
    if significant.len() > 9 {
        return Err(ParseError::TooLarge);
    }
    // Nine digits at most, all ASCII: always fits a usize.
    Ok(Some(
        significant
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')),
    ))
}

/// Trims SP and HTAB (and folded line breaks) from both ends.
pub fn trim(v: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = v.iter().position(|b| !is_ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ws(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// RFC 3261 token characters.
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Parses the start line and headers of `buf[..head_end]` (the CRLFCRLF starts at
/// `head_end`).
fn parse_head(buf: &Bytes, head_end: usize) -> Result<SipMessage, ParseFailure> {
    let head = &buf[..head_end];
    let first_end = find_crlf(head).unwrap_or(head.len());
    let headers = parse_headers(buf, first_end, head_end)?;
    match parse_start_line(buf, 0, first_end) {
        Ok(start) => Ok(SipMessage {
            start,
            headers,
            body: Bytes::new(),
        }),
        Err(error) => Err(ParseFailure {
            error,
            // A line that starts like a status line is a response: never answered.
            request_headers: (head.len() < 4 || !head[..4].eq_ignore_ascii_case(b"SIP/"))
                .then_some(headers),
        }),
    }
}

/// Tokenizes the header lines between the start line (ending at `first_end`) and `head_end`.
fn parse_headers(
    buf: &Bytes,
    first_end: usize,
    head_end: usize,
) -> Result<Vec<Header>, ParseError> {
    let head = &buf[..head_end];
    let mut headers = Vec::with_capacity(16);
    let mut pos = first_end + 2;
    let mut line_no = 1;
    while pos < head_end {
        line_no += 1;
        // The header runs to the next CRLF not followed by SP/HTAB (folding).
        let mut end = pos;
        loop {
            let next = find_crlf(&head[end..]).map_or(head.len(), |p| end + p);
            if next + 2 < head.len() && matches!(head[next + 2], b' ' | b'\t') {
                end = next + 2;
                line_no += 1;
                continue;
            }
            end = next;
            break;
        }
        let line = &head[pos..end];
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(ParseError::LeadingContinuation);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(ParseError::HeaderLine { line: line_no })?;
        let name = trim(&line[..colon]);
        if name.is_empty() || !name.iter().all(|&b| is_token_char(b)) {
            return Err(ParseError::HeaderLine { line: line_no });
        }
        let name_start = pos + (name.as_ptr() as usize - line.as_ptr() as usize);
        let value = trim(&line[colon + 1..]);
        let value_start = if value.is_empty() {
            pos + colon + 1
        } else {
            pos + (value.as_ptr() as usize - line.as_ptr() as usize)
        };
        headers.push(Header {
            name: HeaderName::from_bytes(buf.slice(name_start..name_start + name.len())),
            value: buf.slice(value_start..value_start + value.len()),
        });
        pos = end + 2;
    }
    Ok(headers)
}

fn is_version(v: &[u8]) -> bool {
    v.len() > 4
        && v[..4].eq_ignore_ascii_case(b"SIP/")
        && v[4..].split(|&b| b == b'.').count() == 2
        && v[4..]
            .split(|&b| b == b'.')
            .all(|part| !part.is_empty() && part.iter().all(u8::is_ascii_digit))
}

fn parse_start_line(buf: &Bytes, from: usize, to: usize) -> Result<StartLine, ParseError> {
    let line = &buf[from..to];
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let slice = |part: &[u8]| {
        let off = from + (part.as_ptr() as usize - line.as_ptr() as usize);
        buf.slice(off..off + part.len())
    };
    if line.len() > 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        // SIP-Version SP Status-Code SP Reason-Phrase; the phrase may contain spaces.
        if parts.len() < 3 {
            return Err(ParseError::StartLine(
                "status line needs version, code and reason",
            ));
        }
        if !is_version(parts[0]) {
            return Err(ParseError::StartLine("bad SIP version in status line"));
        }
        let code = parts[1];
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::StatusCode);
        }
        let code = code
            .iter()
            .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
        if !(100..=699).contains(&code) {
            return Err(ParseError::StatusCode);
        }
        let reason_start = parts[0].len() + 1 + parts[1].len() + 1;
        return Ok(StartLine::Response {
            version: slice(parts[0]),
            code,
            reason: buf.slice(from + reason_start..to),
        });
    }
    // Method SP Request-URI SP SIP-Version, single spaces, nothing else.
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(ParseError::StartLine(
            "request line must be METHOD SP URI SP SIP-Version with single spaces",
        ));
    }
    if !parts[0].iter().all(|&b| is_token_char(b)) {
        return Err(ParseError::StartLine("method is not a token"));
    }
    if parts[1]
        .iter()
        .any(|&b| b == b'\t' || b < 0x21 || b == 0x7f)
    {
        return Err(ParseError::StartLine(
            "white space or control octet in Request-URI",
        ));
    }
    if !is_version(parts[2]) {
        return Err(ParseError::StartLine("bad SIP version in request line"));
    }
    Ok(StartLine::Request {
        method: Method::from_token(slice(parts[0])),
        uri: slice(parts[1]),
        version: slice(parts[2]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_labels_are_bounded_whatever_method_arrives() {
        assert_eq!(
            Method::from_token(Bytes::from_static(b"INVITE")).metric_label(),
            "INVITE"
        );
        assert_eq!(
            Method::from_token(Bytes::from_static(b"X-ATTACKER-1")).metric_label(),
            "other"
        );
        assert_eq!(
            Method::from_token(Bytes::from_static(b"invite")).metric_label(),
            "other"
        );
    }

    #[test]
    fn every_known_header_name_is_recognised_in_any_case_and_compact_form() {
        use HeaderName::*;
        let all = [
            Via,
            From,
            To,
            CallId,
            CSeq,
            Contact,
            Route,
            RecordRoute,
            MaxForwards,
            ContentType,
            ContentLength,
            ContentEncoding,
            Authorization,
            WwwAuthenticate,
            ProxyAuthorization,
            ProxyAuthenticate,
            Supported,
            Require,
            ProxyRequire,
            Unsupported,
            Allow,
            SessionExpires,
            MinSe,
            Reason,
            PAssertedIdentity,
            Subject,
            Event,
            ReferTo,
            ReferredBy,
            RetryAfter,
            UserAgent,
            Server,
            Warning,
            Expires,
        ];
        for h in all {
            let name = h.as_str().to_string();
            assert_eq!(
                HeaderName::from_bytes(Bytes::from(name.clone())),
                h,
                "{name}"
            );
            assert_eq!(
                HeaderName::from_bytes(Bytes::from(name.to_ascii_lowercase())),
                h
            );
            assert_eq!(
                HeaderName::from_bytes(Bytes::from(name.to_ascii_uppercase())),
                h
            );
        }
        for (compact, h) in [
            ("v", Via),
            ("f", From),
            ("t", To),
            ("i", CallId),
            ("m", Contact),
            ("c", ContentType),
            ("l", ContentLength),
            ("e", ContentEncoding),
            ("k", Supported),
            ("x", SessionExpires),
            ("s", Subject),
            ("o", Event),
            ("r", ReferTo),
            ("b", ReferredBy),
            ("V", Via),
        ] {
            assert_eq!(HeaderName::from_bytes(Bytes::from(compact)), h, "{compact}");
        }
        assert_eq!(
            HeaderName::from_bytes(Bytes::from_static(b"X-WA-Call-Id")),
            Other(Bytes::from_static(b"X-WA-Call-Id"))
        );
    }
}
