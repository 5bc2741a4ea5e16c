//! The sim against a running switch: simulated WhatsApp users (real WebRTC media: ICE-lite,
//! DTLS-SRTP, Opus) call an echo-test business number through signed connect webhooks; the
//! switch answers each offer in its media shards, pre-accepts and accepts through the sim's
//! Graph API, and echoes the audio; the users check their tone comes back and hang up with
//! Meta's terminate webhook. Every call leaves one CDR.

mod common;

use std::path::Path;
use std::time::Duration;

use waswitch::config::{Config, Secret};
use waswitch::node::Node;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load::{self, LoadPlan, SimContext};
use waswitch::sim::webhooks::{BusinessRef, WebhookSender};
use waswitch::store::{CallOutcome, CdrFilter, CdrRepository, Direction, HangupParty, Store};

const SECRET: &str = "sim-app-secret";
const TOKEN: &str = "sim-access-token";
const PNID: &str = "105615555715855";
const NUMBER: &str = "15551112222";

/// The sim's Graph API on a loopback port, and a node of an echo-test number pointed at it.
async fn sim_and_switch(dir: &Path, media_ports: u16, extra: &str) -> (SimGraph, Node, SimContext) {
    sim_and_switch_with(dir, media_ports, extra, 30).await
}

/// [`sim_and_switch`] with a media timeout of `media_timeout` seconds.
async fn sim_and_switch_with(
    dir: &Path,
    media_ports: u16,
    extra: &str,
    media_timeout: u32,
) -> (SimGraph, Node, SimContext) {
    let graph = SimGraph::new(Secret::new(TOKEN), vec![PNID.to_string()]);
    let sim_addr = graph.serve_loopback().await.expect("sim Graph API");
    let toml = format!(
        "[media]\nip = \"127.0.0.1\"\nshards = 2\nport_min = {media_ports}\nport_max = {}\n\
         timeout_secs = {media_timeout}\n\
         [meta]\ngraph_url = \"http://{sim_addr}\"\naccess_token = \"{TOKEN}\"\n\
         app_secret = \"{SECRET}\"\nverify_token = \"vt\"\n\
         [[business_number]]\nphone_number_id = \"{PNID}\"\ndisplay_number = \"{NUMBER}\"\n\
         country = \"BR\"\necho_test = true\n{extra}",
        media_ports + 598
    );
    let config = Config::loopback(&toml, &dir.join("w.db")).expect("config");
    let node = Node::start(config).await.expect("node");
    let webhooks = WebhookSender::new(
        &format!("http://{}/webhooks/meta", node.http_addr()),
        Secret::new(SECRET),
        Duration::from_secs(20),
    )
    .expect("webhook sender");
    let context = SimContext::loopback(
        graph.clone(),
        webhooks,
        BusinessRef {
            waba_id: "112735964992110".into(),
            phone_number_id: PNID.into(),
            display_number: NUMBER.into(),
        },
    );
    (graph, node, context)
}

