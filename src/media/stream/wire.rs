//! The two wire formats of a stream.
//!
//! Both use Twilio Media Streams' JSON messages for events, so a bot written for Twilio
//! works unchanged:
//! - to the bot: `connected`, `start` (the stream's ids, its `customParameters`, its
//!   `mediaFormat`), `media`, `mark` (the bot's mark, once the audio before it played),
//!   `dtmf`, `stop`;
//! - from the bot: `media`, `mark`, `clear`, and `handover` (ours: ends the stream asking
//!   for the call to go to a person, with `parameters`).
//!
//! In the Twilio format audio is μ-law at 8 kHz, base64 in `media.payload`. In the native
//! format (`l16`) audio travels in binary messages of 16-bit little-endian PCM at 16 kHz,
//! each way, and the JSON carries events only.
//!
//! Messages are written into a buffer the caller reuses and parsed in place: no allocation
//! per message (a mark's or a parameter's name with JSON escapes is the exception).

use std::borrow::Cow;
use std::io::Write as _;

use base64::Engine as _;

use super::Format;

/// What the bot sent, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum FromBot<'a> {
    /// Audio: `len` bytes of it were decoded into the caller's buffer.
    Media(usize),
    /// Tell me when the audio sent so far has played.
    Mark(Cow<'a, str>),
    /// Empty the playout buffer.
    Clear,
    /// End the stream; the call goes on to a person. Its parameters (strings), as JSON.
    Handover(Option<serde_json::Map<String, serde_json::Value>>),
    /// An event the switch has no use for (Twilio's own, echoed): ignored.
    Ignored,
}

/// Why a message from the bot was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not JSON, or not an object with an `event`.
    Json,
    /// An event this switch does not know.
    UnknownEvent,
    /// `media` without a payload, or the payload is not base64.
    Payload,
    /// Audio too long for one message (over 1 s).
    TooLong,
    /// A binary message in the Twilio format, or one of an odd length in the native one.
    Binary,
}

impl Malformed {
    /// The reason label of the metric and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Json => "not_json",
            Malformed::UnknownEvent => "unknown_event",
            Malformed::Payload => "bad_payload",
            Malformed::TooLong => "too_long",
            Malformed::Binary => "bad_binary",
        }
    }
}

#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    media: Option<MediaIn<'a>>,
    #[serde(borrow, default)]
    mark: Option<MarkIn<'a>>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(serde::Deserialize)]
struct MediaIn<'a> {
    #[serde(borrow, default)]
    payload: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct MarkIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// Most audio one message may carry, decoded (1 s of 16 kHz PCM).
pub const MAX_AUDIO: usize = 32_000;

/// Parses a text message from the bot; a `media` payload is decoded into `audio`.
pub fn parse_text<'a>(text: &'a str, audio: &mut [u8]) -> Result<FromBot<'a>, Malformed> {
    let msg: Incoming<'a> = serde_json::from_str(text).map_err(|_| Malformed::Json)?;
    match msg.event.as_ref() {
        "media" => {
            let payload = msg
                .media
                .and_then(|m| m.payload)
                .ok_or(Malformed::Payload)?;
            if payload.len() / 4 * 3 > audio.len() {
                return Err(Malformed::TooLong);
            }
            let n = base64::engine::general_purpose::STANDARD
                .decode_slice(payload.as_bytes(), audio)
                .map_err(|_| Malformed::Payload)?;
            Ok(FromBot::Media(n))
        }
        "mark" => Ok(FromBot::Mark(msg.mark.ok_or(Malformed::Json)?.name)),
        "clear" => Ok(FromBot::Clear),
        "handover" => Ok(FromBot::Handover(msg.parameters)),
        "connected" | "start" | "stop" | "dtmf" => Ok(FromBot::Ignored),
        _ => Err(Malformed::UnknownEvent),
    }
}

/// Checks a binary message from the bot: native audio (whole 16-bit samples).
pub fn check_binary(format: Format, data: &[u8]) -> Result<(), Malformed> {
    match format {
        Format::Twilio => Err(Malformed::Binary),
        Format::L16 if data.len() % 2 != 0 => Err(Malformed::Binary),
        Format::L16 if data.len() > MAX_AUDIO => Err(Malformed::TooLong),
        Format::L16 => Ok(()),
    }
}

/// The ids a stream's messages carry.
#[derive(Debug, Clone)]
pub struct Ids {
    /// The stream's id (`MZ` and 32 hex digits, as Twilio's).
    pub stream: String,
    /// The call's id.
    pub call: String,
    /// The account: the business number's id.
    pub account: String,
}

