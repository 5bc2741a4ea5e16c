//! `/v1/numbers/{id}/calling`: a business number's calling settings at Meta, read and
//! changed through the Graph API (`meta::settings`). The operator's token only: the
//! settings are the provider's to manage for the business.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::v1::Scope;
use crate::config::{BusinessNumber, ScheduleConfig};
use crate::meta::graph::GraphClient;
use crate::meta::settings;

/// What the routes need.
#[derive(Clone)]
pub(crate) struct NumbersApi {
    /// The Graph client (`None`: no `[meta]`, no settings to manage).
    pub graph: Option<Arc<GraphClient>>,
    /// The business numbers served.
    pub numbers: Arc<Vec<BusinessNumber>>,
    /// The `[[schedule]]`s, which `call_hours` may name.
    pub schedules: Arc<Vec<ScheduleConfig>>,
}

/// The routes.
pub(crate) fn routes(api: NumbersApi) -> Router {
    Router::new()
        .route("/v1/numbers/{number}/calling", get(read).put(change))
        .with_state(api)
}

#[derive(Deserialize)]
struct ReadQuery {
    #[serde(default)]
    include_sip_credentials: bool,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// The number and the Graph client, or the answer that says why not.
fn target<'a>(
    api: &'a NumbersApi,
    scope: &Scope,
    number: &str,
) -> Result<(&'a GraphClient, &'a BusinessNumber), (StatusCode, &'static str)> {
    if !matches!(scope, Scope::Operator) {
        return Err((
            StatusCode::FORBIDDEN,
            "a number's calling settings need the operator's token",
        ));
    }
    let Some(graph) = api.graph.as_deref() else {
        return Err((
            StatusCode::CONFLICT,
            "WhatsApp calling is not configured ([meta])",
        ));
    };
    let Some(n) = settings::find_number(&api.numbers, number) else {
        return Err((
            StatusCode::NOT_FOUND,
            "no such business number (give its phone_number_id or display number)",
        ));
    };
    Ok((graph, n))
}

fn refused(e: &crate::meta::graph::GraphError) -> Response {
    let (status, body) = settings::refusal(e);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, Json(body)).into_response()
}

/// `GET /v1/numbers/{number}/calling[?include_sip_credentials=true]`: Meta's `calling`
/// object of the number.
async fn read(
    State(api): State<NumbersApi>,
    Extension(scope): Extension<Scope>,
    Path(number): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Response {
    let (graph, n) = match target(&api, &scope, &number) {
        Ok(t) => t,
        Err((status, why)) => return error(status, why),
    };
    match graph
        .calling_settings_with(&n.phone_number_id, q.include_sip_credentials)
        .await
    {
        Ok(calling) => Json(calling).into_response(),
        Err(e) => refused(&e),
    }
}

/// `PUT /v1/numbers/{number}/calling` with Meta's `calling` keys to change (`call_hours`
/// may name a `[[schedule]]`): sent to Meta, and answered with the settings Meta then holds.
async fn change(
    State(api): State<NumbersApi>,
    Extension(scope): Extension<Scope>,
    Path(number): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (graph, n) = match target(&api, &scope, &number) {
        Ok(t) => t,
        Err((status, why)) => return error(status, why),
    };
    let change: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("not JSON: {e}")),
    };
    let change = match settings::prepare(change, &api.schedules) {
        Ok(c) => c,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let keys: Vec<String> = change
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    if let Err(e) = graph
        .update_calling_settings(&n.phone_number_id, change)
        .await
    {
        tracing::warn!(number = %n.display_number, error = %e, "calling settings not changed");
        return refused(&e);
    }
    tracing::info!(number = %n.display_number, ?keys, "calling settings changed at Meta");
    match graph.calling_settings(&n.phone_number_id).await {
        Ok(calling) => Json(calling).into_response(),
        Err(e) => refused(&e),
    }
}
