//! RTP packets (RFC 3550 §5.1) as a zero-copy view over a byte buffer.
//!
//! [`RtpView`] validates a packet once (version, CSRC list, header extension, padding) and
//! then reads fields lazily from the buffer. Over a mutable buffer it rewrites SSRC, sequence
//! number, timestamp, payload type and marker in place, which is all a relay needs to
//! forward the same buffer to the other leg. Nothing here allocates.

/// Fixed RTP header length.
pub const HEADER_LEN: usize = 12;

/// Why a datagram is not an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Shorter than its header says.
    #[error("packet too short")]
    TooShort,
    /// Not version 2.
    #[error("RTP version {0}")]
    Version(u8),
    /// The padding count is zero or longer than the payload.
    #[error("bad padding")]
    Padding,
}

/// A validated RTP packet over `B` (`&[u8]`, `Bytes`, `BytesMut`, `&mut [u8]`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpView<B> {
    buf: B,
    payload_start: usize,
    payload_end: usize,
}

/// Whether a datagram on an rtcp-mux port is RTCP rather than RTP (RFC 5761 §4: the second
/// octet, the RTCP packet type, is 192–223, which RTP payload types 64–95 with the marker
/// bit would look like).
pub fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 2 && datagram[0] >> 6 == 2 && (192..=223).contains(&datagram[1])
}

impl<B: AsRef<[u8]>> RtpView<B> {
    /// Validates `buf` as an RTP packet.
    pub fn parse(buf: B) -> Result<Self, RtpError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(RtpError::TooShort);
        }
        let version = b[0] >> 6;
        if version != 2 {
            return Err(RtpError::Version(version));
        }
        let csrc_count = usize::from(b[0] & 0x0f);
        let mut start = HEADER_LEN + 4 * csrc_count;
        if b.len() < start {
            return Err(RtpError::TooShort);
        }
        if b[0] & 0x10 != 0 {
            // Header extension: 16-bit profile, 16-bit length in 32-bit words (§5.3.1).
            if b.len() < start + 4 {
                return Err(RtpError::TooShort);
            }
            let words = usize::from(u16::from_be_bytes([b[start + 2], b[start + 3]]));
            start += 4 + 4 * words;
            if b.len() < start {
                return Err(RtpError::TooShort);
            }
        }
        let mut end = b.len();
        if b[0] & 0x20 != 0 {
            let pad = usize::from(b[end - 1]);
            if pad == 0 || pad > end - start {
                return Err(RtpError::Padding);
            }
            end -= pad;
        }
        Ok(Self {
            buf,
            payload_start: start,
            payload_end: end,
        })
    }

    fn bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// The marker bit.
    pub fn marker(&self) -> bool {
        self.bytes()[1] & 0x80 != 0
    }

    /// Payload type (0–127).
    pub fn payload_type(&self) -> u8 {
        self.bytes()[1] & 0x7f
    }

    /// Sequence number.
    pub fn sequence(&self) -> u16 {
        let b = self.bytes();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// Timestamp.
    pub fn timestamp(&self) -> u32 {
        let b = self.bytes();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }

    /// Synchronisation source.
    pub fn ssrc(&self) -> u32 {
        let b = self.bytes();
        u32::from_be_bytes([b[8], b[9], b[10], b[11]])
    }

    /// Contributing sources.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + '_ {
        let b = self.bytes();
        let n = usize::from(b[0] & 0x0f);
        b[HEADER_LEN..HEADER_LEN + 4 * n]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// The header extension: profile-defined id and its data.
    pub fn extension(&self) -> Option<(u16, &[u8])> {
        let b = self.bytes();
        if b[0] & 0x10 == 0 {
            return None;
        }
        let at = HEADER_LEN + 4 * usize::from(b[0] & 0x0f);
        let profile = u16::from_be_bytes([b[at], b[at + 1]]);
        Some((profile, &b[at + 4..self.payload_start]))
    }

    /// The payload, without padding.
    pub fn payload(&self) -> &[u8] {
        &self.bytes()[self.payload_start..self.payload_end]
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes()
    }

    /// The buffer back.
    pub fn into_inner(self) -> B {
        self.buf
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> RtpView<B> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }

    /// Sets the marker bit.
    pub fn set_marker(&mut self, marker: bool) {
        let b = self.bytes_mut();
        b[1] = (b[1] & 0x7f) | if marker { 0x80 } else { 0 };
    }

    /// Sets the payload type (the top bit of `pt` is ignored).
    pub fn set_payload_type(&mut self, pt: u8) {
        let b = self.bytes_mut();
        b[1] = (b[1] & 0x80) | (pt & 0x7f);
    }

    /// Sets the sequence number.
    pub fn set_sequence(&mut self, seq: u16) {
        self.bytes_mut()[2..4].copy_from_slice(&seq.to_be_bytes());
    }

    /// Sets the timestamp.
    pub fn set_timestamp(&mut self, ts: u32) {
        self.bytes_mut()[4..8].copy_from_slice(&ts.to_be_bytes());
    }

    /// Sets the synchronisation source.
    pub fn set_ssrc(&mut self, ssrc: u32) {
        self.bytes_mut()[8..12].copy_from_slice(&ssrc.to_be_bytes());
    }

    /// The payload, writable (same length).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (s, e) = (self.payload_start, self.payload_end);
        &mut self.bytes_mut()[s..e]
    }
}

