//! Meta's webhook signature: `X-Hub-Signature-256: sha256=<hex>`, the HMAC-SHA256 of the raw
//! request body keyed with the app secret.
//!
//! The signature is checked over the exact octets received, before anything is parsed, and
//! compared in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header Meta signs its webhooks in.
pub const HEADER: &str = "x-hub-signature-256";

/// Why a webhook's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header: not from Meta, or a proxy dropped it.
    #[error("no X-Hub-Signature-256 header")]
    Missing,
    /// The header is not `sha256=` and 64 hex digits.
    #[error("X-Hub-Signature-256 is not sha256=<64 hex digits>")]
    Malformed,
    /// The body was not signed with our app secret: forged, altered on the way, or signed
    /// with another app's secret.
    #[error("signature does not match the body")]
    Mismatch,
}

/// The header value Meta would send for `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// Checks the `X-Hub-Signature-256` value `header` against `body` under `secret`.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&[u8]>) -> Result<(), SignatureError> {
    let mut check = Verifier::new(secret, header)?;
    check.update(body);
    check.finish()
}

/// A signature checked as the body streams in: the header is read first (a request
/// without a well-formed one is refused before its body is read), each piece of the body
/// is hashed as it arrives, and [`Verifier::finish`] compares.
pub struct Verifier {
    mac: Hmac<Sha256>,
    expected: [u8; 32],
}

impl Verifier {
    /// A check of a body against `header` under `secret`.
    pub fn new(secret: &[u8], header: Option<&[u8]>) -> Result<Verifier, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let hex = header
            .strip_prefix(b"sha256=")
            .ok_or(SignatureError::Malformed)?;
        let mut expected = [0u8; 32];
        if hex.len() != 64 {
            return Err(SignatureError::Malformed);
        }
        for (out, pair) in expected.iter_mut().zip(hex.chunks_exact(2)) {
            let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
                return Err(SignatureError::Malformed);
            };
            *out = hi << 4 | lo;
        }
        Ok(Verifier {
            mac: mac(secret),
            expected,
        })
    }

    /// The next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        self.mac.update(piece);
    }

    /// Whether the whole body matched, compared in constant time.
    pub fn finish(self) -> Result<(), SignatureError> {
        self.mac
            .verify_slice(&self.expected)
            .map_err(|_| SignatureError::Mismatch)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length")
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_hmac_sha256_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn valid_upper_case_tampered_wrong_secret_and_malformed_headers() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let good = sign(b"secret", body);
        assert_eq!(verify(b"secret", body, Some(good.as_bytes())), Ok(()));
        let upper = format!("sha256={}", good[7..].to_ascii_uppercase());
        assert_eq!(verify(b"secret", body, Some(upper.as_bytes())), Ok(()));
        let mut tampered = body.to_vec();
        tampered[12] ^= 1;
        assert_eq!(
            verify(b"secret", &tampered, Some(good.as_bytes())),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", body, Some(good.as_bytes())),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(b"secret", body, None), Err(SignatureError::Missing));
        for bad in ["sha1=00", "sha256=xyz", &good[..70], &format!("{good}0")] {
            assert_eq!(
                verify(b"secret", body, Some(bad.as_bytes())),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }
}
