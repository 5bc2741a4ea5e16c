//! Meta's SIP interface: a number with `signaling = "sip"`, `waswitch sim` playing Meta over
//! SIP/TLS (its Record-Route, `X-FB-External-Domain`, `outgoing:wacid…` Call-IDs, SDES-SRTP
//! media) and SIPp playing the PBX. Each call is checked on Meta's side, the PBX's, and in
//! its CDR.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{free_udp_port, runtime, Uas};
use waswitch::config::{Config, Secret};
use waswitch::node::Node;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::meta_sip::{
    Digest, MetaSipClient, MetaSipServer, MetaSipServerConfig, SipAnswer, SipUserCall,
    META_RECORD_ROUTE,
};
use waswitch::sim::users::{Behaviour, CallAnswer, PermissionAnswer, Users};
use waswitch::sim::webhooks;
use waswitch::store::{CallOutcome, Cdr, Direction, HangupParty};

const PNID: &str = "105615555715855";
const NUMBER: &str = "15551112222";
const USER: &str = "5511987654321";
const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls");
const SECRET: &str = "meta-sip-secret";
const PASSWORD: &str = "meta-generated-password";
const API_TOKEN: &str = "meta-sip-token";
const PROMPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples/prompts");

/// A node whose business number is in SIP mode, its calls routed to a PBX at `pbx_port`
/// (which may also call customers from the number); Meta (the sim) may call from loopback,
/// and takes the switch's calls at `proxy`. The Graph API is the sim's `graph` (it carries
/// the number's permission requests, not its calls).
fn switch_with(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    graph: &SimGraph,
    pbx_port: u16,
    media_ports: u16,
    proxy: Option<std::net::SocketAddr>,
    srtp: &str,
) -> Node {
    switch_answering(
        rt,
        dir,
        graph,
        pbx_port,
        media_ports,
        proxy,
        srtp,
        "route = \"support\"",
    )
}

/// [`switch_with`], the number's calls going where `entry` says (`route = ...` or
/// `entry = ...`), with the IVR `front` (a menu prompt, then hang-up) configured.
#[allow(clippy::too_many_arguments)]
fn switch_answering(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    graph: &SimGraph,
    pbx_port: u16,
    media_ports: u16,
    proxy: Option<std::net::SocketAddr>,
    srtp: &str,
    entry: &str,
) -> Node {
    rt.block_on(async {
        let sim_addr = graph.serve_loopback().await.expect("sim Graph API");
        let proxy = proxy.map_or_else(String::new, |p| format!("proxy = \"{p}\"\n"));
        let toml = format!(
            "[http]\napi_token = \"{API_TOKEN}\"\n\
             [sip]\ntransports = [\"udp\", \"tls\"]\n\
             [sip.tls]\ncert = \"{TLS_DIR}/server.pem\"\nkey = \"{TLS_DIR}/server.key\"\n\
             ca = \"{TLS_DIR}/ca.pem\"\n\
             [media]\nip = \"127.0.0.1\"\nshards = 2\nport_min = {media_ports}\n\
             port_max = {}\n\
             [[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:{pbx_port}\"\n\
             accept_from = [\"127.0.0.1/32\"]\nbusiness_calls = true\n\
             options_interval_secs = 0\ninvite_timeout_ms = 2000\n\
             [[route]]\nname = \"support\"\ntrunks = [\"pbx\"]\n\
             [meta]\ngraph_url = \"http://{sim_addr}\"\naccess_token = \"tok\"\n\
             app_secret = \"{SECRET}\"\nverify_token = \"vt\"\n\
             [meta.sip]\nhostname = \"localhost\"\nallow_from = [\"127.0.0.0/8\"]\n{proxy}\
             [[business_number]]\nphone_number_id = \"{PNID}\"\ndisplay_number = \"{NUMBER}\"\n\
             country = \"BR\"\n{entry}\nsignaling = \"sip\"\n\
             sip_password = \"{PASSWORD}\"\nsrtp = \"{srtp}\"\n\
             [[ivr]]\nname = \"front\"\nprompts = \"{PROMPTS}\"\nlanguage = \"en\"\n\
             [[ivr.node]]\nname = \"main\"\n\
             [[ivr.node.verb]]\nverb = \"answer\"\n\
             [[ivr.node.verb]]\nverb = \"play\"\nprompts = [\"menu\"]\n\
             [[ivr.node.verb]]\nverb = \"hangup\"\n",
            media_ports + 98,
        );
        let config = Config::loopback(&toml, &dir.join("m.db")).expect("config");
        Node::start(config).await.expect("node")
    })
}

