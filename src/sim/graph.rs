//! The sim's Graph API: `POST /<version>/<PHONE_NUMBER_ID>/calls` (connect, pre_accept,
//! accept, reject, terminate), `GET …/call_permissions`, `POST …/messages` (text, call-permission
//! requests), `GET`/`POST …/settings`, validated the way Meta validates them and answered
//! with Meta-shaped errors. Every request is recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::config::Secret;

/// Where a call stands, from Meta's side.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimCallState {
    /// A user's call offered to the business, not yet answered.
    Offered,
    /// Pre-accepted with this SDP answer.
    PreAccepted(String),
    /// Accepted (user-initiated) or placed and ringing the user (business-initiated).
    Active,
    /// Over.
    Ended,
}

/// One call the sim knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimCall {
    /// `wacid.…`.
    pub id: String,
    /// The business number's id.
    pub phone_number_id: String,
    /// The WhatsApp user.
    pub user: String,
    /// Placed by the business.
    pub business_initiated: bool,
    /// Where it stands.
    pub state: SimCallState,
    /// Meta's offer (user-initiated) or the business's offer (business-initiated).
    pub offer: String,
    /// The answer applied.
    pub answer: Option<String>,
    /// The tracking string the business set.
    pub biz_opaque_callback_data: Option<String>,
}

/// A request the sim received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `calls`, `call_permissions`, `messages`, `settings`.
    pub endpoint: String,
    /// For `calls`: the action.
    pub action: Option<String>,
    /// Business number id in the path.
    pub phone_number_id: String,
    /// The body (JSON), or the query for GETs.
    pub body: Value,
    /// HTTP status answered.
    pub status: u16,
}

/// Something the business asked of Meta that a simulated user answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimNotice {
    /// The business calls a user (`connect` with its SDP offer).
    BusinessCall {
        /// Meta's call id given to the business.
        call_id: String,
        /// The business number's id.
        phone_number_id: String,
        /// The user called.
        user: String,
        /// The business's SDP offer.
        offer: String,
        /// The business's tracking string.
        opaque: Option<String>,
    },
    /// The business ended a call (`reject` or `terminate`).
    Ended {
        /// Meta's call id.
        call_id: String,
    },
    /// The business asked a user for call permission.
    PermissionRequest {
        /// The business number's id.
        phone_number_id: String,
        /// The user asked.
        user: String,
        /// The request message's id (a reply quotes it).
        message_id: String,
    },
}

/// A failure the sim injects into the next requests, to rehearse outages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// HTTP status to answer (with Meta's transient error body).
    pub status: u16,
    /// Delay before answering.
    pub delay: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    calls: HashMap<String, SimCall>,
    recorded: Vec<Recorded>,
    /// (phone number id, user) → expiry (Unix seconds; `None`: permanent).
    permissions: HashMap<(String, String), Option<u64>>,
    settings: HashMap<String, Value>,
    /// Meta's SIP password per phone number id (made when its first SIP server is set).
    sip_passwords: HashMap<String, String>,
    faults: Vec<Fault>,
    /// Media Meta serves (calls' recordings and transcripts), by id.
    media: HashMap<String, (String, Vec<u8>)>,
    /// The call-id counter; starts at a random point, so two sims (or one started again)
    /// never reuse Meta's ids, as Meta never does.
    next: u64,
}

/// The Graph API side of the sim: its state and its routes.
#[derive(Clone)]
pub struct SimGraph {
    token: Secret,
    numbers: Arc<Vec<String>>,
    inner: Arc<Mutex<Inner>>,
    /// Woken after every request.
    changed: Arc<tokio::sync::Notify>,
    /// Where business requests that users answer go, once someone listens.
    notices: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedSender<SimNotice>>>>,
}

impl std::fmt::Debug for SimGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimGraph")
            .field("numbers", &self.numbers)
            .finish_non_exhaustive()
    }
}

