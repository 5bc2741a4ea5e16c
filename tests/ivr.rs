//! The IVR front door, end to end: `waswitch sim` plays WhatsApp (signed webhooks, its
//! Graph API, customers with real WebRTC audio who press keys as RFC 4733 events and
//! listen for the tone-coded prompts), two SIPp PBXs with RTP echo play `support` and
//! `sales`. "Press 1 for support, 2 for sales"; nothing or a wrong key reprompts, then
//! support; after hours a closed announcement, a voicemail, a WhatsApp message and a
//! callback request. Each call is checked on the customer's side (the tones heard, in
//! order), at the PBXs, in its CDR, in the audit trail and on the webhook.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{cdr_of, free_udp_port, runtime, Uas};
use waswitch::config::{Config, Secret};
use waswitch::node::Node;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load::{self, SimContext};
use waswitch::store::Cdr;

const SECRET: &str = "ivr-secret";
const PNID: &str = "105615555715855";
const NUMBER: &str = "15551112222";
const API_TOKEN: &str = "ivr-api-token";

/// The prompts' tones (config/examples/prompts), the beep, and the caller's own tone.
const MENU: u32 = 600;
const INVALID: u32 = 700;
const CLOSED: u32 = 800;
const MENU_PT: u32 = 500;
const BEEP: u32 = 1000;
const OWN: u32 = 440;

/// A Wednesday noon and a Sunday 3 a.m. in São Paulo.
const OPEN_AT: &str = "2026-12-09T15:00:00Z";
const CLOSED_AT: &str = "2026-12-06T06:00:00Z";

/// The front door: the IVR of config/examples/ivr-sim.toml with the test's ports, a
/// first-digit timeout of 1.5 s, and the call-control clock at `now` (RFC 3339).
fn ivr_toml(
    support: u16,
    sales: u16,
    media_ports: u16,
    sim: &str,
    hook: &str,
    dir: &Path,
) -> String {
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/prompts");
    format!(
        r#"
[http]
api_token = "{API_TOKEN}"
[media]
ip = "127.0.0.1"
shards = 2
port_min = {media_ports}
port_max = {port_max}
[[trunk]]
name = "support"
uri = "sip:127.0.0.1:{support}"
options_interval_secs = 0
invite_timeout_ms = 2000
[[trunk]]
name = "sales"
uri = "sip:127.0.0.1:{sales}"
options_interval_secs = 0
invite_timeout_ms = 2000
[[route]]
name = "support"
trunks = ["support"]
[[route]]
name = "sales"
trunks = ["sales"]
[meta]
graph_url = "http://{sim}"
access_token = "tok"
app_secret = "{SECRET}"
verify_token = "vt"
[[business_number]]
phone_number_id = "{PNID}"
display_number = "{NUMBER}"
country = "BR"
entry = "front"
[cdr_webhook]
url = "{hook}"
secret = "hook-secret"
timeout_ms = 2000

[[schedule]]
name = "office"
timezone = "America/Sao_Paulo"
hours = [
  {{ day = "MONDAY", open = "0900", close = "1700" }},
  {{ day = "TUESDAY", open = "0900", close = "1700" }},
  {{ day = "WEDNESDAY", open = "0900", close = "1700" }},
  {{ day = "THURSDAY", open = "0900", close = "1700" }},
  {{ day = "FRIDAY", open = "0900", close = "1700" }},
]
holidays = [ {{ date = "2026-12-25", start = "0000", end = "2359" }} ]

[[ivr]]
name = "front"
prompts = "{prompts}"
voicemail_dir = "{voicemail}"
languages = {{ BR = "pt", PT = "pt" }}

[[ivr.node]]
name = "main"
[[ivr.node.verb]]
verb = "branch"
when = "closed"
schedule = "office"
to = "closed"
[[ivr.node.verb]]
verb = "answer"
[[ivr.node.verb]]
verb = "gather"
prompts = ["menu"]
invalid = ["invalid"]
first_digit_timeout_ms = 1500
retries = 2
choices = {{ "1" = "support", "2" = "sales" }}
default = "support"

[[ivr.node]]
name = "support"
[[ivr.node.verb]]
verb = "dial"
route = "support"
[[ivr.node.verb]]
verb = "goto"
node = "closed"

[[ivr.node]]
name = "sales"
[[ivr.node.verb]]
verb = "dial"
route = "sales"
[[ivr.node.verb]]
verb = "goto"
node = "closed"

[[ivr.node]]
name = "closed"
[[ivr.node.verb]]
verb = "answer"
[[ivr.node.verb]]
verb = "play"
prompts = ["closed"]
[[ivr.node.verb]]
verb = "message"
text = "We are closed now. Write to us here and we will answer in the morning."
[[ivr.node.verb]]
verb = "request_callback"
purpose = "We will call you back when we open"
[[ivr.node.verb]]
verb = "record"
max_length_secs = 30
silence_secs = 0
[[ivr.node.verb]]
verb = "hangup"
"#,
        port_max = media_ports + 198,
        prompts = prompts.display(),
        voicemail = dir.join("voicemail").display(),
    )
}