fn switch(rt: &tokio::runtime::Runtime, dir: &Path, pbx_port: u16, media_ports: u16) -> Node {
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    switch_with(rt, dir, &graph, pbx_port, media_ports, None, "sdes")
}

/// Meta, calling the node's TLS listener as `localhost` (the test certificate covers it).
fn meta(node: &Node) -> MetaSipClient {
    let connector = waswitch::sim::meta_sip::connector(&Path::new(TLS_DIR).join("ca.pem"))
        .expect("the test CA loads");
    MetaSipClient::new(
        connector,
        "localhost",
        node.sip_tls_addr().expect("TLS listener"),
    )
}

fn user_call(hold: Option<Duration>) -> SipUserCall {
    SipUserCall {
        business: NUMBER.into(),
        user: USER.into(),
        user_params: vec![
            ("tgrp".into(), "wacall".into()),
            ("trunk-context".into(), "byoc.example.com".into()),
        ],
        hold,
        send_hz: 1000.0,
        expect_hz: 1000.0,
        crypto: None,
        cancel_after: None,
        dtls: false,
    }
}

fn cdrs(rt: &tokio::runtime::Runtime, node: Node, dir: &Path) -> Vec<Cdr> {
    common::cdrs_after(rt, node, &dir.join("m.db"))
}

#[test]
fn a_customers_call_over_sip_with_sdes_reaches_the_pbx_with_audio_both_ways() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let node = switch(&rt, dir.path(), port, 63_000);
    let uas = Uas::start_with("b2bua_uas.xml", "u1", port, 1, &["-rtp_echo"]);
    let report = rt
        .block_on(meta(&node).user_call(&user_call(Some(Duration::from_secs(3)))))
        .expect("the call runs");
    assert_eq!(report.status, 200, "{report:?}");
    assert!(report.record_route_kept, "{report:?}");
    let heard = report.user.clone().expect("media ran");
    assert!(heard.audio_verified(), "{heard:?}");
    assert_eq!(report.ended_by, "meta");
    assert!(report.bye_answered, "{report:?}");
    assert!(report.other_requests.is_empty(), "{report:?}");
    rt.block_on(async { assert!(node.calls().wait_idle(Duration::from_secs(15)).await) });
    let cdrs = cdrs(&rt, node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    assert_eq!(cdrs.len(), 1);
    let cdr = &cdrs[0];
    assert_eq!(cdr.direction, Direction::UserInitiated);
    assert_eq!(cdr.outcome, CallOutcome::Answered);
    assert_eq!(cdr.hangup_by, HangupParty::Customer);
    assert_eq!(cdr.wa_call_id.as_deref(), Some(report.wa_call_id.as_str()));
    assert_eq!(cdr.customer_wa_id.as_deref(), Some(USER));
    assert_eq!(cdr.business_number.as_deref(), Some(NUMBER));
    let path = cdr.codec_path.as_deref().unwrap_or_default();
    assert!(path.contains("opus") && path.contains("PCMU"), "{path}");
}

#[test]
fn a_customers_call_over_sip_with_webrtc_media_reaches_the_pbx_with_audio_both_ways() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let node = switch(&rt, dir.path(), port, 63_500);
    let uas = Uas::start_with("b2bua_uas.xml", "u1", port, 1, &["-rtp_echo"]);
    let mut call = user_call(Some(Duration::from_secs(3)));
    call.dtls = true;
    let report = rt
        .block_on(meta(&node).user_call(&call))
        .expect("the call runs");
    assert_eq!(report.status, 200, "{report:?}");
    assert!(report.record_route_kept, "{report:?}");
    let heard = report.user.clone().expect("media ran");
    assert!(heard.audio_verified(), "{heard:?}");
    rt.block_on(async { assert!(node.calls().wait_idle(Duration::from_secs(15)).await) });
    let cdrs = cdrs(&rt, node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    assert_eq!(cdrs[0].outcome, CallOutcome::Answered);
    assert_eq!(cdrs[0].hangup_by, HangupParty::Customer);
}

