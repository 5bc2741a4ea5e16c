//! HTTP voice apps, end to end: an app inside the test (axum on loopback) decides what
//! happens to each WhatsApp call; `waswitch sim` plays WhatsApp (signed webhooks, its Graph
//! API, customers with real WebRTC audio who press keys and listen for the tone-coded
//! prompts); SIPp with RTP echo is the PBX. Checked on the customer's side (the tones
//! heard), at the app (signed events, in order), at the PBX, in the CDR and over the REST
//! API with scoped tokens.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{cdr_of, free_udp_port, runtime, Uas};
use serde_json::{json, Value};
use waswitch::config::{Config, Secret};
use waswitch::node::Node;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load::{self, SimContext};
use waswitch::store::Cdr;

const SECRET: &str = "apps-meta-secret";
const PNID: &str = "105615555715855";
const NUMBER: &str = "15551112222";
const PNID2: &str = "105615555715856";
const NUMBER2: &str = "15551113333";
const OPERATOR: &str = "apps-operator-token";
const DEMO_TOKEN: &str = "demo-token-0000000001";
const OTHER_TOKEN: &str = "other-token-000000001";
const DEMO_SECRET: &str = "demo-app-secret-0001";
const OTHER_SECRET: &str = "other-app-secret-001";

/// The menu prompt's tone (config/examples/prompts/en/menu.wav), and the caller's own.
const MENU: u32 = 600;
const OWN: u32 = 440;

/// One request the app got.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    timestamp: u64,
    signature: String,
    body: Vec<u8>,
    json: Value,
}

/// What the app answers: status, body, and how long it takes.
type Answer = (u16, Value, Duration);
type Handler = Arc<dyn Fn(&str, &Value) -> Answer + Send + Sync>;

/// The app: its base URL, what it got, and how often its prompt was fetched.
#[derive(Clone)]
struct TestApp {
    base: String,
    got: Arc<Mutex<Vec<Got>>>,
    prompt_fetches: Arc<Mutex<u32>>,
}

impl TestApp {
    /// The requests whose JSON has `event == name`.
    fn events(&self, name: &str) -> Vec<Got> {
        self.got
            .lock()
            .expect("app")
            .iter()
            .filter(|g| g.json["event"] == name)
            .cloned()
            .collect()
    }

    /// Waits (up to 15 s) for `n` events `name`.
    async fn wait_for(&self, name: &str, n: usize) -> Vec<Got> {
        for _ in 0..150 {
            let got = self.events(name);
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{n} {name} events never came: {:?}",
            self.got
                .lock()
                .expect("app")
                .iter()
                .map(|g| (g.path.clone(), g.json["event"].clone()))
                .collect::<Vec<_>>()
        );
    }
}

/// Serves the app on loopback: POSTs go to `handler` (by path), and `GET
/// /prompts/menu.wav` serves the menu prompt as audio/wav.
async fn serve_app(handler: Handler) -> TestApp {
    use axum::http::{HeaderMap, StatusCode};
    let got: Arc<Mutex<Vec<Got>>> = Default::default();
    let fetches: Arc<Mutex<u32>> = Default::default();
    let kept = got.clone();
    let counted = fetches.clone();
    let menu = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/prompts/en/menu.wav"),
    )
    .expect("menu prompt");
    let app = axum::Router::new()
        .route(
            "/prompts/menu.wav",
            axum::routing::get(move || {
                let menu = menu.clone();
                let counted = counted.clone();
                async move {
                    *counted.lock().expect("count") += 1;
                    ([("content-type", "audio/wav")], menu)
                }
            }),
        )
        .route(
            "/prompts/notes.txt",
            axum::routing::get(|| async { ([("content-type", "text/plain")], "not audio") }),
        )
        .fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let kept = kept.clone();
                let handler = handler.clone();
                async move {
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    kept.lock().expect("app").push(Got {
                        path: uri.path().to_string(),
                        timestamp: header("x-waswitch-timestamp").parse().unwrap_or(0),
                        signature: header("x-waswitch-signature"),
                        body: body.to_vec(),
                        json: json.clone(),
                    });
                    let (status, answer, delay) = handler(uri.path(), &json);
                    tokio::time::sleep(delay).await;
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                    match answer {
                        Value::String(raw) => (status, raw),
                        other => (status, other.to_string()),
                    }
                }
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener, app,
    )));
    TestApp {
        base,
        got,
        prompt_fetches: fetches,
    }
}

/// Answers an event (`call.answered`, …) that wants no verbs.
fn ok() -> Answer {
    (200, json!({}), Duration::ZERO)
}

fn verbs(v: Value) -> Answer {
    (200, v, Duration::ZERO)
}

fn config(pbx: u16, media_ports: u16, sim: &str, app: &str, dir: &Path) -> String {
    format!(
        r#"
[http]
api_token = "{OPERATOR}"
[media]
ip = "127.0.0.1"
shards = 2
port_min = {media_ports}
port_max = {port_max}
[recording]
format = "wav"
dir = "{rec}"
[[trunk]]
name = "pbx"
uri = "sip:127.0.0.1:{pbx}"
options_interval_secs = 0
invite_timeout_ms = 2000
[[route]]
name = "pbx"
trunks = ["pbx"]
[[route]]
name = "to-demo"
app = "demo"
[meta]
graph_url = "http://{sim}"
access_token = "tok"
app_secret = "{SECRET}"
verify_token = "vt"
[[business_number]]
phone_number_id = "{PNID}"
display_number = "{NUMBER}"
country = "BR"
route = "to-demo"
[[business_number]]
phone_number_id = "{PNID2}"
display_number = "{NUMBER2}"
country = "BR"
app = "other"
[[app]]
name = "demo"
url = "{app}/demo"
secret = "{DEMO_SECRET}"
timeout_ms = 1000
fallback = "pbx"
recording_dir = "{rec}"
[[app]]
name = "other"
url = "{app}/other"
secret = "{OTHER_SECRET}"
timeout_ms = 1000
fallback_message = "Sorry, we cannot take your call now."
recording_dir = "{rec}"
[[agent]]
user = "alice"
password = "alice-pass"
[[api_token]]
name = "demo"
token = "{DEMO_TOKEN}"
business_numbers = ["{NUMBER}"]
[[api_token]]
name = "other"
token = "{OTHER_TOKEN}"
business_numbers = ["{NUMBER2}"]
"#,
        port_max = media_ports + 198,
        rec = dir.join("recordings").display(),
    )
}

struct Rig {
    graph: SimGraph,
    node: Node,
    app: TestApp,
    /// Customers calling the demo app's number, and the other app's.
    demo: SimContext,
    other: SimContext,
}

fn start(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    pbx: u16,
    media_ports: u16,
    handler: Handler,
) -> Rig {
    let graph = SimGraph::new(
        Secret::new("tok"),
        vec![PNID.to_string(), PNID2.to_string()],
    );
    let (node, app) = rt.block_on(async {
        let sim = graph.serve_loopback().await.expect("sim Graph API");
        let app = serve_app(handler).await;
        let toml = config(pbx, media_ports, &sim.to_string(), &app.base, dir);
        let config = Config::loopback(&toml, &dir.join("apps.db")).expect("config");
        (Node::start(config).await.expect("node"), app)
    });
    let mut demo = common::sim_context(&graph, node.http_addr(), SECRET, PNID, NUMBER);
    demo.listen = vec![MENU as f32, OWN as f32];
    let other = common::sim_context(&graph, node.http_addr(), SECRET, PNID2, NUMBER2);
    Rig {
        graph,
        node,
        app,
        demo,
        other,
    }
}

