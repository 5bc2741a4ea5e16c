//! The client side of WebSocket (RFC 6455), sans-IO: the opening handshake, frames written
//! into a buffer the caller reuses, and frames read from the bytes the caller feeds in.
//!
//! Nothing here allocates per frame once the buffers reached their working size: frames
//! are encoded into the caller's `Vec` and decoded in place in the reader's own buffer
//! (bounded by [`MAX_MESSAGE`]). A server's frame that breaks the protocol (masked,
//! reserved bits, a control frame too long or fragmented, a message too long) is an error,
//! and the connection is to be closed with the code [`WsError::close_code`] gives.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Longest message taken from the peer (a frame, or fragments put together).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Longest handshake response taken.
const MAX_RESPONSE: usize = 8 * 1024;
/// RFC 6455 §1.3: appended to the key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Continues a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Bytes.
    Binary,
    /// Closing handshake.
    Close,
    /// Keep-alive asked for.
    Ping,
    /// Keep-alive answered.
    Pong,
}

impl Opcode {
    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn from_bits(b: u8) -> Option<Opcode> {
        Some(match b {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// What went wrong on the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The handshake's answer is not a WebSocket upgrade (status, or a header wrong).
    #[error("handshake refused: {0}")]
    Handshake(String),
    /// The peer broke the framing rules.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A message longer than [`MAX_MESSAGE`].
    #[error("message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    /// A text message that is not UTF-8.
    #[error("text that is not UTF-8")]
    NotUtf8,
}

impl WsError {
    /// The close code (RFC 6455 §7.4.1) to end the connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Handshake(_) | WsError::Protocol(_) => 1002,
            WsError::TooLong => 1009,
            WsError::NotUtf8 => 1007,
        }
    }
}

/// A fresh `Sec-WebSocket-Key` (16 random bytes, base64).
pub fn new_key() -> String {
    let mut raw = [0u8; 16];
    if getrandom::getrandom(&mut raw).is_err() {
        // The key only proves the server understood WebSocket; it guards nothing secret.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        raw = t.to_le_bytes();
    }
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Writes the opening request: `GET path` to `host`, with `key`, and extra headers
/// (`Authorization: Bearer …`).
pub fn request(host: &str, path: &str, key: &str, headers: &[(&str, &str)], out: &mut Vec<u8>) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: waswitch\r\n"
    );
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads the server's answer to the opening request: `Ok(Some(n))` once complete and
/// valid (`n` bytes were the answer; any after them are frames), `Ok(None)` while more is
/// needed.
pub fn response(buf: &[u8], key: &str) -> Result<Option<usize>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let n = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE => {
            return Err(WsError::Handshake("answer too long".into()))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(WsError::Handshake(format!("not HTTP: {e}"))),
    };
    let code = res.code.unwrap_or(0);
    if code != 101 {
        return Err(WsError::Handshake(format!(
            "HTTP {code} {}",
            res.reason.unwrap_or("")
        )));
    }
    let header = |name: &str| {
        res.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(WsError::Handshake("no Upgrade: websocket".into()));
    }
    if !header("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    }) {
        return Err(WsError::Handshake("no Connection: Upgrade".into()));
    }
    for unasked in ["sec-websocket-extensions", "sec-websocket-protocol"] {
        if header(unasked).is_some_and(|v| !v.is_empty()) {
            return Err(WsError::Handshake(format!(
                "{unasked} that was not asked for"
            )));
        }
    }
    if header("sec-websocket-accept").as_deref() != Some(accept_for(key).as_str()) {
        return Err(WsError::Handshake(
            "Sec-WebSocket-Accept does not match the key".into(),
        ));
    }
    Ok(Some(n))
}

