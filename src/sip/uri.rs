//! SIP and SIPS URIs (RFC 3261 §19.1): `sip:user@host:port;params`.
//!
//! Parsing is strict about the parts a switch routes on (scheme, host, port) and keeps the
//! rest as text. `tel:` URIs are recognised only to be refused: WhatsApp calls never reach
//! the PSTN.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// URI scheme of a SIP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `sip:`
    Sip,
    /// `sips:` (TLS required end to end)
    Sips,
}

/// Host part of a SIP URI.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Host {
    /// A DNS name, kept as written (lower-cased).
    Domain(String),
    /// An IPv4 literal.
    V4(Ipv4Addr),
    /// An IPv6 literal, written in brackets in the URI.
    V6(Ipv6Addr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// A parsed `sip:`/`sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// `sip` or `sips`.
    pub scheme: Scheme,
    /// The user part, without the `@`.
    pub user: Option<String>,
    /// Host name or address literal.
    pub host: Host,
    /// Explicit port, if written.
    pub port: Option<u16>,
    /// URI parameters (`;transport=tcp`), names lower-cased, in order.
    pub params: Vec<(String, Option<String>)>,
}

/// Why a URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// The URI names the PSTN (`tel:`); waswitch never routes WhatsApp calls there.
    #[error("is a tel: URI; WhatsApp calls are never routed to the PSTN")]
    Tel,
    /// Anything but `sip:` or `sips:` (a typo such as `sp:` or a bare host).
    #[error("has no sip: or sips: scheme")]
    Scheme,
    /// Nothing after the scheme and user part.
    #[error("has no host")]
    NoHost,
    /// The host is neither a DNS name nor an IP literal.
    #[error("has an invalid host {0:?}")]
    Host(String),
    /// The port is not a number in 1..=65535.
    #[error("has an invalid port {0:?}")]
    Port(String),
}

impl SipUri {
    /// Parses a URI such as `sip:pbx.example.com:5061;transport=tls`.
    pub fn parse(input: &str) -> Result<Self, UriError> {
        let input = input.trim();
        let lower_scheme: String = input
            .chars()
            .take(5)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let (scheme, rest) = if lower_scheme == "sips:" {
            (Scheme::Sips, &input[5..])
        } else if lower_scheme.starts_with("sip:") {
            (Scheme::Sip, &input[4..])
        } else if lower_scheme.starts_with("tel:") {
            return Err(UriError::Tel);
        } else {
            return Err(UriError::Scheme);
        };
        // Headers (`?`) are not part of routing; cut them off.
        let rest = rest.split('?').next().unwrap_or_default();
        let (user, hostport_params) = match rest.rfind('@') {
            Some(at) => (Some(rest[..at].to_string()), &rest[at + 1..]),
            None => (None, rest),
        };
        let mut parts = hostport_params.split(';');
        let hostport = parts.next().unwrap_or_default();
        let params = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
                None => (p.to_ascii_lowercase(), None),
            })
            .collect();
        if hostport.is_empty() {
            return Err(UriError::NoHost);
        }
        let (host, port) = split_host_port(hostport)?;
        Ok(SipUri {
            scheme,
            user,
            host,
            port,
            params,
        })
    }

    /// The value of a URI parameter such as `transport`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_deref())
    }
}

fn split_host_port(hostport: &str) -> Result<(Host, Option<u16>), UriError> {
    let (host_text, port_text) = if let Some(rest) = hostport.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| UriError::Host(hostport.to_string()))?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UriError::Host(hostport.to_string())),
        };
        let v6: Ipv6Addr = rest[..end]
            .parse()
            .map_err(|_| UriError::Host(hostport.to_string()))?;
        return Ok((Host::V6(v6), port.map(parse_port).transpose()?));
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host_text.is_empty() {
        return Err(UriError::NoHost);
    }
    let host = if let Ok(v4) = host_text.parse::<Ipv4Addr>() {
        Host::V4(v4)
    } else if is_domain(host_text) {
        Host::Domain(host_text.to_ascii_lowercase())
    } else {
        return Err(UriError::Host(host_text.to_string()));
    };
    Ok((host, port_text.map(parse_port).transpose()?))
}

fn parse_port(p: &str) -> Result<u16, UriError> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(UriError::Port(p.to_string())),
    }
}

/// RFC 3261 hostname: labels of alphanumerics and `-`, separated by dots, not starting or
/// ending with `-`; a trailing dot is allowed.
fn is_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        // The last label of a domain name never starts with a digit (RFC 3261 toplabel);
        // "10.0.0" is a broken IPv4 literal, not a name.
        && s.rsplit('.')
            .next()
            .is_some_and(|top| top.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()))
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.scheme {
            Scheme::Sip => "sip:",
            Scheme::Sips => "sips:",
        })?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        for (k, v) in &self.params {
            match v {
                Some(v) => write!(f, ";{k}={v}")?,
                None => write!(f, ";{k}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_and_params() {
        let uri = SipUri::parse("sip:agent@127.0.0.1:5070;transport=TCP").unwrap();
        assert_eq!(uri.scheme, Scheme::Sip);
        assert_eq!(uri.user.as_deref(), Some("agent"));
        assert_eq!(uri.host, Host::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(uri.port, Some(5070));
        assert_eq!(uri.param("transport"), Some("TCP"));
        assert_eq!(uri.to_string(), "sip:agent@127.0.0.1:5070;transport=TCP");
    }

    #[test]
    fn parses_ipv6_and_domains() {
        let uri = SipUri::parse("sips:[::1]:5061").unwrap();
        assert_eq!(uri.host, Host::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(uri.port, Some(5061));
        let uri = SipUri::parse("sip:PBX.Example.com").unwrap();
        assert_eq!(uri.host, Host::Domain("pbx.example.com".into()));
        assert_eq!(uri.port, None);
    }

    #[test]
    fn refuses_what_cannot_be_routed() {
        assert_eq!(SipUri::parse("tel:+14155550100"), Err(UriError::Tel));
        assert_eq!(SipUri::parse("pbx:5060"), Err(UriError::Scheme));
        assert_eq!(SipUri::parse("sip:"), Err(UriError::NoHost));
        assert_eq!(SipUri::parse("sip:user@"), Err(UriError::NoHost));
        assert_eq!(
            SipUri::parse("sip:pbx:99999"),
            Err(UriError::Port("99999".into()))
        );
        assert_eq!(SipUri::parse("sip:pbx:0"), Err(UriError::Port("0".into())));
        assert_eq!(
            SipUri::parse("sip:10.0.0"),
            Err(UriError::Host("10.0.0".into()))
        );
        assert_eq!(
            SipUri::parse("sip:pb_x"),
            Err(UriError::Host("pb_x".into()))
        );
        assert_eq!(
            SipUri::parse("sip:[::1"),
            Err(UriError::Host("[::1".into()))
        );
    }
}
