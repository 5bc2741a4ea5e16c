//! The configuration file as written: serde structs that mirror the TOML one to one.
//!
//! Values stay close to text here (addresses and URLs are strings) so that the typed layer in
//! [`super`] can say precisely what is wrong with each and how to fix it. Unknown keys are
//! refused, so a typo never silently falls back to a default.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub node: NodeSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub sip: SipSection,
    #[serde(default)]
    pub media: MediaSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub shutdown: ShutdownSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub trunk: Vec<TrunkSection>,
    #[serde(default)]
    pub agent: Vec<AgentSection>,
    #[serde(default)]
    pub queue: Vec<QueueSection>,
    #[serde(default)]
    pub api_token: Vec<ApiTokenSection>,
    #[serde(default)]
    pub route: Vec<RouteSection>,
    #[serde(default)]
    pub meta: Option<MetaSection>,
    #[serde(default)]
    pub business_number: Vec<BusinessNumberSection>,
    #[serde(default)]
    pub sim: SimSection,
    #[serde(default)]
    pub cdr_webhook: Option<CdrWebhookSection>,
    #[serde(default)]
    pub permissions: PermissionsSection,
    #[serde(default)]
    pub schedule: Vec<ScheduleSection>,
    #[serde(default)]
    pub ivr: Vec<IvrSection>,
    #[serde(default)]
    pub app: Vec<AppSection>,
    #[serde(default)]
    pub recording: RecordingSection,
    #[serde(default)]
    pub stream: StreamSection,
}

/// `[stream]`: media streams to voice bots.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamSection {
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default = "default_stream_connect_timeout_ms")]
    pub connect_timeout_ms: i64,
}

impl Default for StreamSection {
    fn default() -> Self {
        StreamSection {
            ca_file: None,
            connect_timeout_ms: default_stream_connect_timeout_ms(),
        }
    }
}

fn default_stream_connect_timeout_ms() -> i64 {
    5000
}

/// `[recording]`: call recordings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordingSection {
    #[serde(default = "default_record_policy")]
    pub default: String,
    #[serde(default = "default_record_format")]
    pub format: String,
    #[serde(default = "default_recording_dir")]
    pub dir: String,
    #[serde(default = "default_record_storage")]
    pub storage: String,
    #[serde(default)]
    pub retention_days: i64,
    #[serde(default = "default_sweep_interval")]
    pub sweep_interval_secs: i64,
    #[serde(default)]
    pub consent: Option<String>,
    #[serde(default)]
    pub consent_by_country: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_true")]
    pub meta_recordings: bool,
    #[serde(default)]
    pub s3: Option<S3Section>,
}

impl Default for RecordingSection {
    fn default() -> Self {
        RecordingSection {
            default: default_record_policy(),
            format: default_record_format(),
            dir: default_recording_dir(),
            storage: default_record_storage(),
            retention_days: 0,
            sweep_interval_secs: default_sweep_interval(),
            consent: None,
            consent_by_country: Default::default(),
            meta_recordings: true,
            s3: None,
        }
    }
}

fn default_record_policy() -> String {
    "on_demand".to_string()
}

fn default_record_format() -> String {
    "ogg".to_string()
}

fn default_record_storage() -> String {
    "local".to_string()
}

fn default_sweep_interval() -> i64 {
    3600
}

/// `[recording.s3]`: an S3-compatible bucket.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct S3Section {
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_s3_region")]
    pub region: String,
    #[serde(default)]
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: String,
}

fn default_s3_region() -> String {
    "us-east-1".to_string()
}

/// `[[app]]`: an HTTP voice application.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppSection {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub secret: String,
    #[serde(default = "default_app_timeout")]
    pub timeout_ms: i64,
    #[serde(default)]
    pub fallback: Option<String>,
    #[serde(default)]
    pub fallback_message: Option<String>,
    #[serde(default)]
    pub prompts: Option<String>,
    #[serde(default = "default_recording_dir")]
    pub recording_dir: String,
    #[serde(default = "default_max_prompt_kib")]
    pub max_prompt_kib: i64,
    #[serde(default = "default_event_attempts")]
    pub event_attempts: i64,
    #[serde(default)]
    pub record: Option<String>,
}

