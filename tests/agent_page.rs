//! The agent page in a real browser: headless Chromium (driven over the DevTools protocol,
//! its microphone a fake device playing a 1 kHz tone) opens `/agent` as Alice, whose JsSIP
//! phone registers over SIP over WebSocket. `waswitch sim` is the WhatsApp customer: its
//! call goes through the IVR to queue `support`, rings the page, which answers; audio is
//! checked both ways (the page's WebAudio analyser hears the customer's 440 Hz, the
//! customer hears the agent's 1 kHz through Opus passed between the two WebRTC legs), the
//! call is hung up from either side, and the CDR names the queue, the agent and the wait.
//!
//! Everything runs inside a network namespace holding only loopback. With
//! `WASWITCH_SCREENSHOTS=<dir>` the page's screenshots (idle, ringing, in call) are saved
//! there (the ones in `docs/` were taken so).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::chromium::{in_loopback_namespace, Chromium};
use serde_json::{json, Value};
use waswitch::config::{Config, Secret};
use waswitch::node::Node;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load;

const SECRET: &str = "page-secret";
const PNID: &str = "105615555715877";
const NUMBER: &str = "15551114444";
const AGENT_HZ: f32 = 1000.0;
/// The comfort tone a waiting or held customer hears (ITU-T E.180 ringback).
const COMFORT_HZ: f32 = 425.0;

/// Builds the page (`npm ci` when its modules are missing, then `npm run build`), outside
/// the namespace (npm needs the registry).
fn build_page() -> PathBuf {
    let web = common::agent::web_agent();
    let ok = std::process::Command::new("npm")
        .args(["run", "build"])
        .current_dir(&web)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("npm");
    assert!(ok.success(), "npm run build in web/agent failed");
    web.join("dist")
}

/// A WAV file of a 1 kHz tone (48 kHz mono, 16-bit) for Chromium's fake microphone.
fn tone_wav(path: &Path) {
    let rate = 48_000u32;
    let samples: Vec<i16> = (0..rate * 4)
        .map(|i| {
            let t = i as f32 / rate as f32;
            (0.4 * 32767.0 * (2.0 * std::f32::consts::PI * AGENT_HZ * t).sin()) as i16
        })
        .collect();
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out).expect("tone file");
}

fn toml(sim: &str, page: &Path, media_ports: u16) -> String {
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/prompts");
    format!(
        r#"
[http]
api_token = "page-token"
agent_page = "{page}"
[media]
ip = "127.0.0.1"
shards = 2
port_min = {media_ports}
port_max = {port_max}
[meta]
graph_url = "http://{sim}"
access_token = "tok"
app_secret = "{SECRET}"
verify_token = "vt"
[[business_number]]
phone_number_id = "{PNID}"
display_number = "{NUMBER}"
country = "DE"
entry = "front"
[[agent]]
user = "alice"
password = "alice-pass"
display_name = "Alice"
queues = ["support"]
[[queue]]
name = "support"
ring_timeout_secs = 15
timeout_secs = 60
wrap_up_secs = 0
[[ivr]]
name = "front"
prompts = "{prompts}"
[[ivr.node]]
name = "main"
[[ivr.node.verb]]
verb = "answer"
[[ivr.node.verb]]
verb = "dial"
queue = "support"
[[ivr.node.verb]]
verb = "hangup"
"#,
        page = page.display(),
        prompts = prompts.display(),
        port_max = media_ports + 198,
    )
}

/// The switch with the sim as Meta, and Chromium (fake microphone: 1 kHz) on the agent
/// page signed in as Alice. Inside the test's network namespace.
struct Rig {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    graph: SimGraph,
    node: Node,
    ctx: waswitch::sim::load::SimContext,
    chromium: Chromium,
}

