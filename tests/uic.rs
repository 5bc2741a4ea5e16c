//! User-initiated WhatsApp calls delivered to a SIP trunk: `waswitch sim` plays WhatsApp
//! (signed webhooks, its Graph API, users with real WebRTC media) and SIPp plays the PBX
//! (answering with RTP echo, busy, hanging up, ringing until cancelled). Each call is
//! checked on both sides and in its CDR.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{free_udp_port, runtime, Uas};
use waswitch::config::{Config, Secret};
use waswitch::node::Node;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load::{self, SimContext};
use waswitch::sim::webhooks::{self, BusinessRef, Ending, WebhookSender};
use waswitch::store::{CallOutcome, Cdr, Direction, HangupParty};

const SECRET: &str = "uic-secret";
const PNID: &str = "105615555715855";
const NUMBER: &str = "15551112222";
const API_TOKEN: &str = "uic-api-token";

/// The sim's Graph API, and a node whose business number's route tries `trunk_ports` in
/// order (SIPp callees on loopback).
fn sim_and_switch(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    trunk_ports: &[u16],
    media_ports: u16,
) -> (SimGraph, Node, SimContext) {
    sim_and_switch_probing(rt, dir, trunk_ports, media_ports, false)
}

/// [`sim_and_switch`], with the first trunk probed by OPTIONS every second (T1 50 ms, so a
/// probe times out in 3.2 s) when `probe_first`.
fn sim_and_switch_probing(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    trunk_ports: &[u16],
    media_ports: u16,
    probe_first: bool,
) -> (SimGraph, Node, SimContext) {
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let mut trunks = String::new();
    let mut names = Vec::new();
    for (i, port) in trunk_ports.iter().enumerate() {
        let probe = if probe_first && i == 0 { 1 } else { 0 };
        trunks.push_str(&format!(
            "[[trunk]]\nname = \"pbx{i}\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             options_interval_secs = {probe}\ninvite_timeout_ms = 2000\n"
        ));
        names.push(format!("\"pbx{i}\""));
    }
    let sip = if probe_first {
        "[sip]\nt1_ms = 50\n"
    } else {
        ""
    };
    let (node, sim_addr) = rt.block_on(async {
        let sim_addr = graph.serve_loopback().await.expect("sim Graph API");
        let toml = format!(
            "{sip}[http]\napi_token = \"{API_TOKEN}\"\n\
             [media]\nip = \"127.0.0.1\"\nshards = 2\nport_min = {media_ports}\n\
             port_max = {}\n{trunks}\
             [[route]]\nname = \"support\"\ntrunks = [{}]\n\
             [meta]\ngraph_url = \"http://{sim_addr}\"\naccess_token = \"tok\"\n\
             app_secret = \"{SECRET}\"\nverify_token = \"vt\"\n\
             [[business_number]]\nphone_number_id = \"{PNID}\"\ndisplay_number = \"{NUMBER}\"\n\
             country = \"BR\"\nroute = \"support\"\n",
            media_ports + 198,
            names.join(", ")
        );
        let config = Config::loopback(&toml, &dir.join("u.db")).expect("config");
        (Node::start(config).await.expect("node"), sim_addr)
    });
    let _ = sim_addr;
    let ctx = sim_context(&graph, &node);
    (graph, node, ctx)
}

/// The sim's users of the business number, calling `node`.
fn sim_context(graph: &SimGraph, node: &Node) -> SimContext {
    let webhooks = WebhookSender::new(
        &format!("http://{}/webhooks/meta", node.http_addr()),
        Secret::new(SECRET),
        Duration::from_secs(20),
    )
    .expect("sender");
    SimContext::loopback(
        graph.clone(),
        webhooks,
        BusinessRef {
            waba_id: "1".into(),
            phone_number_id: PNID.into(),
            display_number: NUMBER.into(),
        },
    )
}

fn cdrs(rt: &tokio::runtime::Runtime, node: Node, dir: &Path) -> Vec<Cdr> {
    common::cdrs_after(rt, node, &dir.join("u.db"))
}

fn actions(graph: &SimGraph) -> Vec<(String, u16)> {
    graph
        .recorded()
        .into_iter()
        .filter_map(|r| r.action.map(|a| (a, r.status)))
        .collect()
}

