//! Media streams to voice bots, end to end: `waswitch sim` plays WhatsApp (customers with
//! real WebRTC audio who press keys and listen for tones); the bots are
//! - a real Pipecat pipeline (PyPI `pipecat-ai`, its Twilio serializer and FastAPI
//!   WebSocket transport; `tests/peers/pipecat_bot.py`) speaking Twilio Media Streams;
//! - a bot inside the test speaking the native format (16 kHz PCM in binary messages) over
//!   `wss://` with a bearer token, which hands the call over to a SIPp agent;
//! - bots inside the test that misbehave: silent, flooding, malformed, closing mid-call,
//!   unreachable.
//!
//! Checked on the customer's side (the tones heard, and when), at the bot (what it heard,
//! its parameters, digits, marks), at the agent, in the CDR and in the metrics.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{cdr_of, free_udp_port, runtime, KillOnDrop, Uas};
use futures::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use waswitch::config::{Config, Secret};
use waswitch::node::Node;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load;
use waswitch::store::Cdr;

const SECRET: &str = "stream-meta-secret";
const BOT_TOKEN: &str = "bot-token-7f3a9c";

/// The bots' tone, the caller's own, and the `closed` prompt's (config/examples/prompts).
const BOT_HZ: u32 = 1200;
const OWN: u32 = 440;
const CLOSED: u32 = 800;

/// Business numbers (Meta's id, display number) and the IVR each one's calls go to.
const NUMBERS: &[(&str, &str, &str)] = &[
    ("105615555700001", "15550000001", "native"),
    ("105615555700002", "15550000002", "twilio"),
    ("105615555700003", "15550000003", "silent"),
    ("105615555700004", "15550000004", "flood"),
    ("105615555700005", "15550000005", "malformed"),
    ("105615555700006", "15550000006", "closing"),
    ("105615555700007", "15550000007", "unreachable"),
];

fn tls_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls")
}

/// The switch: each business number's IVR streams to its bot; the native one hands over
/// to the `agents` route (a SIPp agent), the others go on to the `closed` prompt.
fn config(bot: u16, pipecat: u16, agent: u16, nowhere: u16, media: u16, sim: &str) -> String {
    config_trusting(true, bot, pipecat, agent, nowhere, media, sim)
}

/// [`config`], trusting the test CA for `wss://` (`trust`) or only the system's CAs.
fn config_trusting(
    trust: bool,
    bot: u16,
    pipecat: u16,
    agent: u16,
    nowhere: u16,
    media: u16,
    sim: &str,
) -> String {
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/prompts");
    let mut toml = format!(
        r#"
[media]
ip = "127.0.0.1"
shards = 2
port_min = {media}
port_max = {port_max}
{stream}
[[trunk]]
name = "agents"
uri = "sip:127.0.0.1:{agent}"
options_interval_secs = 0
invite_timeout_ms = 3000
[[route]]
name = "agents"
trunks = ["agents"]
[meta]
graph_url = "http://{sim}"
access_token = "tok"
app_secret = "{SECRET}"
verify_token = "vt"
"#,
        port_max = media + 198,
        stream = if trust {
            format!(
                "[stream]\nca_file = \"{}\"",
                tls_dir().join("ca.pem").display()
            )
        } else {
            "[stream]\nconnect_timeout_ms = 2000".to_string()
        },
    );
    for (pnid, number, ivr) in NUMBERS {
        toml.push_str(&format!(
            r#"
[[business_number]]
phone_number_id = "{pnid}"
display_number = "{number}"
country = "BR"
entry = "{ivr}"
"#
        ));
    }
    // A bot inside the test that misbehaves (the path picks how), in the native format.
    let bad = |path: &str, rule: &str| {
        format!(
            "url = \"wss://127.0.0.1:{bot}/{path}\"\nbearer_env = \"WASWITCH_TEST_BOT_TOKEN\"\n\
             format = \"l16\"\n{rule}"
        )
    };
    let streams: [(&str, String); 7] = [
        (
            "native",
            format!(
                r#"url = "wss://127.0.0.1:{bot}/native"
format = "l16"
bearer_env = "WASWITCH_TEST_BOT_TOKEN"
parameters = {{ lang = "pt", tier = "gold" }}
on_handover = "people""#
            ),
        ),
        (
            "twilio",
            format!(
                r#"url = "ws://127.0.0.1:{pipecat}/media"
format = "twilio"
parameters = {{ lang = "pt" }}"#
            ),
        ),
        ("silent", bad("silent", "idle_timeout_secs = 2")),
        (
            "flood",
            bad("flood", "max_buffer_secs = 1\non_flood = \"end\""),
        ),
        ("malformed", bad("malformed", "max_malformed = 3")),
        ("closing", bad("closing", "")),
        (
            "unreachable",
            format!(
                r#"url = "ws://127.0.0.1:{nowhere}/"
reconnect = 1"#
            ),
        ),
    ];
    for (name, stream) in streams {
        toml.push_str(&format!(
            r#"
[[ivr]]
name = "{name}"
prompts = "{prompts}"
[[ivr.node]]
name = "main"
[[ivr.node.verb]]
verb = "answer"
[[ivr.node.verb]]
verb = "stream"
{stream}
[[ivr.node.verb]]
verb = "play"
prompts = ["closed"]
[[ivr.node.verb]]
verb = "hangup"
reason = "bot_done"
"#,
            prompts = prompts.display(),
        ));
        if name == "native" {
            toml.push_str(
                r#"
[[ivr.node]]
name = "people"
[[ivr.node.verb]]
verb = "dial"
route = "agents"
"#,
            );
        }
    }
    toml
}

