//! A WhatsApp voice app for waswitch: the menu of `config/examples/app-sim.toml`.
//!
//! waswitch POSTs each event of a call here, signed with the app's secret; the answer to
//! `call.initiated` (and to a gather's `action`) is the verbs the call runs next:
//! - a new call is answered and hears the menu (`menu`, a prompt file of the app's);
//! - 1 reaches the PBX (route `pbx`);
//! - 2 records a message (the app hears `recording.ready`, with its download URL);
//! - anything else hears `invalid` and the menu again;
//! - other events (`call.answered`, `recording.ready`, `call.ended` with the CDR) are
//!   printed.
//!
//! Run it next to the switch:
//!     cargo run --release --example voice-app
//! Settings: `VOICE_APP_LISTEN` (127.0.0.1:8700), `VOICE_APP_SECRET` (the `[[app]]`'s
//! secret), `VOICE_APP_URL` (the URL waswitch reaches this app at).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// How old a request may be (its `X-Waswitch-Timestamp`) before it is taken as replayed.
const MAX_AGE_SECS: u64 = 300;

struct App {
    secret: String,
    url: String,
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = setting("VOICE_APP_LISTEN", "127.0.0.1:8700");
    let app = Arc::new(App {
        secret: setting("VOICE_APP_SECRET", "app-sim-secret-0001"),
        url: setting("VOICE_APP_URL", &format!("http://{listen}")),
    });
    let router = Router::new()
        .route("/", post(event))
        .route("/menu", post(menu))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("voice app listening on http://{listen}");
    axum::serve(listener, router).await
}

/// The event, if waswitch signed it with our secret, recently.
fn verified(app: &App, headers: &HeaderMap, body: &[u8]) -> Option<Value> {
    let header = |name| headers.get(name)?.to_str().ok();
    let timestamp = header("x-waswitch-timestamp")?;
    let signature = header("x-waswitch-signature")?.strip_prefix("sha256=")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    if now.abs_diff(timestamp.parse().ok()?) > MAX_AGE_SECS {
        return None;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(app.secret.as_bytes()).ok()?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected: Vec<u8> = (0..signature.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(signature.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    mac.verify_slice(&expected).ok()?;
    serde_json::from_slice(body).ok()
}

/// The menu: press 1 for the PBX, 2 to leave a message.
fn the_menu(app: &App) -> Value {
    json!({"verbs": [
        {"gather": {"prompts": ["menu"], "timeout_ms": 5000, "action": format!("{}/menu", app.url)}},
        {"play": {"file": "closed"}},
        {"hangup": {}},
    ]})
}

async fn event(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(event) = verified(&app, &headers, &body) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match event["event"].as_str() {
        Some("call.initiated") => {
            println!(
                "call {} from {} to {}",
                event["call_id"], event["customer"]["wa_id"], event["business_number"]
            );
            let mut verbs = the_menu(&app);
            if let Some(list) = verbs["verbs"].as_array_mut() {
                list.insert(0, json!("answer"));
            }
            Json(verbs).into_response()
        }
        Some("call.redirected") => Json(the_menu(&app)).into_response(),
        Some(other) => {
            println!("{other}: {event}");
            StatusCode::NO_CONTENT.into_response()
        }
        None => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn menu(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(event) = verified(&app, &headers, &body) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let verbs = match event["digits"].as_str() {
        Some("1") => json!([{"dial": {"route": "pbx"}}, {"play": {"file": "closed"}}]),
        Some("2") => json!([
            {"record": {"max_length_secs": 30, "silence_secs": 3}},
            {"hangup": {}},
        ]),
        _ => json!([
            {"play": {"file": "invalid"}},
            {"redirect": {"url": app.url}},
        ]),
    };
    Json(verbs).into_response()
}
