//! `[meta]` and `[[business_number]]`: how the switch talks to Meta's Cloud API, and which
//! WhatsApp business numbers it serves.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::{file, SipRoute, Validator};

/// A secret read from configuration: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that must use it (a signature key, a header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Meta's Cloud API: where the Graph API is, and the app's secrets.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// Graph API base URL, without the version (`https://graph.facebook.com`; the sim's URL
    /// in rehearsals and tests).
    pub graph_url: String,
    /// Graph API version (`v23.0`).
    pub api_version: String,
    /// System-user access token for the Graph API.
    pub access_token: Secret,
    /// App secret: the key of the webhooks' `X-Hub-Signature-256`.
    pub app_secret: Secret,
    /// Answer to Meta's webhook verification challenge.
    pub verify_token: Secret,
    /// Time limit of one Graph API request.
    pub request_timeout: Duration,
    /// Attempts of an idempotent Graph API request (1: no retry).
    pub max_attempts: u32,
    /// Meta's SIP interface (`[meta.sip]`), for numbers whose calls Meta carries over SIP.
    pub sip: Option<MetaSip>,
}

/// `[meta.sip]`: the switch as the SIP server Meta calls, and how it calls Meta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaSip {
    /// The hostname configured with Meta as the number's SIP server: Meta's Request-URIs
    /// name it, Meta checks the TLS certificate against it, and the From of the switch's
    /// calls names it.
    pub hostname: String,
    /// Where the switch sends business-initiated calls (`wa.meta.vc:5061`).
    pub proxy: String,
    /// Addresses Meta's requests may come from.
    pub allow_from: Vec<crate::sip::source::IpNet>,
}

/// How Meta carries a number's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signaling {
    /// Graph API requests and webhooks; the media is WebRTC.
    #[default]
    Graph,
    /// SIP over TLS between Meta (`wa.meta.vc`) and the switch.
    Sip,
}

/// How the SRTP keys of a SIP-mode number's media are exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpKeying {
    /// In the SDP (`RTP/SAVP` with `a=crypto`, RFC 4568): no ICE, no DTLS.
    #[default]
    Sdes,
    /// WebRTC's ICE and DTLS-SRTP, as in Graph mode.
    Dtls,
}

/// A WhatsApp business phone number the switch carries calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessNumber {
    /// Meta's id of the number (the `<PHONE_NUMBER_ID>` of Graph API paths).
    pub phone_number_id: String,
    /// The number, digits only (`15551112222`), as Meta's webhooks show it.
    pub display_number: String,
    /// ISO 3166-1 alpha-2 country of the number (`US`), for country rules.
    pub country: String,
    /// Name of the route its calls take (`None` for an echo-test number or one answered
    /// by an IVR).
    pub route: Option<String>,
    /// Name of the `[[ivr]]` that answers its calls (`None`: routed, an app's, or an echo
    /// test).
    pub entry: Option<String>,
    /// Name of the `[[app]]` that drives its calls.
    pub app: Option<String>,
    /// Calls to it are answered by the switch with an echo of the caller's audio: a line
    /// to check WhatsApp calling and audio end to end without a PBX.
    pub echo_test: bool,
    /// How Meta carries its calls.
    pub signaling: Signaling,
    /// In SIP mode, how the media's keys are exchanged.
    pub srtp: SrtpKeying,
    /// In SIP mode, Meta's password for the number (digest of the switch's calls).
    pub sip_password: Secret,
}

/// `waswitch sim`, the Meta emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// Where it serves the Graph API.
    pub listen: SocketAddr,
    /// Where it plays Meta's SIP proxy over TLS (numbers in SIP mode).
    pub sip_listen: SocketAddr,
}

