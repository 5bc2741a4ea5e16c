//! Agent queues, end to end: `waswitch sim` plays the WhatsApp customer (signed webhooks,
//! its Graph API, real WebRTC audio), agents' phones are SIPp UASes registered with the
//! switch (digest over UDP, their Contact at SIPp's port), and the overflow trunk is a SIPp
//! PBX. The IVR answers and dials queue `support`; each call is checked on the customer's
//! side (audio through), at each phone (who was rung, who answered), in the CDR (queue,
//! agent, wait) and in the queue metrics.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::agent::register_udp;
use common::{cdr_of, free_udp_port, runtime, Uas};
use waswitch::config::{Config, Secret};
use waswitch::node::Node;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load::{self, SimContext};

const SECRET: &str = "queue-secret";
const PNID: &str = "105615555715866";
const NUMBER: &str = "15551113333";
/// The caller's own tone, echoed by whoever answers; the comfort tone while waiting; the
/// beeps of the caller's place in the queue.
const OWN: u32 = 440;
const COMFORT: u32 = 425;
const PLACE: u32 = 950;

fn toml(overflow: u16, media_ports: u16, sim: &str, timeout_secs: u32, strategy: &str) -> String {
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/prompts");
    format!(
        r#"
[http]
api_token = "queue-token"
[media]
ip = "127.0.0.1"
shards = 2
port_min = {media_ports}
port_max = {port_max}
[[trunk]]
name = "overflow"
uri = "sip:127.0.0.1:{overflow}"
options_interval_secs = 0
invite_timeout_ms = 2000
[[route]]
name = "overflow"
trunks = ["overflow"]
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
[[agent]]
user = "bob"
password = "bob-pass"
queues = ["support"]
[[queue]]
name = "support"
strategy = "{strategy}"
ring_timeout_secs = 5
timeout_secs = {timeout_secs}
wrap_up_secs = 0
announce_position_secs = 4
overflow_route = "overflow"
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
        port_max = media_ports + 198,
        prompts = prompts.display(),
    )
}

struct Rig {
    _graph: SimGraph,
    node: Node,
    ctx: SimContext,
}

fn start(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    overflow: u16,
    media_ports: u16,
    timeout_secs: u32,
) -> Rig {
    start_with(rt, dir, overflow, media_ports, timeout_secs, "longest_idle")
}

