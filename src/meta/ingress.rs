//! What the switch does with Meta's webhooks (`api::webhooks` serves them over HTTP): the
//! verification challenge, and calling webhooks.
//!
//! A delivery is authenticated by its `X-Hub-Signature-256` over the raw body before
//! anything is parsed (401 otherwise), parsed (400 when it is not a webhook), stripped of
//! events already delivered, and handed whole to the call layer's queue; then it is answered
//! 200 at once. When the queue cannot take every new event the delivery is answered 503 and
//! nothing of it is remembered, so Meta's retry brings it again: an event is either queued
//! or left for the retry, never half-processed.
//!
//! What an unsigned sender can make the switch hold is bounded: a request without a
//! well-formed signature header is refused before its body is read; a body is hashed as it
//! arrives and refused (413) the moment it passes [`WebhookLimits::max_body`] (at once when
//! its `Content-Length` says so); at most [`WebhookLimits::concurrency`] bodies are read at
//! a time (503 beyond); and one too slow gets 408. Meta's webhooks are small: the largest
//! sample (a `connect` with its SDP offer) is 2.3 KB, so the default limit of 256 KiB
//! leaves room for a hundred batched events.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use tokio::sync::mpsc;

use super::signature;
use super::webhook::{self, Dedup, MetaEvent, PermissionReply};
use crate::config::{Secret, WebhookLimits};
use crate::telemetry;

/// The path Meta is configured to call.
pub(crate) const PATH: &str = "/webhooks/meta";
/// How long a delivered event is remembered (Meta retries calling webhooks for a short while).
const DEDUP_WINDOW: Duration = Duration::from_secs(6 * 3600);
/// Events remembered at most.
const DEDUP_CAPACITY: usize = 200_000;

/// Where call-permission replies are written before the webhook is answered: a grant
/// Meta has delivered must never be lost to a crash, and Meta does not send it again once
/// answered 200.
pub(crate) trait ReplySink: Send + Sync + 'static {
    /// Records one reply durably (a reply recorded before is accepted again, unchanged).
    fn record(
        &self,
        reply: PermissionReply,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
}

/// A boxed future, for the traits the call layer implements for the ingress.
pub(crate) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where the calls a delivery names are, in a cluster (`call::cluster`): a delivery naming
/// a call another node has is forwarded to that node, which takes the events of its calls
/// from it.
pub(crate) trait CallOwners: Send + Sync + 'static {
    /// Whether this node has the call (by Meta's id, or by the switch's call id Meta echoes
    /// as `biz_opaque_callback_data`).
    fn here(&self, wa_call_id: &str, opaque: Option<&str>) -> bool;
    /// Whether other nodes are up now (with none, a call nobody has is not waited for).
    fn peers(&self) -> BoxFuture<'_, bool>;
    /// The node (id and URL) that has the call, when another node does; an error when the
    /// register could not be read (the delivery is then left for Meta's retry).
    fn elsewhere<'a>(
        &'a self,
        wa_call_id: &'a str,
        opaque: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, String>>;
    /// Sends a delivery on to the node at `url`: Meta's body and signature, and the hop's.
    fn forward<'a>(
        &'a self,
        url: &'a str,
        meta_signature: &'a [u8],
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<(), String>>;
    /// The node a delivery was forwarded by (its hop signature checked); `None` when it
    /// came from Meta directly.
    fn forwarded_by(&self, headers: &HeaderMap, body: &[u8]) -> Result<Option<String>, String>;
}

/// What the webhook endpoint needs: the app's secrets and the queue to the call layer.
pub(crate) struct Ingress {
    app_secret: Secret,
    verify_token: Secret,
    dedup: Mutex<Dedup>,
    events: mpsc::Sender<MetaEvent>,
    replies: Option<Arc<dyn ReplySink>>,
    limits: WebhookLimits,
    reading: Arc<tokio::sync::Semaphore>,
    /// The cluster's register of calls (`None`: a single node).
    owners: Option<Arc<dyn CallOwners>>,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress").finish_non_exhaustive()
    }
}