/// What a bot inside the test does once the stream started.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Speaks its tone for this long, then hands over (`true`) or closes.
    Speak(Duration, bool),
    /// Says nothing at all.
    Silent,
    /// Sends this much audio at once.
    Flood(Duration),
    /// Sends this many messages that are not JSON.
    Malformed(u32),
}

/// What a bot inside the test saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    authorization: Option<String>,
    start: Option<Value>,
    /// The customer's audio (16-bit PCM at 16 kHz).
    pcm: Vec<i16>,
    dtmf: Vec<String>,
    stop: Option<Value>,
    closed_by_switch: bool,
}

type Bots = Arc<Mutex<HashMap<String, Seen>>>;

/// 20 ms of a `hz` tone at 16 kHz (16-bit little-endian), the `k`th frame.
fn tone_frame(hz: u32, k: u64) -> Vec<u8> {
    (0..320u64)
        .flat_map(|i| {
            let t = (k * 320 + i) as f64 / 16_000.0;
            let s = (9000.0 * (2.0 * std::f64::consts::PI * f64::from(hz) * t).sin()) as i16;
            s.to_le_bytes()
        })
        .collect()
}

/// Share of `pcm`'s power at `hz` (16 kHz), in 100 ms blocks, after the first half second.
fn tone_share(pcm: &[i16], hz: f64) -> f64 {
    let tail = &pcm[pcm.len().min(8000)..];
    let (mut tone, mut total) = (0.0, 0.0);
    for block in tail.chunks(1600) {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &s) in block.iter().enumerate() {
            let p = 2.0 * std::f64::consts::PI * hz * i as f64 / 16_000.0;
            re += f64::from(s) * p.cos();
            im += f64::from(s) * p.sin();
        }
        let n = block.len() as f64;
        tone += 2.0 * (re * re + im * im) / n;
        total += block.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
    }
    if total == 0.0 {
        0.0
    } else {
        tone / total
    }
}

/// The handshake's answer to a connection without the bot's token.
#[allow(clippy::result_large_err)]
fn check_token(
    req: &tokio_tungstenite::tungstenite::handshake::server::Request,
    resp: tokio_tungstenite::tungstenite::handshake::server::Response,
    path: &mut String,
    auth: &mut Option<String>,
) -> Result<
    tokio_tungstenite::tungstenite::handshake::server::Response,
    tokio_tungstenite::tungstenite::handshake::server::ErrorResponse,
