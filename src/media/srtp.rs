//! SDES-SRTP for SIP legs: RFC 3711 (SRTP and SRTCP) with the two suites RFC 4568 names for
//! `a=crypto` and Meta's SIP interface uses, `AES_CM_128_HMAC_SHA1_80` and
//! `AES_CM_128_HMAC_SHA1_32`. WebRTC legs get their SRTP from str0m (keys from DTLS).
//!
//! Sans-IO and in place: a packet is protected or checked and decrypted inside the buffer it
//! arrived in (a protected packet needs room for the tag, at most [`MAX_TRAILER`] bytes),
//! with no allocation and no lock per packet. The session keys are derived once per
//! context (key derivation rate 0, as SDES uses); the AES key schedule and the keyed HMAC
//! state are copied per packet, never re-derived.
//!
//! Keys are secrets: [`MasterKey`] prints as `MasterKey(..)`, and is wiped from memory when
//! dropped.
//!
//! The cipher, the MAC and the hash are RustCrypto's (`aes`, `ctr`, `hmac`, `sha1`); the
//! packet transform is here because the SRTP crates at hand hand back a new buffer for every
//! packet, and the media path allocates nothing per packet. It is held to RFC 3711's
//! appendix B vectors and to libsrtp's reference packets (`srtp/tests.rs`).

use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher};
use aes::Aes128;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type Ctr = ctr::Ctr128BE<Aes128>;
type HmacSha1 = Hmac<Sha1>;

/// Most bytes protection adds to an RTCP packet (the E flag and index, and an 80-bit tag);
/// an RTP packet gets at most 10.
pub const MAX_TRAILER: usize = 14;
/// Bytes of an SRTCP tag, whatever the suite (RFC 4568 §6.2: the `_32` suites shorten the
/// SRTP tag only).
const SRTCP_TAG: usize = 10;
/// Packets behind the highest seen that may still arrive (the replay window).
const WINDOW: u64 = 64;

/// Why a packet was not protected or not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SrtpError {
    /// Too short for its header (or for a tag).
    #[error("packet too short")]
    Short,
    /// No room after the packet for the tag.
    #[error("no room for the authentication tag")]
    NoRoom,
    /// The tag does not match: forged, damaged, or keyed otherwise.
    #[error("authentication failed")]
    Auth,
    /// Seen already, or too old for the replay window.
    #[error("replayed packet")]
    Replay,
}

/// Why an `a=crypto` line cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Not `tag suite inline:key…`.
    #[error("malformed a=crypto: {0}")]
    Malformed(&'static str),
    /// A suite other than the AES-CM HMAC-SHA1 ones.
    #[error("crypto suite {0} not supported")]
    Suite(String),
    /// A session parameter (UNENCRYPTED_SRTP, KDR, …) the switch does not honour.
    #[error("session parameter {0} not supported")]
    Parameter(String),
}

/// A crypto suite (RFC 4568 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// AES-128 counter mode, HMAC-SHA1 with an 80-bit tag.
    AesCm128HmacSha1_80,
    /// The same with a 32-bit SRTP tag (SRTCP keeps 80 bits).
    AesCm128HmacSha1_32,
}

impl Suite {
    /// Its name in `a=crypto`.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite named `name`.
    pub fn named(name: &str) -> Option<Suite> {
        match name {
            "AES_CM_128_HMAC_SHA1_80" => Some(Suite::AesCm128HmacSha1_80),
            "AES_CM_128_HMAC_SHA1_32" => Some(Suite::AesCm128HmacSha1_32),
            _ => None,
        }
    }

    fn rtp_tag(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }
}

/// A master key and salt (128 + 112 bits), as `a=crypto` carries them.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    key: [u8; 16],
    salt: [u8; 14],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.key.zeroize();
        self.salt.zeroize();
    }
}

impl MasterKey {
    /// From the raw key and salt.
    pub fn new(key: [u8; 16], salt: [u8; 14]) -> MasterKey {
        MasterKey { key, salt }
    }

    /// A fresh random key and salt from the operating system.
    pub fn random() -> Result<MasterKey, getrandom::Error> {
        let mut both = [0u8; 30];
        getrandom::getrandom(&mut both)?;
        let mut key = [0u8; 16];
        let mut salt = [0u8; 14];
        key.copy_from_slice(&both[..16]);
        salt.copy_from_slice(&both[16..]);
        zeroize::Zeroize::zeroize(&mut both);
        Ok(MasterKey { key, salt })
    }