/// The names of the Graph API call actions, in order.
fn action_names(graph: &SimGraph) -> Vec<String> {
    actions(graph).into_iter().map(|a| a.0).collect()
}

/// A user's call placed and announced in a signed connect webhook, its media never run
/// (the test drives the call's ending); Meta's call id.
async fn place_call(graph: &SimGraph, ctx: &SimContext, user: &str, name: &str) -> String {
    let (_user, offer) = waswitch::sim::user::SimUser::offer(
        std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"),
    )
    .expect("offer");
    let id = graph.place_user_call(PNID, user, &offer);
    let connect = webhooks::user_call_connect(&ctx.business, &id, user, name, &offer);
    assert!(ctx.webhooks.deliver(&connect).await.delivered());
    id
}

/// The user hangs up: Meta ends the call and sends the terminate webhook.
async fn customer_hangs_up(graph: &SimGraph, ctx: &SimContext, id: &str, user: &str) {
    graph.end_call(id);
    let ending = Ending {
        business_initiated: false,
        user: user.into(),
        talked: None,
        error: None,
        opaque: None,
    };
    let terminate = webhooks::terminate(&ctx.business, id, &ending);
    assert!(ctx.webhooks.deliver(&terminate).await.delivered());
}

/// Waits until the switch pre-accepted call `id` (the PBX rings).
async fn wait_pre_accepted(graph: &SimGraph, id: &str) {
    graph
        .wait_call(id, Duration::from_secs(10), |c| c.answer.is_some())
        .await
        .expect("pre-accepted while ringing");
}

/// One answered call against a callee answering in `scenario` with RTP echo; the user's
/// DTMF crosses to the PBX and comes back in its echo.
fn answered_call(scenario: &str, codec_path: &str, media_ports: u16) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let (graph, node, mut ctx) = sim_and_switch(&rt, dir.path(), &[port], media_ports);
    ctx.dtmf = Some("15#".into());
    let uas = Uas::start_with(scenario, "u1", port, 1, &["-rtp_echo"]);
    let result = rt.block_on(load::user_call(
        &ctx,
        "4915112345678",
        Duration::from_secs(2),
    ));
    assert_eq!(result.error, None, "{result:?}");
    assert!(
        result.accepted && result.connected && result.audio_verified,
        "{result:?}"
    );
    // Telephone-events (126/8000 from WhatsApp, 101 toward the PBX) there and back.
    assert_eq!(result.digits_in, "15#", "{result:?}");
    // Pre-accepted on the PBX's 180, accepted on its 200, with one answer.
    let acts = actions(&graph);
    let names: Vec<&str> = acts.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(names, ["pre_accept", "accept"], "{acts:?}");
    let metrics = rt.block_on(async {
        assert!(node.calls().wait_idle(Duration::from_secs(15)).await);
        common::metrics_text(node.http_addr()).await
    });
    for series in [
        "waswitch_call_setup_seconds_count{direction=\"user_initiated\"} 1",
        "waswitch_call_duration_seconds_count{direction=\"user_initiated\"} 1",
        "waswitch_calls_total{direction=\"user_initiated\",outcome=\"answered\"} 1",
        "waswitch_meta_api_requests_total{action=\"accept\",outcome=\"ok\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    // The time packets spent in the switch was sampled both ways (one in 16 of a leg's
    // packets: a 2 s call relays about 100 each way), each sample a plausible time.
    for direction in ["a_to_b", "b_to_a"] {
        let value = |name: &str| -> f64 {
            let series = format!("waswitch_media_{name}{{direction=\"{direction}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{series} in\n{metrics}"))
        };
        let count = value("latency_added_seconds_count");
        assert!(count >= 3.0, "{direction}: {count} samples");
        let mean = value("latency_added_seconds_sum") / count;
        assert!(mean > 0.0 && mean < 1.0, "{direction}: mean {mean} s");
        assert!(value("delay_variation_seconds_count") >= 2.0, "{direction}");
    }
    let cdrs = cdrs(&rt, node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    assert_eq!(counters.get("SuccessfulCall(C)"), Some(&1), "{counters:?}");
    assert_eq!(cdrs.len(), 1);
    let cdr = &cdrs[0];
    assert_eq!(cdr.direction, Direction::UserInitiated);
    assert_eq!(cdr.outcome, CallOutcome::Answered);
    assert_eq!(cdr.trunk.as_deref(), Some("pbx0"));
    assert_eq!(cdr.hangup_by, HangupParty::Customer);
    assert_eq!(cdr.wa_call_id.as_deref(), Some(result.wa_call_id.as_str()));
    assert_eq!(cdr.customer_wa_id.as_deref(), Some("4915112345678"));
    assert!(
        cdr.ringing_at.is_some() && cdr.answered_at.is_some(),
        "{cdr:?}"
    );
    assert_eq!(cdr.codec_path.as_deref(), Some(codec_path));
    let media = cdr.media.expect("media quality");
    assert!(media.packets >= 100, "{media:?}");
}