fn rig(page: &Path, media_ports: u16) -> Rig {
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let wav = dir.path().join("tone.wav");
    tone_wav(&wav);
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let node = rt.block_on(async {
        let sim = graph.serve_loopback().await.expect("sim Graph API");
        let config = Config::loopback(
            &toml(&sim.to_string(), page, media_ports),
            &dir.path().join("p.db"),
        )
        .expect("config");
        Node::start(config).await.expect("node")
    });
    let mut ctx = common::sim_context(&graph, node.http_addr(), SECRET, PNID, NUMBER);
    ctx.expect_hz = AGENT_HZ;
    let mut chromium = Chromium::start_with(&[
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        &format!("--use-file-for-fake-audio-capture={}", wav.display()),
    ]);
    chromium.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 820, "height": 720, "deviceScaleFactor": 1, "mobile": false}),
    );
    Rig {
        rt,
        dir,
        graph,
        node,
        ctx,
        chromium,
    }
}

/// Opens the page as Alice and waits until she is registered and available.
fn open(chromium: &mut Chromium, http: std::net::SocketAddr, autoanswer: bool) {
    chromium.call(
        "Page.navigate",
        json!({"url": format!(
            "http://{http}/agent?user=alice&password=alice-pass&autoanswer={}",
            u8::from(autoanswer)
        )}),
    );
    wait_for(
        chromium,
        "window.waswitchAgent && window.waswitchAgent.registered \
         && window.waswitchAgent.presence === 'available'",
        Duration::from_secs(10),
        "the page registers and the agent is available",
    );
}

/// The page (outside the namespace: npm needs the registry), or `None` inside it.
fn page_for(test: &str) -> Option<PathBuf> {
    let page = if std::env::var_os("WASWITCH_TEST_NETNS").is_none() {
        Some(build_page())
    } else {
        None
    };
    if !in_loopback_namespace(test) {
        return None;
    }
    Some(page.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("web/agent/dist")))
}

