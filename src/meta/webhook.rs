//! Meta's webhook payloads, turned into typed events for the call layer.
//!
//! Sans-IO: [`parse`] takes the body (already authenticated by its signature) and returns
//! every calling event in it, in order, plus what it did not know. Meta's payloads vary
//! between versions and samples (fields present or absent, numbers as strings or integers,
//! `errors` inside the call or beside it), so every field is optional unless a call cannot
//! be identified without it, and unknown fields, event types and message types are counted
//! and skipped, never fatal. [`Dedup`] recognises redelivered events.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// The business number an event concerns, from the change's `metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Business {
    /// Meta's id of the number (`phone_number_id`).
    pub phone_number_id: String,
    /// The number, digits only.
    pub display_number: String,
    /// The WhatsApp Business Account (`entry[].id`).
    pub waba_id: String,
}

/// The WhatsApp user of an event, from the change's `contacts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    /// The user's number (`wa_id`), digits only; empty for username-only users.
    pub wa_id: String,
    /// Profile name (may be just the number).
    pub name: Option<String>,
    /// Business-scoped user id (2026).
    pub user_id: Option<String>,
}

/// Who placed a call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallDirection {
    /// The WhatsApp user called the business.
    UserInitiated,
    /// The business called the user.
    BusinessInitiated,
    /// A value this version does not know.
    Other(String),
}

/// Whether the SDP of a `connect` is Meta's offer (user-initiated) or answer
/// (business-initiated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpType {
    /// Meta offers; we answer with `pre_accept`/`accept`.
    Offer,
    /// Meta answers our `connect` offer.
    Answer,
}

/// An error Meta reports on a call (`errors[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallError {
    /// Meta's code (e.g. 138021: no media for a long time).
    pub code: Option<i64>,
    /// Title or message.
    pub message: String,
    /// `error_data.details`.
    pub details: Option<String>,
}

/// `calls[].event = connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallConnect {
    /// Meta's call id (`wacid.…`), opaque.
    pub call_id: String,
    /// Caller (the user in user-initiated calls).
    pub from: String,
    /// Callee.
    pub to: String,
    /// Who placed it (absent in some samples).
    pub direction: Option<CallDirection>,
    /// Unix seconds of the event.
    pub timestamp: Option<u64>,
    /// Offer or answer.
    pub sdp_type: SdpType,
    /// The SDP, as Meta sent it.
    pub sdp: String,
    /// Our tracking string, echoed.
    pub biz_opaque_callback_data: Option<String>,
    /// From a `wa.me/call` deep link.
    pub deeplink_payload: Option<String>,
    /// From a call button.
    pub cta_payload: Option<String>,
    /// The business number.
    pub business: Business,
    /// The WhatsApp user.
    pub contact: Option<Contact>,
}

/// How a call ended, per Meta.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TerminateStatus {
    /// Ended normally (also unanswered calls).
    Completed,
    /// Ended by an error (see the errors).
    Failed,
    /// Not given.
    Unknown,
    /// A value this version does not know.
    Other(String),
}

/// `calls[].event = call_created`: a call of a number in SIP mode began (Meta's SIP
/// interface carries it; the webhook has no session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallCreated {
    /// Meta's call id (the SIP dialog's `x-wa-meta-wacid`).
    pub call_id: String,
    /// Caller.
    pub from: String,
    /// Callee.
    pub to: String,
    /// Who placed it.
    pub direction: Option<CallDirection>,
    /// Unix seconds.
    pub timestamp: Option<u64>,
    /// The business number.
    pub business: Business,
}

/// `calls[].event = call_recording_available` or `call_transcription_available`: Meta's own
/// recording (Ogg Opus) or transcript (JSON) of a call is ready to be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallMedia {
    /// Meta's call id.
    pub call_id: String,
    /// A transcript rather than the audio.
    pub transcript: bool,
    /// Meta's media id.
    pub media_id: String,
    /// Its SHA-256, base64.
    pub sha256: String,
    /// Its media type.
    pub mime_type: String,
    /// Where it is fetched, with the access token.
    pub url: String,
    /// The WhatsApp user of the call (`from`, or `to`).
    pub user: String,
    /// The business number.
    pub business: Business,
}

