//! The B2BUA end to end: SIPp caller (uac) → waswitch → SIPp callee (uas), on loopback, over
//! UDP and TCP. Assertions are on both SIPp's counters and the switch's CDRs.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use common::{free_udp_port, run_sipp, runtime, Uas};
use waswitch::config::Config;
use waswitch::node::Node;
use waswitch::store::{Cdr, CdrFilter, CdrRepository, Store};

/// A node routing every call from 127.0.0.1 to the given trunks, in order.
fn b2bua_node(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    trunks: &[(&str, SocketAddr, &str)],
    trunk_extra: &str,
) -> Node {
    let mut toml = "[sip]\ntransports = [\"udp\", \"tcp\"]\n".to_string();
    for (name, addr, transport) in trunks {
        toml.push_str(&format!(
            "[[trunk]]\nname = \"{name}\"\nuri = \"sip:{addr}\"\ntransport = \"{transport}\"\n\
             accept_from = [\"127.0.0.1\"]\noptions_interval_secs = 0\ninvite_timeout_ms = 800\n\
             {trunk_extra}\n"
        ));
    }
    let names: Vec<String> = trunks.iter().map(|(n, _, _)| format!("\"{n}\"")).collect();
    toml.push_str(&format!(
        "[[route]]\nname = \"all\"\ntrunks = [{}]\n",
        names.join(", ")
    ));
    rt.block_on(async {
        let config = Config::loopback(&toml, &dir.join("b.db")).expect("config");
        Node::start(config).await.expect("node")
    })
}

fn uas_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until the node has no call left, stops it (which writes every CDR) and reads the
/// CDRs back from its database.
fn cdrs(rt: &tokio::runtime::Runtime, node: Node, dir: &Path) -> Vec<Cdr> {
    rt.block_on(async {
        assert!(
            node.calls().wait_idle(Duration::from_secs(10)).await,
            "calls left over"
        );
        node.drain_and_stop().await;
        let config = Config::loopback("", &dir.join("b.db")).expect("config");
        let store = Store::open(&config.store).await.expect("store");
        let filter = CdrFilter {
            limit: 10_000,
            ..CdrFilter::default()
        };
        let mut cdrs = store.list(&filter).await.expect("cdrs");
        cdrs.sort_by_key(|c| c.offered_at);
        cdrs
    })
}

/// A node with one UDP trunk "pbx" toward a callee port (`trunk_extra` added to the trunk):
/// its runtime, directory, callee port, the node and its SIP UDP address.
fn one_trunk_node(
    trunk_extra: &str,
) -> (
    tokio::runtime::Runtime,
    tempfile::TempDir,
    u16,
    Node,
    SocketAddr,
) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let node = b2bua_node(
        &rt,
        dir.path(),
        &[("pbx", uas_addr(port), "udp")],
        trunk_extra,
    );
    let target = node.sip_udp_addr().expect("udp");
    (rt, dir, port, node, target)
}

/// `calls` calls of the `uac` scenario over `transport` against `target`, with a SIPp callee
/// running `uas` over `uas_transport` on `port`; both sides must count every call successful.
fn exchange(
    target: SocketAddr,
    transport: &str,
    uac: &str,
    uas: &str,
    uas_transport: &str,
    port: u16,
    calls: u32,
) {
    let callee = Uas::start(uas, uas_transport, port, calls);
    let (code, counters, log) = run_sipp(uac, transport, target, calls, calls.min(20));
    assert_uac(code, &counters, &log, u64::from(calls));
    assert_uas(callee, u64::from(calls));
}

fn assert_uac(code: i32, counters: &std::collections::HashMap<String, u64>, log: &str, ok: u64) {
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        counters.get("SuccessfulCall(C)"),
        Some(&ok),
        "{counters:?}\n{log}"
    );
    assert_eq!(
        counters.get("FailedCall(C)"),
        Some(&0),
        "{counters:?}\n{log}"
    );
}

