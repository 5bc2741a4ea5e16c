//! `[sip]`, `[sip.tls]`, `[[trunk]]` and `[[route]]`: the SIP listener and its transports,
//! the trunks calls go to and come from, and the SIP→SIP routes between them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{file, IpNet, Validator};
use crate::sip::uri::{SipUri, UriError};

/// SIP listener settings.
#[derive(Debug, Clone)]
pub struct SipConfig {
    /// Address the SIP transports bind (the same port for UDP and TCP).
    pub listen: SocketAddr,
    /// Transports to listen on.
    pub transports: Vec<Transport>,
    /// Transaction timer bases T1, T2, T4 (RFC 3261 §17).
    pub timers: crate::sip::txn::TimerConfig,
    /// How long a called trunk may ring before the call is given up (480).
    pub ring_timeout: Duration,
    /// Session interval requested toward trunks (RFC 4028), seconds; 0: no session timer.
    pub session_expires: u32,
    /// What a new INVITE from an address no trunk's `accept_from` holds gets.
    pub unknown_sources: crate::sip::source::UnknownSource,
    /// SIP over TLS, when `tls` is among the transports.
    pub tls: Option<SipTls>,
}

/// SIP over TLS settings (`[sip.tls]`).
#[derive(Debug, Clone)]
pub struct SipTls {
    /// Address the TLS listener binds (default: the SIP address, port 5061).
    pub listen: SocketAddr,
    /// PEM certificate chain presented to peers.
    pub cert: PathBuf,
    /// PEM private key of the certificate.
    pub key: PathBuf,
    /// PEM CA certificates trusted for TLS trunks (`None`: no outbound TLS).
    pub ca: Option<PathBuf>,
}

/// A route: SIP INVITEs whose Request-URI user starts with `prefix` (the longest matching
/// prefix wins), and the WhatsApp calls of the business numbers that name it, go to its
/// sites' trunks.
#[derive(Debug, Clone)]
pub struct SipRoute {
    /// Name for logs.
    pub name: String,
    /// Request-URI user prefix; empty matches every call.
    pub prefix: String,
    /// Only calls arriving from this trunk take the route (`None`: any trunk).
    pub from_trunk: Option<String>,
    /// Where the calls go. A route written with a plain `trunks` list has one site, named
    /// after the route, for every caller.
    pub sites: Vec<RouteSite>,
}

/// One site of a route (a contact center, an office): its trunks, tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSite {
    /// Name for logs and CDRs.
    pub name: String,
    /// Trunks to try, in order (indexes into [`Config::trunks`](super::Config::trunks)).
    pub trunks: Vec<usize>,
    /// Sites of a lower priority are tried first; the next priority takes the overflow.
    pub priority: u32,
    /// Among sites of one priority, a site's share of the calls.
    pub weight: u32,
    /// Customers of these countries only (ISO 3166-1 alpha-2); empty: every caller.
    pub countries: Vec<String>,
}

/// SIP transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// SIP over UDP.
    Udp,
    /// SIP over TCP.
    Tcp,
    /// SIP over TLS.
    Tls,
}

impl Transport {
    pub(super) fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Some(Self::Udp),
            "tcp" => Some(Self::Tcp),
            "tls" => Some(Self::Tls),
            _ => None,
        }
    }

    /// Lower-case name as written in config and in `;transport=` parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// A SIP trunk: a PBX, contact center or SBC the switch sends calls to.
#[derive(Debug, Clone)]
pub struct SipTrunk {
    /// Unique name used in routes, CDRs and metrics.
    pub name: String,
    /// Where to send requests.
    pub uri: SipUri,
    /// Transport toward the trunk.
    pub transport: Transport,
    /// Most concurrent calls on this trunk (`None`: no limit).
    pub max_calls: Option<u32>,
    /// The trunk reaches the PSTN. WhatsApp calls are never routed to such a trunk.
    pub pstn: bool,
    /// How often the trunk is probed with OPTIONS (`None`: never; it is then assumed up).
    pub options_interval: Option<Duration>,
    /// No response at all to an INVITE within this long: the next trunk is tried.
    pub invite_timeout: Duration,
    /// Calls from these networks arrive from this trunk (the inbound allow-list).
    pub accept_from: Vec<IpNet>,
    /// Credentials for answering the trunk's digest challenges.
    pub credentials: Option<(String, String)>,
    /// Credentials the trunk must present (digest) on calls it sends us.
    pub inbound_credentials: Option<(String, String)>,
    /// Codecs the trunk may use, in preference order.
    pub codecs: Vec<String>,
    /// WhatsApp calls to it carry the customer in P-Asserted-Identity and the call in
    /// `X-WA-Call-Id`, `X-WA-Business-Number`, `X-WA-Channel: whatsapp-voice`.
    pub whatsapp_identity: bool,
    /// The trunk is a PBX placing business-initiated WhatsApp calls: its INVITEs whose From
    /// is a business number call the customer the Request-URI names. Off by default, so a
    /// PBX's ordinary outbound calls with the company's number as caller id stay SIP.
    pub business_calls: bool,
}