/// `calls[].event = terminate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTerminate {
    /// Meta's call id.
    pub call_id: String,
    /// Caller.
    pub from: String,
    /// Callee.
    pub to: String,
    /// Who placed it.
    pub direction: Option<CallDirection>,
    /// Unix seconds of the event.
    pub timestamp: Option<u64>,
    /// Completed or failed.
    pub status: TerminateStatus,
    /// When the call was picked up (answered calls only), Unix seconds.
    pub start_time: Option<u64>,
    /// When it ended (answered calls only).
    pub end_time: Option<u64>,
    /// Seconds talked (answered calls only).
    pub duration_secs: Option<u64>,
    /// Errors, from inside the call object and beside it, without repeats.
    pub errors: Vec<CallError>,
    /// Our tracking string, echoed.
    pub biz_opaque_callback_data: Option<String>,
    /// The business number.
    pub business: Business,
    /// The WhatsApp user.
    pub contact: Option<Contact>,
}

/// A business-initiated call's progress (`statuses[].status`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallStatusKind {
    /// The user's phone rings.
    Ringing,
    /// The user answered (often after media is already up; for audit).
    Accepted,
    /// The user declined (a terminate follows).
    Rejected,
    /// A value this version does not know.
    Other(String),
}

/// `statuses[]` with `type = call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStatus {
    /// Meta's call id.
    pub call_id: String,
    /// The status.
    pub status: CallStatusKind,
    /// The user called.
    pub recipient_id: String,
    /// Unix seconds.
    pub timestamp: Option<u64>,
    /// Our tracking string, echoed.
    pub biz_opaque_callback_data: Option<String>,
    /// The business number.
    pub business: Business,
}

/// The user's answer to a call-permission request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PermissionResponse {
    /// Granted.
    Accept,
    /// Declined, or revoked automatically after unanswered calls.
    Reject,
    /// A value this version does not know.
    Other(String),
}

/// Whether the user or WhatsApp made the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseSource {
    /// The user chose.
    UserAction,
    /// Granted because the user called with callback enabled, or revoked after unanswered
    /// calls.
    Automatic,
    /// Not given.
    Unknown,
    /// A value this version does not know.
    Other(String),
}

/// `messages[]` with `interactive.type = call_permission_reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionReply {
    /// The user (`from`).
    pub from: String,
    /// The reply message's id (`wamid.…`).
    pub message_id: String,
    /// What it answers: our request's `wamid`, or the user's call `wacid` for a callback
    /// grant; absent for grants from the business profile and for automatic revocations.
    pub context_id: Option<String>,
    /// Granted or not.
    pub response: PermissionResponse,
    /// A permanent grant.
    pub is_permanent: bool,
    /// Expiry of a temporary grant, Unix seconds.
    pub expires_at: Option<u64>,
    /// Who decided.
    pub source: ResponseSource,
    /// Unix seconds.
    pub timestamp: Option<u64>,
    /// The business number.
    pub business: Business,
    /// The WhatsApp user.
    pub contact: Option<Contact>,
}

/// One calling event of a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetaEvent {
    /// A call connects (user-initiated: Meta's offer; business-initiated: Meta's answer).
    Connect(CallConnect),
    /// A call ended.
    Terminate(CallTerminate),
    /// A call over Meta's SIP interface began (its SIP-mode webhook).
    Created(CallCreated),
    /// A business-initiated call progressed.
    Status(CallStatus),
    /// A call-permission reply.
    PermissionReply(PermissionReply),
    /// Meta's recording or transcript of a call is ready.
    Media(CallMedia),
}

