//! SIPp (Debian `sip-tester`) against a running node over UDP on loopback. Assertions are on
//! SIPp's own counters (its `-trace_stat` CSV), not only on its exit code.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use waswitch::config::Config;
use waswitch::node::Node;

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("loadtest/sipp")
        .join(name)
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Counters from the last row of a SIPp `-trace_stat` CSV.
fn sipp_counters(csv: &Path) -> std::collections::HashMap<String, u64> {
    let text = std::fs::read_to_string(csv).expect("SIPp stats file");
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().expect("header row").split(';').collect();
    let last: Vec<&str> = lines.next_back().expect("a stats row").split(';').collect();
    header
        .iter()
        .zip(last)
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// Runs `calls` calls of a scenario over `transport` (SIPp's `-t`: u1 UDP, t1 one TCP
/// connection) at `rate` cps against `target`; bounded in count and time.
fn run_sipp(
    scenario_file: &str,
    transport: &str,
    target: std::net::SocketAddr,
    calls: u32,
    rate: u32,
) -> (i32, std::collections::HashMap<String, u64>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let stats = dir.path().join("stats.csv");
    let output = Command::new("timeout")
        .arg("60")
        .arg("sipp")
        .arg("-sf")
        .arg(scenario(scenario_file))
        .arg(target.to_string())
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-ci", "127.0.0.1"])
        .args(["-p", &free_udp_port().to_string()])
        .args(["-cp", &free_udp_port().to_string()])
        .args(["-mp", &free_udp_port().to_string()])
        .args(["-s", "4930123456", "-t", transport])
        .args([
            "-m",
            &calls.to_string(),
            "-r",
            &rate.to_string(),
            "-rp",
            "1000",
        ])
        .args(["-timeout", "30s", "-timeout_error", "-recv_timeout", "5000"])
        .args(["-nostdin", "-bind_local", "-trace_stat", "-fd", "1", "-stf"])
        .arg(&stats)
        .current_dir(dir.path())
        .output()
        .expect("sipp runs (Debian package sip-tester; .ci/run installs it)");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (
        output.status.code().unwrap_or(-1),
        sipp_counters(&stats),
        log,
    )
}

/// SIPp exited 0 and counted `calls` successful calls and no failed one.
fn assert_all_succeeded(
    code: i32,
    counters: &std::collections::HashMap<String, u64>,
    log: &str,
    calls: u64,
) {
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        counters.get("SuccessfulCall(C)"),
        Some(&calls),
        "{counters:?}\n{log}"
    );
    assert_eq!(counters.get("FailedCall(C)"), Some(&0), "{counters:?}");
}

fn start_node(rt: &tokio::runtime::Runtime, dir: &Path) -> Node {
    rt.block_on(async {
        let config = Config::loopback("", &dir.join("s.db")).expect("config");
        Node::start(config).await.expect("node")
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

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
        .args(["-mi", "127.0.0.1", "-mp", &free_udp_port().to_string()])
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

/// A child process that is killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}
