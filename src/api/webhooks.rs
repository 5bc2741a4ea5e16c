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

use crate::meta::ingress::{outcome, Ingress, PATH};

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
    let (mut status, replies) = ingress.accept(&body, Instant::now());
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

fn disabled() -> Response {
    outcome("disabled");
    (
        StatusCode::NOT_FOUND,
        "WhatsApp calling is not configured on this node: add a [meta] section",
    )
        .into_response()
}