impl MetaEvent {
    /// Kind, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MetaEvent::Connect(_) => "connect",
            MetaEvent::Terminate(_) => "terminate",
            MetaEvent::Created(_) => "call_created",
            MetaEvent::Status(_) => "status",
            MetaEvent::PermissionReply(_) => "permission_reply",
            MetaEvent::Media(m) if m.transcript => "call_transcription_available",
            MetaEvent::Media(_) => "call_recording_available",
        }
    }

    /// The call the event is about: Meta's id, and the switch's call id Meta echoes
    /// (`biz_opaque_callback_data`); `None` for a permission reply.
    pub fn call(&self) -> Option<(&str, Option<&str>)> {
        match self {
            MetaEvent::Connect(c) => Some((&c.call_id, c.biz_opaque_callback_data.as_deref())),
            MetaEvent::Terminate(t) => Some((&t.call_id, t.biz_opaque_callback_data.as_deref())),
            MetaEvent::Created(c) => Some((&c.call_id, None)),
            MetaEvent::Status(s) => Some((&s.call_id, s.biz_opaque_callback_data.as_deref())),
            // After the call: any node keeps it (the store is shared).
            MetaEvent::PermissionReply(_) | MetaEvent::Media(_) => None,
        }
    }

    /// A user's new call (a `connect` with their offer), which no node has yet.
    pub fn starts_call(&self) -> bool {
        matches!(self, MetaEvent::Connect(c) if c.sdp_type == SdpType::Offer)
    }

    /// What makes a redelivery of this event recognisable: the id plus what happened.
    pub fn dedup_key(&self) -> String {
        match self {
            MetaEvent::Connect(c) => format!("{}|connect", c.call_id),
            MetaEvent::Terminate(t) => format!("{}|terminate", t.call_id),
            MetaEvent::Created(c) => format!("{}|call_created", c.call_id),
            MetaEvent::Status(s) => format!("{}|status|{}", s.call_id, status_name(&s.status)),
            MetaEvent::PermissionReply(p) => format!("{}|permission_reply", p.message_id),
            MetaEvent::Media(m) => format!("{}|media|{}", m.call_id, m.media_id),
        }
    }
}

fn status_name(s: &CallStatusKind) -> &str {
    match s {
        CallStatusKind::Ringing => "RINGING",
        CallStatusKind::Accepted => "ACCEPTED",
        CallStatusKind::Rejected => "REJECTED",
        CallStatusKind::Other(o) => o,
    }
}

/// What a webhook held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Calling events, in payload order.
    pub events: Vec<MetaEvent>,
    /// Things skipped because this version does not know them, by kind (`field`,
    /// `change_field`, `event`, `message_type`, `status_type`) and name.
    pub unknown: Vec<(&'static str, String)>,
    /// Items skipped because a required part was missing (an event without its call id or
    /// SDP), with the reason.
    pub invalid: Vec<String>,
}

/// Why a body is not a webhook at all (a 400 answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Not JSON.
    #[error("body is not JSON: {0}")]
    Json(String),
    /// JSON, but not an object with an `entry` array.
    #[error("body is not a webhook: {0}")]
    Shape(&'static str),
}

/// Parses a webhook body. Only a body that is not a JSON webhook envelope is an error;
/// anything inside that is unknown or incomplete is reported in [`Parsed`] and skipped.
pub fn parse(body: &[u8]) -> Result<Parsed, PayloadError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::Json(e.to_string()))?;
    let root = root
        .as_object()
        .ok_or(PayloadError::Shape("not a JSON object"))?;
    let entries = root
        .get("entry")
        .and_then(Value::as_array)
        .ok_or(PayloadError::Shape("no entry array"))?;
    let mut out = Parsed::default();
    unknown_keys(root, &["object", "entry"], "", &mut out);
    for entry in entries.iter().filter_map(Value::as_object) {
        unknown_keys(entry, &["id", "changes", "time"], "entry.", &mut out);
        let waba_id = text(entry.get("id")).unwrap_or_default();
        let changes = entry.get("changes").and_then(Value::as_array);
        for change in changes.into_iter().flatten().filter_map(Value::as_object) {
            unknown_keys(change, &["field", "value"], "change.", &mut out);
            let field = text(change.get("field")).unwrap_or_default();
            let Some(value) = change.get("value").and_then(Value::as_object) else {
                out.invalid
                    .push(format!("change {field:?} without a value"));
                continue;
            };
            match field.as_str() {
                "calls" | "messages" => change_value(&field, value, &waba_id, &mut out),
                other => out.unknown.push(("change_field", other.to_string())),
            }
        }
    }
    Ok(out)
}

const VALUE_KEYS: &[&str] = &[
    "messaging_product",
    "metadata",
    "contacts",
    "calls",
    "statuses",
    "messages",
    "errors",
];

