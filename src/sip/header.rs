//! Typed values of the headers a B2BUA acts on, parsed on demand from a header's raw value.
//!
//! Each parser takes the value as received (folding allowed) and either returns the typed
//! value or a [`HeaderError`] naming the defect, which becomes the reason phrase of a 400.

use super::msg::{is_token_char, trim, unfold, Method};
use bytes::Bytes;

/// Why a header value is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// An empty element in a comma-separated list (`a,,b`).
    #[error("empty list element")]
    EmptyElement,
    /// A quoted string is not closed.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// `<` without `>`.
    #[error("unterminated <URI>")]
    UnterminatedUri,
    /// A display name that is neither a quoted string nor tokens (`Bell, Alexander <...>`).
    #[error("display name must be quoted")]
    DisplayName,
    /// White space inside a URI.
    #[error("white space inside a URI")]
    SpaceInUri,
    /// An addr-spec carrying `,`, `;` or `?` parts that require `<...>` (RFC 3261 §20).
    #[error("URI with headers or parameters must be enclosed in <>")]
    NeedsAngleBrackets,
    /// An empty URI.
    #[error("empty URI")]
    EmptyUri,
    /// An empty or malformed `;name=value` parameter.
    #[error("malformed parameter")]
    Param,
    /// Via sent-protocol is not `SIP/2.0/TRANSPORT`.
    #[error("malformed Via sent-protocol")]
    ViaProtocol,
    /// Via sent-by host or port.
    #[error("malformed Via sent-by")]
    ViaSentBy,
    /// A number that is not a number, or out of its range.
    #[error("number out of range")]
    Number,
    /// CSeq is not `NUMBER METHOD`.
    #[error("malformed CSeq")]
    CSeq,
    /// A list of tokens with a non-token.
    #[error("malformed token list")]
    Token,
    /// An authentication header without a scheme or with malformed parameters.
    #[error("malformed authentication parameters")]
    Auth,
}

/// A `;name=value` parameter (value `None` for a flag). Names are kept as written; look them
/// up case-insensitively.
pub type Param = (String, Option<String>);

fn find_param<'a>(params: &'a [Param], name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