impl SimGraph {
    /// A Graph API accepting `token` for the business numbers `phone_number_ids`.
    pub fn new(token: Secret, phone_number_ids: Vec<String>) -> SimGraph {
        SimGraph {
            token,
            numbers: Arc::new(phone_number_ids),
            inner: Arc::new(Mutex::new(Inner {
                next: uuid::Uuid::new_v4().as_u64_pair().0 >> 20,
                ..Inner::default()
            })),
            changed: Arc::new(tokio::sync::Notify::new()),
            notices: Arc::new(Mutex::new(None)),
        }
    }

    /// Serves the Graph API on a free loopback port, on a task of its own; its address.
    pub async fn serve_loopback(&self) -> std::io::Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
            listener,
            self.router(),
        )));
        Ok(addr)
    }

    /// The routes, under `/<version>/…`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/{version}/{number}/calls", post(calls))
            .route("/{version}/{number}/call_permissions", get(permissions))
            .route("/{version}/{number}/messages", post(messages))
            .route(
                "/{version}/{number}/settings",
                get(get_settings).post(post_settings),
            )
            .route("/media/{id}", get(media))
            .with_state(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A WhatsApp user calls business number `phone_number_id` with Meta's SDP `offer`:
    /// the call the sim's connect webhook announces. Returns its id.
    pub fn place_user_call(&self, phone_number_id: &str, user: &str, offer: &str) -> String {
        let mut inner = self.lock();
        let id = call_id(&mut inner.next, user, phone_number_id);
        inner.calls.insert(
            id.clone(),
            SimCall {
                id: id.clone(),
                phone_number_id: phone_number_id.to_string(),
                user: user.to_string(),
                business_initiated: false,
                state: SimCallState::Offered,
                offer: offer.to_string(),
                answer: None,
                biz_opaque_callback_data: None,
            },
        );
        id
    }

    /// The user hangs up (or Meta ends the call).
    pub fn end_call(&self, call_id: &str) -> bool {
        let mut inner = self.lock();
        match inner.calls.get_mut(call_id) {
            Some(c) if c.state != SimCallState::Ended => {
                c.state = SimCallState::Ended;
                true
            }
            _ => false,
        }
    }

    /// The user grants business number `phone_number_id` permission to call (until
    /// `expires_at`, Unix seconds; `None`: permanently).
    pub fn grant(&self, phone_number_id: &str, user: &str, expires_at: Option<u64>) {
        self.lock()
            .permissions
            .insert((phone_number_id.to_string(), user.to_string()), expires_at);
    }

    /// Whether `user` lets business number `phone_number_id` call now (Meta's check of a
    /// business-initiated call).
    pub fn permitted(&self, phone_number_id: &str, user: &str) -> bool {
        let key = (phone_number_id.to_string(), user.to_string());
        match self.lock().permissions.get(&key) {
            Some(None) => true,
            Some(Some(exp)) => *exp > unix_now(),
            None => false,
        }
    }

    /// The user revokes it.
    pub fn revoke(&self, phone_number_id: &str, user: &str) {
        self.lock()
            .permissions
            .remove(&(phone_number_id.to_string(), user.to_string()));
    }

    /// The next requests fail with `fault`, one each, in order.
    pub fn inject(&self, faults: &[Fault]) {
        self.lock().faults.extend_from_slice(faults);
    }

    /// A call.
    pub fn call(&self, id: &str) -> Option<SimCall> {
        self.lock().calls.get(id).cloned()
    }

    /// Waits until call `id` satisfies `done` (checked after every request the sim
    /// answers), or `timeout` passes; the call as it then is.
    pub async fn wait_call(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&SimCall) -> bool,
    ) -> Option<SimCall> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let call = self.call(id);
            if call.as_ref().is_some_and(&done) {
                return call;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.call(id).filter(|c| done(c));
            }
        }
    }

    /// From now on, the business's calls, hangups and permission requests are told here
    /// (to the simulated users); a second listener replaces the first.
    pub fn notices(&self) -> tokio::sync::mpsc::UnboundedReceiver<SimNotice> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.notices.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    fn notify(&self, notice: SimNotice) {
        if let Some(tx) = self
            .notices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = tx.send(notice);
        }
    }

    /// Every request received, in order.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.lock().recorded.clone()
    }

    /// Meta's id of a call of `user` (one of them, when they made several).
    pub fn call_of_user(&self, user: &str) -> Option<String> {
        self.lock()
            .calls
            .values()
            .find(|c| c.user == user)
            .map(|c| c.id.clone())
    }

    /// Serves `bytes` (of `mime_type`) as Meta serves a call's recording or transcript: at
    /// `/media/<id>`, to the access token only. The path.
    pub fn add_media(&self, id: &str, mime_type: &str, bytes: Vec<u8>) -> String {
        self.lock()
            .media
            .insert(id.to_string(), (mime_type.to_string(), bytes));
        format!("/media/{id}")
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == self.token.expose())
    }
}

