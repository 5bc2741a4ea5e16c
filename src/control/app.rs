//! HTTP apps' verbs: the JSON an app answers with, compiled to a [`Script`] the engine runs.
//!
//! An app answers an event with a list of verbs, either a JSON array or an object with a
//! `verbs` array. Each verb is an object with one key, the verb's name, whose value holds
//! its settings (`{"gather": {"max_digits": 4, "action": "https://…"}}`); a verb that needs
//! none may be its bare name (`"answer"`). Everything is checked before any of it runs,
//! and an error names the place: `verbs[2].gather.max_digits: must be 1..=64`.
//!
//! | verb | settings |
//! |---|---|
//! | `answer` | none |
//! | `play` | `url` (http(s), fetched once and cached) or `file` (the app's prompt directory), or `prompts` (a list of either); `loops`, `barge_in` |
//! | `gather` | `prompts`, `min_digits`, `max_digits`, `terminator`, `timeout_ms`, `inter_digit_timeout_ms`, `retries`, `action` (the input is posted there; the answer's verbs follow) |
//! | `record` | `beep`, `max_length_secs`, `silence_secs`, `finish_on_hash` |
//! | `dial` | one of `route`, `sip` (with `trunk`), `queue`, `agent`, `whatsapp` (a wa_id) |
//! | `message` | `text`, or `template` with `language` |
//! | `pause` | `ms` |
//! | `hangup` | `reason` |
//! | `redirect` | `url` (its answer's verbs follow) |
//! | `stream` | `url` (`ws://` or `wss://`), `format` (`twilio`, `l16`), `parameters`, `bearer`, `action` (the stream's end is posted there; the answer's verbs follow), `reconnect`, `idle_timeout_secs`, `max_buffer_secs`, `prefill_ms`, `on_flood` (`drop`, `end`), `max_malformed` |

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use super::verb::{
    Destination, Gather, Message, Node, Play, Record, Script, Stream, StreamFormat, Verb,
};

/// Most verbs in one answer.
pub const MAX_VERBS: usize = 64;
/// Longest URL an app may give.
pub const MAX_URL: usize = 2048;
/// The node an app's verbs run as.
pub const NODE: &str = "app";

/// What is wrong with an app's verbs, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerbError {
    /// Where: `verbs[2].gather.max_digits`.
    pub place: String,
    /// What is wrong.
    pub why: String,
}

impl fmt::Display for VerbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.why)
    }
}

impl std::error::Error for VerbError {}

/// What the app's verbs may name, as this switch has it.
pub trait Names {
    /// A route by that name exists.
    fn route(&self, name: &str) -> bool;
    /// A trunk by that name exists.
    fn trunk(&self, name: &str) -> bool;
    /// A queue by that name exists.
    fn queue(&self, name: &str) -> bool;
    /// The app a route hands its calls to, when an app drives that route.
    fn app_route(&self, _name: &str) -> Option<String> {
        None
    }
}

/// The verbs this module knows, as an error lists them.
pub const VERBS: &str = "answer, play, gather, record, record_call, dial, message, pause, \
                         hangup, redirect, request_callback, stream";

fn err(place: impl Into<String>, why: impl Into<String>) -> VerbError {
    VerbError {
        place: place.into(),
        why: why.into(),
    }
}

/// Compiles an app's answer to a one-node script.
pub fn compile(body: &Value, names: &dyn Names) -> Result<Script, VerbError> {
    let list = match body {
        Value::Array(list) => list,
        Value::Object(o) => match o.get("verbs") {
            Some(Value::Array(list)) => list,
            Some(_) => return Err(err("verbs", "must be an array of verbs")),
            None => {
                return Err(err(
                    "verbs",
                    "missing: answer with an array of verbs, or {\"verbs\": [...]}",
                ))
            }
        },
        _ => {
            return Err(err(
                "verbs",
                "answer with an array of verbs, or {\"verbs\": [...]}",
            ))
        }
    };
    if list.len() > MAX_VERBS {
        return Err(err(
            "verbs",
            format!("{} verbs; at most {MAX_VERBS} in one answer", list.len()),
        ));
    }
    let mut verbs = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        verbs.push(verb(&format!("verbs[{i}]"), v, names)?);
    }
    Ok(script(verbs))
}