#[test]
fn the_customer_hanging_up_while_the_pbx_rings_cancels_both_sides() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let node = switch(&rt, dir.path(), port, 63_800);
    let uas = Uas::start("b2bua_uas_ring_cancel.xml", "u1", port, 1);
    let mut call = user_call(None);
    call.cancel_after = Some(Duration::from_millis(1500));
    let report = rt
        .block_on(meta(&node).user_call(&call))
        .expect("the call runs");
    assert_eq!(report.status, 487, "{report:?}");
    assert!(report.user.is_none());
    rt.block_on(async { assert!(node.calls().wait_idle(Duration::from_secs(15)).await) });
    let cdrs = cdrs(&rt, node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "the PBX was cancelled: {counters:?}");
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].outcome, CallOutcome::Unanswered, "{cdrs:?}");
    assert_eq!(cdrs[0].hangup_by, HangupParty::Customer);
}

#[test]
fn a_customers_call_over_sip_is_answered_by_an_ivr_with_its_prompt_then_hung_up() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let node = switch_answering(
        &rt,
        dir.path(),
        &graph,
        free_udp_port(),
        63_900,
        None,
        "sdes",
        "entry = \"front\"",
    );
    let mut call = user_call(None);
    // A caller from the US hears the English menu: 600 Hz for 2 s.
    call.user = "12025550123".into();
    call.expect_hz = 600.0;
    let report = rt
        .block_on(meta(&node).user_call(&call))
        .expect("the call runs");
    assert_eq!(report.status, 200, "{report:?}");
    assert_eq!(report.ended_by, "business", "{report:?}");
    assert_eq!(report.bye_routes, META_RECORD_ROUTE.map(String::from));
    let heard = report.user.clone().expect("media ran");
    assert!(heard.audio_verified(), "the menu prompt: {heard:?}");
    rt.block_on(async { assert!(node.calls().wait_idle(Duration::from_secs(15)).await) });
    let cdrs = cdrs(&rt, node, dir.path());
    assert_eq!(cdrs[0].outcome, CallOutcome::Answered, "{cdrs:?}");
    assert_eq!(cdrs[0].hangup_by, HangupParty::Business, "{cdrs:?}");
}

#[test]
fn the_pbx_holding_and_hanging_up_sends_meta_nothing_but_a_bye_along_its_record_route() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let node = switch(&rt, dir.path(), port, 63_100);
    // The PBX holds the call and takes it back, then the business hangs up (the API).
    let uas = Uas::start_with("uic_uas_hold.xml", "u1", port, 1, &["-rtp_echo"]);
    let meta = meta(&node);
    let call = rt.spawn(async move { meta.user_call(&user_call(None)).await });
    rt.block_on(async {
        // Hold and resume take a second after the answer.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let calls = node.calls().ids();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert!(
            node.calls()
                .hangup(&calls[0], HangupParty::Business, "business hangs up")
                .await
        );
    });
    let report = rt.block_on(call).expect("joined").expect("the call runs");
    assert_eq!(report.status, 200, "{report:?}");
    assert_eq!(report.ended_by, "business", "{report:?}");
    assert_eq!(
        report.bye_routes,
        META_RECORD_ROUTE.map(String::from),
        "{report:?}"
    );
    assert!(
        report.other_requests.is_empty(),
        "no re-INVITE reaches Meta: {report:?}"
    );
    rt.block_on(async { assert!(node.calls().wait_idle(Duration::from_secs(15)).await) });
    let cdrs = cdrs(&rt, node, dir.path());
    let (code, counters) = uas.finish();
    assert_eq!(
        code,
        Some(0),
        "the PBX's hold and resume were answered: {counters:?}"
    );
    assert_eq!(cdrs[0].outcome, CallOutcome::Answered);
}