fn default_app_timeout() -> i64 {
    3000
}

fn default_recording_dir() -> String {
    "recordings".to_string()
}

fn default_max_prompt_kib() -> i64 {
    5120
}

fn default_event_attempts() -> i64 {
    5
}

/// `[[schedule]]`: business hours in Meta's `call_hours` shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleSection {
    pub name: String,
    pub timezone: String,
    #[serde(default)]
    pub hours: Vec<HoursEntry>,
    #[serde(default)]
    pub holidays: Vec<HolidayEntry>,
}

/// One open interval of a weekday: `{ day = "MONDAY", open = "0900", close = "1700" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HoursEntry {
    pub day: String,
    pub open: String,
    pub close: String,
}

/// One holiday: `{ date = "2026-12-25", start = "0000", end = "2359" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HolidayEntry {
    pub date: String,
    pub start: String,
    pub end: String,
}

/// `[[ivr]]`: a menu, compiled to a call-control script.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IvrSection {
    pub name: String,
    #[serde(default = "default_ivr_entry")]
    pub entry: String,
    #[serde(default = "default_ivr_prompts")]
    pub prompts: String,
    #[serde(default = "default_ivr_language")]
    pub language: String,
    #[serde(default)]
    pub languages: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_true")]
    pub type_ahead: bool,
    #[serde(default = "default_voicemail_dir")]
    pub voicemail_dir: String,
    #[serde(default)]
    pub node: Vec<NodeEntry>,
}

fn default_ivr_entry() -> String {
    "main".to_string()
}

fn default_ivr_prompts() -> String {
    "prompts".to_string()
}

fn default_ivr_language() -> String {
    "en".to_string()
}

fn default_voicemail_dir() -> String {
    "voicemail".to_string()
}

fn default_true() -> bool {
    true
}

/// `[[ivr.node]]`: a named list of verbs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeEntry {
    pub name: String,
    #[serde(default)]
    pub verb: Vec<VerbSection>,
}

/// `[[ivr.node.verb]]`: one verb. Every key any verb takes is here; which ones a verb
/// takes is checked when the menu is compiled, so a key a verb does not take is named.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerbSection {
    pub verb: String,
    // branch
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub countries: Option<Vec<String>>,
    // branch (when = "language") and language
    #[serde(default)]
    pub language: Option<String>,
    // play and gather
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
    // gather
    #[serde(default)]
    pub reprompt: Option<Vec<String>>,
    #[serde(default)]
    pub invalid: Option<Vec<String>>,
    #[serde(default)]
    pub min_digits: Option<i64>,
    #[serde(default)]
    pub max_digits: Option<i64>,
    #[serde(default)]
    pub terminator: Option<String>,
    #[serde(default)]
    pub first_digit_timeout_ms: Option<i64>,
    #[serde(default)]
    pub inter_digit_timeout_ms: Option<i64>,
    #[serde(default)]
    pub retries: Option<i64>,
    #[serde(default)]
    pub choices: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub default: Option<String>,
    // play
    #[serde(default)]
    pub loops: Option<i64>,
    #[serde(default)]
    pub barge_in: Option<bool>,
    // record
    #[serde(default)]
    pub beep: Option<bool>,
    #[serde(default)]
    pub max_length_secs: Option<i64>,
    #[serde(default)]
    pub silence_secs: Option<i64>,
    #[serde(default)]
    pub finish_on_hash: Option<bool>,
    // dial
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub trunk: Option<String>,
    #[serde(default)]
    pub queue: Option<String>,
    // message
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub template_language: Option<String>,
    // request_callback
    #[serde(default)]
    pub purpose: Option<String>,
    // goto
    #[serde(default)]
    pub node: Option<String>,
    // hangup
    #[serde(default)]
    pub reason: Option<String>,
    // app
    #[serde(default)]
    pub app: Option<String>,
    // stream
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub parameters: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub bearer_env: Option<String>,
    /// The value of `bearer_env`'s variable (read with the environment's overrides).
    #[serde(skip)]
    pub bearer_token: Option<String>,
    #[serde(default)]
    pub on_handover: Option<String>,
    #[serde(default)]
    pub reconnect: Option<i64>,
    #[serde(default)]
    pub idle_timeout_secs: Option<i64>,
    #[serde(default)]
    pub max_buffer_secs: Option<i64>,
    #[serde(default)]
    pub prefill_ms: Option<i64>,
    #[serde(default)]
    pub on_flood: Option<String>,
    #[serde(default)]
    pub max_malformed: Option<i64>,
}

