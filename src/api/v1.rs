//! The REST API (`/v1/...`), for operators and the business's applications. Every request
//! carries `Authorization: Bearer <http.api_token>`; without a configured token the API is
//! not served.
//!
//! - `GET /v1/calls`: the live calls; `GET /v1/calls/{id}`: one.
//! - `POST /v1/calls` `{"from", "to": {"whatsapp": wa_id} | {"sip": uri, "trunk"?} |
//!   {"agent": user}, "app"?, "verbs"?}`: a call an HTTP app drives: the customer is called
//!   on WhatsApp (their permission checked and reserved exactly as for a PBX's call), or a
//!   phone (through a trunk, or an agent's registered SIP phone) whose verbs dial WhatsApp
//!   users; once the first party answers, the given verbs run, or the app's answer to
//!   `call.initiated` (`app` defaults to the business number's). Verbs are checked and
//!   their prompts fetched first: a mistake is 400 and nothing is dialled.
//! - `POST /v1/calls` `{"business_number", "wa_id", "trunk" | "route", "user"?}`: a
//!   callback: the customer is called on WhatsApp (their permission checked and reserved
//!   first) and, when they answer, bridged to `user` (an agent extension, a queue) at the
//!   trunk or route. `201 {"call_id"}`; a refusal is `403 {"error", "reason"}` (the reason
//!   as in `waswitch_calls_blocked_total`), an unknown number `404`, a bad destination
//!   `400`, no trunk or node capacity `503`.
//! - `DELETE /v1/calls/{id}`: hangs it up (both sides; the CDR says the switch ended it,
//!   cause `api_hangup`).
//! - `POST /v1/calls/{id}/actions`: verbs (as an HTTP app answers: `{"verbs": [...]}`, or
//!   one verb such as `{"play": {...}}`; `bridge` is `dial`) interrupt what the call does
//!   and run instead; `{"hangup": {}}` hangs the call up; `{"dtmf": {"digits", "to"}}`
//!   sends keys; `{"recording": "start" | "stop"}` records both sides of the call as its
//!   recording policy allows (`403` when it is `none`; `recording.ready` follows). `202`
//!   when they run, `400` with the place of a wrong verb, `409` when the call cannot take
//!   them now (no app drives it, it is being answered or dialled).
//! - `GET /v1/recordings/{id}`: a recording (the switch's or Meta's), streamed from disk or
//!   the bucket; `DELETE` removes it (audited).
//! - `GET /v1/cdrs?direction=&outcome=&business_number=&since=&until=&limit=&offset=`: CDRs,
//!   newest first, with the total matching.
//! - Permissions, the do-not-call list and the audit trail: [`super::permissions`].

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
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
    token: Option<Secret>,
    app_tokens: Vec<crate::config::ApiTokenConfig>,
    permissions: Option<super::permissions::PermissionApi>,
    numbers: Option<super::numbers::NumbersApi>,
) -> Router {
    let tokens = Arc::new(Tokens {
        operator: token,
        apps: app_tokens,
    });
    let mut router = Router::new()
        .route("/v1/calls", get(calls).post(place_call))
        .route("/v1/calls/{id}", get(call).delete(hang_up))
        .route("/v1/calls/{id}/actions", axum::routing::post(actions))
        .route(
            "/v1/recordings/{id}",
            get(recording).delete(delete_recording),
        )
        .route("/v1/cdrs", get(cdrs))
        .route("/v1/agents", get(agents))
        .route("/v1/queues", get(queues))
        .route(
            "/v1/agents/{user}",
            get(agent).put(put_agent).delete(delete_agent),
        )
        .route(
            "/v1/agents/{user}/presence",
            axum::routing::put(set_presence),
        )
        .with_state(state);
    if let Some(p) = permissions {
        router = router.merge(super::permissions::routes(p));
    }
    if let Some(n) = numbers {
        router = router.merge(super::numbers::routes(n));
    }
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let tokens = Arc::clone(&tokens);
            async move { authorised(&tokens, req, next).await }
        },
    ))
}

/// The API's tokens: the operator's (everything) and the apps' (their numbers, their
/// scopes).
struct Tokens {
    operator: Option<Secret>,
    apps: Vec<crate::config::ApiTokenConfig>,
}

