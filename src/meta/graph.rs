//! The Graph API client: call actions, call permissions, the permission-request message and
//! the number's calling settings.
//!
//! One pooled HTTPS client (rustls) per node. Every request has a time limit. Reads are
//! retried with jittered exponential backoff on transport errors, timeouts, 429 and 5xx.
//! Call actions other than `connect` are retried only when Meta certainly did not act on the
//! first request (no connection, 429, 503): after a timeout or another 5xx it may have, and a
//! repeated `accept` would fail on a call that was in fact accepted. `connect` and sending a
//! message are never repeated. All retries of one request stay within three time limits.
//! Meta's error bodies become [`GraphError::Meta`] with code, subcode, message and
//! `fbtrace_id`.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::{MetaConfig, Secret};
use crate::telemetry;

/// The longest text message Meta takes, in characters.
pub const MAX_TEXT: usize = 4096;
/// First retry delay; doubled per attempt, with ±50% jitter.
const BACKOFF: Duration = Duration::from_millis(200);

/// Why a Graph API request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Meta answered with an error body.
    #[error("Meta error {code} (HTTP {status}): {message}")]
    Meta {
        /// HTTP status.
        status: u16,
        /// Meta's code (e.g. 138006: no approved call permission).
        code: i64,
        /// Meta's subcode, if any.
        subcode: Option<i64>,
        /// Message.
        message: String,
        /// `error_data.details`.
        details: Option<String>,
        /// For Meta's support.
        fbtrace_id: Option<String>,
    },
    /// Meta answered an HTTP error without an error body (a proxy, an outage).
    #[error("HTTP {status} from the Graph API")]
    Http {
        /// HTTP status.
        status: u16,
    },
    /// No answer within the time limit.
    #[error("the Graph API did not answer in time")]
    Timeout,
    /// No connection could be made (DNS, TCP, TLS): the request was not sent.
    #[error("cannot reach the Graph API: {0}")]
    Unreachable(String),
    /// The connection failed after the request may have been sent.
    #[error("the Graph API connection failed: {0}")]
    Transport(String),
    /// A success answer that does not say what it should.
    #[error("unexpected Graph API answer: {0}")]
    Decode(String),
    /// A request not sent because its input is invalid (e.g. a user number with letters).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl GraphError {
    /// Meta's error code, if Meta gave one.
    pub fn code(&self) -> Option<i64> {
        match self {
            GraphError::Meta { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether Meta certainly did not act on the request: no connection was made, or it
    /// answered 429 (rate limited) or 503 (unavailable).
    pub fn unprocessed(&self) -> bool {
        match self {
            GraphError::Unreachable(_) => true,
            GraphError::Meta { status, .. } | GraphError::Http { status } => {
                *status == 429 || *status == 503
            }
            _ => false,
        }
    }

    /// Whether Meta certainly did not carry the request out: it was not processed
    /// ([`unprocessed`](Self::unprocessed)), never sent (invalid), or refused with a
    /// client error (4xx: no permission, not a WhatsApp user, a call already up, ...).
    pub fn not_carried_out(&self) -> bool {
        match self {
            GraphError::Meta { status, .. } | GraphError::Http { status } => {
                (400..500).contains(status) || *status == 503
            }
            GraphError::Invalid(_) => true,
            other => other.unprocessed(),
        }
    }

    /// Whether repeating the same request may succeed.
    pub fn transient(&self) -> bool {
        match self {
            GraphError::Meta { status, .. } | GraphError::Http { status } => {
                *status == 429 || *status >= 500
            }
            GraphError::Timeout | GraphError::Transport(_) | GraphError::Unreachable(_) => true,
            GraphError::Decode(_) | GraphError::Invalid(_) => false,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            GraphError::Meta { .. } | GraphError::Http { .. } => "error",
            GraphError::Timeout => "timeout",
            GraphError::Transport(_) | GraphError::Unreachable(_) => "transport",
            GraphError::Decode(_) => "decode",
            GraphError::Invalid(_) => "invalid",
        }
    }
}

/// A call action on `POST /<PHONE_NUMBER_ID>/calls`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallAction {
    /// Start a business-initiated call with our SDP offer.
    Connect {
        /// The user's number.
        to: String,
        /// Our offer.
        sdp: String,
        /// Tracking string echoed in webhooks (at most 512 characters).
        biz_opaque_callback_data: Option<String>,
    },
    /// Answer a user's call early, so ICE and DTLS come up while the business side rings.
    PreAccept {
        /// Meta's call id.
        call_id: String,
        /// Our answer.
        sdp: String,
    },
    /// Answer a user's call (the same SDP as the pre-accept, if any).
    Accept {
        /// Meta's call id.
        call_id: String,
        /// Our answer.
        sdp: String,
        /// Tracking string echoed in the terminate webhook.
        biz_opaque_callback_data: Option<String>,
    },
    /// Decline a user's call.
    Reject {
        /// Meta's call id.
        call_id: String,
    },
    /// End a call.
    Terminate {
        /// Meta's call id.
        call_id: String,
    },
}

impl CallAction {
    /// The action's name in Meta's API.
    pub fn name(&self) -> &'static str {
        match self {
            CallAction::Connect { .. } => "connect",
            CallAction::PreAccept { .. } => "pre_accept",
            CallAction::Accept { .. } => "accept",
            CallAction::Reject { .. } => "reject",
            CallAction::Terminate { .. } => "terminate",
        }
    }

    /// Whether repeating it cannot do anything twice: all but `connect`, which would place
    /// a second call.
    pub fn idempotent(&self) -> bool {
        !matches!(self, CallAction::Connect { .. })
    }

    fn repeat(&self) -> Repeat {
        if self.idempotent() {
            Repeat::IfUnprocessed
        } else {
            Repeat::Never
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = json!({"messaging_product": "whatsapp", "action": self.name()});
        let sdp = |kind: &str, sdp: &str| json!({"sdp_type": kind, "sdp": sdp});
        match self {
            CallAction::Connect {
                to,
                sdp: s,
                biz_opaque_callback_data,
            } => {
                body["to"] = json!(to);
                body["session"] = sdp("offer", s);
                if let Some(o) = biz_opaque_callback_data {
                    body["biz_opaque_callback_data"] = json!(o);
                }
            }
            CallAction::PreAccept { call_id, sdp: s } => {
                body["call_id"] = json!(call_id);
                body["session"] = sdp("answer", s);
            }
            CallAction::Accept {
                call_id,
                sdp: s,
                biz_opaque_callback_data,
            } => {
                body["call_id"] = json!(call_id);
                body["session"] = sdp("answer", s);
                if let Some(o) = biz_opaque_callback_data {
                    body["biz_opaque_callback_data"] = json!(o);
                }
            }
            CallAction::Reject { call_id } | CallAction::Terminate { call_id } => {
                body["call_id"] = json!(call_id);
            }
        }
        body
    }
}

/// A user's call permission, from `GET /<PHONE_NUMBER_ID>/call_permissions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallPermission {
    /// `no_permission`, `temporary` or `permanent` (other values kept as given).
    pub status: String,
    /// Expiry of a temporary permission, Unix seconds.
    pub expires_at: Option<u64>,
    /// Whether a permission request may be sent now (all limits considered).
    pub can_request: Option<bool>,
    /// Whether a call may be placed now (all limits considered).
    pub can_call: Option<bool>,
}