/// Writes the messages to the bot, numbering them.
#[derive(Debug)]
pub struct Writer {
    format: Format,
    ids: Ids,
    seq: u64,
    chunk: u64,
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

impl Writer {
    /// A writer for a stream of `format` with `ids`.
    pub fn new(format: Format, ids: Ids) -> Writer {
        Writer {
            format,
            ids,
            seq: 0,
            chunk: 0,
        }
    }

    /// The stream's ids.
    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// `connected`: the first message.
    pub fn connected(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#);
    }

    /// `start`: the stream's ids, the caller and callee, the custom parameters, the format.
    pub fn start(
        &mut self,
        out: &mut Vec<u8>,
        from: &str,
        to: &str,
        parameters: &[(String, String)],
    ) {
        let seq = self.next_seq();
        let (encoding, rate) = match self.format {
            Format::Twilio => ("audio/x-mulaw", 8000),
            Format::L16 => ("audio/l16", 16_000),
        };
        let _ = write!(
            out,
            r#"{{"event":"start","sequenceNumber":"{seq}","start":{{"accountSid":"#
        );
        json_str(out, &self.ids.account);
        out.extend_from_slice(br#","streamSid":"#);
        json_str(out, &self.ids.stream);
        out.extend_from_slice(br#","callSid":"#);
        json_str(out, &self.ids.call);
        out.extend_from_slice(br#","from":"#);
        json_str(out, from);
        out.extend_from_slice(br#","to":"#);
        json_str(out, to);
        out.extend_from_slice(br#","tracks":["inbound"],"customParameters":{"#);
        for (i, (k, v)) in parameters.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, k);
            out.push(b':');
            json_str(out, v);
        }
        let _ = write!(
            out,
            r#"}},"mediaFormat":{{"encoding":"{encoding}","sampleRate":{rate},"channels":1}}}},"streamSid":"#
        );
        json_str(out, &self.ids.stream);
        out.push(b'}');
    }

    /// `media`: the customer's audio (Twilio format), `timestamp_ms` from the stream's
    /// start. The native format sends audio as a binary message instead
    /// ([`Writer::wants_binary`]).
    pub fn media(&mut self, out: &mut Vec<u8>, timestamp_ms: u64, audio: &[u8]) {
        let seq = self.next_seq();
        self.chunk += 1;
        let _ = write!(
            out,
            r#"{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"inbound","chunk":"{}","timestamp":"{timestamp_ms}","payload":""#,
            self.chunk
        );
        let start = out.len();
        let room = audio.len().div_ceil(3) * 4;
        out.resize(start + room, 0);
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(audio, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + n);
        out.extend_from_slice(br#""},"streamSid":"#);
        json_str(out, &self.ids.stream);
        out.push(b'}');
    }

    /// The customer's audio goes in binary messages (the native format).
    pub fn wants_binary(&self) -> bool {
        self.format == Format::L16
    }

    /// `mark`: the bot's mark `name` has played.
    pub fn mark(&mut self, out: &mut Vec<u8>, name: &str) {
        let seq = self.next_seq();
        let _ = write!(
            out,
            r#"{{"event":"mark","sequenceNumber":"{seq}","streamSid":"#
        );
        json_str(out, &self.ids.stream);
        out.extend_from_slice(br#","mark":{"name":"#);
        json_str(out, name);
        out.extend_from_slice(b"}}");
    }

    /// `dtmf`: the customer pressed `digit`.
    pub fn dtmf(&mut self, out: &mut Vec<u8>, digit: char) {
        let seq = self.next_seq();
        let _ = write!(out, r#"{{"event":"dtmf","streamSid":"#);
        json_str(out, &self.ids.stream);
        let _ = write!(
            out,
            r#","sequenceNumber":"{seq}","dtmf":{{"track":"inbound_track","digit":"{digit}"}}}}"#
        );
    }

    /// `stop`: the stream ends (the call hung up, or the switch ends it).
    pub fn stop(&mut self, out: &mut Vec<u8>, reason: &str) {
        let seq = self.next_seq();
        let _ = write!(
            out,
            r#"{{"event":"stop","sequenceNumber":"{seq}","streamSid":"#
        );
        json_str(out, &self.ids.stream);
        out.extend_from_slice(br#","stop":{"accountSid":"#);
        json_str(out, &self.ids.account);
        out.extend_from_slice(br#","callSid":"#);
        json_str(out, &self.ids.call);
        out.extend_from_slice(br#","reason":"#);
        json_str(out, reason);
        out.extend_from_slice(b"}}");
    }
}

/// A new stream id: `MZ` and 32 hex digits.
pub fn stream_id() -> String {
    let mut raw = [0u8; 16];
    let _ = getrandom::getrandom(&mut raw);
    let mut id = String::with_capacity(34);
    id.push_str("MZ");
    for b in raw {
        let _ = std::fmt::Write::write_fmt(&mut id, format_args!("{b:02x}"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn writer(format: Format) -> Writer {
        Writer::new(
            format,
            Ids {
                stream: "MZ00".into(),
                call: "call-1".into(),
                account: "PN1".into(),
            },
        )
    }

    fn as_json(out: &[u8]) -> Value {
        serde_json::from_slice(out).expect("JSON")
    }

    #[test]
    fn messages_to_the_bot_are_twilios() {
        let mut w = writer(Format::Twilio);
        let mut out = Vec::new();
        w.connected(&mut out);
        assert_eq!(as_json(&out)["event"], "connected");
        out.clear();
        w.start(
            &mut out,
            "5511999990000",
            "15550001111",
            &[("lang".into(), "pt \"BR\"".into())],
        );
        assert_eq!(
            as_json(&out),
            json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ00",
              "start": {"accountSid": "PN1", "streamSid": "MZ00", "callSid": "call-1",
                "from": "5511999990000", "to": "15550001111", "tracks": ["inbound"],
                "customParameters": {"lang": "pt \"BR\""},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        );
        out.clear();
        w.media(&mut out, 40, &[0xFF, 0x7F, 0x00, 0x10]);
        assert_eq!(
            as_json(&out),
            json!({"event": "media", "sequenceNumber": "2", "streamSid": "MZ00",
              "media": {"track": "inbound", "chunk": "1", "timestamp": "40", "payload": "/38AEA=="}})
        );
        out.clear();
        w.mark(&mut out, "greeting");
        assert_eq!(as_json(&out)["mark"]["name"], "greeting");
        out.clear();
        w.dtmf(&mut out, '5');
        assert_eq!(
            as_json(&out)["dtmf"],
            json!({"track": "inbound_track", "digit": "5"})
        );
        out.clear();
        w.stop(&mut out, "caller_hangup");
        assert_eq!(as_json(&out)["stop"]["callSid"], "call-1");
        assert_eq!(as_json(&out)["sequenceNumber"], "5");
    }

    #[test]
    fn the_native_start_names_16_khz_pcm() {
        let mut w = writer(Format::L16);
        let mut out = Vec::new();
        w.start(&mut out, "a", "b", &[]);
        assert_eq!(
            as_json(&out)["start"]["mediaFormat"],
            json!({"encoding": "audio/l16", "sampleRate": 16000, "channels": 1})
        );
        assert!(w.wants_binary());
    }

    #[test]
    fn what_a_bot_sends_is_parsed_in_place() {
        let mut audio = [0u8; MAX_AUDIO];
        assert_eq!(
            parse_text(
                r#"{"event":"media","streamSid":"MZ00","media":{"payload":"/38AEA=="}}"#,
                &mut audio
            ),
            Ok(FromBot::Media(4))
        );
        assert_eq!(&audio[..4], &[0xFF, 0x7F, 0x00, 0x10]);
        assert_eq!(
            parse_text(r#"{"event":"mark","mark":{"name":"m1"}}"#, &mut audio),
            Ok(FromBot::Mark(Cow::Borrowed("m1")))
        );
        assert_eq!(
            parse_text(r#"{"event":"clear","streamSid":"MZ00"}"#, &mut audio),
            Ok(FromBot::Clear)
        );
        let Ok(FromBot::Handover(Some(p))) = parse_text(
            r#"{"event":"handover","parameters":{"queue":"sales"}}"#,
            &mut audio,
        ) else {
            panic!("handover");
        };
        assert_eq!(p["queue"], "sales");
        for (text, why) in [
            ("not json", Malformed::Json),
            (r#"{"media":{}}"#, Malformed::Json),
            (r#"{"event":"dance"}"#, Malformed::UnknownEvent),
            (r#"{"event":"media","media":{}}"#, Malformed::Payload),
            (
                r#"{"event":"media","media":{"payload":"!!!"}}"#,
                Malformed::Payload,
            ),
        ] {
            assert_eq!(parse_text(text, &mut audio), Err(why), "{text}");
        }
        let long = format!(
            r#"{{"event":"media","media":{{"payload":"{}"}}}}"#,
            "A".repeat(MAX_AUDIO * 2)
        );
        assert_eq!(parse_text(&long, &mut audio), Err(Malformed::TooLong));
        assert_eq!(
            check_binary(Format::Twilio, &[0; 4]),
            Err(Malformed::Binary)
        );
        assert_eq!(check_binary(Format::L16, &[0; 3]), Err(Malformed::Binary));
        assert_eq!(check_binary(Format::L16, &[0; 640]), Ok(()));
    }
}