/// Polls `script` (an expression) in the page until it is true, or fails after `within`.
fn wait_for(chromium: &mut Chromium, script: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        if chromium.eval(&format!("return !!({script});")) == json!(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: page state {}",
            chromium.eval("return JSON.stringify(window.waswitchAgent);")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn screenshot(chromium: &mut Chromium, name: &str) {
    let Some(dir) = std::env::var_os("WASWITCH_SCREENSHOTS") else {
        return;
    };
    use base64::Engine as _;
    let shot = chromium.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("png data"))
        .expect("base64");
    std::fs::write(Path::new(&dir).join(format!("agent-page-{name}.png")), png)
        .expect("screenshot");
}

/// Customer `wa_id` calls (in the background), carrying the call for `hold`.
fn calls(
    rt: &tokio::runtime::Runtime,
    ctx: &waswitch::sim::load::SimContext,
    wa_id: &str,
    hold: Duration,
) -> tokio::task::JoinHandle<waswitch::sim::load::CallResult> {
    let (ctx, wa_id) = (ctx.clone(), wa_id.to_string());
    rt.spawn(async move { load::user_call(&ctx, &wa_id, hold).await })
}

fn agent_state(chromium: &mut Chromium) -> Value {
    let text = chromium.eval("return JSON.stringify(window.waswitchAgent);");
    serde_json::from_str(text.as_str().unwrap_or("{}")).unwrap_or(Value::Null)
}

#[test]
fn a_queued_whatsapp_call_rings_the_agent_page_with_audio_both_ways() {
    let Some(page) = page_for("a_queued_whatsapp_call_rings_the_agent_page_with_audio_both_ways")
    else {
        return;
    };
    let Rig {
        rt,
        dir,
        graph: _graph,
        node,
        ctx,
        mut chromium,
    } = rig(&page, 57_600);
    let http = node.http_addr();
    open(&mut chromium, http, true);
    screenshot(&mut chromium, "idle");

    // 1. The customer calls; the page answers at once; audio both ways; the customer
    //    hangs up.
    let customer = calls(&rt, &ctx, "4915112345678", Duration::from_secs(6));
    wait_for(
        &mut chromium,
        "window.waswitchAgent.calls.some(c => c.state === 'answered')",
        Duration::from_secs(15),
        "the queued call rings the page, which answers",
    );
    wait_for(
        &mut chromium,
        "window.waswitchAgent.heard && Math.abs(window.waswitchAgent.heard.hz - 440) < 15",
        Duration::from_secs(8),
        "the page hears the customer's 440 Hz",
    );
    screenshot(&mut chromium, "in-call");
    let r = rt.block_on(customer).expect("customer");
    assert_eq!(r.error, None, "{r:?}");
    assert!(
        r.connected && r.audio_verified,
        "the customer hears the agent: {r:?}"
    );
    wait_for(
        &mut chromium,
        "window.waswitchAgent.calls.length === 1 && window.waswitchAgent.calls[0].state === 'ended'",
        Duration::from_secs(5),
        "the customer's hang-up ends the page's call",
    );
    let state = agent_state(&mut chromium);
    assert_eq!(
        state["calls"][0]["remote"],
        json!("+4915112345678"),
        "{state}"
    );
    assert_eq!(state["calls"][0]["queue"], json!("support"), "{state}");

    // 2. The agent presses a key (the customer hears it as an RFC 4733 event), holds
    //    the customer (who hears the comfort tone meanwhile) and resumes, then hangs up
    //    from the page.
    let listening = waswitch::sim::load::SimContext {
        listen: vec![COMFORT_HZ, AGENT_HZ],
        ..ctx.clone()
    };
    let customer = calls(&rt, &listening, "4915187654321", Duration::from_secs(20));
    wait_for(
        &mut chromium,
        "window.waswitchAgent.calls.length === 2 && window.waswitchAgent.calls[1].state === 'answered'",
        Duration::from_secs(15),
        "the second call is answered",
    );
    std::thread::sleep(Duration::from_millis(1500));
    chromium.eval(
        "[...document.querySelectorAll('#dtmf button')].find(b => b.textContent === '5').click(); \
         return true;",
    );
    std::thread::sleep(Duration::from_millis(700));
    chromium.eval("document.getElementById('hold').click(); return true;");
    wait_for(
        &mut chromium,
        "window.waswitchAgent.calls[1].held === true",
        Duration::from_secs(5),
        "the switch answers the page's hold",
    );
    std::thread::sleep(Duration::from_millis(2000));
    chromium.eval("document.getElementById('hold').click(); return true;");
    wait_for(
        &mut chromium,
        "window.waswitchAgent.calls[1].held === false",
        Duration::from_secs(5),
        "the switch answers the page's resume",
    );
    std::thread::sleep(Duration::from_millis(2000));
    chromium.eval("document.getElementById('hangup').click(); return true;");
    let r2 = rt.block_on(customer).expect("customer");
    assert!(r2.connected && r2.audio_verified, "{r2:?}");
    assert!(r2.ended_by_business, "the agent ended the call: {r2:?}");
    assert_eq!(
        r2.digits_in, "5",
        "the agent's key reached the customer: {r2:?}"
    );
    let comfort = r2.tones.iter().rposition(|&t| t == COMFORT_HZ as u32);
    let agent = r2.tones.iter().rposition(|&t| t == AGENT_HZ as u32);
    assert!(
        comfort.is_some() && agent > comfort,
        "on hold the customer heard the comfort tone, then the agent again: {r2:?}"
    );

    // 3. Without auto-answer the call rings on the page until Answer is pressed.
    open(&mut chromium, http, false);
    let customer = calls(&rt, &ctx, "4915100000003", Duration::from_secs(4));
    wait_for(
        &mut chromium,
        "window.waswitchAgent.calls.some(c => c.state === 'ringing') \
         && !document.getElementById('incoming').hidden",
        Duration::from_secs(15),
        "the call card shows",
    );
    let card = chromium.eval(
        "return document.getElementById('in-number').textContent + '|' + \
         document.getElementById('in-queue').textContent;",
    );
    assert_eq!(card, json!("+4915100000003|support"));
    screenshot(&mut chromium, "ringing");
    chromium.eval("document.getElementById('answer').click(); return true;");
    let r3 = rt.block_on(customer).expect("customer");
    assert!(r3.connected && r3.audio_verified, "{r3:?}");
    drop(chromium);

    let cdrs = common::cdrs_after(&rt, node, &dir.path().join("p.db"));
    for r in [&r, &r2, &r3] {
        let cdr = cdrs
            .iter()
            .find(|c| c.wa_call_id.as_deref() == Some(r.wa_call_id.as_str()))
            .unwrap_or_else(|| panic!("no CDR for {}", r.wa_call_id));
        assert!(cdr.answered_at.is_some(), "{cdr:?}");
        let control = cdr.control.as_ref().expect("control record");
        assert_eq!(control.queue.as_deref(), Some("support"), "{control:?}");
        assert_eq!(control.agent.as_deref(), Some("alice"), "{control:?}");
        assert!(control.queue_wait_ms.is_some(), "{control:?}");
    }
    let hung_up_by_agent = cdrs
        .iter()
        .find(|c| c.wa_call_id.as_deref() == Some(r2.wa_call_id.as_str()))
        .expect("cdr");
    assert_eq!(
        hung_up_by_agent.hangup_by.as_str(),
        "business",
        "{hung_up_by_agent:?}"
    );
}

/// The page's "Call customer" box: a customer without permission is refused with the
/// reason and never dialled; "Request permission" reaches the sim as Meta's permission
/// request; once the customer grants it, the call goes through (the sim answers) with
/// audio both ways, and is a business-initiated call from Alice in the CDR.
#[test]
fn the_agent_page_asks_permission_and_calls_a_customer_who_granted_it() {
    use waswitch::sim::users::{Behaviour, CallAnswer, PermissionAnswer, Users};
    let Some(page) = page_for("the_agent_page_asks_permission_and_calls_a_customer_who_granted_it")
    else {
        return;
    };
    let Rig {
        rt,
        dir,
        graph,
        node,
        ctx,
        mut chromium,
    } = rig(&page, 57_800);
    let http = node.http_addr();
    let (_users, mut answered) = {
        let _guard = rt.enter();
        Users::start(
            ctx.clone(),
            Behaviour {
                call: CallAnswer::Accept {
                    after: Duration::from_millis(400),
                    hold: Duration::from_secs(5),
                },
                permission: PermissionAnswer::Grant {
                    lasts: Some(Duration::from_secs(86_400)),
                },
                dtmf: None,
            },
        )
    };
    open(&mut chromium, http, true);
    let check = |chromium: &mut Chromium, wa: &str| {
        chromium.eval(&format!(
            "const f = document.getElementById('outbound-form'); \
             f.wa_id.value = '{wa}'; f.requestSubmit(); return true;"
        ));
    };

    // Without permission: the page says so, and a call forced through is refused.
    let stranger = "4915100000501";
    check(&mut chromium, stranger);
    wait_for(
        &mut chromium,
        "window.waswitchAgent.permission && window.waswitchAgent.permission.may_call === false",
        Duration::from_secs(5),
        "the page shows no permission",
    );
    assert_eq!(
        chromium.eval("return document.getElementById('call').disabled;"),
        json!(true)
    );
    chromium.eval(
        "const b = document.getElementById('call'); b.disabled = false; b.click(); return true;",
    );
    wait_for(
        &mut chromium,
        "(window.waswitchAgent.error || '').startsWith('call refused: 4')",
        Duration::from_secs(5),
        "the switch refuses the call with its reason",
    );
    let refusal = chromium.eval("return window.waswitchAgent.error;");
    assert!(
        refusal.as_str().is_some_and(|r| r.contains("permission")),
        "{refusal}"
    );
    let connects = |graph: &SimGraph| {
        graph
            .recorded()
            .into_iter()
            .filter(|r| r.action.as_deref() == Some("connect"))
            .count()
    };
    assert_eq!(connects(&graph), 0, "nothing was dialled");

    // Request permission: Meta (the sim) gets the request; the customer grants it.
    let customer = "4915100000502";
    check(&mut chromium, customer);
    wait_for(
        &mut chromium,
        "window.waswitchAgent.permission && window.waswitchAgent.permission.wa_id === '4915100000502' \
         && !document.getElementById('request').disabled",
        Duration::from_secs(5),
        "the customer has no permission yet",
    );
    chromium.eval("document.getElementById('request').click(); return true;");
    wait_for(
        &mut chromium,
        "window.waswitchAgent.permissionRequested === '4915100000502'",
        Duration::from_secs(5),
        "the request is sent",
    );
    let asked = graph
        .recorded()
        .into_iter()
        .any(|r| r.endpoint == "messages" && r.body.to_string().contains(customer));
    assert!(
        asked,
        "the sim received the permission request: {:?}",
        graph.recorded()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        check(&mut chromium, customer);
        std::thread::sleep(Duration::from_millis(300));
        if chromium.eval("return !!(window.waswitchAgent.permission && window.waswitchAgent.permission.may_call);")
            == json!(true)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the customer's grant never showed"
        );
    }
    chromium.eval("document.getElementById('call').click(); return true;");
    wait_for(
        &mut chromium,
        "window.waswitchAgent.calls.some(c => c.direction === 'outgoing' && c.state === 'answered')",
        Duration::from_secs(10),
        "the customer answers the page's call",
    );
    wait_for(
        &mut chromium,
        "window.waswitchAgent.heard && Math.abs(window.waswitchAgent.heard.hz - 440) < 15",
        Duration::from_secs(8),
        "the page hears the customer",
    );
    let stats = chromium.eval("return JSON.stringify(await window.waswitchAgent.stats());");
    let stats: Value =
        serde_json::from_str(stats.as_str().unwrap_or("null")).unwrap_or(Value::Null);
    assert!(
        stats["sent"]["packets"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    assert!(
        stats["received"]["packets"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    let call = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), answered.recv()).await })
        .expect("the customer's call ended in time")
        .expect("a call");
    let media = call.media.expect("media");
    assert!(
        media.audio_verified(),
        "the customer hears the agent: {media:?}"
    );
    assert_eq!(connects(&graph), 1);
    wait_for(
        &mut chromium,
        "window.waswitchAgent.calls.every(c => c.state === 'ended')",
        Duration::from_secs(5),
        "the customer's hang-up ends the page's call",
    );
    drop(chromium);
    let cdrs = common::cdrs_after(&rt, node, &dir.path().join("p.db"));
    let cdr = cdrs
        .iter()
        .find(|c| c.customer_wa_id.as_deref() == Some(customer) && c.answered_at.is_some())
        .unwrap_or_else(|| panic!("no answered CDR for {customer}: {cdrs:?}"));
    assert_eq!(cdr.direction.as_str(), "business_initiated", "{cdr:?}");
    assert_eq!(cdr.trunk.as_deref(), Some("agent:alice"), "{cdr:?}");
}

