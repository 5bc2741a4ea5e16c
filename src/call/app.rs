//! HTTP voice applications (`[[app]]`): the business's web service tells the switch what
//! to do with each call, in the verbs the IVR speaks.
//!
//! The call's [`IvrActor`](super::ivr::IvrActor) runs the verbs; this module is its client
//! of the app:
//! - [`App::verbs`] POSTs a signed event (`call.initiated`, a gather's input to its
//!   `action`, a `redirect`) and reads the answer: verbs, checked and compiled
//!   ([`control::app`](crate::control::app)), with every prompt they play fetched (URLs,
//!   once per app, size and type checked and decoded) or loaded (the app's prompt files)
//!   before any of them runs, all within the app's `timeout_ms`.
//! - [`App::notify`] posts the later events (`call.answered`, `gather.completed`,
//!   `recording.ready`, `call.ended`) on the app's own queue, in order, retried with
//!   backoff; no call waits for them.
//!
//! Requests are signed as the CDR webhook's: `X-Waswitch-Timestamp` and
//! `X-Waswitch-Signature: sha256=<HMAC-SHA256 of "<timestamp>.<body>">`, keyed with the
//! app's secret.
//!
//! An app that times out, answers other than 2xx, answers something that is not JSON, or
//! verbs that do not check is an [`AppError`]: the call goes to the app's fallback, and the
//! error goes in the CDR and in `waswitch_app_requests_total`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::{AppConfig, CdrWebhookConfig};
use crate::control::app::{self as verbs, Names};
use crate::control::verb::{Destination, Message, Node, Script, Verb};
use crate::media::prompt::Prompt;
use crate::telemetry;

/// Prompts fetched from URLs kept per app (beyond, the oldest go).
pub const PROMPT_CACHE: usize = 256;
/// The largest answer an app may give (its verbs).
pub const MAX_ANSWER: usize = 256 * 1024;
/// Audio content types a prompt URL may serve (parameters aside).
const AUDIO_TYPES: [&str; 7] = [
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/vnd.wave",
    "audio/ogg",
    "audio/opus",
    "application/ogg",
];

/// Why an app gave no verbs to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// No answer within `timeout_ms`.
    #[error("the app did not answer within {0} ms")]
    Timeout(u64),
    /// The app could not be reached.
    #[error("the app is unreachable: {0}")]
    Unreachable(String),
    /// The app answered with an error status.
    #[error("the app answered HTTP {0}")]
    Status(u16),
    /// The answer is not JSON.
    #[error("the app's answer is not JSON: {0}")]
    InvalidJson(String),
    /// The verbs do not check.
    #[error("the app's verbs are invalid: {0}")]
    Verbs(String),
    /// A prompt cannot be played.
    #[error("prompt {prompt}: {why}")]
    Prompt {
        /// The prompt's URL or file name.
        prompt: String,
        /// Why.
        why: String,
    },
}

impl AppError {
    /// The `outcome` label of `waswitch_app_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            AppError::Timeout(_) => "timeout",
            AppError::Unreachable(_) => "unreachable",
            AppError::Status(c) if *c < 500 => "http_4xx",
            AppError::Status(_) => "http_5xx",
            AppError::InvalidJson(_) => "invalid_json",
            AppError::Verbs(_) => "invalid_verbs",
            AppError::Prompt { .. } => "prompt",
        }
    }
}

/// Verbs to run, and the prompts they play, ready.
#[derive(Debug, Clone)]
pub struct Verbs {
    /// The verbs, as a script.
    pub script: Arc<Script>,
    /// Every prompt the verbs name, by the name they use.
    pub prompts: HashMap<String, Prompt>,
    /// When they were ready to run.
    pub ready_at: Instant,
}

/// What apps' verbs may name on this switch.
#[derive(Debug, Clone, Default)]
pub struct AppNames {
    /// Routes.
    pub routes: HashSet<String>,
    /// Trunks.
    pub trunks: HashSet<String>,
    /// Queues.
    pub queues: HashSet<String>,
    /// Routes an app drives: route → app.
    pub app_routes: HashMap<String, String>,
}

