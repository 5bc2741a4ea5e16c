//! Helpers shared by the integration tests that drive SIPp against a running node.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod agent;
pub mod chromium;
pub mod pg;

use waswitch::config::Config;
use waswitch::node::Node;

pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("loadtest/sipp")
        .join(name)
}

pub fn free_udp_port() -> u16 {
    free_udp_ports(1)
}

/// A port free for TCP as well (the reservation skips ports held either way), below the
/// kernel's ephemeral range.
pub fn free_tcp_port() -> u16 {
    free_udp_ports(1)
}

/// The first of `n` consecutive free ports, all reserved (SIPp's media uses its `-mp` port
/// and the three after it: audio RTP and RTCP, video RTP and RTCP).
pub fn free_udp_ports(n: u16) -> u16 {
    // Ports for SIPp come from 10000-19999, below the kernel's ephemeral range: a port the
    // kernel hands out for "port 0" could be given again to another test's socket before
    // SIPp binds it. Test processes (nextest runs one per test, several at once) reserve
    // each port they hand out with a file named by it, created exclusively and holding the
    // owner's process id; a file whose owner has exited is taken over. A port something
    // already holds (UDP or TCP) is skipped.
    let dir = std::env::temp_dir().join("waswitch-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let me = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut x = (u64::from(me) << 32 | u64::from(nanos)) | 1;
    let n = n.max(1);
    for _ in 0..5_000 {
        // xorshift64: a different walk through the range per process.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 10_000 + ((x % u64::from(10_000 / n)) as u16) * n;
        let mut taken = Vec::new();
        for port in base..base + n {
            if in_use(port) || !reserve(&dir, port, me) {
                break;
            }
            taken.push(port);
        }
        if taken.len() == usize::from(n) {
            return base;
        }
        for port in taken {
            let _ = std::fs::remove_file(dir.join(port.to_string()));
        }
    }
    panic!("no {n} free ports for SIPp in 10000-19999");
}

/// Reserves `port` for this process: its file created exclusively, or taken over from an
/// owner that has exited.
fn reserve(dir: &Path, port: u16, me: u32) -> bool {
    let path = dir.join(port.to_string());
    let create = |path: &Path| {
        std::fs::File::create_new(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, me.to_string().as_bytes()))
            .is_ok()
    };
    if create(&path) {
        return true;
    }
    let owner = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if owner.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()) {
        return false;
    }
    // Its owner is gone: take the reservation over (remove, then create exclusively, so of
    // two processes doing this at once only one wins).
    let _ = std::fs::remove_file(&path);
    create(&path)
}

/// Counters from the last row of a SIPp `-trace_stat` CSV.
pub fn sipp_counters(csv: &Path) -> std::collections::HashMap<String, u64> {
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
pub fn run_sipp(
    scenario_file: &str,
    transport: &str,
    target: std::net::SocketAddr,
    calls: u32,
    rate: u32,
) -> (i32, std::collections::HashMap<String, u64>, String) {
    run_sipp_with(scenario_file, transport, target, calls, rate, &[])
}

/// [`run_sipp`] with extra SIPp arguments (e.g. `-set name value`).
pub fn run_sipp_with(
    scenario_file: &str,
    transport: &str,
    target: std::net::SocketAddr,
    calls: u32,
    rate: u32,
    extra: &[&str],
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
        .args(["-mp", &free_udp_ports(4).to_string()])
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
        .args(extra)
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
pub fn assert_all_succeeded(
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

pub fn start_node(rt: &tokio::runtime::Runtime, dir: &Path) -> Node {
    rt.block_on(async {
        let config = Config::loopback("", &dir.join("s.db")).expect("config");
        Node::start(config).await.expect("node")
    })
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A child process that is killed when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Kills the process and reaps it.
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether any local UDP or TCP socket, on any address, holds `port` (from /proc/net).
fn in_use(port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    [
        "/proc/net/udp",
        "/proc/net/tcp",
        "/proc/net/udp6",
        "/proc/net/tcp6",
    ]
    .iter()
    .flat_map(|t| {
        std::fs::read_to_string(t)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect::<Vec<_>>()
    })
    .any(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|local| local.ends_with(&suffix))
    })
}

/// Whether something listens on 127.0.0.1:`port` (TCP, or a bound UDP socket), read from
/// /proc/net without touching the port.
pub fn listening(port: u16, tcp: bool) -> bool {
    let table = if tcp {
        "/proc/net/tcp"
    } else {
        "/proc/net/udp"
    };
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string(table)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address, rem_address, st (0A: TCP LISTEN; UDP sockets show 07).
            f.len() > 3 && f[1] == local && (!tcp || f[3] == "0A")
        })
}