> {
    *path = req.uri().path().trim_start_matches('/').to_string();
    *auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if auth.as_deref() != Some(&format!("Bearer {BOT_TOKEN}")) {
        let mut refused =
            tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(None);
        *refused.status_mut() = http_status_401();
        return Err(refused);
    }
    Ok(resp)
}

fn http_status_401() -> tokio_tungstenite::tungstenite::http::StatusCode {
    tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED
}

/// The bots inside the test: a `wss://` server (tests/tls) on loopback; the path picks the
/// bot. A connection without the bearer token is refused (401).
#[allow(clippy::result_large_err)] // tungstenite's handshake callback's own types
async fn native_bots(modes: HashMap<&'static str, Mode>) -> (u16, Bots) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let certs: Vec<_> =
        rustls::pki_types::CertificateDer::pem_file_iter(tls_dir().join("server.pem"))
            .expect("server.pem")
            .collect::<Result<_, _>>()
            .expect("certs");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(tls_dir().join("server.key"))
        .expect("server.key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let bots: Bots = Arc::default();
    let seen = Arc::clone(&bots);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen, modes) = (acceptor.clone(), Arc::clone(&seen), modes.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut path = String::new();
                let mut auth = None;
                let ws = tokio_tungstenite::accept_hdr_async(tls, |req: &_, resp| {
                    check_token(req, resp, &mut path, &mut auth)
                })
                .await;
                let Ok(ws) = ws else {
                    return;
                };
                let Some(mode) = modes.get(path.as_str()).copied() else {
                    return;
                };
                run_bot(ws, mode, &path, auth, seen).await;
            });
        }
    });
    (port, bots)
}

