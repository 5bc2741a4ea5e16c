//! The agent page and its API, on the HTTP listener next to `/sip`:
//!
//! - `GET /agent` and `GET /agent/{agent.js,agent.css}`: the page, built from `web/agent`
//!   (JsSIP bundled from npm; `npm ci && npm run build` there) and served from its `dist`
//!   directory (`http.agent_page`); nothing comes from a CDN.
//! - `GET /agent/api/me`, `PUT /agent/api/presence` `{"presence": "available"|"offline"}`:
//!   the signed-in agent and the presence they choose.
//! - `GET /agent/api/permissions/{wa_id}` and `POST /agent/api/permissions/{wa_id}/request`
//!   `{"purpose"?}`: the customer's call permission with the business number, and a
//!   permission request sent in WhatsApp (chat-to-call escalation), exactly as
//!   `/v1/permissions` does them.
//!
//! The API takes the agent's own SIP credentials (HTTP Basic), never the operator's token:
//! an agent sees and changes only their own presence.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::permissions::PermissionApi;
use crate::call::agents::Directory;

/// What the page's routes need.
#[derive(Clone)]
pub(crate) struct AgentPage {
    /// The built page (`web/agent/dist`).
    pub dir: PathBuf,
    /// The agents.
    pub agents: Directory,
    /// The agents' registrar (their digest secrets check a sign-in).
    pub registrar: Option<Arc<crate::sip::registrar::Agents>>,
    /// Call permissions (`None`: no WhatsApp numbers).
    pub permissions: Option<PermissionApi>,
    /// The business number each configured agent calls from (others: the first).
    pub agent_numbers: Arc<std::collections::HashMap<String, String>>,
}

/// The routes.
pub(crate) fn router(page: AgentPage) -> Router {
    Router::new()
        .route("/agent", get(index))
        .route("/agent/", get(index))
        .route("/agent/{file}", get(asset))
        .route("/agent/api/me", get(me))
        .route("/agent/api/presence", put(presence))
        .route("/agent/api/permissions/{wa_id}", get(permission))
        .route("/agent/api/permissions/{wa_id}/request", post(request))
        .with_state(page)
}

fn error(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({ "error": why }))).into_response()
}

async fn serve(page: &AgentPage, file: &str, content_type: &'static str) -> Response {
    match tokio::fs::read(page.dir.join(file)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(dir = %page.dir.display(), file, error = %e, "agent page not found");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the agent page is not built in {}: run `npm ci && npm run build` in web/agent \
                     (or point http.agent_page at a built copy)",
                    page.dir.display()
                ),
            )
                .into_response()
        }
    }
}

async fn index(State(page): State<AgentPage>) -> Response {
    serve(&page, "index.html", "text/html; charset=utf-8").await
}

async fn asset(State(page): State<AgentPage>, Path(file): Path<String>) -> Response {
    match file.as_str() {
        "agent.js" => serve(&page, "agent.js", "text/javascript; charset=utf-8").await,
        "agent.css" => serve(&page, "agent.css", "text/css; charset=utf-8").await,
        "index.html" => serve(&page, "index.html", "text/html; charset=utf-8").await,
        _ => error(StatusCode::NOT_FOUND, "no such file"),
    }
}

/// The agent whose credentials the request carries (HTTP Basic, their SIP password), or
/// the 401 refusing it.
fn signed_in(
    page: &AgentPage,
    peer: std::net::IpAddr,
    headers: &HeaderMap,
) -> Result<String, Box<Response>> {
    use base64::Engine as _;
    let refuse = || {
        Box::new(error(
            StatusCode::UNAUTHORIZED,
            "sign in with your agent user and password",
        ))
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .ok_or_else(refuse)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| refuse())?;
    let text = String::from_utf8(decoded).map_err(|_| refuse())?;
    let (user, password) = text.split_once(':').ok_or_else(refuse)?;
    use crate::sip::registrar::SignIn;
    let verdict = page
        .registrar
        .as_ref()
        .map_or(SignIn::Refused, |r| r.sign_in(peer, user, password));
    match verdict {
        SignIn::Ok => Ok(user.to_string()),
        SignIn::Refused => {
            super::server::refused("agent_sign_in");
            tracing::info!(agent = user, %peer, "agent page sign-in refused");
            Err(refuse())
        }
        SignIn::Throttled => {
            super::server::refused("agent_sign_in_throttled");
            Err(Box::new(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "60")],
                    Json(json!({"error": "too many failed sign-ins from this address; wait a minute"})),
                )
                    .into_response(),
            ))
        }
    }
}

async fn me(
    State(page): State<AgentPage>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let user = match signed_in(&page, peer.ip(), &headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    match page.agents.get(&user) {
        Some(view) => Json(view).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such agent"),
    }
}

#[derive(Deserialize)]
struct PresenceBody {
    presence: String,
}

async fn presence(
    State(page): State<AgentPage>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    req: Request,
) -> Response {
    let user = match signed_in(&page, peer.ip(), req.headers()) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let body = match axum::body::to_bytes(req.into_body(), 4096).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::BAD_REQUEST, "body too large"),
    };
    let Ok(PresenceBody { presence }) = serde_json::from_slice::<PresenceBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "send {\"presence\": \"available\"} or {\"presence\": \"offline\"}",
        );
    };
    let willing =
        match presence.as_str() {
            "available" => true,
            "offline" => false,
            _ => return error(
                StatusCode::BAD_REQUEST,
                "presence: \"available\" or \"offline\" (busy and wrap-up are set by the switch)",
            ),
        };
    page.agents.set_willing(&user, willing);
    tracing::info!(agent = %user, presence = %presence, "agent presence set from the agent page");
    match page.agents.get(&user) {
        Some(view) => Json(view).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such agent"),
    }
}

/// The business number `user`'s customers are reached from (theirs, else the first
/// configured), as their calls from the page are.
fn business(page: &AgentPage, user: &str) -> Result<(PermissionApi, String), Box<Response>> {
    let none = || {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no WhatsApp business number is configured",
        ))
    };
    let api = page.permissions.clone().ok_or_else(none)?;
    let number = page
        .agent_numbers
        .get(user)
        .cloned()
        .or_else(|| api.numbers.first().map(|n| n.display_number.clone()))
        .ok_or_else(none)?;
    Ok((api, number))
}

async fn permission(
    State(page): State<AgentPage>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(wa_id): Path<String>,
) -> Response {
    let user = match signed_in(&page, peer.ip(), &headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let (api, number) = match business(&page, &user) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    super::permissions::view_with_verdict(&api, &number, &wa_id).await
}

async fn request(
    State(page): State<AgentPage>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(wa_id): Path<String>,
) -> Response {
    let user = match signed_in(&page, peer.ip(), &headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let (api, number) = match business(&page, &user) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    tracing::info!(agent = %user, customer = %wa_id, "agent asks the customer's permission to call");
    super::permissions::request_for(
        &api,
        &number,
        &wa_id,
        "Your support agent would like to call you on WhatsApp",
    )
    .await
}
