//! The sim's webhooks: Meta's payload shapes, serialised as Meta signs them (ASCII-only JSON,
//! non-ASCII as `\uXXXX` with lowercase hex), signed with the app secret, and delivered with
//! Meta's habits: a retry when the switch does not answer 200 in time, and duplicates or
//! reordering when asked.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Secret;
use crate::meta::signature;

/// The business side of a webhook (the change's `metadata` and `entry[].id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessRef {
    /// WhatsApp Business Account id.
    pub waba_id: String,
    /// Phone number id.
    pub phone_number_id: String,
    /// The number, digits only.
    pub display_number: String,
}

/// The envelope Meta wraps every change in.
fn envelope(business: &BusinessRef, field: &str, value: Value) -> Value {
    let mut value = value;
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] = json!({
        "display_phone_number": business.display_number,
        "phone_number_id": business.phone_number_id,
    });
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": business.waba_id, "changes": [{"value": value, "field": field}]}],
    })
}

fn contacts(user: &str, name: &str) -> Value {
    json!([{"profile": {"name": name}, "wa_id": user}])
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Meta's recording (`transcript`: transcript) of call `call_id` with user `user` is
/// ready: `call_recording_available` (or `call_transcription_available`) with the media's
/// id, base64 SHA-256, type and URL.
pub fn call_media(
    business: &BusinessRef,
    call_id: &str,
    user: &str,
    media: (&str, &str, &str, &str),
    transcript: bool,
) -> Value {
    let (id, sha256, mime_type, url) = media;
    let reference = json!({"id": id, "sha256": sha256, "mime_type": mime_type, "url": url});
    let (event, body) = if transcript {
        (
            "call_transcription_available",
            json!({"call_transcript": {"type": "document", "document": reference}}),
        )
    } else {
        (
            "call_recording_available",
            json!({"call_recording": {"type": "audio", "audio": reference}}),
        )
    };
    let mut call = json!({
        "id": call_id,
        "from": user,
        "to": business.display_number,
        "event": event,
        "timestamp": unix_now().to_string(),
    });
    if let (Some(c), Some(b)) = (call.as_object_mut(), body.as_object()) {
        c.extend(b.clone());
    }
    envelope(
        business,
        "calls",
        json!({"contacts": contacts(user, ""), "calls": [call]}),
    )
}

/// A user-initiated `connect`: user `user` (profile `name`) calls, with Meta's SDP `offer`.
pub fn user_call_connect(
    business: &BusinessRef,
    call_id: &str,
    user: &str,
    name: &str,
    offer: &str,
) -> Value {
    envelope(
        business,
        "calls",
        json!({
            "contacts": contacts(user, name),
            "calls": [{
                "id": call_id,
                "from": user,
                "to": business.display_number,
                "event": "connect",
                "timestamp": unix_now().to_string(),
                "direction": "USER_INITIATED",
                "session": {"sdp": offer, "sdp_type": "offer"},
            }],
        }),
    )
}

/// A business-initiated `connect` carrying Meta's SDP `answer`, with the legacy
/// `connection.webrtc.sdp` duplicate Meta still sends.
pub fn business_call_connect(
    business: &BusinessRef,
    call_id: &str,
    user: &str,
    answer: &str,
) -> Value {
    let legacy = json!({"sdp": answer, "type": "answer"}).to_string();
    envelope(
        business,
        "calls",
        json!({
            "contacts": contacts(user, user),
            "calls": [{
                "session": {"sdp_type": "answer", "sdp": answer},
                "from": business.display_number,
                "connection": {"webrtc": {"sdp": legacy}},
                "id": call_id,
                "to": user,
                "event": "connect",
                "timestamp": unix_now().to_string(),
                "direction": "BUSINESS_INITIATED",
            }],
        }),
    )
}

/// A SIP-mode `call_created` (no session: Meta's SIP interface carries the call): from
/// `from` to `to`, placed by the business when `business_initiated`.
pub fn call_created(
    business: &BusinessRef,
    call_id: &str,
    from: &str,
    to: &str,
    business_initiated: bool,
) -> Value {
    let user = if business_initiated { to } else { from };
    envelope(
        business,
        "calls",
        json!({
            "contacts": contacts(user, user),
            "calls": [{
                "id": call_id,
                "from": from,
                "to": to,
                "event": "call_created",
                "timestamp": unix_now().to_string(),
                "direction": if business_initiated { "BUSINESS_INITIATED" } else { "USER_INITIATED" },
            }],
        }),
    )
}

/// A business-initiated call's status (`RINGING`, `ACCEPTED`, `REJECTED`).
pub fn call_status(
    business: &BusinessRef,
    call_id: &str,
    user: &str,
    status: &str,
    opaque: Option<&str>,
) -> Value {
    let mut s = json!({
        "id": call_id,
        "timestamp": unix_now().to_string(),
        "type": "call",
        "status": status,
        "recipient_id": user,
    });
    if let Some(o) = opaque {
        s["biz_opaque_callback_data"] = json!(o);
    }
    envelope(business, "calls", json!({"statuses": [s]}))
}

/// How a call ended, for [`terminate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// Placed by the business.
    pub business_initiated: bool,
    /// The user.
    pub user: String,
    /// Picked up at / ended at (Unix seconds), when it was answered.
    pub talked: Option<(u64, u64)>,
    /// Meta's error, for a failed call: code and message.
    pub error: Option<(i64, String)>,
    /// The business's tracking string.
    pub opaque: Option<String>,
}

