//! The permission part of the REST API (behind the same bearer token as `/v1`):
//!
//! - `POST /v1/permissions/{business_number}/{wa_id}/request` `{"purpose": "..."}` (and
//!   optionally `"template": {"name", "language", "parameters"}` to send an approved
//!   call-permission template instead): sends the request through Meta, if the limits allow (201 with the audit
//!   record; 403 `{"error", "reason"}` for a customer a call could not reach either: a
//!   sanctioned region, a business number of an excluded country, the do-not-call list;
//!   429 over a request limit, 409 when a permanent grant exists, 502 when Meta refuses).
//! - `GET /v1/permissions/{business_number}/{wa_id}`: the permission and what remains.
//! - `DELETE /v1/permissions/{business_number}/{wa_id}`: the business withdraws the grant.
//! - `PUT /v1/dnc/{business_number}/{wa_id}` `{"reason": "..."}`, `DELETE` the same path,
//!   `GET /v1/dnc?business_number=`: the do-not-call list.
//! - `GET /v1/audit?wa_id=&business_number=&since=&until=&after_seq=&limit=&format=csv`: the
//!   audit trail in trail order (JSON, or CSV with `format=csv`).
//!
//! Numbers in paths and queries are read as E.164 (`+4915…`, `4915…` and `004915…` are one
//! customer; a national `0151…` is read in the business number's country); one that is
//! not a number gets 400 naming why. Every change is in the audit trail before the
//! response is sent.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map};

use crate::audit::{csv_line, CSV_HEADER};
use crate::config::BusinessNumber;
use crate::meta::graph::GraphClient;
use crate::permission::service::{Pair, PermissionError, Permissions};
use crate::permission::state::{Actor, Event, RequestRefused};
use crate::store::audit::{AuditFilter, AuditRepository};
use crate::telemetry;

/// What the permission routes need.
#[derive(Clone)]
pub(crate) struct PermissionApi {
    /// The permission service.
    pub permissions: Permissions,
    /// Meta's Graph API (`None`: no `[meta]`, requests cannot be sent).
    pub graph: Option<Arc<GraphClient>>,
    /// The business numbers served.
    pub numbers: Arc<Vec<BusinessNumber>>,
    /// Business numbers of these countries send no permission requests (nor calls).
    pub excluded_countries: Arc<Vec<String>>,
    /// Customers whose number starts with one of these calling codes are never asked.
    pub sanctioned: Arc<Vec<String>>,
}

/// The routes.
pub(crate) fn routes(api: PermissionApi) -> Router {
    Router::new()
        .route("/v1/permissions/{number}/{wa_id}/request", post(request))
        .route(
            "/v1/permissions/{number}/{wa_id}",
            get(view).delete(withdraw),
        )
        .route("/v1/dnc/{number}/{wa_id}", put(dnc_add).delete(dnc_remove))
        .route("/v1/dnc", get(dnc_list))
        .route("/v1/audit", get(audit))
        .with_state(api)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// The business number served as `number` (any spelling of it).
fn business_number<'a>(api: &'a PermissionApi, number: &str) -> Option<&'a BusinessNumber> {
    let digits = crate::number::e164(number, None).ok()?;
    api.numbers.iter().find(|n| n.display_number == digits)
}

/// The business number and the pair named by a path, the numbers normalised, if the
/// number is served and the customer is a number.
fn business_pair<'a>(
    api: &'a PermissionApi,
    number: &str,
    wa_id: &str,
) -> Result<(&'a BusinessNumber, Pair), (StatusCode, String)> {
    let Some(business) = business_number(api, number) else {
        return Err((
            StatusCode::NOT_FOUND,
            "no such business number on this switch".into(),
        ));
    };
    let customer = crate::number::e164(wa_id, Some(&business.country))
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("wa_id: {e}")))?;
    Ok((business, Pair::new(&business.display_number, &customer)))
}

/// The pair named by a path (see [`business_pair`]).
fn pair(api: &PermissionApi, number: &str, wa_id: &str) -> Result<Pair, (StatusCode, String)> {
    business_pair(api, number, wa_id).map(|(_, p)| p)
}

fn store_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "audit trail not written");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the audit trail could not be written; nothing was changed",
    )
}

#[derive(Deserialize)]
struct RequestBody {
    purpose: String,
    /// Send this approved template instead of the free-form request (outside the
    /// customer-service window).
    #[serde(default)]
    template: Option<TemplateRef>,
}

#[derive(Deserialize, Clone)]
struct TemplateRef {
    name: String,
    #[serde(default = "default_language")]
    language: String,
    #[serde(default)]
    parameters: Vec<String>,
}