/// `verbs` as an app's script: one node, [`NODE`].
pub fn script(verbs: Vec<Verb>) -> Script {
    Script {
        nodes: BTreeMap::from([(NODE.to_string(), Node { verbs })]),
        entry: NODE.to_string(),
    }
}

/// Every prompt the script plays (to fetch before it runs).
pub fn prompts(script: &Script) -> Vec<&str> {
    let mut out = Vec::new();
    for node in script.nodes.values() {
        for verb in &node.verbs {
            match verb {
                Verb::Play(p) => out.extend(p.prompts.iter().map(String::as_str)),
                Verb::Gather(g) => out.extend(
                    g.prompts
                        .iter()
                        .chain(&g.reprompt)
                        .chain(&g.invalid)
                        .map(String::as_str),
                ),
                _ => {}
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether a prompt reference is a URL (else a file of the app's prompt directory).
pub fn is_url(prompt: &str) -> bool {
    prompt.starts_with("https://") || prompt.starts_with("http://")
}

/// One verb's settings, read key by key; unknown keys are refused.
struct Settings<'a> {
    place: String,
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Settings<'a> {
    fn new(place: String, value: &'a Value, allowed: &[&str]) -> Result<Self, VerbError> {
        let map = match value {
            Value::Null => None,
            Value::Object(m) => Some(m),
            _ => return Err(err(place, "must be an object of settings")),
        };
        if let Some(m) = map {
            if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
                let fix = if allowed.is_empty() {
                    "it takes none".to_string()
                } else {
                    format!("it takes: {}", allowed.join(", "))
                };
                return Err(err(
                    format!("{place}.{k}"),
                    format!("unknown setting; {fix}"),
                ));
            }
        }
        Ok(Settings { place, map })
    }

    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.place)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn text(&self, key: &str) -> Result<Option<String>, VerbError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Some(Value::String(_)) => Err(err(self.at(key), "is empty")),
            Some(_) => Err(err(self.at(key), "must be a string")),
        }
    }

    fn required_text(&self, key: &str, what: &str) -> Result<String, VerbError> {
        self.text(key)?
            .ok_or_else(|| err(self.at(key), format!("missing: give {what}")))
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool, VerbError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(err(self.at(key), "must be true or false")),
        }
    }

    fn number(&self, key: &str, min: u64, max: u64, default: u64) -> Result<u64, VerbError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(err(self.at(key), format!("must be {min}..={max}"))),
            },
        }
    }

    fn url(&self, key: &str) -> Result<Option<String>, VerbError> {
        let Some(url) = self.text(key)? else {
            return Ok(None);
        };
        check_url(&self.at(key), &url)?;
        Ok(Some(url))
    }
}

/// `url` is an http(s) URL with a host, of sane length, without spaces or control
/// characters (`place` names it in the error).
pub fn check_url(place: &str, url: &str) -> Result<(), VerbError> {
    let host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match host {
        None => Err(err(place, format!("{url:?} is not an http(s) URL"))),
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            Err(err(place, format!("{url:?} names no host")))
        }
        Some(_) if url.len() > MAX_URL => Err(err(
            place,
            format!("{} characters; at most {MAX_URL}", url.len()),
        )),
        Some(_) if url.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Err(err(place, "holds spaces or control characters"))
        }
        Some(_) => Ok(()),
    }
}

/// A prompt: a URL, or a plain file name of the app's prompt directory.
fn prompt(place: &str, value: &Value) -> Result<String, VerbError> {
    let Some(p) = value.as_str().map(str::trim) else {
        return Err(err(
            place,
            "must be a string: a URL or a prompt file's name",
        ));
    };
    if is_url(p) || p.contains("://") {
        check_url(place, p)?;
    } else if p.is_empty()
        || p == "."
        || p == ".."
        || p.contains(['/', '\\'])
        || p.chars().any(char::is_control)
        || p.len() > 128
    {
        return Err(err(
            place,
            format!("{p:?} is neither an http(s) URL nor a prompt file's name (without directory or extension)"),
        ));
    }
    Ok(p.to_string())
}

fn prompt_list(s: &Settings<'_>, key: &str) -> Result<Vec<String>, VerbError> {
    match s.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(list)) => {
            if list.len() > 16 {
                return Err(err(s.at(key), "at most 16 prompts"));
            }
            list.iter()
                .enumerate()
                .map(|(i, p)| prompt(&format!("{}[{i}]", s.at(key)), p))
                .collect()
        }
        Some(one) => Ok(vec![prompt(&s.at(key), one)?]),
    }
}