/// A `terminate`, `COMPLETED` or (with an error) `FAILED`; the error appears inside the call
/// and beside it, as Meta's production traffic has it.
pub fn terminate(business: &BusinessRef, call_id: &str, ending: &Ending) -> Value {
    let (from, to, direction) = if ending.business_initiated {
        (
            business.display_number.as_str(),
            ending.user.as_str(),
            "BUSINESS_INITIATED",
        )
    } else {
        (
            ending.user.as_str(),
            business.display_number.as_str(),
            "USER_INITIATED",
        )
    };
    let mut call = json!({
        "id": call_id,
        "from": from,
        "to": to,
        "event": "terminate",
        "timestamp": unix_now().to_string(),
        "direction": direction,
        "status": if ending.error.is_some() { "FAILED" } else { "COMPLETED" },
    });
    if let Some((start, end)) = ending.talked {
        call["start_time"] = json!(start.to_string());
        call["end_time"] = json!(end.to_string());
        call["duration"] = json!(end.saturating_sub(start));
    }
    if let Some(o) = &ending.opaque {
        call["biz_opaque_callback_data"] = json!(o);
    }
    let mut value = json!({"contacts": contacts(&ending.user, &ending.user)});
    if let Some((code, message)) = &ending.error {
        let e = json!([{
            "code": code,
            "title": message,
            "message": message,
            "error_data": {"details": message},
        }]);
        call["errors"] = e.clone();
        value["errors"] = e;
    }
    value["calls"] = json!([call]);
    envelope(business, "calls", value)
}

/// A call-permission reply: `accept` (temporary until `expires_at`, or permanent when
/// `None`) or `reject`, answering the request message `context` when given.
pub fn permission_reply(
    business: &BusinessRef,
    user: &str,
    message_id: &str,
    accept: bool,
    expires_at: Option<u64>,
    context: Option<&str>,
) -> Value {
    let mut reply = json!({
        "response": if accept { "accept" } else { "reject" },
        "response_source": "user_action",
    });
    if accept {
        reply["is_permanent"] = json!(expires_at.is_none());
        if let Some(e) = expires_at {
            reply["expiration_timestamp"] = json!(e.to_string());
        }
    }
    let mut message = json!({
        "from": user,
        "id": message_id,
        "timestamp": unix_now().to_string(),
        "type": "interactive",
        "interactive": {"type": "call_permission_reply", "call_permission_reply": reply},
    });
    if let Some(c) = context {
        message["context"] = json!({"from": business.display_number, "id": c});
    }
    envelope(
        business,
        "messages",
        json!({"contacts": contacts(user, user), "messages": [message]}),
    )
}

/// `payload` as Meta serialises it for signing: JSON with every non-ASCII character
/// escaped as `\uXXXX` (lowercase hex, surrogate pairs above the BMP).
pub fn ascii_json(payload: &Value) -> Vec<u8> {
    let text = payload.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out.into_bytes()
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// HTTP status of each attempt (`None`: no answer in time, or no connection).
    pub attempts: Vec<Option<u16>>,
}

impl Delivery {
    /// The switch answered 200 at last.
    pub fn delivered(&self) -> bool {
        self.attempts.last() == Some(&Some(200))
    }
}

/// Sends webhooks to a switch the way Meta does.
#[derive(Clone)]
pub struct WebhookSender {
    http: reqwest::Client,
    url: String,
    secret: Secret,
    /// Attempts per delivery (Meta retries a delivery that was not answered 200).
    pub attempts: u32,
    /// Pause between attempts.
    pub retry_after: Duration,
    /// Deliver each webhook a second time after it was answered 200, as Meta sometimes
    /// does.
    pub duplicates: bool,
    /// Hold each delivery back by a random time up to this, so webhooks sent close together
    /// may arrive out of order, as Meta's do.
    pub jitter: Duration,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl WebhookSender {
    /// A sender to `url` (the switch's `/webhooks/meta`) signing with `secret`, waiting
    /// `timeout` for each answer (Meta waits about 20 s).
    pub fn new(url: &str, secret: Secret, timeout: Duration) -> Result<WebhookSender, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent("facebookexternalua")
            .build()
            .map_err(|e| e.to_string())?;
        Ok(WebhookSender {
            http,
            url: url.to_string(),
            secret,
            attempts: 3,
            retry_after: Duration::from_millis(500),
            duplicates: false,
            jitter: Duration::ZERO,
        })
    }

