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
use waswitch::sim::meta_sip::{MetaSipClient, SipUserCall, META_RECORD_ROUTE};
use waswitch::store::{CallOutcome, Cdr, Direction, HangupParty};

const PNID: &str = "105615555715855";
const NUMBER: &str = "15551112222";
const USER: &str = "5511987654321";
const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls");

/// A node whose business number is in SIP mode, its calls routed to a PBX at `pbx_port`;
/// Meta (the sim) may call from loopback. The Graph API is the sim's (it carries no call of
/// this number).
fn switch(rt: &tokio::runtime::Runtime, dir: &Path, pbx_port: u16, media_ports: u16) -> Node {
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    rt.block_on(async {
        let sim_addr = graph.serve_loopback().await.expect("sim Graph API");
        let toml = format!(
            "[sip]\ntransports = [\"udp\", \"tls\"]\n\
             [sip.tls]\ncert = \"{TLS_DIR}/server.pem\"\nkey = \"{TLS_DIR}/server.key\"\n\
             ca = \"{TLS_DIR}/ca.pem\"\n\
             [media]\nip = \"127.0.0.1\"\nshards = 2\nport_min = {media_ports}\n\
             port_max = {}\n\
             [[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:{pbx_port}\"\n\
             options_interval_secs = 0\ninvite_timeout_ms = 2000\n\
             [[route]]\nname = \"support\"\ntrunks = [\"pbx\"]\n\
             [meta]\ngraph_url = \"http://{sim_addr}\"\naccess_token = \"tok\"\n\
             app_secret = \"s\"\nverify_token = \"vt\"\n\
             [meta.sip]\nhostname = \"localhost\"\nallow_from = [\"127.0.0.0/8\"]\n\
             [[business_number]]\nphone_number_id = \"{PNID}\"\ndisplay_number = \"{NUMBER}\"\n\
             country = \"BR\"\nroute = \"support\"\nsignaling = \"sip\"\n\
             sip_password = \"meta-generated-password\"\n",
            media_ports + 98,
        );
        let config = Config::loopback(&toml, &dir.join("m.db")).expect("config");
        Node::start(config).await.expect("node")
    })
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