fn change_value(field: &str, value: &Map<String, Value>, waba_id: &str, out: &mut Parsed) {
    unknown_keys(value, VALUE_KEYS, "value.", out);
    let metadata = value.get("metadata").and_then(Value::as_object);
    let business = Business {
        phone_number_id: metadata
            .and_then(|m| text(m.get("phone_number_id")))
            .unwrap_or_default(),
        display_number: metadata
            .and_then(|m| text(m.get("display_phone_number")))
            .unwrap_or_default(),
        waba_id: waba_id.to_string(),
    };
    let contacts: Vec<Contact> = value
        .get("contacts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .map(|c| Contact {
            wa_id: text(c.get("wa_id")).unwrap_or_default(),
            name: c
                .get("profile")
                .and_then(|p| p.get("name"))
                .and_then(|n| text(Some(n))),
            user_id: text(c.get("user_id")),
        })
        .collect();
    // The contact of an event is the one whose wa_id is the user's number; with one
    // contact (every sample), that one.
    let contact_for = |numbers: &[&str]| {
        contacts
            .iter()
            .find(|c| !c.wa_id.is_empty() && numbers.contains(&c.wa_id.as_str()))
            .or(if contacts.len() == 1 {
                contacts.first()
            } else {
                None
            })
            .cloned()
    };
    let value_errors = errors(value.get("errors"));
    let items = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
    };
    if field == "calls" {
        for call in items("calls") {
            call_event(call, &business, &contact_for, &value_errors, out);
        }
        for status in items("statuses") {
            status_event(status, &business, out);
        }
    } else {
        for message in items("messages") {
            message_event(message, &business, &contact_for, out);
        }
        // Delivery statuses of the messages we send arrive here too: not calling events.
    }
}

const CALL_KEYS: &[&str] = &[
    "id",
    "from",
    "to",
    "event",
    "timestamp",
    "direction",
    "session",
    "connection",
    "biz_opaque_callback_data",
    "deeplink_payload",
    "cta_payload",
    "status",
    "start_time",
    "end_time",
    "duration",
    "errors",
    "call_recording",
    "call_transcript",
    "from_user_id",
    "from_parent_user_id",
    "to_user_id",
    "to_parent_user_id",
];

