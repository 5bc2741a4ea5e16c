//! SIP digest authentication (RFC 3261 §22, RFC 2617, RFC 7616), sans-IO.
//!
//! Client side: answer a trunk's 401/407 challenge ([`DigestChallenge::respond`]). Server
//! side: issue challenges whose nonces carry their own issue time and a keyed hash, so they
//! need no state, and verify credentials against them ([`NonceIssuer`], [`verify`]). Time is
//! an input (Unix seconds); no clock is read here.

use std::fmt::Write as _;

use md5::Md5;
use sha2::{Digest, Sha256};

use super::header::AuthParams;

/// Digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    /// MD5 (RFC 2617; what most SIP equipment speaks).
    Md5,
    /// SHA-256 (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    fn parse(s: Option<&str>) -> Result<Self, AuthError> {
        match s {
            None => Ok(Algorithm::Md5),
            Some(a) if a.eq_ignore_ascii_case("MD5") => Ok(Algorithm::Md5),
            Some(a) if a.eq_ignore_ascii_case("SHA-256") => Ok(Algorithm::Sha256),
            Some(other) => Err(AuthError::Algorithm(other.to_string())),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex(&Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex(&Sha256::digest(data.as_bytes())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Why authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum AuthError {
    /// Not a Digest challenge or credentials.
    #[error("not a Digest authentication header")]
    Scheme,
    /// A required parameter is missing.
    #[error("missing parameter {0}")]
    Missing(&'static str),
    /// An algorithm we do not implement (the `-sess` variants, anything else).
    #[error("unsupported algorithm {0}")]
    Algorithm(String),
    /// qop offered without `auth` (only `auth-int` is not supported).
    #[error("unsupported qop")]
    Qop,
    /// The realm is not ours.
    #[error("wrong realm")]
    Realm,
    /// The nonce was not issued by us, or was tampered with.
    #[error("invalid nonce")]
    Nonce,
    /// The nonce is too old: challenge again with `stale=true`.
    #[error("stale nonce")]
    Stale,
    /// The username is unknown or the response does not match the password.
    #[error("wrong credentials")]
    Credentials,
}

/// A parsed `WWW-Authenticate` / `Proxy-Authenticate` Digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DigestChallenge {
    /// Protection space.
    pub realm: String,
    /// Server nonce.
    pub nonce: String,
    /// Opaque value to echo.
    pub opaque: Option<String>,
    /// Hash algorithm.
    pub algorithm: Algorithm,
    /// The server offered `qop=auth`.
    pub qop_auth: bool,
    /// The previous credentials failed only because the nonce expired.
    pub stale: bool,
}

impl DigestChallenge {
    /// Reads a challenge header value.
    pub(crate) fn parse(value: &[u8]) -> Result<Self, AuthError> {
        let p = AuthParams::parse(value).map_err(|_| AuthError::Scheme)?;
        if !p.scheme.eq_ignore_ascii_case("Digest") {
            return Err(AuthError::Scheme);
        }
        let qop_auth = match p.get("qop") {
            None => false,
            Some(q) => {
                if q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")) {
                    true
                } else {
                    return Err(AuthError::Qop);
                }
            }
        };
        Ok(Self {
            realm: p
                .get("realm")
                .ok_or(AuthError::Missing("realm"))?
                .to_string(),
            nonce: p
                .get("nonce")
                .ok_or(AuthError::Missing("nonce"))?
                .to_string(),
            opaque: p.get("opaque").map(str::to_string),
            algorithm: Algorithm::parse(p.get("algorithm"))?,
            qop_auth,
            stale: p
                .get("stale")
                .is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The `Authorization` / `Proxy-Authorization` value answering this challenge.
    /// `cnonce` must be unpredictable (the caller supplies randomness); `nc` counts the
    /// requests made with this nonce, starting at 1.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn respond(
        &self,
        method: &str,
        uri: &str,
        username: &str,
        password: &str,
        cnonce: &str,
        nc: u32,
    ) -> String {
        let ha1 = self
            .algorithm
            .hash(&format!("{username}:{}:{password}", self.realm));
        let ha2 = self.algorithm.hash(&format!("{method}:{uri}"));
        let nc = format!("{nc:08x}");
        let response = if self.qop_auth {
            self.algorithm
                .hash(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce))
        } else {
            self.algorithm.hash(&format!("{ha1}:{}:{ha2}", self.nonce))
        };
        let mut v = format!(
            "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm={}",
            self.realm,
            self.nonce,
            self.algorithm.name()
        );
        if self.qop_auth {
            let _ = write!(v, ", qop=auth, nc={nc}, cnonce=\"{cnonce}\"");
        }
        if let Some(opaque) = &self.opaque {
            let _ = write!(v, ", opaque=\"{opaque}\"");
        }
        v
    }
}

/// Issues and checks stateless nonces: `<issued-at hex>.<hash(secret, issued-at, realm)>`.
#[derive(Debug, Clone)]
pub(crate) struct NonceIssuer {
    secret: String,
    realm: String,
    lifetime_secs: u64,
}

impl NonceIssuer {
    /// An issuer for `realm`; `secret` must be random and private to the node (or cluster).
    pub(crate) fn new(realm: &str, secret: &str, lifetime_secs: u64) -> Self {
        Self {
            secret: secret.to_string(),
            realm: realm.to_string(),
            lifetime_secs,
        }
    }

    /// The realm challenges name.
    pub(crate) fn realm(&self) -> &str {
        &self.realm
    }

    fn mac(&self, issued: u64) -> String {
        Algorithm::Sha256.hash(&format!("{}:{issued:x}:{}", self.secret, self.realm))
    }

    /// A nonce issued at `now` (Unix seconds).
    pub(crate) fn nonce(&self, now: u64) -> String {
        format!("{now:x}.{}", &self.mac(now)[..32])
    }

    /// A `WWW-Authenticate` value challenging with a fresh nonce.
    pub(crate) fn challenge(&self, now: u64, algorithm: Algorithm, stale: bool) -> String {
        let mut v = format!(
            "Digest realm=\"{}\", nonce=\"{}\", algorithm={}, qop=\"auth\"",
            self.realm,
            self.nonce(now),
            algorithm.name()
        );
        if stale {
            v.push_str(", stale=true");
        }
        v
    }

    fn check(&self, nonce: &str, now: u64) -> Result<(), AuthError> {
        let (issued, mac) = nonce.split_once('.').ok_or(AuthError::Nonce)?;
        let issued = u64::from_str_radix(issued, 16).map_err(|_| AuthError::Nonce)?;
        if !constant_time_eq(mac.as_bytes(), &self.mac(issued).as_bytes()[..32]) {
            return Err(AuthError::Nonce);
        }
        // A few seconds of clock skew between cluster nodes are tolerated.
        if issued > now.saturating_add(5) || now.saturating_sub(issued) > self.lifetime_secs {
            return Err(AuthError::Stale);
        }
        Ok(())
    }
}

/// Checks `Authorization` credentials for a request with `method`, against a nonce from
/// `issuer` and the password `password_of(username)` returns.
pub(crate) fn verify(
    credentials: &[u8],
    method: &str,
    issuer: &NonceIssuer,
    now: u64,
    password_of: impl Fn(&str) -> Option<String>,
) -> Result<String, AuthError> {
    verify_ha1(
        credentials,
        method,
        issuer,
        now,
        |username, realm, algorithm| {
            password_of(username)
                .map(|password| algorithm.hash(&format!("{username}:{realm}:{password}")))
        },
    )
}

/// A user's digest secrets (RFC 7616 HA1, `user:realm:password` hashed) for both
/// algorithms: what a registrar keeps instead of the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ha1 {
    /// MD5.
    pub md5: String,
    /// SHA-256.
    pub sha256: String,
}

impl Ha1 {
    /// The secrets of `user` with `password` in `realm`.
    pub(crate) fn of(user: &str, realm: &str, password: &str) -> Ha1 {
        let data = format!("{user}:{realm}:{password}");
        Ha1 {
            md5: Algorithm::Md5.hash(&data),
            sha256: Algorithm::Sha256.hash(&data),
        }
    }

    /// The secret for `algorithm`.
    pub(crate) fn get(&self, algorithm: Algorithm) -> &str {
        match algorithm {
            Algorithm::Md5 => &self.md5,
            Algorithm::Sha256 => &self.sha256,
        }
    }

    /// Whether `password` is the one these secrets were made from.
    pub(crate) fn matches(&self, user: &str, realm: &str, password: &str) -> bool {
        let given = Algorithm::Sha256.hash(&format!("{user}:{realm}:{password}"));
        constant_time_eq(given.as_bytes(), self.sha256.as_bytes())
    }
}

/// [`verify`] with the user's HA1 (`ha1_of(user, realm, algorithm)`) instead of a password.
pub(crate) fn verify_ha1(
    credentials: &[u8],
    method: &str,
    issuer: &NonceIssuer,
    now: u64,
    ha1_of: impl Fn(&str, &str, Algorithm) -> Option<String>,
) -> Result<String, AuthError> {
    let p = AuthParams::parse(credentials).map_err(|_| AuthError::Scheme)?;
    if !p.scheme.eq_ignore_ascii_case("Digest") {
        return Err(AuthError::Scheme);
    }
    let get = |k: &'static str| p.get(k).ok_or(AuthError::Missing(k));
    let username = get("username")?;
    if get("realm")? != issuer.realm() {
        return Err(AuthError::Realm);
    }
    let nonce = get("nonce")?;
    let uri = get("uri")?;
    let response = get("response")?;
    let algorithm = Algorithm::parse(p.get("algorithm"))?;
    issuer.check(nonce, now)?;
    let ha1 = ha1_of(username, issuer.realm(), algorithm).ok_or(AuthError::Credentials)?;
    let challenge = DigestChallenge {
        realm: issuer.realm().to_string(),
        nonce: nonce.to_string(),
        opaque: None,
        algorithm,
        qop_auth: p.get("qop").is_some(),
        stale: false,
    };
    let ha2 = algorithm.hash(&format!("{method}:{uri}"));
    let expected = if challenge.qop_auth {
        if !p.get("qop").is_some_and(|q| q.eq_ignore_ascii_case("auth")) {
            return Err(AuthError::Qop);
        }
        let nc = get("nc")?;
        let cnonce = get("cnonce")?;
        algorithm.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
    } else {
        algorithm.hash(&format!("{ha1}:{nonce}:{ha2}"))
    };
    if constant_time_eq(
        expected.as_bytes(),
        response.to_ascii_lowercase().as_bytes(),
    ) {
        Ok(username.to_string())
    } else {
        Err(AuthError::Credentials)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response_of(authorization: &str) -> String {
        AuthParams::parse(authorization.as_bytes())
            .unwrap()
            .get("response")
            .unwrap()
            .to_string()
    }

    #[test]
    fn rfc_2617_md5_example() {
        // RFC 2617 §3.5.
        let c = DigestChallenge::parse(
            b"Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
              nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        let a = c.respond(
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle Of Life",
            "0a4f113b",
            1,
        );
        assert_eq!(response_of(&a), "6629fae49393a05397450978507c4ef1");
        assert!(a.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""));
        assert!(a.contains("nc=00000001"));
    }

    #[test]
    fn rfc_7616_sha256_and_md5_examples() {
        // RFC 7616 §3.9.1.
        let challenge = |alg: &str| {
            DigestChallenge::parse(
                format!(
                    "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm={alg}, \
                     nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
                     opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
                )
                .as_bytes(),
            )
            .unwrap()
        };
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let sha = challenge("SHA-256").respond(
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle of Life",
            cnonce,
            1,
        );
        assert_eq!(
            response_of(&sha),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        let md5 = challenge("MD5").respond(
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle of Life",
            cnonce,
            1,
        );
        assert_eq!(response_of(&md5), "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn server_challenge_round_trip_stale_and_forgery() {
        let issuer = NonceIssuer::new("waswitch", "s3cret", 300);
        let now = 1_800_000_000;
        let challenge =
            DigestChallenge::parse(issuer.challenge(now, Algorithm::Md5, false).as_bytes())
                .unwrap();
        let creds = challenge.respond("INVITE", "sip:+4930123@127.0.0.1", "pbx1", "pw", "c1", 1);
        let pw = |u: &str| (u == "pbx1").then(|| "pw".to_string());
        assert_eq!(
            verify(creds.as_bytes(), "INVITE", &issuer, now + 10, pw),
            Ok("pbx1".into())
        );
        // Same credentials for another method: the response does not match.
        assert_eq!(
            verify(creds.as_bytes(), "BYE", &issuer, now + 10, pw),
            Err(AuthError::Credentials)
        );
        // Wrong password.
        let wrong = challenge.respond("INVITE", "sip:+4930123@127.0.0.1", "pbx1", "nope", "c1", 1);
        assert_eq!(
            verify(wrong.as_bytes(), "INVITE", &issuer, now, pw),
            Err(AuthError::Credentials)
        );
        // Regression: a nonce from a node whose clock runs 3 s ahead once underflowed here.
        assert_eq!(
            verify(creds.as_bytes(), "INVITE", &issuer, now - 3, pw),
            Ok("pbx1".into())
        );
        // Too old: stale, so the client can retry without asking a person.
        assert_eq!(
            verify(creds.as_bytes(), "INVITE", &issuer, now + 301, pw),
            Err(AuthError::Stale)
        );
        // A nonce made up by the client, or issued by another secret.
        let other = NonceIssuer::new("waswitch", "other", 300);
        let forged = DigestChallenge::parse(other.challenge(now, Algorithm::Md5, false).as_bytes())
            .unwrap()
            .respond("INVITE", "sip:x@127.0.0.1", "pbx1", "pw", "c1", 1);
        assert_eq!(
            verify(forged.as_bytes(), "INVITE", &issuer, now, pw),
            Err(AuthError::Nonce)
        );
        // SHA-256 works the same way.
        let sha =
            DigestChallenge::parse(issuer.challenge(now, Algorithm::Sha256, false).as_bytes())
                .unwrap()
                .respond("INVITE", "sip:x@127.0.0.1", "pbx1", "pw", "c2", 1);
        assert_eq!(
            verify(sha.as_bytes(), "INVITE", &issuer, now, pw),
            Ok("pbx1".into())
        );
        assert!(
            DigestChallenge::parse(issuer.challenge(now, Algorithm::Md5, true).as_bytes())
                .unwrap()
                .stale
        );
    }

    #[test]
    fn unsupported_challenges_are_named() {
        assert_eq!(
            DigestChallenge::parse(b"Basic realm=\"x\""),
            Err(AuthError::Scheme)
        );
        assert_eq!(
            DigestChallenge::parse(b"Digest realm=\"x\", nonce=\"n\", algorithm=MD5-sess"),
            Err(AuthError::Algorithm("MD5-sess".into()))
        );
        assert_eq!(
            DigestChallenge::parse(b"Digest realm=\"x\", nonce=\"n\", qop=\"auth-int\""),
            Err(AuthError::Qop)
        );
        assert_eq!(
            DigestChallenge::parse(b"Digest realm=\"x\""),
            Err(AuthError::Missing("nonce"))
        );
    }
}
