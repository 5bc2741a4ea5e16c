//! The validator: every key of the parsed file checked and turned into its typed value,
//! every mistake collected (with the environment variable that set the key, if one did)
//! rather than stopping at the first, and the checks shared by every section.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::{
    file, AgentConfig, Config, ConfigProblem, HttpConfig, LimitsConfig, LogConfig, LogFormat,
    MediaConfig, QueueConfig, Secret, ShutdownConfig, SimConfig, SipConfig, StoreConfig, Transport,
};

pub(super) struct Validator {
    pub(super) problems: Vec<ConfigProblem>,
    /// Keys whose value came from an environment variable, for messages.
    pub(super) origins: BTreeMap<String, String>,
}

impl Validator {
    pub(super) fn problem(
        &mut self,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
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

    pub(super) fn validate(&mut self, path: &Path, raw: file::ConfigFile) -> Option<Config> {
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
        let agents = self.agents(&raw.agent);
        let sim_listen = self.socket_addr("sim.listen", &raw.sim.listen, "127.0.0.1:8090");
        let sim_sip_listen =
            self.socket_addr("sim.sip_listen", &raw.sim.sip_listen, "127.0.0.1:5081");
        let outbound_tls = matches!(&tls, Some(Some(t)) if t.ca.is_some());
        let routes = self.routes(&raw.route, &raw.trunk, &trunks, &transports, outbound_tls);
        let queues = self.queues(&raw.queue, &raw.agent, &agents, &routes);
        let meta = self.meta(raw.meta.as_ref());
        let cdr_webhook = self.cdr_webhook(raw.cdr_webhook.as_ref());
        let permissions = self.permissions(&raw.permissions);
        let schedules = self.schedules(&raw.schedule);
        let base = path.parent().unwrap_or(Path::new(""));
        let http_tls = self.http_tls(&raw.http, base);
        let apps = self.apps(&raw.app, base, &routes);
        let app_routes = self.app_routes(
            &raw.route,
            &raw.app.iter().map(|a| a.name.trim()).collect::<Vec<_>>(),
        );
        let ivrs = self.ivrs(
            &raw.ivr,
            &super::ivr::Known {
                base,
                schedules: raw.schedule.iter().map(|s| s.name.trim()).collect(),
                routes: &routes,
                raw_trunks: &raw.trunk,
                trunks: &trunks,
                listening: &transports,
                outbound_tls,
                queues: raw.queue.iter().map(|q| q.name.trim()).collect(),
                apps: raw.app.iter().map(|a| a.name.trim()).collect(),
                app_routes: &app_routes,
            },
        );
        let ivr_names: Vec<&str> = raw.ivr.iter().map(|i| i.name.trim()).collect();
        let app_names: Vec<&str> = raw.app.iter().map(|a| a.name.trim()).collect();
        let business_numbers = self.business_numbers(
            &raw.business_number,
            raw.meta.is_some(),
            &routes,
            &ivr_names,
            &app_names,
            &app_routes,
        );
        let stream = self.stream(&raw.stream);
        let recording = self.recording(
            &raw.recording,
            base,
            super::recording::SectionKeys {
                numbers: super::recording::record_keys(
                    "business_number",
                    raw.business_number
                        .iter()
                        .map(|b| (b.display_number.as_str(), b.record.as_deref())),
                ),
                routes: super::recording::record_keys(
                    "route",
                    raw.route
                        .iter()
                        .map(|r| (r.name.as_str(), r.record.as_deref())),
                ),
                queues: super::recording::record_keys(
                    "queue",
                    raw.queue
                        .iter()
                        .map(|q| (q.name.as_str(), q.record.as_deref())),
                ),
                apps: super::recording::record_keys(
                    "app",
                    raw.app
                        .iter()
                        .map(|a| (a.name.as_str(), a.record.as_deref())),
                ),
                number_routes: raw
                    .business_number
                    .iter()
                    .filter_map(|b| {
                        let route = b.route.as_deref()?.trim();
                        Some((b.display_number.trim().to_string(), route.to_string()))
                    })
                    .collect(),
            },
        );
        if let Some(i) = business_numbers
            .iter()
            .position(|b| b.signaling == super::Signaling::Sip)
        {
            let with_sip = meta.as_ref().is_some_and(|m| m.sip.is_some());
            if raw.meta.is_some() && !with_sip {
                self.problem(
                    &format!("business_number[{i}].signaling"),
                    "is \"sip\" but there is no [meta.sip] section",
                    "add [meta.sip] with the hostname configured as the number's SIP server with Meta",
                );
            }
            if transports.contains(&Transport::Tls) && !outbound_tls {
                self.problem(
                    "sip.tls.ca",
                    format!("is missing but business_number[{i}] is in SIP mode: its calls to customers go to Meta's proxy over TLS, whose certificate is checked"),
                    "set it to the CA certificates to trust, e.g. the system's bundle /etc/ssl/certs/ca-certificates.crt",
                );
            }
            if !transports.contains(&Transport::Tls) {
                self.problem(
                    &format!("business_number[{i}].signaling"),
                    "is \"sip\" but sip.transports does not list \"tls\" (Meta's SIP interface is TLS only)",
                    "add \"tls\" to sip.transports and a [sip.tls] section whose certificate covers meta.sip.hostname",
                );
            }
        }
        for (i, a) in raw.agent.iter().enumerate() {
            let Some(n) = a.business_number.as_deref() else {
                continue;
            };
            let digits = crate::number::e164_or_raw(n);
            if !business_numbers.iter().any(|b| b.display_number == digits) {
                self.problem(
                    &format!("agent[{i}].business_number"),
                    format!("{n:?} is not a [[business_number]] of this switch"),
                    "name the display_number of a [[business_number]], or leave it out (the first one)",
                );
            }
        }
        let api_tokens = self.api_tokens(
            &raw.api_token,
            raw.http.api_token.as_deref().map(str::trim),
            &business_numbers,
        );
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
                agent_page: raw
                    .http
                    .agent_page
                    .as_deref()
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map_or_else(super::http::default_agent_page, |p| base.join(p)),
                tls: http_tls?,
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
            agents,
            queues,
            api_tokens,
            sim: SimConfig {
                listen: sim_listen?,
                sip_listen: sim_sip_listen?,
            },
            cdr_webhook,
            permissions: permissions?,
            schedules,
            ivrs,
            apps,
            app_routes,
            recording: recording?,
            stream: stream?,
            clock_offset_ms: 0,
        })
    }

    pub(super) fn socket_addr(
        &mut self,
        key: &str,
        value: &str,
        example: &str,
    ) -> Option<SocketAddr> {
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

    pub(super) fn bounded(&mut self, key: &str, value: i64, min: i64, max: i64) -> Option<i64> {
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
}

impl Validator {
    /// `[[agent]]`: a SIP user name (unique), a password.
    fn agents(&mut self, raw: &[file::AgentSection]) -> Vec<AgentConfig> {
        let mut users = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (i, a) in raw.iter().enumerate() {
            let key = |field: &str| format!("agent[{i}].{field}");
            let user = a.user.trim();
            let valid = !user.is_empty()
                && user.len() <= 64
                && user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'".contains(&b));
            if !valid {
                self.problem(
                    &key("user"),
                    format!("{:?} is not a SIP user name", a.user),
                    "use 1 to 64 letters, digits and - _ . ! ~ * ' (e.g. \"alice\")",
                );
            } else if !users.insert(user.to_string()) {
                self.problem(
                    &key("user"),
                    format!("{user} is configured twice"),
                    "list each agent once",
                );
            }
            if a.password.is_empty() {
                self.problem(
                    &key("password"),
                    "is empty",
                    "give the agent's phone a password (digest; never sent in the clear)",
                );
            }
            out.push(AgentConfig {
                business_number: a.business_number.as_deref().map(crate::number::e164_or_raw),
                user: user.to_string(),
                password: Secret::new(a.password.clone()),
                display_name: a
                    .display_name
                    .as_deref()
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_string),
                queues: a.queues.iter().map(|q| q.trim().to_string()).collect(),
            });
        }
        out
    }
}