fn cdrs(rt: &tokio::runtime::Runtime, node: Node, dir: &Path) -> Vec<Cdr> {
    common::cdrs_after(rt, node, &dir.join("apps.db"))
}

/// The next `n` calls the sim's users answered (each within 20 s).
async fn next_calls(
    answered: &mut tokio::sync::mpsc::UnboundedReceiver<waswitch::sim::users::AnsweredCall>,
    n: usize,
) -> Vec<waswitch::sim::users::AnsweredCall> {
    let mut calls = Vec::with_capacity(n);
    for _ in 0..n {
        calls.push(
            tokio::time::timeout(Duration::from_secs(20), answered.recv())
                .await
                .expect("in time")
                .expect("a call"),
        );
    }
    calls
}

/// Agent alice's phone: SIPp answering one call and echoing, registered (digest, over UDP)
/// with `node`; the registration lasts as long as the socket returned.
fn alice_phone(node: &Node) -> (Uas, std::net::UdpSocket) {
    let phone = free_udp_port();
    let uas = Uas::start_with("b2bua_uas.xml", "u1", phone, 1, &["-rtp_echo"]);
    let switch = node.sip_udp_addr().expect("SIP over UDP");
    let registration = common::agent::register_udp(
        switch,
        "alice",
        "alice-pass",
        std::net::SocketAddr::from(([127, 0, 0, 1], phone)),
    );
    (uas, registration)
}

/// The CDR of the switch's call `call_id`.
fn cdr_by_id<'a>(cdrs: &'a [Cdr], call_id: &str) -> &'a Cdr {
    cdrs.iter()
        .find(|c| c.call_id == call_id)
        .unwrap_or_else(|| panic!("no CDR for {call_id} in {cdrs:?}"))
}

/// The sim's users of a number: they grant call permission for a day, and answer the
/// business's calls after 300 ms, talking for `hold_secs`.
fn answering_users(
    ctx: &SimContext,
    hold_secs: u64,
) -> (
    waswitch::sim::users::Users,
    tokio::sync::mpsc::UnboundedReceiver<waswitch::sim::users::AnsweredCall>,
) {
    use waswitch::sim::users::{Behaviour, CallAnswer, PermissionAnswer, Users};
    Users::start(
        ctx.clone(),
        Behaviour {
            call: CallAnswer::Accept {
                after: Duration::from_millis(300),
                hold: Duration::from_secs(hold_secs),
            },
            permission: PermissionAnswer::Grant {
                lasts: Some(Duration::from_secs(86_400)),
            },
            dtmf: None,
        },
    )
}

/// Asks `customer` for call permission for the demo number (the sim's users grant it)
/// and waits until it is granted.
async fn grant(http: std::net::SocketAddr, customer: &str) {
    let client = reqwest::Client::new();
    let asked = common::api(
        &client,
        format!("http://{http}/v1/permissions/{NUMBER}/{customer}/request"),
        OPERATOR,
        reqwest::Method::POST,
        Some(json!({"purpose": "Your order"})),
    )
    .await;
    assert_eq!(asked.0, 201, "{asked:?}");
    for _ in 0..100 {
        let view = common::api(
            &client,
            format!("http://{http}/v1/permissions/{NUMBER}/{customer}"),
            OPERATOR,
            reqwest::Method::GET,
            None,
        )
        .await;
        if view.1["status"] == "granted" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{customer} never granted permission");
}

/// `wav` (8 kHz, 16-bit, `channels` channels) lasts `secs` and holds the caller's tone on
/// its first channel (side A): most of the middle half's power at 440 Hz.
fn assert_caller_tone(wav: &[u8], channels: u16, secs: std::ops::Range<f32>) {
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), channels, "channels");
    let first: Vec<f32> = wav[44..]
        .chunks_exact(2 * usize::from(channels))
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    let long = first.len() as f32 / 8000.0;
    assert!(secs.contains(&long), "{long} s");
    let voiced = &first[first.len() / 4..first.len() * 3 / 4];
    let total = voiced.iter().map(|x| x * x).sum::<f32>() / voiced.len() as f32;
    let tone = waswitch::media::quality::tone_power(voiced, OWN as f32, 8000.0);
    assert!(tone / total > 0.5, "440 Hz share {}", tone / total);
}