struct Rig {
    graph: SimGraph,
    node: Node,
    ctx: SimContext,
    hooks: common::Posted,
}

/// The sim's Graph API and a node serving the front door, its call-control clock at `at`.
fn start_rig(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    support: u16,
    sales: u16,
    media_ports: u16,
    at: &str,
) -> Rig {
    start_rig_with(rt, dir, support, sales, media_ports, at, |toml| toml)
}

/// [`start_rig`] with the configuration changed by `edit` first.
fn start_rig_with(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    support: u16,
    sales: u16,
    media_ports: u16,
    at: &str,
    edit: impl FnOnce(String) -> String,
) -> Rig {
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let (node, hooks) = rt.block_on(async {
        let sim = graph.serve_loopback().await.expect("sim Graph API");
        let (hook, hooks) = common::webhook_sink(false).await;
        let toml = edit(ivr_toml(
            support,
            sales,
            media_ports,
            &sim.to_string(),
            &hook,
            dir,
        ));
        let mut config = Config::loopback(&toml, &dir.join("ivr.db")).expect("config");
        let target: jiff::Timestamp = at.parse().expect("instant");
        config.clock_offset_ms = target.as_millisecond() - waswitch::clock::now_ms();
        (Node::start(config).await.expect("node"), hooks)
    });
    let mut ctx = common::sim_context(&graph, node.http_addr(), SECRET, PNID, NUMBER);
    ctx.listen = [MENU, INVALID, CLOSED, MENU_PT, BEEP, OWN]
        .iter()
        .map(|&hz| hz as f32)
        .collect();
    Rig {
        graph,
        node,
        ctx,
        hooks,
    }
}

/// Waits for the calls to end, stops the node, and reads the CDRs.
fn cdrs(rt: &tokio::runtime::Runtime, node: Node, dir: &Path) -> Vec<Cdr> {
    common::cdrs_after(rt, node, &dir.join("ivr.db"))
}

/// 1 reaches support and 2 reaches sales (each SIPp PBX gets exactly its INVITE), each
/// caller hears the menu and then their own voice through the agent's echo.
#[test]
fn pressing_1_reaches_support_and_2_reaches_sales_with_audio_through() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (support, sales) = (free_udp_port(), free_udp_port());
    let mut rig = start_rig(&rt, dir.path(), support, sales, 56_000, OPEN_AT);
    let support_pbx = Uas::start_with("b2bua_uas.xml", "u1", support, 1, &["-rtp_echo"]);
    let sales_pbx = Uas::start_with("b2bua_uas.xml", "u1", sales, 1, &["-rtp_echo"]);
    rig.ctx.dtmf_after = Duration::from_millis(700);
    let mut one = rig.ctx.clone();
    one.dtmf = Some("1".into());
    let mut two = rig.ctx.clone();
    two.dtmf = Some("2".into());
    let (r1, r2) = rt.block_on(async {
        tokio::join!(
            load::user_call(&one, "4915112345678", Duration::from_secs(5)),
            load::user_call(&two, "4915187654321", Duration::from_secs(5)),
        )
    });
    for r in [&r1, &r2] {
        assert_eq!(r.error, None, "{r:?}");
        assert!(r.accepted && r.connected && r.audio_verified, "{r:?}");
        // The menu (cut short by the key), then the agent's echo of the caller.
        assert_eq!(r.tones.first(), Some(&MENU), "{r:?}");
        assert_eq!(r.tones.last(), Some(&OWN), "{r:?}");
        assert!(!r.tones.contains(&INVALID), "{r:?}");
    }
    let cdrs = cdrs(&rt, rig.node, dir.path());
    for (name, pbx) in [("support", support_pbx), ("sales", sales_pbx)] {
        let (code, counters) = pbx.finish();
        assert_eq!(code, Some(0), "{name}: {counters:?}");
        assert_eq!(
            counters.get("SuccessfulCall(C)"),
            Some(&1),
            "{name}: {counters:?}"
        );
    }
    for (r, digit, node) in [(&r1, "1", "support"), (&r2, "2", "sales")] {
        let cdr = cdr_of(&cdrs, &r.wa_call_id);
        assert_eq!(cdr.trunk.as_deref(), Some(node), "{cdr:?}");
        assert!(cdr.answered_at.is_some(), "{cdr:?}");
        let control = cdr.control.as_ref().expect("control record");
        assert_eq!(control.ivr, "front");
        assert_eq!(control.ivr_path, ["main", digit, node], "{control:?}");
        assert_eq!(control.digits, [digit], "{control:?}");
        assert_eq!(control.voicemail, None);
    }
}