fn verb(place: &str, value: &Value, names: &dyn Names) -> Result<Verb, VerbError> {
    let (name, settings) = match value {
        Value::String(name) => (name.as_str(), &Value::Null),
        Value::Object(o) if o.len() == 1 => match o.iter().next() {
            Some((name, settings)) => (name.as_str(), settings),
            None => return Err(err(place, "is empty")),
        },
        Value::Object(o) => {
            return Err(err(
                place,
                format!(
                    "holds {} keys; a verb is an object with one key, its name (one of: {VERBS})",
                    o.len()
                ),
            ))
        }
        _ => {
            return Err(err(
                place,
                format!("must be a verb: an object with one key, its name (one of: {VERBS})"),
            ))
        }
    };
    let at = format!("{place}.{name}");
    let keys: &[&str] = match name {
        "answer" => &[],
        "play" => &["url", "file", "prompts", "loops", "barge_in"],
        "gather" => &[
            "prompts",
            "min_digits",
            "max_digits",
            "terminator",
            "timeout_ms",
            "inter_digit_timeout_ms",
            "retries",
            "action",
        ],
        "record" => &["beep", "max_length_secs", "silence_secs", "finish_on_hash"],
        "dial" => &["route", "sip", "trunk", "queue", "agent", "whatsapp"],
        "message" => &["text", "template", "language"],
        "pause" => &["ms"],
        "record_call" => &["action"],
        "hangup" => &["reason"],
        "redirect" => &["url"],
        "request_callback" => &["purpose"],
        "stream" => STREAM_KEYS,
        _ => {
            return Err(err(
                place,
                format!("unknown verb {name:?}; use one of: {VERBS}"),
            ))
        }
    };
    let s = Settings::new(at.clone(), settings, keys)?;
    Ok(match name {
        "answer" => Verb::Answer,
        "play" => {
            let mut prompts = prompt_list(&s, "prompts")?;
            for key in ["url", "file"] {
                if let Some(v) = s.get(key) {
                    prompts.push(prompt(&s.at(key), v)?);
                }
            }
            if prompts.is_empty() {
                return Err(err(at, "nothing to play: give url, file or prompts"));
            }
            Verb::Play(Play {
                prompts,
                loops: s.number("loops", 1, 100, 1)? as u32,
                barge_in: s.flag("barge_in", true)?,
            })
        }
        "gather" => {
            let d = Gather::default();
            let max_digits = s.number("max_digits", 1, 64, d.max_digits as u64)? as usize;
            let min_digits = s.number("min_digits", 1, 64, d.min_digits as u64)? as usize;
            if min_digits > max_digits {
                return Err(err(
                    s.at("min_digits"),
                    format!("{min_digits} is more than max_digits ({max_digits})"),
                ));
            }
            let terminator = match s.get("terminator") {
                None => d.terminator,
                Some(Value::String(t)) if t.is_empty() => None,
                Some(Value::String(t)) => {
                    let mut chars = t.chars();
                    match (chars.next(), chars.next()) {
                        (Some(c), None) if c.is_ascii_digit() || matches!(c, '*' | '#') => Some(c),
                        _ => {
                            return Err(err(
                                s.at("terminator"),
                                "must be one key: 0-9, * or #, or \"\" for none",
                            ))
                        }
                    }
                }
                Some(_) => return Err(err(s.at("terminator"), "must be a string")),
            };
            Verb::Gather(Gather {
                prompts: prompt_list(&s, "prompts")?,
                min_digits,
                max_digits,
                terminator,
                first_digit_timeout: Duration::from_millis(s.number(
                    "timeout_ms",
                    100,
                    60_000,
                    d.first_digit_timeout.as_millis() as u64,
                )?),
                inter_digit_timeout: Duration::from_millis(s.number(
                    "inter_digit_timeout_ms",
                    100,
                    60_000,
                    d.inter_digit_timeout.as_millis() as u64,
                )?),
                retries: s.number("retries", 0, 10, 0)? as u32,
                action: s.url("action")?,
                ..d
            })
        }
        "record" => {
            let d = Record::default();
            let silence = s.number("silence_secs", 0, 60, d.silence.map_or(0, |d| d.as_secs()))?;
            Verb::Record(Record {
                beep: s.flag("beep", d.beep)?,
                max_length: Duration::from_secs(s.number(
                    "max_length_secs",
                    1,
                    3600,
                    d.max_length.as_secs(),
                )?),
                silence: (silence > 0).then(|| Duration::from_secs(silence)),
                finish_on_hash: s.flag("finish_on_hash", d.finish_on_hash)?,
            })
        }
        "dial" => match s.text("route")?.and_then(|r| names.app_route(&r)) {
            // A route an app drives hands the call to the app.
            Some(app)
                if !s.has("trunk")
                    && !s.has("sip")
                    && !s.has("queue")
                    && !s.has("agent")
                    && !s.has("whatsapp") =>
            {
                Verb::App(app)
            }
            _ => Verb::Dial(destination(&s, names)?),
        },
        "message" => match (s.text("text")?, s.text("template")?) {
            (Some(text), None) if !s.has("language") => {
                if text.len() > 4096 {
                    return Err(err(s.at("text"), "longer than 4096 bytes"));
                }
                Verb::Message(Message::Text(text))
            }
            (None, Some(name)) => Verb::Message(Message::Template {
                name,
                language: s.required_text("language", "the template's language code")?,
            }),
            (Some(_), _) | (None, None) => {
                return Err(err(at, "give either text, or template with its language"))
            }
        },
        "pause" => Verb::Pause(Duration::from_millis(s.number("ms", 1, 600_000, 1000)?)),
        "record_call" => match s.text("action")?.as_deref() {
            None | Some("start") => Verb::RecordCall(true),
            Some("stop") => Verb::RecordCall(false),
            Some(other) => {
                return Err(err(
                    s.at("action"),
                    format!("{other:?}: give \"start\" or \"stop\""),
                ))
            }
        },
        "hangup" => Verb::Hangup {
            reason: s
                .text("reason")?
                .unwrap_or_else(|| "normal_clearing".to_string()),
        },
        "redirect" => Verb::Redirect(
            s.url("url")?
                .ok_or_else(|| err(s.at("url"), "missing: give the URL of the next verbs"))?,
        ),
        "request_callback" => Verb::RequestCallback {
            purpose: s.required_text("purpose", "why the business will call back")?,
        },
        "stream" => Verb::Stream(Box::new(stream(&s)?)),
        _ => return Err(err(place, format!("unknown verb {name:?}"))),
    })
}