/// Stops the node (writing every CDR) and reads the CDRs back.
async fn stop_and_read_cdrs(node: Node, dir: &Path) -> Vec<waswitch::store::Cdr> {
    assert!(
        node.calls().wait_idle(Duration::from_secs(15)).await,
        "calls left over"
    );
    node.drain_and_stop().await;
    let config = Config::loopback("", &dir.join("w.db")).expect("config");
    let store = Store::open(&config.store).await.expect("store");
    store
        .list(&CdrFilter {
            limit: 10_000,
            ..CdrFilter::default()
        })
        .await
        .expect("cdrs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_call_to_an_echo_number_connects_with_audio_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every CDR also goes to a webhook, which fails its first delivery.
    let (hook_url, received) = common::webhook_sink(true).await;
    let extra = format!(
        "[cdr_webhook]\nurl = \"{hook_url}\"\nsecret = \"cdr-secret\"\ntimeout_ms = 2000\n"
    );
    let (graph, node, mut ctx) = sim_and_switch(dir.path(), 44000, &extra).await;
    // The user presses 1, 5 and # while talking; the echo sends them back.
    ctx.dtmf = Some("15#".into());

    let result = load::user_call(&ctx, "4915112345678", Duration::from_secs(2)).await;
    assert_eq!(result.error, None, "{result:?}");
    assert!(
        result.answered && result.accepted && result.connected,
        "{result:?}"
    );
    assert!(result.audio_verified, "{result:?}");
    assert!(result.packets_in >= 50, "{result:?}");
    assert_eq!(result.digits_in, "15#", "{result:?}");

    // The Graph API saw pre_accept, then accept with the same SDP answer (Meta refuses a
    // different one), carrying our call id as the tracking string.
    let actions: Vec<_> = graph
        .recorded()
        .into_iter()
        .filter(|r| r.endpoint == "calls")
        .collect();
    let names: Vec<_> = actions.iter().filter_map(|r| r.action.clone()).collect();
    assert_eq!(names, ["pre_accept", "accept"], "{actions:?}");
    assert!(actions.iter().all(|r| r.status == 200), "{actions:?}");
    let sdp = |i: usize| {
        actions[i].body["session"]["sdp"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(sdp(0), sdp(1));
    let answer = sdp(0).expect("answer");
    assert!(answer.contains("a=setup:active"), "{answer}");
    assert!(
        answer.contains("a=rtpmap:126 telephone-event/8000"),
        "{answer}"
    );
    let call = graph.call(&result.wa_call_id).expect("sim call");
    let opaque = call.biz_opaque_callback_data.expect("tracking string");

    let cdrs = stop_and_read_cdrs(node, dir.path()).await;
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr.call_id, opaque);
    assert_eq!(cdr.direction, Direction::UserInitiated);
    assert_eq!(cdr.wa_call_id.as_deref(), Some(result.wa_call_id.as_str()));
    assert_eq!(cdr.customer_wa_id.as_deref(), Some("4915112345678"));
    assert_eq!(cdr.business_number.as_deref(), Some(NUMBER));
    assert_eq!(cdr.outcome, CallOutcome::Answered);
    // The user hung up: Meta's terminate webhook ended it.
    assert_eq!(cdr.hangup_by, HangupParty::Customer);
    assert_eq!(cdr.end_cause, "normal_clearing");
    assert_eq!(cdr.codec_path.as_deref(), Some("opus echo"));
    let media = cdr.media.expect("media quality");
    assert!(media.packets >= 50, "{media:?}");

    // The webhook got the same CDR on its second attempt, signed over timestamp and body.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.lock().expect("sink").len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no webhook retry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = received.lock().expect("sink").clone();
    let (timestamp, signature, body) = &got[1];
    assert_eq!(
        signature,
        &waswitch::store::webhook::signature(b"cdr-secret", *timestamp, body)
    );
    let posted: serde_json::Value = serde_json::from_slice(body).expect("json");
    assert_eq!(posted["call_id"], cdr.call_id.as_str());
    assert_eq!(posted["outcome"], "answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_user_calls_on_one_media_thread_connect_with_audio_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, node, mut ctx) = sim_and_switch(dir.path(), 44600, "").await;
    // Meta's delivery habits: every webhook twice, and bursts out of order.
    ctx.webhooks.duplicates = true;
    ctx.webhooks.jitter = Duration::from_millis(30);
    // All the users' media on one thread, as a load run carries it.
    ctx.pool = Some(waswitch::sim::pool::UserPool::start(1).expect("user pool"));
    let plan = LoadPlan {
        rate: 40.0,
        concurrency: 60,
        duration: Duration::from_secs(30),
        hold: Duration::from_secs(1),
        max_calls: Some(200),
    };
    let report = load::run_load(&ctx, plan).await;
    eprintln!("{}", serde_json::to_string_pretty(&report).expect("report"));
    assert_eq!(report.attempts, 200);
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.connected, 200);
    assert_eq!(report.accepted, 200);
    assert_eq!(report.audio_verified, 200);
    assert!(report.peak_concurrency > 1, "{report:?}");

    let accepts = graph
        .recorded()
        .iter()
        .filter(|r| r.action.as_deref() == Some("accept") && r.status == 200)
        .count();
    assert_eq!(accepts, 200);
    // Each call was pre-accepted and accepted once, redeliveries notwithstanding.
    let pre_accepts = graph
        .recorded()
        .iter()
        .filter(|r| r.action.as_deref() == Some("pre_accept"))
        .count();
    assert_eq!(pre_accepts, 200);
    let cdrs = stop_and_read_cdrs(node, dir.path()).await;
    assert_eq!(cdrs.len(), 200);
    assert!(cdrs.iter().all(|c| c.outcome == CallOutcome::Answered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminate_overtaking_its_connect_leaves_no_call_behind() {
    use waswitch::sim::webhooks::{self, Ending};
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, node, ctx) = sim_and_switch(dir.path(), 45200, "").await;
    let (_user, offer) = waswitch::sim::user::SimUser::offer(
        std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"),
    )
    .expect("offer");
    // The user gave up at once; Meta's webhooks arrive terminate first.
    let id = graph.place_user_call(PNID, "4915100000009", &offer);
    graph.end_call(&id);
    let ending = Ending {
        business_initiated: false,
        user: "4915100000009".into(),
        talked: None,
        error: None,
        opaque: None,
    };
    let terminate = webhooks::terminate(&ctx.business, &id, &ending);
    assert!(ctx.webhooks.deliver(&terminate).await.delivered());
    let connect = webhooks::user_call_connect(&ctx.business, &id, "4915100000009", "Late", &offer);
    assert!(ctx.webhooks.deliver(&connect).await.delivered());
    // Meta refuses the pre_accept of an ended call: the switch ends its side too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !graph
        .recorded()
        .iter()
        .any(|r| r.action.as_deref() == Some("pre_accept"))
    {
        assert!(tokio::time::Instant::now() < deadline, "no pre_accept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cdrs = stop_and_read_cdrs(node, dir.path()).await;
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    // Meta refused the WhatsApp side: a failed call, never an answered one.
    assert_eq!(cdrs[0].outcome, CallOutcome::Failed);
    assert_eq!(cdrs[0].end_cause, "meta_pre_accept_failed");
    assert_eq!(cdrs[0].hangup_by, HangupParty::Switch);
    let actions: Vec<_> = graph
        .recorded()
        .into_iter()
        .filter_map(|r| r.action.map(|a| (a, r.status)))
        .collect();
    assert_eq!(actions[0], ("pre_accept".to_string(), 400), "{actions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whatsapp_leg_whose_media_never_comes_is_ended_with_its_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, node, ctx) = sim_and_switch_with(dir.path(), 45800, "", 2).await;
    // A user whose phone never answers ICE: the call is accepted, then no media arrives.
    let (_user, offer) = waswitch::sim::user::SimUser::offer(
        std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"),
    )
    .expect("offer");
    let id = graph.place_user_call(PNID, "4915100000011", &offer);
    let connect = waswitch::sim::webhooks::user_call_connect(
        &ctx.business,
        &id,
        "4915100000011",
        "Mute",
        &offer,
    );
    assert!(ctx.webhooks.deliver(&connect).await.delivered());
    // The switch gives up after the media timeout and terminates toward Meta.
    let ended = graph
        .wait_call(&id, Duration::from_secs(15), |c| {
            c.state == waswitch::sim::graph::SimCallState::Ended
        })
        .await;
    assert!(ended.is_some(), "the switch never ended the silent call");
    let cdrs = stop_and_read_cdrs(node, dir.path()).await;
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].end_cause, "media_timeout");
    assert_eq!(cdrs[0].hangup_by, HangupParty::Switch);
    let names: Vec<String> = graph
        .recorded()
        .into_iter()
        .filter_map(|r| r.action)
        .collect();
    assert_eq!(names, ["pre_accept", "accept", "terminate"]);
}

/// A call that ends just as the node stops still gets its CDR: a removed call counts as
/// closing until its CDR is handed to the writer, and the drain waits for it. (The window
/// between the two is held open for 800 ms by a `fault-injection` pause point; this test
/// runs in a process of its own, so setting the variable touches no other test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ending_as_the_node_stops_still_gets_its_cdr() {
    std::env::set_var("WASWITCH_TEST_PAUSE_AT", "before_cdr_submitted:800");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_graph, node, ctx) = sim_and_switch(dir.path(), 49_400, "").await;
    let result = load::user_call(&ctx, "4915112345601", Duration::from_millis(500)).await;
    assert!(result.connected, "{result:?}");
    // No waiting for the calls to end first: the drain itself must.
    node.drain_and_stop().await;
    let config = Config::loopback("", &dir.path().join("w.db")).expect("config");
    let store = Store::open(&config.store).await.expect("store");
    let cdrs = store
        .list(&CdrFilter {
            limit: 10,
            ..CdrFilter::default()
        })
        .await
        .expect("cdrs");
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    assert_eq!(cdrs[0].outcome, CallOutcome::Answered);
}

/// A call supervisor that dies mid-call is closed out by the root supervisor from the
/// registry, which knows when the call was answered: the CDR keeps its answer time and
/// duration, with the failure as cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_call_closed_out_by_the_root_keeps_its_duration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_graph, node, ctx) = sim_and_switch(dir.path(), 49_800, "").await;
    let calling = {
        let ctx = ctx.clone();
        tokio::spawn(
            async move { load::user_call(&ctx, "4915112345602", Duration::from_secs(4)).await },
        )
    };
    // Answered and talking for a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let id = loop {
        let ids = node.calls().ids();
        if let Some(id) = ids.first() {
            if let Some(s) = node.calls().snapshot(id).await {
                if s.answered_at.is_some() {
                    break id.clone();
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no answered call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(node
        .calls()
        .inject_supervisor_fault(&id, waswitch::call::Fault::Panic));
    let _ = calling.await;
    let cdrs = stop_and_read_cdrs(node, dir.path()).await;
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr.end_cause, "internal_failure", "{cdr:?}");
    assert!(cdr.answered_at.is_some(), "{cdr:?}");
    assert!(cdr.duration_ms >= 1000, "{cdr:?}");
}

/// A media shard that panics mid-call: the calls it relayed end with their failure in the
/// CDR, the call on the other shard talks on with its audio verified, and a new call placed
/// afterwards connects (the shard was started again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_panic_ends_its_own_calls_only_and_new_calls_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_graph, node, ctx) = sim_and_switch(dir.path(), 55_000, "").await;
    let call = |user: &'static str, hold: u64| {
        let ctx = ctx.clone();
        tokio::spawn(async move { load::user_call(&ctx, user, Duration::from_secs(hold)).await })
    };
    let first = call("4915112345611", 4);
    let second = call("4915112345612", 4);
    // Both answered and anchored, on two shards.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let shards = loop {
        let mut shards = Vec::new();
        for id in node.calls().ids() {
            if let Some(s) = node.calls().snapshot(&id).await {
                if let (Some(_), Some(m)) = (s.answered_at, s.media) {
                    shards.push((id, m.shard));
                }
            }
        }
        if shards.len() == 2 && shards.iter().all(|(_, s)| s.is_some()) {
            break shards;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "calls not up: {shards:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(shards[0].1, shards[1].1, "both calls on one shard");
    let (failing, shard) = (shards[0].0.clone(), shards[0].1.expect("shard"));
    assert!(node.calls().inject_shard_panic(shard));
    let results = [first.await.expect("call"), second.await.expect("call")];
    // One call was cut short, the other talked to its end with its audio.
    assert_eq!(
        results.iter().filter(|r| r.audio_verified).count(),
        1,
        "{results:?}"
    );
    let after = load::user_call(&ctx, "4915112345613", Duration::from_secs(1)).await;
    assert!(after.connected && after.audio_verified, "{after:?}");
    let cdrs = stop_and_read_cdrs(node, dir.path()).await;
    assert_eq!(cdrs.len(), 3, "{cdrs:?}");
    let failed = cdrs
        .iter()
        .find(|c| c.call_id == failing.as_str())
        .expect("the failed call's CDR");
    assert_eq!(failed.outcome, CallOutcome::Failed, "{failed:?}");
    assert_eq!(
        failed.failure.as_deref(),
        Some("media failed: the media shard relaying the call failed"),
        "{failed:?}"
    );
    assert_eq!(
        cdrs.iter()
            .filter(|c| c.outcome == CallOutcome::Answered)
            .count(),
        2,
        "{cdrs:?}"
    );
}