/// The event's signature is the app secret's HMAC of `<timestamp>.<body>`.
fn assert_signed(got: &Got, secret: &str) {
    let expected = waswitch::store::webhook::signature(secret.as_bytes(), got.timestamp, &got.body);
    assert_eq!(got.signature, expected, "{got:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    assert!(now.abs_diff(got.timestamp) < 60, "{got:?}");
}

/// A menu: the app answers `call.initiated` with answer + gather (its prompt a URL of the
/// app's, fetched once for both calls), gets the digit at the gather's action, and answers
/// with a dial to the PBX: the caller hears the menu, then their own voice through the
/// PBX's echo. The app hears `call.answered` and `call.ended` (with the CDR), each signed.
#[test]
fn a_menu_posts_the_digit_to_the_app_and_its_dial_reaches_the_pbx_with_audio() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let pbx = free_udp_port();
    let base: Arc<Mutex<String>> = Default::default();
    let b = base.clone();
    let handler: Handler = Arc::new(move |path, event| {
        let base = b.lock().expect("base").clone();
        match (path, event["event"].as_str()) {
            ("/demo", Some("call.initiated")) => verbs(json!({"verbs": [
                "answer",
                {"gather": {
                    "prompts": [format!("{base}/prompts/menu.wav")],
                    "timeout_ms": 3000,
                    "action": format!("{base}/menu"),
                }},
                {"hangup": {"reason": "no_input"}},
            ]})),
            ("/menu", Some("gather.completed")) if event["digits"] == "2" => {
                verbs(json!([{"dial": {"route": "pbx"}}]))
            }
            ("/menu", _) => verbs(json!(["hangup"])),
            _ => ok(),
        }
    });
    let mut rig = start(&rt, dir.path(), pbx, 59_000, handler);
    *base.lock().expect("base") = rig.app.base.clone();
    let uas = Uas::start_with("b2bua_uas.xml", "u1", pbx, 2, &["-rtp_echo"]);
    rig.demo.dtmf = Some("2".into());
    rig.demo.dtmf_after = Duration::from_millis(700);
    let (r1, r2) = rt.block_on(async {
        tokio::join!(
            load::user_call(&rig.demo, "4915112345678", Duration::from_secs(4)),
            load::user_call(&rig.demo, "4915187654321", Duration::from_secs(4)),
        )
    });
    for r in [&r1, &r2] {
        assert_eq!(r.error, None, "{r:?}");
        assert!(r.connected && r.audio_verified, "{r:?}");
        assert_eq!(r.tones.first(), Some(&MENU), "{r:?}");
        assert_eq!(r.tones.last(), Some(&OWN), "{r:?}");
    }
    // The app: call.initiated (signed, with the call's facts), the digit at the action,
    // call.answered, and once the calls ended call.ended with each CDR.
    let initiated = rig.app.events("call.initiated");
    assert_eq!(initiated.len(), 2, "{initiated:?}");
    for got in &initiated {
        assert_eq!(got.path, "/demo");
        assert_signed(got, DEMO_SECRET);
        assert_eq!(got.json["business_number"], NUMBER);
        assert_eq!(got.json["direction"], "user_initiated");
        assert_eq!(got.json["app"], "demo");
        assert!(got.json["call_id"].as_str().is_some_and(|c| !c.is_empty()));
    }
    let customers: Vec<&str> = initiated
        .iter()
        .filter_map(|g| g.json["customer"]["wa_id"].as_str())
        .collect();
    assert!(customers.contains(&"4915112345678") && customers.contains(&"4915187654321"));
    let gathered = rig.app.events("gather.completed");
    assert_eq!(gathered.len(), 2, "{gathered:?}");
    assert!(gathered
        .iter()
        .all(|g| g.path == "/menu" && g.json["digits"] == "2"));
    gathered.iter().for_each(|g| assert_signed(g, DEMO_SECRET));
    rt.block_on(rig.app.wait_for("call.answered", 2));
    let ended = rt.block_on(rig.app.wait_for("call.ended", 2));
    for got in &ended {
        assert_signed(got, DEMO_SECRET);
        assert_eq!(got.json["cdr"]["control"]["app"], "demo", "{got:?}");
        assert_eq!(got.json["cdr"]["trunk"], "pbx", "{got:?}");
    }
    // The prompt was fetched once and played from the cache the second time.
    assert_eq!(*rig.app.prompt_fetches.lock().expect("count"), 1);
    let metrics = rt.block_on(common::metrics_text(rig.node.http_addr()));
    assert!(
        metrics.contains(r#"waswitch_app_requests_total{app="demo",outcome="ok"} 4"#),
        "{metrics}"
    );

    let cdrs = cdrs(&rt, rig.node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    assert_eq!(counters.get("SuccessfulCall(C)"), Some(&2), "{counters:?}");
    for r in [&r1, &r2] {
        let cdr = cdr_of(&cdrs, &r.wa_call_id);
        assert_eq!(cdr.trunk.as_deref(), Some("pbx"), "{cdr:?}");
        let control = cdr.control.as_ref().expect("control record");
        assert_eq!(control.app.as_deref(), Some("demo"));
        assert_eq!(control.app_error, None);
        assert_eq!(control.digits, ["2"], "{control:?}");
    }
}

/// An app that times out, one that names an unknown verb and one that answers 500 each
/// send the call to their app's fallback: the PBX (the caller hears their own voice), or
/// the closed message and the call's end. The CDR says what went wrong.
#[test]
fn an_app_that_times_out_or_fails_sends_the_call_to_its_fallback() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let pbx = free_udp_port();
    let handler: Handler = Arc::new(move |path, event| {
        let customer = event["customer"]["wa_id"].as_str().unwrap_or_default();
        match (path, event["event"].as_str(), customer) {
            ("/demo", Some("call.initiated"), "4915100000001") => {
                (200, json!(["answer"]), Duration::from_secs(3))
            }
            ("/demo", Some("call.initiated"), _) => {
                verbs(json!(["answer", {"say": {"text": "hello"}}]))
            }
            ("/other", Some("call.initiated"), _) => {
                (500, json!({"error": "boom"}), Duration::ZERO)
            }
            _ => ok(),
        }
    });
    let mut rig = start(&rt, dir.path(), pbx, 59_200, handler);
    let uas = Uas::start_with("b2bua_uas.xml", "u1", pbx, 2, &["-rtp_echo"]);
    rig.demo.listen.clear();
    let (slow, unknown, broken) = rt.block_on(async {
        tokio::join!(
            load::user_call(&rig.demo, "4915100000001", Duration::from_secs(3)),
            load::user_call(&rig.demo, "4915100000002", Duration::from_secs(3)),
            load::user_call(&rig.other, "4915100000003", Duration::from_secs(3)),
        )
    });
    for r in [&slow, &unknown] {
        assert_eq!(r.error, None, "{r:?}");
        assert!(r.connected && r.audio_verified, "{r:?}");
    }
    assert!(!broken.connected, "{broken:?}");
    // The closed message reached the caller through the Graph API.
    let texts: Vec<_> = rig
        .graph
        .recorded()
        .into_iter()
        .filter(|m| m.endpoint == "messages" && m.body["type"] == "text")
        .collect();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert_eq!(texts[0].body["to"], "4915100000003");
    assert_eq!(
        texts[0].body["text"]["body"],
        "Sorry, we cannot take your call now."
    );
    let metrics = rt.block_on(common::metrics_text(rig.node.http_addr()));
    for (app, outcome) in [
        ("demo", "timeout"),
        ("demo", "invalid_verbs"),
        ("other", "http_5xx"),
    ] {
        let series = format!(r#"waswitch_app_requests_total{{app="{app}",outcome="{outcome}"}} 1"#);
        assert!(metrics.contains(&series), "{series}\n{metrics}");
    }
    let cdrs = cdrs(&rt, rig.node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    assert_eq!(counters.get("SuccessfulCall(C)"), Some(&2), "{counters:?}");
    let error_of = |r: &load::CallResult| {
        let cdr = cdr_of(&cdrs, &r.wa_call_id);
        cdr.control
            .as_ref()
            .and_then(|c| c.app_error.clone())
            .unwrap_or_else(|| panic!("no app error in {cdr:?}"))
    };
    assert!(
        error_of(&slow).starts_with("timeout:"),
        "{}",
        error_of(&slow)
    );
    assert!(
        error_of(&unknown).contains("verbs[1]: unknown verb \"say\""),
        "{}",
        error_of(&unknown)
    );
    assert!(
        error_of(&broken).starts_with("http_5xx:"),
        "{}",
        error_of(&broken)
    );
    for r in [&slow, &unknown] {
        assert_eq!(cdr_of(&cdrs, &r.wa_call_id).trunk.as_deref(), Some("pbx"));
    }
    let broken_cdr = cdr_of(&cdrs, &broken.wa_call_id);
    assert_eq!(broken_cdr.answered_at, None, "{broken_cdr:?}");
    assert_eq!(broken_cdr.end_cause, "app_failed", "{broken_cdr:?}");
}

/// `record` makes a file of the caller's voice; `recording.ready` tells the app where to
/// download it, and only a token for the call's business number may (and may delete it).
/// While the call is live, another app's token gets 403 on it.
#[test]
fn a_recording_is_announced_and_downloaded_only_with_the_numbers_token() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let handler: Handler = Arc::new(move |path, event| match (path, event["event"].as_str()) {
        ("/other", Some("call.initiated")) => verbs(json!(["answer",
            {"record": {"beep": false, "max_length_secs": 3, "silence_secs": 0}},
            {"hangup": {}}])),
        _ => ok(),
    });
    let rig = start(&rt, dir.path(), free_udp_port(), 59_400, handler);
    let http = rig.node.http_addr();
    let app = rig.app.clone();
    let (r, live) = rt.block_on(async {
        let call = load::user_call(&rig.other, "4915112345678", Duration::from_secs(8));
        let probe = async {
            let initiated = app.wait_for("call.initiated", 1).await;
            let id = initiated[0].json["call_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            app.wait_for("call.answered", 1).await;
            let client = reqwest::Client::new();
            let url = format!("http://{http}/v1/calls/{id}");
            let mine = common::api(
                &client,
                url.clone(),
                OTHER_TOKEN,
                reqwest::Method::GET,
                None,
            )
            .await;
            let theirs =
                common::api(&client, url.clone(), DEMO_TOKEN, reqwest::Method::GET, None).await;
            let act = common::api(
                &client,
                format!("{url}/actions"),
                DEMO_TOKEN,
                reqwest::Method::POST,
                Some(json!({"verbs": ["hangup"]})),
            )
            .await;
            (mine.0, theirs.0, act.0)
        };
        tokio::join!(call, probe)
    });
    assert_eq!(live, (200, 403, 403), "{live:?}");
    assert!(r.connected, "{r:?}");
    assert!(r.ended_by_business, "{r:?}");
    let ready = rt.block_on(rig.app.wait_for("recording.ready", 1));
    let ready = &ready[0];
    assert_signed(ready, OTHER_SECRET);
    let id = ready.json["recording_id"]
        .as_str()
        .expect("recording id")
        .to_string();
    assert_eq!(ready.json["url"], format!("/v1/recordings/{id}"));
    let url = format!("http://{http}/v1/recordings/{id}");
    let client = reqwest::Client::new();
    let (wav, forbidden) = rt.block_on(async {
        let wav = client
            .get(&url)
            .bearer_auth(OTHER_TOKEN)
            .send()
            .await
            .expect("download");
        assert_eq!(wav.status(), 200);
        assert_eq!(
            wav.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("audio/wav")
        );
        let wav = wav.bytes().await.expect("body").to_vec();
        let forbidden = client
            .get(&url)
            .bearer_auth(DEMO_TOKEN)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16();
        (wav, forbidden)
    });
    assert_eq!(forbidden, 403);
    // The caller's tone, about 3 s long.
    assert_caller_tone(&wav, 1, 2.0..4.5);
    // Deleting: not with another number's token; then gone.
    rt.block_on(async {
        let del = |token: &'static str| {
            common::api(&client, url.clone(), token, reqwest::Method::DELETE, None)
        };
        assert_eq!(del(DEMO_TOKEN).await.0, 403);
        assert_eq!(del(OTHER_TOKEN).await.0, 204);
        assert_eq!(
            common::api(&client, url.clone(), OPERATOR, reqwest::Method::GET, None)
                .await
                .0,
            404
        );
    });
    let cdrs = cdrs(&rt, rig.node, dir.path());
    let cdr = cdr_of(&cdrs, &r.wa_call_id);
    assert_eq!(
        cdr.control.as_ref().and_then(|c| c.app.as_deref()),
        Some("other")
    );
}

/// The REST API takes over a live call: DTMF reaches the customer, both sides are recorded
/// on demand (`recording.ready`, a stereo file with the caller on the left); verbs posted to
/// `/v1/calls/{id}/actions` cut the app's pause short and play the menu, then hang up; a
/// wrong verb is refused with its place, and a prompt that is not audio with the reason.
#[test]
fn verbs_posted_to_a_live_call_interrupt_what_it_does() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let handler: Handler = Arc::new(move |path, event| match (path, event["event"].as_str()) {
        ("/demo", Some("call.initiated")) => verbs(json!(["answer", {"pause": {"ms": 20000}}])),
        _ => ok(),
    });
    let mut rig = start(&rt, dir.path(), free_udp_port(), 59_600, handler);
    rig.demo.expect_hz = MENU as f32;
    let http = rig.node.http_addr();
    let app = rig.app.clone();
    let (r, answers) = rt.block_on(async {
        let call = load::user_call(&rig.demo, "4915112345678", Duration::from_secs(10));
        let control = async {
            let initiated = app.wait_for("call.initiated", 1).await;
            let id = initiated[0].json["call_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            app.wait_for("call.answered", 1).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let client = reqwest::Client::new();
            let url = format!("http://{http}/v1/calls/{id}/actions");
            let post = |body: Value| {
                common::api(
                    &client,
                    url.clone(),
                    DEMO_TOKEN,
                    reqwest::Method::POST,
                    Some(body),
                )
            };
            let bad = post(json!({"verbs": ["answer", {"gather": {"max_digits": 65}}]})).await;
            let not_audio =
                post(json!({"play": {"url": format!("{}/prompts/notes.txt", app.base)}})).await;
            let keys = post(json!({"dtmf": {"digits": "42", "to": "customer"}})).await;
            assert_eq!(keys.0, 202, "{keys:?}");
            let bad_keys = post(json!({"dtmf": {"digits": "4x"}})).await;
            assert_eq!(bad_keys.0, 400, "{bad_keys:?}");
            // Both sides recorded on demand for a second and a half.
            let started = post(json!({"recording": "start"})).await;
            assert_eq!(started.0, 202, "{started:?}");
            let again = post(json!({"recording": "start"})).await;
            assert_eq!(again.0, 409, "{again:?}");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let stopped = post(json!({"recording": "stop"})).await;
            assert_eq!(stopped.0, 202, "{stopped:?}");
            let good = post(json!({"verbs": [
                {"play": {"url": format!("{}/prompts/menu.wav", app.base)}},
                {"hangup": {"reason": "done"}},
            ]}))
            .await;
            (bad, not_audio, good)
        };
        tokio::join!(call, control)
    });
    let (bad, not_audio, good) = answers;
    assert_eq!(bad.0, 400, "{bad:?}");
    assert!(
        bad.1
            .to_string()
            .contains("verbs[1].gather.max_digits: must be 1..=64"),
        "{bad:?}"
    );
    assert_eq!(not_audio.0, 400, "{not_audio:?}");
    assert!(
        not_audio.1.to_string().contains("is not audio"),
        "{not_audio:?}"
    );
    assert_eq!(good.0, 202, "{good:?}");
    assert!(r.connected && r.ended_by_business, "{r:?}");
    assert_eq!(r.tones, [MENU], "{r:?}");
    assert_eq!(r.digits_in, "42", "{r:?}");
    // The recording: stereo, the caller's tone on the left (side A), about 1.5 s.
    let ready = rt.block_on(rig.app.wait_for("recording.ready", 1));
    assert_eq!(ready[0].json["channels"], 2, "{:?}", ready[0].json);
    let url = format!(
        "http://{http}{}",
        ready[0].json["url"].as_str().expect("url")
    );
    let wav = rt.block_on(async {
        reqwest::Client::new()
            .get(&url)
            .bearer_auth(DEMO_TOKEN)
            .send()
            .await
            .expect("download")
            .bytes()
            .await
            .expect("body")
            .to_vec()
    });
    assert_caller_tone(&wav, 2, 1.0..2.5);
    let cdrs = cdrs(&rt, rig.node, dir.path());
    let cdr = cdr_of(&cdrs, &r.wa_call_id);
    let control = cdr.control.as_ref().expect("control");
    assert_eq!(control.end.as_deref(), Some("done"), "{control:?}");
}

/// The schema at `pointer` in the OpenAPI document, with the document's components beside
/// it so its `$ref`s resolve.
fn schema_at(doc: &Value, pointer: &str) -> jsonschema::Validator {
    let mut schema = doc
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no schema at {pointer}"))
        .clone();
    if let Value::Object(o) = &mut schema {
        o.insert("components".into(), doc["components"].clone());
        o.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
    }
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{pointer}: {e}"))
}

fn escape(path: &str) -> String {
    path.replace('~', "~0").replace('/', "~1")
}

/// `body` is what the document says `method path` answers with `status`.
fn assert_response(doc: &Value, path: &str, method: &str, status: u16, body: &Value) {
    let pointer = format!(
        "/paths/{}/{method}/responses/{status}/content/application~1json/schema",
        escape(path)
    );
    let validator = schema_at(doc, &pointer);
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {errors:?}\n{body}"
    );
}

/// `body` is the event the document's webhook `name` describes.
fn assert_event(doc: &Value, name: &str, body: &Value) {
    let pointer = format!(
        "/webhooks/{}/post/requestBody/content/application~1json/schema",
        escape(name)
    );
    let validator = schema_at(doc, &pointer);
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "event {name}: {errors:?}\n{body}");
}