/// Splits a list value at commas outside quoted strings and `<...>`.
pub fn split_list(value: &[u8]) -> Result<Vec<&[u8]>, HeaderError> {
    let mut out = Vec::new();
    let mut in_quote = false;
    let mut in_angle = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, &b) in value.iter().enumerate() {
        if in_quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quote = false;
            }
            continue;
        }
        match b {
            b'"' => in_quote = true,
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            b',' if !in_angle => {
                out.push(trim(&value[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quote {
        return Err(HeaderError::UnterminatedQuote);
    }
    out.push(trim(&value[start..]));
    if out.iter().any(|e| e.is_empty()) {
        return Err(HeaderError::EmptyElement);
    }
    Ok(out)
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Reads a quoted string starting at `v[0] == '"'`; returns the unescaped content and the
/// rest after the closing quote.
fn quoted(v: &[u8]) -> Result<(String, &[u8]), HeaderError> {
    let mut out = Vec::new();
    let mut i = 1;
    while i < v.len() {
        match v[i] {
            b'\\' if i + 1 < v.len() => {
                out.push(v[i + 1]);
                i += 2;
            }
            b'"' => return Ok((text(&out), &v[i + 1..])),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Err(HeaderError::UnterminatedQuote)
}

/// Parses `;name[=value]` parameters (values may be quoted).
fn params(mut v: &[u8]) -> Result<Vec<Param>, HeaderError> {
    let mut out = Vec::new();
    loop {
        v = trim(v);
        if v.is_empty() {
            return Ok(out);
        }
        if v[0] != b';' {
            return Err(HeaderError::Param);
        }
        v = trim(&v[1..]);
        let name_len = v
            .iter()
            .position(|&b| !(is_token_char(b) || b == b'[' || b == b']' || b == b':'))
            .unwrap_or(v.len());
        if name_len == 0 {
            return Err(HeaderError::Param);
        }
        let name = text(&v[..name_len]);
        v = trim(&v[name_len..]);
        if v.first() == Some(&b'=') {
            v = trim(&v[1..]);
            if v.first() == Some(&b'"') {
                let (value, rest) = quoted(v)?;
                out.push((name, Some(value)));
                v = rest;
            } else {
                let len = v.iter().position(|&b| b == b';').unwrap_or(v.len());
                let value = trim(&v[..len]);
                if value.is_empty() || value.iter().any(|&b| b == b' ' || b == b'\t') {
                    return Err(HeaderError::Param);
                }
                out.push((name, Some(text(value))));
                v = &v[len..];
            }
        } else {
            out.push((name, None));
        }
    }
}

/// One Via value: `SIP/2.0/UDP host:port;branch=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport, upper-case (`UDP`, `TCP`, `TLS`, `SCTP`, `WS`, or an extension).
    pub transport: String,
    /// Sent-by host (IPv6 without brackets).
    pub host: String,
    /// Sent-by port.
    pub port: Option<u16>,
    /// Parameters (`branch`, `received`, `rport`, ...).
    pub params: Vec<Param>,
}

impl Via {
    /// Parses every Via value of one header line.
    pub fn parse_all(value: &[u8]) -> Result<Vec<Via>, HeaderError> {
        let value = unfold(value);
        split_list(&value)?
            .into_iter()
            .map(Via::parse_one)
            .collect()
    }

    fn parse_one(v: &[u8]) -> Result<Via, HeaderError> {
        // sent-protocol: name LWS? "/" LWS? version LWS? "/" LWS? transport
        let mut parts = Vec::with_capacity(3);
        let mut rest = v;
        for _ in 0..2 {
            let slash = rest
                .iter()
                .position(|&b| b == b'/')
                .ok_or(HeaderError::ViaProtocol)?;
            parts.push(trim(&rest[..slash]));
            rest = trim(&rest[slash + 1..]);
        }
        let t_len = rest
            .iter()
            .position(|&b| !is_token_char(b))
            .unwrap_or(rest.len());
        let transport = &rest[..t_len];
        if !parts[0].eq_ignore_ascii_case(b"SIP") || parts[1] != b"2.0" || transport.is_empty() {
            return Err(HeaderError::ViaProtocol);
        }
        let rest = trim(&rest[t_len..]);
        let sent_by_len = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
        let (host, port) = host_port(trim(&rest[..sent_by_len]))?;
        Ok(Via {
            transport: text(transport).to_ascii_uppercase(),
            host,
            port,
            params: params(&rest[sent_by_len..])?,
        })
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&str> {
        find_param(&self.params, "branch").flatten()
    }

    /// The `received` parameter.
    pub fn received(&self) -> Option<&str> {
        find_param(&self.params, "received").flatten()
    }

    /// `rport` present (`Some(None)` when requested without a value).
    pub fn rport(&self) -> Option<Option<u16>> {
        find_param(&self.params, "rport").map(|v| v.and_then(|p| p.parse().ok()))
    }
}

fn host_port(v: &[u8]) -> Result<(String, Option<u16>), HeaderError> {
    if v.is_empty() {
        return Err(HeaderError::ViaSentBy);
    }
    let (host, port) = if v[0] == b'[' {
        let end = v
            .iter()
            .position(|&b| b == b']')
            .ok_or(HeaderError::ViaSentBy)?;
        let port = match &v[end + 1..] {
            [] => None,
            [b':', p @ ..] => Some(p),
            _ => return Err(HeaderError::ViaSentBy),
        };
        (&v[1..end], port)
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(c) => (&v[..c], Some(&v[c + 1..])),
            None => (v, None),
        }
    };
    if host.is_empty()
        || !host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
    {
        return Err(HeaderError::ViaSentBy);
    }
    let port = match port {
        None => None,
        Some(p) => Some(number::<u16>(trim(p)).ok_or(HeaderError::ViaSentBy)?),
    };
    Ok((text(host), port))
}

fn number<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// `"Display" <uri>;params`, `Display <uri>;params` or `uri;params` (From, To, Contact,
/// Route, Record-Route, P-Asserted-Identity, Refer-To).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted.
    pub display: Option<String>,
    /// The URI as written (inside the brackets).
    pub uri: String,
    /// Header parameters after the address (`tag`, `expires`, `q`, ...).
    pub params: Vec<Param>,
}

impl NameAddr {
    /// Parses a single-valued address header (From, To).
    pub fn parse(value: &[u8]) -> Result<NameAddr, HeaderError> {
        let value = unfold(value);
        Self::parse_one(trim(&value))
    }

    /// Parses a list-valued address header (Contact, Route, Record-Route, PAI).
    pub fn parse_all(value: &[u8]) -> Result<Vec<NameAddr>, HeaderError> {
        let value = unfold(value);
        split_list(&value)?
            .into_iter()
            .map(NameAddr::parse_one)
            .collect()
    }

    fn parse_one(v: &[u8]) -> Result<NameAddr, HeaderError> {
        let (display, rest) = if v.first() == Some(&b'"') {
            let (d, rest) = quoted(v)?;
            let rest = trim(rest);
            if rest.first() != Some(&b'<') {
                return Err(HeaderError::DisplayName);
            }
            (Some(d), rest)
        } else if let Some(lt) = v.iter().position(|&b| b == b'<') {
            let d = trim(&v[..lt]);
            if !d
                .iter()
                .all(|&b| is_token_char(b) || b == b' ' || b == b'\t' || b >= 0x80)
            {
                return Err(HeaderError::DisplayName);
            }
            ((!d.is_empty()).then(|| text(d)), &v[lt..])
        } else {
            // addr-spec: the URI runs to the first ';' and must not need brackets.
            let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
            let uri = trim(&v[..end]);
            if uri.is_empty() {
                return Err(HeaderError::EmptyUri);
            }
            if uri.iter().any(|&b| b == b' ' || b == b'\t') {
                return Err(HeaderError::SpaceInUri);
            }
            if uri.iter().any(|&b| b == b'?' || b == b',') {
                return Err(HeaderError::NeedsAngleBrackets);
            }
            return Ok(NameAddr {
                display: None,
                uri: text(uri),
                params: params(&v[end..])?,
            });
        };
        // rest starts with '<'
        let gt = rest
            .iter()
            .position(|&b| b == b'>')
            .ok_or(HeaderError::UnterminatedUri)?;
        let uri = &rest[1..gt];
        if uri.is_empty() {
            return Err(HeaderError::EmptyUri);
        }
        if uri
            .iter()
            .any(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            return Err(HeaderError::SpaceInUri);
        }
        Ok(NameAddr {
            display,
            uri: text(uri),
            params: params(&rest[gt + 1..])?,
        })
    }

    /// The `tag` parameter (From, To).
    pub fn tag(&self) -> Option<&str> {
        find_param(&self.params, "tag").flatten()
    }

    /// A header parameter.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }
}

/// `CSeq: 4711 INVITE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number (0..=2^31-1 per RFC 3261 §8.1.1.5 when we generate; up to 2^32-1
    /// accepted).
    pub seq: u32,
    /// Method.
    pub method: Method,
}

impl CSeq {
    /// Parses a CSeq value.
    pub fn parse(value: &[u8]) -> Result<CSeq, HeaderError> {
        let value = unfold(value);
        let v = trim(&value);
        let sp = v
            .iter()
            .position(|&b| b == b' ' || b == b'\t')
            .ok_or(HeaderError::CSeq)?;
        let seq = number::<u32>(&v[..sp]).ok_or(HeaderError::Number)?;
        let method = trim(&v[sp..]);
        if method.is_empty() || !method.iter().all(|&b| is_token_char(b)) {
            return Err(HeaderError::CSeq);
        }
        Ok(CSeq {
            seq,
            method: Method::from_token(Bytes::copy_from_slice(method)),
        })
    }
}

/// Max-Forwards (0..=255).
pub fn max_forwards(value: &[u8]) -> Result<u8, HeaderError> {
    number::<u8>(trim(&unfold(value))).ok_or(HeaderError::Number)
}

/// A comma-separated token list (Supported, Require, Allow, Unsupported, Proxy-Require).
pub fn tokens(value: &[u8]) -> Result<Vec<String>, HeaderError> {
    let value = unfold(value);
    split_list(&value)?
        .into_iter()
        .map(|t| {
            if t.iter().all(|&b| is_token_char(b)) {
                Ok(text(t))
            } else {
                Err(HeaderError::Token)
            }
        })
        .collect()
}

/// Who refreshes a session (RFC 4028).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The UAC refreshes.
    Uac,
    /// The UAS refreshes.
    Uas,
}

/// `Session-Expires: 1800;refresher=uac` (RFC 4028).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionExpires {
    /// Session interval in seconds.
    pub delta: u32,
    /// Who refreshes, when stated.
    pub refresher: Option<Refresher>,
}

impl SessionExpires {
    /// Parses a Session-Expires value.
    pub fn parse(value: &[u8]) -> Result<SessionExpires, HeaderError> {
        let value = unfold(value);
        let v = trim(&value);
        let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
        let delta = number::<u32>(trim(&v[..end])).ok_or(HeaderError::Number)?;
        let params = params(&v[end..])?;
        let refresher = match find_param(&params, "refresher").flatten() {
            Some(r) if r.eq_ignore_ascii_case("uac") => Some(Refresher::Uac),
            Some(r) if r.eq_ignore_ascii_case("uas") => Some(Refresher::Uas),
            Some(_) => return Err(HeaderError::Param),
            None => None,
        };
        Ok(SessionExpires { delta, refresher })
    }
}

/// One Reason value: `Q.850;cause=16;text="Normal call clearing"` (RFC 3326).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// `SIP`, `Q.850`, or an extension protocol.
    pub protocol: String,
    /// The cause code.
    pub cause: Option<u16>,
    /// The text.
    pub text: Option<String>,
}

impl Reason {
    /// Parses every Reason value of one header line.
    pub fn parse_all(value: &[u8]) -> Result<Vec<Reason>, HeaderError> {
        let value = unfold(value);
        split_list(&value)?
            .into_iter()
            .map(|v| {
                let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
                let protocol = trim(&v[..end]);
                if protocol.is_empty() || !protocol.iter().all(|&b| is_token_char(b)) {
                    return Err(HeaderError::Token);
                }
                let params = params(&v[end..])?;
                let cause = match find_param(&params, "cause").flatten() {
                    Some(c) => Some(c.parse().map_err(|_| HeaderError::Number)?),
                    None => None,
                };
                Ok(Reason {
                    protocol: text(protocol),
                    cause,
                    text: find_param(&params, "text").flatten().map(str::to_string),
                })
            })
            .collect()
    }
}

/// `Digest realm="...", nonce="..."` and the like (Authorization, WWW-Authenticate,
/// Proxy-Authorization, Proxy-Authenticate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthParams {
    /// `Digest` (or another scheme).
    pub scheme: String,
    /// `name=value` pairs, quoted values unquoted.
    pub params: Vec<(String, String)>,
}

