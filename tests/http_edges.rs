//! The HTTP listener under abuse, against a real switch process: slow headers, slow and
//! stalled bodies and a connection flood are cut at the configured limits, and unsigned or
//! oversized webhook bodies cannot make the switch hold memory. Every connection is on
//! loopback, and every loop is bounded in count and time.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::KillOnDrop;

const SECRET: &str = "edge-secret";
const TOKEN: &str = "edge-token";

/// A switch process with `[http]` settings `http` (and Meta configured, so the webhook
/// route is served).
struct Switch {
    process: KillOnDrop,
    http: String,
    _dir: tempfile::TempDir,
}

impl Switch {
    fn start(http: &str) -> Switch {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = format!("127.0.0.1:{}", common::free_udp_port());
        let config = dir.path().join("w.toml");
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"{addr}\"\napi_token = \"{TOKEN}\"\n{http}\n\
                 [sip]\nlisten = \"127.0.0.1:{}\"\n\
                 [store]\nurl = \"sqlite://{}\"\n\
                 [meta]\ngraph_url = \"http://127.0.0.1:9\"\naccess_token = \"t\"\n\
                 app_secret = \"{SECRET}\"\nverify_token = \"v\"\n\
                 [[business_number]]\nphone_number_id = \"1\"\ndisplay_number = \"15551112222\"\n\
                 country = \"BR\"\necho_test = true\n",
                common::free_udp_port(),
                dir.path().join("w.db").display()
            ),
        )
        .expect("config");
        let process = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_waswitch"))
                .args(["run", "--config"])
                .arg(&config)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn waswitch"),
        );
        let switch = Switch {
            process,
            http: addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while switch.get("/health").is_none() {
            assert!(Instant::now() < deadline, "the switch did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        switch
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.http).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s
    }

    /// A whole GET: its response, or `None` when the connection fails.
    fn get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(&self.http).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// A counter of `waswitch_http_refused_total` for `reason`.
    fn refused(&self, reason: &str) -> u64 {
        let metrics = self.get("/metrics").unwrap_or_default();
        let prefix = format!("waswitch_http_refused_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits (at most 5 s) until at least `n` refusals for `reason` are counted: a
    /// connection is counted by its task just after it closes.
    fn refused_at_least(&self, reason: &str, n: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.refused(reason) >= n {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory of the switch process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.0.id()))
            .expect("process status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

/// How long until the peer closes `s` (reads until EOF or error); `None` if it stays open
/// for `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<(Duration, String)> {
    let start = Instant::now();
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
            Err(_) => break,
        }
        if start.elapsed() > within {
            return None;
        }
    }
    Some((start.elapsed(), String::from_utf8_lossy(&got).into_owned()))
}

#[test]
fn slow_headers_are_cut_at_the_header_timeout() {
    let sw = Switch::start("header_timeout_secs = 1\nidle_timeout_secs = 30\n");
    let mut conns: Vec<TcpStream> = (0..50).map(|_| sw.connect()).collect();
    // Each trickles a request head a byte at a time, never finishing it.
    for step in 0..4 {
        for c in conns.iter_mut() {
            let _ = c.write_all(&b"GET /health HTTP/1.1\r\n"[step..step + 1]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (k, c) in conns.iter_mut().enumerate() {
        let closed = closed_within(c, Duration::from_secs(5));
        assert!(closed.is_some(), "connection {k} still open");
    }
    assert!(sw.refused_at_least("header_timeout", 50), "header_timeout");
    // The listener serves on.
    assert!(sw
        .get("/health")
        .is_some_and(|r| r.starts_with("HTTP/1.1 200")));
}

#[test]
fn a_slow_body_gets_408_and_a_stalled_one_is_closed_at_the_idle_timeout() {
    let sw = Switch::start("body_timeout_secs = 1\nidle_timeout_secs = 30\n");
    let mut slow = sw.connect();
    write!(
        slow,
        "PUT /v1/dnc/15551112222/4915100000001 HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{"
    )
    .expect("head");
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        let _ = slow.write_all(b" ");
    }
    let (_, response) = closed_within(&mut slow, Duration::from_secs(5)).expect("closed");
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(sw.refused_at_least("body_timeout", 1), "body_timeout");

    let sw = Switch::start("body_timeout_secs = 30\nidle_timeout_secs = 1\n");
    let mut stalled = sw.connect();
    write!(
        stalled,
        "PUT /v1/dnc/15551112222/4915100000001 HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{"
    )
    .expect("head");
    let (after, _) = closed_within(&mut stalled, Duration::from_secs(5)).expect("closed");
    assert!(after < Duration::from_secs(5), "{after:?}");
    assert!(sw.refused_at_least("idle_timeout", 1));
}

#[test]
fn connections_beyond_the_limit_are_closed_at_once() {
    let sw = Switch::start("max_connections = 5\nheader_timeout_secs = 30\n");
    let held: Vec<TcpStream> = (0..5).map(|_| sw.connect()).collect();
    // Let the switch take all five.
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = sw.connect();
    let closed = closed_within(&mut extra, Duration::from_secs(3));
    assert!(
        closed.as_ref().is_some_and(|(_, r)| r.is_empty()),
        "{closed:?}"
    );
    drop(held);
    // Room again once they are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sw.get("/health").is_none() {
        assert!(
            Instant::now() < deadline,
            "no room after the connections closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        sw.refused_at_least("connection_limit", 1),
        "connection_limit"
    );
}

/// A POST to the webhook route with `signature` (if any) and a body of `len` bytes, sent
/// after the head only when the switch has not answered yet: the status, and how many body
/// bytes were written before the answer came.
fn webhook_post(sw: &Switch, signature: Option<&str>, len: usize, chunked: bool) -> (u16, usize) {
    let mut s = sw.connect();
    let mut head =
        "POST /webhooks/meta HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".to_string();
    if let Some(sig) = signature {
        head.push_str(&format!("X-Hub-Signature-256: {sig}\r\n"));
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("Content-Length: {len}\r\n\r\n"));
    }
    s.write_all(head.as_bytes()).expect("head");
    s.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                if response.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        if sent < len {
            let piece = &chunk[..chunk.len().min(len - sent)];
            let framed = if chunked {
                let mut f = format!("{:x}\r\n", piece.len()).into_bytes();
                f.extend_from_slice(piece);
                f.extend_from_slice(b"\r\n");
                f
            } else {
                piece.to_vec()
            };
            match s.write(&framed) {
                Ok(n) if n == framed.len() => sent += piece.len(),
                Ok(_) | Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, sent)
}

/// Sends only the head of a webhook POST announcing a body of `len` bytes: the answer's
/// first line, which can only come before the body was read.
fn answer_to_head(sw: &Switch, signature: Option<&str>, len: usize) -> String {
    let mut s = sw.connect();
    let mut head = format!("POST /webhooks/meta HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n");
    if let Some(sig) = signature {
        head.push_str(&format!("X-Hub-Signature-256: {sig}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("head");
    let (_, answer) = closed_within(&mut s, Duration::from_secs(5)).expect("answered and closed");
    answer.lines().next().unwrap_or("").to_string()
}

#[test]
fn unsigned_and_oversized_webhooks_are_refused_before_their_body_is_read() {
    let sw = Switch::start("webhook_concurrency = 2\n");
    const BIG: usize = 15 * 1024 * 1024;
    // No signature: 401 without a byte of the body.
    assert_eq!(answer_to_head(&sw, None, BIG), "HTTP/1.1 401 Unauthorized");
    // A signature, but a Content-Length over the limit: 413 without a byte of the body.
    let forged = format!("sha256={}", "ab".repeat(32));
    assert_eq!(
        answer_to_head(&sw, Some(&forged), BIG),
        "HTTP/1.1 413 Payload Too Large"
    );
    // Chunked, no length: 413 once the limit is passed.
    let (status, _) = webhook_post(&sw, Some(&forged), BIG, true);
    assert_eq!(status, 413);
    assert!(sw.refused_at_least("body_too_large", 2), "body_too_large");
    // A signed body that fits is read and judged on its signature.
    let (status, _) = webhook_post(&sw, Some(&forged), 1000, false);
    assert_eq!(status, 401);
}

/// The probe of the hardening issue: sixty 15 MB webhook POSTs at once, unsigned or with a
/// forged signature, against a switch that must stay within a documented bound (64 MiB over
/// idle) and come back to idle after. The figures are printed.
#[test]
fn sixty_parallel_fifteen_megabyte_webhooks_leave_memory_bounded() {
    let sw = Switch::start("");
    // Warm up: the first requests allocate what every later one reuses.
    for _ in 0..5 {
        let _ = sw.get("/metrics");
    }
    std::thread::sleep(Duration::from_millis(300));
    let idle = sw.rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        let pid = sw.process.0.id();
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let rss: u64 = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                        .unwrap_or(0);
                    peak.fetch_max(rss, std::sync::atomic::Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    const BIG: usize = 15 * 1024 * 1024;
    let forged = format!("sha256={}", "cd".repeat(32));
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..60)
            .map(|k| {
                let sw = &sw;
                let forged = forged.clone();
                scope.spawn(move || match k % 3 {
                    0 => webhook_post(sw, None, BIG, false).0,
                    1 => webhook_post(sw, Some(&forged), BIG, false).0,
                    _ => webhook_post(sw, Some(&forged), BIG, true).0,
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.join().expect("sampler");
    std::thread::sleep(Duration::from_secs(1));
    let after = sw.rss_kib();
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "RSS: idle {} KiB, peak {} KiB (+{} KiB), after {} KiB (+{} KiB); answers {:?}",
        idle,
        peak,
        peak.saturating_sub(idle),
        after,
        after.saturating_sub(idle),
        {
            let mut s = statuses.clone();
            s.sort_unstable();
            s.dedup();
            s
        }
    );
    assert!(
        statuses.iter().all(|s| [401, 413, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(
        peak.saturating_sub(idle) < 64 * 1024,
        "peak {peak} KiB over idle {idle} KiB"
    );
    assert!(
        after.saturating_sub(idle) < 16 * 1024,
        "after {after} KiB over idle {idle} KiB"
    );
}
