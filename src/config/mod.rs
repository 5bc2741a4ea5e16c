//! Typed configuration, validated once at startup.
//!
//! `config` owns turning `config/waswitch.toml` (plus `WASWITCH_*` environment overrides) into a
//! [`Config`] whose values are already parsed: a socket address is a `SocketAddr`, a store URL
//! is a [`StoreUrl`]. Every mistake is reported with the file, the key, what is wrong and how
//! to fix it, and all mistakes are reported at once. Nothing here opens a socket or a file
//! other than the configuration file itself.

mod file;
mod meta;

pub use meta::{BusinessNumber, MetaConfig, Secret, SimConfig};

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sip::uri::{SipUri, UriError};

/// Default location of the configuration file, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/waswitch.toml";

/// Environment variables that override a configuration key, so several instances (tests, a
/// cluster on one host) can run from one file.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("WASWITCH_NODE_ID", "node.id"),
    ("WASWITCH_HTTP_LISTEN", "http.listen"),
    ("WASWITCH_API_TOKEN", "http.api_token"),
    ("WASWITCH_CDR_WEBHOOK_SECRET", "cdr_webhook.secret"),
    ("WASWITCH_SIP_LISTEN", "sip.listen"),
    ("WASWITCH_MEDIA_IP", "media.ip"),
    ("WASWITCH_MEDIA_PORTS", "media.port_min/media.port_max"),
    ("WASWITCH_STORE_URL", "store.url"),
    ("WASWITCH_SHUTDOWN_GRACE_SECS", "shutdown.grace_secs"),
    ("WASWITCH_LOG_LEVEL", "log.level"),
    ("WASWITCH_LOG_FORMAT", "log.format"),
    ("WASWITCH_SIM_LISTEN", "sim.listen"),
    ("WASWITCH_META_GRAPH_URL", "meta.graph_url"),
    ("WASWITCH_META_API_VERSION", "meta.api_version"),
    ("WASWITCH_META_ACCESS_TOKEN", "meta.access_token"),
    ("WASWITCH_META_APP_SECRET", "meta.app_secret"),
    ("WASWITCH_META_VERIFY_TOKEN", "meta.verify_token"),
];

/// The validated configuration of one switch node.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from (for messages).
    pub source: PathBuf,
    /// Identity of this node in CDRs and logs.
    pub node_id: String,
    /// HTTP listener: webhooks, REST API, `/health`, `/ready`, `/metrics`.
    pub http: HttpConfig,
    /// SIP listener.
    pub sip: SipConfig,
    /// Media ports.
    pub media: MediaConfig,
    /// Database.
    pub store: StoreConfig,
    /// Draining on SIGTERM/SIGINT.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// SIP trunks toward PBXs, contact centers and SBCs, in file order.
    pub trunks: Vec<SipTrunk>,
    /// SIP→SIP routes, in file order.
    pub routes: Vec<SipRoute>,
    /// Overload protection.
    pub limits: LimitsConfig,
    /// Meta's Cloud API (`None`: no `[meta]` section, no WhatsApp calling).
    pub meta: Option<MetaConfig>,
    /// WhatsApp business numbers served, in file order.
    pub business_numbers: Vec<BusinessNumber>,
    /// `waswitch sim`.
    pub sim: SimConfig,
    /// Where each CDR is also POSTed, signed (`None`: only stored).
    pub cdr_webhook: Option<CdrWebhookConfig>,
    /// Call permissions and the policy of business-initiated calls.
    pub permissions: PermissionsConfig,
}

/// `[permissions]`: the limits a call permission lives by, and where business-initiated
/// calls are not allowed.
#[derive(Debug, Clone)]
pub struct PermissionsConfig {
    /// The profile the limits start from (`meta` by default).
    pub profile: PermissionProfile,
    /// The limits set in the file, each overriding the profile's.
    pub limits: PermissionLimits,
    /// Business numbers of these countries (ISO 3166 alpha-2) may not place
    /// business-initiated calls (Meta's list: US, CA, TR, EG, VN, NG).
    pub excluded_countries: Vec<String>,
    /// Customers whose number starts with one of these calling codes are never called
    /// nor delivered (sanctioned regions; default: 53 Cuba, 98 Iran, 850 North Korea,
    /// 963 Syria).
    pub sanctioned_calling_codes: Vec<String>,
    /// Before dialling a business-initiated call, ask Meta's call-permission endpoint too:
    /// Meta saying there is no permission refuses the call even when the switch's records
    /// allow it (one Graph API request per call; off by default).
    pub authoritative_check: bool,
}

/// Where call-permission limits start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PermissionProfile {
    /// Meta's documented limits.
    #[default]
    Meta,
    /// "24 h, one call": day-long grants of one call, one call a day on a permanent grant.
    Strict,
}