/// `/v1/openapi.json` describes the REST API as it answers and the events as the app gets
/// them: real responses (live calls, actions, CDRs, agents, queues, permissions, the
/// do-not-call list, the audit trail, recordings, errors) and real events are validated
/// against it with a JSON Schema validator; every path it lists is served.
#[test]
fn the_openapi_document_describes_real_responses_and_events() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let base: Arc<Mutex<String>> = Default::default();
    let b = base.clone();
    let handler: Handler = Arc::new(move |path, event| {
        let base = b.lock().expect("base").clone();
        match (path, event["event"].as_str()) {
            ("/demo", Some("call.initiated")) => verbs(json!(["answer",
                {"gather": {"timeout_ms": 3000, "action": format!("{base}/menu")}}])),
            ("/menu", _) => verbs(json!([
                {"record": {"beep": false, "max_length_secs": 1, "silence_secs": 0}},
                {"pause": {"ms": 20000}}])),
            _ => ok(),
        }
    });
    let mut rig = start(&rt, dir.path(), free_udp_port(), 59_800, handler);
    *base.lock().expect("base") = rig.app.base.clone();
    rig.demo.dtmf = Some("5".into());
    rig.demo.dtmf_after = Duration::from_millis(500);
    rig.demo.listen.clear();
    let http = rig.node.http_addr();
    let app = rig.app.clone();
    let client = reqwest::Client::new();
    let doc: Value = rt.block_on(async {
        client
            .get(format!("http://{http}/v1/openapi.json"))
            .send()
            .await
            .expect("openapi")
            .json()
            .await
            .expect("JSON")
    });
    assert_eq!(doc["openapi"], "3.1.0");
    let get = |url: String, token: &'static str| {
        let client = client.clone();
        async move { common::api(&client, url, token, reqwest::Method::GET, None).await }
    };
    let (r, live) = rt.block_on(async {
        let call = load::user_call(&rig.demo, "4915112345678", Duration::from_secs(6));
        let probe = async {
            let initiated = app.wait_for("call.initiated", 1).await;
            let id = initiated[0].json["call_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            app.wait_for("recording.ready", 1).await;
            let calls = get(format!("http://{http}/v1/calls"), DEMO_TOKEN).await;
            let one = get(format!("http://{http}/v1/calls/{id}"), DEMO_TOKEN).await;
            let post = |body: Value| {
                common::api(
                    &client,
                    format!("http://{http}/v1/calls/{id}/actions"),
                    DEMO_TOKEN,
                    reqwest::Method::POST,
                    Some(body),
                )
            };
            let bad = post(json!([{"pause": {"ms": 0}}])).await;
            let good = post(json!({"verbs": [{"hangup": {}}]})).await;
            (calls, one, bad, good)
        };
        tokio::join!(call, probe)
    });
    assert!(r.connected, "{r:?}");
    let (calls, one, bad, good) = live;
    assert_eq!(calls.0, 200, "{calls:?}");
    assert_eq!(
        calls.1["calls"].as_array().map(Vec::len),
        Some(1),
        "{calls:?}"
    );
    assert_response(&doc, "/v1/calls", "get", 200, &calls.1);
    assert_response(&doc, "/v1/calls/{id}", "get", 200, &one.1);
    assert_eq!(bad.0, 400, "{bad:?}");
    assert_response(&doc, "/v1/calls/{id}/actions", "post", 400, &bad.1);
    assert_eq!(good.0, 202, "{good:?}");
    assert_response(&doc, "/v1/calls/{id}/actions", "post", 202, &good.1);
    // The events, as the app got them.
    let ended = rt.block_on(app.wait_for("call.ended", 1));
    for name in [
        "call.initiated",
        "call.answered",
        "gather.completed",
        "recording.ready",
    ] {
        let got = app.events(name);
        assert!(!got.is_empty(), "no {name}");
        for g in got {
            assert_event(&doc, name, &g.json);
        }
    }
    assert_event(&doc, "call.ended", &ended[0].json);
    assert_event(&doc, "cdr", &ended[0].json["cdr"]);
    // The rest of the API, with the app's token and the operator's.
    rt.block_on(async {
        let cdrs = get(format!("http://{http}/v1/cdrs?limit=5"), DEMO_TOKEN).await;
        assert_eq!(cdrs.0, 200, "{cdrs:?}");
        assert_response(&doc, "/v1/cdrs", "get", 200, &cdrs.1);
        for (path, url) in [
            ("/v1/agents", "/v1/agents"),
            ("/v1/queues", "/v1/queues"),
            ("/v1/dnc", "/v1/dnc"),
            ("/v1/audit", "/v1/audit?limit=5"),
            (
                "/v1/permissions/{number}/{wa_id}",
                "/v1/permissions/15551112222/4915112345678",
            ),
        ] {
            let got = get(format!("http://{http}{url}"), OPERATOR).await;
            assert_eq!(got.0, 200, "{url}: {got:?}");
            assert_response(&doc, path, "get", 200, &got.1);
        }
        let missing = get(format!("http://{http}/v1/calls/nope"), OPERATOR).await;
        assert_eq!(missing.0, 404);
        assert_response(&doc, "/v1/calls/{id}", "get", 404, &missing.1);
        let theirs = get(
            format!("http://{http}/v1/permissions/15551113333/4915112345678"),
            DEMO_TOKEN,
        )
        .await;
        assert_eq!(theirs.0, 403, "{theirs:?}");
        assert_response(
            &doc,
            "/v1/permissions/{number}/{wa_id}",
            "get",
            403,
            &theirs.1,
        );
        let anonymous = get(format!("http://{http}/v1/cdrs"), "wrong-token").await;
        assert_eq!(anonymous.0, 401);
        assert_response(&doc, "/v1/cdrs", "get", 401, &anonymous.1);
        // Every path the document lists is served: without a token, /v1 answers 401
        // (never 404), the rest answers.
        let paths = doc["paths"].as_object().expect("paths");
        for (path, methods) in paths {
            let url = path
                .replace("{id}", "x")
                .replace("{user}", "x")
                .replace("{number}", "15551112222")
                .replace("{wa_id}", "4915112345678");
            for method in methods.as_object().expect("methods").keys() {
                let m =
                    reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
                let status = client
                    .request(m, format!("http://{http}{url}"))
                    .send()
                    .await
                    .expect("request")
                    .status()
                    .as_u16();
                let public = doc["paths"][path][method]["security"] == json!([]);
                let want: &[u16] = if public { &[200, 503] } else { &[401] };
                assert!(want.contains(&status), "{method} {path}: {status}");
            }
        }
    });
    drop(cdrs(&rt, rig.node, dir.path()));
}

