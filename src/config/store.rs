//! `[store]` and `[cdr_webhook]`: where the system of record lives, and where each CDR is
//! also sent.

use std::fmt;
use std::time::Duration;

use super::{file, Secret, Validator};

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

impl Validator {
    pub(super) fn cdr_webhook(
        &mut self,
        raw: Option<&file::CdrWebhookSection>,
    ) -> Option<CdrWebhookConfig> {
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

    pub(super) fn store_url(&mut self, url: &str) -> Option<StoreUrl> {
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
}
