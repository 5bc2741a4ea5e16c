//! A voice bot for waswitch's `stream` verb: it echoes the caller's audio back, and hands
//! the call over to a person when the caller presses `#`.
//!
//! It speaks both wire formats: Twilio Media Streams (JSON text messages, μ-law in base64:
//! each `media` message's payload goes back as a `media` message of the bot's) and the
//! native one (binary messages of 16 kHz PCM: each goes back as it came). A `#` from the
//! caller sends `{"event": "handover", ...}`: the switch ends the stream and the IVR goes
//! on at the stream's `on_handover` node. Every twentieth echoed message is followed by a
//! `mark`, whose echo from the switch (the audio before it has played) is counted.
//!
//! Run it next to the switch (config/examples/stream-sim.toml):
//!     cargo run --release --example stream-bot
//! Setting: `STREAM_BOT_LISTEN` (127.0.0.1:8800).

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::var("STREAM_BOT_LISTEN").unwrap_or_else(|_| "127.0.0.1:8800".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("stream-bot: listening on ws://{listen}/");
    loop {
        let (tcp, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            match tokio_tungstenite::accept_async(tcp).await {
                Ok(ws) => serve(ws).await,
                Err(e) => eprintln!("stream-bot: {peer}: no WebSocket: {e}"),
            }
        });
    }
}

/// One stream, to its end.
async fn serve(ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) {
    let (mut tx, mut rx) = ws.split();
    let mut stream_sid = String::new();
    let (mut echoed, mut marks_back) = (0u64, 0u64);
    while let Some(Ok(msg)) = rx.next().await {
        let reply = match msg {
            // Native audio: back as it came.
            Message::Binary(audio) => {
                echoed += 1;
                Some(Message::Binary(audio))
            }
            Message::Text(text) => {
                let Ok(event) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                match event["event"].as_str() {
                    Some("start") => {
                        stream_sid = event["start"]["streamSid"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        eprintln!(
                            "stream-bot: {stream_sid} starts: call {} from {}, {}, parameters {}",
                            event["start"]["callSid"],
                            event["start"]["from"],
                            event["start"]["mediaFormat"]["encoding"],
                            event["start"]["customParameters"]
                        );
                        None
                    }
                    Some("media") => {
                        echoed += 1;
                        let payload = event["media"]["payload"].clone();
                        Some(Message::Text(
                            json!({"event": "media", "streamSid": stream_sid,
                                   "media": {"payload": payload}})
                            .to_string()
                            .into(),
                        ))
                    }
                    Some("mark") => {
                        marks_back += 1;
                        None
                    }
                    Some("dtmf") if event["dtmf"]["digit"] == "#" => {
                        eprintln!("stream-bot: {stream_sid}: the caller asks for a person");
                        Some(Message::Text(
                            json!({"event": "handover", "streamSid": stream_sid,
                                   "parameters": {"reason": "caller pressed #"}})
                            .to_string()
                            .into(),
                        ))
                    }
                    Some("stop") => {
                        eprintln!(
                            "stream-bot: {stream_sid} stops ({}): {echoed} messages echoed, {marks_back} marks played",
                            event["stop"]["reason"]
                        );
                        None
                    }
                    _ => None,
                }
            }
            Message::Close(_) => break,
            _ => None,
        };
        if let Some(reply) = reply {
            if tx.send(reply).await.is_err() {
                break;
            }
            if echoed % 20 == 0 {
                let mark = json!({"event": "mark", "streamSid": stream_sid,
                                  "mark": {"name": format!("echo-{echoed}")}});
                if tx
                    .send(Message::Text(mark.to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
}