/// Whether `url` is HTTPS to one of the hosts Meta serves media from.
fn meta_media_host(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = authority
        .split(':')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    META_MEDIA_DOMAINS
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

/// The domains Meta serves media (recordings, transcripts) from.
const META_MEDIA_DOMAINS: &[&str] = &[
    "fbsbx.com",
    "facebook.com",
    "fbcdn.net",
    "whatsapp.net",
    "whatsapp.com",
];

/// How long fetching one media file (a call's recording) may take.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(300);

/// The Graph API client of one node.
#[derive(Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
    max_attempts: u32,
    request_timeout: Duration,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// A client for the configured Graph API.
    pub fn new(config: &MetaConfig) -> Result<GraphClient, GraphError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("waswitch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GraphError::Transport(e.to_string()))?;
        Ok(GraphClient {
            http,
            base: format!("{}/{}", config.graph_url, config.api_version),
            token: config.access_token.clone(),
            max_attempts: config.max_attempts.max(1),
            request_timeout: config.request_timeout,
        })
    }

    /// The longest one request may take, retries included (attempts stop being started
    /// after three request timeouts; the last one may run its own full timeout).
    pub fn longest_request(&self) -> Duration {
        4 * self.request_timeout
    }

    /// Runs a call action for business number `phone_number_id`. `connect` returns Meta's
    /// new call id; the others `None`.
    pub async fn call_action(
        &self,
        phone_number_id: &str,
        action: &CallAction,
    ) -> Result<Option<String>, GraphError> {
        let url = format!("{}/{}/calls", self.base, phone_number_id);
        let answer = self
            .request(
                action.name(),
                action.repeat(),
                Method::Post(action.body()),
                &url,
            )
            .await?;
        match action {
            CallAction::Connect { .. } => answer
                .pointer("/calls/0/id")
                .and_then(Value::as_str)
                .map(|id| Some(id.to_string()))
                .ok_or_else(|| GraphError::Decode("connect answered without a call id".into())),
            _ => match answer.get("success").and_then(Value::as_bool) {
                Some(false) => Err(GraphError::Decode(format!(
                    "{} answered success=false",
                    action.name()
                ))),
                _ => Ok(None),
            },
        }
    }

    /// The call permission of user `wa_id` toward business number `phone_number_id`.
    pub async fn call_permission(
        &self,
        phone_number_id: &str,
        wa_id: &str,
    ) -> Result<CallPermission, GraphError> {
        if wa_id.is_empty() || !wa_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(GraphError::Invalid(format!(
                "{wa_id:?} is not a WhatsApp number (digits, no '+')"
            )));
        }
        let url = format!(
            "{}/{}/call_permissions?user_wa_id={}",
            self.base, phone_number_id, wa_id
        );
        let v = self
            .request("call_permissions", Repeat::Always, Method::Get, &url)
            .await?;
        let permission = v.get("permission").ok_or_else(|| {
            GraphError::Decode("call_permissions answered without a permission".into())
        })?;
        let status = permission
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("no_permission")
            .to_string();
        // Meta's sample says expiration_time, its table expiration: both are read.
        let expires_at =
            ["expiration_time", "expiration"]
                .iter()
                .find_map(|k| match permission.get(*k) {
                    Some(Value::Number(n)) => n.as_u64(),
                    Some(Value::String(s)) => s.parse().ok(),
                    _ => None,
                });
        let can = |name: &str| {
            v.get("actions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|a| a.get("action_name").and_then(Value::as_str) == Some(name))
                .and_then(|a| a.get("can_perform_action"))
                .and_then(Value::as_bool)
        };
        Ok(CallPermission {
            status,
            expires_at,
            can_request: can("send_call_permission_request"),
            can_call: can("start_call"),
        })
    }

    /// Sends the free-form call-permission request message to `to`, with `text` explaining
    /// why the business wants to call; returns the message id (`wamid.…`). Not retried: a
    /// retry could send the user the request twice.
    pub async fn send_permission_request(
        &self,
        phone_number_id: &str,
        to: &str,
        text: &str,
    ) -> Result<String, GraphError> {
        let interactive = json!({
            "type": "call_permission_request",
            "action": {"name": "call_permission_request"},
            "body": {"text": text},
        });
        self.send_message(
            "permission_request",
            phone_number_id,
            to,
            "interactive",
            interactive,
        )
        .await
    }

    /// Sends an approved message template that carries a `call_permission_request`
    /// component (usable outside the customer-service window) to `to`, with `parameters`
    /// for its body; returns the message id. Not retried, like the free-form request.
    pub async fn send_permission_template(
        &self,
        phone_number_id: &str,
        to: &str,
        name: &str,
        language: &str,
        parameters: &[String],
    ) -> Result<String, GraphError> {
        let mut template = json!({"name": name, "language": {"code": language}});
        if !parameters.is_empty() {
            let params: Vec<Value> = parameters
                .iter()
                .map(|p| json!({"type": "text", "text": p}))
                .collect();
            template["components"] = json!([{"type": "body", "parameters": params}]);
        }
        self.send_message(
            "permission_request",
            phone_number_id,
            to,
            "template",
            template,
        )
        .await
    }

    /// Sends the text message `text` to `to` (a caller's chat fallback: "we are closed,
    /// write to us here"); returns the message id. Meta takes at most
    /// [`MAX_TEXT`] characters. Never retried: a retry could send it twice.
    pub async fn send_text(
        &self,
        phone_number_id: &str,
        to: &str,
        text: &str,
    ) -> Result<String, GraphError> {
        let content = json!({"preview_url": false, "body": text});
        self.send_message("message", phone_number_id, to, "text", content)
            .await
    }

    /// Sends the approved template `name` in `language` (no parameters) to `to`: the chat
    /// fallback outside the customer-service window. Never retried.
    pub async fn send_template(
        &self,
        phone_number_id: &str,
        to: &str,
        name: &str,
        language: &str,
    ) -> Result<String, GraphError> {
        let content = json!({"name": name, "language": {"code": language}});
        self.send_message("message", phone_number_id, to, "template", content)
            .await
    }

    /// Posts a message of `kind` (`text`, `interactive`, `template`) with its `content` to
    /// `to`, counted as `action`, and returns its id. Never retried: a retry could send the
    /// user the message twice.
    async fn send_message(
        &self,
        action: &'static str,
        phone_number_id: &str,
        to: &str,
        kind: &str,
        content: Value,
    ) -> Result<String, GraphError> {
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": kind,
        });
        body[kind] = content;
        let url = format!("{}/{}/messages", self.base, phone_number_id);
        let v = self
            .request(action, Repeat::Never, Method::Post(body), &url)
            .await?;
        v.pointer("/messages/0/id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| GraphError::Decode("messages answered without a message id".into()))
    }

    /// The number's `calling` settings, as Meta returns them.
    pub async fn calling_settings(&self, phone_number_id: &str) -> Result<Value, GraphError> {
        self.calling_settings_with(phone_number_id, false).await
    }

    /// The number's `calling` settings; with `sip_credentials`, each SIP server's
    /// `sip_user_password` too (Meta's `include_sip_credentials=true`).
    pub async fn calling_settings_with(
        &self,
        phone_number_id: &str,
        sip_credentials: bool,
    ) -> Result<Value, GraphError> {
        let mut url = format!("{}/{}/settings", self.base, phone_number_id);
        if sip_credentials {
            url.push_str("?include_sip_credentials=true");
        }
        let v = self
            .request("get_settings", Repeat::Always, Method::Get, &url)
            .await?;
        v.get("calling")
            .cloned()
            .ok_or_else(|| GraphError::Decode("settings answered without calling".into()))
    }

    /// Replaces the number's `calling` settings with `calling`.
    pub async fn update_calling_settings(
        &self,
        phone_number_id: &str,
        calling: Value,
    ) -> Result<(), GraphError> {
        let url = format!("{}/{}/settings", self.base, phone_number_id);
        self.request(
            "update_settings",
            Repeat::IfUnprocessed,
            Method::Post(json!({"calling": calling})),
            &url,
        )
        .await
        .map(|_| ())
    }

    /// Fetches media Meta announced (a call's recording or transcript) from `url` with the
    /// access token into the file `to`: its size. The token goes only over HTTPS, or to the
    /// configured Graph API's own origin (an emulator on loopback). At most `max_bytes`.
    pub async fn fetch_media(
        &self,
        url: &str,
        to: &std::path::Path,
        max_bytes: u64,
    ) -> Result<u64, String> {
        let origin = |u: &str| -> Option<String> {
            let (scheme, rest) = u.split_once("://")?;
            let host = rest.split('/').next()?;
            Some(format!("{scheme}://{host}"))
        };
        let ours = origin(&self.base) == origin(url);
        if !(ours || meta_media_host(url)) {
            return Err(format!(
                "{url:?} is neither one of Meta's media hosts over HTTPS nor the Graph API's origin: the access token is not sent there"
            ));
        }
        let mut response = self
            .http
            .get(url)
            .bearer_auth(self.token.expose())
            .timeout(MEDIA_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        metrics::counter!(telemetry::META_API_REQUESTS_TOTAL, "action" => "media", "outcome" => if status.is_success() { "ok" } else { "error" })
            .increment(1);
        if !status.is_success() {
            return Err(format!("Meta answered {status}"));
        }
        let mut file = tokio::fs::File::create(to)
            .await
            .map_err(|e| format!("{}: {e}", to.display()))?;
        let mut total = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            total += chunk.len() as u64;
            if total > max_bytes {
                return Err(format!("larger than {max_bytes} bytes"));
            }
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(|e| format!("{}: {e}", to.display()))?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| format!("{}: {e}", to.display()))?;
        file.sync_all()
            .await
            .map_err(|e| format!("{}: {e}", to.display()))?;
        Ok(total)
    }

    async fn request(
        &self,
        action: &'static str,
        repeat: Repeat,
        method: Method,
        url: &str,
    ) -> Result<Value, GraphError> {
        let attempts = match repeat {
            Repeat::Never => 1,
            _ => self.max_attempts,
        };
        let give_up = Instant::now() + 3 * self.request_timeout;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result = self.once(&method, url).await;
            metrics::histogram!(telemetry::META_API_LATENCY_SECONDS, "action" => action)
                .record(started.elapsed().as_secs_f64());
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            };
            metrics::counter!(telemetry::META_API_REQUESTS_TOTAL, "action" => action, "outcome" => outcome)
                .increment(1);
            let again = |e: &GraphError| match repeat {
                Repeat::Never => false,
                Repeat::Always => e.transient(),
                Repeat::IfUnprocessed => e.unprocessed(),
            };
            match result {
                Err(e)
                    if again(&e)
                        && attempt < attempts
                        && Instant::now() + backoff_ceiling(attempt) < give_up =>
                {
                    let wait = backoff(attempt);
                    tracing::warn!(action, attempt, error = %e, wait_ms = wait.as_millis() as u64, "Graph API request retried");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    tracing::warn!(action, attempt, error = %e, "Graph API request failed");
                    return Err(e);
                }
                Ok(v) => return Ok(v),
            }
        }
    }

    async fn once(&self, method: &Method, url: &str) -> Result<Value, GraphError> {
        let builder = match method {
            Method::Get => self.http.get(url),
            Method::Post(body) => self.http.post(url).json(body),
        };
        let response = builder
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport)?;
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        if (200..300).contains(&status) {
            return body
                .ok_or_else(|| GraphError::Decode("a success answer that is not JSON".into()));
        }
        match body.as_ref().and_then(|b| b.get("error")) {
            Some(e) => Err(GraphError::Meta {
                status,
                code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                subcode: e.get("error_subcode").and_then(Value::as_i64),
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                details: e
                    .pointer("/error_data/details")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                fbtrace_id: e
                    .get("fbtrace_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            }),
            None => Err(GraphError::Http { status }),
        }
    }
}

/// When a request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Never: it could do its work twice.
    Never,
    /// Only if Meta certainly did not act on it.
    IfUnprocessed,
    /// On any transient failure (reads).
    Always,
}

