//! HTTP surface of the node, on one axum router behind one listener ([`server`]): health,
//! readiness and Prometheus metrics; Meta's webhooks ([`webhooks`]); and, with a bearer
//! token configured, the REST API ([`v1`], [`permissions`]).
//!
//! `api` speaks HTTP for the rest of the crate and holds no call logic of its own.

pub(crate) mod agent_page;
pub(crate) mod numbers;
pub(crate) mod permissions;
pub(crate) mod server;
pub(crate) mod sip_ws;
pub(crate) mod v1;
pub(crate) mod webhooks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::call::Calls;
use crate::store::Store;

/// A JSON request body of the REST API. A body without `Content-Type` is read as JSON; one
/// with another type gets 415 saying what to send; one that does not parse gets 400 naming
/// the field (`body: purpose: missing field`). An empty body reads as JSON `null`, so an
/// optional body is `ApiJson<Option<T>>`.
#[derive(Debug, Clone)]
pub(crate) struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        let json_type = match req.headers().get(header::CONTENT_TYPE) {
            None => true,
            Some(v) => v.to_str().is_ok_and(|t| {
                let mime = t
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            }),
        };
        if !json_type {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(serde_json::json!({
                    "error": "send the body as JSON with Content-Type: application/json \
                              (curl: --json '{...}', or -H 'Content-Type: application/json' -d '{...}')"
                })),
            )
                .into_response());
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else {
            &bytes
        };
        let mut de = serde_json::Deserializer::from_slice(text);
        serde_path_to_error::deserialize(&mut de)
            .map(ApiJson)
            .map_err(|e| {
                let at = e.path().to_string();
                let why = e.inner().to_string();
                let message = if at == "." || at.is_empty() {
                    format!("body: {why}")
                } else {
                    format!("body: {at}: {why}")
                };
                (
                    StatusCode::BAD_REQUEST,
                    Json(serde_json::json!({ "error": message })),
                )
                    .into_response()
            })
    }
}

/// How long `/ready` waits for the store.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// What `/ready` reports on: draining, and the listeners this node has bound.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    draining: AtomicBool,
    listeners: Mutex<BTreeMap<&'static str, ListenerState>>,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum ListenerState {
    Pending,
    Bound { address: SocketAddr },
}

impl Readiness {
    /// A node that expects the named listeners to be bound before it is ready.
    pub(crate) fn new(expected: &[&'static str]) -> Self {
        Self {
            draining: AtomicBool::new(false),
            listeners: Mutex::new(
                expected
                    .iter()
                    .map(|name| (*name, ListenerState::Pending))
                    .collect(),
            ),
        }
    }

    /// Records that a listener is bound.
    pub(crate) fn bound(&self, name: &'static str, address: SocketAddr) {
        self.lock().insert(name, ListenerState::Bound { address });
    }

    /// From now on `/ready` answers 503.
    pub(crate) fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The node is draining.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, ListenerState>> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything the HTTP handlers need.
#[derive(Clone)]
pub(crate) struct ApiState {
    /// Readiness inputs.
    pub readiness: Arc<Readiness>,
    /// The database.
    pub store: Store,
    /// The call plane.
    pub calls: Calls,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Places business-initiated calls for `POST /v1/calls`.
    pub sip: crate::call::sip::SipIngress,
    /// The agents, for `/v1/agents`.
    pub agents: crate::call::agents::Directory,
    /// What calls placed for HTTP apps are driven with (`None`: no WhatsApp calling).
    pub control: Option<crate::call::ivr::ControlServices>,
    /// Where recordings are kept (downloads and deletions).
    pub recordings: crate::call::recordings::Recordings,
}

/// The node's HTTP router.
pub(crate) fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/v1/openapi.json", get(openapi))
        .with_state(state)
}

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    version: &'static str,
}

/// Liveness: the process answers.
async fn health() -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok",
        version: crate::telemetry::VERSION,
    })
}

#[derive(Serialize)]
struct ReadyBody {
    status: &'static str,
    draining: bool,
    store: StoreCheck,
    listeners: BTreeMap<&'static str, ListenerState>,
    calls_active: usize,
}

#[derive(Serialize)]
struct StoreCheck {
    backend: &'static str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Readiness: 200 when the store answers and every listener is bound and the node is not
/// draining; 503 otherwise, with the reason in the body.
async fn ready(State(s): State<ApiState>) -> Response {
    let (ok, body) = readiness(&s).await;
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Whether the node is ready, and why, as `/ready` reports it; exported as `waswitch_ready`.
async fn readiness(s: &ApiState) -> (bool, ReadyBody) {
    let draining = s.readiness.is_draining();
    let ping = s.store.ping(STORE_PING_TIMEOUT).await;
    let listeners = s.readiness.lock().clone();
    let all_bound = listeners
        .values()
        .all(|l| matches!(l, ListenerState::Bound { .. }));
    let ok = !draining && ping.is_ok() && all_bound;
    let body = ReadyBody {
        status: if draining {
            "draining"
        } else if ok {
            "ready"
        } else {
            "not_ready"
        },
        draining,
        store: StoreCheck {
            backend: s.store.backend(),
            ok: ping.is_ok(),
            error: ping.err(),
        },
        listeners,
        calls_active: s.calls.active(),
    };
    metrics::gauge!(crate::telemetry::READY).set(if ok { 1.0 } else { 0.0 });
    (ok, body)
}

/// The REST API and the events it sends, described in OpenAPI 3.1 (served to anyone: it
/// holds no secret).
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Prometheus text exposition (readiness decided afresh for `waswitch_ready`).
async fn metrics_text(State(s): State<ApiState>) -> Response {
    readiness(&s).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.prometheus.render(),
    )
        .into_response()
}