fn default_language() -> String {
    "en_US".into()
}

async fn request(
    State(api): State<PermissionApi>,
    Path((number, wa_id)): Path<(String, String)>,
    super::ApiJson(body): super::ApiJson<RequestBody>,
) -> Response {
    let (business, pair) = match business_pair(&api, &number, &wa_id) {
        Ok(p) => p,
        Err((status, why)) => return error(status, &why),
    };
    let purpose = body.purpose.trim().to_string();
    if purpose.is_empty() || purpose.chars().count() > 1024 {
        return error(
            StatusCode::BAD_REQUEST,
            "purpose: 1 to 1024 characters, shown to the customer",
        );
    }
    let Some(graph) = api.graph.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "WhatsApp is not configured on this switch: add a [meta] section",
        );
    };
    let pnid = business.phone_number_id.clone();
    let policy = crate::permission::bic_policy(
        &business.country,
        &pair.wa_id,
        &api.excluded_countries,
        &api.sanctioned,
    );
    if let Some(t) = &body.template {
        if t.name.trim().is_empty() || t.language.trim().is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                "template: an approved template's name and language code",
            );
        }
    }
    let text = purpose.clone();
    let to = pair.wa_id.clone();
    let template = body.template.clone();
    let template_name = body.template.as_ref().map(|t| t.name.clone());
    // On a task of its own: a client hanging up never splits sending from recording.
    let permissions = api.permissions.clone();
    let sent = api
        .permissions
        .background()
        .run("permission request", async move {
            permissions
                .request(
                    &pair,
                    &purpose,
                    template_name.as_deref(),
                    policy,
                    || async move {
                        match template {
                            Some(t) => graph
                                .send_permission_template(
                                    &pnid,
                                    &to,
                                    &t.name,
                                    &t.language,
                                    &t.parameters,
                                )
                                .await
                                .map_err(|e| e.to_string()),
                            None => graph
                                .send_permission_request(&pnid, &to, &text)
                                .await
                                .map_err(|e| e.to_string()),
                        }
                    },
                )
                .await
        })
        .await
        .unwrap_or_else(|e| {
            Err(PermissionError::Send(format!(
                "the request ended without an answer ({e})"
            )))
        });
    match sent {
        Ok(record) => (StatusCode::CREATED, Json(record)).into_response(),
        Err(PermissionError::Refused(r)) => {
            let status = match r {
                RequestRefused::DailyLimit | RequestRefused::WeeklyLimit => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                RequestRefused::DoNotCall => StatusCode::FORBIDDEN,
                RequestRefused::AlreadyPermanent => StatusCode::CONFLICT,
            };
            (
                status,
                Json(json!({"error": r.to_string(), "reason": r.as_str()})),
            )
                .into_response()
        }
        Err(PermissionError::Send(e)) => error(
            StatusCode::BAD_GATEWAY,
            &format!("Meta did not take the request: {e}"),
        ),
        Err(PermissionError::Store(e)) => store_error(e),
        Err(e @ PermissionError::Unrecorded { .. }) => {
            tracing::error!(error = %e, "permission request sent but not in the audit trail");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Err(PermissionError::Blocked(b)) => (
            StatusCode::FORBIDDEN,
            Json(json!({"error": b.to_string(), "reason": b.as_str()})),
        )
            .into_response(),
    }
}

/// The pair's permission (as `GET /v1/permissions/…` shows it) with `may_call`: whether a
/// business-initiated call may be placed now (granted, not on the do-not-call list, calls
/// left today and on the grant).
pub(crate) async fn view_with_verdict(api: &PermissionApi, number: &str, wa_id: &str) -> Response {
    let p = match pair(api, number, wa_id) {
        Ok(p) => p,
        Err((status, why)) => return error(status, &why),
    };
    let view = api.permissions.view(&p).await;
    let may_call = view.status == crate::permission::state::Status::Granted
        && !view.dnc
        && view.remaining.calls_today > 0
        && view.remaining.calls_on_grant != Some(0);
    let mut body = serde_json::to_value(&view).unwrap_or_else(|_| json!({}));
    if let Some(o) = body.as_object_mut() {
        o.insert("may_call".into(), json!(may_call));
    }
    Json(body).into_response()
}

/// Sends a permission request to `wa_id` from business number `number` with `purpose`, as
/// `POST /v1/permissions/…/request` does.
pub(crate) async fn request_for(
    api: &PermissionApi,
    number: &str,
    wa_id: &str,
    purpose: &str,
) -> Response {
    request(
        State(api.clone()),
        Path((number.to_string(), wa_id.to_string())),
        super::ApiJson(RequestBody {
            purpose: purpose.to_string(),
            template: None,
        }),
    )
    .await
}