/// Call-permission limits set in `[permissions]` (`None`: the profile's). A zero in a
/// budget means "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermissionLimits {
    /// Cap on a temporary grant's lifetime, hours.
    pub temporary_lifetime_hours: Option<u32>,
    /// Connected calls one temporary grant allows (0: any number).
    pub calls_per_permission: Option<u32>,
    /// Connected calls per rolling 24 h under a permanent grant (0: no own limit).
    pub permanent_calls_per_day: Option<u32>,
    /// Permission requests per rolling 24 h.
    pub requests_per_day: Option<u32>,
    /// Permission requests per rolling 7 days.
    pub requests_per_week: Option<u32>,
    /// Connected business-initiated calls per rolling 24 h.
    pub connected_calls_per_day: Option<u32>,
    /// Unanswered calls in a row that revoke the grant (0: never).
    pub revoke_after_unanswered: Option<u32>,
}

/// Countries where Meta does not offer business-initiated calling.
pub const DEFAULT_EXCLUDED_COUNTRIES: &[&str] = &["US", "CA", "TR", "EG", "VN", "NG"];
/// Calling codes of comprehensively sanctioned countries.
pub const DEFAULT_SANCTIONED_CODES: &[&str] = &["53", "98", "850", "963"];

/// `[cdr_webhook]`: every CDR POSTed as JSON to a URL, signed and retried, never holding a
/// call.
#[derive(Debug, Clone)]
pub struct CdrWebhookConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// HMAC-SHA256 key of the `X-Waswitch-Signature` header.
    pub secret: Secret,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts per CDR (backoff doubling from 500 ms, with jitter).
    pub max_attempts: u32,
}

/// Overload protection: above these, new calls get 503 with Retry-After at once.
#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    /// New INVITEs accepted per second (a burst of one second's worth is allowed); 0: no limit.
    pub max_cps: u32,
    /// Calls in progress on this node; 0: no limit.
    pub max_calls: u32,
}

/// HTTP listener settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Bearer token of the REST API (`/v1/...`); without one the API is not served.
    pub api_token: Option<Secret>,
    /// Connection and request limits of the listener.
    pub limits: HttpLimits,
    /// What Meta's webhooks may make the switch read.
    pub webhooks: WebhookLimits,
}

/// The listener's limits (`[http]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request head must be complete this long after the connection starts waiting.
    pub header_timeout: Duration,
    /// A request body must be complete this long after its head.
    pub body_timeout: Duration,
    /// A connection with no bytes moving either way this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Largest request body of the REST API.
    pub max_body: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_body: 64 * 1024,
        }
    }
}

/// How much webhook traffic is read at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookLimits {
    /// Largest body taken.
    pub max_body: usize,
    /// Bodies read at once.
    pub concurrency: usize,
    /// A body must arrive whole this long after its head.
    pub body_timeout: Duration,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        WebhookLimits {
            max_body: 256 * 1024,
            concurrency: 32,
            body_timeout: Duration::from_secs(10),
        }
    }
}

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

/// A SIP→SIP route: INVITEs whose Request-URI user starts with `prefix` (the longest
/// matching prefix wins) go to `trunks`, tried in order.
#[derive(Debug, Clone)]
pub struct SipRoute {
    /// Name for logs.
    pub name: String,
    /// Request-URI user prefix; empty matches every call.
    pub prefix: String,
    /// Only calls arriving from this trunk take the route (`None`: any trunk).
    pub from_trunk: Option<String>,
    /// Trunks to try, in order (indexes into [`Config::trunks`]).
    pub trunks: Vec<usize>,
}

pub use crate::sip::source::IpNet;

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
    fn parse(s: &str) -> Option<Self> {
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

/// Media port range (RTP on even ports, RTCP on the next odd port or muxed).
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Address media sockets bind and advertise in SDP.
    pub ip: IpAddr,
    /// First port of the range (even).
    pub port_min: u16,
    /// Last port of the range.
    pub port_max: u16,
    /// Media shard threads (default: one per core).
    pub shards: usize,
    /// A leg that should send and sent nothing for this long ends its call.
    pub timeout: Duration,
    /// Which sources a leg accepts RTP from.
    pub source_policy: crate::media::types::SourcePolicy,
    /// Every anchored call is recorded here as `<call id>.wav` (`None`: no recording).
    pub record_dir: Option<PathBuf>,
    /// Opus encoder complexity for transcoded legs (0-10: CPU against quality).
    pub opus_complexity: u8,
}

/// Where the system of record lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// Embedded SQLite database file (or `:memory:`).
    Sqlite(String),
    /// PostgreSQL connection URL.
    Postgres(String),
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite://{path}"),
            StoreUrl::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

/// A URL with its user and password replaced by `…`, so logs and messages never show a
/// password.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://…@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Database settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// SQLite or PostgreSQL.
    pub url: StoreUrl,
    /// Connection pool size.
    pub max_connections: u32,
    /// Most CDRs written in one transaction.
    pub cdr_batch_size: usize,
    /// Longest a CDR waits in memory before it is written.
    pub cdr_flush_interval: Duration,
}