/// An app places a call with `POST /v1/calls {from, to: {whatsapp}}`: refused before
/// anything is dialled without the customer's permission (and with verbs that do not
/// check, or another number's token); with permission the customer is called, and once
/// they answer the app's verbs run: the menu, then the PBX, whose echo the customer hears.
#[test]
fn an_app_places_a_call_with_the_permission_enforced_and_drives_it() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let pbx = free_udp_port();
    let base: Arc<Mutex<String>> = Default::default();
    let b = base.clone();
    let handler: Handler = Arc::new(move |path, event| {
        let base = b.lock().expect("base").clone();
        match (path, event["event"].as_str()) {
            ("/demo", Some("call.initiated")) => verbs(json!([
                {"play": {"url": format!("{base}/prompts/menu.wav")}},
                {"dial": {"route": "pbx"}},
            ])),
            _ => ok(),
        }
    });
    let mut rig = start(&rt, dir.path(), pbx, 60_000, handler);
    *base.lock().expect("base") = rig.app.base.clone();
    rig.demo.listen = vec![MENU as f32, OWN as f32];
    let uas = Uas::start_with("b2bua_uas.xml", "u1", pbx, 1, &["-rtp_echo"]);
    let http = rig.node.http_addr();
    let client = reqwest::Client::new();
    let customer = "4915100000601";
    let (placed, answered) = rt.block_on(async {
        let (_users, mut answered) = answering_users(&rig.demo, 5);
        let place = |token: &'static str, body: Value| {
            common::api(
                &client,
                format!("http://{http}/v1/calls"),
                token,
                reqwest::Method::POST,
                Some(body),
            )
        };
        let to = json!({"whatsapp": customer});
        // Refused, nothing dialled: no permission yet, verbs that do not check, another
        // number's token, two first parties.
        let refused = place(DEMO_TOKEN, json!({"from": NUMBER, "to": to, "app": "demo"})).await;
        assert_eq!(
            (refused.0, refused.1["reason"].clone()),
            (403, json!("no_permission")),
            "{refused:?}"
        );
        let bad = place(
            DEMO_TOKEN,
            json!({"from": NUMBER, "to": to, "verbs": [{"gather": {"max_digits": 0}}]}),
        )
        .await;
        assert_eq!(bad.0, 400, "{bad:?}");
        assert!(
            bad.1.to_string().contains("verbs[0].gather.max_digits"),
            "{bad:?}"
        );
        let theirs = place(OTHER_TOKEN, json!({"from": NUMBER, "to": to})).await;
        assert_eq!(theirs.0, 403, "{theirs:?}");
        let other_app = place(
            DEMO_TOKEN,
            json!({"from": NUMBER, "to": to, "app": "other"}),
        )
        .await;
        assert_eq!(other_app.0, 403, "{other_app:?}");
        let two = place(
            DEMO_TOKEN,
            json!({"from": NUMBER, "to": {"whatsapp": customer, "agent": "alice"}}),
        )
        .await;
        assert_eq!(two.0, 400, "{two:?}");
        assert!(
            rig.graph.recorded().iter().all(|r| r.action.is_none()),
            "nothing was dialled"
        );
        // The customer grants permission; the app's call goes through.
        grant(http, customer).await;
        let placed = place(DEMO_TOKEN, json!({"from": NUMBER, "to": to})).await;
        let answered = tokio::time::timeout(Duration::from_secs(20), answered.recv())
            .await
            .expect("the call ended in time")
            .expect("a call");
        (placed, answered)
    });
    assert_eq!(placed.0, 201, "{placed:?}");
    let call_id = placed.1["call_id"].as_str().expect("call id").to_string();
    let media = answered.media.expect("media");
    assert!(media.connected, "{media:?}");
    assert_eq!(media.tones.first(), Some(&MENU), "{media:?}");
    assert_eq!(media.tones.last(), Some(&OWN), "{media:?}");
    let initiated = rig.app.events("call.initiated");
    assert_eq!(initiated.len(), 1, "{initiated:?}");
    assert_eq!(initiated[0].json["direction"], "business_initiated");
    assert_eq!(initiated[0].json["customer"]["wa_id"], customer);
    assert_eq!(initiated[0].json["call_id"], call_id.as_str());
    let cdrs = cdrs(&rt, rig.node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    let cdr = cdr_by_id(&cdrs, &call_id);
    assert_eq!(cdr.direction, waswitch::store::Direction::BusinessInitiated);
    assert_eq!(
        cdr.outcome,
        waswitch::store::CallOutcome::Answered,
        "{cdr:?}"
    );
    assert_eq!(cdr.trunk.as_deref(), Some("pbx"), "{cdr:?}");
    assert_eq!(
        cdr.control.as_ref().and_then(|c| c.app.as_deref()),
        Some("demo")
    );
}

