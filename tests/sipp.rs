//! SIPp (Debian `sip-tester`) against a running node over UDP on loopback. Assertions are on
//! SIPp's own counters (its `-trace_stat` CSV), not only on its exit code.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    assert_all_succeeded, free_udp_port, free_udp_ports, run_sipp, runtime, scenario, start_node,
    KillOnDrop,
};

use waswitch::config::Config;
use waswitch::node::Node;

#[test]
fn sipp_options_pings_all_succeed() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(&rt, dir.path());
    let target = node.sip_udp_addr().expect("SIP UDP");
    let (code, counters, log) = run_sipp("options_uac.xml", "u1", target, 300, 150);
    assert_all_succeeded(code, &counters, &log, 300);
    rt.block_on(node.drain_and_stop());
}

#[test]
fn sipp_invite_without_route_gets_404_and_the_ack_is_absorbed() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(&rt, dir.path());
    let target = node.sip_udp_addr().expect("SIP UDP");
    let (code, counters, log) = run_sipp("invite_no_route_uac.xml", "u1", target, 200, 100);
    assert_all_succeeded(code, &counters, &log, 200);
    // Our 404 was acknowledged: no 404 retransmissions reached SIPp as unexpected messages.
    assert_eq!(
        counters.get("FailedUnexpectedMessage(C)"),
        Some(&0),
        "{counters:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    rt.block_on(node.drain_and_stop());
}

#[test]
fn sipp_over_tcp_options_and_invite_without_route() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(&rt, dir.path());
    let target = node.sip_tcp_addr().expect("SIP TCP");
    assert_eq!(
        Some(target),
        node.sip_udp_addr(),
        "UDP and TCP share the port"
    );
    // One connection (t1) carries every call: responses must go back on it.
    let (code, counters, log) = run_sipp("options_uac.xml", "t1", target, 200, 100);
    assert_all_succeeded(code, &counters, &log, 200);
    let (code, counters, log) = run_sipp("invite_no_route_uac.xml", "t1", target, 100, 50);
    assert_all_succeeded(code, &counters, &log, 100);
    rt.block_on(node.drain_and_stop());
}

#[test]
fn tcp_framing_error_is_answered_then_the_connection_closes() {
    use std::io::{Read, Write};
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(&rt, dir.path());
    let target = node.sip_tcp_addr().expect("SIP TCP");
    let mut conn = std::net::TcpStream::connect(target).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // A good OPTIONS, then one with a negative Content-Length: the stream cannot be framed
    // after it, so the switch answers 400 and closes.
    let good = "OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK-t1\r\n\
        From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: tcp-1\r\nCSeq: 1 OPTIONS\r\n\
        Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    let bad = good
        .replace("Content-Length: 0", "Content-Length: -999")
        .replace("t1", "t2");
    conn.write_all(good.as_bytes()).expect("write");
    conn.write_all(bad.as_bytes()).expect("write");
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("SIP/2.0 200 OK\r\n"), "{text}");
    assert!(
        text.contains("SIP/2.0 400 Bad Request - Content-Length is not a non-negative number\r\n"),
        "{text}"
    );
    // read_to_end returned: the switch closed the connection.
    rt.block_on(node.drain_and_stop());
}

#[test]
fn trunk_probes_mark_a_sipp_trunk_up_then_down_when_it_goes_away() {
    let sipp_port = free_udp_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let uas = Command::new("sipp")
        .arg("-sf")
        .arg(scenario("options_uas.xml"))
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &sipp_port.to_string(),
            "-bind_local",
        ])
        .args(["-mi", "127.0.0.1", "-mp", &free_udp_ports(4).to_string()])
        .args(["-ci", "127.0.0.1", "-cp", &free_udp_port().to_string()])
        .args([
            "-m",
            "1000",
            "-nostdin",
            "-timeout",
            "50s",
            "-timeout_error",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sipp runs (Debian package sip-tester)");
    let mut uas = KillOnDrop(uas);
    let rt = runtime();
    let toml = format!(
        "[sip]\nt1_ms = 50\n[[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:{sipp_port}\"\noptions_interval_secs = 1\n"
    );
    let node = rt.block_on(async {
        let config = Config::loopback(&toml, &dir.path().join("t.db")).expect("config");
        Node::start(config).await.expect("node")
    });
    let wait_for = |want: bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while node.trunk_health().get("pbx") != Some(want) {
            assert!(
                std::time::Instant::now() < deadline,
                "trunk never became up={want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let gauge = || {
        waswitch::telemetry::install_metrics()
            .render()
            .lines()
            .find(|l| l.starts_with("waswitch_trunk_up{trunk=\"pbx\"}"))
            .map(str::to_string)
    };
    wait_for(true);
    assert!(node.trunk_health().usable("pbx"));
    assert_eq!(
        gauge().as_deref(),
        Some("waswitch_trunk_up{trunk=\"pbx\"} 1")
    );
    uas.stop();
    // Silence: the next probe times out after 64·T1 (3.2 s) and the trunk goes down.
    wait_for(false);
    assert!(!node.trunk_health().usable("pbx"));
    assert_eq!(
        gauge().as_deref(),
        Some("waswitch_trunk_up{trunk=\"pbx\"} 0")
    );
    rt.block_on(node.drain_and_stop());
}