impl Validator {
    /// `[[queue]]`: a unique name, a strategy, bounded times, an overflow route that
    /// exists; every queue an agent names must exist. Members are the agents naming it.
    fn api_tokens(
        &mut self,
        raw: &[file::ApiTokenSection],
        operator: Option<&str>,
        numbers: &[super::BusinessNumber],
    ) -> Vec<super::ApiTokenConfig> {
        let mut out: Vec<super::ApiTokenConfig> = Vec::new();
        for (i, t) in raw.iter().enumerate() {
            let key = |f: &str| format!("api_token[{i}].{f}");
            let name = t.name.trim();
            if name.is_empty() {
                self.problem(&key("name"), "is missing", "name the token (its app, say)");
                continue;
            }
            let token = t.token.trim();
            if token.chars().count() < 16 {
                self.problem(
                    &key("token"),
                    "is shorter than 16 characters",
                    "use a long random token (openssl rand -hex 24)",
                );
                continue;
            }
            if operator == Some(token) || out.iter().any(|o| o.token.expose() == token) {
                self.problem(
                    &key("token"),
                    "is the same as another token",
                    "give every token its own value",
                );
                continue;
            }
            let mut ok = true;
            for (j, n) in t.business_numbers.iter().enumerate() {
                let digits = crate::number::e164_or_raw(n);
                if !numbers.iter().any(|b| b.display_number == digits) {
                    self.problem(
                        &format!("api_token[{i}].business_numbers[{j}]"),
                        format!("{n:?} is not a [[business_number]] of this switch"),
                        "name a display_number of a [[business_number]]",
                    );
                    ok = false;
                }
            }
            for (j, s) in t.scopes.iter().enumerate() {
                if !["calls", "cdrs", "permissions", "agents"].contains(&s.as_str()) {
                    self.problem(
                        &format!("api_token[{i}].scopes[{j}]"),
                        format!("{s:?} is not a scope"),
                        "use \"calls\", \"cdrs\", \"permissions\" or \"agents\"",
                    );
                    ok = false;
                }
            }
            if ok {
                out.push(super::ApiTokenConfig {
                    name: name.to_string(),
                    token: Secret::new(token),
                    business_numbers: t
                        .business_numbers
                        .iter()
                        .map(|n| crate::number::e164_or_raw(n))
                        .collect(),
                    scopes: t.scopes.clone(),
                });
            }
        }
        out
    }