/// An app bridges two WhatsApp users: it places a call to one (`POST /v1/calls` with the
/// verb `dial {whatsapp}`), and once they answer the switch calls the other, each with
/// their own permission enforced; the two WebRTC legs are bridged and each user hears the
/// other. A user without permission is never called.
#[test]
fn an_app_bridges_two_whatsapp_users_who_both_granted_permission() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = start(
        &rt,
        dir.path(),
        free_udp_port(),
        60_200,
        Arc::new(|_, _| ok()),
    );
    let http = rig.node.http_addr();
    let client = reqwest::Client::new();
    let (first, second, stranger) = ("4915100000701", "4915100000702", "4915100000703");
    let (placed, refused_call, calls) = rt.block_on(async {
        let (_users, mut answered) = answering_users(&rig.demo, 4);
        let api = |method: reqwest::Method, path: String, body: Option<Value>| {
            common::api(
                &client,
                format!("http://{http}{path}"),
                OPERATOR,
                method,
                body,
            )
        };
        for customer in [first, second] {
            grant(http, customer).await;
        }
        // The second user has no permission: the first is called, the dial is refused
        // and the verbs go on (the call ends).
        let refused = api(
            reqwest::Method::POST,
            "/v1/calls".into(),
            Some(
                json!({"from": NUMBER, "to": {"whatsapp": first}, "app": "demo",
                        "verbs": [{"dial": {"whatsapp": stranger}}, {"hangup": {}}]}),
            ),
        )
        .await;
        let refused_call = tokio::time::timeout(Duration::from_secs(20), answered.recv())
            .await
            .expect("in time")
            .expect("a call");
        let placed = api(
            reqwest::Method::POST,
            "/v1/calls".into(),
            Some(
                json!({"from": NUMBER, "to": {"whatsapp": first}, "app": "demo",
                        "verbs": [{"dial": {"whatsapp": second}}]}),
            ),
        )
        .await;
        let calls = next_calls(&mut answered, 2).await;
        ((placed, refused), refused_call, calls)
    });
    let (placed, refused) = placed;
    assert_eq!(refused.0, 201, "{refused:?}");
    assert_eq!(refused.1["status"], "calling_customer");
    assert_eq!(
        stranger_calls(&rig.graph, stranger),
        0,
        "the user without permission was called"
    );
    assert_eq!(refused_call.user, first);
    assert_eq!(placed.0, 201, "{placed:?}");
    let call_id = placed.1["call_id"].as_str().expect("call id").to_string();
    let users: Vec<&str> = calls.iter().map(|c| c.user.as_str()).collect();
    assert!(
        users.contains(&first) && users.contains(&second),
        "{users:?}"
    );
    for call in &calls {
        let media = call.media.as_ref().expect("media");
        // Each hears the other's voice: the switch echoes nothing.
        assert!(media.audio_verified(), "{}: {media:?}", call.user);
    }
    let cdrs = cdrs(&rt, rig.node, dir.path());
    let cdr = cdr_by_id(&cdrs, &call_id);
    assert_eq!(
        cdr.outcome,
        waswitch::store::CallOutcome::Answered,
        "{cdr:?}"
    );
    assert_eq!(
        cdr.trunk.as_deref(),
        Some(format!("whatsapp:{second}").as_str())
    );
    let path = cdr.codec_path.clone().unwrap_or_default();
    assert_eq!(path, "opus pass-through (WebRTC both sides)");
}

/// How many times the sim's Graph API was asked to call `wa_id`.
fn stranger_calls(graph: &SimGraph, wa_id: &str) -> usize {
    graph
        .recorded()
        .iter()
        .filter(|r| r.action.as_deref() == Some("connect") && r.body["to"] == wa_id)
        .count()
}