/// Who a request acts for.
#[derive(Debug, Clone)]
pub(crate) enum Scope {
    /// The operator's token: every business number, every route.
    Operator,
    /// An app's token (`[[api_token]]`).
    App {
        /// Its name.
        name: String,
        /// Its business numbers (E.164 digits).
        numbers: Vec<String>,
        /// Its scopes.
        scopes: Vec<String>,
    },
}

impl Scope {
    /// Whether the token acts for business number `n` (`+`, `00` or bare digits).
    pub(crate) fn number(&self, n: &str) -> bool {
        match self {
            Scope::Operator => true,
            Scope::App { numbers, .. } => {
                let d = crate::number::e164_or_raw(n);
                numbers.contains(&d)
            }
        }
    }

    fn allows(&self, scope: &str) -> bool {
        match self {
            Scope::Operator => true,
            Scope::App { scopes, .. } => scopes.iter().any(|s| s == scope),
        }
    }
}

/// What a path needs of a token: its scope, and the business number it names (the
/// path's, or a query's `business_number`).
fn required_scope(path: &str) -> Option<&'static str> {
    let first = path
        .trim_start_matches("/v1/")
        .split('/')
        .next()
        .unwrap_or("");
    match first {
        "calls" | "recordings" => Some("calls"),
        "cdrs" => Some("cdrs"),
        "permissions" | "dnc" | "audit" => Some("permissions"),
        "agents" | "queues" => Some("agents"),
        _ => None,
    }
}

fn forbidden(why: &str) -> Response {
    error(StatusCode::FORBIDDEN, why)
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
#[serde(deny_unknown_fields)]
struct AgentBody {
    password: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    queues: Vec<String>,
}

/// `PUT /v1/agents/{user}` with `{"password", "display_name"?, "queues": [...]}`: adds the
/// agent to the store (201) or changes them (200); their phone registers at once. The
/// store keeps the digest secrets, never the password. Agents of the configuration file
/// are changed there (409).
async fn put_agent(
    State(state): State<ApiState>,
    Path(user): Path<String>,
    body: Option<Json<AgentBody>>,
) -> Response {
    let Some(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "send {\"password\": \"...\", \"display_name\": \"...\", \"queues\": [\"support\"]}",
        );
    };
    let user_ok = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !user_ok {
        return error(
            StatusCode::BAD_REQUEST,
            "user: 1 to 64 letters, digits, '.', '_' or '-'",
        );
    }
    if !(8..=128).contains(&body.password.chars().count()) {
        return error(StatusCode::BAD_REQUEST, "password: 8 to 128 characters");
    }
    if body
        .display_name
        .as_ref()
        .is_some_and(|d| d.chars().count() > 64 || d.chars().any(char::is_control))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "display_name: at most 64 characters, no control characters",
        );
    }
    let known = state.agents.queue_names();
    if let Some(q) = body.queues.iter().find(|q| !known.contains(q)) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "queues: there is no queue {q:?} (known: {})",
                known.join(", ")
            ),
        );
    }
    let Some(registrar) = state.sip.agent_registrar() else {
        return error(
            StatusCode::CONFLICT,
            "agents are not enabled on this switch: configure a [[queue]] first",
        );
    };
    if state.agents.is_configured(&user) {
        return error(
            StatusCode::CONFLICT,
            "this agent is defined in the configuration file; change it there",
        );
    }
    let ha1 = crate::sip::auth::Ha1::of(&user, registrar.realm(), &body.password);
    let stored = crate::store::agents::StoredAgent {
        user: user.clone(),
        ha1_md5: ha1.md5.clone(),
        ha1_sha256: ha1.sha256.clone(),
        display_name: body.display_name.clone(),
        queues: body.queues.clone(),
    };
    let created = match state.store.put_agent(&stored, crate::clock::now_ms()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, agent = %user, "agent not stored");
            return error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable");
        }
    };
    registrar.set_agent(&user, ha1);
    state.agents.upsert(&user, body.display_name, body.queues);
    tracing::info!(agent = %user, created, "agent stored");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    match state.agents.get(&user) {
        Some(a) => (status, Json(a)).into_response(),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "agent not found after storing",
        ),
    }
}