impl AuthParams {
    /// Parses a challenge or credentials value.
    pub fn parse(value: &[u8]) -> Result<AuthParams, HeaderError> {
        let value = unfold(value);
        let v = trim(&value);
        let sp = v
            .iter()
            .position(|&b| b == b' ' || b == b'\t')
            .ok_or(HeaderError::Auth)?;
        let scheme = &v[..sp];
        if !scheme.iter().all(|&b| is_token_char(b)) {
            return Err(HeaderError::Auth);
        }
        let mut params = Vec::new();
        for item in split_list(trim(&v[sp..])).map_err(|_| HeaderError::Auth)? {
            let eq = item
                .iter()
                .position(|&b| b == b'=')
                .ok_or(HeaderError::Auth)?;
            let name = trim(&item[..eq]);
            let raw = trim(&item[eq + 1..]);
            if name.is_empty() || !name.iter().all(|&b| is_token_char(b)) {
                return Err(HeaderError::Auth);
            }
            let value = if raw.first() == Some(&b'"') {
                let (q, rest) = quoted(raw)?;
                if !trim(rest).is_empty() {
                    return Err(HeaderError::Auth);
                }
                q
            } else {
                text(raw)
            };
            params.push((text(name).to_ascii_lowercase(), value));
        }
        Ok(AuthParams {
            scheme: text(scheme),
            params,
        })
    }