impl Ingress {
    /// An ingress verifying with `app_secret`, answering challenges for `verify_token`, and
    /// queueing events on `events`.
    pub(crate) fn new(
        app_secret: Secret,
        verify_token: Secret,
        events: mpsc::Sender<MetaEvent>,
    ) -> Ingress {
        let limits = WebhookLimits::default();
        Ingress {
            app_secret,
            verify_token,
            dedup: Mutex::new(Dedup::new(DEDUP_WINDOW, DEDUP_CAPACITY)),
            events,
            replies: None,
            limits,
            reading: Arc::new(tokio::sync::Semaphore::new(limits.concurrency)),
            owners: None,
        }
    }

    /// Reads webhook bodies within `limits` instead of the defaults.
    pub(crate) fn with_limits(mut self, limits: WebhookLimits) -> Ingress {
        self.reading = Arc::new(tokio::sync::Semaphore::new(limits.concurrency));
        self.limits = limits;
        self
    }

    /// Permission replies go to `sink` (written before the delivery is answered) instead
    /// of the queue.
    pub(crate) fn with_reply_sink(mut self, sink: Arc<dyn ReplySink>) -> Ingress {
        self.replies = Some(sink);
        self
    }

    /// Forwards deliveries for calls other nodes of the cluster have.
    pub(crate) fn with_owners(mut self, owners: Arc<dyn CallOwners>) -> Ingress {
        self.owners = Some(owners);
        self
    }

    /// The cluster's register of calls, when the node is in one.
    pub(crate) fn owners(&self) -> Option<&Arc<dyn CallOwners>> {
        self.owners.as_ref()
    }

    /// Handles one POST: the status to answer. With a reply sink, permission replies are
    /// not queued: see [`Ingress::deliver_split`].
    #[cfg(test)]
    pub(crate) fn deliver(&self, headers: &HeaderMap, body: &[u8], now: Instant) -> StatusCode {
        let status = self.deliver_split(headers, body, now).0;
        if status == StatusCode::OK {
            outcome("accepted");
        }
        status
    }

    /// Handles one POST: the status to answer, and (with a reply sink) the permission
    /// replies the caller must record before answering.
    #[cfg(test)]
    pub(crate) fn deliver_split(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: Instant,
    ) -> (StatusCode, Vec<PermissionReply>) {
        let signature = headers.get(signature::HEADER).map(HeaderValue::as_bytes);
        if let Err(e) = signature::verify(self.app_secret.expose().as_bytes(), body, signature) {
            tracing::warn!(error = %e, "webhook refused: signature");
            outcome("bad_signature");
            return (StatusCode::UNAUTHORIZED, Vec::new());
        }
        self.accept(body, now)
    }

    /// A check of a delivery's signature as its body streams in: refused at once when the
    /// signature header is missing or malformed (the body need not be read then).
    pub(crate) fn verifier(
        &self,
        headers: &HeaderMap,
    ) -> Result<signature::Verifier, signature::SignatureError> {
        let sig = headers.get(signature::HEADER).map(HeaderValue::as_bytes);
        signature::Verifier::new(self.app_secret.expose().as_bytes(), sig)
    }

    /// The limits on reading deliveries.
    pub(crate) fn limits(&self) -> WebhookLimits {
        self.limits
    }