/// `DELETE /v1/agents/{user}`: removes a stored agent (204); their phone's binding goes.
async fn delete_agent(State(state): State<ApiState>, Path(user): Path<String>) -> Response {
    if state.agents.is_configured(&user) {
        return error(
            StatusCode::CONFLICT,
            "this agent is defined in the configuration file; remove it there",
        );
    }
    match state.store.delete_agent(&user).await {
        Ok(true) => {}
        Ok(false) => return error(StatusCode::NOT_FOUND, "no such agent"),
        Err(e) => {
            tracing::error!(error = %e, agent = %user, "agent not deleted");
            return error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable");
        }
    }
    if let Some(registrar) = state.sip.agent_registrar() {
        registrar.remove_agent(&user);
    }
    state.agents.remove(&user);
    tracing::info!(agent = %user, "agent deleted");
    StatusCode::NO_CONTENT.into_response()
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

async fn authorised(tokens: &Tokens, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let scope = presented.and_then(|p| {
        let operator = tokens
            .operator
            .as_ref()
            .is_some_and(|t| constant_time_eq(p.as_bytes(), t.expose().as_bytes()));
        if operator {
            return Some(Scope::Operator);
        }
        tokens
            .apps
            .iter()
            .find(|a| constant_time_eq(p.as_bytes(), a.token.expose().as_bytes()))
            .map(|a| Scope::App {
                name: a.name.clone(),
                numbers: a.business_numbers.clone(),
                scopes: a.scopes.clone(),
            })
    });
    match scope {
        Some(scope) => {
            let path = req.uri().path().to_string();
            if let Some(needed) = required_scope(&path) {
                if !scope.allows(needed) {
                    return forbidden(&format!("this token has no {needed:?} scope"));
                }
            }
            if let Scope::App { numbers, name, .. } = &scope {
                // A business number in the path is the token's own.
                let parts: Vec<&str> = path.split('/').collect();
                if matches!(parts.get(2), Some(&"permissions") | Some(&"dnc")) {
                    if let Some(n) = parts.get(3).filter(|n| !n.is_empty()) {
                        if !scope.number(n) {
                            tracing::info!(token = %name, number = %n, "API token used for another business's number");
                            return forbidden("this token does not act for that business number");
                        }
                    }
                }
                // Listings are of its own numbers: a query names one of them, or the
                // token's only number is filled in.
                if matches!(parts.get(2), Some(&"cdrs") | Some(&"dnc") | Some(&"audit"))
                    && parts.len() == 3
                {
                    let query = req.uri().query().unwrap_or("").to_string();
                    let named = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("business_number="))
                        .map(str::to_string);
                    match (named, numbers.as_slice()) {
                        (Some(n), _) if !scope.number(&n) => {
                            return forbidden("this token does not act for that business number");
                        }
                        (Some(_), _) => {}
                        (None, [only]) => {
                            let q = if query.is_empty() {
                                format!("business_number={only}")
                            } else {
                                format!("{query}&business_number={only}")
                            };
                            if let Ok(uri) = format!("{path}?{q}").parse() {
                                *req.uri_mut() = uri;
                            }
                        }
                        (None, _) => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                &format!(
                                    "business_number: name one of this token's numbers ({})",
                                    numbers.join(", ")
                                ),
                            );
                        }
                    }
                }
            }
            req.extensions_mut().insert(scope);
            next.run(req).await
        }
        None => {
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
    Extension(scope): Extension<Scope>,
    super::ApiJson(body): super::ApiJson<serde_json::Value>,
) -> Response {
    use crate::call::sip::CallbackRefused;
    // `{from, to, app, verbs}`: a call an HTTP app drives; otherwise a callback to a trunk.
    let app_call = body.get("to").is_some();
    let sip = s.sip.clone();
    let placed = if app_call {
        let req: crate::call::sip::AppCallRequest = match serde_json::from_value(body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
        };
        if !scope.number(&req.from) {
            return forbidden("this token does not act for that business number");
        }
        let Some(services) = s.control.clone() else {
            return error(
                StatusCode::NOT_IMPLEMENTED,
                &CallbackRefused::NotEnabled.to_string(),
            );
        };
        // Placed on a task of its own: a client that goes away mid-request cannot abandon
        // a call halfway through its start.
        // An app's token has its number's own app drive the call; the operator's, any.
        let any_app = matches!(scope, Scope::Operator);
        tokio::spawn(async move { sip.place_app_call(&req, &services, any_app).await }).await
    } else {
        let req: crate::call::sip::CallbackRequest = match serde_json::from_value(body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
        };
        if !scope.number(&req.business_number) {
            return forbidden("this token does not act for that business number");
        }
        tokio::spawn(async move { sip.place_callback(&req).await }).await
    };
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
        Err(e @ CallbackRefused::BadVerbs(_)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e @ CallbackRefused::NotYourApp(_)) => forbidden(&e.to_string()),
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

/// Whether `scope` may see and act on the call `snapshot` is of.
fn own_call(scope: &Scope, snapshot: &crate::call::CallSnapshot) -> bool {
    match scope {
        Scope::Operator => true,
        Scope::App { .. } => snapshot
            .offer
            .business_number
            .as_deref()
            .is_some_and(|n| scope.number(n)),
    }
}

/// The list is read from the registry (what each call told it as it went), never by
/// asking every call's actors: it costs the calls nothing however often it is polled. One
/// call's own snapshot (`GET /v1/calls/{id}`) has its media too.
async fn calls(State(s): State<ApiState>, Extension(scope): Extension<Scope>) -> Response {
    let mut out: Vec<_> = s
        .calls
        .views()
        .into_iter()
        .filter(|c| own_call(&scope, c))
        .collect();
    out.sort_by_key(|c| c.offered_at);
    Json(json!({"calls": out})).into_response()
}

async fn call(
    State(s): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Response {
    match s.calls.snapshot(&CallId::from(id.as_str())).await {
        Some(snapshot) if own_call(&scope, &snapshot) => Json(snapshot).into_response(),
        Some(_) => forbidden("this token does not act for that call's business number"),
        None => error(StatusCode::NOT_FOUND, "no such live call"),
    }
}

async fn hang_up(
    State(s): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Response {
    if let Scope::App { .. } = scope {
        match s.calls.business_number(&CallId::from(id.as_str())) {
            Some(Some(n)) if scope.number(&n) => {}
            Some(_) => return forbidden("this token does not act for that call's business number"),
            None => return error(StatusCode::NOT_FOUND, "no such live call"),
        }
    }
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

/// `POST /v1/calls/{id}/actions`.
async fn actions(
    State(s): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be JSON: {\"verbs\": [...]} or one verb",
        );
    };
    let call_id = CallId::from(id.as_str());
    match s.calls.snapshot(&call_id).await {
        Some(snapshot) if own_call(&scope, &snapshot) => {}
        Some(_) => return forbidden("this token does not act for that call's business number"),
        None => return error(StatusCode::NOT_FOUND, "no such live call"),
    }
    // One verb on its own is a list of one; `bridge` is `dial`.
    let body = match body {
        serde_json::Value::Object(mut o) if !o.contains_key("verbs") => {
            if let Some(b) = o.remove("bridge") {
                o.insert("dial".into(), b);
            }
            if o.len() == 1 {
                if let Some(dtmf) = o.get("dtmf") {
                    return send_dtmf(&s, &call_id, dtmf);
                }
            }
            if o.contains_key("hangup") && o.len() == 1 {
                return if s
                    .calls
                    .hangup(&call_id, HangupParty::Switch, "api_hangup")
                    .await
                {
                    StatusCode::ACCEPTED.into_response()
                } else {
                    error(StatusCode::NOT_FOUND, "no such live call")
                };
            }
            if o.len() == 1 && o.contains_key("recording") {
                // Recording the call on demand: not a verb.
                serde_json::Value::Object(o)
            } else {
                json!({ "verbs": [serde_json::Value::Object(o)] })
            }
        }
        other => other,
    };
    match s.calls.actions(&call_id, body).await {
        Some(Ok(())) => (StatusCode::ACCEPTED, Json(json!({"call_id": id}))).into_response(),
        Some(Err((code, why))) => error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::CONFLICT),
            &why,
        ),
        None => error(StatusCode::NOT_FOUND, "no such live call"),
    }
}

/// Keys this long by default, with this gap between them.
const DTMF_MS: u64 = 160;
const DTMF_GAP_MS: u64 = 80;

/// `{"dtmf": {"digits", "to", "duration_ms"}}`: DTMF (RFC 4733) toward the customer
/// (`to: "customer"`) or the other side of the call (`"callee"`, the default: the PBX, agent
/// or user it was bridged to), one key after another, without waiting for them.
fn send_dtmf(s: &ApiState, call_id: &CallId, dtmf: &serde_json::Value) -> Response {
    use crate::media::types::Side;
    let digits = dtmf.get("digits").and_then(|d| d.as_str()).unwrap_or("");
    let valid = |c: char| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D');
    if digits.is_empty() || digits.len() > 32 || !digits.chars().all(valid) {
        return error(
            StatusCode::BAD_REQUEST,
            "dtmf.digits: give 1 to 32 keys of 0-9, *, #, A-D",
        );
    }
    let side = match dtmf.get("to").and_then(|t| t.as_str()).unwrap_or("callee") {
        "callee" => Side::B,
        "customer" => Side::A,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "dtmf.to: \"customer\" or \"callee\"",
            )
        }
    };
    let ms = match dtmf.get("duration_ms") {
        None => DTMF_MS,
        Some(v) => match v.as_u64().filter(|n| (40..=2000).contains(n)) {
            Some(n) => n,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "dtmf.duration_ms: must be 40..=2000",
                )
            }
        },
    };
    let calls = s.calls.clone();
    let id = call_id.clone();
    let keys: Vec<char> = digits.chars().collect();
    tokio::spawn(async move {
        let duration = std::time::Duration::from_millis(ms);
        for key in keys {
            if !calls.send_dtmf(&id, side, key, duration) {
                return;
            }
            tokio::time::sleep(duration + std::time::Duration::from_millis(DTMF_GAP_MS)).await;
        }
    });
    (StatusCode::ACCEPTED, Json(json!({"call_id": call_id}))).into_response()
}