impl Names for AppNames {
    fn route(&self, name: &str) -> bool {
        self.routes.contains(name)
    }
    fn trunk(&self, name: &str) -> bool {
        self.trunks.contains(name)
    }
    fn queue(&self, name: &str) -> bool {
        self.queues.contains(name)
    }
    fn app_route(&self, name: &str) -> Option<String> {
        self.app_routes.get(name).cloned()
    }
}

/// Prompts fetched from URLs, in the order they were first asked for (the oldest goes
/// first). Each is fetched once: calls asking for one being fetched wait for it (a failed
/// fetch is tried again by the next).
#[derive(Default)]
struct PromptCache {
    by_url: HashMap<String, Arc<tokio::sync::OnceCell<Prompt>>>,
    order: std::collections::VecDeque<String>,
}

/// One app: its settings, HTTP client, event queue and prompt cache.
pub struct App {
    /// Its settings.
    pub config: AppConfig,
    http: reqwest::Client,
    events: mpsc::Sender<Value>,
    cache: Mutex<PromptCache>,
    names: Arc<AppNames>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.config.name)
            .field("url", &self.config.url)
            .finish()
    }
}

/// The node's apps by name.
#[derive(Debug, Clone, Default)]
pub struct Apps(Arc<HashMap<String, Arc<App>>>);

impl Apps {
    /// Starts every app's event sender (within a tokio runtime).
    pub fn start(configs: &[AppConfig], names: AppNames) -> Result<Apps, String> {
        let names = Arc::new(names);
        let mut out = HashMap::new();
        for config in configs {
            // Every app's series from the start, so rates and alerts work before its first
            // call.
            for outcome in [
                "ok",
                "timeout",
                "unreachable",
                "http_4xx",
                "http_5xx",
                "invalid_json",
                "invalid_verbs",
                "prompt",
            ] {
                metrics::counter!(telemetry::APP_REQUESTS_TOTAL, "app" => config.name.clone(), "outcome" => outcome)
                    .increment(0);
            }
            let _ =
                metrics::histogram!(telemetry::APP_LATENCY_SECONDS, "app" => config.name.clone());
            let _ = metrics::histogram!(telemetry::APP_VERBS_START_SECONDS, "app" => config.name.clone());
            out.insert(
                config.name.clone(),
                Arc::new(App::start(config.clone(), Arc::clone(&names))?),
            );
        }
        Ok(Apps(Arc::new(out)))
    }