/// A SIPp callee (uas) on 127.0.0.1:`port` that serves `calls` calls of a scenario and then
/// exits; its counters are read with [`Uas::finish`].
pub struct Uas {
    process: KillOnDrop,
    stats: PathBuf,
    _dir: tempfile::TempDir,
}

impl Uas {
    /// Starts `scenario_file` over `transport` (`u1`, `t1`) on `port`.
    pub fn start(scenario_file: &str, transport: &str, port: u16, calls: u32) -> Uas {
        Self::start_with(scenario_file, transport, port, calls, &[])
    }

    /// [`Uas::start`] with extra SIPp arguments (e.g. `-rtp_echo`).
    pub fn start_with(
        scenario_file: &str,
        transport: &str,
        port: u16,
        calls: u32,
        extra: &[&str],
    ) -> Uas {
        let dir = tempfile::tempdir().expect("tempdir");
        let stats = dir.path().join("uas.csv");
        let child = Command::new("timeout")
            .arg("90")
            .arg("sipp")
            .arg("-sf")
            .arg(scenario(scenario_file))
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-bind_local"])
            .args(["-mi", "127.0.0.1", "-mp", &free_udp_ports(4).to_string()])
            .args(["-ci", "127.0.0.1", "-cp", &free_udp_port().to_string()])
            .args(["-t", transport, "-m", &calls.to_string()])
            .args(["-nostdin", "-timeout", "60s", "-timeout_error"])
            .args(["-trace_stat", "-fd", "1", "-stf"])
            .arg(&stats)
            .args(extra)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sipp runs (Debian package sip-tester; .ci/run installs it)");
        // Calls must not arrive before SIPp listens: wait until its port is taken.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let bound = |port: u16| listening(port, matches!(transport, "t1" | "tn"));
        while !bound(port) {
            assert!(
                std::time::Instant::now() < deadline,
                "SIPp did not start listening on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Uas {
            process: KillOnDrop(child),
            stats,
            _dir: dir,
        }
    }

    /// Waits (bounded) for the uas to serve its calls and exit; its exit code and counters.
    pub fn finish(mut self) -> (Option<i32>, std::collections::HashMap<String, u64>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let code = loop {
            match self.process.0.try_wait() {
                Ok(Some(status)) => break status.code(),
                _ if std::time::Instant::now() > deadline => {
                    // Soft exit: SIPp writes its final statistics row on SIGUSR1.
                    let _ = Command::new("kill")
                        .args(["-USR1", &self.process.0.id().to_string()])
                        .status();
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    break None;
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        };
        (code, sipp_counters(&self.stats))
    }
}

/// A REST API request with the bearer `token`: the status, and the body as JSON (or as a
/// JSON string when it is not JSON).
pub async fn api(
    http: &reqwest::Client,
    url: String,
    token: &str,
    method: reqwest::Method,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Runs the calling test `test` of this binary again inside `unshare -n`, a network
/// namespace with nothing but loopback (so it needs root), and checks that it passed there.
/// True in the process inside the namespace, which then does the test's work.
pub fn in_own_netns(test: &str) -> bool {
    if std::env::var_os("WASWITCH_TEST_IN_NETNS").is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("unshare")
        .args([
            "-n",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$1\" --exact --nocapture",
        ])
        .arg(&exe)
        .arg(test)
        .env("WASWITCH_TEST_IN_NETNS", "1")
        .output()
        .expect("unshare (util-linux) runs; the test needs root for a network namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the test inside the namespace failed or did not run:\n{stdout}\n{stderr}"
    );
    false
}

/// The Prometheus text of the node serving HTTP at `http`.
pub async fn metrics_text(http: impl std::fmt::Display) -> String {
    reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The sim's context on loopback: Meta's side of business number `number` (Meta's id
/// `pnid`), its webhooks signed with `secret` and sent to the switch at `http`.
pub fn sim_context(
    graph: &waswitch::sim::graph::SimGraph,
    http: impl std::fmt::Display,
    secret: &str,
    pnid: &str,
    number: &str,
) -> waswitch::sim::load::SimContext {
    let webhooks = waswitch::sim::webhooks::WebhookSender::new(
        &format!("http://{http}/webhooks/meta"),
        waswitch::config::Secret::new(secret),
        std::time::Duration::from_secs(10),
    )
    .expect("sender");
    waswitch::sim::load::SimContext::loopback(
        graph.clone(),
        webhooks,
        waswitch::sim::webhooks::BusinessRef {
            waba_id: "1".into(),
            phone_number_id: pnid.into(),
            display_number: number.into(),
        },
    )
}

/// What a webhook receiver got: the timestamp and signature headers and the body of each
/// request, in order.
pub type Posted = std::sync::Arc<std::sync::Mutex<Vec<(u64, String, Vec<u8>)>>>;

/// A webhook receiver on loopback (`POST /hooks`): its URL and what it got. With
/// `refuse_first` the first request is answered 503, so the sender must retry.
pub async fn webhook_sink(refuse_first: bool) -> (String, Posted) {
    let (url, got, _) = sink(refuse_first, None).await;
    (url, got)
}

/// A webhook receiver on loopback that answers 503 while its gate (the flag returned,
/// closed at first) is closed, and 200 once it is open: its URL, what it got, the gate.
pub async fn webhook_gate() -> (
    String,
    Posted,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let gate = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, got, _) = sink(false, Some(gate.clone())).await;
    (url, got, gate)
}

async fn sink(
    refuse_first: bool,
    gate: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> (String, Posted, ()) {
    use axum::http::{HeaderMap, StatusCode};
    let got: Posted = Default::default();
    let kept = got.clone();
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let kept = kept.clone();
            let gate = gate.clone();
            async move {
                let header = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let ts = header("x-waswitch-timestamp").parse().unwrap_or(0);
                if let Some(gate) = &gate {
                    if !gate.load(std::sync::atomic::Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                }
                let mut all = kept.lock().expect("sink");
                all.push((ts, header("x-waswitch-signature"), body.to_vec()));
                if refuse_first && all.len() == 1 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
    tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener, app,
    )));
    (url, got, ())
}

/// The CDR of Meta's call `wa_call_id` among `cdrs`.
pub fn cdr_of<'a>(cdrs: &'a [waswitch::store::Cdr], wa_call_id: &str) -> &'a waswitch::store::Cdr {
    cdrs.iter()
        .find(|c| c.wa_call_id.as_deref() == Some(wa_call_id))
        .unwrap_or_else(|| panic!("no CDR for {wa_call_id} in {cdrs:?}"))
}

/// Waits for `node`'s calls to end, drains and stops it, and reads the CDRs its SQLite
/// store at `db` holds.
pub fn cdrs_after(
    rt: &tokio::runtime::Runtime,
    node: Node,
    db: &Path,
) -> Vec<waswitch::store::Cdr> {
    use waswitch::store::CdrRepository;
    rt.block_on(async {
        assert!(
            node.calls()
                .wait_idle(std::time::Duration::from_secs(20))
                .await,
            "calls left over"
        );
        node.drain_and_stop().await;
        let config = Config::loopback("", db).expect("config");
        let store = waswitch::store::Store::open(&config.store)
            .await
            .expect("store");
        store
            .list(&waswitch::store::CdrFilter {
                limit: 100,
                ..waswitch::store::CdrFilter::default()
            })
            .await
            .expect("cdrs")
    })
}

/// A mono 16-bit PCM WAV file of `seconds` of a `hz` tone at `rate`.
pub fn write_tone_wav(path: &std::path::Path, hz: f64, rate: u32, seconds: u32) {
    let n = rate * seconds;
    let mut wav = Vec::with_capacity(44 + 2 * n as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + 2 * n).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(2 * rate).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(2 * n).to_le_bytes());
    for k in 0..n {
        let t = f64::from(k) / f64::from(rate);
        let s = ((2.0 * std::f64::consts::PI * hz * t).sin() * 8000.0) as i16;
        wav.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, wav).expect("tone file");
}

/// The samples and rate of a 16-bit PCM WAV file (first channel).
pub fn read_wav(path: &std::path::Path) -> (Vec<f32>, f32) {
    let bytes = std::fs::read(path).expect("recording");
    assert!(bytes.len() > 44 && &bytes[0..4] == b"RIFF", "a WAV file");
    let (mut at, mut rate, mut channels) = (12, 0u32, 1usize);
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        if id == b"fmt " && body.len() >= 16 {
            channels = usize::from(u16::from_le_bytes([body[2], body[3]])).max(1);
            rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
        }
        if id == b"data" {
            let samples = body
                .chunks_exact(2 * channels)
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
                .collect();
            return (samples, rate as f32);
        }
        at += 8 + len + (len & 1);
    }
    panic!("no data chunk in {}", path.display());
}

/// baresip on 127.0.0.1:`port` answering every call to `account` (an accounts line
/// without its address, e.g. `;audio_codecs=PCMU`), playing a 1 kHz tone from `work` and
/// recording what it decodes there (`dump-…-dec.wav`), its RTP on `rtp_ports`, with
/// `modules` loaded besides g711, aufile, aubridge and sndfile; started and ready. The
/// process, and where it logs.
pub fn start_baresip(
    work: &Path,
    port: u16,
    rtp_ports: &str,
    modules: &[&str],
    account: &str,
) -> (KillOnDrop, PathBuf) {
    start_baresip_with(work, port, rtp_ports, modules, "agent", account, "")
}

/// [`start_baresip`] as SIP user `user`, with `extra` lines in its configuration (e.g.
/// `sip_certificate`, which makes it listen for TLS on `port + 1`).
pub fn start_baresip_with(
    work: &Path,
    port: u16,
    rtp_ports: &str,
    modules: &[&str],
    user: &str,
    account: &str,
    extra_config: &str,
) -> (KillOnDrop, PathBuf) {
    let conf = work.join("conf");
    std::fs::create_dir_all(&conf).expect("conf dir");
    write_tone_wav(&work.join("tone.wav"), 1000.0, 8000, 30);
    let w = work.display();
    let extra: String = modules.iter().map(|m| format!("module {m}\n")).collect();
    std::fs::write(
        conf.join("config"),
        format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{port}\nnet_interface 127.0.0.1\n\
             rtp_ports {rtp_ports}\ncall_local_timeout 120\ncall_max_calls 4\n\
             audio_player aubridge,null\naudio_source aufile,{w}/tone.wav\n\
             audio_alert aubridge,null\nausrc_format s16\nauplay_format s16\n\
             module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\n\
             module aubridge.so\nmodule sndfile.so\n{extra}snd_path {w}\nrtp_stats yes\n\
             module_tmp uuid.so\nmodule_tmp account.so\n{extra_config}"
        ),
    )
    .expect("baresip config");
    std::fs::write(
        conf.join("accounts"),
        format!("<sip:{user}@127.0.0.1:{port}>;regint=0;answermode=auto{account}\n"),
    )
    .expect("baresip accounts");
    let log_path = work.join("baresip.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let child = Command::new("baresip")
        .arg("-f")
        .arg(&conf)
        .args(["-n", "127.0.0.1", "-t", "60"])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("baresip (Debian package baresip) is needed");
    let baresip = KillOnDrop(child);
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("baresip is ready") {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "baresip did not start: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (baresip, log_path)
}

/// baresip's recording (sndfile) of what it decoded in a call, in `work`.
pub fn baresip_recording(work: &Path) -> Option<PathBuf> {
    std::fs::read_dir(work)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("dump-") && n.ends_with("-dec.wav"))
        })
}
