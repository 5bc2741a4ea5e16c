//! The CDR webhook: every CDR is also POSTed as JSON to a configured URL, signed, and
//! retried with backoff, on a task of its own so no call ever waits for it. What is still
//! to be delivered lives in the store (the outbox, written with the CDR), so a restart or
//! a lost node loses none.
//!
//! Headers: `X-Waswitch-Timestamp` (Unix seconds) and `X-Waswitch-Signature:
//! sha256=<hex>`, the HMAC-SHA256 with the shared secret of `<timestamp>.<body>`. A
//! receiver recomputes it and refuses stale timestamps, so a captured request cannot be
//! replayed later. A 2xx answer delivers; a 408, 429, 5xx or transport failure is retried
//! (backoff doubling from 500 ms, with jitter); any other answer gives up at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};

use super::{Cdr, Store};
use crate::config::CdrWebhookConfig;
use crate::telemetry;

/// The signature header of `body` sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut signed = Vec::with_capacity(body.len() + 21);
    signed.extend_from_slice(timestamp.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    crate::meta::signature::sign(secret, &signed)
}

/// `request` with `body` as JSON, signed now with `secret` (the timestamp and signature
/// headers above).
pub fn signed(
    request: reqwest::RequestBuilder,
    secret: &[u8],
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = signature(secret, timestamp, &body);
    request
        .header("content-type", "application/json")
        .header("x-waswitch-timestamp", timestamp.to_string())
        .header("x-waswitch-signature", signature)
        .body(body)
}

/// CDRs read from the outbox at a time.
const BATCH: i64 = 64;

/// How often the outbox is read when nothing wakes the sender (rows adopted from another
/// node, or left by a store that failed).
const POLL: Duration = Duration::from_secs(1);

/// The CDR webhook's sender, driven by the store's durable outbox: the CDR writer stores
/// each CDR with a row naming this node ([`Store::insert_cdrs`]) and wakes the sender, which
/// delivers in the order the calls ended and removes the row once the receiver took it. A
/// node that stops or dies with CDRs undelivered sends them when it starts again; in a
/// cluster a survivor adopts them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CdrWebhook {
    owner: Arc<str>,
    wake: Arc<Notify>,
    /// Counts the outbox reads that found nothing waiting.
    idle: watch::Receiver<u64>,
}

impl CdrWebhook {
    /// The node whose outbox rows this sender delivers.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// CDRs were stored for it: the sender reads the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits up to `timeout` for the outbox to hold nothing for this node; whether it did.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let mut idle = self.idle.clone();
        let seen = *idle.borrow_and_update();
        self.wake();
        tokio::time::timeout(timeout, idle.wait_for(|n| *n > seen))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Starts the sender of the rows that name node `owner`, or of every row with `all` (a
/// single node: nothing else could send them).
pub fn start(
    config: CdrWebhookConfig,
    store: Store,
    owner: &str,
    all: bool,
) -> Result<CdrWebhook, String> {
    let http = client(&config)?;
    let wake = Arc::new(Notify::new());
    let (idle_tx, idle) = watch::channel(0u64);
    let hook = CdrWebhook {
        owner: Arc::from(owner),
        wake: Arc::clone(&wake),
        idle,
    };
    let node = (!all).then(|| owner.to_string());
    tokio::spawn(async move {
        loop {
            let pending = match store.webhook_pending(node.as_deref(), BATCH).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "the CDR webhook's outbox could not be read");
                    let _ = tokio::time::timeout(POLL, wake.notified()).await;
                    continue;
                }
            };
            if pending.is_empty() {
                metrics::gauge!(telemetry::CDR_WEBHOOK_BACKLOG).set(0.0);
                idle_tx.send_modify(|n| *n += 1);
                let _ = tokio::time::timeout(POLL, wake.notified()).await;
                continue;
            }
            let mut unrecorded = false;
            for cdr in pending {
                let (delivered, attempts) = deliver(&http, &config, &cdr).await;
                let outcome = if delivered { "delivered" } else { "failed" };
                metrics::counter!(telemetry::CDR_WEBHOOKS_TOTAL, "outcome" => outcome).increment(1);
                let settled = if delivered {
                    store.webhook_delivered(&cdr.call_id).await
                } else {
                    tracing::error!(call_id = %cdr.call_id, attempts,
                        "the CDR webhook gave up on this CDR; it stays in cdr_webhook_outbox");
                    store
                        .webhook_gave_up(&cdr.call_id, crate::clock::now_ms(), attempts)
                        .await
                };
                if let Err(e) = settled {
                    // Sent again when the row is next read: the receiver de-duplicates by
                    // call id.
                    tracing::warn!(call_id = %cdr.call_id, error = %e,
                        "the CDR webhook's delivery not recorded");
                    unrecorded = true;
                }
            }
            if unrecorded {
                // A store that reads but does not write: not a loop resending at full speed.
                tokio::time::sleep(POLL).await;
            }
            if let Ok(n) = store.webhook_backlog(node.as_deref()).await {
                metrics::gauge!(telemetry::CDR_WEBHOOK_BACKLOG).set(n as f64);
            }
        }
    });
    Ok(hook)
}