#[test]
fn an_answered_call_is_transcoded_to_the_pcmu_pbx_with_audio_both_ways() {
    answered_call("b2bua_uas.xml", "opus <-> PCMU (transcoded)", 46000);
}

#[test]
fn an_answered_call_passes_opus_through_to_an_opus_pbx() {
    answered_call("uic_uas_opus.xml", "opus pass-through", 47200);
}

#[test]
fn a_busy_pbx_rejects_the_whatsapp_call() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let (graph, node, ctx) = sim_and_switch(&rt, dir.path(), &[port], 46200);
    let uas = Uas::start("b2bua_uas_refuse_486.xml", "u1", port, 1);
    let result = rt.block_on(load::user_call(
        &ctx,
        "4915112345678",
        Duration::from_secs(1),
    ));
    assert_eq!(result.error.as_deref(), Some("no_answer"), "{result:?}");
    assert_eq!(actions(&graph), [("reject".to_string(), 200)]);
    let cdrs = cdrs(&rt, node, dir.path());
    let _ = uas.finish();
    assert_eq!(cdrs[0].outcome, CallOutcome::Unanswered, "{:?}", cdrs[0]);
    assert_eq!(cdrs[0].end_cause, "busy");
    assert_eq!(cdrs[0].hangup_by, HangupParty::Business);
}

#[test]
fn a_failing_trunk_is_skipped_for_the_next() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second) = (free_udp_port(), free_udp_port());
    let (graph, node, ctx) = sim_and_switch(&rt, dir.path(), &[first, second], 46400);
    let down = Uas::start("b2bua_uas_refuse_503.xml", "u1", first, 1);
    let up = Uas::start_with("b2bua_uas.xml", "u1", second, 1, &["-rtp_echo"]);
    let result = rt.block_on(load::user_call(
        &ctx,
        "4915112345678",
        Duration::from_secs(1),
    ));
    assert_eq!(result.error, None, "{result:?}");
    assert!(result.audio_verified);
    let names = action_names(&graph);
    assert_eq!(names, ["pre_accept", "accept"]);
    let cdrs = cdrs(&rt, node, dir.path());
    let _ = (down.finish(), up.finish());
    assert_eq!(cdrs[0].trunk.as_deref(), Some("pbx1"));
    assert_eq!(cdrs[0].outcome, CallOutcome::Answered);
}

#[test]
fn the_pbx_hanging_up_terminates_the_whatsapp_call() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let (graph, node, ctx) = sim_and_switch(&rt, dir.path(), &[port], 46600);
    let uas = Uas::start("b2bua_uas_bye.xml", "u1", port, 1);
    let result = rt.block_on(load::user_call(
        &ctx,
        "4915112345678",
        Duration::from_secs(5),
    ));
    assert!(result.accepted && result.ended_by_business, "{result:?}");
    let names = action_names(&graph);
    assert_eq!(names, ["pre_accept", "accept", "terminate"]);
    let cdrs = cdrs(&rt, node, dir.path());
    let (code, _) = uas.finish();
    assert_eq!(code, Some(0));
    assert_eq!(cdrs[0].outcome, CallOutcome::Answered);
    assert_eq!(cdrs[0].hangup_by, HangupParty::Business);
}

