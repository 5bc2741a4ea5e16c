//! The REST API (`/v1/...`), for operators and the business's applications. Every request
//! carries `Authorization: Bearer <http.api_token>`; without a configured token the API is
//! not served.
//!
//! - `GET /v1/calls`: the live calls; `GET /v1/calls/{id}`: one.
//! - `POST /v1/calls` `{"business_number", "wa_id", "trunk" | "route", "user"?}`: a
//!   callback: the customer is called on WhatsApp (their permission checked and reserved
//!   first) and, when they answer, bridged to `user` (an agent extension, a queue) at the
//!   trunk or route. `201 {"call_id"}`; a refusal is `403 {"error", "reason"}` (the reason
//!   as in `waswitch_calls_blocked_total`), an unknown number `404`, a bad destination
//!   `400`, no trunk or node capacity `503`.
//! - `DELETE /v1/calls/{id}`: hangs it up (both sides; the CDR says the switch ended it,
//!   cause `api_hangup`).
//! - `GET /v1/cdrs?direction=&outcome=&business_number=&since=&until=&limit=&offset=`: CDRs,
//!   newest first, with the total matching.
//! - Permissions, the do-not-call list and the audit trail: [`super::permissions`].

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::ApiState;
use crate::call::CallId;
use crate::config::Secret;
use crate::store::{CallOutcome, CdrFilter, CdrRepository, Direction, HangupParty};

/// Most CDRs one request returns.
const MAX_LIMIT: u32 = 1000;

/// The `/v1` routes, behind the bearer token.
pub(crate) fn router(
    state: ApiState,
    token: Secret,
    permissions: Option<super::permissions::PermissionApi>,
) -> Router {
    let mut router = Router::new()
        .route("/v1/calls", get(calls).post(place_call))
        .route("/v1/calls/{id}", get(call).delete(hang_up))
        .route("/v1/cdrs", get(cdrs))
        .route("/v1/agents", get(agents))
        .route("/v1/queues", get(queues))
        .route("/v1/agents/{user}", get(agent))
        .route(
            "/v1/agents/{user}/presence",
            axum::routing::put(set_presence),
        )
        .with_state(state);
    if let Some(p) = permissions {
        router = router.merge(super::permissions::routes(p));
    }
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let token = token.clone();
            async move { authorised(&token, req, next).await }
        },
    ))
}

/// `GET /v1/agents`: every agent, registered or not, with their presence.
async fn agents(State(state): State<ApiState>) -> Response {
    Json(json!({"agents": state.agents.list()})).into_response()
}

/// `GET /v1/queues`: every queue, its members' presence and how many are available.
async fn queues(State(state): State<ApiState>) -> Response {
    Json(json!({"queues": state.agents.queues()})).into_response()
}

/// `GET /v1/agents/{user}`.
async fn agent(State(state): State<ApiState>, Path(user): Path<String>) -> Response {
    match state.agents.get(&user) {
        Some(a) => Json(a).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such agent"),
    }
}

#[derive(Deserialize)]
struct PresenceBody {
    presence: String,
}