async fn run_bot<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    mode: Mode,
    path: &str,
    auth: Option<String>,
    bots: Bots,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = ws.split();
    let note = |f: &mut dyn FnMut(&mut Seen)| {
        let mut bots = bots.lock().expect("bots");
        f(bots.entry(path.to_string()).or_default());
    };
    note(&mut |s| s.authorization = auth.clone());
    // `connected`, then `start`.
    for _ in 0..2 {
        let Some(Ok(Message::Text(t))) = rx.next().await else {
            return;
        };
        let v: Value = serde_json::from_str(&t).expect("JSON");
        if v["event"] == "start" {
            note(&mut |s| s.start = Some(v.clone()));
        }
    }
    let speaker = tokio::spawn(async move {
        match mode {
            Mode::Speak(length, handover) => {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                for k in 0..(length.as_millis() / 20) as u64 {
                    tick.tick().await;
                    if tx
                        .send(Message::Binary(tone_frame(BOT_HZ, k).into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let reason = if handover {
                    r#"handover:{"queue":"agents"}"#
                } else {
                    "goodbye"
                };
                let _ = tx
                    .send(Message::Close(Some(
                        tokio_tungstenite::tungstenite::protocol::CloseFrame {
                            code: 1000.into(),
                            reason: reason.into(),
                        },
                    )))
                    .await;
            }
            Mode::Silent => {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Mode::Flood(length) => {
                for k in 0..(length.as_millis() / 20) as u64 {
                    if tx
                        .send(Message::Binary(tone_frame(BOT_HZ, k).into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Mode::Malformed(n) => {
                for i in 0..n {
                    let junk = format!("{{not json {i}");
                    if tx.send(Message::Text(junk.into())).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    });
    while let Some(Ok(m)) = rx.next().await {
        match m {
            Message::Binary(b) => note(&mut |s| {
                s.pcm
                    .extend(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])))
            }),
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("JSON from the switch");
                match v["event"].as_str() {
                    Some("dtmf") => {
                        let d = v["dtmf"]["digit"].as_str().unwrap_or_default().to_string();
                        note(&mut |s| s.dtmf.push(d.clone()));
                    }
                    Some("stop") => note(&mut |s| s.stop = Some(v.clone())),
                    _ => {}
                }
            }
            Message::Close(_) => {
                note(&mut |s| s.closed_by_switch = true);
                break;
            }
            _ => {}
        }
    }
    speaker.abort();
}

struct Rig {
    _graph: SimGraph,
    node: Node,
    http: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

fn start_rig(rt: &tokio::runtime::Runtime, toml: impl FnOnce(&str) -> String) -> (Rig, SimGraph) {
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = SimGraph::new(
        Secret::new("tok"),
        NUMBERS.iter().map(|(p, _, _)| p.to_string()).collect(),
    );
    let node = rt.block_on(async {
        let sim = graph.serve_loopback().await.expect("sim Graph API");
        let text = toml(&sim.to_string());
        let config = Config::loopback_with_env(&text, &dir.path().join("s.db"), |var| {
            (var == "WASWITCH_TEST_BOT_TOKEN").then(|| BOT_TOKEN.to_string())
        })
        .expect("config");
        Node::start(config).await.expect("node")
    });
    let http = node.http_addr();
    (
        Rig {
            _graph: graph.clone(),
            node,
            http,
            dir,
        },
        graph,
    )
}

fn ctx(graph: &SimGraph, http: std::net::SocketAddr, number: usize) -> load::SimContext {
    let (pnid, display, _) = NUMBERS[number];
    let mut ctx = common::sim_context(graph, http, SECRET, pnid, display);
    ctx.listen = [BOT_HZ, OWN, CLOSED].iter().map(|&hz| hz as f32).collect();
    ctx
}

fn cdrs(rt: &tokio::runtime::Runtime, rig: Rig) -> Vec<Cdr> {
    let db = rig.dir.path().join("s.db");
    common::cdrs_after(rt, rig.node, &db)
}

/// The native format over `wss://` with a bearer token: the bot gets `start` with the
/// verb's parameters and 16 kHz PCM of the caller's tone, and the caller's key; the caller
/// hears the bot's tone. The bot then hands over: the call goes to the handover node and
/// its dial reaches a SIPp agent, whose echo the caller hears.
#[test]
fn a_native_bot_talks_both_ways_then_hands_the_call_to_an_agent() {
    let rt = runtime();
    let agent = free_udp_port();
    let (bot_port, bots) = rt.block_on(native_bots(HashMap::from([(
        "native",
        Mode::Speak(Duration::from_millis(2500), true),
    )])));
    let (rig, graph) = start_rig(&rt, |sim| config(bot_port, 1, agent, 1, 64_200, sim));
    let pbx = Uas::start_with("b2bua_uas.xml", "u1", agent, 1, &["-rtp_echo"]);
    let mut ctx = ctx(&graph, rig.http, 0);
    ctx.dtmf = Some("5".into());
    ctx.dtmf_after = Duration::from_millis(1000);
    let r = rt.block_on(load::user_call(
        &ctx,
        "5511988887777",
        Duration::from_secs(7),
    ));
    assert_eq!(r.error, None, "{r:?}");
    assert!(r.accepted && r.connected, "{r:?}");
    // The bot, then the agent's echo of the caller's own voice.
    assert_eq!(r.tones.first(), Some(&BOT_HZ), "{r:?}");
    assert_eq!(r.tones.last(), Some(&OWN), "{r:?}");
    assert!(r.audio_verified, "{r:?}");
    assert!(!r.tones.contains(&CLOSED), "{r:?}");

    let seen = bots.lock().expect("bots")["native"].clone();
    assert_eq!(
        seen.authorization.as_deref(),
        Some(format!("Bearer {BOT_TOKEN}").as_str())
    );
    let start = seen.start.expect("start");
    assert_eq!(start["start"]["customParameters"]["lang"], "pt", "{start}");
    assert_eq!(
        start["start"]["customParameters"]["tier"], "gold",
        "{start}"
    );
    assert_eq!(
        start["start"]["mediaFormat"]["encoding"], "audio/l16",
        "{start}"
    );
    assert_eq!(
        start["start"]["mediaFormat"]["sampleRate"], 16000,
        "{start}"
    );
    assert_eq!(start["start"]["from"], "5511988887777", "{start}");
    assert_eq!(seen.dtmf, ["5"], "{:?}", seen.dtmf);
    // 2.5 s of the caller at 16 kHz, most of its power the caller's tone.
    assert!(seen.pcm.len() > 16_000, "{} samples", seen.pcm.len());
    let share = tone_share(&seen.pcm, f64::from(OWN));
    assert!(
        share > 0.5,
        "the caller's tone is {share:.2} of what the bot heard"
    );

    let cdrs = cdrs(&rt, rig);
    let (code, counters) = pbx.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    assert_eq!(counters.get("SuccessfulCall(C)"), Some(&1), "{counters:?}");
    let cdr = cdr_of(&cdrs, &r.wa_call_id);
    assert_eq!(cdr.trunk.as_deref(), Some("agents"), "{cdr:?}");
    let control = cdr.control.as_ref().expect("control record");
    assert_eq!(
        control.ivr_path,
        ["main", "handover", "people"],
        "{control:?}"
    );
    let stream = &control.streams[0];
    assert_eq!(stream.format, "l16");
    assert_eq!(stream.end, "handover", "{stream:?}");
    assert_eq!(
        stream.handover.as_ref().map(|h| h["queue"].clone()),
        Some(Value::from("agents"))
    );
    assert_eq!(stream.attempts, 1);
    // 2.5 s of bot audio at 32,000 bytes a second, and at least as much of the caller.
    assert!(stream.bytes_from_bot >= 75_000, "{stream:?}");
    assert!(stream.bytes_to_bot >= 64_000, "{stream:?}");
    assert!(
        stream.to_bot_us.is_some() && stream.to_caller_us.is_some(),
        "{stream:?}"
    );
}

/// A running Pipecat bot (tests/peers/pipecat_bot.py).
struct Pipecat {
    process: KillOnDrop,
    report: PathBuf,
}

const PIPECAT_PYTHON: &str = "/opt/waswitch-pipecat/bin/python";

impl Pipecat {
    fn start(port: u16, dir: &Path, args: &[&str]) -> Pipecat {
        use std::io::BufRead as _;
        let report = dir.join("pipecat.json");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pipecat_bot.py");
        let mut child = std::process::Command::new("timeout")
            .args(["120", PIPECAT_PYTHON])
            .arg(script)
            .args(["--port", &port.to_string(), "--tone", &BOT_HZ.to_string()])
            .arg("--report")
            .arg(&report)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("Pipecat's virtualenv (.ci/run installs pipecat-ai in /opt/waswitch-pipecat)");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        assert_eq!(line.trim(), "ready", "the Pipecat bot did not start");
        Pipecat {
            process: KillOnDrop(child),
            report,
        }
    }

    /// Its report, once it has ended the call (bounded wait).
    fn report(mut self) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.process.stop();
        let text = std::fs::read_to_string(&self.report).expect("the bot's report");
        serde_json::from_str(&text).expect("JSON report")
    }
}

/// Twilio Media Streams with a real Pipecat pipeline: Pipecat hears the caller's tone and
/// key and gets the verb's parameters; the caller hears Pipecat's tone. Mid-playback the
/// bot bursts two seconds of audio and a mark, then clears: the caller's audio stops within
/// 100 ms of the clear, and the mark comes back at once.
#[test]
fn a_pipecat_bot_speaks_twilio_media_streams_and_its_clear_stops_the_audio_at_once() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let pipecat_port = common::free_tcp_port();
    let bot = Pipecat::start(
        pipecat_port,
        dir.path(),
        &[
            "--burst",
            "2",
            "--clear-at",
            "2.5",
            "--log-level",
            "WARNING",
        ],
    );
    let (rig, graph) = start_rig(&rt, |sim| config(1, pipecat_port, 1, 1, 64_400, sim));
    let mut ctx = ctx(&graph, rig.http, 1);
    // The bot's tone is the last the caller hears (it goes quiet after its clear).
    ctx.expect_hz = BOT_HZ as f32;
    ctx.dtmf = Some("7".into());
    ctx.dtmf_after = Duration::from_millis(1200);
    let r = rt.block_on(load::user_call(
        &ctx,
        "5511977776666",
        Duration::from_secs(6),
    ));
    assert_eq!(r.error, None, "{r:?}");
    assert!(r.accepted && r.connected, "{r:?}");
    assert_eq!(r.tones.first(), Some(&BOT_HZ), "{r:?}");
    let report = bot.report();
    assert_eq!(report["custom_parameters"]["lang"], "pt", "{report}");
    assert_eq!(
        report["media_format"]["encoding"], "audio/x-mulaw",
        "{report}"
    );
    let heard = report["heard_hz"]
        .as_f64()
        .expect("Pipecat heard the caller");
    assert!(
        (heard - f64::from(OWN)).abs() < 15.0,
        "Pipecat heard {heard} Hz"
    );
    assert!(report["media_in"].as_u64().unwrap_or(0) > 100, "{report}");
    assert_eq!(report["dtmf"], serde_json::json!(["7"]), "{report}");
    assert_eq!(
        report["marks_back"],
        serde_json::json!(["after-burst"]),
        "{report}"
    );
    assert_eq!(report["stop_received"], true, "{report}");
    // The clear: two seconds of audio were queued, and the caller heard none of it past
    // 100 ms after the clear left the bot.
    let clear = report["clear_sent_unix_ms"]
        .as_u64()
        .expect("the clear was sent");
    let last = r.last_sound_unix_ms.expect("the caller heard the bot");
    println!("clear to silence: {} ms", last as i64 - clear as i64);
    assert!(
        last <= clear + 100,
        "the caller heard the bot until {} ms after the clear",
        last as i64 - clear as i64
    );
    assert!(
        last + 500 >= clear,
        "the bot went quiet long before its clear: {r:?}"
    );

    let cdrs = cdrs(&rt, rig);
    let cdr = cdr_of(&cdrs, &r.wa_call_id);
    let stream = &cdr.control.as_ref().expect("control").streams[0];
    assert_eq!(stream.format, "twilio");
    assert_eq!(stream.end, "caller_hangup", "{stream:?}");
    assert!(stream.bytes_to_bot > 30_000, "{stream:?}");
    assert!(stream.bytes_from_bot > 16_000, "{stream:?}");
}

/// Bots that misbehave never hold up the call: a silent one is ended after its idle
/// limit, a flooding one at its buffer's bound, a malformed one past its tolerance, one
/// that closes mid-call simply ends its stream, an unreachable one is tried twice. Each
/// call goes on to the next verb (the `closed` prompt), and the CDR and the metrics say
/// why.
#[test]
fn bad_bots_end_their_streams_with_a_cause_and_the_call_goes_on() {
    let rt = runtime();
    let (bot_port, bots) = rt.block_on(native_bots(HashMap::from([
        ("silent", Mode::Silent),
        ("flood", Mode::Flood(Duration::from_secs(5))),
        ("malformed", Mode::Malformed(10)),
        ("closing", Mode::Speak(Duration::from_millis(1200), false)),
    ])));
    let nowhere = common::free_tcp_port();
    let (rig, graph) = start_rig(&rt, |sim| config(bot_port, 1, 1, nowhere, 64_600, sim));
    let calls: Vec<(usize, &str, &str)> = vec![
        (2, "5511900000003", "bot_silent"),
        (3, "5511900000004", "bot_flood"),
        (4, "5511900000005", "bot_malformed"),
        (5, "5511900000006", "bot_closed"),
        (6, "5511900000007", "bot_unreachable"),
    ];
    let results = rt.block_on(futures::future::join_all(calls.iter().map(
        |(number, user, _)| {
            let mut ctx = ctx(&graph, rig.http, *number);
            ctx.expect_hz = CLOSED as f32;
            async move { load::user_call(&ctx, user, Duration::from_secs(10)).await }
        },
    )));
    for (r, (_, _, why)) in results.iter().zip(&calls) {
        assert_eq!(r.error, None, "{why}: {r:?}");
        // The script went on: the closed prompt, then the switch hung up.
        assert_eq!(r.tones.last(), Some(&CLOSED), "{why}: {r:?}");
        assert!(r.ended_by_business, "{why}: {r:?}");
    }
    // The one that spoke was heard before it closed.
    assert_eq!(results[3].tones, [BOT_HZ, CLOSED], "{:?}", results[3]);
    let metrics = rt.block_on(common::metrics_text(rig.http));
    let count = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count(r#"waswitch_stream_dropped_total{reason="not_json"}"#) >= 4.0,
        "{metrics}"
    );
    assert!(
        count(r#"waswitch_stream_dropped_total{reason="flood"}"#) >= 1.0,
        "{metrics}"
    );
    for (_, _, why) in &calls {
        let format = if *why == "bot_unreachable" {
            "twilio"
        } else {
            "l16"
        };
        let series = format!(r#"waswitch_streams_total{{format="{format}",end="{why}"}}"#);
        assert_eq!(count(&series), 1.0, "{series} in {metrics}");
    }
    let cdrs = cdrs(&rt, rig);
    for (r, (_, _, why)) in results.iter().zip(&calls) {
        let cdr = cdr_of(&cdrs, &r.wa_call_id);
        let control = cdr.control.as_ref().expect("control");
        let stream = &control.streams[0];
        assert_eq!(&stream.end, why, "{stream:?}");
        assert_eq!(control.end.as_deref(), Some("bot_done"), "{control:?}");
        match *why {
            "bot_malformed" => assert_eq!(stream.malformed, 4, "{stream:?}"),
            "bot_flood" => assert!(stream.flood_dropped_bytes > 0, "{stream:?}"),
            "bot_unreachable" => {
                assert_eq!(stream.attempts, 2, "{stream:?}");
                assert!(stream.error.is_some(), "{stream:?}");
                assert_eq!(stream.duration_ms, 0, "{stream:?}");
            }
            "bot_closed" => assert!(stream.bytes_from_bot > 30_000, "{stream:?}"),
            _ => {}
        }
    }
    // The silent bot was pinged, never hung up on: the switch closed it.
    let seen = bots.lock().expect("bots").clone();
    for name in ["silent", "flood", "malformed"] {
        assert!(
            seen[name].closed_by_switch,
            "{name}: {:?}",
            seen[name].start
        );
    }
}

/// A `wss://` bot whose certificate no trusted CA signed is not streamed to: the call goes
/// on with the next verb, and the CDR says why.
#[test]
fn a_bot_whose_certificate_is_not_trusted_gets_no_audio() {
    let rt = runtime();
    let (bot_port, bots) = rt.block_on(native_bots(HashMap::from([(
        "native",
        Mode::Speak(Duration::from_millis(2000), true),
    )])));
    let (rig, graph) = start_rig(&rt, |sim| {
        config_trusting(false, bot_port, 1, 1, 1, 65_000, sim)
    });
    let mut ctx = ctx(&graph, rig.http, 0);
    ctx.expect_hz = CLOSED as f32;
    let r = rt.block_on(load::user_call(
        &ctx,
        "5511966665555",
        Duration::from_secs(6),
    ));
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.tones, [CLOSED], "{r:?}");
    assert!(bots.lock().expect("bots").is_empty(), "the bot was reached");
    let cdrs = cdrs(&rt, rig);
    let stream = &cdr_of(&cdrs, &r.wa_call_id)
        .control
        .as_ref()
        .expect("control")
        .streams[0];
    assert_eq!(stream.end, "bot_unreachable", "{stream:?}");
    let error = stream.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("TLS") && error.contains("certificate"),
        "{error}"
    );
}