/// Events (`voicemail.ready`, …) waiting for the webhook before further ones are dropped.
pub const EVENT_QUEUE: usize = 1_000;

/// Starts a sender of events (JSON objects with an `event` name) to the same URL, signed
/// the same way; delivered in order, retried as CDRs are, and counted in `metric` by
/// `outcome`.
pub fn start_events(
    config: CdrWebhookConfig,
    metric: &'static str,
) -> Result<mpsc::Sender<serde_json::Value>, String> {
    let http = client(&config)?;
    let (tx, mut rx) = mpsc::channel::<serde_json::Value>(EVENT_QUEUE);
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let Ok(body) = serde_json::to_vec(&event) else {
                continue;
            };
            let id = event
                .get("call_id")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            let outcome = if post(&http, &config, &id, body).await.0 {
                "delivered"
            } else {
                "failed"
            };
            metrics::counter!(metric, "outcome" => outcome).increment(1);
        }
    });
    Ok(tx)
}

/// The HTTP client of the webhook: its timeouts, and the switch's name.
fn client(config: &CdrWebhookConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .user_agent(concat!("waswitch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cdr_webhook: {e}"))
}

/// Delivers one CDR: whether it was delivered, and after how many attempts.
async fn deliver(http: &reqwest::Client, config: &CdrWebhookConfig, cdr: &Cdr) -> (bool, i32) {
    let Ok(body) = serde_json::to_vec(cdr) else {
        return (false, 0);
    };
    post(http, config, &cdr.call_id, body).await
}

/// POSTs `body` signed, with retries: whether it was delivered, and after how many attempts.
async fn post(
    http: &reqwest::Client,
    config: &CdrWebhookConfig,
    call_id: &str,
    body: Vec<u8>,
) -> (bool, i32) {
    let mut backoff = Duration::from_millis(500);
    let mut attempts = 0;
    for attempt in 1..=config.max_attempts {
        attempts = i32::try_from(attempt).unwrap_or(i32::MAX);
        let sent = signed(
            http.post(&config.url),
            config.secret.expose().as_bytes(),
            body.clone(),
        )
        .send()
        .await;
        let retry = match sent {
            Ok(r) if r.status().is_success() => return (true, attempts),
            Ok(r) => {
                let code = r.status().as_u16();
                tracing::warn!(%call_id, status = code, attempt, "webhook refused");
                matches!(code, 408 | 429) || code >= 500
            }
            Err(e) => {
                tracing::warn!(%call_id, error = %e, attempt, "webhook unreachable");
                true
            }
        };
        if !retry || attempt == config.max_attempts {
            break;
        }
        let jitter = uuid::Uuid::new_v4().as_u64_pair().0 % (backoff.as_millis() as u64 / 2 + 1);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
    (false, attempts)
}