/// `PUT /v1/agents/{user}/presence` with `{"presence": "available" | "offline"}`: what the
/// agent chooses (busy and wrap-up are the switch's to set).
async fn set_presence(
    State(state): State<ApiState>,
    Path(user): Path<String>,
    body: Option<Json<PresenceBody>>,
) -> Response {
    let willing = match body.as_ref().map(|b| b.presence.as_str()) {
        Some("available") => true,
        Some("offline") => false,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "presence: \"available\" or \"offline\" (busy and wrap_up are set by calls)",
            )
        }
    };
    if !state.agents.set_willing(&user, willing) {
        return error(StatusCode::NOT_FOUND, "no such agent");
    }
    match state.agents.get(&user) {
        Some(a) => Json(a).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such agent"),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

async fn authorised(token: &Secret, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), token.expose().as_bytes()) => next.run(req).await,
        _ => {
            let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"waswitch\""),
            );
            r
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn place_call(
    State(s): State<ApiState>,
    super::ApiJson(req): super::ApiJson<crate::call::sip::CallbackRequest>,
) -> Response {
    use crate::call::sip::CallbackRefused;
    // Placed on a task of its own: a client that goes away mid-request cannot abandon a
    // call halfway through its start.
    let sip = s.sip.clone();
    let placed = tokio::spawn(async move { sip.place_callback(&req).await }).await;
    let Ok(placed) = placed else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the call could not be placed",
        );
    };
    match placed {
        Ok(id) => (
            StatusCode::CREATED,
            Json(json!({"call_id": id, "status": "calling_customer"})),
        )
            .into_response(),
        Err(CallbackRefused::Blocked(b)) => (
            StatusCode::FORBIDDEN,
            Json(json!({"error": b.to_string(), "reason": b.as_str()})),
        )
            .into_response(),
        Err(e @ CallbackRefused::UnknownNumber(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ (CallbackRefused::BadCustomer(_) | CallbackRefused::BadDestination(_))) => {
            error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(e @ CallbackRefused::NotEnabled) => error(StatusCode::NOT_IMPLEMENTED, &e.to_string()),
        Err(e) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            r
        }
    }
}

async fn calls(State(s): State<ApiState>) -> Response {
    let mut out = Vec::new();
    for id in s.calls.ids() {
        // A call that ends meanwhile is simply not listed.
        if let Some(snapshot) = s.calls.snapshot(&id).await {
            out.push(snapshot);
        }
    }
    out.sort_by_key(|c| c.offered_at);
    Json(json!({"calls": out})).into_response()
}

async fn call(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.calls.snapshot(&CallId::from(id.as_str())).await {
        Some(snapshot) => Json(snapshot).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such live call"),
    }
}

async fn hang_up(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    if s.calls
        .hangup(
            &CallId::from(id.as_str()),
            HangupParty::Switch,
            "api_hangup",
        )
        .await
    {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "no such live call")
    }
}

#[derive(Debug, Deserialize)]
struct CdrQuery {
    direction: Option<String>,
    outcome: Option<String>,
    business_number: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    limit: Option<u32>,
    offset: Option<u32>,
}

async fn cdrs(
    State(s): State<ApiState>,
    query: Result<Query<CdrQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query: direction, outcome, business_number, since and until (Unix ms), limit, offset",
        );
    };
    let direction = match q.direction.as_deref().map(str::parse::<Direction>) {
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "direction: user_initiated, business_initiated or sip_transit",
            )
        }
        other => other.and_then(Result::ok),
    };
    let outcome = match q.outcome.as_deref().map(str::parse::<CallOutcome>) {
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "outcome: answered, unanswered or failed",
            )
        }
        other => other.and_then(Result::ok),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return error(StatusCode::BAD_REQUEST, "limit: 1 to 1000");
    }
    let filter = CdrFilter {
        direction,
        outcome,
        business_number: q.business_number,
        since: q.since,
        until: q.until,
        limit,
        offset: q.offset.unwrap_or(0),
    };
    // The page and the total are two reads; a CDR batch committed between them would make
    // the total promise rows the page lacks. CDRs are only ever added, so reading the page
    // again after the count settles it (bounded: the writer commits in batches).
    let mut attempt = 0;
    let (listed, counted) = loop {
        attempt += 1;
        let listed = s.store.list(&filter).await;
        let counted = s.store.count(&filter).await;
        let consistent = match (&listed, &counted) {
            (Ok(cdrs), Ok(total)) => {
                let expected = total
                    .saturating_sub(u64::from(filter.offset))
                    .min(u64::from(filter.limit));
                cdrs.len() as u64 >= expected
            }
            _ => true,
        };
        if consistent || attempt == 3 {
            break (listed, counted);
        }
    };
    match (listed, counted) {
        (Ok(cdrs), Ok(total)) => Json(json!({"total": total, "cdrs": cdrs})).into_response(),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "CDR query failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "the store did not answer")
        }
    }
}