/// Drain behaviour on SIGTERM/SIGINT.
#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// How long calls in progress may continue before they are hung up.
    pub grace: Duration,
}

pub use crate::telemetry::LogFormat;

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `info,waswitch::sip=debug`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
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

/// One configuration mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, e.g. `trunk[1].uri`, or the environment variable that set it.
    pub key: String,
    /// What is wrong with the value.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

/// Why a configuration could not be loaded. Displayed as one line per problem:
/// `FILE: KEY: PROBLEM; FIX`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (missing, permissions).
    #[error("{path}: cannot read: {source}; pass --config PATH or copy config/waswitch.toml", path = .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// One or more problems in the file or its environment overrides.
    #[error("{}", render_problems(.path, .problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigError {
    /// The problems found, empty for a read error.
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            ConfigError::Read { .. } => &[],
        }
    }
}

fn render_problems(path: &Path, problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}: {}; {}", path.display(), p.key, p.problem, p.fix))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads and validates `path`, applying `WASWITCH_*` variables from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(path, &text, |name| std::env::var(name).ok())
    }

    /// A node configured from `text` (TOML; `""` for every default, environment ignored)
    /// with every listener on an ephemeral loopback port and SQLite at `sqlite`: several
    /// such nodes run side by side in tests, benchmarks or an embedding program. A file
    /// cannot ask for port 0, so this is the only way to get one.
    pub fn loopback(text: &str, sqlite: &Path) -> Result<Self, ConfigError> {
        let mut config = Self::from_toml(Path::new("(loopback node)"), text, |_| None)?;
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        config.http.listen = any_port;
        config.sip.listen = any_port;
        if let Some(tls) = config.sip.tls.as_mut() {
            tls.listen = any_port;
        }
        config.store.url = StoreUrl::Sqlite(sqlite.to_string_lossy().into_owned());
        Ok(config)
    }

    /// Validates `text` as if read from `path`; `env` looks up override variables.
    pub fn from_toml(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        };
        let raw = parse_file(text).map_err(|p| invalid(vec![p]))?;
        let mut v = Validator {
            problems: Vec::new(),
            origins: BTreeMap::new(),
        };
        let raw = v.apply_env(raw, &env);
        let config = v.validate(path, raw);
        match config {
            Some(c) if v.problems.is_empty() => Ok(c),
            _ => Err(invalid(v.problems)),
        }
    }
}

fn parse_file(text: &str) -> Result<file::ConfigFile, ConfigProblem> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let location = inner
            .span()
            .map(|span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        let message = inner
            .message()
            .trim()
            .replace("expected i64", "expected a whole number");
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let (key, fix) = if let Some(field) = missing {
            let key = if path == "." || path.is_empty() {
                field.to_string()
            } else {
                format!("{path}.{field}")
            };
            (key, "add it; config/waswitch.toml shows an example")
        } else if message.starts_with("unknown field") {
            (
                path,
                "remove it or correct the spelling (see config/waswitch.toml for every key)",
            )
        } else if path == "." || path.is_empty() {
            ("(syntax)".to_string(), "fix the TOML syntax at that line")
        } else {
            (
                path,
                "give it a value of the type config/waswitch.toml shows",
            )
        };
        ConfigProblem {
            key,
            problem: format!("{message}{location}"),
            fix: fix.to_string(),
        }
    })
}

struct Validator {
    problems: Vec<ConfigProblem>,
    /// Keys whose value came from an environment variable, for messages.
    origins: BTreeMap<&'static str, &'static str>,
}