fn assert_uas(uas: Uas, ok: u64) {
    let (code, counters) = uas.finish();
    assert_eq!(code, Some(0), "{counters:?}");
    assert_eq!(counters.get("SuccessfulCall(C)"), Some(&ok), "{counters:?}");
    assert_eq!(counters.get("FailedCall(C)"), Some(&0), "{counters:?}");
}

/// Caller hangs up, then callee hangs up, over `transport` (`u1` or `t1`).
fn calls_both_ways(transport: &str, trunk_transport: &str) {
    const CALLS: u32 = 20;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let node = b2bua_node(
        &rt,
        dir.path(),
        &[("pbx", uas_addr(port), trunk_transport)],
        "",
    );
    let uas_t = if trunk_transport == "tcp" { "t1" } else { "u1" };
    let target = match transport {
        "t1" => node.sip_tcp_addr(),
        _ => node.sip_udp_addr(),
    }
    .expect("listener");

    exchange(
        target,
        transport,
        "b2bua_uac.xml",
        "b2bua_uas.xml",
        uas_t,
        port,
        CALLS,
    );

    exchange(
        target,
        transport,
        "b2bua_uac_wait_bye.xml",
        "b2bua_uas_bye.xml",
        uas_t,
        port,
        CALLS,
    );

    // Each call is counted under the direction its CDR names, as docs/metrics.md documents.
    rt.block_on(async {
        assert!(node.calls().wait_idle(Duration::from_secs(10)).await);
    });
    let metrics = rt.block_on(common::metrics_text(node.http_addr()));
    let counted = format!(
        "waswitch_calls_total{{direction=\"sip_transit\",outcome=\"answered\"}} {}",
        2 * CALLS
    );
    assert!(metrics.contains(&counted), "{counted} in:\n{metrics}");
    let cdrs = cdrs(&rt, node, dir.path());
    assert_eq!(cdrs.len(), 2 * CALLS as usize);
    for (i, cdr) in cdrs.iter().enumerate() {
        assert_eq!(cdr.outcome.as_str(), "answered", "{cdr:?}");
        assert_eq!(cdr.direction.as_str(), "sip_transit");
        assert_eq!(cdr.trunk.as_deref(), Some("pbx"));
        assert_eq!(cdr.end_cause, "normal_clearing");
        let by = if i < CALLS as usize {
            "caller"
        } else {
            "callee"
        };
        assert_eq!(cdr.hangup_by.as_str(), by, "{cdr:?}");
        assert!(cdr.answered_at.is_some() && cdr.ringing_at.is_some());
    }
}

#[test]
fn udp_calls_hung_up_by_either_side() {
    calls_both_ways("u1", "udp");
}

#[test]
fn tcp_calls_hung_up_by_either_side() {
    calls_both_ways("t1", "tcp");
}

#[test]
fn cancel_before_answer_reaches_the_callee() {
    let (rt, dir, port, node, target) = one_trunk_node("");
    exchange(
        target,
        "u1",
        "b2bua_uac_cancel.xml",
        "b2bua_uas_ring_cancel.xml",
        "u1",
        port,
        10,
    );
    let cdrs = cdrs(&rt, node, dir.path());
    assert_eq!(cdrs.len(), 10);
    assert!(cdrs.iter().all(|c| c.outcome.as_str() == "unanswered"
        && c.end_cause == "cancelled"
        && c.hangup_by.as_str() == "caller"));
}

#[test]
fn busy_is_mapped_back_and_503_becomes_500() {
    let (rt, dir, port, node, target) = one_trunk_node("");

    exchange(
        target,
        "u1",
        "b2bua_uac_expect_486.xml",
        "b2bua_uas_refuse_486.xml",
        "u1",
        port,
        5,
    );

    // A trunk's 503 says the trunk is unavailable, not this switch: the caller gets 500.
    exchange(
        target,
        "u1",
        "b2bua_uac_expect_500.xml",
        "b2bua_uas_refuse_503.xml",
        "u1",
        port,
        5,
    );

    let cdrs = cdrs(&rt, node, dir.path());
    let causes: Vec<&str> = cdrs.iter().map(|c| c.end_cause.as_str()).collect();
    assert_eq!(causes[..5], ["busy"; 5]);
    assert_eq!(causes[5..], ["network_failure"; 5]);
}

