//! The CDR webhook: every CDR is also POSTed as JSON to a configured URL, signed, and
//! retried with backoff, on a task of its own so no call ever waits for it.
//!
//! Headers: `X-Waswitch-Timestamp` (Unix seconds) and `X-Waswitch-Signature:
//! sha256=<hex>`, the HMAC-SHA256 with the shared secret of `<timestamp>.<body>`. A
//! receiver recomputes it and refuses stale timestamps, so a captured request cannot be
//! replayed later. A 2xx answer delivers; a 408, 429, 5xx or transport failure is retried
//! (backoff doubling from 500 ms, with jitter); any other answer gives up at once.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Cdr;
use crate::config::CdrWebhookConfig;
use crate::telemetry;

/// CDRs waiting for the webhook before further ones are dropped (and counted).
pub const QUEUE: usize = 10_000;

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

/// Starts the sender; CDRs handed to the returned queue are delivered in order.
pub fn start(config: CdrWebhookConfig) -> Result<mpsc::Sender<Cdr>, String> {
    let http = client(&config)?;
    let (tx, mut rx) = mpsc::channel::<Cdr>(QUEUE);
    tokio::spawn(async move {
        while let Some(cdr) = rx.recv().await {
            let outcome = if deliver(&http, &config, &cdr).await {
                "delivered"
            } else {
                "failed"
            };
            metrics::counter!(telemetry::CDR_WEBHOOKS_TOTAL, "outcome" => outcome).increment(1);
        }
    });
    Ok(tx)
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
            let outcome = if post(&http, &config, &id, body).await {
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

async fn deliver(http: &reqwest::Client, config: &CdrWebhookConfig, cdr: &Cdr) -> bool {
    let Ok(body) = serde_json::to_vec(cdr) else {
        return false;
    };
    post(http, config, &cdr.call_id, body).await
}

/// POSTs `body` signed, with retries; whether it was delivered.
async fn post(
    http: &reqwest::Client,
    config: &CdrWebhookConfig,
    call_id: &str,
    body: Vec<u8>,
) -> bool {
    let mut backoff = Duration::from_millis(500);
    for attempt in 1..=config.max_attempts {
        let sent = signed(
            http.post(&config.url),
            config.secret.expose().as_bytes(),
            body.clone(),
        )
        .send()
        .await;
        let retry = match sent {
            Ok(r) if r.status().is_success() => return true,
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
    false
}