impl Validator {
    fn problem(&mut self, key: &str, problem: impl Into<String>, fix: impl Into<String>) {
        let key = match self.origins.get(key) {
            Some(var) => format!("{key} (from {var})"),
            None => key.to_string(),
        };
        self.problems.push(ConfigProblem {
            key,
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    fn apply_env(
        &mut self,
        mut raw: file::ConfigFile,
        env: &impl Fn(&str) -> Option<String>,
    ) -> file::ConfigFile {
        let mut take = |var: &'static str, key: &'static str| {
            env(var).inspect(|_| {
                self.origins.insert(key, var);
            })
        };
        if let Some(v) = take("WASWITCH_NODE_ID", "node.id") {
            raw.node.id = v;
        }
        if let Some(v) = take("WASWITCH_HTTP_LISTEN", "http.listen") {
            raw.http.listen = v;
        }
        if let Some(v) = take("WASWITCH_API_TOKEN", "http.api_token") {
            raw.http.api_token = Some(v);
        }
        if let Some(v) = take("WASWITCH_CDR_WEBHOOK_SECRET", "cdr_webhook.secret") {
            raw.cdr_webhook.get_or_insert_with(Default::default).secret = v;
        }
        if let Some(v) = take("WASWITCH_SIP_LISTEN", "sip.listen") {
            raw.sip.listen = v;
        }
        if let Some(v) = take("WASWITCH_MEDIA_IP", "media.ip") {
            raw.media.ip = v;
        }
        if let Some(v) = take("WASWITCH_STORE_URL", "store.url") {
            raw.store.url = v;
        }
        if let Some(v) = take("WASWITCH_LOG_LEVEL", "log.level") {
            raw.log.level = v;
        }
        if let Some(v) = take("WASWITCH_LOG_FORMAT", "log.format") {
            raw.log.format = v;
        }
        if let Some(v) = take("WASWITCH_SIM_LISTEN", "sim.listen") {
            raw.sim.listen = v;
        }
        // Secrets belong in the environment: a variable alone creates the [meta] section.
        for (var, key) in [
            ("WASWITCH_META_GRAPH_URL", "meta.graph_url"),
            ("WASWITCH_META_API_VERSION", "meta.api_version"),
            ("WASWITCH_META_ACCESS_TOKEN", "meta.access_token"),
            ("WASWITCH_META_APP_SECRET", "meta.app_secret"),
            ("WASWITCH_META_VERIFY_TOKEN", "meta.verify_token"),
        ] {
            if let Some(v) = take(var, key) {
                let meta = raw.meta.get_or_insert_with(Default::default);
                let field = match key {
                    "meta.graph_url" => &mut meta.graph_url,
                    "meta.api_version" => &mut meta.api_version,
                    "meta.access_token" => &mut meta.access_token,
                    "meta.app_secret" => &mut meta.app_secret,
                    _ => &mut meta.verify_token,
                };
                *field = v;
            }
        }
        if let Some(v) = env("WASWITCH_SHUTDOWN_GRACE_SECS") {
            self.origins
                .insert("shutdown.grace_secs", "WASWITCH_SHUTDOWN_GRACE_SECS");
            match v.trim().parse() {
                Ok(n) => raw.shutdown.grace_secs = n,
                Err(_) => self.problem(
                    "shutdown.grace_secs",
                    format!("{v:?} is not a whole number of seconds"),
                    "set WASWITCH_SHUTDOWN_GRACE_SECS to e.g. 30",
                ),
            }
        }
        if let Some(v) = env("WASWITCH_MEDIA_PORTS") {
            self.origins
                .insert("media.port_min", "WASWITCH_MEDIA_PORTS");
            self.origins
                .insert("media.port_max", "WASWITCH_MEDIA_PORTS");
            let parsed = v
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
            match parsed {
                Some((min, max)) => {
                    raw.media.port_min = min;
                    raw.media.port_max = max;
                }
                None => self.problem(
                    "media.port_min",
                    format!("{v:?} is not a port range"),
                    "set WASWITCH_MEDIA_PORTS to FIRST-LAST, e.g. 20000-29999",
                ),
            }
        }
        raw
    }

    fn validate(&mut self, path: &Path, raw: file::ConfigFile) -> Option<Config> {
        let node_id = raw.node.id.trim().to_string();
        if node_id.is_empty()
            || !node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            self.problem(
                "node.id",
                format!("{:?} is not a node name", raw.node.id),
                "use letters, digits, '-', '_' or '.', e.g. \"waswitch-1\"",
            );
        }

        let http_listen = self.socket_addr("http.listen", &raw.http.listen, "127.0.0.1:8080");
        let sip_listen = self.socket_addr("sip.listen", &raw.sip.listen, "127.0.0.1:5060");

        let mut transports = Vec::new();
        for (i, t) in raw.sip.transports.iter().enumerate() {
            match Transport::parse(t) {
                Some(t) if transports.contains(&t) => self.problem(
                    &format!("sip.transports[{i}]"),
                    format!("{:?} is listed twice", t.as_str()),
                    "list each transport once",
                ),
                Some(t) => transports.push(t),
                None => self.problem(
                    &format!("sip.transports[{i}]"),
                    format!("{t:?} is not a SIP transport"),
                    "use \"udp\", \"tcp\" or \"tls\"",
                ),
            }
        }
        if raw.sip.transports.is_empty() {
            self.problem(
                "sip.transports",
                "is empty: the switch could not receive SIP",
                "list at least one of \"udp\", \"tcp\", \"tls\"",
            );
        }
        if let (Some(h), Some(s)) = (http_listen, sip_listen) {
            let sip_tcp = transports
                .iter()
                .any(|t| matches!(t, Transport::Tcp | Transport::Tls));
            if sip_tcp
                && h.port() == s.port()
                && (h.ip() == s.ip() || h.ip().is_unspecified() || s.ip().is_unspecified())
            {
                self.problem(
                    "sip.listen",
                    format!("{s} uses the same TCP port as http.listen ({h})"),
                    "give SIP and HTTP different ports (SIP usually 5060, HTTP 8080)",
                );
            }
        }

        let t1 = self.bounded("sip.t1_ms", raw.sip.t1_ms, 10, 10_000);
        let t2 = self.bounded("sip.t2_ms", raw.sip.t2_ms, 10, 60_000);
        let t4 = self.bounded("sip.t4_ms", raw.sip.t4_ms, 10, 60_000);
        if let (Some(t1), Some(t2)) = (t1, t2) {
            if t2 < t1 {
                self.problem(
                    "sip.t2_ms",
                    format!("{t2} is below sip.t1_ms ({t1})"),
                    "T2 caps the retransmit interval and must be at least T1 (RFC 3261 default 4000)",
                );
            }
        }
        let timers = match (t1, t2, t4) {
            (Some(t1), Some(t2), Some(t4)) => Some(crate::sip::txn::TimerConfig {
                t1: Duration::from_millis(t1 as u64),
                t2: Duration::from_millis(t2 as u64),
                t4: Duration::from_millis(t4 as u64),
            }),
            _ => None,
        };

        let media_ip = match raw.media.ip.trim().parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.problem(
                    "media.ip",
                    format!("{:?} is not an IP address", raw.media.ip),
                    "use the address media is sent to, e.g. \"127.0.0.1\" or \"2001:db8::10\"",
                );
                None
            }
        };
        let port_min = self.port("media.port_min", raw.media.port_min);
        let port_max = self.port("media.port_max", raw.media.port_max);
        if let (Some(min), Some(max)) = (port_min, port_max) {
            if min % 2 != 0 {
                self.problem(
                    "media.port_min",
                    format!("{min} is odd; RTP uses even ports"),
                    format!("use {}", min.saturating_sub(1)),
                );
            }
            if max < min.saturating_add(3) {
                self.problem(
                    "media.port_max",
                    format!(
                        "{max} leaves fewer than two RTP port pairs above media.port_min ({min})"
                    ),
                    "a call needs two pairs (one per leg); give a range such as 20000-29999",
                );
            } else if let Some(sip) = sip_listen {
                if (min..=max).contains(&sip.port()) {
                    self.problem(
                        "media.port_min",
                        format!("the range {min}-{max} contains the SIP port {}", sip.port()),
                        "move the media range away from sip.listen",
                    );
                }
            }
        }

        let shards = self
            .bounded("media.shards", raw.media.shards, 0, 256)
            .map(|n| {
                if n == 0 {
                    std::thread::available_parallelism().map_or(1, |p| p.get() as i64)
                } else {
                    n
                }
            });
        let media_timeout = self.bounded("media.timeout_secs", raw.media.timeout_secs, 1, 3600);
        let opus_complexity =
            self.bounded("media.opus_complexity", raw.media.opus_complexity, 0, 10);
        let source_policy = match raw.media.source_policy.to_ascii_lowercase().as_str() {
            "latch" => Some(crate::media::types::SourcePolicy::Latch),
            "strict" => Some(crate::media::types::SourcePolicy::Strict),
            other => {
                self.problem(
                    "media.source_policy",
                    format!("{other:?} is not a source policy"),
                    "use \"latch\" (first source, then locked; for peers behind NAT) or \"strict\" (only the SDP address)",
                );
                None
            }
        };
        let record_dir = match raw.media.record_dir.as_deref().map(str::trim) {
            None => None,
            Some("") => {
                self.problem(
                    "media.record_dir",
                    "is empty",
                    "give a directory for recordings, or leave the key out to record nothing",
                );
                None
            }
            Some(d) => {
                let dir = PathBuf::from(d);
                if dir.exists() && !dir.is_dir() {
                    self.problem(
                        "media.record_dir",
                        format!("{d:?} exists and is not a directory"),
                        "name a directory (it is created when missing)",
                    );
                }
                Some(dir)
            }
        };
        let store_url = self.store_url(&raw.store.url);
        let max_connections =
            self.bounded("store.max_connections", raw.store.max_connections, 1, 1000);
        let cdr_batch_size =
            self.bounded("store.cdr_batch_size", raw.store.cdr_batch_size, 1, 10_000);
        let flush_ms = self.bounded(
            "store.cdr_flush_interval_ms",
            raw.store.cdr_flush_interval_ms,
            1,
            60_000,
        );
        let grace = self.bounded("shutdown.grace_secs", raw.shutdown.grace_secs, 0, 86_400);

        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&raw.log.level) {
            self.problem(
                "log.level",
                format!("{:?} is not a log filter ({e})", raw.log.level),
                "use error, warn, info, debug or trace, optionally with per-module \
                 directives such as \"info,waswitch::sip=debug\"",
            );
        }
        let log_format = match raw.log.format.to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            other => {
                self.problem(
                    "log.format",
                    format!("{other:?} is not a log format"),
                    "use \"text\" or \"json\"",
                );
                None
            }
        };

        let tls = self.tls(
            raw.sip.tls.as_ref(),
            transports.contains(&Transport::Tls),
            sip_listen,
        );
        let trunks = self.trunks(&raw.trunk, sip_listen);
        let sim_listen = self.socket_addr("sim.listen", &raw.sim.listen, "127.0.0.1:8090");
        let outbound_tls = matches!(&tls, Some(Some(t)) if t.ca.is_some());
        let routes = self.routes(&raw.route, &raw.trunk, &trunks, &transports, outbound_tls);
        let meta = self.meta(raw.meta.as_ref());
        let cdr_webhook = self.cdr_webhook(raw.cdr_webhook.as_ref());
        let permissions = self.permissions(&raw.permissions);
        let business_numbers =
            self.business_numbers(&raw.business_number, raw.meta.is_some(), &routes);
        let ring_timeout =
            self.bounded("sip.ring_timeout_secs", raw.sip.ring_timeout_secs, 1, 3600);
        let session_expires = match raw.sip.session_expires_secs {
            0 => Some(0),
            n if (90..=86_400).contains(&n) => Some(n as u32),
            n => {
                self.problem(
                    "sip.session_expires_secs",
                    format!("{n} is out of range"),
                    "use 90 to 86400 seconds (RFC 4028 minimum is 90), or 0 for no session timer",
                );
                None
            }
        };
        let unknown_sources = match raw.sip.unknown_sources.trim() {
            "refuse" => Some(crate::sip::source::UnknownSource::Refuse),
            "drop" => Some(crate::sip::source::UnknownSource::Drop),
            other => {
                self.problem(
                    "sip.unknown_sources",
                    format!("{other:?} is not a policy"),
                    "use \"refuse\" (one stateless 403 per INVITE) or \"drop\" (no answer)",
                );
                None
            }
        };
        let http_limits = self.http_limits(&raw.http);
        let max_cps = self.bounded("limits.max_cps", raw.limits.max_cps, 0, 100_000);
        let max_calls = self.bounded("limits.max_calls", raw.limits.max_calls, 0, 1_000_000);
        let (http_limits, webhook_limits) = http_limits?;
        Some(Config {
            source: path.to_path_buf(),
            node_id,
            http: HttpConfig {
                limits: http_limits,
                webhooks: webhook_limits,
                listen: http_listen?,
                api_token: raw
                    .http
                    .api_token
                    .as_deref()
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(Secret::new),
            },
            sip: SipConfig {
                listen: sip_listen?,
                transports,
                timers: timers?,
                ring_timeout: Duration::from_secs(ring_timeout? as u64),
                session_expires: session_expires?,
                unknown_sources: unknown_sources?,
                tls: tls?,
            },
            media: MediaConfig {
                ip: media_ip?,
                port_min: port_min?,
                port_max: port_max?,
                shards: shards? as usize,
                timeout: Duration::from_secs(media_timeout? as u64),
                source_policy: source_policy?,
                record_dir,
                opus_complexity: opus_complexity? as u8,
            },
            store: StoreConfig {
                url: store_url?,
                max_connections: max_connections? as u32,
                cdr_batch_size: cdr_batch_size? as usize,
                cdr_flush_interval: Duration::from_millis(flush_ms? as u64),
            },
            shutdown: ShutdownConfig {
                grace: Duration::from_secs(grace? as u64),
            },
            log: LogConfig {
                level: raw.log.level,
                format: log_format?,
            },
            trunks,
            routes,
            limits: LimitsConfig {
                max_cps: max_cps? as u32,
                max_calls: max_calls? as u32,
            },
            meta,
            business_numbers,
            sim: SimConfig {
                listen: sim_listen?,
            },
            cdr_webhook,
            permissions: permissions?,
        })
    }

    fn permissions(&mut self, raw: &file::PermissionsSection) -> Option<PermissionsConfig> {
        let profile = match raw.profile.as_deref().map(str::trim) {
            None | Some("meta") => PermissionProfile::Meta,
            Some("strict") => PermissionProfile::Strict,
            Some(other) => {
                self.problem(
                    "permissions.profile",
                    format!("{other:?} is not a profile"),
                    "use \"meta\" (Meta's documented limits, the default) or \"strict\" (24 h grants with one call each; one call a day on a permanent grant)",
                );
                return None;
            }
        };
        let count = |v: &mut Self, key: &str, value: Option<i64>, min: i64, max: i64| {
            value
                .map(|n| v.bounded(key, n, min, max).map(|n| n as u32))
                .map_or(Some(None), |n| n.map(Some))
        };
        let limits = PermissionLimits {
            temporary_lifetime_hours: count(
                self,
                "permissions.temporary_lifetime_hours",
                raw.temporary_lifetime_hours,
                1,
                24 * 365,
            )?,
            calls_per_permission: count(
                self,
                "permissions.calls_per_permission",
                raw.calls_per_permission,
                0,
                1_000_000,
            )?,
            permanent_calls_per_day: count(
                self,
                "permissions.permanent_calls_per_day",
                raw.permanent_calls_per_day,
                0,
                1_000_000,
            )?,
            requests_per_day: count(
                self,
                "permissions.requests_per_day",
                raw.requests_per_day,
                0,
                10_000,
            )?,
            requests_per_week: count(
                self,
                "permissions.requests_per_week",
                raw.requests_per_week,
                0,
                70_000,
            )?,
            connected_calls_per_day: count(
                self,
                "permissions.connected_calls_per_day",
                raw.connected_calls_per_day,
                0,
                1_000_000,
            )?,
            revoke_after_unanswered: count(
                self,
                "permissions.revoke_after_unanswered",
                raw.revoke_after_unanswered,
                0,
                1000,
            )?,
        };
        let mut excluded = Vec::new();
        let countries = raw.excluded_countries.clone().unwrap_or_else(|| {
            DEFAULT_EXCLUDED_COUNTRIES
                .iter()
                .map(|c| c.to_string())
                .collect()
        });
        for (i, c) in countries.iter().enumerate() {
            let c = c.trim().to_ascii_uppercase();
            if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                self.problem(
                    &format!("permissions.excluded_countries[{i}]"),
                    format!("{c:?} is not a country code"),
                    "use ISO 3166 alpha-2 codes, e.g. \"US\"",
                );
                return None;
            }
            excluded.push(c);
        }
        let mut sanctioned = Vec::new();
        let codes = raw.sanctioned_calling_codes.clone().unwrap_or_else(|| {
            DEFAULT_SANCTIONED_CODES
                .iter()
                .map(|c| c.to_string())
                .collect()
        });
        for (i, c) in codes.iter().enumerate() {
            let c = c.trim().trim_start_matches('+').to_string();
            if c.is_empty() || c.len() > 4 || !c.bytes().all(|b| b.is_ascii_digit()) {
                self.problem(
                    &format!("permissions.sanctioned_calling_codes[{i}]"),
                    format!("{c:?} is not a calling code"),
                    "use the digits of a country calling code, e.g. \"98\"",
                );
                return None;
            }
            sanctioned.push(c);
        }
        Some(PermissionsConfig {
            profile,
            limits,
            excluded_countries: excluded,
            sanctioned_calling_codes: sanctioned,
            authoritative_check: raw.authoritative_check,
        })
    }

    fn cdr_webhook(&mut self, raw: Option<&file::CdrWebhookSection>) -> Option<CdrWebhookConfig> {
        let raw = raw?;
        let url = raw.url.trim();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            self.problem(
                "cdr_webhook.url",
                format!("{url:?} is not an http(s) URL"),
                "give the receiver's URL, e.g. \"https://billing.example.com/cdrs\"",
            );
        }
        if raw.secret.trim().is_empty() {
            self.problem(
                "cdr_webhook.secret",
                "missing: CDRs would go unsigned",
                "set a shared secret (better: WASWITCH_CDR_WEBHOOK_SECRET)",
            );
        }
        let timeout = self.bounded("cdr_webhook.timeout_ms", raw.timeout_ms, 100, 60_000);
        let attempts = self.bounded("cdr_webhook.max_attempts", raw.max_attempts, 1, 20);
        Some(CdrWebhookConfig {
            url: url.to_string(),
            secret: Secret::new(raw.secret.trim()),
            timeout: Duration::from_millis(timeout? as u64),
            max_attempts: attempts? as u32,
        })
    }

    fn socket_addr(&mut self, key: &str, value: &str, example: &str) -> Option<SocketAddr> {
        match value.trim().parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                self.problem(
                    key,
                    format!("{value:?} has port 0"),
                    format!("give a fixed port, e.g. \"{example}\""),
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                let fix = if value.contains(':') || value.contains('.') {
                    format!("write IP:PORT (IPv6 as [::1]:PORT), e.g. \"{example}\"; host names are not allowed")
                } else {
                    format!("write IP:PORT, e.g. \"{example}\"")
                };
                self.problem(key, format!("{value:?} is not an IP:port address"), fix);
                None
            }
        }
    }

    fn port(&mut self, key: &str, value: i64) -> Option<u16> {
        match u16::try_from(value) {
            Ok(p) if p >= 1024 => Some(p),
            _ => {
                self.problem(
                    key,
                    format!("{value} is not a usable UDP port"),
                    "use a port between 1024 and 65535",
                );
                None
            }
        }
    }

    fn http_limits(&mut self, raw: &file::HttpSection) -> Option<(HttpLimits, WebhookLimits)> {
        let mut http = HttpLimits::default();
        let mut hooks = WebhookLimits::default();
        let secs = |v: i64| Duration::from_secs(v as u64);
        let mut ok = true;
        let mut set = |v: &mut Self, key: &str, value: Option<i64>, min: i64, max: i64| {
            value.map(|n| {
                let b = v.bounded(key, n, min, max);
                ok &= b.is_some();
                b.unwrap_or(min)
            })
        };
        if let Some(n) = set(
            self,
            "http.header_timeout_secs",
            raw.header_timeout_secs,
            1,
            600,
        ) {
            http.header_timeout = secs(n);
        }
        if let Some(n) = set(
            self,
            "http.body_timeout_secs",
            raw.body_timeout_secs,
            1,
            600,
        ) {
            http.body_timeout = secs(n);
            hooks.body_timeout = secs(n);
        }
        if let Some(n) = set(
            self,
            "http.idle_timeout_secs",
            raw.idle_timeout_secs,
            1,
            3600,
        ) {
            http.idle_timeout = secs(n);
        }
        if let Some(n) = set(
            self,
            "http.max_connections",
            raw.max_connections,
            1,
            1_000_000,
        ) {
            http.max_connections = n as usize;
        }
        if let Some(n) = set(
            self,
            "http.max_body_bytes",
            raw.max_body_bytes,
            1024,
            16 << 20,
        ) {
            http.max_body = n as usize;
        }
        if let Some(n) = set(
            self,
            "http.webhook_max_body_bytes",
            raw.webhook_max_body_bytes,
            4096,
            16 << 20,
        ) {
            hooks.max_body = n as usize;
        }
        if let Some(n) = set(
            self,
            "http.webhook_concurrency",
            raw.webhook_concurrency,
            1,
            4096,
        ) {
            hooks.concurrency = n as usize;
        }
        ok.then_some((http, hooks))
    }

    fn bounded(&mut self, key: &str, value: i64, min: i64, max: i64) -> Option<i64> {
        if (min..=max).contains(&value) {
            Some(value)
        } else {
            self.problem(
                key,
                format!("{value} is out of range"),
                format!("use a value from {min} to {max}"),
            );
            None
        }
    }

    fn store_url(&mut self, url: &str) -> Option<StoreUrl> {
        let url = url.trim();
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if rest.is_empty() {
                self.problem(
                    "store.url",
                    "names no SQLite file",
                    "write sqlite://PATH, e.g. \"sqlite://data/waswitch.db\"",
                );
                return None;
            }
            return Some(StoreUrl::Sqlite(rest.to_string()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return match url.parse::<sqlx::postgres::PgConnectOptions>() {
                Ok(_) => Some(StoreUrl::Postgres(url.to_string())),
                Err(e) => {
                    self.problem(
                        "store.url",
                        format!("is not a valid PostgreSQL URL ({e})"),
                        "write postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
                    );
                    None
                }
            };
        }
        self.problem(
            "store.url",
            format!("{:?} is neither SQLite nor PostgreSQL", redact_url(url)),
            "use \"sqlite://data/waswitch.db\" (embedded) or \"postgres://user@host/db\" (cluster)",
        );
        None
    }

    fn trunks(
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
    fn tls(
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

    fn routes(
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
            if r.trunks.is_empty() {
                self.problem(
                    &key("trunks"),
                    "is empty",
                    "list at least one trunk to send the calls to",
                );
            }
            let mut indexes = Vec::new();
            for (j, name) in r.trunks.iter().enumerate() {
                if !known(name) {
                    self.problem(
                        &format!("route[{i}].trunks[{j}]"),
                        format!("{name:?} is not a configured trunk"),
                        "name a trunk defined in a [[trunk]] section",
                    );
                    continue;
                }
                match trunks.iter().position(|t| t.name == *name) {
                    Some(t) if trunks[t].pstn => self.problem(
                        &format!("route[{i}].trunks[{j}]"),
                        format!("{name:?} is a PSTN trunk"),
                        "WhatsApp calls stay VoIP: route to trunks without pstn = true",
                    ),
                    Some(t) if matches!(trunks[t].uri.host, crate::sip::uri::Host::Domain(_)) => {
                        self.problem(
                            &format!("route[{i}].trunks[{j}]"),
                            format!("trunk {name:?} is named by a host name ({})", trunks[t].uri),
                            "the switch resolves no names on the call path: write the trunk's IP address in its uri",
                        )
                    }
                    Some(t) if !listening.contains(&trunks[t].transport) => self.problem(
                        &format!("route[{i}].trunks[{j}]"),
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
                        &format!("route[{i}].trunks[{j}]"),
                        format!("trunk {name:?} uses tls but no CA is configured to verify it"),
                        "set sip.tls.ca to a PEM file with the CA certificates that sign the trunk's certificate",
                    ),
                    Some(t) => indexes.push(t),
                    // The trunk itself is broken and reported under trunk[..].
                    None => {}
                }
            }
            out.push(SipRoute {
                name: r.name.clone(),
                prefix: r.prefix.clone(),
                from_trunk: r.from_trunk.clone(),
                trunks: indexes,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests;