    /// A parameter value by (lower-case) name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `Content-Type: application/sdp;charset=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    /// `application/sdp`, lower-case.
    pub media_type: String,
    /// Parameters.
    pub params: Vec<Param>,
}

impl ContentType {
    /// Parses a Content-Type value.
    pub fn parse(value: &[u8]) -> Result<ContentType, HeaderError> {
        let value = unfold(value);
        let v = trim(&value);
        let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
        let mt = trim(&v[..end]);
        let slash = mt
            .iter()
            .position(|&b| b == b'/')
            .ok_or(HeaderError::Token)?;
        let (t, s) = (trim(&mt[..slash]), trim(&mt[slash + 1..]));
        if t.is_empty() || s.is_empty() || !t.iter().chain(s).all(|&b| is_token_char(b)) {
            return Err(HeaderError::Token);
        }
        Ok(ContentType {
            media_type: format!("{}/{}", text(t), text(s)).to_ascii_lowercase(),
            params: params(&v[end..])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_params_ipv6_and_folding() {
        let vias = Via::parse_all(
            b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport, SIP / 2.0 / TCP\r\n [2001:db8::9]:5061;received=192.0.2.5",
        )
        .unwrap();
        assert_eq!(vias.len(), 2);
        assert_eq!(vias[0].transport, "UDP");
        assert_eq!(vias[0].branch(), Some("z9hG4bK776"));
        assert_eq!(vias[0].rport(), Some(None));
        assert_eq!(vias[1].host, "2001:db8::9");
        assert_eq!(vias[1].port, Some(5061));
        assert_eq!(vias[1].received(), Some("192.0.2.5"));
        assert_eq!(
            Via::parse_all(b"SIP/2.0/UDP host;;,;,,"),
            Err(HeaderError::EmptyElement)
        );
        assert_eq!(
            Via::parse_all(b"SIP/3.0/UDP host"),
            Err(HeaderError::ViaProtocol)
        );
    }

    #[test]
    fn name_addr_forms() {
        let a = NameAddr::parse(b"\"J \\\"Rosenberg\\\"\" <sip:jdrosen@example.com>;tag=98asjd8")
            .unwrap();
        assert_eq!(a.display.as_deref(), Some("J \"Rosenberg\""));
        assert_eq!(a.uri, "sip:jdrosen@example.com");
        assert_eq!(a.tag(), Some("98asjd8"));
        let b = NameAddr::parse(b"Bob Smith <sip:bob@example.com>").unwrap();
        assert_eq!(b.display.as_deref(), Some("Bob Smith"));
        let c = NameAddr::parse(b"sip:carol@example.com;tag=1").unwrap();
        assert_eq!(
            (c.uri.as_str(), c.tag()),
            ("sip:carol@example.com", Some("1"))
        );
        assert_eq!(
            NameAddr::parse(b"\"Mr. J. User <sip:j.user@example.com>"),
            Err(HeaderError::UnterminatedQuote)
        );
        assert_eq!(
            NameAddr::parse(b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43"),
            Err(HeaderError::DisplayName)
        );
        assert_eq!(
            NameAddr::parse(b"<sip:user@example.com ;x>"),
            Err(HeaderError::SpaceInUri)
        );
        assert_eq!(
            NameAddr::parse(b"sip:user@example.com?Route=%3Csip:x%3E"),
            Err(HeaderError::NeedsAngleBrackets)
        );
        let contacts = NameAddr::parse_all(b"<sip:a@h>;expires=30, \"B, b\" <sip:b@h>").unwrap();
        assert_eq!(contacts.len(), 2);
        assert_eq!(contacts[1].display.as_deref(), Some("B, b"));
        assert_eq!(contacts[0].param("expires"), Some(Some("30")));
    }

    #[test]
    fn scalars() {
        assert_eq!(
            CSeq::parse(b"4711 INVITE").unwrap(),
            CSeq {
                seq: 4711,
                method: Method::Invite
            }
        );
        assert_eq!(
            CSeq::parse(b"36893488147419103232 INVITE"),
            Err(HeaderError::Number)
        );
        assert_eq!(CSeq::parse(b"-1 INVITE"), Err(HeaderError::Number));
        assert_eq!(max_forwards(b" 70 ").unwrap(), 70);
        assert_eq!(max_forwards(b"256"), Err(HeaderError::Number));
        assert_eq!(tokens(b"timer, 100rel").unwrap(), ["timer", "100rel"]);
        let se = SessionExpires::parse(b"1800;refresher=uas").unwrap();
        assert_eq!((se.delta, se.refresher), (1800, Some(Refresher::Uas)));
        let r = Reason::parse_all(b"Q.850;cause=16;text=\"Normal call clearing\"").unwrap();
        assert_eq!(r[0].cause, Some(16));
        assert_eq!(r[0].text.as_deref(), Some("Normal call clearing"));
        let ct = ContentType::parse(b"Application/SDP").unwrap();
        assert_eq!(ct.media_type, "application/sdp");
    }

    #[test]
    fn digest_parameters() {
        let a = AuthParams::parse(
            b"Digest realm=\"atlanta.com\", nonce=\"84a4cc6f3082121f32b42a2187831a9e\",\r\n algorithm=MD5, qop=\"auth,auth-int\"",
        )
        .unwrap();
        assert_eq!(a.scheme, "Digest");
        assert_eq!(a.get("realm"), Some("atlanta.com"));
        assert_eq!(a.get("algorithm"), Some("MD5"));
        assert_eq!(a.get("qop"), Some("auth,auth-int"));
        assert_eq!(AuthParams::parse(b"Digest"), Err(HeaderError::Auth));
    }
}