/// A caller who presses nothing hears the menu three times (the first time and two
/// reprompts), then goes to support; one who presses a wrong key hears that it is not an
/// option before the menu again.
#[test]
fn no_key_reprompts_twice_then_support_and_a_wrong_key_is_told_so() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (support, sales) = (free_udp_port(), free_udp_port());
    let mut rig = start_rig(&rt, dir.path(), support, sales, 56_200, OPEN_AT);
    let support_pbx = Uas::start_with("b2bua_uas.xml", "u1", support, 2, &["-rtp_echo"]);
    rig.ctx.dtmf_after = Duration::from_millis(700);
    let silent = rig.ctx.clone();
    let mut wrong = rig.ctx.clone();
    wrong.dtmf = Some("9".into());
    let (quiet, typo) = rt.block_on(async {
        tokio::join!(
            load::user_call(&silent, "4915112345678", Duration::from_secs(14)),
            load::user_call(&wrong, "4915187654321", Duration::from_secs(12)),
        )
    });
    for r in [&quiet, &typo] {
        assert_eq!(r.error, None, "{r:?}");
        assert!(r.audio_verified, "{r:?}");
    }
    assert_eq!(quiet.tones, [MENU, MENU, MENU, OWN], "{quiet:?}");
    // 9: the invalid prompt, the menu again; then nothing twice more.
    assert_eq!(&typo.tones[..3], [MENU, INVALID, MENU], "{typo:?}");
    assert_eq!(typo.tones.last(), Some(&OWN), "{typo:?}");
    let cdrs = cdrs(&rt, rig.node, dir.path());
    let (code, counters) = support_pbx.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    assert_eq!(counters.get("SuccessfulCall(C)"), Some(&2), "{counters:?}");
    let control = cdr_of(&cdrs, &quiet.wa_call_id)
        .control
        .clone()
        .expect("record");
    assert_eq!(control.ivr_path, ["main", "support"], "{control:?}");
    assert!(control.digits.is_empty(), "{control:?}");
    let control = cdr_of(&cdrs, &typo.wa_call_id)
        .control
        .clone()
        .expect("record");
    assert_eq!(control.ivr_path, ["main", "support"], "{control:?}");
}