/// `GET /media/{id}`: a recording or transcript, to the access token only.
async fn media(
    State(sim): State<SimGraph>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !sim.authorised(&headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            190,
            "Invalid OAuth access token.",
            None,
        );
    }
    match sim.lock().media.get(&id).cloned() {
        Some((mime, bytes)) => ([(axum::http::header::CONTENT_TYPE, mime)], bytes).into_response(),
        None => error(StatusCode::NOT_FOUND, 100, "Unsupported get request.", None),
    }
}

/// A Meta-shaped error answer.
fn error(status: StatusCode, code: i64, message: &str, details: Option<&str>) -> Response {
    let mut e = json!({
        "message": message,
        "type": if code == 190 { "OAuthException" } else { "GraphMethodException" },
        "code": code,
        "fbtrace_id": "AsimTRACE0000000000000",
    });
    if let Some(d) = details {
        e["error_data"] = json!({"messaging_product": "whatsapp", "details": d});
    }
    (status, Json(json!({"error": e}))).into_response()
}

/// A realistic opaque call id: `wacid.` and base64 of a counter, the user and the number.
fn call_id(next: &mut u64, user: &str, number: &str) -> String {
    *next += 1;
    let raw = format!("{:020}:{user}:{number}", next);
    let mut out = String::from("wacid.");
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in raw.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(B64[(n >> (18 - 6 * i) & 63) as usize]));
        }
        for _ in chunk.len()..3 {
            out.push('=');
        }
    }
    out
}

/// Checks applied to every request; the error answer when one fails. Faults are applied
/// here, after recording.
async fn gate(
    sim: &SimGraph,
    headers: &HeaderMap,
    version: &str,
    number: &str,
) -> Option<Response> {
    let fault = {
        let mut inner = sim.lock();
        (!inner.faults.is_empty()).then(|| inner.faults.remove(0))
    };
    if let Some(f) = fault {
        tokio::time::sleep(f.delay).await;
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Some(error(status, 2, "Service temporarily unavailable", None));
    }
    if !sim.authorised(headers) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            190,
            "Invalid OAuth access token - Cannot parse access token",
            None,
        ));
    }
    let version_ok = version
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
    if !version_ok {
        return Some(error(
            StatusCode::BAD_REQUEST,
            2500,
            &format!("Unknown path components: /{version}/{number}"),
            None,
        ));
    }
    if !sim.numbers.iter().any(|n| n == number) {
        return Some(error(
            StatusCode::BAD_REQUEST,
            100,
            &format!("Unsupported post request. Object with ID '{number}' does not exist"),
            None,
        ));
    }
    None
}

fn record(
    sim: &SimGraph,
    endpoint: &str,
    action: Option<&str>,
    number: &str,
    body: Value,
    response: &Response,
) {
    sim.lock().recorded.push(Recorded {
        endpoint: endpoint.to_string(),
        action: action.map(str::to_string),
        phone_number_id: number.to_string(),
        body,
        status: response.status().as_u16(),
    });
}

