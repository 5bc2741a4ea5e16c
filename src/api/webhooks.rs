//! `GET /webhooks/meta` (Meta's verification challenge) and `POST /webhooks/meta` (calling
//! webhooks), over HTTP: the limits on what an unsigned sender can make the switch read
//! (see [`crate::meta::ingress`]) applied to the request as it streams in.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::meta::ingress::{outcome, CallOwners, Ingress, PATH};
use crate::meta::webhook::MetaEvent;

#[derive(serde::Deserialize)]
struct Challenge {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// The webhook routes; `None` (no `[meta]` configured) answers 404 with a reason.
pub(crate) fn router(ingress: Option<Arc<Ingress>>) -> Router {
    Router::new()
        .route(PATH, get(verify).post(receive))
        .with_state(ingress)
}

async fn verify(
    State(ingress): State<Option<Arc<Ingress>>>,
    Query(q): Query<Challenge>,
) -> Response {
    let Some(ingress) = ingress else {
        return disabled();
    };
    match ingress.challenge(
        q.mode.as_deref(),
        q.token.as_deref(),
        q.challenge.as_deref(),
    ) {
        Ok(c) => ([(header::CONTENT_TYPE, "text/plain")], c).into_response(),
        Err(status) => status.into_response(),
    }
}

/// A response after which the connection is closed (its body was not read).
fn closing(status: StatusCode) -> Response {
    let mut response = status.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn retry_soon(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

async fn receive(State(ingress): State<Option<Arc<Ingress>>>, request: Request) -> Response {
    let Some(ingress) = ingress else {
        return disabled();
    };
    let (parts, body) = request.into_parts();
    // Unsigned: refused before a byte of the body is read.
    let mut check = match ingress.verifier(&parts.headers) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "webhook refused: signature");
            outcome("bad_signature");
            return closing(StatusCode::UNAUTHORIZED);
        }
    };
    let Some(_reading) = ingress.try_reading() else {
        super::server::refused("webhook_busy");
        outcome("overloaded");
        return retry_soon(closing(StatusCode::SERVICE_UNAVAILABLE));
    };
    let limits = ingress.limits();
    let body = match super::server::read_body(
        body,
        super::server::declared_length(&parts.headers),
        limits.max_body,
        tokio::time::Instant::now() + limits.body_timeout,
        |piece| check.update(piece),
    )
    .await
    {
        Ok(b) => b,
        Err(refused) => return refused.response(limits.max_body),
    };
    if let Err(e) = check.finish() {
        tracing::warn!(error = %e, "webhook refused: signature");
        outcome("bad_signature");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let (mut status, replies) = match ingress.owners() {
        Some(owners) => match route(owners, &parts.headers, &body).await {
            Ok(keep) => ingress.accept_where(&body, Instant::now(), &|e| keep.takes(e)),
            Err(refused) => return refused,
        },
        None => ingress.accept(&body, Instant::now()),
    };
    if status == StatusCode::OK {
        status = ingress.record_replies(replies).await;
        outcome(if status == StatusCode::OK {
            "accepted"
        } else {
            "overloaded"
        });
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return retry_soon(status.into_response());
    }
    status.into_response()
}

/// How long a webhook for a call no node has is held while the node that placed it
/// learns Meta's id for it.
const OWNER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the register is asked meanwhile.
const OWNER_POLL: std::time::Duration = std::time::Duration::from_millis(25);

/// Which events of a delivery this node takes, in a cluster.
enum Keep {
    /// Every event but those of these calls (Meta's ids), which other nodes have.
    AllBut(std::collections::HashSet<String>),
    /// Only the events of calls this node has (a delivery another node forwarded).
    Mine(Arc<dyn CallOwners>),
}

impl Keep {
    fn takes(&self, event: &MetaEvent) -> bool {
        match (self, event.call()) {
            (Keep::AllBut(theirs), Some((wa_call_id, _))) => !theirs.contains(wa_call_id),
            (Keep::AllBut(_), None) => true,
            (Keep::Mine(owners), Some((wa_call_id, opaque))) => owners.here(wa_call_id, opaque),
            // The node Meta sent it to records a permission reply.
            (Keep::Mine(_), None) => false,
        }
    }
}

/// Sends a delivery (already checked as Meta's) on to the nodes that have the calls it
/// names, and says which of its events are this node's. A delivery another node forwarded
/// is checked as that node's (401 otherwise) and never forwarded again. One that cannot be
/// forwarded is answered 503: Meta's retry brings it again.
async fn route(
    owners: &Arc<dyn CallOwners>,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Keep, Response> {
    match owners.forwarded_by(headers, body) {
        Ok(Some(node)) => {
            tracing::debug!(%node, "webhook forwarded by another node");
            return Ok(Keep::Mine(Arc::clone(owners)));
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "forwarded webhook refused: hop signature");
            outcome("bad_signature");
            return Err(StatusCode::UNAUTHORIZED.into_response());
        }
    }
    let Ok(parsed) = crate::meta::webhook::parse(body) else {
        // Refused as malformed by the ingress.
        return Ok(Keep::AllBut(Default::default()));
    };
    let mut theirs = std::collections::HashSet::new();
    let mut nodes: Vec<(String, String)> = Vec::new();
    for event in &parsed.events {
        let Some((wa_call_id, opaque)) = event.call() else {
            continue;
        };
        if theirs.contains(wa_call_id) {
            continue;
        }
        // Meta's webhooks for a business-initiated call can come before the Graph API's
        // answer names the call to the node that placed it: a call no node has yet is
        // looked for a little longer (a user's new call is this node's at once).
        let deadline = tokio::time::Instant::now() + OWNER_PATIENCE;
        let mut alone = None;
        loop {
            if owners.here(wa_call_id, opaque) {
                break;
            }
            match owners.elsewhere(wa_call_id, opaque).await {
                Ok(Some(node)) => {
                    theirs.insert(wa_call_id.to_string());
                    if !nodes.contains(&node) {
                        nodes.push(node);
                    }
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    // Taken here it could end another node's call: Meta retries it.
                    tracing::warn!(error = %e, "the call's owner could not be looked up; Meta retries the webhook");
                    outcome("overloaded");
                    return Err(retry_soon(StatusCode::SERVICE_UNAVAILABLE.into_response()));
                }
            }
            if event.starts_call() || tokio::time::Instant::now() >= deadline {
                tracing::debug!(%wa_call_id, kind = event.kind(), "webhook for a call no other node has; taken here");
                break;
            }
            // Alone in the cluster, nobody else can be about to register it.
            if alone.is_none() {
                alone = Some(!owners.peers().await);
            }
            if alone == Some(true) {
                tracing::debug!(%wa_call_id, kind = event.kind(), "webhook for a call no other node has; taken here");
                break;
            }
            tokio::time::sleep(OWNER_POLL).await;
        }
    }
    let signature = headers
        .get(crate::meta::signature::HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    for (node, url) in &nodes {
        match owners.forward(url, signature, body).await {
            Ok(()) => {
                tracing::debug!(%node, "webhook forwarded to the node that has the call");
                metrics::counter!(crate::telemetry::META_WEBHOOK_FORWARDED_TOTAL, "outcome" => "forwarded").increment(1);
            }
            Err(e) => {
                tracing::warn!(%node, error = %e, "webhook not forwarded to the node that has the call; Meta retries it");
                metrics::counter!(crate::telemetry::META_WEBHOOK_FORWARDED_TOTAL, "outcome" => "failed").increment(1);
                outcome("overloaded");
                return Err(retry_soon(StatusCode::SERVICE_UNAVAILABLE.into_response()));
            }
        }
    }
    Ok(Keep::AllBut(theirs))
}

fn disabled() -> Response {
    outcome("disabled");
    (
        StatusCode::NOT_FOUND,
        "WhatsApp calling is not configured on this node: add a [meta] section",
    )
        .into_response()
}