/// The customer hangs up while a PBX playing `scenario` rings: the switch settles it with
/// the PBX (SIPp's scenario completes), the call is unanswered and hung up by the
/// customer, and Meta only ever had the pre-accept.
fn customer_hangs_up_while_ringing(scenario: &str, media_ports: u16, user: &str, settled: &str) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let (graph, node, ctx) = sim_and_switch(&rt, dir.path(), &[port], media_ports);
    let uas = Uas::start(scenario, "u1", port, 1);
    rt.block_on(async {
        let id = place_call(&graph, &ctx, user, "Ana").await;
        // The PBX rings: the switch pre-accepts.
        wait_pre_accepted(&graph, &id).await;
        customer_hangs_up(&graph, &ctx, &id, user).await;
    });
    let cdrs = cdrs(&rt, node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{settled}: {counters:?}");
    assert_eq!(cdrs[0].outcome, CallOutcome::Unanswered);
    assert_eq!(cdrs[0].hangup_by, HangupParty::Customer);
    let names = action_names(&graph);
    assert_eq!(names, ["pre_accept"], "never accepted toward Meta");
}

#[test]
fn the_customer_hanging_up_while_it_rings_cancels_the_pbx() {
    customer_hangs_up_while_ringing(
        "b2bua_uas_ring_cancel.xml",
        46800,
        "4915100000001",
        "the PBX saw the CANCEL",
    );
}

#[test]
fn a_pbx_ringing_without_early_media_gives_the_customer_ringback() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let (graph, node, mut ctx) = sim_and_switch(&rt, dir.path(), &[port], 47000);
    let uas = Uas::start("b2bua_uas_ring_cancel.xml", "u1", port, 1);
    // While the PBX rings (180, no SDP), the customer hears 425 Hz ringback, not silence
    // (Meta drops a call without media after 20 s); hanging up cancels the PBX.
    ctx.expect_hz = 425.0;
    let result = rt.block_on(load::user_call(
        &ctx,
        "4915112345678",
        Duration::from_millis(1500),
    ));
    assert!(result.connected && !result.accepted, "{result:?}");
    assert!(result.audio_verified, "ringback heard: {result:?}");
    assert_eq!(result.error.as_deref(), Some("not_accepted"));
    let names = action_names(&graph);
    assert_eq!(names, ["pre_accept"]);
    let cdrs = cdrs(&rt, node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "the PBX was cancelled: {counters:?}");
    assert_eq!(cdrs[0].outcome, CallOutcome::Unanswered);
    assert_eq!(cdrs[0].hangup_by, HangupParty::Customer);
}