impl Validator {
    pub(super) fn trunks(
        &mut self,
        raw: &[file::TrunkSection],
        sip_listen: Option<SocketAddr>,
    ) -> Vec<SipTrunk> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, t) in raw.iter().enumerate() {
            let key = |field: &str| format!("trunk[{i}].{field}");
            let name = t.name.trim().to_string();
            if name.is_empty() {
                self.problem(&key("name"), "is empty", "give every trunk a unique name");
            } else if !names.insert(name.clone()) {
                self.problem(
                    &key("name"),
                    format!("{name:?} is already used by another trunk"),
                    "give every trunk a unique name",
                );
            }
            let uri = match SipUri::parse(&t.uri) {
                Ok(uri) => Some(uri),
                Err(e) => {
                    let fix = match e {
                        UriError::Tel => "point the trunk at a SIP endpoint: sip:host[:port]",
                        _ => "expected sip:host[:port] or sips:host[:port], e.g. \"sip:127.0.0.1:5070\"",
                    };
                    self.problem(&key("uri"), format!("{:?} {e}", t.uri), fix);
                    None
                }
            };
            if let (Some(uri), Some(listen)) = (&uri, sip_listen) {
                let family_differs = match &uri.host {
                    crate::sip::uri::Host::V4(_) => {
                        listen.is_ipv6() && !listen.ip().is_unspecified()
                    }
                    crate::sip::uri::Host::V6(_) => listen.is_ipv4(),
                    _ => false,
                };
                if family_differs {
                    self.problem(
                        &key("uri"),
                        format!(
                            "{} cannot be reached from sip.listen {listen} (other IP version)",
                            t.uri
                        ),
                        "listen on an address of the trunk's IP version ([::] reaches both)",
                    );
                }
            }
            let transport = Transport::parse(&t.transport);
            if transport.is_none() {
                self.problem(
                    &key("transport"),
                    format!("{:?} is not a SIP transport", t.transport),
                    "use \"udp\", \"tcp\" or \"tls\"",
                );
            }
            if let (Some(uri), Some(tr)) = (&uri, transport) {
                if uri.scheme == crate::sip::uri::Scheme::Sips && tr != Transport::Tls {
                    self.problem(
                        &key("transport"),
                        format!("is {:?} but the URI is sips:", tr.as_str()),
                        "use transport = \"tls\" with a sips: URI",
                    );
                }
            }
            let max_calls = match t.max_calls {
                None => None,
                Some(n) if (1..=1_000_000).contains(&n) => Some(n as u32),
                Some(n) => {
                    self.problem(
                        &key("max_calls"),
                        format!("{n} is out of range"),
                        "use 1 to 1000000, or leave it out for no limit",
                    );
                    None
                }
            };
            let options_interval = match t.options_interval_secs {
                0 => Some(None),
                n if (1..=3600).contains(&n) => Some(Some(Duration::from_secs(n as u64))),
                n => {
                    self.problem(
                        &key("options_interval_secs"),
                        format!("{n} is out of range"),
                        "use 1 to 3600 seconds, or 0 to never probe the trunk",
                    );
                    None
                }
            };
            let invite_timeout = self
                .bounded(&key("invite_timeout_ms"), t.invite_timeout_ms, 100, 64_000)
                .map(|ms| Duration::from_millis(ms as u64));
            let mut accept_from = Vec::new();
            for (j, net) in t.accept_from.iter().enumerate() {
                match IpNet::parse(net) {
                    Some(n) => accept_from.push(n),
                    None => self.problem(
                        &format!("trunk[{i}].accept_from[{j}]"),
                        format!("{net:?} is not an IP address or network"),
                        "write an address or CIDR network, e.g. \"127.0.0.1\" or \"10.0.0.0/8\"",
                    ),
                }
            }
            let credentials =
                self.credentials(&key("username"), &key("password"), &t.username, &t.password);
            let inbound_credentials = self.credentials(
                &key("inbound_username"),
                &key("inbound_password"),
                &t.inbound_username,
                &t.inbound_password,
            );
            if inbound_credentials.as_ref().is_some_and(Option::is_some) && t.accept_from.is_empty()
            {
                self.problem(
                    &key("inbound_username"),
                    "is set but the trunk accepts calls from nowhere",
                    "list the trunk's addresses in accept_from; digest is checked on top of them",
                );
            }
            const CODECS: [&str; 4] = ["opus", "pcmu", "pcma", "telephone-event"];
            for (j, c) in t.codecs.iter().enumerate() {
                if !CODECS.contains(&c.to_ascii_lowercase().as_str()) {
                    self.problem(
                        &format!("trunk[{i}].codecs[{j}]"),
                        format!("{c:?} is not a codec the switch speaks"),
                        "use \"opus\", \"PCMU\" or \"PCMA\"",
                    );
                }
            }
            if t.codecs.is_empty() {
                self.problem(
                    &key("codecs"),
                    "is empty",
                    "list at least one of \"opus\", \"PCMU\", \"PCMA\"",
                );
            }
            if t.business_calls && t.pstn {
                self.problem(
                    &key("business_calls"),
                    "is set on a PSTN trunk",
                    "business-initiated WhatsApp calls come from the business's PBX: set it on that trunk, not on pstn = true",
                );
            }
            if t.business_calls && t.accept_from.is_empty() {
                self.problem(
                    &key("business_calls"),
                    "is set but the trunk accepts calls from nowhere",
                    "list the PBX's addresses in accept_from",
                );
            }
            if let (
                Some(uri),
                Some(transport),
                Some(options_interval),
                Some(invite_timeout),
                Some(credentials),
                Some(inbound_credentials),
            ) = (
                uri,
                transport,
                options_interval,
                invite_timeout,
                credentials,
                inbound_credentials,
            ) {
                out.push(SipTrunk {
                    name,
                    uri,
                    transport,
                    max_calls,
                    pstn: t.pstn,
                    options_interval,
                    invite_timeout,
                    accept_from,
                    credentials,
                    inbound_credentials,
                    codecs: t.codecs.clone(),
                    whatsapp_identity: t.whatsapp_identity,
                    business_calls: t.business_calls,
                });
            }
        }
        out
    }

    /// `[sip.tls]`: required when listening on TLS; the certificate and key must load.
    pub(super) fn tls(
        &mut self,
        raw: Option<&file::TlsSection>,
        listening: bool,
        sip_listen: Option<SocketAddr>,
    ) -> Option<Option<SipTls>> {
        let Some(raw) = raw else {
            if listening {
                self.problem(
                    "sip.tls",
                    "is missing but sip.transports lists \"tls\"",
                    "add a [sip.tls] section with cert and key (PEM files)",
                );
                return None;
            }
            return Some(None);
        };
        if !listening {
            self.problem(
                "sip.tls",
                "is set but sip.transports does not list \"tls\"",
                "add \"tls\" to sip.transports, or remove [sip.tls]",
            );
            return None;
        }
        let listen = match &raw.listen {
            Some(l) => self.socket_addr("sip.tls.listen", l, "127.0.0.1:5061"),
            None => sip_listen.map(|a| SocketAddr::new(a.ip(), 5061)),
        };
        let mut pem =
            |key: &str, value: &Option<String>, what: &str, certs: bool| -> Option<PathBuf> {
                let Some(path) = value else {
                    self.problem(
                        key,
                        "is missing",
                        format!("give the path of a PEM file with the {what}"),
                    );
                    return None;
                };
                let path = PathBuf::from(path);
                let loaded = if certs {
                    crate::sip::transport::tls::load_certs(&path).map(|_| ())
                } else {
                    crate::sip::transport::tls::load_key(&path).map(|_| ())
                };
                match loaded {
                    Ok(()) => Some(path),
                    Err(e) => {
                        self.problem(
                            key,
                            format!("{}: {e}", path.display()),
                            format!("give the path of a PEM file with the {what}"),
                        );
                        None
                    }
                }
            };
        let cert = pem("sip.tls.cert", &raw.cert, "certificate chain", true);
        let key = pem("sip.tls.key", &raw.key, "private key", false);
        let ca = match &raw.ca {
            None => Some(None),
            Some(_) => pem("sip.tls.ca", &raw.ca, "trusted CA certificates", true).map(Some),
        };
        Some(Some(SipTls {
            listen: listen?,
            cert: cert?,
            key: key?,
            ca: ca?,
        }))
    }

    /// A username/password pair: both or neither.
    fn credentials(
        &mut self,
        user_key: &str,
        pass_key: &str,
        user: &Option<String>,
        pass: &Option<String>,
    ) -> Option<Option<(String, String)>> {
        let user_v = user.as_deref().filter(|s| !s.is_empty());
        let pass_v = pass.as_deref().filter(|s| !s.is_empty());
        match (user_v, pass_v) {
            (None, None) if user.is_none() && pass.is_none() => Some(None),
            (Some(u), Some(p)) => Some(Some((u.to_string(), p.to_string()))),
            (Some(_), None) => {
                self.problem(
                    pass_key,
                    "is missing or empty",
                    format!("set {pass_key} together with {user_key}"),
                );
                None
            }
            _ => {
                self.problem(
                    user_key,
                    "is missing or empty",
                    format!("set {user_key} together with {pass_key}"),
                );
                None
            }
        }
    }

    pub(super) fn routes(
        &mut self,
        raw: &[file::RouteSection],
        raw_trunks: &[file::TrunkSection],
        trunks: &[SipTrunk],
        listening: &[Transport],
        outbound_tls: bool,
    ) -> Vec<SipRoute> {
        let mut out = Vec::new();
        let mut names = HashSet::new();
        for (i, r) in raw.iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            if r.name.trim().is_empty() {
                self.problem(&key("name"), "is empty", "give every route a unique name");
            } else if !names.insert(r.name.clone()) {
                self.problem(
                    &key("name"),
                    format!("{:?} is already used by another route", r.name),
                    "give every route a unique name",
                );
            }
            if r.prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '@' || c == ':')
            {
                self.problem(
                    &key("prefix"),
                    format!("{:?} cannot start a Request-URI user", r.prefix),
                    "write the leading digits or characters of the dialled user, e.g. \"+44\"",
                );
            }
            if r.app.is_some() {
                // An app's route: checked with the apps (`Validator::app_routes`).
                continue;
            }
            let known = |name: &str| raw_trunks.iter().any(|t| t.name.trim() == name);
            if let Some(from) = &r.from_trunk {
                if !known(from) {
                    self.problem(
                        &key("from_trunk"),
                        format!("{from:?} is not a configured trunk"),
                        "name a trunk defined in a [[trunk]] section",
                    );
                }
            }
            let mut sites = Vec::new();
            match (r.trunks.is_empty(), r.site.is_empty()) {
                (true, true) => self.problem(
                    &key("trunks"),
                    "is empty",
                    "list at least one trunk to send the calls to, or add [[route.site]] sections",
                ),
                (false, false) => self.problem(
                    &key("trunks"),
                    "is given together with [[route.site]]",
                    "list the trunks in the sites, and leave the route's own trunks out",
                ),
                (false, true) => {
                    let trunks = self.route_trunks(
                        &r.trunks,
                        &format!("route[{i}].trunks"),
                        raw_trunks,
                        trunks,
                        listening,
                        outbound_tls,
                    );
                    sites.push(RouteSite {
                        name: r.name.clone(),
                        trunks,
                        priority: 1,
                        weight: 1,
                        countries: Vec::new(),
                    });
                }
                (true, false) => {
                    let mut site_names = HashSet::new();
                    for (k, site) in r.site.iter().enumerate() {
                        let skey = |field: &str| format!("route[{i}].site[{k}].{field}");
                        if site.name.trim().is_empty() {
                            self.problem(
                                &skey("name"),
                                "is empty",
                                "give every site of a route a unique name",
                            );
                        } else if !site_names.insert(site.name.clone()) {
                            self.problem(
                                &skey("name"),
                                format!(
                                    "{:?} is already used by another site of this route",
                                    site.name
                                ),
                                "give every site of a route a unique name",
                            );
                        }
                        if site.trunks.is_empty() {
                            self.problem(
                                &skey("trunks"),
                                "is empty",
                                "list at least one trunk of the site",
                            );
                        }
                        let priority = self.bounded(&skey("priority"), site.priority, 1, 100);
                        let weight = self.bounded(&skey("weight"), site.weight, 1, 1000);
                        let mut countries = Vec::new();
                        for (c, country) in site.countries.iter().enumerate() {
                            let code = country.trim().to_ascii_uppercase();
                            if crate::number::is_country(&code) {
                                countries.push(code);
                            } else {
                                self.problem(
                                    &format!("route[{i}].site[{k}].countries[{c}]"),
                                    format!("{country:?} is not a country code"),
                                    "write ISO 3166-1 alpha-2 codes, e.g. \"BR\" or \"DE\"",
                                );
                            }
                        }
                        let trunks = self.route_trunks(
                            &site.trunks,
                            &skey("trunks"),
                            raw_trunks,
                            trunks,
                            listening,
                            outbound_tls,
                        );
                        sites.push(RouteSite {
                            name: site.name.clone(),
                            trunks,
                            priority: priority.unwrap_or(1) as u32,
                            weight: weight.unwrap_or(1) as u32,
                            countries,
                        });
                    }
                }
            }
            out.push(SipRoute {
                name: r.name.clone(),
                prefix: r.prefix.clone(),
                from_trunk: r.from_trunk.clone(),
                sites,
            });
        }
        out
    }

    /// The indexes of the trunks `names` (a route's or a site's list at `key`), each
    /// checked as [`Validator::route_trunk`] does.
    fn route_trunks(
        &mut self,
        names: &[String],
        key: &str,
        raw_trunks: &[file::TrunkSection],
        trunks: &[SipTrunk],
        listening: &[Transport],
        outbound_tls: bool,
    ) -> Vec<usize> {
        let mut indexes = Vec::new();
        for (j, name) in names.iter().enumerate() {
            let key = format!("{key}[{j}]");
            indexes.extend(self.route_trunk(
                name,
                &key,
                raw_trunks,
                trunks,
                listening,
                outbound_tls,
            ));
        }
        indexes
    }

    /// The index of the trunk `name` that calls are sent to (named at `key`), checked:
    /// configured, not PSTN, reachable without a name lookup, on a transport the switch
    /// listens on. `None` (with the problem reported) when it cannot be used, and also when
    /// the trunk itself is broken (that is reported under `trunk[..]`).
    pub(super) fn route_trunk(
        &mut self,
        name: &str,
        key: &str,
        raw_trunks: &[file::TrunkSection],
        trunks: &[SipTrunk],
        listening: &[Transport],
        outbound_tls: bool,
    ) -> Option<usize> {
        if !raw_trunks.iter().any(|t| t.name.trim() == name) {
            let known: Vec<&str> = raw_trunks.iter().map(|t| t.name.trim()).collect();
            self.problem(
                key,
                format!("{name:?} is not a configured trunk"),
                if known.is_empty() {
                    "name a trunk defined in a [[trunk]] section".to_string()
                } else {
                    format!(
                        "name a trunk defined in a [[trunk]] section: {}",
                        known.join(", ")
                    )
                },
            );
            return None;
        }
        match trunks.iter().position(|t| t.name == name) {
            Some(t) if trunks[t].pstn => self.problem(
                key,
                format!("{name:?} is a PSTN trunk"),
                "WhatsApp calls stay VoIP: route to trunks without pstn = true",
            ),
            Some(t) if matches!(trunks[t].uri.host, crate::sip::uri::Host::Domain(_)) => {
                self.problem(
                    key,
                    format!("trunk {name:?} is named by a host name ({})", trunks[t].uri),
                    "the switch resolves no names on the call path: write the trunk's IP address in its uri",
                )
            }
            Some(t) if !listening.contains(&trunks[t].transport) => self.problem(
                key,
                format!(
                    "trunk {name:?} uses {} but sip.transports does not listen on it",
                    trunks[t].transport.as_str()
                ),
                format!(
                    "add \"{}\" to sip.transports, or change the trunk's transport",
                    trunks[t].transport.as_str()
                ),
            ),
            Some(t) if trunks[t].transport == Transport::Tls && !outbound_tls => self.problem(
                key,
                format!("trunk {name:?} uses tls but no CA is configured to verify it"),
                "set sip.tls.ca to a PEM file with the CA certificates that sign the trunk's certificate",
            ),
            Some(t) => return Some(t),
            // The trunk itself is broken and reported under trunk[..].
            None => {}
        }
        None
    }
}
