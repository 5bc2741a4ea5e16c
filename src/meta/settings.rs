//! A number's calling settings at Meta (`GET`/`POST /<PHONE_NUMBER_ID>/settings`, the
//! `calling` object): what the REST API (`/v1/numbers/{id}/calling`) and the command line
//! (`waswitch meta settings`) share. Sans-IO: the Graph client does the requests.
//!
//! A change is sent as Meta takes it, with one addition: `"call_hours": {"schedule":
//! "<name>"}` stands for the calling hours of the `[[schedule]]` of that name, so the hours
//! Meta shows users are the ones the switch's IVR branches use.

use serde_json::{json, Map, Value};

use super::graph::GraphError;
use crate::config::{BusinessNumber, ScheduleConfig};

/// The configured business number `id` names: its phone number id, or its display number
/// (with or without `+`).
pub fn find_number<'a>(numbers: &'a [BusinessNumber], id: &str) -> Option<&'a BusinessNumber> {
    let digits = id.trim_start_matches('+');
    numbers
        .iter()
        .find(|n| n.phone_number_id == id || n.display_number == digits)
}

/// A change of `calling` settings as Meta takes it: a JSON object, with `call_hours`
/// naming a schedule expanded to that schedule's hours (`"status": "DISABLED"` beside the
/// name turns the hours off while keeping them).
pub fn prepare(change: Value, schedules: &[ScheduleConfig]) -> Result<Value, String> {
    let Value::Object(mut change) = change else {
        return Err("the calling settings are a JSON object (Meta's `calling` keys)".into());
    };
    if let Some(hours) = change.get("call_hours").and_then(Value::as_object) {
        if let Some(name) = hours.get("schedule") {
            let name = name
                .as_str()
                .ok_or("call_hours.schedule: the name of a [[schedule]]")?;
            let schedule = schedules.iter().find(|s| s.name == name).ok_or_else(|| {
                let names: Vec<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
                format!(
                    "call_hours.schedule: no [[schedule]] named {name:?} (configured: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )
            })?;
            let mut generated = schedule.schedule.call_hours();
            if let Some(status) = hours.get("status") {
                generated["status"] = status.clone();
            }
            change.insert("call_hours".into(), generated);
        }
    }
    Ok(Value::Object(change))
}

/// Takes the SIP password out of `calling` (Meta's answer with `include_sip_credentials`):
/// the `sip_user_password` of the SIP server named `hostname`, else of the first server
/// that has one. Every password in `calling` is replaced by a note of where it went, so
/// the settings can be shown.
pub fn take_sip_password(
    calling: &mut Value,
    hostname: Option<&str>,
    saved_to: &str,
) -> Option<String> {
    let servers = calling
        .get_mut("sip")
        .and_then(|s| s.get_mut("servers"))
        .and_then(Value::as_array_mut)?;
    let ours = servers
        .iter()
        .position(|s| {
            hostname.is_some_and(|h| s.get("hostname").and_then(Value::as_str) == Some(h))
                && s.get("sip_user_password").is_some()
        })
        .or_else(|| {
            servers
                .iter()
                .position(|s| s.get("sip_user_password").is_some())
        })?;
    let password = servers[ours]
        .get("sip_user_password")
        .and_then(Value::as_str)
        .map(str::to_string);
    for s in servers.iter_mut() {
        if let Some(p) = s.get_mut("sip_user_password") {
            *p = json!(format!("(saved to {saved_to})"));
        }
    }
    password
}

/// How a failed settings request is answered: Meta's own refusal passed through (its
/// HTTP status and error object, so a validation error reads exactly as Meta wrote it),
/// anything else as 502 (Meta not reached, or an answer that makes no sense) or 400 (a
/// request not sent).
pub fn refusal(error: &GraphError) -> (u16, Value) {
    match error {
        GraphError::Meta {
            status,
            code,
            subcode,
            message,
            details,
            fbtrace_id,
        } => {
            let mut meta = Map::new();
            meta.insert("code".into(), json!(code));
            if let Some(s) = subcode {
                meta.insert("error_subcode".into(), json!(s));
            }
            meta.insert("message".into(), json!(message));
            if let Some(d) = details {
                meta.insert("error_data".into(), json!({"details": d}));
            }
            if let Some(t) = fbtrace_id {
                meta.insert("fbtrace_id".into(), json!(t));
            }
            (
                *status,
                json!({"error": format!("Meta refused: {message}"), "meta": meta}),
            )
        }
        GraphError::Invalid(why) => (400, json!({"error": why})),
        other => (502, json!({"error": other.to_string()})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn office() -> Vec<ScheduleConfig> {
        vec![ScheduleConfig {
            name: "office".into(),
            schedule: crate::control::schedule::Schedule::new(
                "Europe/Berlin",
                &[("MONDAY", "0900", "1700")],
                &[],
            )
            .expect("valid"),
        }]
    }

    #[test]
    fn a_schedule_named_in_call_hours_becomes_its_hours() {
        let change = prepare(
            json!({"status": "ENABLED", "call_hours": {"schedule": "office"}}),
            &office(),
        )
        .expect("prepared");
        assert_eq!(change["status"], "ENABLED");
        assert_eq!(change["call_hours"]["timezone_id"], "Europe/Berlin");
        assert_eq!(change["call_hours"]["status"], "ENABLED");
        assert_eq!(
            change["call_hours"]["weekly_operating_hours"][0]["open_time"],
            "0900"
        );
        let off = prepare(
            json!({"call_hours": {"schedule": "office", "status": "DISABLED"}}),
            &office(),
        )
        .expect("prepared");
        assert_eq!(off["call_hours"]["status"], "DISABLED");
        // Hours written out are sent as they are.
        let own = json!({"call_hours": {"status": "DISABLED", "timezone_id": "UTC",
                                         "weekly_operating_hours": []}});
        assert_eq!(prepare(own.clone(), &office()).expect("as is"), own);
    }

    #[test]
    fn an_unknown_schedule_or_a_non_object_is_refused_with_what_to_do() {
        let e =
            prepare(json!({"call_hours": {"schedule": "night"}}), &office()).expect_err("unknown");
        assert!(e.contains("\"night\"") && e.contains("office"), "{e}");
        assert!(prepare(json!(["status"]), &office()).is_err());
    }

    #[test]
    fn metas_refusal_is_passed_through_as_meta_wrote_it() {
        let (status, body) = refusal(&GraphError::Meta {
            status: 400,
            code: 100,
            subcode: None,
            message: "Invalid parameter".into(),
            details: Some("call_hours: bad time".into()),
            fbtrace_id: Some("trace".into()),
        });
        assert_eq!(status, 400);
        assert_eq!(body["meta"]["code"], 100);
        assert_eq!(
            body["meta"]["error_data"]["details"],
            "call_hours: bad time"
        );
        assert_eq!(refusal(&GraphError::Timeout).0, 502);
    }
}