    fn queues(
        &mut self,
        raw: &[file::QueueSection],
        raw_agents: &[file::AgentSection],
        agents: &[AgentConfig],
        routes: &[super::SipRoute],
    ) -> Vec<QueueConfig> {
        use crate::control::queue::Strategy;
        let mut names = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (i, q) in raw.iter().enumerate() {
            let key = |field: &str| format!("queue[{i}].{field}");
            let name = q.name.trim();
            if name.is_empty() {
                self.problem(
                    &key("name"),
                    "is empty",
                    "give every [[queue]] a unique name",
                );
            } else if !names.insert(name.to_string()) {
                self.problem(
                    &key("name"),
                    format!("{name} is configured twice"),
                    "name each queue once",
                );
            }
            let strategy = match q.strategy.trim() {
                "longest_idle" => Some(Strategy::LongestIdle),
                "round_robin" => Some(Strategy::RoundRobin),
                "ring_all" => Some(Strategy::RingAll),
                other => {
                    self.problem(
                        &key("strategy"),
                        format!("{other:?} is not a strategy"),
                        "use \"longest_idle\", \"round_robin\" or \"ring_all\"",
                    );
                    None
                }
            };
            let ring = self.bounded(&key("ring_timeout_secs"), q.ring_timeout_secs, 5, 120);
            let timeout = self.bounded(&key("timeout_secs"), q.timeout_secs, 10, 3600);
            let wrap_up = self.bounded(&key("wrap_up_secs"), q.wrap_up_secs, 0, 600);
            let service_level =
                self.bounded(&key("service_level_secs"), q.service_level_secs, 1, 600);
            let announce = match q.announce_position_secs {
                0 => Some(None),
                n => self
                    .bounded(&key("announce_position_secs"), n, 3, 600)
                    .map(|n| Some(Duration::from_secs(n as u64))),
            };
            if let Some(route) = q.overflow_route.as_deref().map(str::trim) {
                if !routes.iter().any(|r| r.name == route) {
                    let known: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
                    self.problem(
                        &key("overflow_route"),
                        format!("there is no route {route:?}"),
                        if known.is_empty() {
                            "add the [[route]] callers overflow to, or leave the key out"
                                .to_string()
                        } else {
                            format!("use one of: {}", known.join(", "))
                        },
                    );
                }
            }
            let (
                Some(strategy),
                Some(ring),
                Some(timeout),
                Some(wrap_up),
                Some(service_level),
                Some(announce_position),
            ) = (strategy, ring, timeout, wrap_up, service_level, announce)
            else {
                continue;
            };
            out.push(QueueConfig {
                name: name.to_string(),
                strategy,
                ring_timeout: Duration::from_secs(ring as u64),
                timeout: Duration::from_secs(timeout as u64),
                wrap_up: Duration::from_secs(wrap_up as u64),
                service_level: Duration::from_secs(service_level as u64),
                announce_position,
                overflow_route: q
                    .overflow_route
                    .as_deref()
                    .map(str::trim)
                    .map(str::to_string),
                members: agents
                    .iter()
                    .filter(|a| a.queues.iter().any(|n| n == name))
                    .map(|a| a.user.clone())
                    .collect(),
            });
        }
        for (i, a) in raw_agents.iter().enumerate() {
            for (j, q) in a.queues.iter().enumerate() {
                if !raw.iter().any(|r| r.name.trim() == q.trim()) {
                    self.problem(
                        &format!("agent[{i}].queues[{j}]"),
                        format!("there is no queue {q:?}"),
                        "add a [[queue]] with that name, or remove it from the agent's queues",
                    );
                }
            }
        }
        out
    }
}