#[test]
fn a_trunk_that_never_answers_fails_over_to_the_next() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    // The first trunk swallows every INVITE.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    silent
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let port = free_udp_port();
    let node = b2bua_node(
        &rt,
        dir.path(),
        &[
            ("silent", silent.local_addr().expect("addr"), "udp"),
            ("pbx", uas_addr(port), "udp"),
        ],
        "",
    );
    let target = node.sip_udp_addr().expect("udp");
    exchange(
        target,
        "u1",
        "b2bua_uac.xml",
        "b2bua_uas.xml",
        "u1",
        port,
        5,
    );
    let mut buf = [0u8; 4096];
    let (n, _) = silent
        .recv_from(&mut buf)
        .expect("the silent trunk got an INVITE");
    assert!(
        buf[..n].starts_with(b"INVITE sip:4930123456@"),
        "{:?}",
        &buf[..n.min(80)]
    );
    let cdrs = cdrs(&rt, node, dir.path());
    assert_eq!(cdrs.len(), 5);
    assert!(cdrs
        .iter()
        .all(|c| c.trunk.as_deref() == Some("pbx") && c.outcome.as_str() == "answered"));
}

#[test]
fn re_invite_mid_call_is_passed_through_with_its_sdp() {
    let (rt, dir, port, node, target) = one_trunk_node("");
    // The callee checks the hold offer arrived (a=sendonly), the caller that the hold answer
    // came back (a=recvonly): SIPp fails the call otherwise.
    exchange(
        target,
        "u1",
        "b2bua_uac_reinvite.xml",
        "b2bua_uas_reinvite.xml",
        "u1",
        port,
        10,
    );
    assert_eq!(cdrs(&rt, node, dir.path()).len(), 10);
}

/// A flood of INVITEs from an address no trunk accepts is refused statelessly: one 403 per
/// INVITE, no 100 Trying, no retransmitted final, no transaction (so nothing to amplify a
/// forged source with), or nothing at all with `sip.unknown_sources = "drop"`; counted,
/// and OPTIONS still answered.
#[test]
fn invites_from_addresses_no_trunk_accepts_get_one_stateless_403_each() {
    unknown_source_flood("refuse", FLOOD);
}

/// The same flood with `sip.unknown_sources = "drop"`: nothing comes back.
#[test]
fn invites_from_addresses_no_trunk_accepts_can_be_dropped() {
    unknown_source_flood("drop", 0);
}

const FLOOD: usize = 2000;