/// Writes a plain RTP packet (no CSRC, no extension, no padding) into `out`; returns its
/// length, or `None` when `out` is too small.
pub fn write_packet(
    out: &mut [u8],
    marker: bool,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) -> Option<usize> {
    let len = HEADER_LEN + payload.len();
    let out = out.get_mut(..len)?;
    out[0] = 0x80;
    out[1] = (payload_type & 0x7f) | if marker { 0x80 } else { 0 };
    out[2..4].copy_from_slice(&sequence.to_be_bytes());
    out[4..8].copy_from_slice(&timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
    out[HEADER_LEN..].copy_from_slice(payload);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet() -> Vec<u8> {
        let mut out = vec![0u8; 12 + 160];
        let n = write_packet(&mut out, true, 0, 1000, 160_000, 0xdead_beef, &[0xff; 160]).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn reads_the_fixed_header() {
        let p = packet();
        let v = RtpView::parse(&p[..]).unwrap();
        assert!(v.marker());
        assert_eq!(v.payload_type(), 0);
        assert_eq!(v.sequence(), 1000);
        assert_eq!(v.timestamp(), 160_000);
        assert_eq!(v.ssrc(), 0xdead_beef);
        assert_eq!(v.payload().len(), 160);
        assert_eq!(v.csrcs().count(), 0);
        assert!(v.extension().is_none());
        assert!(!is_rtcp(&p));
    }

    #[test]
    fn csrcs_extension_and_padding_are_skipped() {
        // V=2, P=1, X=1, CC=2; PT 8; then 2 CSRCs, a one-word extension, 3 payload octets
        // and 5 octets of padding.
        let mut p = vec![0xb2, 0x08, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7];
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
        p.extend_from_slice(&[1, 2, 3]);
        p.extend_from_slice(&[0, 0, 0, 0, 5]);
        let v = RtpView::parse(&p[..]).unwrap();
        assert_eq!(v.csrcs().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(v.extension(), Some((0xbede, &[0x10, 0xaa, 0, 0][..])));
        assert_eq!(v.payload(), [1, 2, 3]);
    }

    #[test]
    fn malformed_packets_are_refused() {
        assert_eq!(RtpView::parse(&[0x80; 11][..]), Err(RtpError::TooShort));
        let mut p = packet();
        p[0] = 0x40;
        assert_eq!(RtpView::parse(&p[..]), Err(RtpError::Version(1)));
        let mut p = packet();
        p[0] = 0x8f; // 15 CSRCs announced, 40 octets present
        p.truncate(40);
        assert_eq!(RtpView::parse(&p[..]), Err(RtpError::TooShort));
        let mut p = packet();
        p[0] |= 0x20;
        *p.last_mut().unwrap() = 0;
        assert_eq!(RtpView::parse(&p[..]), Err(RtpError::Padding));
        let mut p = packet();
        p[0] |= 0x20;
        *p.last_mut().unwrap() = 200;
        assert_eq!(RtpView::parse(&p[..]), Err(RtpError::Padding));
        let mut p = packet();
        p[0] |= 0x10; // extension announced, no room for it
        p.truncate(14);
        assert_eq!(RtpView::parse(&p[..]), Err(RtpError::TooShort));
    }

    #[test]
    fn rewrites_in_place_and_leaves_the_payload_alone() {
        let mut p = packet();
        let mut v = RtpView::parse(&mut p[..]).unwrap();
        v.set_marker(false);
        v.set_payload_type(111);
        v.set_sequence(7);
        v.set_timestamp(42);
        v.set_ssrc(9);
        assert!(!v.marker());
        assert_eq!(
            (v.payload_type(), v.sequence(), v.timestamp(), v.ssrc()),
            (111, 7, 42, 9)
        );
        assert!(v.payload().iter().all(|&b| b == 0xff));
    }

    #[test]
    fn rtcp_is_told_from_rtp_on_a_muxed_port() {
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 201, 0, 7]));
        assert!(!is_rtcp(&[0x80, 0x80 | 96, 0, 1]));
        assert!(!is_rtcp(&[0x80, 0, 0, 1]));
    }

    proptest! {
        #[test]
        fn write_then_parse_is_identity(
            marker: bool, pt in 0u8..128, seq: u16, ts: u32, ssrc: u32,
            payload in proptest::collection::vec(any::<u8>(), 0..400)
        ) {
            let mut buf = vec![0u8; 12 + payload.len()];
            let n = write_packet(&mut buf, marker, pt, seq, ts, ssrc, &payload).unwrap();
            let v = RtpView::parse(&buf[..n]).unwrap();
            prop_assert_eq!(v.marker(), marker);
            prop_assert_eq!(v.payload_type(), pt);
            prop_assert_eq!(v.sequence(), seq);
            prop_assert_eq!(v.timestamp(), ts);
            prop_assert_eq!(v.ssrc(), ssrc);
            prop_assert_eq!(v.payload(), &payload[..]);
        }

        #[test]
        fn parse_never_panics_and_bounds_hold(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(v) = RtpView::parse(&data[..]) {
                prop_assert!(v.payload().len() <= data.len() - HEADER_LEN);
                let _ = (v.csrcs().count(), v.extension());
            }
        }
    }
}