    /// The `inline:` value: key and salt, base64.
    pub fn inline(&self) -> String {
        let mut both = [0u8; 30];
        both[..16].copy_from_slice(&self.key);
        both[16..].copy_from_slice(&self.salt);
        let text = base64::engine::general_purpose::STANDARD.encode(both);
        zeroize::Zeroize::zeroize(&mut both);
        text
    }

    fn from_inline(text: &str) -> Result<MasterKey, CryptoError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| CryptoError::Malformed("the key is not base64"))?;
        if bytes.len() != 30 {
            return Err(CryptoError::Malformed(
                "the key is not 30 bytes (key and salt)",
            ));
        }
        let mut key = [0u8; 16];
        let mut salt = [0u8; 14];
        key.copy_from_slice(&bytes[..16]);
        salt.copy_from_slice(&bytes[16..]);
        Ok(MasterKey { key, salt })
    }
}

/// One `a=crypto` attribute (RFC 4568 §9.1) the switch can use: one inline key, no MKI
/// beyond the default, no session parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crypto {
    /// The attribute's tag (an answer repeats the offer's).
    pub tag: u32,
    /// The suite.
    pub suite: Suite,
    /// The key.
    pub key: MasterKey,
}

impl Crypto {
    /// Parses the value of an `a=crypto:` line (without `a=crypto:`).
    pub fn parse(value: &str) -> Result<Crypto, CryptoError> {
        let mut fields = value.split_ascii_whitespace();
        let tag = fields
            .next()
            .and_then(|t| t.parse::<u32>().ok())
            .ok_or(CryptoError::Malformed("the tag is not a number"))?;
        let suite_name = fields
            .next()
            .ok_or(CryptoError::Malformed("no crypto suite"))?;
        let suite =
            Suite::named(suite_name).ok_or_else(|| CryptoError::Suite(suite_name.to_string()))?;
        let params = fields
            .next()
            .ok_or(CryptoError::Malformed("no key parameters"))?;
        if let Some(session) = fields.next() {
            return Err(CryptoError::Parameter(session.to_string()));
        }
        // One key (several, separated by `;`, are not used).
        let first = params
            .split(';')
            .next()
            .ok_or(CryptoError::Malformed("no key"))?;
        let inline = first
            .strip_prefix("inline:")
            .ok_or(CryptoError::Malformed("the key is not inline:"))?;
        // `key[|lifetime][|MKI:length]`.
        let mut parts = inline.split('|');
        let key = MasterKey::from_inline(parts.next().unwrap_or(""))?;
        // A lifetime is taken (the switch rekeys with each new offer, far before it); an MKI
        // would put a key identifier in every packet, which the switch does not do.
        if let Some(mki) = parts.find(|p| p.contains(':')) {
            return Err(CryptoError::Parameter(format!("MKI {mki}")));
        }
        Ok(Crypto { tag, suite, key })
    }

    /// The value of an `a=crypto:` line offering or answering this.
    pub fn line(&self) -> String {
        format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.name(),
            self.key.inline()
        )
    }
}

/// The SDES keys of a call leg: the peer's (to check and decrypt what it sends) and ours
/// (to protect what we send), under one suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keying {
    /// The peer's `a=crypto`.
    pub theirs: Crypto,
    /// Ours, with the same tag and suite, and a fresh key.
    pub ours: Crypto,
}

impl Keying {
    /// The sender and the receiver of the leg.
    pub fn contexts(&self) -> (SrtpSender, SrtpReceiver) {
        (
            SrtpSender::new(self.ours.suite, &self.ours.key),
            SrtpReceiver::new(self.theirs.suite, &self.theirs.key),
        )
    }
}

/// Answers an SDES offer (its `a=crypto` values, in preference order): the first line the
/// switch can use, and our own key for it (RFC 4568 §7.1.2: same tag, same suite). When
/// none is usable, why each was not (an offer that gets 488).
pub fn answer(offered: &[String]) -> Result<Keying, String> {
    let mut why = Vec::new();
    for value in offered {
        match Crypto::parse(value) {
            Ok(theirs) => {
                let key = MasterKey::random().map_err(|e| format!("no random key: {e}"))?;
                let ours = Crypto {
                    tag: theirs.tag,
                    suite: theirs.suite,
                    key,
                };
                return Ok(Keying { theirs, ours });
            }
            Err(e) => why.push(e.to_string()),
        }
    }
    if why.is_empty() {
        Err("no a=crypto line".into())
    } else {
        Err(why.join("; "))
    }
}