/// Whether the authority of a URL (`host[:port][/path]`) names a loopback host.
fn loopback_host(authority: &str) -> bool {
    let host = authority.split('/').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Validator {
    pub(super) fn meta(&mut self, raw: Option<&file::MetaSection>) -> Option<MetaConfig> {
        let raw = raw?;
        let url = raw.graph_url.trim().trim_end_matches('/');
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        let host = url.split_once("://").map_or("", |(_, rest)| rest);
        if !scheme_ok || host.is_empty() || host.contains(char::is_whitespace) {
            self.problem(
                "meta.graph_url",
                format!("{:?} is not an http(s) URL", raw.graph_url),
                "use \"https://graph.facebook.com\", or the sim's \"http://127.0.0.1:8090\"",
            );
        } else if url.starts_with("http://") && !loopback_host(host) {
            self.problem(
                "meta.graph_url",
                format!("{url:?} would send the access token unencrypted"),
                "use https, or plain http only toward a sim on loopback (127.0.0.1, [::1], localhost)",
            );
        }
        let version = raw.api_version.trim();
        let version_ok = version
            .strip_prefix('v')
            .and_then(|v| v.split_once('.'))
            .is_some_and(|(major, minor)| {
                !major.is_empty()
                    && !minor.is_empty()
                    && major.bytes().all(|b| b.is_ascii_digit())
                    && minor.bytes().all(|b| b.is_ascii_digit())
            });
        if !version_ok {
            self.problem(
                "meta.api_version",
                format!("{:?} is not a Graph API version", raw.api_version),
                "write it as Meta does, e.g. \"v23.0\"",
            );
        }
        for (key, value, what) in [
            (
                "meta.access_token",
                &raw.access_token,
                "the system user's access token",
            ),
            (
                "meta.app_secret",
                &raw.app_secret,
                "the app secret from the app dashboard",
            ),
            (
                "meta.verify_token",
                &raw.verify_token,
                "the verify token you give Meta for the webhook",
            ),
        ] {
            if value.trim().is_empty() {
                let var = format!("WASWITCH_{}", key.replace('.', "_").to_ascii_uppercase());
                self.problem(
                    key,
                    "is empty",
                    format!("set {what}, preferably through {var} so it stays out of files"),
                );
            }
        }
        let timeout = self.bounded(
            "meta.request_timeout_ms",
            raw.request_timeout_ms,
            100,
            60_000,
        );
        let attempts = self.bounded("meta.max_attempts", raw.max_attempts, 1, 10);
        let sip = raw.sip.as_ref().map(|s| self.meta_sip(s));
        Some(MetaConfig {
            graph_url: url.to_string(),
            api_version: version.to_string(),
            access_token: Secret::new(raw.access_token.trim()),
            app_secret: Secret::new(raw.app_secret.trim()),
            verify_token: Secret::new(raw.verify_token.trim()),
            request_timeout: Duration::from_millis(timeout? as u64),
            max_attempts: attempts? as u32,
            sip,
        })
    }

    fn meta_sip(&mut self, raw: &file::MetaSipSection) -> MetaSip {
        let hostname = raw.hostname.trim().to_ascii_lowercase();
        let host_ok = !hostname.is_empty()
            && hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !host_ok {
            self.problem(
                "meta.sip.hostname",
                format!("{:?} is not a hostname", raw.hostname),
                "give the hostname configured as the number's SIP server with Meta, e.g. \"sip.example.com\" (the TLS certificate must cover it)",
            );
        }
        let proxy = raw.proxy.trim();
        let port_ok = proxy
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            self.problem(
                "meta.sip.proxy",
                format!("{:?} is not host:port", raw.proxy),
                "use \"wa.meta.vc:5061\" (Meta), or the sim's TLS address, e.g. \"127.0.0.1:5081\"",
            );
        }
        let mut allow_from = Vec::new();
        for (j, net) in raw.allow_from.iter().enumerate() {
            match crate::sip::source::IpNet::parse(net) {
                Some(n) => allow_from.push(n),
                None => self.problem(
                    &format!("meta.sip.allow_from[{j}]"),
                    format!("{net:?} is not an address or network"),
                    "write an address or a CIDR network, e.g. \"157.240.0.0/16\"",
                ),
            }
        }
        if raw.allow_from.is_empty() {
            self.problem(
                "meta.sip.allow_from",
                "is empty: no request from Meta would be taken",
                "leave it out for Meta's published ranges, or list the addresses Meta calls from",
            );
        }
        MetaSip {
            hostname,
            proxy: proxy.to_string(),
            allow_from,
        }
    }

    pub(super) fn business_numbers(
        &mut self,
        raw: &[file::BusinessNumberSection],
        meta: bool,
        routes: &[SipRoute],
        ivrs: &[&str],
        apps: &[&str],
        app_routes: &std::collections::BTreeMap<String, String>,
    ) -> Vec<BusinessNumber> {
        if !raw.is_empty() && !meta {
            self.problem(
                "business_number",
                "business numbers are configured without a [meta] section",
                "add [meta] with graph_url, api_version and the app's secrets",
            );
        }
        let mut ids = HashSet::new();
        let mut numbers = HashSet::new();
        let mut out = Vec::new();
        for (i, b) in raw.iter().enumerate() {
            let key = |field: &str| format!("business_number[{i}].{field}");
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
            let id = b.phone_number_id.trim();
            if !digits(id) {
                self.problem(
                    &key("phone_number_id"),
                    format!("{:?} is not a phone number id", b.phone_number_id),
                    "copy the number's id (digits) from WhatsApp Manager or the Graph API",
                );
            } else if !ids.insert(id.to_string()) {
                self.problem(
                    &key("phone_number_id"),
                    format!("{id} is configured twice"),
                    "list each business number once",
                );
            }
            let number = b.display_number.trim();
            if !digits(number) || !(7..=15).contains(&number.len()) {
                let fix = if number.starts_with('+') {
                    format!("drop the '+': \"{}\"", number.trim_start_matches('+'))
                } else {
                    "give the E.164 number as digits without '+', e.g. \"15551112222\"".to_string()
                };
                self.problem(
                    &key("display_number"),
                    format!("{:?} is not a number in Meta's form", b.display_number),
                    fix,
                );
            } else if !numbers.insert(number.to_string()) {
                self.problem(
                    &key("display_number"),
                    format!("{number} is configured twice"),
                    "list each business number once",
                );
            }
            let country = b.country.trim().to_ascii_uppercase();
            if country.len() != 2 || !country.bytes().all(|c| c.is_ascii_alphabetic()) {
                self.problem(
                    &key("country"),
                    format!("{:?} is not a country code", b.country),
                    "use the ISO 3166-1 alpha-2 code, e.g. \"US\", \"BR\", \"IN\"",
                );
            }
            let entry = b.entry.as_deref().map(str::trim);
            // A route an app drives makes the number the app's.
            let app_route = b
                .route
                .as_deref()
                .and_then(|r| app_routes.get(r.trim()))
                .filter(|_| b.app.is_none() && entry.is_none() && !b.echo_test);
            let app = b
                .app
                .as_deref()
                .map(str::trim)
                .or(app_route.map(String::as_str));
            let route = if app_route.is_some() {
                None
            } else {
                b.route.clone()
            };
            if let Some(app) = app {
                let other = match (&route, entry, b.echo_test) {
                    (Some(_), _, _) => Some("route"),
                    (_, Some(_), _) => Some("entry"),
                    (_, _, true) => Some("echo_test"),
                    _ => None,
                };
                if let Some(other) = other {
                    self.problem(
                        &key("app"),
                        format!("is given together with {other}"),
                        "a number's calls take a route, or are answered by an IVR, an app or the echo test: keep one",
                    );
                } else if app_route.is_none() && !apps.contains(&app) {
                    self.problem(
                        &key("app"),
                        format!("there is no app {app:?}"),
                        if apps.is_empty() {
                            "add an [[app]] with that name to drive this number's calls".to_string()
                        } else {
                            format!("use one of: {}", apps.join(", "))
                        },
                    );
                }
            }
            if app.is_none() {
                match (&route, entry, b.echo_test) {
                    (Some(_), _, true) => self.problem(
                        &key("route"),
                        "an echo-test number takes no route",
                        "remove route, or set echo_test = false to deliver its calls",
                    ),
                    (None, Some(_), true) => self.problem(
                        &key("entry"),
                        "an echo-test number takes no entry",
                        "remove entry, or set echo_test = false to answer its calls with the IVR",
                    ),
                    (Some(_), Some(_), false) => self.problem(
                        &key("entry"),
                        "is given together with route",
                        "a number's calls either take a route or are answered by an IVR: keep one of route and entry",
                    ),
                    (None, None, false) => self.problem(
                        &key("route"),
                        "missing",
                        "name the [[route]] this number's calls take, or the [[ivr]] that answers them \
                         (entry = \"<ivr name>\"), or set echo_test = true",
                    ),
                    (Some(route), None, false) if !routes.iter().any(|r| &r.name == route) => {
                        let known: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
                        self.problem(
                            &key("route"),
                            format!("there is no route {route:?}"),
                            if known.is_empty() {
                                "add a [[route]] naming the trunks this number's calls go to"
                                    .to_string()
                            } else {
                                format!("use one of: {}", known.join(", "))
                            },
                        );
                    }
                    (None, Some(entry), false) if !ivrs.contains(&entry) => self.problem(
                        &key("entry"),
                        format!("there is no ivr {entry:?}"),
                        if ivrs.is_empty() {
                            "add an [[ivr]] with that name to answer this number's calls".to_string()
                        } else {
                            format!("use one of: {}", ivrs.join(", "))
                        },
                    ),
                    _ => {}
                }
            }
            let signaling = match b.signaling.as_deref().map(str::trim) {
                None | Some("graph") => Signaling::Graph,
                Some("sip") => Signaling::Sip,
                Some(other) => {
                    self.problem(
                        &key("signaling"),
                        format!("{other:?} is not a signaling mode"),
                        "use \"graph\" (Graph API and webhooks) or \"sip\" (Meta's SIP interface over TLS)",
                    );
                    Signaling::Graph
                }
            };
            let srtp = match b.srtp.as_deref().map(str::trim) {
                None | Some("sdes") => SrtpKeying::Sdes,
                Some("dtls") => SrtpKeying::Dtls,
                Some(other) => {
                    self.problem(
                        &key("srtp"),
                        format!("{other:?} is not a key exchange"),
                        "use \"sdes\" (keys in the SDP) or \"dtls\" (ICE and DTLS-SRTP)",
                    );
                    SrtpKeying::Sdes
                }
            };
            if signaling == Signaling::Graph && (b.srtp.is_some() || !b.sip_password.is_empty()) {
                self.problem(
                    &key(if b.srtp.is_some() { "srtp" } else { "sip_password" }),
                    "is set but the number's signaling is \"graph\"",
                    "set signaling = \"sip\" to carry its calls over Meta's SIP interface, or remove it",
                );
            }
            let sip_password = match (&b.sip_password_file, b.sip_password.is_empty()) {
                (None, _) => b.sip_password.trim().to_string(),
                (Some(_), false) => {
                    self.problem(
                        &key("sip_password_file"),
                        "is given together with sip_password",
                        "keep the file (fetched with `waswitch meta settings get --save-sip-password`) and remove sip_password",
                    );
                    String::new()
                }
                // Not fetched yet: the number's calls to customers are refused by Meta
                // until it is (the node says so at start).
                (Some(path), true) => match std::fs::read_to_string(path) {
                    Ok(text) => text.trim().to_string(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    Err(e) => {
                        self.problem(
                            &key("sip_password_file"),
                            format!("{path}: {e}"),
                            "make the file readable by the switch's user",
                        );
                        String::new()
                    }
                },
            };
            if signaling == Signaling::Sip && srtp == SrtpKeying::Sdes && b.echo_test {
                self.problem(
                    &key("echo_test"),
                    "an echo test over SIP needs WebRTC media: the switch echoes only a WebRTC leg",
                    "set srtp = \"dtls\" for this number, or keep its echo test in Graph mode",
                );
            }
            if signaling == Signaling::Graph && b.sip_password_file.is_some() {
                self.problem(
                    &key("sip_password_file"),
                    "is set but the number's signaling is \"graph\"",
                    "set signaling = \"sip\" to carry its calls over Meta's SIP interface, or remove it",
                );
            }
            out.push(BusinessNumber {
                signaling,
                srtp,
                sip_password: Secret::new(sip_password),
                phone_number_id: id.to_string(),
                display_number: number.to_string(),
                country,
                route,
                entry: entry.map(str::to_string),
                app: app.map(str::to_string),
                echo_test: b.echo_test,
            });
        }
        out
    }
}