/// After hours: the closed announcement, a chat message and a callback request, then
/// the beep and a voicemail of the caller's voice, finalised when they hang up mid-way;
/// the CDR, the audit trail and the signed webhook say so.
#[test]
fn after_hours_a_caller_hears_closed_leaves_a_voicemail_and_gets_a_message_and_a_callback_request()
{
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (support, sales) = (free_udp_port(), free_udp_port());
    let mut rig = start_rig(&rt, dir.path(), support, sales, 56_400, CLOSED_AT);
    // The caller hangs up during the recording; the last thing they heard is the beep.
    rig.ctx.expect_hz = BEEP as f32;
    let customer = "4915112345678";
    let r = rt.block_on(load::user_call(&rig.ctx, customer, Duration::from_secs(5)));
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.tones, [CLOSED, BEEP], "{r:?}");

    // The chat fallback and the permission request reached Meta's Graph API.
    let messages: Vec<_> = rig
        .graph
        .recorded()
        .into_iter()
        .filter(|m| m.endpoint == "messages")
        .collect();
    let text = messages
        .iter()
        .find(|m| m.body["type"] == "text")
        .unwrap_or_else(|| panic!("no text message in {messages:?}"));
    assert_eq!(text.body["to"], customer);
    assert_eq!(text.status, 200, "{text:?}");
    assert!(text.body["text"]["body"]
        .as_str()
        .is_some_and(|b| b.starts_with("We are closed")));
    assert!(
        messages.iter().any(|m| m.body["type"] == "interactive"
            && m.body["interactive"]["type"] == "call_permission_request"),
        "{messages:?}"
    );
    // The request is in the audit trail.
    let trail = rt.block_on(async {
        let http = reqwest::Client::new();
        common::api(
            &http,
            format!("http://{}/v1/audit?wa_id={customer}", rig.node.http_addr()),
            API_TOKEN,
            reqwest::Method::GET,
            None,
        )
        .await
    });
    assert_eq!(trail.0, 200, "{trail:?}");
    assert!(
        trail.1.to_string().contains("\"kind\":\"requested\""),
        "{trail:?}"
    );

    let cdrs = cdrs(&rt, rig.node, dir.path());
    let cdr = cdr_of(&cdrs, &r.wa_call_id);
    assert!(cdr.answered_at.is_some(), "{cdr:?}");
    let control = cdr.control.as_ref().expect("control record");
    assert_eq!(control.ivr_path, ["main", "closed"], "{control:?}");
    assert_eq!((control.messages, control.callback_requests), (1, 1));
    assert_eq!(control.end.as_deref(), Some("caller_hangup"), "{control:?}");
    let file = control.voicemail.clone().expect("a voicemail");
    assert!(
        file.ends_with(".wav") && Path::new(&file).exists(),
        "{file}"
    );

    // The voicemail holds the caller's tone: 8 kHz mono, most of its power at 440 Hz,
    // and about the seconds between the beep and the hangup.
    let wav = std::fs::read(&file).expect("voicemail");
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1, "mono");
    let samples: Vec<f32> = wav[44..]
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    let secs = samples.len() as f32 / 8000.0;
    assert!((1.0..5.0).contains(&secs), "{secs} s");
    let voiced = &samples[samples.len() / 4..samples.len() * 3 / 4];
    let total = voiced.iter().map(|x| x * x).sum::<f32>() / voiced.len() as f32;
    let tone = waswitch::media::quality::tone_power(voiced, OWN as f32, 8000.0);
    assert!(tone / total > 0.5, "440 Hz share {}", tone / total);

    // The signed voicemail.ready event (and the CDR) reached the webhook.
    let got = rig.hooks.lock().expect("hooks").clone();
    let event = got
        .iter()
        .find_map(|(ts, sig, body)| {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            (v["event"] == "voicemail.ready").then(|| (*ts, sig.clone(), body.clone(), v))
        })
        .unwrap_or_else(|| panic!("no voicemail event in {got:?}"));
    let (ts, sig, body, v) = event;
    assert_eq!(v["file"], file.as_str());
    assert_eq!(v["customer_wa_id"], customer);
    let expected = waswitch::store::webhook::signature(b"hook-secret", ts, &body);
    assert_eq!(sig, expected);
}

/// A Brazilian caller hears the Portuguese menu (the prompt set of their country's
/// language), and a holiday is closed even on a weekday.
#[test]
fn a_brazilian_caller_hears_the_portuguese_menu_and_a_holiday_is_closed() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (support, sales) = (free_udp_port(), free_udp_port());
    let mut rig = start_rig(&rt, dir.path(), support, sales, 56_600, OPEN_AT);
    let sales_pbx = Uas::start_with("b2bua_uas.xml", "u1", sales, 1, &["-rtp_echo"]);
    rig.ctx.dtmf = Some("2".into());
    rig.ctx.dtmf_after = Duration::from_millis(700);
    let r = rt.block_on(load::user_call(
        &rig.ctx,
        "5511987654321",
        Duration::from_secs(4),
    ));
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.tones.first(), Some(&MENU_PT), "{r:?}");
    assert_eq!(r.tones.last(), Some(&OWN), "{r:?}");
    let _ = cdrs(&rt, rig.node, dir.path());
    let (code, counters) = sales_pbx.finish();
    assert_eq!(code, Some(0), "{counters:?}");

    // Christmas Day, a Friday, at noon: closed.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut holiday = start_rig(
        &rt,
        dir.path(),
        support,
        sales,
        56_600,
        "2026-12-25T15:00:00Z",
    );
    holiday.ctx.expect_hz = BEEP as f32;
    let r = rt.block_on(load::user_call(
        &holiday.ctx,
        "4915112345678",
        Duration::from_secs(3),
    ));
    assert_eq!(r.tones.first(), Some(&CLOSED), "{r:?}");
    let cdrs = cdrs(&rt, holiday.node, dir.path());
    let control = cdr_of(&cdrs, &r.wa_call_id)
        .control
        .clone()
        .expect("record");
    assert_eq!(control.ivr_path, ["main", "closed"], "{control:?}");
}