fn call_event(
    call: &Map<String, Value>,
    business: &Business,
    contact_for: &dyn Fn(&[&str]) -> Option<Contact>,
    value_errors: &[CallError],
    out: &mut Parsed,
) {
    unknown_keys(call, CALL_KEYS, "call.", out);
    let event = text(call.get("event")).unwrap_or_default();
    let Some(call_id) = text(call.get("id")).filter(|id| !id.is_empty()) else {
        out.invalid
            .push(format!("{event:?} call event without an id"));
        return;
    };
    let from = text(call.get("from")).unwrap_or_default();
    let to = text(call.get("to")).unwrap_or_default();
    let direction = text(call.get("direction")).map(|d| match d.as_str() {
        "USER_INITIATED" => CallDirection::UserInitiated,
        "BUSINESS_INITIATED" => CallDirection::BusinessInitiated,
        _ => CallDirection::Other(d),
    });
    let timestamp = number(call.get("timestamp"));
    let opaque = text(call.get("biz_opaque_callback_data"));
    let contact = contact_for(&[from.as_str(), to.as_str()]);
    match event.as_str() {
        "connect" => {
            let session = call.get("session").and_then(Value::as_object);
            let sdp = session.and_then(|s| text(s.get("sdp")));
            let sdp_type = match session
                .and_then(|s| text(s.get("sdp_type")))
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("offer") => Some(SdpType::Offer),
                Some("answer") => Some(SdpType::Answer),
                _ => None,
            };
            let (Some(sdp), Some(sdp_type)) = (sdp.filter(|s| !s.is_empty()), sdp_type) else {
                out.invalid.push(format!(
                    "connect {call_id} without a session SDP and its type"
                ));
                return;
            };
            out.events.push(MetaEvent::Connect(CallConnect {
                call_id,
                from,
                to,
                direction,
                timestamp,
                sdp_type,
                sdp,
                biz_opaque_callback_data: opaque,
                deeplink_payload: text(call.get("deeplink_payload")),
                cta_payload: text(call.get("cta_payload")),
                business: business.clone(),
                contact,
            }));
        }
        "terminate" => {
            let status = match text(call.get("status")) {
                None => TerminateStatus::Unknown,
                Some(s) => match s.to_ascii_uppercase().as_str() {
                    "COMPLETED" => TerminateStatus::Completed,
                    "FAILED" => TerminateStatus::Failed,
                    _ => TerminateStatus::Other(s),
                },
            };
            let mut all = errors(call.get("errors"));
            for e in value_errors {
                if !all.contains(e) {
                    all.push(e.clone());
                }
            }
            out.events.push(MetaEvent::Terminate(CallTerminate {
                call_id,
                from,
                to,
                direction,
                timestamp,
                status,
                start_time: number(call.get("start_time")),
                end_time: number(call.get("end_time")),
                duration_secs: number(call.get("duration")),
                errors: all,
                biz_opaque_callback_data: opaque,
                business: business.clone(),
                contact,
            }));
        }
        "call_created" => out.events.push(MetaEvent::Created(CallCreated {
            call_id,
            from,
            to,
            direction,
            timestamp,
            business: business.clone(),
        })),
        "call_recording_available" | "call_transcription_available" => {
            let transcript = event == "call_transcription_available";
            let (outer, inner) = if transcript {
                ("call_transcript", "document")
            } else {
                ("call_recording", "audio")
            };
            let media = call
                .get(outer)
                .and_then(|m| m.get(inner))
                .and_then(Value::as_object);
            let field = |k: &str| media.and_then(|m| text(m.get(k))).filter(|v| !v.is_empty());
            let (Some(media_id), Some(sha256), Some(url)) =
                (field("id"), field("sha256"), field("url"))
            else {
                out.invalid.push(format!(
                    "{event} {call_id} without its {outer}.{inner} id, sha256 and url"
                ));
                return;
            };
            let user = if from.is_empty() || from == business.display_number {
                to
            } else {
                from
            };
            out.events.push(MetaEvent::Media(CallMedia {
                call_id,
                transcript,
                media_id,
                sha256,
                mime_type: field("mime_type").unwrap_or_else(|| {
                    if transcript {
                        "application/json".into()
                    } else {
                        "audio/ogg; codecs=opus".into()
                    }
                }),
                url,
                user,
                business: business.clone(),
            }));
        }
        other => out.unknown.push(("event", other.to_string())),
    }
}

fn status_event(status: &Map<String, Value>, business: &Business, out: &mut Parsed) {
    let kind = text(status.get("type")).unwrap_or_default();
    if kind != "call" {
        out.unknown.push(("status_type", kind));
        return;
    }
    let Some(call_id) = text(status.get("id")).filter(|id| !id.is_empty()) else {
        out.invalid.push("call status without an id".to_string());
        return;
    };
    let value = text(status.get("status")).unwrap_or_default();
    let status_kind = match value.to_ascii_uppercase().as_str() {
        "RINGING" => CallStatusKind::Ringing,
        "ACCEPTED" => CallStatusKind::Accepted,
        "REJECTED" => CallStatusKind::Rejected,
        _ => CallStatusKind::Other(value),
    };
    out.events.push(MetaEvent::Status(CallStatus {
        call_id,
        status: status_kind,
        recipient_id: text(status.get("recipient_id")).unwrap_or_default(),
        timestamp: number(status.get("timestamp")),
        biz_opaque_callback_data: text(status.get("biz_opaque_callback_data")),
        business: business.clone(),
    }));
}