async fn calls(
    State(sim): State<SimGraph>,
    Path((version, number)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let action = parsed
        .as_ref()
        .and_then(|b| b.get("action"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let response = match gate(&sim, &headers, &version, &number).await {
        Some(r) => r,
        None => call_action(&sim, &number, parsed.as_ref()),
    };
    record(
        &sim,
        "calls",
        action.as_deref(),
        &number,
        parsed.unwrap_or(Value::Null),
        &response,
    );
    sim.changed.notify_waiters();
    response
}

fn invalid(message: &str, details: &str) -> Response {
    error(StatusCode::BAD_REQUEST, 100, message, Some(details))
}

fn call_action(sim: &SimGraph, number: &str, body: Option<&Value>) -> Response {
    let Some(body) = body.filter(|b| b.is_object()) else {
        return invalid("Invalid parameter", "The request body is not a JSON object");
    };
    if body.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return invalid(
            "Invalid parameter",
            "messaging_product must be \"whatsapp\"",
        );
    }
    let Some(action) = body.get("action").and_then(Value::as_str) else {
        return invalid("Invalid parameter", "action is required");
    };
    // The session's SDP, or what is wrong with it.
    let session = |expected: &str| -> Result<String, String> {
        let s = body.get("session").and_then(Value::as_object);
        let kind = s.and_then(|s| s.get("sdp_type")).and_then(Value::as_str);
        let sdp = s.and_then(|s| s.get("sdp")).and_then(Value::as_str);
        match (kind, sdp) {
            (Some(k), _) if k != expected => Err(format!(
                "session.sdp_type must be \"{expected}\" for {action}"
            )),
            (Some(_), Some(sdp)) if sdp.starts_with("v=0\r\n") => Ok(sdp.to_string()),
            (Some(_), Some(_)) => Err("session.sdp is not an SDP with CRLF line ends".into()),
            _ => Err("session with sdp_type and sdp is required".into()),
        }
    };
    let opaque = body
        .get("biz_opaque_callback_data")
        .and_then(Value::as_str)
        .map(str::to_string);
    if opaque.as_ref().is_some_and(|o| o.chars().count() > 512) {
        return invalid(
            "Invalid parameter",
            "biz_opaque_callback_data is longer than 512 characters",
        );
    }
    let ok = || Json(json!({"messaging_product": "whatsapp", "success": true})).into_response();
    let mut inner = sim.lock();
    if action == "connect" {
        let Some(to) = body
            .get("to")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        else {
            return invalid(
                "Invalid parameter",
                "to must be the user's number, digits only",
            );
        };
        let offer = match session("offer") {
            Ok(s) => s,
            Err(d) => return invalid("Invalid parameter", &d),
        };
        let key = (number.to_string(), to.to_string());
        let now = unix_now();
        match inner.permissions.get(&key) {
            Some(None) => {}
            Some(Some(exp)) if *exp > now => {}
            _ => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    138_006,
                    "No approved call permission from the recipient",
                    Some("The business needs the user's call permission before calling"),
                )
            }
        }
        let busy = inner
            .calls
            .values()
            .any(|c| c.phone_number_id == number && c.user == to && c.state != SimCallState::Ended);
        if busy {
            return error(
                StatusCode::BAD_REQUEST,
                138_003,
                "Duplicate call",
                Some("A call with this user is already in progress"),
            );
        }
        let id = call_id(&mut inner.next, to, number);
        inner.calls.insert(
            id.clone(),
            SimCall {
                id: id.clone(),
                phone_number_id: number.to_string(),
                user: to.to_string(),
                business_initiated: true,
                state: SimCallState::Active,
                offer: offer.clone(),
                answer: None,
                biz_opaque_callback_data: opaque.clone(),
            },
        );
        sim.notify(SimNotice::BusinessCall {
            call_id: id.clone(),
            phone_number_id: number.to_string(),
            user: to.to_string(),
            offer,
            opaque,
        });
        return Json(json!({"messaging_product": "whatsapp", "calls": [{"id": id}]}))
            .into_response();
    }
    let Some(call_id) = body.get("call_id").and_then(Value::as_str) else {
        return invalid("Invalid parameter", "call_id is required");
    };
    let Some(call) = inner
        .calls
        .get_mut(call_id)
        .filter(|c| c.phone_number_id == number)
    else {
        return invalid("Invalid parameter", &format!("Invalid call id: {call_id}"));
    };
    let ended = || {
        error(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter",
            Some("The call is already completed"),
        )
    };
    match action {
        "pre_accept" | "accept" => {
            if call.business_initiated {
                return invalid(
                    "Invalid parameter",
                    &format!("{action} applies to user-initiated calls"),
                );
            }
            let answer = match session("answer") {
                Ok(s) => s,
                Err(d) => return invalid("Invalid parameter", &d),
            };
            match (&call.state, action) {
                (SimCallState::Ended, _) => ended(),
                (SimCallState::Active, _) => invalid("Invalid parameter", "The call is already in progress"),
                (SimCallState::PreAccepted(first), "accept") if *first != answer => invalid(
                    "Invalid parameter",
                    "SDP answer provided in accept does not match the SDP answer given in the Pre-Accept endpoint",
                ),
                (SimCallState::PreAccepted(_), "pre_accept") => {
                    invalid("Invalid parameter", "The call is already pre-accepted")
                }
                (_, "pre_accept") => {
                    call.state = SimCallState::PreAccepted(answer.clone());
                    call.answer = Some(answer);
                    ok()
                }
                _ => {
                    call.state = SimCallState::Active;
                    call.answer = Some(answer);
                    if opaque.is_some() {
                        call.biz_opaque_callback_data = opaque;
                    }
                    ok()
                }
            }
        }
        "reject" => match call.state {
            SimCallState::Offered | SimCallState::PreAccepted(_) if !call.business_initiated => {
                call.state = SimCallState::Ended;
                sim.notify(SimNotice::Ended {
                    call_id: call_id.to_string(),
                });
                ok()
            }
            SimCallState::Ended => ended(),
            _ => invalid(
                "Invalid parameter",
                "Only a call not yet accepted can be rejected",
            ),
        },
        "terminate" => match call.state {
            SimCallState::Ended => ended(),
            _ => {
                call.state = SimCallState::Ended;
                sim.notify(SimNotice::Ended {
                    call_id: call_id.to_string(),
                });
                ok()
            }
        },
        other => invalid("Invalid parameter", &format!("Unknown action: {other}")),
    }
}