#[test]
fn meta_calling_a_number_not_in_sip_mode_or_without_usable_crypto_is_refused() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let node = switch(&rt, dir.path(), port, 63_200);
    let meta = meta(&node);
    let mut unknown = user_call(Some(Duration::from_secs(1)));
    unknown.business = "15550009999".into();
    let report = rt.block_on(meta.user_call(&unknown)).expect("answered");
    assert_eq!(report.status, 404, "{report:?}");
    let mut keyless = user_call(Some(Duration::from_secs(1)));
    keyless.crypto = Some("1 AES_256_CM_HMAC_SHA1_80 inline:notakeyatall".into());
    let report = rt.block_on(meta.user_call(&keyless)).expect("answered");
    assert_eq!(report.status, 488, "{report:?}");
    rt.block_on(async { assert!(node.calls().wait_idle(Duration::from_secs(5)).await) });
    drop(node);
}

/// The sim as Meta's SIP proxy for the number: its password, `digest` challenges, users
/// answering as `answer` says, permissions as `graph` holds them.
fn meta_server(
    rt: &tokio::runtime::Runtime,
    graph: &SimGraph,
    digest: Digest,
    answer: SipAnswer,
) -> MetaSipServer {
    rt.block_on(MetaSipServer::start(
        "127.0.0.1:0".parse().expect("address"),
        &Path::new(TLS_DIR).join("server.pem"),
        &Path::new(TLS_DIR).join("server.key"),
        MetaSipServerConfig {
            hostname: "localhost".into(),
            numbers: vec![(NUMBER.into(), PNID.into(), PASSWORD.into())],
            digest,
            answer,
            graph: graph.clone(),
        },
    ))
    .expect("Meta's SIP side")
}

/// The sim's users, who grant permission requests (their calls come over SIP).
fn granting_users(ctx: waswitch::sim::load::SimContext, lasts: Option<Duration>) -> Users {
    Users::start(
        ctx,
        Behaviour {
            call: CallAnswer::Reject {
                after: Duration::from_millis(100),
            },
            permission: PermissionAnswer::Grant { lasts },
            dtmf: None,
        },
    )
    .0
}