/// What a `stream` takes.
pub const STREAM_KEYS: &[&str] = &[
    "url",
    "format",
    "parameters",
    "bearer",
    "action",
    "reconnect",
    "idle_timeout_secs",
    "max_buffer_secs",
    "prefill_ms",
    "on_flood",
    "max_malformed",
];

/// Checks a `stream` verb's settings (`value`, at `place`): the verb with its defaults
/// for what is not given. IVR menus' `stream` verbs are checked here too.
pub fn stream_verb(place: &str, value: &Value) -> Result<Stream, VerbError> {
    stream(&Settings::new(place.to_string(), value, STREAM_KEYS)?)
}

fn stream(s: &Settings<'_>) -> Result<Stream, VerbError> {
    let url = s.required_text("url", "the bot's WebSocket URL, ws:// or wss://")?;
    check_ws_url(&s.at("url"), &url)?;
    let format = match s.text("format")?.as_deref() {
        None | Some("twilio") => StreamFormat::Twilio,
        Some("l16") | Some("native") => StreamFormat::L16,
        Some(other) => {
            return Err(err(
                s.at("format"),
                format!("{other:?}: give \"twilio\" (μ-law 8 kHz JSON) or \"l16\" (16 kHz PCM)"),
            ))
        }
    };
    let mut parameters = Vec::new();
    match s.get("parameters") {
        None => {}
        Some(Value::Object(m)) => {
            if m.len() > 32 {
                return Err(err(s.at("parameters"), "more than 32 parameters"));
            }
            for (k, v) in m {
                let v = match v {
                    Value::String(v) => v.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(err(
                            format!("{}.{k}", s.at("parameters")),
                            "must be a string, a number or true/false",
                        ))
                    }
                };
                if k.len() + v.len() > 1024 {
                    return Err(err(
                        format!("{}.{k}", s.at("parameters")),
                        "longer than 1024 bytes",
                    ));
                }
                parameters.push((k.clone(), v));
            }
        }
        Some(_) => {
            return Err(err(
                s.at("parameters"),
                "must be an object of names and values",
            ))
        }
    }
    let bearer = s.text("bearer")?;
    if bearer
        .as_deref()
        .is_some_and(|b| b.len() > 4096 || b.chars().any(|c| c.is_control() || c == ' '))
    {
        return Err(err(
            s.at("bearer"),
            "must be a token without spaces or control characters, at most 4096 bytes",
        ));
    }
    let d = Stream::new(url.clone(), format);
    let idle = s.number("idle_timeout_secs", 0, 3600, 60)?;
    let end_on_flood = match s.text("on_flood")?.as_deref() {
        None | Some("drop") => false,
        Some("end") => true,
        Some(other) => {
            return Err(err(
                s.at("on_flood"),
                format!("{other:?}: give \"drop\" or \"end\""),
            ))
        }
    };
    Ok(Stream {
        parameters,
        bearer,
        action: s.url("action")?,
        reconnect: s.number("reconnect", 0, 5, 0)? as u32,
        idle_timeout: (idle > 0).then(|| Duration::from_secs(idle)),
        max_buffer: Duration::from_secs(s.number(
            "max_buffer_secs",
            1,
            300,
            d.max_buffer.as_secs(),
        )?),
        prefill: Duration::from_millis(s.number(
            "prefill_ms",
            0,
            1000,
            d.prefill.as_millis() as u64,
        )?),
        end_on_flood,
        max_malformed: s.number("max_malformed", 0, 10_000, u64::from(d.max_malformed))? as u32,
        ..d
    })
}