/// Our SDES offer: a fresh key for each suite, `AES_CM_128_HMAC_SHA1_80` first (tag 1)
/// then `_32` (tag 2).
pub fn offer() -> Result<Vec<Crypto>, String> {
    [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32]
        .into_iter()
        .zip(1..)
        .map(|(suite, tag)| {
            let key = MasterKey::random().map_err(|e| format!("no random key: {e}"))?;
            Ok(Crypto { tag, suite, key })
        })
        .collect()
}

/// The keys of a call whose SDES offer (`offered`, ours) was answered with `answered` (the
/// peer's `a=crypto` values): the answer must pick one offered line by its tag, with its
/// suite.
pub fn of_answer(offered: &[Crypto], answered: &[String]) -> Result<Keying, String> {
    let value = answered.first().ok_or("the answer has no a=crypto line")?;
    let theirs = Crypto::parse(value).map_err(|e| e.to_string())?;
    let ours = offered
        .iter()
        .find(|c| c.tag == theirs.tag && c.suite == theirs.suite)
        .ok_or("the answer's a=crypto matches no offered tag and suite")?
        .clone();
    Ok(Keying { theirs, ours })
}

/// The keys of one direction of RTP or RTCP, derived from the master key.
#[derive(Clone)]
struct SessionKeys {
    cipher: Aes128,
    salt: [u8; 14],
    auth: HmacSha1,
}

impl SessionKeys {
    /// RFC 3711 §4.3: labels `base` (encryption), `base + 1` (authentication), `base + 2`
    /// (salt); key derivation rate 0.
    fn derive(master: &MasterKey, base: u8) -> SessionKeys {
        let prf = Aes128::new(&master.key.into());
        let mut enc = [0u8; 16];
        let mut auth = [0u8; 20];
        let mut salt = [0u8; 14];
        derive_into(&prf, &master.salt, base, &mut enc);
        derive_into(&prf, &master.salt, base + 1, &mut auth);
        derive_into(&prf, &master.salt, base + 2, &mut salt);
        let keys = SessionKeys {
            cipher: Aes128::new(&enc.into()),
            salt,
            // An HMAC takes a key of any length.
            auth: <HmacSha1 as Mac>::new_from_slice(&auth)
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length")),
        };
        zeroize::Zeroize::zeroize(&mut enc);
        zeroize::Zeroize::zeroize(&mut auth);
        keys
    }

    /// XORs the keystream for (`ssrc`, `index`) into `data` (RFC 3711 §4.1.1).
    fn crypt(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        let core = ctr::CtrCore::<Aes128, ctr::flavors::Ctr128BE>::inner_iv_init(
            self.cipher.clone(),
            &iv.into(),
        );
        let mut ctr = Ctr::from_core(core);
        ctr.apply_keystream(data);
    }