/// A second, independent client: JsSIP under Node (WebRTC from `@roamhq/wrtc`, no
/// browser) registers as Alice, answers a queued WhatsApp call (each side hears the
/// other's tone), then calls a customer who granted permission (the sim answers; audio
/// both ways again).
#[test]
fn jssip_under_node_receives_a_queued_call_and_calls_a_customer() {
    use waswitch::sim::users::{Behaviour, CallAnswer, PermissionAnswer, Users};
    let Some(page) = page_for("jssip_under_node_receives_a_queued_call_and_calls_a_customer")
    else {
        return;
    };
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let node = rt.block_on(async {
        let sim = graph.serve_loopback().await.expect("sim Graph API");
        let config = Config::loopback(
            &toml(&sim.to_string(), &page, 58_000),
            &dir.path().join("p.db"),
        )
        .expect("config");
        Node::start(config).await.expect("node")
    });
    let http = node.http_addr();
    let mut ctx = common::sim_context(&graph, http, SECRET, PNID, NUMBER);
    ctx.expect_hz = AGENT_HZ;
    let (_users, mut answered) = {
        let _guard = rt.enter();
        Users::start(
            ctx.clone(),
            Behaviour {
                call: CallAnswer::Accept {
                    after: Duration::from_millis(300),
                    hold: Duration::from_secs(6),
                },
                permission: PermissionAnswer::Grant {
                    lasts: Some(Duration::from_secs(86_400)),
                },
                dtmf: None,
            },
        )
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/agent/node/phone.js");
    let phone = |args: &[&str]| {
        std::process::Command::new("node")
            .arg(&script)
            .arg(format!("ws://{http}/sip"))
            .args(["alice", "alice-pass"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("node")
    };
    let registered = |rt: &tokio::runtime::Runtime| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, v) = rt.block_on(common::api(
                &reqwest::Client::new(),
                format!("http://{http}/v1/agents/alice"),
                "page-token",
                reqwest::Method::GET,
                None,
            ));
            if status == 200 && v["presence"] == "available" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Node phone never registered: {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let report = |child: std::process::Child| -> Value {
        let out = child.wait_with_output().expect("phone output");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or("").to_string();
        serde_json::from_str(&line).unwrap_or_else(
            |_| json!({ "unparsed": text, "stderr": String::from_utf8_lossy(&out.stderr) }),
        )
    };

    // Receiving: a queued WhatsApp call reaches the Node phone, which answers.
    let receiver = phone(&["answer", "1000", "440", "4000"]);
    registered(&rt);
    let r = rt.block_on(load::user_call(
        &ctx,
        "4915112340001",
        Duration::from_secs(6),
    ));
    let heard = report(receiver);
    assert!(
        r.connected && r.audio_verified,
        "the customer hears the Node phone: {r:?} (the phone: {heard})"
    );
    assert_eq!(heard["answered"], json!(true), "{heard}");
    assert!(
        heard["tone_share"].as_f64().unwrap_or(0.0) > 0.5,
        "the Node phone hears the customer's 440 Hz: {heard}"
    );

    // Placing: the customer granted permission; the Node phone calls them.
    let customer = "4915112340002";
    let (status, v) = rt.block_on(common::api(
        &reqwest::Client::new(),
        format!("http://{http}/v1/permissions/{NUMBER}/{customer}/request"),
        "page-token",
        reqwest::Method::POST,
        Some(json!({"purpose": "Your order"})),
    ));
    assert_eq!(status, 201, "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = rt.block_on(common::api(
            &reqwest::Client::new(),
            format!("http://{http}/v1/permissions/{NUMBER}/{customer}"),
            "page-token",
            reqwest::Method::GET,
            None,
        ));
        if v["status"] == "granted" {
            break;
        }
        assert!(Instant::now() < deadline, "never granted: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let caller = phone(&[
        "call",
        &format!("sip:+{customer}@127.0.0.1"),
        "1000",
        "440",
        "4000",
    ]);
    let call = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), answered.recv()).await })
        .expect("the customer's call ended in time")
        .expect("a call");
    let media = call.media.expect("media");
    assert!(
        media.audio_verified(),
        "the customer hears the Node phone: {media:?}"
    );
    let heard = report(caller);
    assert_eq!(heard["answered"], json!(true), "{heard}");
    assert!(
        heard["tone_share"].as_f64().unwrap_or(0.0) > 0.5,
        "the Node phone hears the customer: {heard}"
    );
    let cdrs = common::cdrs_after(&rt, node, &dir.path().join("p.db"));
    assert!(
        cdrs.iter()
            .any(|c| c.customer_wa_id.as_deref() == Some(customer)
                && c.trunk.as_deref() == Some("agent:alice")
                && c.answered_at.is_some()),
        "{cdrs:?}"
    );
}
