//! `[http]`: the HTTP listener (webhooks, REST API, health and metrics) and the limits
//! it reads requests under.

use std::net::SocketAddr;
use std::time::Duration;

use super::{file, Secret, Validator};

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
    /// The built agent page served at `/agent` (`web/agent/dist` of the source tree unless
    /// configured; relative paths start at the configuration file's directory).
    pub agent_page: std::path::PathBuf,
    /// HTTPS: the PEM certificate chain and key (`None`: plain HTTP). With it, browser
    /// phones connect over WSS at `/sip`, and the agent page is a secure context (browsers
    /// give the microphone only to those, localhost aside).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Where the agent page is built in the source tree.
pub(super) fn default_agent_page() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/agent/dist")
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

impl Validator {
    /// `http.tls_cert` and `http.tls_key`: both or neither, and both must load.
    pub(super) fn http_tls(
        &mut self,
        raw: &file::HttpSection,
        base: &std::path::Path,
    ) -> Option<Option<(std::path::PathBuf, std::path::PathBuf)>> {
        let (cert, key) = match (&raw.tls_cert, &raw.tls_key) {
            (None, None) => return Some(None),
            (Some(c), Some(k)) => (base.join(c.trim()), base.join(k.trim())),
            (Some(_), None) | (None, Some(_)) => {
                let missing = if raw.tls_cert.is_none() {
                    "http.tls_cert"
                } else {
                    "http.tls_key"
                };
                self.problem(
                    missing,
                    "is missing",
                    "give both http.tls_cert and http.tls_key (PEM files) for HTTPS, or neither",
                );
                return None;
            }
        };
        let mut ok = true;
        if let Err(e) = crate::sip::transport::tls::load_certs(&cert) {
            self.problem(
                "http.tls_cert",
                format!("{}: {e}", cert.display()),
                "give the path of a PEM file with the certificate chain",
            );
            ok = false;
        }
        if let Err(e) = crate::sip::transport::tls::load_key(&key) {
            self.problem(
                "http.tls_key",
                format!("{}: {e}", key.display()),
                "give the path of a PEM file with the certificate's private key",
            );
            ok = false;
        }
        ok.then_some(Some((cert, key)))
    }

    pub(super) fn http_limits(
        &mut self,
        raw: &file::HttpSection,
    ) -> Option<(HttpLimits, WebhookLimits)> {
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
}