async fn view(
    State(api): State<PermissionApi>,
    Path((number, wa_id)): Path<(String, String)>,
) -> Response {
    match pair(&api, &number, &wa_id) {
        Ok(p) => Json(api.permissions.view(&p).await).into_response(),
        Err((status, why)) => error(status, &why),
    }
}

/// Records the business's `event` for `pair` on a task of its own, so a client hanging up
/// never leaves a committed record unapplied.
async fn recorded(api: &PermissionApi, pair: &Pair, event: Event) -> Result<(), String> {
    let permissions = api.permissions.clone();
    let pair = pair.clone();
    api.permissions
        .background()
        .run("business change", async move {
            permissions
                .record(&pair, Actor::Business, event, Map::new())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the record ended without an answer ({e})")))
}

/// Records the business's `event` for the pair in the path, then answers with the pair's
/// view.
async fn business_change(
    api: &PermissionApi,
    number: &str,
    wa_id: &str,
    event: impl FnOnce() -> Event,
) -> Response {
    let p = match pair(api, number, wa_id) {
        Ok(p) => p,
        Err((status, why)) => return error(status, &why),
    };
    let event = event();
    let dnc_added = matches!(event, Event::DncAdded { .. });
    match recorded(api, &p, event).await {
        Ok(()) => {
            if dnc_added {
                metrics::counter!(telemetry::DNC_ADDED_TOTAL, "actor" => "business").increment(1);
            }
            Json(api.permissions.view(&p).await).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn withdraw(
    State(api): State<PermissionApi>,
    Path((number, wa_id)): Path<(String, String)>,
) -> Response {
    business_change(&api, &number, &wa_id, || Event::Withdrawn).await
}

#[derive(Deserialize, Default)]
struct DncBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn dnc_add(
    State(api): State<PermissionApi>,
    Path((number, wa_id)): Path<(String, String)>,
    super::ApiJson(body): super::ApiJson<Option<DncBody>>,
) -> Response {
    let reason = body
        .and_then(|b| b.reason)
        .unwrap_or_else(|| "added by the business".into());
    business_change(&api, &number, &wa_id, || Event::DncAdded { reason }).await
}

async fn dnc_remove(
    State(api): State<PermissionApi>,
    Path((number, wa_id)): Path<(String, String)>,
) -> Response {
    business_change(&api, &number, &wa_id, || Event::DncRemoved).await
}

#[derive(Deserialize)]
struct DncQuery {
    business_number: Option<String>,
}

async fn dnc_list(State(api): State<PermissionApi>, Query(q): Query<DncQuery>) -> Response {
    let number = q.business_number.as_deref().map(crate::number::e164_or_raw);
    let list = api.permissions.dnc_list(number.as_deref()).await;
    let entries: Vec<_> = list
        .iter()
        .map(|p| json!({"business_number": p.business_number, "wa_id": p.wa_id}))
        .collect();
    Json(json!({"dnc": entries})).into_response()
}

#[derive(Deserialize)]
struct AuditQuery {
    wa_id: Option<String>,
    business_number: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    after_seq: Option<i64>,
    limit: Option<u32>,
    format: Option<String>,
}

async fn audit(
    State(api): State<PermissionApi>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query: wa_id, business_number, since and until (Unix ms), after_seq, limit, format=csv|json",
        );
    };
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return error(StatusCode::BAD_REQUEST, "format: csv or json"),
    };
    let business = q
        .business_number
        .as_deref()
        .and_then(|n| business_number(&api, n));
    let wa_id = match q.wa_id.as_deref() {
        None => None,
        Some(w) => match crate::number::e164(w, business.map(|b| b.country.as_str())) {
            Ok(w) => Some(w),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("wa_id: {e}")),
        },
    };
    let filter = AuditFilter {
        business_number: q.business_number.as_deref().map(crate::number::e164_or_raw),
        wa_id,
        since: q.since,
        until: q.until,
        after_seq: q.after_seq,
        limit: q.limit.unwrap_or(1000).clamp(1, 10_000),
    };
    let records = match api.permissions.store().audit_records(&filter).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "audit trail not read");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit trail could not be read",
            );
        }
    };
    if csv {
        let mut text = String::from(CSV_HEADER);
        for r in &records {
            text.push_str(&csv_line(r));
        }
        ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response()
    } else {
        Json(json!({"records": records})).into_response()
    }
}