    /// A place among the bodies being read, if one is free.
    pub(crate) fn try_reading(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.reading).try_acquire_owned().ok()
    }

    /// Records the permission replies of an accepted delivery with the reply sink, each on a
    /// task of its own (the sender hanging up never cuts a write short): OK, or 503 when one
    /// could not be recorded (Meta's retry brings the delivery again).
    pub(crate) async fn record_replies(&self, replies: Vec<PermissionReply>) -> StatusCode {
        let Some(sink) = &self.replies else {
            return StatusCode::OK;
        };
        for reply in replies {
            let sink = Arc::clone(sink);
            let recorded = tokio::spawn(async move { sink.record(reply).await })
                .await
                .unwrap_or_else(|e| Err(format!("recording task failed: {e}")));
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "webhook deferred: a permission reply could not be recorded");
                return StatusCode::SERVICE_UNAVAILABLE;
            }
        }
        StatusCode::OK
    }

    /// Handles a body whose signature has been checked: the status to answer, and (with a
    /// reply sink) the permission replies the caller must record before answering.
    pub(crate) fn accept(&self, body: &[u8], now: Instant) -> (StatusCode, Vec<PermissionReply>) {
        self.accept_where(body, now, &|_| true)
    }

    /// [`accept`](Self::accept), taking only the events `keep` says (the others are another
    /// node's).
    pub(crate) fn accept_where(
        &self,
        body: &[u8],
        now: Instant,
        keep: &(dyn Fn(&MetaEvent) -> bool + Sync),
    ) -> (StatusCode, Vec<PermissionReply>) {
        let parsed = match webhook::parse(body) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "webhook refused: payload");
                outcome("malformed");
                return (StatusCode::BAD_REQUEST, Vec::new());
            }
        };
        for (what, name) in &parsed.unknown {
            tracing::debug!(what, name = %name, "webhook: skipped what this version does not know");
            metrics::counter!(telemetry::META_WEBHOOK_SKIPPED_TOTAL, "what" => *what).increment(1);
        }
        for reason in &parsed.invalid {
            tracing::warn!(reason = %reason, "webhook: incomplete item skipped");
            metrics::counter!(telemetry::META_WEBHOOK_SKIPPED_TOTAL, "what" => "invalid")
                .increment(1);
        }
        // The lock covers the check, the queueing and the remembering, so two deliveries of
        // one event racing each other queue it once.
        // A panic elsewhere while holding the lock leaves a usable map behind.
        let mut dedup = self
            .dedup
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut fresh: Vec<(String, MetaEvent)> = Vec::new();
        let mut replies = Vec::new();
        for event in parsed.events.into_iter().filter(|e| keep(e)) {
            // Replies are recorded by the sink, which knows what it has seen.
            if let (Some(_), MetaEvent::PermissionReply(reply)) = (&self.replies, &event) {
                metrics::counter!(telemetry::META_WEBHOOK_EVENTS_TOTAL, "kind" => event.kind(), "delivery" => "recorded")
                    .increment(1);
                replies.push(reply.clone());
                continue;
            }
            let key = event.dedup_key();
            let delivery = if dedup.seen(&key, now) || fresh.iter().any(|(k, _)| *k == key) {
                "duplicate"
            } else {
                "new"
            };
            metrics::counter!(telemetry::META_WEBHOOK_EVENTS_TOTAL, "kind" => event.kind(), "delivery" => delivery)
                .increment(1);
            if delivery == "new" {
                fresh.push((key, event));
            }
        }
        if fresh.is_empty() {
            return (StatusCode::OK, replies);
        }
        let permits = match self.events.try_reserve_many(fresh.len()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, events = fresh.len(), "webhook deferred: the call layer's queue is full");
                outcome("overloaded");
                return (StatusCode::SERVICE_UNAVAILABLE, Vec::new());
            }
        };
        for (permit, (key, event)) in permits.zip(fresh) {
            dedup.remember(key, now);
            permit.send(event);
        }
        metrics::gauge!(telemetry::STATE_ENTRIES, "table" => "meta_webhook_ids")
            .set(dedup.len() as f64);
        (StatusCode::OK, replies)
    }

    /// Handles Meta's verification GET: the challenge when the token is ours.
    pub(crate) fn challenge(
        &self,
        mode: Option<&str>,
        token: Option<&str>,
        challenge: Option<&str>,
    ) -> Result<String, StatusCode> {
        let token_ok = token
            .is_some_and(|t| constant_time_eq(t.as_bytes(), self.verify_token.expose().as_bytes()));
        match (mode, challenge) {
            (Some("subscribe"), Some(c)) if token_ok => Ok(c.to_string()),
            (Some("subscribe"), Some(_)) => {
                tracing::warn!("webhook verification refused: wrong verify token");
                Err(StatusCode::FORBIDDEN)
            }
            _ => Err(StatusCode::BAD_REQUEST),
        }
    }
}

/// Counts a delivery's outcome in `waswitch_meta_webhooks_total`.
pub(crate) fn outcome(outcome: &'static str) {
    metrics::counter!(telemetry::META_WEBHOOKS_TOTAL, "outcome" => outcome).increment(1);
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use hmac::digest::Digest;
    // Equal-length digests compared without an early exit: the time says nothing about
    // where the token differs.
    let (da, db) = (sha2::Sha256::digest(a), sha2::Sha256::digest(b));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests;