/// An app's `dial {agent}` rings the agent's registered phone (SIPp, registered with digest
/// over UDP, echoing): the caller hears their own voice back. A dial to an agent whose phone
/// is not registered is a dial nobody answered: the verbs go on.
#[test]
fn a_dial_to_an_agent_rings_their_registered_phone() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let handler: Handler = Arc::new(move |path, event| {
        let customer = event["customer"]["wa_id"].as_str().unwrap_or_default();
        match (path, event["event"].as_str(), customer) {
            ("/demo", Some("call.initiated"), "4915100000801") => {
                verbs(json!(["answer", {"dial": {"agent": "alice"}}]))
            }
            ("/demo", Some("call.initiated"), _) => verbs(json!(["answer",
                {"dial": {"agent": "bob"}}, {"hangup": {"reason": "nobody"}}])),
            _ => ok(),
        }
    });
    let mut rig = start(&rt, dir.path(), free_udp_port(), 60_400, handler);
    rig.demo.listen.clear();
    let (uas, _alice) = alice_phone(&rig.node);
    let (answered, nobody) = rt.block_on(async {
        tokio::join!(
            load::user_call(&rig.demo, "4915100000801", Duration::from_secs(3)),
            load::user_call(&rig.demo, "4915100000802", Duration::from_secs(3)),
        )
    });
    assert_eq!(answered.error, None, "{answered:?}");
    assert!(answered.audio_verified, "{answered:?}");
    assert!(nobody.ended_by_business, "{nobody:?}");
    let cdrs = cdrs(&rt, rig.node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    assert_eq!(counters.get("SuccessfulCall(C)"), Some(&1), "{counters:?}");
    let control = |r: &load::CallResult| {
        cdr_of(&cdrs, &r.wa_call_id)
            .control
            .clone()
            .expect("control")
    };
    assert_eq!(control(&nobody).end.as_deref(), Some("nobody"));
    assert_eq!(control(&answered).end, None, "the agent had the call");
}

/// An app calls a phone first: `POST /v1/calls` to a SIP URI (the trunk found from its
/// host and port) and to a registered agent, each answered by SIPp echoing; once the phone
/// answers, the verbs dial a WhatsApp user (their permission enforced), who hears their
/// own voice through the phone's echo (Opus transcoded to the phone's G.711 and back). The
/// phone network is never a destination; a phone that is not reachable is refused before
/// anything rings.
#[test]
fn an_app_calls_a_phone_first_and_bridges_it_to_a_whatsapp_user() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let pbx = free_udp_port();
    let rig = start(&rt, dir.path(), pbx, 60_600, Arc::new(|_, _| ok()));
    let pbx_uas = Uas::start_with("b2bua_uas.xml", "u1", pbx, 1, &["-rtp_echo"]);
    let (phone_uas, _alice) = alice_phone(&rig.node);
    let http = rig.node.http_addr();
    let client = reqwest::Client::new();
    let (via_trunk, via_agent) = ("4915100000901", "4915100000902");
    let (refusals, placed, calls) = rt.block_on(async {
        let (_users, mut answered) = answering_users(&rig.demo, 4);
        let place = |body: Value| {
            common::api(
                &client,
                format!("http://{http}/v1/calls"),
                DEMO_TOKEN,
                reqwest::Method::POST,
                Some(body),
            )
        };
        let mut refusals = Vec::new();
        for to in [
            json!({"sip": "tel:+14155550100"}),
            json!({"sip": "sip:2001@127.0.0.9:5999"}),
            json!({"sip": "sip:2001@127.0.0.1", "trunk": "nope"}),
            json!({"agent": "bob"}),
        ] {
            let r = place(json!({"from": NUMBER, "to": to, "verbs": [{"hangup": {}}]})).await;
            refusals.push((to, r));
        }
        for customer in [via_trunk, via_agent] {
            grant(http, customer).await;
        }
        let mut placed = Vec::new();
        for (to, customer) in [
            (
                json!({"sip": format!("sip:2001@127.0.0.1:{pbx}")}),
                via_trunk,
            ),
            (json!({"agent": "alice"}), via_agent),
        ] {
            placed.push(
                place(json!({"from": NUMBER, "to": to,
                             "verbs": [{"dial": {"whatsapp": customer}}, {"hangup": {}}]}))
                .await,
            );
        }
        let calls = next_calls(&mut answered, 2).await;
        (refusals, placed, calls)
    });
    let status = |i: usize| (refusals[i].1 .0, refusals[i].1 .1.to_string());
    assert_eq!(status(0).0, 403, "{refusals:?}");
    assert_eq!(refusals[0].1 .1["reason"], "pstn", "{refusals:?}");
    assert_eq!(status(1).0, 400, "{refusals:?}");
    assert!(
        status(1).1.contains("no trunk reaches 127.0.0.9:5999"),
        "{refusals:?}"
    );
    assert_eq!(status(2).0, 400, "{refusals:?}");
    assert!(status(2).1.contains("the trunks are: pbx"), "{refusals:?}");
    assert_eq!(status(3).0, 400, "{refusals:?}");
    assert!(status(3).1.contains("no registered phone"), "{refusals:?}");
    let ids: Vec<String> = placed
        .iter()
        .map(|p| {
            assert_eq!(p.0, 201, "{p:?}");
            p.1["call_id"].as_str().expect("call id").to_string()
        })
        .collect();
    for call in &calls {
        let media = call.media.as_ref().expect("media");
        assert!(media.audio_verified(), "{}: {media:?}", call.user);
        assert_eq!(media.tones.last(), Some(&OWN), "{}: {media:?}", call.user);
    }
    let initiated = rig.app.events("call.initiated");
    assert!(initiated.is_empty(), "verbs were given: {initiated:?}");
    // The app hears of the phone's answer (no customer yet), and of the call's end with
    // the CDR naming the customer it reached.
    let answered = rt.block_on(rig.app.wait_for("call.answered", 2));
    let ended = rt.block_on(rig.app.wait_for("call.ended", 2));
    let event = |events: &[Got], id: &str| {
        events
            .iter()
            .find(|e| e.json["call_id"] == id)
            .unwrap_or_else(|| panic!("no event for {id}: {events:?}"))
            .json
            .clone()
    };
    let first = event(&answered, &ids[0]);
    assert_eq!(
        first["to"],
        json!({"sip": format!("sip:2001@127.0.0.1:{pbx}")})
    );
    assert_eq!(first["customer"], Value::Null, "{first}");
    assert_eq!(event(&answered, &ids[1])["to"], json!({"agent": "alice"}));
    assert_eq!(event(&ended, &ids[1])["cdr"]["customer_wa_id"], via_agent);
    // As the OpenAPI document describes them.
    let doc: Value =
        serde_json::from_str(include_str!("../src/api/openapi.json")).expect("the document");
    assert_event(&doc, "call.answered", &first);
    assert_event(&doc, "call.ended", &event(&ended, &ids[0]));
    assert_response(&doc, "/v1/calls", "post", 201, &placed[0].1);
    assert_response(&doc, "/v1/calls", "post", 403, &refusals[0].1 .1);
    assert_response(&doc, "/v1/calls", "post", 400, &refusals[1].1 .1);
    let cdrs = cdrs(&rt, rig.node, dir.path());
    for (uas, name) in [(pbx_uas, "pbx"), (phone_uas, "phone")] {
        let (code, counters) = uas.finish();
        assert_eq!(code, Some(0), "{name}: {counters:?}");
        assert_eq!(
            counters.get("SuccessfulCall(C)"),
            Some(&1),
            "{name}: {counters:?}"
        );
    }
    for ((id, customer), trunk) in ids
        .iter()
        .zip([via_trunk, via_agent])
        .zip(["pbx", "agent:alice"])
    {
        let cdr = cdr_by_id(&cdrs, id);
        assert_eq!(cdr.direction, waswitch::store::Direction::BusinessInitiated);
        assert_eq!(
            cdr.outcome,
            waswitch::store::CallOutcome::Answered,
            "{cdr:?}"
        );
        assert_eq!(cdr.trunk.as_deref(), Some(trunk), "{cdr:?}");
        assert_eq!(cdr.customer_wa_id.as_deref(), Some(customer), "{cdr:?}");
        assert!(cdr.wa_call_id.is_some(), "{cdr:?}");
        let path = cdr.codec_path.as_deref().unwrap_or_default();
        assert!(path.ends_with("(transcoded)"), "{path}");
    }
}