/// Asks `customer` for permission through the API (the sim's user grants it for a day) and
/// waits until the switch has it.
async fn granted(node: &Node, customer: &str) {
    let http = reqwest::Client::new();
    let base = format!("http://{}", node.http_addr());
    let response = http
        .post(format!("{base}/v1/permissions/{NUMBER}/{customer}/request"))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({"purpose": "About your order ON-12853"}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 201);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let view: serde_json::Value = http
            .get(format!("{base}/v1/permissions/{NUMBER}/{customer}"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("view")
            .json()
            .await
            .expect("json");
        if view["status"] == "granted" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never granted: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The PBX (SIPp) calls `customer` from the business number with `scenario`: SIPp's exit
/// code, counters and output.
async fn pbx_dials(
    target: std::net::SocketAddr,
    scenario: &'static str,
    customer: &str,
) -> (i32, std::collections::HashMap<String, u64>, String) {
    let customer = customer.to_string();
    tokio::task::spawn_blocking(move || {
        common::run_sipp_with(
            scenario,
            "u1",
            target,
            1,
            10,
            &["-key", "biz", NUMBER, "-s", &customer, "-rtp_echo"],
        )
    })
    .await
    .expect("sipp")
}

/// A business-initiated call over SIP: the PBX calls a customer who granted permission;
/// the switch answers Meta's digest challenge (`digest`) with the number's password, the
/// customer answers and talks, and hangs up. A customer without a grant is refused by the
/// switch itself: Meta never sees that INVITE.
fn business_call_over_sip(
    digest: Digest,
    srtp: &str,
    media_ports: u16,
    customer: &str,
    stranger: &str,
) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let server = meta_server(
        &rt,
        &graph,
        digest,
        SipAnswer::Accept {
            after: Duration::from_millis(1500),
            hold: Duration::from_secs(3),
        },
    );
    let node = switch_with(
        &rt,
        dir.path(),
        &graph,
        free_udp_port(),
        media_ports,
        Some(server.addr()),
        srtp,
    );
    let ctx = common::sim_context(&graph, node.http_addr(), SECRET, PNID, NUMBER);
    let _users = rt.block_on(async {
        let users = granting_users(ctx.clone(), Some(Duration::from_secs(86_400)));
        granted(&node, customer).await;
        users
    });
    let wacid = format!("wacid.SIP{customer}");
    let (code, counters, log) = rt.block_on(async {
        let dial = tokio::spawn({
            let target = node.sip_udp_addr().expect("SIP over UDP");
            let customer = customer.to_string();
            async move { pbx_dials(target, "bic_uac_wait_bye.xml", &customer).await }
        });
        // While the customer's phone rings, Meta's SIP-mode webhook names the call.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !server.calls().iter().any(|c| c.authorised_with.is_some()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no INVITE reached Meta"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let created = webhooks::call_created(&ctx.business, &wacid, NUMBER, customer, true);
        assert!(ctx.webhooks.deliver(&created).await.delivered());
        dial.await.expect("sipp")
    });
    common::assert_all_succeeded(code, &counters, &log, 1);
    let calls = rt.block_on(server.wait_calls(1, Duration::from_secs(20)));
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call.user, customer);
    assert_eq!(call.from_host, "localhost");
    assert_eq!(call.authorised_with, Some(digest), "{call:?}");
    assert_eq!(call.status, 200, "{call:?}");
    assert_eq!(call.ended_by, "meta", "{call:?}");
    assert!(call.other_requests.is_empty(), "{call:?}");
    let heard = call.user_report.clone().expect("media ran");
    assert!(heard.audio_verified(), "{heard:?}");

    // No grant: the switch refuses, and Meta is never asked.
    let target = node.sip_udp_addr().expect("SIP over UDP");
    let (code, counters, log) = rt.block_on(pbx_dials(target, "bic_uac_refused.xml", stranger));
    common::assert_all_succeeded(code, &counters, &log, 1);
    assert!(log.contains("403"), "{log}");
    assert_eq!(server.calls().len(), 1, "{:?}", server.calls());

    rt.block_on(async { assert!(node.calls().wait_idle(Duration::from_secs(15)).await) });
    let cdrs = cdrs(&rt, node, dir.path());
    let answered: Vec<&Cdr> = cdrs
        .iter()
        .filter(|c| c.outcome == CallOutcome::Answered)
        .collect();
    assert_eq!(answered.len(), 1, "{cdrs:?}");
    assert_eq!(answered[0].direction, Direction::BusinessInitiated);
    assert_eq!(answered[0].customer_wa_id.as_deref(), Some(customer));
    assert_eq!(answered[0].hangup_by, HangupParty::Customer);
    assert_eq!(answered[0].wa_call_id.as_deref(), Some(wacid.as_str()));
}

#[test]
fn a_pbx_calls_a_customer_over_sip_answering_metas_md5_challenge() {
    business_call_over_sip(
        Digest::Md5,
        "sdes",
        63_300,
        "4915100000201",
        "4915100000202",
    );
}

#[test]
fn a_pbx_calls_a_customer_over_sip_answering_metas_sha256_challenge() {
    business_call_over_sip(
        Digest::Sha256,
        "sdes",
        63_400,
        "4915100000301",
        "4915100000302",
    );
}

#[test]
fn a_pbx_calls_a_customer_over_sip_with_webrtc_media() {
    business_call_over_sip(
        Digest::Md5,
        "dtls",
        63_700,
        "4915100000501",
        "4915100000502",
    );
}

/// SDES-SRTP through the media plane against an independent implementation: baresip
/// (`mediaenc=srtp-mand`, over TLS) stands where Meta's proxy and the customer's phone are.
/// The PBX calls a customer who granted permission; the switch's INVITE offers its
/// `a=crypto` keys and baresip answers with its own. baresip's 1 kHz tone crosses the
/// switch (decrypted in its shard) to the PBX, whose echo comes back (encrypted in the
/// shard) to baresip, which records what it decoded.
#[test]
fn sdes_media_through_the_switch_interoperates_with_baresip() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("baresip's directory");
    let certificate = work.path().join("certificate.pem");
    let pem = |name: &str| std::fs::read_to_string(Path::new(TLS_DIR).join(name)).expect("pem");
    std::fs::write(&certificate, pem("server.pem") + &pem("server.key")).expect("certificate");
    let port = free_udp_port();
    let (mut baresip, log_path) = common::start_baresip_with(
        work.path(),
        port,
        "10200-10299",
        &["srtp.so"],
        "+4915100000401",
        ";audio_codecs=PCMU;mediaenc=srtp-mand",
        &format!("sip_certificate {}\n", certificate.display()),
    );
    let baresip_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let tls: std::net::SocketAddr = format!("127.0.0.1:{}", port + 1).parse().expect("address");
    let node = switch_with(
        &rt,
        dir.path(),
        &graph,
        free_udp_port(),
        63_600,
        Some(tls),
        "sdes",
    );
    let ctx = common::sim_context(&graph, node.http_addr(), SECRET, PNID, NUMBER);
    let customer = "4915100000401";
    let (code, counters, log) = rt.block_on(async {
        let _users = granting_users(ctx.clone(), None);
        granted(&node, customer).await;
        let target = node.sip_udp_addr().expect("SIP over UDP");
        let dial = tokio::spawn(pbx_dials(target, "bic_uac_wait_bye.xml", customer));
        // Three seconds of audio once baresip answered, then the business hangs up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let answered = loop {
            let ids = node.calls().ids();
            if let Some(id) = ids.first() {
                let snapshot = node.calls().snapshot(id).await;
                if snapshot.is_some_and(|s| s.answered_at.is_some()) {
                    break id.clone();
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "baresip never answered:\n{}",
                baresip_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            node.calls()
                .hangup(&answered, HangupParty::Business, "test over")
                .await
        );
        dial.await.expect("sipp")
    });
    common::assert_all_succeeded(code, &counters, &log, 1);
    rt.block_on(async { assert!(node.calls().wait_idle(Duration::from_secs(15)).await) });
    std::thread::sleep(Duration::from_millis(500));
    baresip.stop();
    let recording = common::baresip_recording(work.path())
        .unwrap_or_else(|| panic!("baresip's recording of what it decoded:\n{}", baresip_log()));
    let (samples, rate) = common::read_wav(&recording);
    assert!(
        samples.len() as f32 >= rate * 2.0,
        "{} samples:\n{}",
        samples.len(),
        baresip_log()
    );
    let tail = &samples[samples.len() / 4..];
    let (p1000, p600) = (
        waswitch::media::quality::tone_power(tail, 1000.0, rate),
        waswitch::media::quality::tone_power(tail, 600.0, rate),
    );
    assert!(
        p1000 > 1e-4 && p1000 > 20.0 * p600,
        "baresip's own tone, echoed by the PBX through the switch: {p1000} vs {p600}\n{}",
        baresip_log()
    );
    let cdrs = cdrs(&rt, node, dir.path());
    assert_eq!(cdrs[0].outcome, CallOutcome::Answered, "{cdrs:?}");
    let media = cdrs[0].media.expect("media quality");
    assert!(media.packets >= 100, "{media:?}");
}

/// The PBX hangs up while the customer's phone rings: the switch CANCELs its INVITE to
/// Meta (Meta answers 487), and the call ends unanswered.
#[test]
fn a_pbx_hanging_up_while_the_customer_rings_cancels_metas_call() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let server = meta_server(
        &rt,
        &graph,
        Digest::Md5,
        SipAnswer::Accept {
            after: Duration::from_secs(10),
            hold: Duration::from_secs(1),
        },
    );
    let node = switch_with(
        &rt,
        dir.path(),
        &graph,
        free_udp_port(),
        64_000,
        Some(server.addr()),
        "sdes",
    );
    let ctx = common::sim_context(&graph, node.http_addr(), SECRET, PNID, NUMBER);
    let customer = "4915100000601";
    let (code, counters, log) = rt.block_on(async {
        let _users = granting_users(ctx, None);
        granted(&node, customer).await;
        let target = node.sip_udp_addr().expect("SIP over UDP");
        pbx_dials(target, "bic_uac_cancel.xml", customer).await
    });
    common::assert_all_succeeded(code, &counters, &log, 1);
    let calls = rt.block_on(server.wait_calls(1, Duration::from_secs(10)));
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].status, 487, "{calls:?}");
    assert!(calls[0].user_report.is_none());
    rt.block_on(async { assert!(node.calls().wait_idle(Duration::from_secs(15)).await) });
    let cdrs = cdrs(&rt, node, dir.path());
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    assert_eq!(cdrs[0].outcome, CallOutcome::Unanswered, "{cdrs:?}");
    assert_eq!(cdrs[0].direction, Direction::BusinessInitiated);
}