fn start_with(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    overflow: u16,
    media_ports: u16,
    timeout_secs: u32,
    strategy: &str,
) -> Rig {
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let node = rt.block_on(async {
        let sim = graph.serve_loopback().await.expect("sim Graph API");
        let toml = toml(
            overflow,
            media_ports,
            &sim.to_string(),
            timeout_secs,
            strategy,
        );
        let config = Config::loopback(&toml, &dir.join("q.db")).expect("config");
        Node::start(config).await.expect("node")
    });
    let mut ctx = common::sim_context(&graph, node.http_addr(), SECRET, PNID, NUMBER);
    ctx.listen = vec![COMFORT as f32, PLACE as f32, OWN as f32];
    Rig {
        _graph: graph,
        node,
        ctx,
    }
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Bob's and then Alice's phones registered (digest over UDP), their Contacts at SIPp's
/// ports; keep the sockets.
fn phones(switch: SocketAddr, bob_port: u16, alice_port: u16) -> [std::net::UdpSocket; 2] {
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let bob = register_udp(switch, "bob", "bob-pass", at(bob_port));
    std::thread::sleep(Duration::from_millis(50));
    let alice = register_udp(switch, "alice", "alice-pass", at(alice_port));
    [bob, alice]
}

fn sip_addr(node: &Node) -> SocketAddr {
    node.sip_udp_addr().expect("SIP over UDP")
}

/// Bob has been free longer than Alice (he registered first), so the longest-idle queue
/// rings him first, although Alice comes first in the configuration. Bob lets it ring out
/// (SIPp rings until cancelled): after the 5 s ring timeout the switch cancels and rings
/// Alice, who answers and echoes; the customer hears the comfort tone, then their own
/// voice. The CDR names the queue, Alice and the wait; the metrics count one answered call.
#[test]
fn the_longest_idle_agent_is_rung_first_and_a_ring_timeout_moves_to_the_next() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = start(&rt, dir.path(), free_udp_port(), 57_200, 60);
    let (bob_port, alice_port) = (free_udp_port(), free_udp_port());
    let bob = Uas::start_with("b2bua_uas_ring_cancel.xml", "u1", bob_port, 1, &[]);
    let alice = Uas::start_with("b2bua_uas.xml", "u1", alice_port, 1, &["-rtp_echo"]);
    let switch = sip_addr(&rig.node);
    // Bob first: he has been free the longer.
    let _phones = phones(switch, bob_port, alice_port);
    let r = rt.block_on(load::user_call(
        &rig.ctx,
        "4915112345678",
        Duration::from_secs(9),
    ));
    assert_eq!(r.error, None, "{r:?}");
    assert!(r.accepted && r.connected && r.audio_verified, "{r:?}");
    assert_eq!(
        r.tones.first(),
        Some(&COMFORT),
        "waited hearing the comfort tone: {r:?}"
    );
    assert_eq!(r.tones.last(), Some(&OWN), "then Alice's echo: {r:?}");
    let metrics = rt.block_on(common::metrics_text(rig.node.http_addr()));
    assert_eq!(
        metric(
            &metrics,
            "waswitch_queue_calls_total{queue=\"support\",outcome=\"answered\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "waswitch_queue_waiting{queue=\"support\"}"),
        Some(0.0)
    );
    let cdrs = common::cdrs_after(&rt, rig.node, &dir.path().join("q.db"));
    let (bob_code, bob_counters) = bob.finish();
    assert_eq!(
        bob_code,
        Some(0),
        "Bob was rung and cancelled: {bob_counters:?}"
    );
    let (alice_code, alice_counters) = alice.finish();
    assert_eq!(alice_code, Some(0), "Alice answered: {alice_counters:?}");
    assert_eq!(alice_counters.get("SuccessfulCall(C)"), Some(&1));
    let cdr = cdr_of(&cdrs, &r.wa_call_id);
    assert!(cdr.answered_at.is_some(), "{cdr:?}");
    let control = cdr.control.as_ref().expect("control record");
    assert_eq!(control.queue.as_deref(), Some("support"), "{control:?}");
    assert_eq!(control.agent.as_deref(), Some("alice"), "{control:?}");
    assert_eq!(control.queue_outcome.as_deref(), Some("answered"));
    let waited = control.queue_wait_ms.expect("wait");
    assert!(
        (4_500..20_000).contains(&waited),
        "waited through Bob's ring timeout: {waited} ms"
    );
    assert_eq!(cdr.trunk.as_deref(), Some("agent:alice"), "{cdr:?}");
}

/// Nobody is registered: the caller waits the queue's 10 s, hearing the comfort tone and,
/// every 4 s, their place (one beep: first in line), and then overflows to the overflow
/// route's trunk (a SIPp PBX that answers and echoes).
#[test]
fn with_no_agent_the_caller_overflows_to_the_trunk_after_the_queue_timeout() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let overflow = free_udp_port();
    let rig = start(&rt, dir.path(), overflow, 57_400, 10);
    let pbx = Uas::start_with("b2bua_uas.xml", "u1", overflow, 1, &["-rtp_echo"]);
    let r = rt.block_on(load::user_call(
        &rig.ctx,
        "4915187654321",
        Duration::from_secs(14),
    ));
    assert_eq!(r.error, None, "{r:?}");
    assert!(r.connected && r.audio_verified, "{r:?}");
    assert_eq!(r.tones.first(), Some(&COMFORT), "{r:?}");
    let places = r.tones.iter().filter(|&&t| t == PLACE).count();
    assert_eq!(places, 2, "the place told at 4 s and 8 s: {r:?}");
    assert_eq!(r.tones.last(), Some(&OWN), "the trunk's echo: {r:?}");
    let metrics = rt.block_on(common::metrics_text(rig.node.http_addr()));
    assert_eq!(
        metric(
            &metrics,
            "waswitch_queue_calls_total{queue=\"support\",outcome=\"overflow\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    let cdrs = common::cdrs_after(&rt, rig.node, &dir.path().join("q.db"));
    let (code, counters) = pbx.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    let cdr = cdr_of(&cdrs, &r.wa_call_id);
    assert_eq!(cdr.trunk.as_deref(), Some("overflow"), "{cdr:?}");
    let control = cdr.control.as_ref().expect("control record");
    assert_eq!(control.queue.as_deref(), Some("support"));
    assert_eq!(control.agent, None);
    assert_eq!(control.queue_outcome.as_deref(), Some("overflow"));
    let waited = control.queue_wait_ms.expect("wait");
    assert!((9_500..13_000).contains(&waited), "{waited} ms");
}

/// Ring-all: both agents' phones ring at once; Alice answers at once, Bob's phone (which
/// would ring until cancelled) is cancelled; the call, its CDR and the queue's metrics are
/// Alice's.
#[test]
fn ring_all_rings_every_available_agent_and_the_first_to_answer_takes_the_call() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = start_with(&rt, dir.path(), free_udp_port(), 58_400, 60, "ring_all");
    let (bob_port, alice_port) = (free_udp_port(), free_udp_port());
    let bob = Uas::start_with("b2bua_uas_ring_cancel.xml", "u1", bob_port, 1, &[]);
    let alice = Uas::start_with("b2bua_uas.xml", "u1", alice_port, 1, &["-rtp_echo"]);
    let switch = sip_addr(&rig.node);
    // Bob first: he has been free the longer.
    let _phones = phones(switch, bob_port, alice_port);
    let r = rt.block_on(load::user_call(
        &rig.ctx,
        "4915112345679",
        Duration::from_secs(4),
    ));
    assert_eq!(r.error, None, "{r:?}");
    assert!(r.connected && r.audio_verified, "{r:?}");
    let cdrs = common::cdrs_after(&rt, rig.node, &dir.path().join("q.db"));
    let (bob_code, bob_counters) = bob.finish();
    assert_eq!(
        bob_code,
        Some(0),
        "Bob rang and was cancelled: {bob_counters:?}"
    );
    let (alice_code, alice_counters) = alice.finish();
    assert_eq!(alice_code, Some(0), "Alice answered: {alice_counters:?}");
    let cdr = cdr_of(&cdrs, &r.wa_call_id);
    let control = cdr.control.as_ref().expect("control record");
    assert_eq!(control.agent.as_deref(), Some("alice"), "{control:?}");
    assert_eq!(cdr.trunk.as_deref(), Some("agent:alice"), "{cdr:?}");
    let waited = control.queue_wait_ms.expect("wait");
    assert!(
        waited < 4_000,
        "nobody waited for a ring timeout: {waited} ms"
    );
}