#[derive(Debug)]
enum Method {
    Get,
    Post(Value),
}

fn transport(e: reqwest::Error) -> GraphError {
    if e.is_connect() {
        GraphError::Unreachable(e.to_string())
    } else if e.is_timeout() {
        GraphError::Timeout
    } else {
        GraphError::Transport(e.to_string())
    }
}

/// The longest wait before retry `attempt`.
fn backoff_ceiling(attempt: u32) -> Duration {
    BACKOFF * (1u32 << attempt.saturating_sub(1).min(6)) * 3 / 2
}

/// The wait before retry `attempt` (1-based): 200 ms doubling, ±50% at random, so many
/// nodes retrying after one outage do not arrive together.
fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF.as_millis() as u64 * (1u64 << attempt.saturating_sub(1).min(6));
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let jitter = random % (base + 1);
    Duration::from_millis(base / 2 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_metas_shapes() {
        let accept = CallAction::Accept {
            call_id: "wacid.1".into(),
            sdp: "v=0\r\n".into(),
            biz_opaque_callback_data: Some("t-1".into()),
        };
        assert_eq!(
            accept.body(),
            json!({"messaging_product": "whatsapp", "action": "accept", "call_id": "wacid.1",
                   "session": {"sdp_type": "answer", "sdp": "v=0\r\n"},
                   "biz_opaque_callback_data": "t-1"})
        );
        let connect = CallAction::Connect {
            to: "14085551234".into(),
            sdp: "v=0\r\n".into(),
            biz_opaque_callback_data: None,
        };
        assert_eq!(connect.body()["session"]["sdp_type"], "offer");
        assert!(!connect.idempotent());
        assert!(CallAction::Terminate {
            call_id: "x".into()
        }
        .idempotent());
    }

    #[test]
    fn backoff_doubles_with_jitter_within_bounds() {
        for attempt in 1..=4u32 {
            let base = 200u64 << (attempt - 1);
            for _ in 0..50 {
                let ms = backoff(attempt).as_millis() as u64;
                assert!(
                    (base / 2..=base / 2 + base).contains(&ms),
                    "{attempt}: {ms}"
                );
            }
        }
    }
}

#[cfg(test)]
mod media_host_tests {
    use super::meta_media_host;

    #[test]
    fn the_token_goes_only_to_metas_media_hosts_over_https() {
        assert!(meta_media_host(
            "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1"
        ));
        assert!(meta_media_host("https://mmg.whatsapp.net:443/v/t62/x"));
        assert!(
            !meta_media_host("http://lookaside.fbsbx.com/x"),
            "not over HTTPS"
        );
        assert!(!meta_media_host("https://fbsbx.com.evil.example/x"));
        assert!(!meta_media_host("https://evilfbsbx.com/x"));
        assert!(!meta_media_host(
            "https://lookaside.fbsbx.com@evil.example/x"
        ));
        assert!(!meta_media_host("https://example.com/?u=fbsbx.com"));
    }
}