    /// The app by that name.
    pub fn get(&self, name: &str) -> Option<&Arc<App>> {
        self.0.get(name)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Their names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

impl App {
    fn start(config: AppConfig, names: Arc<AppNames>) -> Result<App, String> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("waswitch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("app {:?}: {e}", config.name))?;
        let events = crate::store::webhook::start_events(
            CdrWebhookConfig {
                url: config.url.clone(),
                secret: config.secret.clone(),
                timeout: config.timeout.max(Duration::from_secs(2)),
                max_attempts: config.event_attempts,
            },
            telemetry::APP_EVENTS_TOTAL,
        )
        .map_err(|e| format!("app {:?}: {e}", config.name))?;
        Ok(App {
            config,
            http,
            events,
            cache: Mutex::new(PromptCache::default()),
            names,
        })
    }

    /// Posts a later event (it carries `event` and `call_id`); never waits. A full queue
    /// drops it, counted.
    pub fn notify(&self, mut event: Value) {
        if let Some(o) = event.as_object_mut() {
            o.entry("app")
                .or_insert_with(|| Value::String(self.config.name.clone()));
            o.entry("timestamp_ms")
                .or_insert_with(|| crate::clock::now_ms().into());
        }
        if self.events.try_send(event).is_err() {
            tracing::warn!(app = %self.config.name, "app event dropped: its queue is full");
            metrics::counter!(telemetry::APP_EVENTS_TOTAL, "outcome" => "dropped").increment(1);
        }
    }

    /// POSTs `event`, signed, to `url` and returns the verbs the app answers with, checked,
    /// their prompts ready; within the app's timeout, counted by outcome.
    pub async fn verbs(&self, url: &str, mut event: Value) -> Result<Verbs, AppError> {
        if let Some(o) = event.as_object_mut() {
            o.insert("app".into(), Value::String(self.config.name.clone()));
            o.insert("timestamp_ms".into(), crate::clock::now_ms().into());
        }
        let started = Instant::now();
        let limit = self.config.timeout;
        let result = match tokio::time::timeout(limit, self.ask(url, &event)).await {
            Ok(r) => r,
            Err(_) => Err(AppError::Timeout(limit.as_millis() as u64)),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        metrics::counter!(telemetry::APP_REQUESTS_TOTAL, "app" => self.config.name.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(telemetry::APP_LATENCY_SECONDS, "app" => self.config.name.clone())
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn ask(&self, url: &str, event: &Value) -> Result<Verbs, AppError> {
        let body = serde_json::to_vec(event).map_err(|e| AppError::InvalidJson(e.to_string()))?;
        let response = crate::store::webhook::signed(
            self.http.post(url).header("accept", "application/json"),
            self.config.secret.expose().as_bytes(),
            body,
        )
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                AppError::Timeout(self.config.timeout.as_millis() as u64)
            } else {
                AppError::Unreachable(e.to_string())
            }
        })?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(AppError::Status(status));
        }
        let bytes = read_limited(response, MAX_ANSWER as u64)
            .await
            .map_err(AppError::InvalidJson)?;
        let json: Value =
            serde_json::from_slice(&bytes).map_err(|e| AppError::InvalidJson(e.to_string()))?;
        self.check(&json).await
    }

    /// Verbs given as JSON (the REST API's), checked, their prompts ready, within the
    /// app's timeout.
    pub async fn prepare(&self, json: &Value) -> Result<Verbs, AppError> {
        let limit = self.config.timeout;
        tokio::time::timeout(limit, self.check(json))
            .await
            .unwrap_or(Err(AppError::Timeout(limit.as_millis() as u64)))
    }

    /// Verbs checked and their prompts fetched (the caller bounds the time).
    async fn check(&self, json: &Value) -> Result<Verbs, AppError> {
        let script = verbs::compile(json, self.names.as_ref())
            .map_err(|e| AppError::Verbs(e.to_string()))?;
        // Fetched together: the slowest prompt, not their sum, counts against the timeout.
        let fetches = verbs::prompts(&script).into_iter().map(|name| async move {
            self.prompt(name)
                .await
                .map(|prompt| (name.to_string(), prompt))
                .map_err(|why| AppError::Prompt {
                    prompt: name.to_string(),
                    why,
                })
        });
        let prompts: HashMap<String, Prompt> = futures::future::try_join_all(fetches)
            .await?
            .into_iter()
            .collect();
        Ok(Verbs {
            script: Arc::new(script),
            prompts,
            ready_at: Instant::now(),
        })
    }

    /// A prompt by URL (cached) or by file name (the app's prompt directory).
    async fn prompt(&self, name: &str) -> Result<Prompt, String> {
        if !verbs::is_url(name) {
            return self.prompt_file(name).await;
        }
        let cell = self.cache_cell(name);
        cell.get_or_try_init(|| self.fetch_prompt(name))
            .await
            .cloned()
    }

    /// The cache's place for the prompt at `url` (the oldest place goes when full).
    fn cache_cell(&self, url: &str) -> Arc<tokio::sync::OnceCell<Prompt>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cell) = cache.by_url.get(url) {
            return Arc::clone(cell);
        }
        if cache.by_url.len() >= PROMPT_CACHE {
            if let Some(old) = cache.order.pop_front() {
                if cache.by_url.remove(&old).is_some() {
                    metrics::gauge!(telemetry::STATE_ENTRIES, "table" => "app_prompts")
                        .decrement(1.0);
                }
            }
        }
        let cell = Arc::new(tokio::sync::OnceCell::new());
        cache.by_url.insert(url.to_string(), Arc::clone(&cell));
        // Every app's cache, summed (each at most PROMPT_CACHE prompts).
        metrics::gauge!(telemetry::STATE_ENTRIES, "table" => "app_prompts").increment(1.0);
        cache.order.push_back(url.to_string());
        cell
    }

    /// Fetches the prompt at `name` (a URL): its size, type and audio checked.
    async fn fetch_prompt(&self, name: &str) -> Result<Prompt, String> {
        let response = self
            .http
            .get(name)
            .send()
            .await
            .map_err(|e| format!("cannot be fetched: {e}"))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(format!("fetching it answered HTTP {status}"));
        }
        let kind = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        if !AUDIO_TYPES.contains(&kind.as_str()) {
            return Err(format!(
                "its content type {kind:?} is not audio (serve a WAV as audio/wav, or Ogg Opus as audio/ogg)"
            ));
        }
        let bytes = read_limited(response, self.config.max_prompt_bytes).await?;
        Prompt::from_bytes(&bytes).map_err(|e| format!("cannot be decoded: {e}"))
    }

    async fn prompt_file(&self, name: &str) -> Result<Prompt, String> {
        let Some(dir) = &self.config.prompts else {
            return Err("the app has no prompt directory (set prompts in its [[app]])".into());
        };
        for ext in crate::config::PROMPT_EXTENSIONS {
            let path = dir.join(format!("{name}.{ext}"));
            let Ok(meta) = tokio::fs::metadata(&path).await else {
                continue;
            };
            if meta.len() > self.config.max_prompt_bytes {
                return Err(format!(
                    "{} is {} bytes; at most {}",
                    path.display(),
                    meta.len(),
                    self.config.max_prompt_bytes
                ));
            }
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            return Prompt::from_bytes(&bytes)
                .map_err(|e| format!("{} cannot be decoded: {e}", path.display()));
        }
        Err(format!(
            "no file {name}.wav, .opus or .ogg in {}",
            dir.display()
        ))
    }

    /// The call control of a call this app drives, starting with `script`.
    pub fn ivr(&self, script: Arc<Script>) -> crate::config::IvrConfig {
        crate::config::IvrConfig {
            name: self.config.name.clone(),
            script,
            prompts: Arc::new(crate::config::PromptSet::new("en")),
            language: "en".into(),
            languages: Default::default(),
            type_ahead: true,
            voicemail_dir: self.config.recording_dir.clone(),
        }
    }

    /// What a call runs when the app failed: its fallback route, or its closed message and
    /// hang-up.
    pub fn fallback(&self) -> Arc<Script> {
        let verbs = match &self.config.fallback_route {
            Some(route) => vec![
                Verb::Answer,
                Verb::Dial(Destination::Route(route.clone())),
                Verb::Hangup {
                    reason: "app_failed".into(),
                },
            ],
            None => self
                .config
                .fallback_message
                .iter()
                .map(|m| Verb::Message(Message::Text(m.clone())))
                .chain([Verb::Hangup {
                    reason: "app_failed".into(),
                }])
                .collect(),
        };
        Arc::new(Script {
            nodes: [("fallback".to_string(), Node { verbs })].into(),
            entry: "fallback".into(),
        })
    }
}

/// The body of `response`, refused beyond `limit` bytes.
async fn read_limited(mut response: reqwest::Response, limit: u64) -> Result<Vec<u8>, String> {
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(format!(
            "{} bytes; at most {limit}",
            response.content_length().unwrap_or_default()
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("cut short: {e}"))?
    {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(format!("larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