/// A number's calling settings before the business changes any.
fn default_calling() -> Value {
    json!({"status": "ENABLED", "call_icon_visibility": "DEFAULT",
           "callback_permission_status": "DISABLED"})
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn permissions(
    State(sim): State<SimGraph>,
    Path((version, number)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let response = match gate(&sim, &headers, &version, &number).await {
        Some(r) => r,
        None => match query.get("user_wa_id") {
            None => invalid("Invalid parameter", "user_wa_id is required"),
            Some(user) => {
                let inner = sim.lock();
                let now = unix_now();
                let (status, expiry) = match inner.permissions.get(&(number.clone(), user.clone()))
                {
                    Some(None) => ("permanent", None),
                    Some(Some(e)) if *e > now => ("temporary", Some(*e)),
                    _ => ("no_permission", None),
                };
                let mut permission = json!({"status": status});
                if let Some(e) = expiry {
                    permission["expiration_time"] = json!(e);
                }
                Json(json!({
                    "messaging_product": "whatsapp",
                    "permission": permission,
                    "actions": [
                        {"action_name": "send_call_permission_request",
                         "can_perform_action": status != "permanent",
                         "limits": [{"time_period": "PT24H", "max_allowed": 1, "current_usage": 0},
                                    {"time_period": "P7D", "max_allowed": 2, "current_usage": 0}]},
                        {"action_name": "start_call",
                         "can_perform_action": status != "no_permission",
                         "limits": [{"time_period": "PT24H", "max_allowed": 100, "current_usage": 0}]},
                    ],
                }))
                .into_response()
            }
        },
    };
    let q = serde_json::to_value(&query).unwrap_or(Value::Null);
    record(&sim, "call_permissions", None, &number, q, &response);
    response
}

async fn messages(
    State(sim): State<SimGraph>,
    Path((version, number)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let response = match gate(&sim, &headers, &version, &number).await {
        Some(r) => r,
        None => {
            let b = parsed.as_ref();
            let to = b.and_then(|b| b.get("to")).and_then(Value::as_str);
            // A template message is taken as the business's call-permission template (the
            // sim holds no template registry).
            let kind = b
                .and_then(|b| b.pointer("/interactive/type"))
                .and_then(Value::as_str)
                .or_else(|| {
                    b.and_then(|b| b.pointer("/template/name"))
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .map(|_| "call_permission_request")
                });
            let text = b
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .and_then(|b| b.pointer("/text/body"))
                .and_then(Value::as_str);
            match (to, kind, text) {
                (Some(to), None, Some(body)) if !to.is_empty() => {
                    if body.trim().is_empty() || body.chars().count() > crate::meta::graph::MAX_TEXT {
                        invalid(
                            "Invalid parameter",
                            "text.body must hold 1 to 4096 characters",
                        )
                    } else {
                        let mut inner = sim.lock();
                        inner.next += 1;
                        let id = format!("wamid.SIM{:016}", inner.next);
                        drop(inner);
                        Json(json!({
                            "messaging_product": "whatsapp",
                            "contacts": [{"input": to, "wa_id": to.trim_start_matches('+')}],
                            "messages": [{"id": id}],
                        }))
                        .into_response()
                    }
                }
                (Some(to), Some("call_permission_request"), _) if !to.is_empty() => {
                    let mut inner = sim.lock();
                    inner.next += 1;
                    let id = format!("wamid.SIM{:016}", inner.next);
                    drop(inner);
                    sim.notify(SimNotice::PermissionRequest {
                        phone_number_id: number.clone(),
                        user: to.trim_start_matches('+').to_string(),
                        message_id: id.clone(),
                    });
                    Json(json!({
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": to, "wa_id": to.trim_start_matches('+')}],
                        "messages": [{"id": id}],
                    }))
                    .into_response()
                }
                _ => invalid(
                    "Invalid parameter",
                    "the sim accepts text messages, interactive call_permission_request messages and templates, each with a recipient",
                ),
            }
        }
    };
    record(
        &sim,
        "messages",
        None,
        &number,
        parsed.unwrap_or(Value::Null),
        &response,
    );
    response
}

async fn get_settings(
    State(sim): State<SimGraph>,
    Path((version, number)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let response = match gate(&sim, &headers, &version, &number).await {
        Some(r) => r,
        None => {
            let inner = sim.lock();
            let mut calling = inner
                .settings
                .get(&number)
                .cloned()
                .unwrap_or_else(default_calling);
            // The SIP password only when asked for, as Meta does.
            let password = inner.sip_passwords.get(&number).cloned();
            let with_credentials = query
                .get("include_sip_credentials")
                .is_some_and(|v| v == "true");
            if let (true, Some(password)) = (with_credentials, password) {
                if let Some(servers) = calling
                    .pointer_mut("/sip/servers")
                    .and_then(Value::as_array_mut)
                {
                    for server in servers.iter_mut().filter_map(Value::as_object_mut) {
                        server.insert("sip_user_password".into(), json!(password));
                    }
                }
            }
            Json(json!({"calling": calling})).into_response()
        }
    };
    record(&sim, "settings", None, &number, Value::Null, &response);
    response
}

async fn post_settings(
    State(sim): State<SimGraph>,
    Path((version, number)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let response = match gate(&sim, &headers, &version, &number).await {
        Some(r) => r,
        None => match parsed
            .as_ref()
            .and_then(|b| b.get("calling"))
            .and_then(Value::as_object)
        {
            Some(calling) => match check_calling(calling, &today()) {
                Err(details) => invalid("Invalid parameter", &details),
                Ok(()) => {
                    let mut inner = sim.lock();
                    let entry = inner
                        .settings
                        .entry(number.clone())
                        .or_insert_with(default_calling);
                    if let Some(target) = entry.as_object_mut() {
                        // Each key given replaces the one stored (call_hours as a whole).
                        for (k, v) in calling {
                            target.insert(k.clone(), v.clone());
                        }
                    }
                    let has_server = calling
                        .get("sip")
                        .and_then(|s| s.get("servers"))
                        .and_then(Value::as_array)
                        .is_some_and(|s| !s.is_empty());
                    if has_server && !inner.sip_passwords.contains_key(&number) {
                        let password = format!("sim-sip-{}", uuid::Uuid::new_v4().simple());
                        inner.sip_passwords.insert(number.clone(), password);
                    }
                    Json(json!({"success": true})).into_response()
                }
            },
            None => invalid("Invalid parameter", "calling is required"),
        },
    };
    record(
        &sim,
        "settings",
        Some("update"),
        &number,
        parsed.unwrap_or(Value::Null),
        &response,
    );
    response
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn today() -> String {
    jiff::tz::TimeZone::UTC
        .to_datetime(jiff::Timestamp::now())
        .date()
        .to_string()
}

/// Meta's checks of a `calling` settings object (§4.2 of our digest of Meta's API): the
/// first problem, worded as the details of Meta's error 100.
fn check_calling(calling: &serde_json::Map<String, Value>, today: &str) -> Result<(), String> {
    let one_of = |key: &str, v: &Value, allowed: &[&str]| match v.as_str() {
        Some(s) if allowed.contains(&s) => Ok(()),
        _ => Err(format!("{key} must be one of {}", allowed.join(", "))),
    };
    for (key, value) in calling {
        match key.as_str() {
            "status" | "callback_permission_status" => {
                one_of(key, value, &["ENABLED", "DISABLED"])?
            }
            "call_icon_visibility" => one_of(key, value, &["DEFAULT", "DISABLE_ALL"])?,
            "srtp_key_exchange_protocol" => one_of(key, value, &["DTLS", "SDES"])?,
            "call_icons" => {
                let countries = value
                    .get("restrict_to_user_countries")
                    .and_then(Value::as_array)
                    .ok_or("call_icons.restrict_to_user_countries must be a list")?;
                for c in countries {
                    let ok = c
                        .as_str()
                        .is_some_and(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()));
                    if !ok {
                        return Err(format!(
                            "call_icons.restrict_to_user_countries: {c} is not an ISO 3166 alpha-2 country code"
                        ));
                    }
                }
            }
            "audio" => {
                let codecs = value
                    .get("additional_codecs")
                    .and_then(Value::as_array)
                    .ok_or("audio.additional_codecs must be a list")?;
                for c in codecs {
                    one_of("audio.additional_codecs", c, &["PCMA", "PCMU"])?;
                }
            }
            "sip" => check_sip(value)?,
            "call_hours" => check_call_hours(value, today)?,
            "restrictions" => return Err("restrictions cannot be set".into()),
            // Meta's newer settings (voicemail, 2026-06): taken as given.
            "voicemail" if value.is_object() => {}
            other => return Err(format!("unknown field calling.{other}")),
        }
    }
    Ok(())
}

fn check_sip(sip: &Value) -> Result<(), String> {
    let status = sip.get("status").and_then(Value::as_str);
    if !matches!(status, Some("ENABLED" | "DISABLED")) {
        return Err("sip.status must be one of ENABLED, DISABLED".into());
    }
    let servers = match sip.get("servers") {
        None => Vec::new(),
        Some(s) => s.as_array().cloned().ok_or("sip.servers must be a list")?,
    };
    if status == Some("ENABLED") && servers.is_empty() {
        return Err("sip.servers: at least one SIP server is required while SIP is enabled".into());
    }
    for server in &servers {
        let host = server.get("hostname").and_then(Value::as_str).unwrap_or("");
        if host.is_empty() {
            return Err("sip.servers[].hostname is required".into());
        }
        if let Some(port) = server.get("port") {
            let port = port
                .as_u64()
                .or_else(|| port.as_str().and_then(|p| p.parse().ok()));
            if !port.is_some_and(|p| (1..=65535).contains(&p)) {
                return Err("sip.servers[].port must be a port number".into());
            }
        }
        if let Some(params) = server.get("request_uri_user_params") {
            let params = params
                .as_object()
                .ok_or("sip.servers[].request_uri_user_params must be an object")?;
            for (k, v) in params {
                let v = v.as_str().unwrap_or("");
                if k.len() > 128 || v.len() > 128 {
                    return Err("sip.servers[].request_uri_user_params: keys and values are at most 128 characters".into());
                }
            }
        }
    }
    Ok(())
}

fn check_call_hours(hours: &Value, today: &str) -> Result<(), String> {
    let status = hours.get("status").and_then(Value::as_str);
    if !matches!(status, Some("ENABLED" | "DISABLED")) {
        return Err("call_hours.status must be one of ENABLED, DISABLED".into());
    }
    let zone = hours
        .get("timezone_id")
        .and_then(Value::as_str)
        .ok_or("call_hours.timezone_id is required")?;
    let weekly = hours
        .get("weekly_operating_hours")
        .and_then(Value::as_array)
        .ok_or("call_hours.weekly_operating_hours is required")?;
    if weekly.is_empty() && status == Some("ENABLED") {
        return Err("call_hours.weekly_operating_hours must not be empty".into());
    }
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let entries: Vec<(String, String, String)> = weekly
        .iter()
        .map(|e| {
            (
                text(e, "day_of_week"),
                text(e, "open_time"),
                text(e, "close_time"),
            )
        })
        .collect();
    for day in crate::control::schedule::DAYS {
        if entries.iter().filter(|(d, _, _)| d == day).count() > 2 {
            return Err(format!("call_hours: at most 2 entries per day ({day})"));
        }
    }
    let holidays = match hours.get("holiday_schedule") {
        None => Vec::new(),
        Some(h) => h
            .as_array()
            .ok_or("call_hours.holiday_schedule must be a list")?
            .iter()
            .map(|e| (text(e, "date"), text(e, "start_time"), text(e, "end_time")))
            .collect(),
    };
    if holidays.len() > 20 {
        return Err("call_hours.holiday_schedule: at most 20 entries".into());
    }
    let weekly_refs: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|(d, o, c)| (d.as_str(), o.as_str(), c.as_str()))
        .collect();
    let holiday_refs: Vec<(&str, &str, &str)> = holidays
        .iter()
        .map(|(d, s, e)| (d.as_str(), s.as_str(), e.as_str()))
        .collect();
    crate::control::schedule::Schedule::new(zone, &weekly_refs, &holiday_refs)
        .map_err(|e| format!("call_hours: {e}"))?;
    if let Some((date, _, _)) = holidays.iter().find(|(d, _, _)| d.as_str() < today) {
        return Err(format!(
            "call_hours.holiday_schedule: {date} is in the past"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_look_like_metas_and_are_unique() {
        let mut n = 0;
        let a = call_id(&mut n, "14085551234", "105615555715855");
        let b = call_id(&mut n, "14085551234", "105615555715855");
        assert!(a.starts_with("wacid.") && a != b);
        assert!(a[6..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c)));
    }
}