/// The recording `id`, if the token acts for its call's business number.
async fn own_recording(
    s: &ApiState,
    scope: &Scope,
    id: &str,
) -> Result<crate::store::Recording, Response> {
    match s.store.recording(id).await {
        Ok(Some(r)) if scope.number(&r.business_number) => Ok(r),
        Ok(Some(_)) => Err(forbidden(
            "this token does not act for that recording's business number",
        )),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, "no such recording")),
        Err(e) => {
            tracing::error!(error = %e, "recording lookup failed");
            Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is unavailable",
            ))
        }
    }
}

/// `GET /v1/recordings/{id}`: the file, streamed.
async fn recording(
    State(s): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Response {
    let r = match own_recording(&s, &scope, &id).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    if let (true, Some(node)) = (r.storage == "local", r.node_id.as_deref()) {
        if node != s.recordings.node_id() {
            return error(
                StatusCode::CONFLICT,
                &format!("the recording is on node {node}'s disk: ask that node"),
            );
        }
    }
    let download = match s
        .recordings
        .blobs()
        .download(&r.path, r.storage == "local")
        .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(recording = %id, path = %r.path, storage = %r.storage, error = %e, "recording unreadable");
            return if e.kind() == std::io::ErrorKind::NotFound {
                error(StatusCode::GONE, "the recording's file is gone")
            } else {
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the recording's storage is unavailable",
                )
            };
        }
    };
    let extension = std::path::Path::new(&r.path)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("bin");
    let mut headers = vec![
        (header::CONTENT_TYPE, r.media_type.clone()),
        (header::CONTENT_LENGTH, download.length.to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}.{extension}\"", r.id),
        ),
    ];
    if let Some(sha) = &r.sha256 {
        // RFC 9530: the digest of the bytes served.
        if let Some(b64) = hex_to_base64(sha) {
            headers.push((
                header::HeaderName::from_static("repr-digest"),
                format!("sha-256=:{b64}:"),
            ));
        }
    }
    let mut response = axum::body::Body::from_stream(download.chunks).into_response();
    for (name, value) in headers {
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

/// Hex digits as base64 (`None` when they are not hex).
fn hex_to_base64(hex: &str) -> Option<String> {
    use base64::Engine;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    Some(base64::engine::general_purpose::STANDARD.encode(bytes?))
}

/// `DELETE /v1/recordings/{id}`: the file and its record.
async fn delete_recording(
    State(s): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Response {
    let r = match own_recording(&s, &scope, &id).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    match s.recordings.delete(&r, "api").await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "recording not deleted");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the recording's storage or the store is unavailable",
            )
        }
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