/// `url` is a `ws://` or `wss://` URL with a host, of sane length, without spaces,
/// control characters or credentials.
pub fn check_ws_url(place: &str, url: &str) -> Result<(), VerbError> {
    let Some(rest) = url
        .strip_prefix("wss://")
        .or_else(|| url.strip_prefix("ws://"))
    else {
        return Err(err(
            place,
            format!("{url:?}: a stream's URL starts ws:// or wss://"),
        ));
    };
    if url.len() > MAX_URL || url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(err(
            place,
            format!("must be at most {MAX_URL} bytes, without spaces"),
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(err(place, format!("{url:?} has no host")));
    }
    if authority.contains('@') {
        return Err(err(
            place,
            "no credentials in the URL: give a bearer token instead",
        ));
    }
    Ok(())
}

fn destination(s: &Settings<'_>, names: &dyn Names) -> Result<Destination, VerbError> {
    let given: Vec<&str> = ["route", "sip", "queue", "agent", "whatsapp"]
        .into_iter()
        .filter(|k| s.has(k))
        .collect();
    if given.len() != 1 {
        return Err(err(
            s.place.clone(),
            "give exactly one of route, sip (with trunk), queue, agent or whatsapp",
        ));
    }
    if s.has("trunk") && given[0] != "sip" {
        return Err(err(s.at("trunk"), "only a sip destination takes a trunk"));
    }
    let key = given[0];
    let name = s.required_text(key, "a destination")?;
    match key {
        "route" if !names.route(&name) => {
            Err(err(s.at(key), format!("there is no route {name:?}")))
        }
        "route" => Ok(Destination::Route(name)),
        "queue" if !names.queue(&name) => {
            Err(err(s.at(key), format!("there is no queue {name:?}")))
        }
        "queue" => Ok(Destination::Queue(name)),
        "agent" => Ok(Destination::Agent(name)),
        "whatsapp" => {
            let digits = name.strip_prefix('+').unwrap_or(&name);
            if !(7..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(
                    s.at(key),
                    format!("{name:?} is not a WhatsApp number (7 to 15 digits, E.164)"),
                ));
            }
            Ok(Destination::WhatsApp(digits.to_string()))
        }
        _ => {
            if !(name.starts_with("sip:") || name.starts_with("sips:")) || name.len() > 512 {
                return Err(err(s.at(key), format!("{name:?} is not a SIP URI")));
            }
            let trunk = s.required_text("trunk", "the trunk the URI is reached through")?;
            if !names.trunk(&trunk) {
                return Err(err(s.at("trunk"), format!("there is no trunk {trunk:?}")));
            }
            Ok(Destination::Uri { uri: name, trunk })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Known;
    impl Names for Known {
        fn route(&self, name: &str) -> bool {
            name == "pbx"
        }
        fn trunk(&self, name: &str) -> bool {
            name == "pbx"
        }
        fn queue(&self, name: &str) -> bool {
            name == "sales"
        }
        fn app_route(&self, name: &str) -> Option<String> {
            (name == "to-shop").then(|| "shop".to_string())
        }
    }

    fn verbs(body: Value) -> Result<Vec<Verb>, String> {
        compile(&body, &Known)
            .map(|s| s.nodes[NODE].verbs.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_menu_compiles_to_the_engines_verbs() {
        let v = verbs(json!({"verbs": [
            "answer",
            {"play": {"url": "https://apps.example/hello.wav", "loops": 2}},
            {"gather": {"prompts": ["menu"], "max_digits": 4, "terminator": "",
                        "timeout_ms": 2500, "action": "http://127.0.0.1:8700/menu"}},
            {"dial": {"sip": "sip:100@pbx.example", "trunk": "pbx"}},
            {"dial": {"queue": "sales"}},
            {"message": {"template": "closed", "language": "en_US"}},
            {"pause": {"ms": 250}},
            {"redirect": {"url": "https://apps.example/next"}},
            {"hangup": null}
        ]}))
        .expect("valid");
        assert_eq!(v[0], Verb::Answer);
        assert_eq!(
            v[1],
            Verb::Play(Play {
                prompts: vec!["https://apps.example/hello.wav".into()],
                loops: 2,
                barge_in: true
            })
        );
        let Verb::Gather(g) = &v[2] else {
            panic!("{v:?}")
        };
        assert_eq!(
            (g.max_digits, g.terminator, g.first_digit_timeout, g.retries),
            (4, None, Duration::from_millis(2500), 0)
        );
        assert_eq!(g.action.as_deref(), Some("http://127.0.0.1:8700/menu"));
        assert_eq!(g.prompts, ["menu"]);
        assert_eq!(
            v[3],
            Verb::Dial(Destination::Uri {
                uri: "sip:100@pbx.example".into(),
                trunk: "pbx".into()
            })
        );
        assert_eq!(v[4], Verb::Dial(Destination::Queue("sales".into())));
        assert_eq!(v[6], Verb::Pause(Duration::from_millis(250)));
        assert_eq!(v[7], Verb::Redirect("https://apps.example/next".into()));
        assert_eq!(
            v[8],
            Verb::Hangup {
                reason: "normal_clearing".into()
            }
        );
    }

    #[test]
    fn record_call_starts_by_default_and_stops_when_told() {
        let v = verbs(json!([
            "record_call",
            {"record_call": {"action": "stop"}},
            {"record_call": {}}
        ]))
        .expect("valid");
        assert_eq!(
            v,
            [
                Verb::RecordCall(true),
                Verb::RecordCall(false),
                Verb::RecordCall(true)
            ]
        );
        let e = verbs(json!([{"record_call": {"action": "pause"}}])).expect_err("refused");
        assert!(e.contains("verbs[0].record_call.action"), "{e}");
    }

    #[test]
    fn errors_name_the_place_and_the_rule() {
        let cases = [
            (
                json!(["answer", {"play": {"file": "a"}}, {"gather": {"max_digits": 65}}]),
                "verbs[2].gather.max_digits: must be 1..=64",
            ),
            (json!([{"say": {}}]), "verbs[0]: unknown verb \"say\""),
            (
                json!([{"play": {"url": "ftp://x/a.wav"}}]),
                "verbs[0].play.url: \"ftp://x/a.wav\" is not an http(s) URL",
            ),
            (
                json!([{"play": {"file": "../etc/passwd"}}]),
                "verbs[0].play.file: \"../etc/passwd\" is neither",
            ),
            (
                json!([{"dial": {"route": "nowhere"}}]),
                "verbs[0].dial.route: there is no route \"nowhere\"",
            ),
            (
                json!([{"dial": {"route": "pbx", "queue": "sales"}}]),
                "verbs[0].dial: give exactly one of",
            ),
            (
                json!([{"gather": {"min_digits": 3, "max_digits": 2}}]),
                "verbs[0].gather.min_digits: 3 is more than max_digits (2)",
            ),
            (
                json!([{"hangup": {"cause": "x"}}]),
                "verbs[0].hangup.cause: unknown setting; it takes: reason",
            ),
            (json!([{"a": 1, "b": 2}]), "verbs[0]: holds 2 keys"),
            (json!({"verb": []}), "verbs: missing"),
            (json!("answer"), "verbs: answer with an array"),
            (
                json!([{"pause": {"ms": 0}}]),
                "verbs[0].pause.ms: must be 1..=600000",
            ),
            (json!([{"redirect": {}}]), "verbs[0].redirect.url: missing"),
        ];
        for (body, want) in cases {
            let got = verbs(body.clone()).expect_err("invalid");
            assert!(got.starts_with(want), "{body}: {got}");
        }
        let many: Vec<Value> = (0..=MAX_VERBS).map(|_| json!("answer")).collect();
        assert!(verbs(Value::Array(many)).is_err());
    }

    #[test]
    fn a_dial_of_a_route_an_app_drives_hands_the_call_to_it() {
        let v = verbs(
            json!([{"dial": {"route": "to-shop"}}, {"dial": {"whatsapp": "+4915112345678"}}]),
        )
        .expect("valid");
        assert_eq!(v[0], Verb::App("shop".into()));
        assert_eq!(
            v[1],
            Verb::Dial(Destination::WhatsApp("4915112345678".into()))
        );
        let e = verbs(json!([{"dial": {"whatsapp": "12ab"}}])).expect_err("invalid");
        assert!(
            e.starts_with("verbs[0].dial.whatsapp: \"12ab\" is not a WhatsApp number"),
            "{e}"
        );
    }

    #[test]
    fn a_stream_takes_its_settings_and_refuses_wrong_ones_by_name() {
        let got = verbs(json!([{"stream": {
            "url": "wss://bot.example/media?x=1",
            "format": "l16",
            "parameters": {"lang": "pt", "tier": 2},
            "bearer": "tok-123",
            "action": "https://app.example/after-bot",
            "reconnect": 2,
            "idle_timeout_secs": 0,
            "on_flood": "end"
        }}]))
        .expect("valid");
        let Verb::Stream(s) = &got[0] else {
            panic!("{got:?}");
        };
        assert_eq!(s.format, StreamFormat::L16);
        assert_eq!(
            s.parameters,
            [("lang".into(), "pt".into()), ("tier".into(), "2".into())]
        );
        assert_eq!(s.bearer.as_deref(), Some("tok-123"));
        assert_eq!(s.reconnect, 2);
        assert_eq!(s.idle_timeout, None);
        assert!(s.end_on_flood);
        let d = verbs(json!([{"stream": {"url": "ws://127.0.0.1:9000"}}])).expect("valid");
        let Verb::Stream(d) = &d[0] else {
            panic!("{d:?}");
        };
        assert_eq!(d.format, StreamFormat::Twilio);
        assert_eq!(d.idle_timeout, Some(Duration::from_secs(60)));
        for (body, place) in [
            (json!([{"stream": {}}]), "verbs[0].stream.url"),
            (
                json!([{"stream": {"url": "https://x"}}]),
                "verbs[0].stream.url",
            ),
            (
                json!([{"stream": {"url": "wss://u:p@x/"}}]),
                "verbs[0].stream.url",
            ),
            (
                json!([{"stream": {"url": "ws://x", "format": "mp3"}}]),
                "verbs[0].stream.format",
            ),
            (
                json!([{"stream": {"url": "ws://x", "parameters": {"a": [1]}}}]),
                "verbs[0].stream.parameters.a",
            ),
            (
                json!([{"stream": {"url": "ws://x", "reconnect": 9}}]),
                "verbs[0].stream.reconnect",
            ),
            (
                json!([{"stream": {"url": "ws://x", "bearer": "a b"}}]),
                "verbs[0].stream.bearer",
            ),
            (
                json!([{"stream": {"url": "ws://x", "speed": 2}}]),
                "verbs[0].stream.speed",
            ),
        ] {
            let e = compile(&body, &Known).expect_err("refused");
            assert_eq!(e.place, place, "{body}: {e}");
        }
    }

    #[test]
    fn the_prompts_to_fetch_are_listed_once() {
        let s = compile(
            &json!([{"play": {"prompts": ["https://a/x.wav", "hello"]}},
                    {"gather": {"prompts": ["https://a/x.wav"]}}]),
            &Known,
        )
        .expect("valid");
        assert_eq!(prompts(&s), ["hello", "https://a/x.wav"]);
        assert!(is_url("https://a/x.wav") && !is_url("hello"));
    }
}