/// Sends [`FLOOD`] INVITEs from an address no trunk accepts to a node with `policy`; checks
/// that exactly `answers` datagrams come back, all 403, with no transaction behind them.
fn unknown_source_flood(policy: &str, answers: usize) {
    const INVITES: usize = FLOOD;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "[sip]\nunknown_sources = \"{policy}\"\n\
             [[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5070\"\n\
             accept_from = [\"10.0.0.0/8\"]\noptions_interval_secs = 0\n\
             [[route]]\nname = \"all\"\ntrunks = [\"pbx\"]\n"
    );
    let node = rt.block_on(async {
        let config = Config::loopback(&toml, &dir.path().join("r.db")).expect("config");
        Node::start(config).await.expect("node")
    });
    let target = node.sip_udp_addr().expect("udp");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let me = socket.local_addr().expect("addr");
    let mut received: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut drain = |socket: &UdpSocket, received: &mut Vec<String>, wait: bool| {
        socket.set_nonblocking(!wait).expect("mode");
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            received.push(text.lines().next().unwrap_or("").to_string());
        }
    };
    for k in 0..INVITES {
        let invite = format!(
                "INVITE sip:1000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-fl{k}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag={k}\r\nTo: <sip:1000@127.0.0.1>\r\n\
                 Call-ID: flood{k}@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:a@{me}>\r\n\
                 Content-Length: 0\r\n\r\n"
            );
        socket.send_to(invite.as_bytes(), target).expect("send");
        if k % 20 == 19 {
            // About 2,000 a second, and what came back read as it comes (socket
            // buffers on either side never overflow).
            std::thread::sleep(Duration::from_millis(10));
            drain(&socket, &mut received, false);
        }
    }
    // Long enough for any retransmission of a final response (T1 = 500 ms) to show.
    drain(&socket, &mut received, true);
    assert_eq!(
        received.len(),
        answers,
        "{policy}: {:?}",
        &received[..received.len().min(5)]
    );
    assert!(
        received
            .iter()
            .all(|l| l == "SIP/2.0 403 Forbidden - source address not accepted"),
        "{policy}: {:?}",
        received.iter().find(|l| !l.starts_with("SIP/2.0 403"))
    );
    assert_eq!(node.calls().active(), 0);
    let metrics = rt.block_on(async { common::metrics_text(node.http_addr()).await });
    let refused: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("waswitch_calls_refused_total{reason=\"unknown_source\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(refused, INVITES, "{policy}");
    // No transaction was created for any of them.
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("waswitch_sip_transactions_active") && !l.ends_with(" 0")),
        "{policy}: transactions were created"
    );
    // OPTIONS is still answered.
    let options = format!(
        "OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-opt\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=o\r\nTo: <sip:ping@127.0.0.1>\r\n\
             Call-ID: opt@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    socket.send_to(options.as_bytes(), target).expect("send");
    let mut pong = Vec::new();
    drain(&socket, &mut pong, true);
    assert_eq!(pong, ["SIP/2.0 200 OK"], "{policy}");
    rt.block_on(node.drain_and_stop());
}

#[test]
fn digest_both_ways_inbound_challenged_and_outbound_answered() {
    // The trunk must authenticate its calls to us, and challenges ours.
    let (rt, dir, port, node, target) = one_trunk_node(
        "username = \"waswitch\"\npassword = \"s3cret\"\n\
         inbound_username = \"pbx\"\ninbound_password = \"in-s3cret\"",
    );
    exchange(
        target,
        "u1",
        "b2bua_uac_digest.xml",
        "b2bua_uas_digest.xml",
        "u1",
        port,
        5,
    );
    // Without credentials the caller only ever gets the challenge.
    let (code, counters, _) = run_sipp("b2bua_uac.xml", "u1", target, 1, 1);
    assert_ne!(code, 0);
    assert_eq!(counters.get("SuccessfulCall(C)"), Some(&0));
    let cdrs = cdrs(&rt, node, dir.path());
    assert_eq!(cdrs.len(), 5, "a challenged INVITE is no call");
}