/// A phone that refuses the call (SIPp answering 486) ends it: the verbs never run, no
/// WhatsApp user is called, and the CDR puts the refusal down to the business side.
#[test]
fn a_phone_that_refuses_a_placed_call_ends_it_before_anyone_is_dialled() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let pbx = free_udp_port();
    let rig = start(&rt, dir.path(), pbx, 60_800, Arc::new(|_, _| ok()));
    let uas = Uas::start_with("b2bua_uas_refuse_486.xml", "u1", pbx, 1, &[]);
    let http = rig.node.http_addr();
    let customer = "4915100000903";
    let placed = rt.block_on(async {
        let client = reqwest::Client::new();
        let (users, answered) = answering_users(&rig.demo, 2);
        grant(http, customer).await;
        let placed = common::api(
            &client,
            format!("http://{http}/v1/calls"),
            DEMO_TOKEN,
            reqwest::Method::POST,
            Some(
                json!({"from": NUMBER, "to": {"sip": format!("sip:2001@127.0.0.1:{pbx}")},
                        "verbs": [{"dial": {"whatsapp": customer}}]}),
            ),
        )
        .await;
        (placed, users, answered)
    });
    let (placed, _users, _answered) = placed;
    assert_eq!(placed.0, 201, "{placed:?}");
    let call_id = placed.1["call_id"].as_str().expect("call id").to_string();
    let ended = rt.block_on(rig.app.wait_for("call.ended", 1));
    assert_eq!(ended[0].json["call_id"], call_id.as_str());
    assert!(rig.app.events("call.answered").is_empty());
    assert_eq!(
        stranger_calls(&rig.graph, customer),
        0,
        "the customer was called"
    );
    let cdrs = cdrs(&rt, rig.node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    let cdr = cdr_by_id(&cdrs, &call_id);
    assert_eq!(
        cdr.outcome,
        waswitch::store::CallOutcome::Unanswered,
        "{cdr:?}"
    );
    assert_eq!(cdr.end_cause, "busy", "{cdr:?}");
    assert_eq!(
        cdr.hangup_by,
        waswitch::store::HangupParty::Business,
        "{cdr:?}"
    );
    assert_eq!(cdr.customer_wa_id, None, "{cdr:?}");
}

/// A native-format bot on plain `ws://` inside the test: it checks `start`, speaks a
/// 1200 Hz tone for `speak`, then asks for a handover with `parameters` and waits to be
/// closed. Returns its URL.
async fn handover_bot(
    speak: Duration,
    parameters: Value,
    started: Arc<Mutex<Option<Value>>>,
) -> String {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}/bot", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        for _ in 0..2 {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if v["event"] == "start" {
                    *started.lock().expect("start") = Some(v);
                }
            }
        }
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for k in 0..(speak.as_millis() / 20) as u64 {
            tick.tick().await;
            let frame: Vec<u8> = (0..320u64)
                .flat_map(|i| {
                    let t = (k * 320 + i) as f64 / 16_000.0;
                    ((9000.0 * (2.0 * std::f64::consts::PI * 1200.0 * t).sin()) as i16)
                        .to_le_bytes()
                })
                .collect();
            if ws.send(Message::Binary(frame.into())).await.is_err() {
                return;
            }
        }
        let handover = json!({"event": "handover", "parameters": parameters});
        let _ = ws.send(Message::Text(handover.to_string().into())).await;
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    });
    url
}

/// An app hands the call to a voice bot with `stream`; when the bot asks for a handover
/// the app hears `stream.ended` (with the bot's parameters, as the OpenAPI document says)
/// at the stream's action, and its answer dials the PBX: the caller hears the bot, then
/// their own voice through the PBX's echo.
#[test]
fn an_app_streams_a_call_to_a_bot_and_takes_it_back_at_the_handover() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let pbx = free_udp_port();
    let started: Arc<Mutex<Option<Value>>> = Default::default();
    let bot = rt.block_on(handover_bot(
        Duration::from_millis(1500),
        json!({"queue": "sales", "summary": "wants a refund"}),
        started.clone(),
    ));
    let base: Arc<Mutex<String>> = Default::default();
    let b = base.clone();
    let handler: Handler = Arc::new(move |path, event| {
        let base = b.lock().expect("base").clone();
        match (path, event["event"].as_str()) {
            ("/demo", Some("call.initiated")) => verbs(json!(["answer",
                {"stream": {
                    "url": bot,
                    "format": "l16",
                    "parameters": {"order": 1234},
                    "action": format!("{base}/after-bot"),
                }},
                {"hangup": {"reason": "bot_did_not_hand_over"}}])),
            ("/after-bot", Some("stream.ended")) if event["reason"] == "handover" => {
                verbs(json!([{"dial": {"route": "pbx"}}]))
            }
            ("/after-bot", _) => verbs(json!(["hangup"])),
            _ => ok(),
        }
    });
    let mut rig = start(&rt, dir.path(), pbx, 64_800, handler);
    *base.lock().expect("base") = rig.app.base.clone();
    let uas = Uas::start_with("b2bua_uas.xml", "u1", pbx, 1, &["-rtp_echo"]);
    rig.demo.listen = vec![1200.0, OWN as f32];
    let r = rt.block_on(load::user_call(
        &rig.demo,
        "4915112345678",
        Duration::from_secs(5),
    ));
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.tones.first(), Some(&1200), "{r:?}");
    assert_eq!(r.tones.last(), Some(&OWN), "{r:?}");
    let start = started
        .lock()
        .expect("start")
        .clone()
        .expect("the bot started");
    assert_eq!(
        start["start"]["customParameters"]["order"], "1234",
        "{start}"
    );
    let ended = rig.app.events("stream.ended");
    assert_eq!(ended.len(), 1, "{ended:?}");
    let got = &ended[0];
    assert_eq!(got.path, "/after-bot");
    assert_signed(got, DEMO_SECRET);
    assert_eq!(got.json["handover"]["queue"], "sales", "{got:?}");
    assert_eq!(
        got.json["stream_sid"], start["start"]["streamSid"],
        "{got:?}"
    );
    let doc: Value = serde_json::from_str(include_str!("../src/api/openapi.json")).expect("doc");
    assert_event(&doc, "stream.ended", &got.json);
    let call_ended = rt.block_on(rig.app.wait_for("call.ended", 1));
    assert_event(&doc, "cdr", &call_ended[0].json["cdr"]);
    let stream = &call_ended[0].json["cdr"]["control"]["streams"][0];
    assert_eq!(stream["end"], "handover", "{stream}");

    let cdrs = cdrs(&rt, rig.node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    let cdr = cdr_of(&cdrs, &r.wa_call_id);
    assert_eq!(cdr.trunk.as_deref(), Some("pbx"), "{cdr:?}");
}