fn message_event(
    message: &Map<String, Value>,
    business: &Business,
    contact_for: &dyn Fn(&[&str]) -> Option<Contact>,
    out: &mut Parsed,
) {
    let interactive = message.get("interactive").and_then(Value::as_object);
    let itype = interactive.and_then(|i| text(i.get("type")));
    if itype.as_deref() != Some("call_permission_reply") {
        // Ordinary chat messages are not calling events: skipped, not counted as unknown.
        if text(message.get("type")).as_deref() == Some("interactive") {
            out.unknown
                .push(("message_type", itype.unwrap_or_default()));
        }
        return;
    }
    let Some(reply) = interactive
        .and_then(|i| i.get("call_permission_reply"))
        .and_then(Value::as_object)
    else {
        out.invalid
            .push("call_permission_reply without its body".to_string());
        return;
    };
    let Some(message_id) = text(message.get("id")).filter(|id| !id.is_empty()) else {
        out.invalid
            .push("call_permission_reply without a message id".to_string());
        return;
    };
    let from = text(message.get("from")).unwrap_or_default();
    let response = text(reply.get("response")).unwrap_or_default();
    let source = match text(reply.get("response_source")) {
        None => ResponseSource::Unknown,
        Some(s) => match s.as_str() {
            "user_action" => ResponseSource::UserAction,
            "automatic" => ResponseSource::Automatic,
            _ => ResponseSource::Other(s),
        },
    };
    out.events.push(MetaEvent::PermissionReply(PermissionReply {
        contact: contact_for(&[from.as_str()]),
        from,
        message_id,
        context_id: message
            .get("context")
            .and_then(|c| c.get("id"))
            .and_then(|id| text(Some(id))),
        response: match response.as_str() {
            "accept" => PermissionResponse::Accept,
            "reject" => PermissionResponse::Reject,
            _ => PermissionResponse::Other(response),
        },
        is_permanent: reply
            .get("is_permanent")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        expires_at: number(reply.get("expiration_timestamp")),
        source,
        timestamp: number(message.get("timestamp")),
        business: business.clone(),
    }));
}

fn errors(v: Option<&Value>) -> Vec<CallError> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .map(|e| CallError {
            code: e
                .get("code")
                .and_then(|c| number(Some(c)))
                .map(|c| c as i64),
            message: text(e.get("message"))
                .or_else(|| text(e.get("title")))
                .unwrap_or_default(),
            details: e
                .get("error_data")
                .and_then(|d| d.get("details"))
                .and_then(|d| text(Some(d))),
        })
        .collect()
}

/// A string field; numbers are accepted as their decimal text (Meta's tables call numbers
/// "Integer" while every sample sends strings).
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A non-negative integer sent as a number or as a string of digits.
fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn unknown_keys(map: &Map<String, Value>, known: &[&str], prefix: &str, out: &mut Parsed) {
    for k in map.keys() {
        if !known.contains(&k.as_str()) {
            out.unknown.push(("field", format!("{prefix}{k}")));
        }
    }
}

/// The first 16 bytes of an id's SHA-256: what is kept of Meta's ids that only need to be
/// recognised again (delivered events, applied replies), whatever their length.
pub(crate) fn id_digest(id: &str) -> u128 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    u128::from_be_bytes(first)
}

/// Remembers the events already delivered, so a redelivery is recognised. Bounded in size
/// and age; time is an input. Each event is kept as 16 bytes of the SHA-256 of its key, so
/// a full window costs a few megabytes, whatever the keys' length.
#[derive(Debug)]
pub struct Dedup {
    seen: HashSet<u128>,
    order: VecDeque<(Instant, u128)>,
    ttl: Duration,
    capacity: usize,
}

impl Dedup {
    /// Remembers up to `capacity` events for `ttl` each.
    pub fn new(ttl: Duration, capacity: usize) -> Dedup {
        Dedup {
            seen: HashSet::new(),
            order: VecDeque::new(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// Whether `key` was seen within the window (without remembering it).
    pub fn seen(&mut self, key: &str, now: Instant) -> bool {
        self.expire(now);
        self.seen.contains(&id_digest(key))
    }

    /// Remembers `key` as delivered at `now`.
    pub fn remember(&mut self, key: String, now: Instant) {
        self.expire(now);
        while self.seen.len() >= self.capacity {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.seen.remove(&old);
                }
                None => break,
            }
        }
        let digest = id_digest(&key);
        if self.seen.insert(digest) {
            self.order.push_back((now, digest));
        }
    }

    /// Events remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Forgets what is older than the window, and gives back the memory of a burst once
    /// the window holds a quarter of it.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.seen.remove(&key);
            }
        }
        if self.seen.capacity() > 1024 && self.seen.len() < self.seen.capacity() / 4 {
            self.seen.shrink_to(self.seen.len() * 2);
            self.order.shrink_to(self.order.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests;
