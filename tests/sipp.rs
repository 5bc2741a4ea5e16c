//! SIPp (Debian `sip-tester`) against a running node over UDP on loopback. Assertions are on
//! SIPp's own counters (its `-trace_stat` CSV), not only on its exit code.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use waswitch::config::{Config, StoreUrl};
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

/// Runs `calls` calls of a scenario at `rate` cps against `target`; bounded in count and time.
fn run_sipp(
    scenario_file: &str,
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
        .args(["-s", "4930123456"])
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

fn start_node(rt: &tokio::runtime::Runtime, dir: &Path) -> Node {
    rt.block_on(async {
        let mut config = Config::from_toml(Path::new("sipp.toml"), "", |_| None).expect("config");
        config.http.listen = "127.0.0.1:0".parse().expect("addr");
        config.sip.listen = "127.0.0.1:0".parse().expect("addr");
        config.store.url = StoreUrl::Sqlite(dir.join("s.db").to_string_lossy().into_owned());
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
    let (code, counters, log) = run_sipp("options_uac.xml", target, 300, 150);
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        counters.get("SuccessfulCall(C)"),
        Some(&300),
        "{counters:?}\n{log}"
    );
    assert_eq!(counters.get("FailedCall(C)"), Some(&0), "{counters:?}");
    rt.block_on(node.drain_and_stop());
}

#[test]
fn sipp_invite_without_route_gets_404_and_the_ack_is_absorbed() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(&rt, dir.path());
    let target = node.sip_udp_addr().expect("SIP UDP");
    let (code, counters, log) = run_sipp("invite_no_route_uac.xml", target, 200, 100);
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        counters.get("SuccessfulCall(C)"),
        Some(&200),
        "{counters:?}\n{log}"
    );
    assert_eq!(counters.get("FailedCall(C)"), Some(&0), "{counters:?}");
    // Our 404 was acknowledged: no 404 retransmissions reached SIPp as unexpected messages.
    assert_eq!(
        counters.get("FailedUnexpectedMessage(C)"),
        Some(&0),
        "{counters:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    rt.block_on(node.drain_and_stop());
}