impl VerbSection {
    /// The keys set besides `verb`, in schema order.
    pub(crate) fn keys_set(&self) -> Vec<&'static str> {
        let set = [
            ("when", self.when.is_some()),
            ("schedule", self.schedule.is_some()),
            ("to", self.to.is_some()),
            ("countries", self.countries.is_some()),
            ("language", self.language.is_some()),
            ("prompts", self.prompts.is_some()),
            ("reprompt", self.reprompt.is_some()),
            ("invalid", self.invalid.is_some()),
            ("min_digits", self.min_digits.is_some()),
            ("max_digits", self.max_digits.is_some()),
            ("terminator", self.terminator.is_some()),
            (
                "first_digit_timeout_ms",
                self.first_digit_timeout_ms.is_some(),
            ),
            (
                "inter_digit_timeout_ms",
                self.inter_digit_timeout_ms.is_some(),
            ),
            ("retries", self.retries.is_some()),
            ("choices", self.choices.is_some()),
            ("default", self.default.is_some()),
            ("loops", self.loops.is_some()),
            ("barge_in", self.barge_in.is_some()),
            ("beep", self.beep.is_some()),
            ("max_length_secs", self.max_length_secs.is_some()),
            ("silence_secs", self.silence_secs.is_some()),
            ("finish_on_hash", self.finish_on_hash.is_some()),
            ("route", self.route.is_some()),
            ("uri", self.uri.is_some()),
            ("trunk", self.trunk.is_some()),
            ("text", self.text.is_some()),
            ("template", self.template.is_some()),
            ("template_language", self.template_language.is_some()),
            ("purpose", self.purpose.is_some()),
            ("node", self.node.is_some()),
            ("reason", self.reason.is_some()),
            ("app", self.app.is_some()),
            ("url", self.url.is_some()),
            ("format", self.format.is_some()),
            ("parameters", self.parameters.is_some()),
            ("bearer_env", self.bearer_env.is_some()),
            ("on_handover", self.on_handover.is_some()),
            ("reconnect", self.reconnect.is_some()),
            ("idle_timeout_secs", self.idle_timeout_secs.is_some()),
            ("max_buffer_secs", self.max_buffer_secs.is_some()),
            ("prefill_ms", self.prefill_ms.is_some()),
            ("on_flood", self.on_flood.is_some()),
            ("max_malformed", self.max_malformed.is_some()),
        ];
        set.into_iter()
            .filter(|(_, s)| *s)
            .map(|(k, _)| k)
            .collect()
    }
}

/// `[permissions]`: every field optional; unset ones come from the profile.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PermissionsSection {
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub temporary_lifetime_hours: Option<i64>,
    #[serde(default)]
    pub calls_per_permission: Option<i64>,
    #[serde(default)]
    pub permanent_calls_per_day: Option<i64>,
    #[serde(default)]
    pub requests_per_day: Option<i64>,
    #[serde(default)]
    pub requests_per_week: Option<i64>,
    #[serde(default)]
    pub connected_calls_per_day: Option<i64>,
    #[serde(default)]
    pub revoke_after_unanswered: Option<i64>,
    #[serde(default)]
    pub excluded_countries: Option<Vec<String>>,
    #[serde(default)]
    pub sanctioned_calling_codes: Option<Vec<String>>,
    #[serde(default)]
    pub authoritative_check: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CdrWebhookSection {
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub secret: String,
    #[serde(default = "default_cdr_webhook_timeout")]
    pub timeout_ms: i64,
    #[serde(default = "default_cdr_webhook_attempts")]
    pub max_attempts: i64,
}

impl Default for CdrWebhookSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret: String::new(),
            timeout_ms: default_cdr_webhook_timeout(),
            max_attempts: default_cdr_webhook_attempts(),
        }
    }
}

fn default_cdr_webhook_timeout() -> i64 {
    5000
}

