//! Typed configuration, validated once at startup.
//!
//! `config` owns turning `config/waswitch.toml` (plus `WASWITCH_*` environment overrides) into a
//! [`Config`] whose values are already parsed: a socket address is a `SocketAddr`, a store URL
//! is a [`StoreUrl`]. Every mistake is reported with the file, the key, what is wrong and how
//! to fix it, and all mistakes are reported at once. Nothing here opens a socket; besides the
//! configuration file, files are read only to check them (TLS certificates) or to load them
//! once (the IVR menus' prompts, so a missing or unplayable prompt is refused at load,
//! never at call time).
//!
//! This file holds the whole [`Config`], the small sections (media, limits, shutdown, log),
//! the errors and loading. Each larger section has its own file with its types and checks:
//! `sip` (listener, trunks, routes), `http`, `store` (with the CDR webhook), `permissions`,
//! `meta` (with the business numbers), `schedule` (business hours) and `ivr` (menus compiled
//! to call-control scripts, with their prompts); `env` applies the `WASWITCH_*` overrides,
//! `validate` holds the validator itself and `file` the raw TOML schema.

mod app;
mod env;
mod file;
mod http;
mod ivr;
mod meta;
mod permissions;
mod recording;
mod schedule;
mod sip;
mod store;
mod stream;
mod validate;

pub use app::{env_var as app_env_var, AppConfig};
pub use env::ENV_OVERRIDES;
pub use http::{HttpConfig, HttpLimits, WebhookLimits};
pub use ivr::{IvrConfig, PromptSet, PROMPT_EXTENSIONS};
pub use meta::{BusinessNumber, MetaConfig, MetaSip, Secret, Signaling, SimConfig, SrtpKeying};
pub use permissions::{
    PermissionLimits, PermissionProfile, PermissionsConfig, DEFAULT_EXCLUDED_COUNTRIES,
    DEFAULT_SANCTIONED_CODES,
};
pub use recording::{RecordPolicy, RecordingConfig, RecordingStorage, S3Config};
pub use schedule::ScheduleConfig;
pub use sip::{SipConfig, SipRoute, SipTls, SipTrunk, Transport};
pub use store::{redact_url, CdrWebhookConfig, StoreConfig, StoreUrl};
pub use stream::StreamConfig;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use validate::Validator;

/// Default location of the configuration file, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/waswitch.toml";

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
    /// Agents whose phones register (`[[agent]]`).
    pub agents: Vec<AgentConfig>,
    /// Queues of agents (`[[queue]]`).
    pub queues: Vec<QueueConfig>,
    /// REST API tokens limited to some business numbers and scopes (`[[api_token]]`).
    pub api_tokens: Vec<ApiTokenConfig>,
    /// `waswitch sim`.
    pub sim: SimConfig,
    /// Where each CDR is also POSTed, signed (`None`: only stored).
    pub cdr_webhook: Option<CdrWebhookConfig>,
    /// Call permissions and the policy of business-initiated calls.
    pub permissions: PermissionsConfig,
    /// Named business hours (`[[schedule]]`), in file order.
    pub schedules: Vec<ScheduleConfig>,
    /// IVR menus (`[[ivr]]`), compiled and checked, with their prompts loaded, in file order.
    pub ivrs: Vec<IvrConfig>,
    /// HTTP voice applications (`[[app]]`).
    pub apps: Vec<AppConfig>,
    /// Call recordings: policy, format, storage, retention, consent.
    pub recording: RecordingConfig,
    /// Media streams to voice bots: whom `wss://` trusts, how long a connection may take.
    pub stream: StreamConfig,
    /// Routes whose calls an app drives (`[[route]]` with `app`): route → app.
    pub app_routes: BTreeMap<String, String>,
    /// The call-control clock's offset from the system clock, in milliseconds, for the
    /// schedules IVR branches test. Not read from the file: 0, unless the program sets it
    /// (a rehearsal running at another time of day).
    pub clock_offset_ms: i64,
}

/// A queue of agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Its name (routes, IVR dials and agents name it).
    pub name: String,
    /// How the next agent is picked.
    pub strategy: crate::control::queue::Strategy,
    /// How long an agent's phone rings before the next agent is tried.
    pub ring_timeout: Duration,
    /// How long a caller waits before the overflow.
    pub timeout: Duration,
    /// How long an agent wraps up after a call before the next one.
    pub wrap_up: Duration,
    /// Calls answered within this wait count toward the service level.
    pub service_level: Duration,
    /// A waiting caller hears their place in the queue this often (`None`: never).
    pub announce_position: Option<Duration>,
    /// Where callers go when nobody answers in time (a route); `None`: the call ends.
    pub overflow_route: Option<String>,
    /// The agents answering it (those naming it in their `queues`), in configuration order.
    pub members: Vec<String>,
}

impl Config {
    /// The business number each configured agent's calls to customers come from, for
    /// the agents that name one.
    pub fn agent_business_numbers(&self) -> std::collections::HashMap<String, String> {
        self.agents
            .iter()
            .filter_map(|a| Some((a.user.clone(), a.business_number.clone()?)))
            .collect()
    }
}

/// A REST API token for one business (an app): it sees and acts on only its business
/// numbers' calls, CDRs and permissions, within its scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenConfig {
    /// Its name (logs).
    pub name: String,
    /// The bearer token.
    pub token: Secret,
    /// The business numbers it acts for (E.164 digits).
    pub business_numbers: Vec<String>,
    /// What it may use: `calls`, `cdrs`, `permissions`, `agents`.
    pub scopes: Vec<String>,
}

/// An agent whose phone registers with the switch (digest, SHA-256 or MD5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The SIP user the phone registers as.
    pub user: String,
    /// Its digest password.
    pub password: Secret,
    /// The name callers' cards and CDRs show.
    pub display_name: Option<String>,
    /// The queues the agent answers.
    pub queues: Vec<String>,
    /// The business number the agent's calls to customers come from (`None`: the first
    /// configured).
    pub business_number: Option<String>,
}

/// Overload protection: above these, new calls get 503 with Retry-After at once.
#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    /// New INVITEs accepted per second (bursts of a tenth of a second's worth, at least 10, pass); 0: no limit.
    pub max_cps: u32,
    /// Calls in progress on this node; 0: no limit.
    pub max_calls: u32,
}

pub use crate::sip::source::IpNet;

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
    /// Opus encoder complexity for transcoded legs (0-10: CPU against quality).
    pub opus_complexity: u8,
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

/// Keys an older configuration had, with what replaced them.
const MOVED_KEYS: &[(&str, &str)] = &[(
    "media.record_dir",
    "which calls are recorded is a policy now: remove it and add [recording] with dir = \"<the directory>\" and default = \"all\" (see config/waswitch.toml)",
)];

/// An unknown key that an older configuration had: its name and what replaced it.
fn moved_key(path: &str, message: &str) -> Option<(String, &'static str)> {
    let field = message.strip_prefix("unknown field `")?.split('`').next()?;
    // The path may end at the unknown key already.
    let key = if path == field || path.ends_with(&format!(".{field}")) {
        path.to_string()
    } else {
        format!("{path}.{field}")
    };
    MOVED_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(k, fix)| (k.to_string(), *fix))
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
        Self::loopback_with_env(text, sqlite, |_| None)
    }

    /// [`Config::loopback`] with the environment's overrides taken from `env`.
    pub fn loopback_with_env(
        text: &str,
        sqlite: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::from_toml(Path::new("(loopback node)"), text, env)?;
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
        } else if let Some((key, fix)) = moved_key(&path, &message) {
            (key, fix)
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

#[cfg(test)]
mod tests;