/// Support does not answer (nobody listens at its trunk; the INVITE times out): the script
/// goes on to the closed branch and takes a message. A voicemail directory that cannot be
/// written ends the call cleanly, with the cause in its CDR.
#[test]
fn an_unanswered_dial_goes_on_to_voicemail_and_a_recording_that_cannot_be_written_ends_the_call() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (support, sales) = (free_udp_port(), free_udp_port());
    let mut rig = start_rig(&rt, dir.path(), support, sales, 56_800, OPEN_AT);
    rig.ctx.dtmf = Some("1".into());
    rig.ctx.dtmf_after = Duration::from_millis(700);
    rig.ctx.expect_hz = BEEP as f32;
    let r = rt.block_on(load::user_call(
        &rig.ctx,
        "4915112345678",
        Duration::from_secs(7),
    ));
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.tones, [MENU, CLOSED, BEEP], "{r:?}");

    // Once the first call is over (its voicemail final), the voicemail directory becomes
    // a file: the next recording cannot start.
    assert!(rt.block_on(rig.node.calls().wait_idle(Duration::from_secs(20))));
    let voicemail = dir.path().join("voicemail");
    std::fs::remove_dir_all(&voicemail).expect("voicemail dir");
    std::fs::write(&voicemail, b"not a directory").expect("file");
    let r2 = rt.block_on(load::user_call(
        &rig.ctx,
        "4915187654321",
        Duration::from_secs(7),
    ));
    assert!(r2.ended_by_business, "{r2:?}");

    let cdrs = cdrs(&rt, rig.node, dir.path());
    let control = cdr_of(&cdrs, &r.wa_call_id)
        .control
        .clone()
        .expect("record");
    assert_eq!(
        control.ivr_path,
        ["main", "1", "support", "closed"],
        "{control:?}"
    );
    assert!(control.voicemail.is_some(), "{control:?}");
    let failed = cdr_of(&cdrs, &r2.wa_call_id);
    assert_eq!(failed.end_cause, "record_failed", "{failed:?}");
    assert_eq!(failed.hangup_by, waswitch::store::HangupParty::Switch);
    let control = failed.control.clone().expect("record");
    assert_eq!(control.end.as_deref(), Some("record_failed"), "{control:?}");
    assert_eq!(control.voicemail, None);
}

/// `dial` to a SIP URI on a trunk: sales is reached as extension 2001 at the sales trunk
/// (the PBX's INVITE names that user).
#[test]
fn a_dial_to_a_sip_uri_calls_that_user_at_the_trunk() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (support, sales) = (free_udp_port(), free_udp_port());
    let mut rig = start_rig_with(&rt, dir.path(), support, sales, 57_000, OPEN_AT, |toml| {
        toml.replace(
            "verb = \"dial\"\nroute = \"sales\"",
            "verb = \"dial\"\nuri = \"sip:2001@127.0.0.1\"\ntrunk = \"sales\"",
        )
    });
    let log = dir.path().join("sales-messages.log");
    let log_arg = log.display().to_string();
    let sales_pbx = Uas::start_with(
        "b2bua_uas.xml",
        "u1",
        sales,
        1,
        &["-rtp_echo", "-trace_msg", "-message_file", &log_arg],
    );
    rig.ctx.dtmf = Some("2".into());
    rig.ctx.dtmf_after = Duration::from_millis(700);
    let r = rt.block_on(load::user_call(
        &rig.ctx,
        "4915112345678",
        Duration::from_secs(4),
    ));
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.tones.last(), Some(&OWN), "{r:?}");
    let cdrs = cdrs(&rt, rig.node, dir.path());
    let (code, counters) = sales_pbx.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    let messages = std::fs::read_to_string(&log).expect("SIPp's message log");
    assert!(
        messages.contains(&format!("INVITE sip:2001@127.0.0.1:{sales}")),
        "{messages}"
    );
    let cdr = cdr_of(&cdrs, &r.wa_call_id);
    assert_eq!(cdr.trunk.as_deref(), Some("sales"));
    let control = cdr.control.clone().expect("record");
    assert_eq!(control.ivr_path, ["main", "2", "sales"], "{control:?}");
}