    /// Delivers `payload`, signed, retrying until the switch answers 200 or the attempts are
    /// used up.
    pub async fn deliver(&self, payload: &Value) -> Delivery {
        if !self.jitter.is_zero() {
            // Random enough to reorder a burst; no need for a generator.
            let r = u128::from(uuid::Uuid::new_v4().as_u64_pair().0);
            let wait = r % self.jitter.as_micros().max(1);
            tokio::time::sleep(Duration::from_micros(wait as u64)).await;
        }
        let body = ascii_json(payload);
        let signature = signature::sign(self.secret.expose().as_bytes(), &body);
        let mut attempts = Vec::new();
        for n in 0..self.attempts.max(1) {
            if n > 0 {
                tokio::time::sleep(self.retry_after).await;
            }
            let status = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", &signature)
                .body(body.clone())
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16());
            attempts.push(status);
            if status == Some(200) {
                break;
            }
        }
        if self.duplicates && attempts.last() == Some(&Some(200)) {
            // The redelivery's answer does not change what the delivery came to.
            let _ = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", &signature)
                .body(body.clone())
                .send()
                .await;
        }
        Delivery { attempts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::webhook::{self, MetaEvent, TerminateStatus};

    fn business() -> BusinessRef {
        BusinessRef {
            waba_id: "112735964992110".into(),
            phone_number_id: "105615555715855".into(),
            display_number: "15551112222".into(),
        }
    }

    #[test]
    fn non_ascii_is_escaped_with_lowercase_hex_and_reads_back_the_same() {
        let payload = user_call_connect(
            &business(),
            "wacid.1",
            "4915112345678",
            "Jörg 😀",
            "v=0\r\n",
        );
        let bytes = ascii_json(&payload);
        assert!(bytes.is_ascii());
        let text = String::from_utf8(bytes.clone()).expect("ascii");
        assert!(text.contains("J\\u00f6rg \\ud83d\\ude00"), "{text}");
        let back: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(back, payload);
    }

    #[test]
    fn every_payload_the_sim_sends_is_read_by_the_switch_as_meant() {
        let b = business();
        let read = |v: &Value| webhook::parse(&ascii_json(v)).expect("a webhook");
        let p = read(&user_call_connect(
            &b, "wacid.U", "4477001", "Ann", "v=0\r\n",
        ));
        assert!(p.unknown.is_empty() && p.invalid.is_empty(), "{p:?}");
        let MetaEvent::Connect(c) = &p.events[0] else {
            panic!("connect");
        };
        assert_eq!(
            (c.from.as_str(), c.business.phone_number_id.as_str()),
            ("4477001", "105615555715855")
        );
        let p = read(&business_call_connect(&b, "wacid.B", "4477001", "v=0\r\n"));
        assert!(p.unknown.is_empty(), "{:?}", p.unknown);
        let p = read(&call_status(&b, "wacid.B", "4477001", "RINGING", Some("t")));
        assert!(matches!(&p.events[0], MetaEvent::Status(_)));
        let p = read(&terminate(
            &b,
            "wacid.U",
            &Ending {
                business_initiated: false,
                user: "4477001".into(),
                talked: Some((100, 130)),
                error: Some((138_021, "no media".into())),
                opaque: None,
            },
        ));
        let MetaEvent::Terminate(t) = &p.events[0] else {
            panic!("terminate");
        };
        assert_eq!(
            (&t.status, t.duration_secs, t.errors.len()),
            (&TerminateStatus::Failed, Some(30), 1)
        );
        let created = call_created(&b, "wacid.SIP1", "15551112222", "4915100000001", true);
        let p = read(&created);
        assert!(p.invalid.is_empty() && p.unknown.is_empty(), "{p:?}");
        let MetaEvent::Created(c) = &p.events[0] else {
            panic!("not a call_created: {p:?}");
        };
        assert_eq!(
            (c.call_id.as_str(), c.to.as_str()),
            ("wacid.SIP1", "4915100000001")
        );
        assert_eq!(c.direction, Some(webhook::CallDirection::BusinessInitiated));
        let p = read(&permission_reply(
            &b,
            "4477001",
            "wamid.R",
            true,
            Some(1_800_000_000),
            Some("wamid.Q"),
        ));
        let MetaEvent::PermissionReply(r) = &p.events[0] else {
            panic!("reply");
        };
        assert_eq!(
            (r.expires_at, r.context_id.as_deref()),
            (Some(1_800_000_000), Some("wamid.Q"))
        );
    }
}