    /// The full HMAC-SHA1 of `parts`.
    fn mac(&self, parts: &[&[u8]]) -> [u8; 20] {
        let mut mac = self.auth.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

/// The AES-CM PRF of RFC 3711 §4.3.3: `out` filled with keystream for label `label`.
fn derive_into(prf: &Aes128, master_salt: &[u8; 14], label: u8, out: &mut [u8]) {
    let mut x = [0u8; 16];
    x[..14].copy_from_slice(master_salt);
    // key_id = label || r (r = 0): the label sits 7 bytes from the salt's end.
    x[7] ^= label;
    for (n, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = x;
        block[14..].copy_from_slice(&(n as u16).to_be_bytes());
        let mut b = block.into();
        prf.encrypt_block(&mut b);
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Where the payload of an RTP packet starts (after CSRCs and the header extension).
fn rtp_header_len(packet: &[u8]) -> Result<usize, SrtpError> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return Err(SrtpError::Short);
    }
    let mut len = 12 + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let words = packet.get(len + 2..len + 4).ok_or(SrtpError::Short)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    if len > packet.len() {
        return Err(SrtpError::Short);
    }
    Ok(len)
}

fn ssrc_at(packet: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([packet[at], packet[at + 1], packet[at + 2], packet[at + 3]])
}

/// The sending side of an SRTP session: protects our packets with our key.
pub struct SrtpSender {
    suite: Suite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    /// Our packets' index (rollover counter and highest sequence).
    index: Index,
    /// The last SRTCP index sent.
    srtcp_index: u32,
}

impl std::fmt::Debug for SrtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpSender")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl SrtpSender {
    /// A sender keyed with `key` for `suite`.
    pub fn new(suite: Suite, key: &MasterKey) -> SrtpSender {
        SrtpSender {
            suite,
            rtp: SessionKeys::derive(key, 0),
            rtcp: SessionKeys::derive(key, 3),
            index: Index::default(),
            srtcp_index: 0,
        }
    }

    /// Protects the RTP packet in `buf[..len]` in place; the tag goes after it. Returns the
    /// protected length.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag = self.suite.rtp_tag();
        if buf.len() < len + tag {
            return Err(SrtpError::NoRoom);
        }
        let header = rtp_header_len(&buf[..len])?;
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = ssrc_at(buf, 8);
        // Our own rollover counter, kept as a receiver keeps the peer's: a sequence that
        // wrapped adds one, a late packet from before the wrap keeps the old one.
        let roc = self.index.guess(ssrc, seq);
        self.index.update(ssrc, seq, roc);
        let index = (u64::from(roc) << 16) | u64::from(seq);
        self.rtp.crypt(ssrc, index, &mut buf[header..len]);
        let mac = self.rtp.mac(&[&buf[..len], &roc.to_be_bytes()]);
        buf[len..len + tag].copy_from_slice(&mac[..tag]);
        Ok(len + tag)
    }

    /// Protects the RTCP packet in `buf[..len]` in place (encrypted, with the E flag, the
    /// SRTCP index and the tag after it). Returns the protected length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if len < 8 {
            return Err(SrtpError::Short);
        }
        if buf.len() < len + 4 + SRTCP_TAG {
            return Err(SrtpError::NoRoom);
        }
        self.srtcp_index = (self.srtcp_index + 1) & 0x7fff_ffff;
        let index = self.srtcp_index;
        let ssrc = ssrc_at(buf, 4);
        self.rtcp.crypt(ssrc, u64::from(index), &mut buf[8..len]);
        buf[len..len + 4].copy_from_slice(&(index | 0x8000_0000).to_be_bytes());
        let mac = self.rtcp.mac(&[&buf[..len + 4]]);
        buf[len + 4..len + 4 + SRTCP_TAG].copy_from_slice(&mac[..SRTCP_TAG]);
        Ok(len + 4 + SRTCP_TAG)
    }
}

/// Where a stream's packets stand: its SSRC, rollover counter and highest sequence
/// (`s_l`), from which a packet's 48-bit index is guessed (RFC 3711 §3.3.1).
#[derive(Debug, Default)]
struct Index {
    ssrc: Option<u32>,
    roc: u32,
    s_l: u16,
}

impl Index {
    /// The rollover counter packet `seq` of `ssrc` was sent under (0 for a new SSRC).
    fn guess(&self, ssrc: u32, seq: u16) -> u32 {
        if self.ssrc != Some(ssrc) {
            0
        } else if self.s_l < 0x8000 {
            if seq > self.s_l && seq - self.s_l > 0x8000 {
                self.roc.wrapping_sub(1)
            } else {
                self.roc
            }
        } else if self.s_l - 0x8000 > seq {
            self.roc.wrapping_add(1)
        } else {
            self.roc
        }
    }

    /// Packet `seq` of `ssrc`, sent under rollover counter `v`, was taken.
    fn update(&mut self, ssrc: u32, seq: u16, v: u32) {
        if self.ssrc != Some(ssrc) {
            *self = Index {
                ssrc: Some(ssrc),
                roc: v,
                s_l: seq,
            };
        } else if v == self.roc.wrapping_add(1) {
            self.roc = v;
            self.s_l = seq;
        } else if v == self.roc && seq > self.s_l {
            self.s_l = seq;
        }
    }
}