#[test]
fn the_rest_api_lists_a_live_call_hangs_it_up_and_finds_its_cdr() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let (graph, node, ctx) = sim_and_switch(&rt, dir.path(), &[port], 47400);
    let uas = Uas::start("b2bua_uas_ring_cancel.xml", "u1", port, 1);
    let base = format!("http://{}", node.http_addr());
    let (_user, offer) = waswitch::sim::user::SimUser::offer(
        std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"),
    )
    .expect("offer");
    let id = graph.place_user_call(PNID, "4915100000007", &offer);
    rt.block_on(async {
        let http = reqwest::Client::new();
        let get = |path: &str, token: Option<&str>| {
            let mut r = http.get(format!("{base}{path}"));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send()
        };
        // No token, a wrong one: 401, with the challenge.
        let r = get("/v1/calls", None).await.expect("answer");
        assert_eq!(r.status().as_u16(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
        assert_eq!(
            get("/v1/calls", Some("guess"))
                .await
                .expect("answer")
                .status()
                .as_u16(),
            401
        );

        let connect =
            webhooks::user_call_connect(&ctx.business, &id, "4915100000007", "Bo", &offer);
        assert!(ctx.webhooks.deliver(&connect).await.delivered());
        graph
            .wait_call(&id, Duration::from_secs(10), |c| c.answer.is_some())
            .await
            .expect("ringing");
        // The pre-accept reaches Meta as the PBX's 180 reaches the call: the call's own
        // record of the ringing may come a moment later.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let live = loop {
            let live: serde_json::Value = get("/v1/calls", Some(API_TOKEN))
                .await
                .expect("answer")
                .json()
                .await
                .expect("json");
            if live["calls"][0]["ringing_at"].is_i64() || tokio::time::Instant::now() > deadline {
                break live;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let calls = live["calls"].as_array().expect("calls");
        assert_eq!(calls.len(), 1, "{live}");
        assert_eq!(calls[0]["offer"]["wa_call_id"], id.as_str());
        assert_eq!(calls[0]["offer"]["direction"], "user_initiated");
        assert!(calls[0]["ringing_at"].is_i64(), "{live}");
        // Read from the registry: each side's state as its leg reported it, no media.
        assert_eq!(calls[0]["business_leg"], "ringing", "{live}");
        assert!(calls[0]["whatsapp_leg"].is_string(), "{live}");
        assert!(calls[0]["media"].is_null(), "{live}");
        let call_id = calls[0]["call_id"].as_str().expect("id").to_string();
        let one = get(&format!("/v1/calls/{call_id}"), Some(API_TOKEN))
            .await
            .expect("answer");
        assert_eq!(one.status().as_u16(), 200);
        assert_eq!(
            get("/v1/calls/nope", Some(API_TOKEN))
                .await
                .expect("answer")
                .status()
                .as_u16(),
            404
        );

        // An operator hangs it up: the PBX is cancelled, Meta gets a reject.
        let deleted = http
            .delete(format!("{base}/v1/calls/{call_id}"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("answer");
        assert_eq!(deleted.status().as_u16(), 204);
        assert!(node.calls().wait_idle(Duration::from_secs(10)).await);
        let again = http
            .delete(format!("{base}/v1/calls/{call_id}"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("answer");
        assert_eq!(again.status().as_u16(), 404);

        // Its CDR, by filter; the CDR writer flushes in batches, so wait for it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let found = loop {
            let r: serde_json::Value = get(
                "/v1/cdrs?direction=user_initiated&outcome=unanswered&limit=10",
                Some(API_TOKEN),
            )
            .await
            .expect("answer")
            .json()
            .await
            .expect("json");
            if r["total"] == 1 {
                break r;
            }
            assert!(tokio::time::Instant::now() < deadline, "no CDR: {r}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let cdr = &found["cdrs"][0];
        assert_eq!(cdr["call_id"], call_id.as_str(), "{found}\n{live}");
        assert_eq!(cdr["end_cause"], "api_hangup");
        assert_eq!(cdr["hangup_by"], "switch");
        let none: serde_json::Value = get("/v1/cdrs?direction=business_initiated", Some(API_TOKEN))
            .await
            .expect("answer")
            .json()
            .await
            .expect("json");
        assert_eq!(none["total"], 0);
        let bad = get("/v1/cdrs?direction=sideways", Some(API_TOKEN))
            .await
            .expect("answer");
        assert_eq!(bad.status().as_u16(), 400);
    });
    // Meta is told on its own task: wait for it, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while actions(&graph).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let names = action_names(&graph);
    assert_eq!(names, ["pre_accept", "reject"]);
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "the PBX was cancelled: {counters:?}");
    rt.block_on(node.drain_and_stop());
}

#[test]
fn a_trunk_failing_its_probes_is_skipped_for_whatsapp_calls() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    // The first trunk takes datagrams and never answers: its OPTIONS probes time out.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    dead.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let dead_port = dead.local_addr().expect("addr").port();
    let port = free_udp_port();
    let (graph, node, ctx) =
        sim_and_switch_probing(&rt, dir.path(), &[dead_port, port], 47600, true);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while node.trunk_health().get("pbx0") != Some(false) {
        assert!(
            std::time::Instant::now() < deadline,
            "trunk never marked down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let uas = Uas::start_with("b2bua_uas.xml", "u1", port, 1, &["-rtp_echo"]);
    let result = rt.block_on(load::user_call(
        &ctx,
        "4915112345678",
        Duration::from_secs(1),
    ));
    assert_eq!(result.error, None, "{result:?}");
    assert!(result.audio_verified);
    let names = action_names(&graph);
    assert_eq!(names, ["pre_accept", "accept"]);
    let mut buf = [0u8; 4096];
    while let Ok((n, _)) = dead.recv_from(&mut buf) {
        assert!(
            buf[..n].starts_with(b"OPTIONS "),
            "only probes reach a trunk that is down: {}",
            String::from_utf8_lossy(&buf[..n.min(60)])
        );
    }
    let cdrs = cdrs(&rt, node, dir.path());
    let _ = uas.finish();
    assert_eq!(cdrs[0].trunk.as_deref(), Some("pbx1"));
}

#[test]
fn the_customer_hanging_up_before_the_pbx_answers_at_all_cancels_it_once_it_does() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let (graph, node, ctx) = sim_and_switch(&rt, dir.path(), &[port], 47800);
    // The PBX says nothing for 1.5 s; the customer gives up meanwhile. The switch can only
    // CANCEL once the PBX has answered provisionally (RFC 3261 §9.1), and does so then.
    let uas = Uas::start("uic_uas_slow_ring_cancel.xml", "u1", port, 1);
    let user = "4915100000012";
    rt.block_on(async {
        let id = place_call(&graph, &ctx, user, "Cy").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        customer_hangs_up(&graph, &ctx, &id, user).await;
    });
    let cdrs = cdrs(&rt, node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(
        code,
        Some(0),
        "the PBX was cancelled once it rang: {counters:?}"
    );
    assert_eq!(cdrs[0].outcome, CallOutcome::Unanswered);
    assert_eq!(cdrs[0].hangup_by, HangupParty::Customer);
    // Nothing was pre-accepted: Meta had only the call, which the customer ended.
    let names = action_names(&graph);
    assert!(
        !names.iter().any(|n| n == "pre_accept" || n == "accept"),
        "{names:?}"
    );
}

#[test]
fn a_pbx_answer_crossing_the_cancel_is_acknowledged_and_hung_up() {
    // The PBX answers anyway (its 200 crosses our CANCEL): the switch acknowledges it and
    // ends it with BYE.
    customer_hangs_up_while_ringing(
        "uic_uas_answer_crosses_cancel.xml",
        48000,
        "4915100000013",
        "ACK and BYE reached the PBX",
    );
}

#[test]
fn a_panic_in_one_calls_sip_leg_ends_it_cleanly_on_both_sides_and_spares_the_other() {
    use waswitch::call::supervisor::ChildRole;
    use waswitch::call::Fault;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let (graph, node, ctx) = sim_and_switch(&rt, dir.path(), &[port], 48400);
    // Both calls answered with RTP echo; each scenario ends with the switch's BYE.
    let uas = Uas::start_with("b2bua_uas.xml", "u1", port, 2, &["-rtp_echo"]);
    let calls = node.calls().clone();
    let (first, second, victim) = rt.block_on(async {
        let inject = async {
            // Once both calls are accepted and carrying audio, one call's SIP leg panics.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while actions(&graph)
                .iter()
                .filter(|(a, _)| a == "accept")
                .count()
                < 2
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "both calls accepted"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let ids = calls.registry().ids();
            assert_eq!(ids.len(), 2, "two live calls");
            assert!(calls.inject_fault(&ids[0], ChildRole::Bridge, Fault::Panic));
            ids[0].to_string()
        };
        tokio::join!(
            load::user_call(&ctx, "4915100000001", Duration::from_secs(5)),
            load::user_call(&ctx, "4915100000002", Duration::from_secs(5)),
            inject,
        )
    });
    let metrics = rt.block_on(async {
        assert!(node.calls().wait_idle(Duration::from_secs(15)).await);
        common::metrics_text(node.http_addr()).await
    });
    assert!(
        metrics.contains("waswitch_actor_failures_total{actor=\"sip_b2bua\"} 1"),
        "{metrics}"
    );
    let cdrs = cdrs(&rt, node, dir.path());
    // The PBX got a BYE for both calls: the failed one's from the bridge's last act.
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    assert_eq!(counters.get("SuccessfulCall(C)"), Some(&2), "{counters:?}");
    assert_eq!(cdrs.len(), 2, "exactly one CDR per call: {cdrs:?}");
    let failed = cdrs
        .iter()
        .find(|c| c.call_id == victim)
        .expect("the failed call's CDR");
    assert_eq!(failed.end_cause, "internal_failure", "{failed:?}");
    assert_eq!(failed.hangup_by, HangupParty::Switch, "{failed:?}");
    let failure = failed.failure.as_deref().unwrap_or_default();
    assert!(
        failure.contains("sip_b2bua failed") && failure.contains("panic injected"),
        "{failed:?}"
    );
    // A call ended by a failure is a failed call, answered or not; it was answered.
    assert_eq!(failed.outcome, CallOutcome::Failed, "{failed:?}");
    assert!(failed.answered_at.is_some(), "{failed:?}");
    let ok = cdrs
        .iter()
        .find(|c| c.call_id != victim)
        .expect("other CDR");
    assert_eq!(ok.end_cause, "normal_clearing", "{ok:?}");
    assert_eq!(ok.hangup_by, HangupParty::Customer, "{ok:?}");
    assert_eq!(ok.failure, None);
    // WhatsApp heard the failed call end (terminate); the other call ran its course with
    // audio both ways.
    let (hit, spared) = if failed.customer_wa_id.as_deref() == Some("4915100000001") {
        (&first, &second)
    } else {
        (&second, &first)
    };
    assert!(hit.accepted && hit.ended_by_business, "{hit:?}");
    assert_eq!(spared.error, None, "{spared:?}");
    assert!(
        spared.audio_verified && !spared.ended_by_business,
        "{spared:?}"
    );
    let terminates = actions(&graph)
        .iter()
        .filter(|(a, _)| a == "terminate")
        .count();
    assert_eq!(terminates, 1, "{:?}", actions(&graph));
}

#[test]
fn a_panic_while_the_pbx_rings_cancels_it_and_its_crossing_answer_is_hung_up() {
    use waswitch::call::supervisor::ChildRole;
    use waswitch::call::Fault;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let (graph, node, ctx) = sim_and_switch(&rt, dir.path(), &[port], 48600);
    // The PBX answers after our CANCEL: its 200 reaches a call that is gone.
    let uas = Uas::start("uic_uas_answer_crosses_cancel.xml", "u1", port, 1);
    rt.block_on(async {
        let id = place_call(&graph, &ctx, "4915100000041", "Ana").await;
        wait_pre_accepted(&graph, &id).await;
        let call = node
            .calls()
            .registry()
            .by_wa_call_id(&id)
            .expect("a live call");
        assert!(node
            .calls()
            .inject_fault(&call, ChildRole::Bridge, Fault::Panic));
    });
    // CANCEL, then ACK and BYE for the crossing 200: the PBX's scenario completes (the
    // switch keeps running meanwhile).
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    let cdrs = cdrs(&rt, node, dir.path());
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].end_cause, "internal_failure", "{:?}", cdrs[0]);
    let names = action_names(&graph);
    assert_eq!(
        names,
        ["pre_accept", "reject"],
        "never accepted toward Meta"
    );
}

/// Meta refuses `pre_accept` (slowly) while the PBX answers: the PBX's 200 crosses the
/// refusal. The customer was never connected, so the call is failed, never answered: the
/// CDR says so consistently (no answer time, no duration, the cause and the failure), the
/// PBX is hung up, and `waswitch_calls_total` counts it as failed.
#[test]
fn a_meta_refusal_crossing_the_pbx_answer_fails_the_call_and_never_counts_it_answered() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let (graph, node, ctx) = sim_and_switch(&rt, dir.path(), &[port], 49_000);
    graph.inject(&[waswitch::sim::graph::Fault {
        status: 400,
        delay: Duration::from_millis(600),
    }]);
    let uas = Uas::start_with("b2bua_uas.xml", "u1", port, 1, &["-rtp_echo"]);
    let result = rt.block_on(load::user_call(
        &ctx,
        "4915112345670",
        Duration::from_secs(1),
    ));
    assert!(!result.connected, "{result:?}");
    let metrics = rt.block_on(async {
        assert!(node.calls().wait_idle(Duration::from_secs(15)).await);
        common::metrics_text(node.http_addr()).await
    });
    for series in [
        "waswitch_calls_total{direction=\"user_initiated\",outcome=\"answered\"} 0",
        "waswitch_calls_total{direction=\"user_initiated\",outcome=\"failed\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    let cdrs = cdrs(&rt, node, dir.path());
    let (_, counters) = uas.finish();
    // The PBX answered, and was hung up.
    assert_eq!(counters.get("SuccessfulCall(C)"), Some(&1), "{counters:?}");
    assert_eq!(cdrs.len(), 1);
    let cdr = &cdrs[0];
    assert_eq!(cdr.outcome, CallOutcome::Failed, "{cdr:?}");
    assert_eq!(cdr.answered_at, None, "{cdr:?}");
    assert_eq!(cdr.duration_ms, 0, "{cdr:?}");
    assert_eq!(cdr.end_cause, "meta_pre_accept_failed", "{cdr:?}");
    assert_eq!(
        cdr.failure.as_deref(),
        Some("the WhatsApp side failed before it connected: meta_pre_accept_failed"),
        "{cdr:?}"
    );
    assert_eq!(cdr.hangup_by, HangupParty::Switch);
}

/// A route with sites: Brazil's (one call at a time), Germany's, and a hub for everyone
/// else and for the overflow. Each site is a SIPp PBX answering with RTP echo.
#[test]
fn customers_reach_their_countrys_site_and_a_full_site_overflows_to_the_next() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (br, de, hub) = (free_udp_port(), free_udp_port(), free_udp_port());
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let node = rt.block_on(async {
        let sim_addr = graph.serve_loopback().await.expect("sim Graph API");
        let media_ports = 55_600;
        let toml = format!(
            "[media]\nip = \"127.0.0.1\"\nshards = 2\nport_min = {media_ports}\nport_max = {}\n\
             [[trunk]]\nname = \"br\"\nuri = \"sip:127.0.0.1:{br}\"\nmax_calls = 1\n\
             options_interval_secs = 0\n\
             [[trunk]]\nname = \"de\"\nuri = \"sip:127.0.0.1:{de}\"\noptions_interval_secs = 0\n\
             [[trunk]]\nname = \"hub\"\nuri = \"sip:127.0.0.1:{hub}\"\noptions_interval_secs = 0\n\
             [[route]]\nname = \"agents\"\n\
             [[route.site]]\nname = \"br\"\ntrunks = [\"br\"]\ncountries = [\"BR\"]\n\
             [[route.site]]\nname = \"de\"\ntrunks = [\"de\"]\ncountries = [\"DE\"]\n\
             [[route.site]]\nname = \"hub\"\ntrunks = [\"hub\"]\npriority = 2\n\
             [meta]\ngraph_url = \"http://{sim_addr}\"\naccess_token = \"tok\"\n\
             app_secret = \"{SECRET}\"\nverify_token = \"vt\"\n\
             [[business_number]]\nphone_number_id = \"{PNID}\"\ndisplay_number = \"{NUMBER}\"\n\
             country = \"BR\"\nroute = \"agents\"\n",
            media_ports + 198,
        );
        let config = Config::loopback(&toml, &dir.path().join("u.db")).expect("config");
        Node::start(config).await.expect("node")
    });
    let ctx = sim_context(&graph, &node);
    let br_pbx = Uas::start_with("b2bua_uas.xml", "u1", br, 1, &["-rtp_echo"]);
    let de_pbx = Uas::start_with("b2bua_uas.xml", "u1", de, 1, &["-rtp_echo"]);
    let hub_pbx = Uas::start_with("b2bua_uas.xml", "u1", hub, 1, &["-rtp_echo"]);
    let (first_br, second_br, german) = rt.block_on(async {
        // Two Brazilian customers at once: the first takes br's only line, the second
        // overflows to the hub; a German customer reaches de.
        let first = load::user_call(&ctx, "5511987654321", Duration::from_secs(3));
        let second = async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            load::user_call(&ctx, "5521998765432", Duration::from_secs(1)).await
        };
        let german = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            load::user_call(&ctx, "4915112345678", Duration::from_secs(1)).await
        };
        tokio::join!(first, second, german)
    });
    for r in [&first_br, &second_br, &german] {
        assert_eq!(r.error, None, "{r:?}");
        assert!(r.connected && r.audio_verified, "{r:?}");
    }
    let cdrs = cdrs(&rt, node, dir.path());
    // Each PBX got exactly its one INVITE and answered it.
    for (site, pbx) in [("br", br_pbx), ("de", de_pbx), ("hub", hub_pbx)] {
        let (code, counters) = pbx.finish();
        assert_eq!(code, Some(0), "{site}: {counters:?}");
        assert_eq!(
            counters.get("SuccessfulCall(C)"),
            Some(&1),
            "{site}: {counters:?}"
        );
    }
    let trunk_of = |wa_id: &str| {
        cdrs.iter()
            .find(|c| c.customer_wa_id.as_deref() == Some(wa_id))
            .and_then(|c| c.trunk.clone())
    };
    assert_eq!(trunk_of("5511987654321").as_deref(), Some("br"));
    assert_eq!(trunk_of("4915112345678").as_deref(), Some("de"));
    assert_eq!(trunk_of("5521998765432").as_deref(), Some("hub"));
}