fn default_cdr_webhook_attempts() -> i64 {
    6
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetaSection {
    #[serde(default = "default_graph_url")]
    pub graph_url: String,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    #[serde(default)]
    pub access_token: String,
    #[serde(default)]
    pub app_secret: String,
    #[serde(default)]
    pub verify_token: String,
    #[serde(default = "default_graph_timeout")]
    pub request_timeout_ms: i64,
    #[serde(default = "default_graph_attempts")]
    pub max_attempts: i64,
    #[serde(default)]
    pub sip: Option<MetaSipSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetaSipSection {
    #[serde(default)]
    pub hostname: String,
    #[serde(default = "default_meta_sip_proxy")]
    pub proxy: String,
    #[serde(default = "default_meta_sip_allow_from")]
    pub allow_from: Vec<String>,
}

fn default_meta_sip_proxy() -> String {
    "wa.meta.vc:5061".to_string()
}

/// Meta's egress address space (AS32934), from which its SIP requests come.
pub(crate) const META_SIP_RANGES: &[&str] = &[
    "31.13.24.0/21",
    "31.13.64.0/18",
    "45.64.40.0/22",
    "57.141.0.0/21",
    "57.141.8.0/22",
    "57.141.12.0/23",
    "57.144.0.0/14",
    "66.220.144.0/20",
    "69.63.176.0/20",
    "69.171.224.0/19",
    "74.119.76.0/22",
    "102.132.96.0/20",
    "103.4.96.0/22",
    "129.134.0.0/16",
    "147.75.208.0/20",
    "157.240.0.0/16",
    "163.70.128.0/17",
    "163.77.128.0/17",
    "173.252.64.0/18",
    "179.60.192.0/22",
    "185.60.216.0/22",
    "185.89.216.0/22",
    "204.15.20.0/22",
    "2a03:2880::/32",
];

fn default_meta_sip_allow_from() -> Vec<String> {
    META_SIP_RANGES.iter().map(|s| s.to_string()).collect()
}

fn default_graph_url() -> String {
    "https://graph.facebook.com".to_string()
}

fn default_api_version() -> String {
    "v23.0".to_string()
}

fn default_graph_timeout() -> i64 {
    5000
}

fn default_graph_attempts() -> i64 {
    3
}

impl Default for MetaSection {
    fn default() -> Self {
        Self {
            graph_url: default_graph_url(),
            api_version: default_api_version(),
            access_token: String::new(),
            app_secret: String::new(),
            verify_token: String::new(),
            request_timeout_ms: default_graph_timeout(),
            max_attempts: default_graph_attempts(),
            sip: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BusinessNumberSection {
    pub phone_number_id: String,
    pub display_number: String,
    pub country: String,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub entry: Option<String>,
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub echo_test: bool,
    #[serde(default)]
    pub signaling: Option<String>,
    #[serde(default)]
    pub srtp: Option<String>,
    #[serde(default)]
    pub sip_password: String,
    #[serde(default)]
    pub sip_password_file: Option<String>,
    #[serde(default)]
    pub record: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimSection {
    #[serde(default = "default_sim_listen")]
    pub listen: String,
    #[serde(default = "default_sim_sip_listen")]
    pub sip_listen: String,
}

fn default_sim_sip_listen() -> String {
    "127.0.0.1:5081".to_string()
}

fn default_sim_listen() -> String {
    "127.0.0.1:8090".to_string()
}

impl Default for SimSection {
    fn default() -> Self {
        Self {
            listen: default_sim_listen(),
            sip_listen: default_sim_sip_listen(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSection {
    pub name: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub from_trunk: Option<String>,
    #[serde(default)]
    pub trunks: Vec<String>,
    #[serde(default)]
    pub site: Vec<SiteSection>,
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub record: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SiteSection {
    pub name: String,
    pub trunks: Vec<String>,
    #[serde(default = "one")]
    pub priority: i64,
    #[serde(default = "one")]
    pub weight: i64,
    #[serde(default)]
    pub countries: Vec<String>,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSection {
    #[serde(default = "default_node_id")]
    pub id: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            id: default_node_id(),
        }
    }
}

fn default_node_id() -> String {
    "waswitch-1".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpSection {
    #[serde(default = "default_http_listen")]
    pub listen: String,
    #[serde(default)]
    pub api_token: Option<String>,
    #[serde(default)]
    pub header_timeout_secs: Option<i64>,
    #[serde(default)]
    pub body_timeout_secs: Option<i64>,
    #[serde(default)]
    pub idle_timeout_secs: Option<i64>,
    #[serde(default)]
    pub max_connections: Option<i64>,
    #[serde(default)]
    pub max_body_bytes: Option<i64>,
    #[serde(default)]
    pub webhook_max_body_bytes: Option<i64>,
    #[serde(default)]
    pub webhook_concurrency: Option<i64>,
    #[serde(default)]
    pub agent_page: Option<String>,
    #[serde(default)]
    pub tls_cert: Option<String>,
    #[serde(default)]
    pub tls_key: Option<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            api_token: None,
            header_timeout_secs: None,
            body_timeout_secs: None,
            idle_timeout_secs: None,
            max_connections: None,
            max_body_bytes: None,
            webhook_max_body_bytes: None,
            webhook_concurrency: None,
            agent_page: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

fn default_http_listen() -> String {
    "127.0.0.1:8080".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SipSection {
    #[serde(default = "default_sip_listen")]
    pub listen: String,
    #[serde(default = "default_sip_transports")]
    pub transports: Vec<String>,
    #[serde(default = "default_t1_ms")]
    pub t1_ms: i64,
    #[serde(default = "default_t2_ms")]
    pub t2_ms: i64,
    #[serde(default = "default_t4_ms")]
    pub t4_ms: i64,
    #[serde(default = "default_ring_timeout")]
    pub ring_timeout_secs: i64,
    #[serde(default = "default_session_expires")]
    pub session_expires_secs: i64,
    #[serde(default = "default_unknown_sources")]
    pub unknown_sources: String,
    #[serde(default)]
    pub tls: Option<TlsSection>,
}

fn default_unknown_sources() -> String {
    "refuse".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub ca: Option<String>,
}

fn default_ring_timeout() -> i64 {
    120
}

fn default_session_expires() -> i64 {
    1800
}

impl Default for SipSection {
    fn default() -> Self {
        Self {
            listen: default_sip_listen(),
            transports: default_sip_transports(),
            t1_ms: default_t1_ms(),
            t2_ms: default_t2_ms(),
            t4_ms: default_t4_ms(),
            ring_timeout_secs: default_ring_timeout(),
            session_expires_secs: default_session_expires(),
            unknown_sources: default_unknown_sources(),
            tls: None,
        }
    }
}

fn default_t1_ms() -> i64 {
    500
}

fn default_t2_ms() -> i64 {
    4000
}

fn default_t4_ms() -> i64 {
    5000
}

fn default_sip_listen() -> String {
    "127.0.0.1:5060".to_string()
}

fn default_sip_transports() -> Vec<String> {
    vec!["udp".to_string(), "tcp".to_string()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MediaSection {
    #[serde(default = "default_media_ip")]
    pub ip: String,
    #[serde(default = "default_port_min")]
    pub port_min: i64,
    #[serde(default = "default_port_max")]
    pub port_max: i64,
    #[serde(default)]
    pub shards: i64,
    #[serde(default = "default_media_timeout")]
    pub timeout_secs: i64,
    #[serde(default = "default_source_policy")]
    pub source_policy: String,
    #[serde(default = "default_opus_complexity")]
    pub opus_complexity: i64,
}

fn default_opus_complexity() -> i64 {
    crate::media::transcode::DEFAULT_OPUS_COMPLEXITY as i64
}

fn default_media_timeout() -> i64 {
    30
}

fn default_source_policy() -> String {
    "latch".to_string()
}

impl Default for MediaSection {
    fn default() -> Self {
        Self {
            ip: default_media_ip(),
            port_min: default_port_min(),
            port_max: default_port_max(),
            shards: 0,
            timeout_secs: default_media_timeout(),
            source_policy: default_source_policy(),
            opus_complexity: default_opus_complexity(),
        }
    }
}

fn default_media_ip() -> String {
    "127.0.0.1".to_string()
}

fn default_port_min() -> i64 {
    20000
}

fn default_port_max() -> i64 {
    29999
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreSection {
    #[serde(default = "default_store_url")]
    pub url: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: i64,
    #[serde(default = "default_cdr_batch_size")]
    pub cdr_batch_size: i64,
    #[serde(default = "default_cdr_flush_ms")]
    pub cdr_flush_interval_ms: i64,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            url: default_store_url(),
            max_connections: default_max_connections(),
            cdr_batch_size: default_cdr_batch_size(),
            cdr_flush_interval_ms: default_cdr_flush_ms(),
        }
    }
}

fn default_store_url() -> String {
    "sqlite://data/waswitch.db".to_string()
}

fn default_max_connections() -> i64 {
    8
}

fn default_cdr_batch_size() -> i64 {
    200
}

fn default_cdr_flush_ms() -> i64 {
    250
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShutdownSection {
    #[serde(default = "default_grace_secs")]
    pub grace_secs: i64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            grace_secs: default_grace_secs(),
        }
    }
}

fn default_grace_secs() -> i64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogSection {
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default = "default_log_format")]
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: default_log_format(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_string()
}

fn default_log_format() -> String {
    "text".to_string()
}

/// `[[api_token]]`: a REST API token limited to some business numbers and scopes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiTokenSection {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub business_numbers: Vec<String>,
    #[serde(default = "default_token_scopes")]
    pub scopes: Vec<String>,
}

fn default_token_scopes() -> Vec<String> {
    ["calls", "cdrs", "permissions"].map(String::from).to_vec()
}

/// `[[queue]]`: agents answering calls in turn.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueueSection {
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_queue_strategy")]
    pub strategy: String,
    #[serde(default = "default_agent_ring_timeout")]
    pub ring_timeout_secs: i64,
    #[serde(default = "default_queue_timeout")]
    pub timeout_secs: i64,
    #[serde(default = "default_wrap_up")]
    pub wrap_up_secs: i64,
    #[serde(default = "default_service_level")]
    pub service_level_secs: i64,
    #[serde(default)]
    pub announce_position_secs: i64,
    #[serde(default)]
    pub overflow_route: Option<String>,
    #[serde(default)]
    pub record: Option<String>,
}

fn default_service_level() -> i64 {
    20
}

fn default_queue_strategy() -> String {
    "longest_idle".to_string()
}

fn default_agent_ring_timeout() -> i64 {
    15
}

fn default_queue_timeout() -> i64 {
    120
}

fn default_wrap_up() -> i64 {
    10
}

/// `[[agent]]`: an agent whose phone (a browser over WebSocket, a softphone) registers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentSection {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub queues: Vec<String>,
    #[serde(default)]
    pub business_number: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrunkSection {
    pub name: String,
    pub uri: String,
    #[serde(default = "default_trunk_transport")]
    pub transport: String,
    #[serde(default)]
    pub max_calls: Option<i64>,
    #[serde(default)]
    pub pstn: bool,
    #[serde(default = "default_options_interval")]
    pub options_interval_secs: i64,
    #[serde(default = "default_invite_timeout")]
    pub invite_timeout_ms: i64,
    #[serde(default)]
    pub accept_from: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub inbound_username: Option<String>,
    #[serde(default)]
    pub inbound_password: Option<String>,
    #[serde(default = "default_codecs")]
    pub codecs: Vec<String>,
    #[serde(default = "default_whatsapp_identity")]
    pub whatsapp_identity: bool,
    #[serde(default)]
    pub business_calls: bool,
}

fn default_whatsapp_identity() -> bool {
    true
}

fn default_invite_timeout() -> i64 {
    4000
}

fn default_codecs() -> Vec<String> {
    ["opus", "PCMU", "PCMA"].map(String::from).to_vec()
}

fn default_options_interval() -> i64 {
    30
}

fn default_trunk_transport() -> String {
    "udp".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    #[serde(default = "default_max_cps")]
    pub max_cps: i64,
    #[serde(default = "default_max_calls")]
    pub max_calls: i64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_cps: default_max_cps(),
            max_calls: default_max_calls(),
        }
    }
}

fn default_max_cps() -> i64 {
    200
}

fn default_max_calls() -> i64 {
    // What the default media range (20000-29999) carries: 5000 port pairs, two per call.
    2_500
}