/// A replay window over 48-bit (SRTP) or 31-bit (SRTCP) indexes.
#[derive(Debug, Default)]
struct Replay {
    highest: Option<u64>,
    /// Bit n: `highest - n` was accepted.
    seen: u64,
}

impl Replay {
    fn check(&self, index: u64) -> Result<(), SrtpError> {
        match self.highest {
            None => Ok(()),
            Some(h) if index > h => Ok(()),
            Some(h) if h - index >= WINDOW => Err(SrtpError::Replay),
            Some(h) if self.seen & (1 << (h - index)) != 0 => Err(SrtpError::Replay),
            Some(_) => Ok(()),
        }
    }

    fn accept(&mut self, index: u64) {
        match self.highest {
            Some(h) if index <= h => self.seen |= 1 << (h - index),
            Some(h) => {
                let shift = index - h;
                self.seen = if shift >= WINDOW {
                    0
                } else {
                    self.seen << shift
                };
                self.seen |= 1;
                self.highest = Some(index);
            }
            None => {
                self.highest = Some(index);
                self.seen = 1;
            }
        }
    }
}

/// The receiving side of an SRTP session: checks and decrypts the peer's packets with the
/// peer's key.
pub struct SrtpReceiver {
    suite: Suite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    /// The peer's packets' index (rollover counter and highest sequence).
    index: Index,
    replay: Replay,
    rtcp_replay: Replay,
    rtcp_ssrc: Option<u32>,
}

impl std::fmt::Debug for SrtpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpReceiver")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl SrtpReceiver {
    /// A receiver keyed with the peer's `key` for `suite`.
    pub fn new(suite: Suite, key: &MasterKey) -> SrtpReceiver {
        SrtpReceiver {
            suite,
            rtp: SessionKeys::derive(key, 0),
            rtcp: SessionKeys::derive(key, 3),
            index: Index::default(),
            replay: Replay::default(),
            rtcp_replay: Replay::default(),
            rtcp_ssrc: None,
        }
    }

    /// Checks the SRTP packet in `buf` and decrypts it in place: the length of the RTP
    /// packet (without the tag). A packet that fails changes nothing.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let tag = self.suite.rtp_tag();
        if buf.len() < 12 + tag {
            return Err(SrtpError::Short);
        }
        let len = buf.len() - tag;
        let header = rtp_header_len(&buf[..len])?;
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = ssrc_at(buf, 8);
        let fresh = self.index.ssrc != Some(ssrc);
        let v = self.index.guess(ssrc, seq);
        let index = (u64::from(v) << 16) | u64::from(seq);
        if !fresh {
            self.replay.check(index)?;
        }
        let mut mac = self.rtp.auth.clone();
        mac.update(&buf[..len]);
        mac.update(&v.to_be_bytes());
        mac.verify_truncated_left(&buf[len..])
            .map_err(|_| SrtpError::Auth)?;
        if fresh {
            // A new source (the first, or the peer restarted its stream): counted afresh.
            self.replay = Replay::default();
        }
        self.index.update(ssrc, seq, v);
        self.replay.accept(index);
        self.rtp.crypt(ssrc, index, &mut buf[header..len]);
        Ok(len)
    }

    /// Checks the SRTCP packet in `buf` and decrypts it in place: the length of the RTCP
    /// packet (without the index and the tag).
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        if buf.len() < 8 + 4 + SRTCP_TAG {
            return Err(SrtpError::Short);
        }
        let signed = buf.len() - SRTCP_TAG;
        let len = signed - 4;
        let word = u32::from_be_bytes([buf[len], buf[len + 1], buf[len + 2], buf[len + 3]]);
        let encrypted = word & 0x8000_0000 != 0;
        let index = u64::from(word & 0x7fff_ffff);
        let ssrc = ssrc_at(buf, 4);
        let fresh = self.rtcp_ssrc != Some(ssrc);
        if !fresh {
            self.rtcp_replay.check(index)?;
        }
        let mut mac = self.rtcp.auth.clone();
        mac.update(&buf[..signed]);
        mac.verify_truncated_left(&buf[signed..])
            .map_err(|_| SrtpError::Auth)?;
        if fresh {
            self.rtcp_ssrc = Some(ssrc);
            self.rtcp_replay = Replay::default();
        }
        self.rtcp_replay.accept(index);
        if encrypted {
            self.rtcp.crypt(ssrc, index, &mut buf[8..len]);
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests;