/// Appends one frame (final, masked with `mask` as a client must) to `out`.
pub fn encode(opcode: Opcode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode.bits());
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// Appends a close frame with `code` and `reason` (cut to fit a control frame).
pub fn encode_close(code: u16, reason: &str, mask: [u8; 4], out: &mut Vec<u8>) {
    let mut body = [0u8; 125];
    body[..2].copy_from_slice(&code.to_be_bytes());
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    body[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    encode(Opcode::Close, &body[..2 + cut], mask, out);
}

fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Masks for frames a client sends: a fast generator seeded from the OS (masking only
/// keeps intermediaries from reading frames as something else; it is no secret).
#[derive(Debug)]
pub struct Masks(u64);

impl Masks {
    /// A generator seeded from the OS.
    pub fn new() -> Masks {
        let mut seed = [0u8; 8];
        let _ = getrandom::getrandom(&mut seed);
        Masks(u64::from_le_bytes(seed) | 1)
    }

    /// The next mask.
    pub fn next_mask(&mut self) -> [u8; 4] {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v as u32).to_le_bytes()
    }
}

impl Default for Masks {
    fn default() -> Self {
        Masks::new()
    }
}

/// A message read from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Text (checked UTF-8).
    Text(&'a str),
    /// Bytes.
    Binary(&'a [u8]),
    /// A ping: answer with a pong carrying the same bytes.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// The server closes: its code and reason, when it gave them.
    Close(Option<u16>, &'a str),
}

/// Reads frames from the bytes fed in, putting fragments together.
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out (dropped at the next read).
    used: usize,
    /// A fragmented message being put together, and its opcode.
    partial: Vec<u8>,
    partial_op: Option<Opcode>,
    /// The last message came from `partial` (cleared at the next read).
    partial_done: bool,
}

impl Reader {
    /// A reader.
    pub fn new() -> Reader {
        Reader::default()
    }

    /// The buffer to read into, with room for at least `at_least` more bytes past what it
    /// holds: the caller appends what it reads (into its spare capacity, which needs no
    /// clearing: `AsyncReadExt::read_buf`).
    pub fn for_read(&mut self, at_least: usize) -> &mut Vec<u8> {
        self.compact();
        self.buf.reserve(at_least);
        &mut self.buf
    }

    /// Feeds bytes read from the connection.
    pub fn feed(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    fn compact(&mut self) {
        if self.used > 0 {
            self.buf.drain(..self.used);
            self.used = 0;
        }
        if self.partial_done {
            self.partial.clear();
            self.partial_done = false;
        }
    }

    /// Bytes waiting that no message took yet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.used
    }

    /// The next complete message, if the bytes fed in hold one. (Bytes taken are dropped
    /// from the buffer at the next [`room`](Self::room) or [`feed`](Self::feed): once per
    /// read, however many messages it held.)
    pub fn next_message(&mut self) -> Result<Option<Message<'_>>, WsError> {
        if self.partial_done {
            self.partial.clear();
            self.partial_done = false;
        }
        loop {
            let Some((op, fin, start, len)) = self.header()? else {
                if self.buffered() > MAX_MESSAGE + 14 {
                    return Err(WsError::TooLong);
                }
                return Ok(None);
            };
            let end = start + len;
            if op.is_control() {
                self.used = end;
                let body = &self.buf[start..end];
                return Ok(Some(match op {
                    Opcode::Ping => Message::Ping(body),
                    Opcode::Pong => Message::Pong,
                    _ => {
                        if body.len() == 1 {
                            return Err(WsError::Protocol("a close frame of one byte"));
                        }
                        let code =
                            (body.len() >= 2).then(|| u16::from_be_bytes([body[0], body[1]]));
                        let reason = std::str::from_utf8(body.get(2..).unwrap_or(&[]))
                            .map_err(|_| WsError::NotUtf8)?;
                        Message::Close(code, reason)
                    }
                }));
            }
            match (op, self.partial_op) {
                (Opcode::Continuation, None) => {
                    return Err(WsError::Protocol("a continuation with nothing to continue"))
                }
                (Opcode::Text | Opcode::Binary, Some(_)) => {
                    return Err(WsError::Protocol("a new message inside a fragmented one"))
                }
                (Opcode::Text | Opcode::Binary, None) if fin => {
                    self.used = end;
                    let body = &self.buf[start..end];
                    return Ok(Some(if op == Opcode::Text {
                        Message::Text(std::str::from_utf8(body).map_err(|_| WsError::NotUtf8)?)
                    } else {
                        Message::Binary(body)
                    }));
                }
                _ => {}
            }
            // A fragment: put together in `partial`.
            if self.partial.len() + len > MAX_MESSAGE {
                return Err(WsError::TooLong);
            }
            if self.partial_op.is_none() {
                self.partial_op = Some(op);
            }
            self.partial.extend_from_slice(&self.buf[start..end]);
            self.used = end;
            if fin {
                let op = self.partial_op.take();
                self.partial_done = true;
                let body = &self.partial[..];
                return Ok(Some(if op == Some(Opcode::Text) {
                    Message::Text(std::str::from_utf8(body).map_err(|_| WsError::NotUtf8)?)
                } else {
                    Message::Binary(body)
                }));
            }
        }
    }

    /// The next frame's opcode, FIN bit, payload start and length, once it is all in.
    fn header(&self) -> Result<Option<(Opcode, bool, usize, usize)>, WsError> {
        let b = &self.buf[self.used..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let op = Opcode::from_bits(b[0] & 0x0F).ok_or(WsError::Protocol("unknown opcode"))?;
        if b[1] & 0x80 != 0 {
            return Err(WsError::Protocol("a masked frame from the server"));
        }
        let (len, head) = match b[1] & 0x7F {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (usize::from(u16::from_be_bytes([b[2], b[3]])), 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                let n = u64::from_be_bytes(n);
                if n > MAX_MESSAGE as u64 {
                    return Err(WsError::TooLong);
                }
                (n as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        if op.is_control() && (len > 125 || !fin) {
            return Err(WsError::Protocol("a control frame fragmented or too long"));
        }
        if len > MAX_MESSAGE {
            return Err(WsError::TooLong);
        }
        if b.len() < head + len {
            return Ok(None);
        }
        Ok(Some((op, fin, self.used + head, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's frame (unmasked).
    fn server_frame(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | op];
        if payload.len() < 126 {
            f.push(payload.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_accept_value_is_rfc_6455s_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_handshake_answer_is_checked_and_what_follows_it_kept() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            .to_vec();
        let head = answer.len();
        assert_eq!(response(&answer[..20], key), Ok(None));
        answer.extend_from_slice(&server_frame(1, true, b"hi"));
        assert_eq!(response(&answer, key), Ok(Some(head)));
        let wrong = String::from_utf8_lossy(&answer).replace("s3pP", "AAAA");
        assert!(matches!(
            response(wrong.as_bytes(), key),
            Err(WsError::Handshake(_))
        ));
        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            response(refused, key),
            Err(WsError::Handshake("HTTP 403 Forbidden".into()))
        );
    }

    #[test]
    fn frames_written_are_masked_and_read_back_unmasked() {
        let mut out = Vec::new();
        let payload = vec![7u8; 300];
        encode(Opcode::Binary, &payload, [1, 2, 3, 4], &mut out);
        assert_eq!(out[0], 0x82);
        assert_eq!(out[1], 0x80 | 126);
        assert_eq!(&out[2..4], &300u16.to_be_bytes());
        assert_eq!(&out[4..8], &[1, 2, 3, 4]);
        assert_eq!(out[8], 7 ^ 1);
        assert_eq!(out.len(), 8 + 300);
    }

    #[test]
    fn messages_come_whole_however_the_bytes_arrive() {
        let mut bytes = server_frame(1, true, br#"{"event":"clear"}"#);
        bytes.extend(server_frame(2, false, b"ab"));
        bytes.extend(server_frame(9, true, b"p")); // a ping between fragments
        bytes.extend(server_frame(0, true, b"cd"));
        bytes.extend(server_frame(8, true, &[0x03, 0xE8, b'b', b'y', b'e']));
        let mut r = Reader::new();
        let mut got = Vec::new();
        for b in bytes {
            r.feed(&[b]);
            while let Some(m) = r.next_message().expect("valid") {
                got.push(format!("{m:?}"));
            }
        }
        assert_eq!(
            got,
            [
                r#"Text("{\"event\":\"clear\"}")"#,
                "Ping([112])",
                "Binary([97, 98, 99, 100])",
                r#"Close(Some(1000), "bye")"#
            ]
        );
    }

    #[test]
    fn broken_frames_are_errors_with_their_close_code() {
        let cases: [(Vec<u8>, u16); 5] = [
            (vec![0x81, 0x82, 0, 0, 0, 0, b'a', b'b'], 1002), // masked from the server
            (vec![0xC1, 0x00], 1002),                         // reserved bit
            (server_frame(0, true, b"x"), 1002),              // continuation of nothing
            (server_frame(1, true, &[0xFF, 0xFE]), 1007),     // not UTF-8
            (
                [vec![0x82, 127], (u64::MAX / 2).to_be_bytes().to_vec()].concat(),
                1009,
            ),
        ];
        for (bytes, code) in cases {
            let mut r = Reader::new();
            r.feed(&bytes);
            let e = r.next_message().expect_err("refused");
            assert_eq!(e.close_code(), code, "{e}");
        }
    }

    #[test]
    fn reading_into_the_readers_buffer_needs_no_copy_of_its_own() {
        let frame = server_frame(2, true, &[5; 640]);
        let mut r = Reader::new();
        let buf = r.for_read(4096);
        assert!(buf.capacity() - buf.len() >= 4096);
        buf.extend_from_slice(&frame);
        assert_eq!(r.buffered(), frame.len());
        assert_eq!(r.next_message(), Ok(Some(Message::Binary(&[5; 640]))));
        assert_eq!(r.next_message(), Ok(None));
    }
}