#[test]
fn tls_between_two_switches_carries_calls_both_ways() {
    // caller (SIPp, UDP) → node A → TLS → node B → callee (SIPp, UDP). Node A opens the TLS
    // connection (verifying node B's certificate against the test CA), node B accepts it.
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let tls_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls");
    let tls = format!(
        "[sip.tls]\ncert = \"{tls_dir}/server.pem\"\nkey = \"{tls_dir}/server.key\"\n\
         ca = \"{tls_dir}/ca.pem\"\n"
    );
    let port = free_udp_port();
    let edge_toml = format!(
        "[sip]\ntransports = [\"udp\", \"tls\"]\n{tls}\
         [[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:{port}\"\n\
         accept_from = [\"127.0.0.1\"]\noptions_interval_secs = 0\n\
         [[route]]\nname = \"all\"\ntrunks = [\"pbx\"]\n"
    );
    let edge = rt.block_on(async {
        let config = Config::loopback(&edge_toml, &dir.path().join("edge.db")).expect("config");
        Node::start(config).await.expect("edge node")
    });
    let edge_tls = edge.sip_tls_addr().expect("TLS listener");
    let core_toml = format!(
        "[sip]\ntransports = [\"udp\", \"tls\"]\n{tls}\
         [[trunk]]\nname = \"edge\"\nuri = \"sips:{edge_tls}\"\ntransport = \"tls\"\n\
         accept_from = [\"127.0.0.1\"]\noptions_interval_secs = 0\n\
         [[route]]\nname = \"all\"\ntrunks = [\"edge\"]\n"
    );
    let core = rt.block_on(async {
        let config = Config::loopback(&core_toml, &dir.path().join("core.db")).expect("config");
        Node::start(config).await.expect("core node")
    });
    let target = core.sip_udp_addr().expect("udp");

    exchange(
        target,
        "u1",
        "b2bua_uac.xml",
        "b2bua_uas.xml",
        "u1",
        port,
        10,
    );
    exchange(
        target,
        "u1",
        "b2bua_uac_wait_bye.xml",
        "b2bua_uas_bye.xml",
        "u1",
        port,
        10,
    );

    let edge_cdrs = rt.block_on(async {
        assert!(edge.calls().wait_idle(Duration::from_secs(10)).await);
        edge.drain_and_stop().await;
        let config = Config::loopback("", &dir.path().join("edge.db")).expect("config");
        let store = Store::open(&config.store).await.expect("store");
        store
            .list(&CdrFilter {
                limit: 100,
                ..CdrFilter::default()
            })
            .await
            .expect("cdrs")
    });
    assert_eq!(edge_cdrs.len(), 20, "every call crossed the TLS hop");
    assert!(edge_cdrs.iter().all(|c| c.outcome.as_str() == "answered"));
    rt.block_on(core.drain_and_stop());
}

#[test]
fn a_trunk_that_fails_its_probes_is_skipped_without_waiting() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    // The first trunk takes datagrams but never answers: its OPTIONS probes time out.
    let dead = UdpSocket::bind("127.0.0.1:0").expect("bind");
    dead.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let port = free_udp_port();
    let toml = format!(
        "[sip]\nt1_ms = 50\n\
         [[trunk]]\nname = \"dead\"\nuri = \"sip:{}\"\naccept_from = [\"127.0.0.1\"]\n\
         options_interval_secs = 1\ninvite_timeout_ms = 30000\n\
         [[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:{port}\"\noptions_interval_secs = 0\n\
         [[route]]\nname = \"all\"\ntrunks = [\"dead\", \"pbx\"]\n",
        dead.local_addr().expect("addr")
    );
    let node = rt.block_on(async {
        let config = Config::loopback(&toml, &dir.path().join("b.db")).expect("config");
        Node::start(config).await.expect("node")
    });
    // Probe timeout is 64·T1 = 3.2 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while node.trunk_health().get("dead") != Some(false) {
        assert!(
            std::time::Instant::now() < deadline,
            "trunk never marked down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // 5 s receive timeout if the route skips it.
    exchange(
        node.sip_udp_addr().expect("udp"),
        "u1",
        "b2bua_uac.xml",
        "b2bua_uas.xml",
        "u1",
        port,
        3,
    );
    let mut buf = [0u8; 4096];
    while let Ok((n, _)) = dead.recv_from(&mut buf) {
        assert!(
            buf[..n].starts_with(b"OPTIONS "),
            "only probes reach a trunk that is down: {}",
            String::from_utf8_lossy(&buf[..n.min(60)])
        );
    }
    let cdrs = cdrs(&rt, node, dir.path());
    assert!(cdrs.iter().all(|c| c.trunk.as_deref() == Some("pbx")));
}
