//! A lean RTP load generator for relays: N calls of 20 ms G.711 both ways through waswitch's
//! media shards (in this process) or through an rtpengine daemon (over its NG protocol), with
//! the same streams. Packets are sent and received in batches (sendmmsg/recvmmsg) from two
//! sockets, the caller side and the callee side of every call, so the generator stays small
//! next to the relay it measures. Each payload carries its send time, so latency is measured
//! on return; loss is what was sent and never came back.
//!
//!   cargo run --release --example rtp-load -- waswitch  CALLS SECONDS [SHARDS]
//!   cargo run --release --example rtp-load -- rtpengine CALLS SECONDS NG_ADDR PID
//!
//! Prints one `key=value` line: relayed packets per second, relay CPU seconds per million
//! packets, latency p50/p99 (µs), loss, relay RSS per call (KiB).

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use waswitch::media::plane::MediaPlane;
use waswitch::media::ports::PortAllocator;
use waswitch::media::types::{Remote, Side, SourcePolicy};

const PACKET: usize = 172;
const BATCH: usize = 256;
/// Latency histogram: 10 µs buckets up to 200 ms.
const BUCKETS: usize = 20_000;

fn usage() -> ! {
    eprintln!(
        "usage: rtp-load waswitch CALLS SECONDS [SHARDS]\n       rtp-load rtpengine CALLS SECONDS NG_ADDR PID"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(calls), Some(seconds)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<usize>().ok()),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        usage()
    };
    let caller = socket();
    let callee = socket();
    let caller_addr = caller.local_addr().unwrap_or_else(|e| fail(&e.to_string()));
    let callee_addr = callee.local_addr().unwrap_or_else(|e| fail(&e.to_string()));
    let rss_before;
    let cpu: Box<dyn Fn() -> f64>;
    let rss: Box<dyn Fn() -> u64>;
    let mut _plane = None;
    let mut _pairs = Vec::new();
    // For each call: where the caller sends, where the callee sends.
    let mut targets: Vec<(SocketAddr, SocketAddr)> = Vec::with_capacity(calls);
    match mode.as_str() {
        "waswitch" => {
            let shards = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
            rss_before = rss_of("self");
            let ports = PortAllocator::new(20_000, 20_000 + (calls as u16) * 8 + 64);
            let plane = MediaPlane::start(
                "127.0.0.1".parse().unwrap_or_else(|_| fail("ip")),
                ports,
                shards,
                SourcePolicy::Strict,
                Duration::from_secs(3600),
            )
            .unwrap_or_else(|e| fail(&e.to_string()));
            for _ in 0..calls {
                let pair = plane
                    .add_pair(std::sync::Arc::new(|_| {}))
                    .unwrap_or_else(|e| fail(&e.to_string()));
                let remote = |addr| Remote {
                    addr: Some(addr),
                    rtcp_mux: false,
                    clock: 8000,
                    dtmf_pt: None,
                    dtmf_clock: 8000,
                    sends: true,
                    codec_pt: Some(0),
                    codec: None,
                };
                pair.set_remote(Side::A, remote(caller_addr))
                    .unwrap_or_else(|e| fail(&e.to_string()));
                pair.set_remote(Side::B, remote(callee_addr))
                    .unwrap_or_else(|e| fail(&e.to_string()));
                let [a, b] = pair.ports();
                targets.push((
                    SocketAddr::from(([127, 0, 0, 1], a)),
                    SocketAddr::from(([127, 0, 0, 1], b)),
                ));
                _pairs.push(pair);
            }
            _plane = Some(plane);
            cpu = Box::new(|| threads_cpu("self", "media-"));
            rss = Box::new(|| rss_of("self"));
        }
        "rtpengine" => {
            let (Some(ng_addr), Some(pid)) = (
                args.get(3).and_then(|s| s.parse::<SocketAddr>().ok()),
                args.get(4).cloned(),
            ) else {
                usage()
            };
            rss_before = rss_of(&pid);
            let ng_socket = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&e.to_string()));
            ng_socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap_or_else(|e| fail(&e.to_string()));
            for i in 0..calls {
                let call_id = format!("load-{i}-{}", std::process::id());
                let offer = ng(
                    &ng_socket,
                    ng_addr,
                    &[
                        ("command", "offer"),
                        ("call-id", &call_id),
                        ("from-tag", "caller"),
                        ("sdp", &sdp(caller_addr.port())),
                    ],
                );
                let answer = ng(
                    &ng_socket,
                    ng_addr,
                    &[
                        ("command", "answer"),
                        ("call-id", &call_id),
                        ("from-tag", "caller"),
                        ("to-tag", "callee"),
                        ("sdp", &sdp(callee_addr.port())),
                    ],
                );
                // The offer as rewritten for the callee names where the callee sends; the
                // answer as rewritten for the caller names where the caller sends.
                targets.push((sdp_port(&answer), sdp_port(&offer)));
            }
            let p1 = pid.clone();
            cpu = Box::new(move || threads_cpu(&p1, ""));
            rss = Box::new(move || rss_of(&pid));
        }
        _ => usage(),
    }
    let rss_per_call_kib = rss().saturating_sub(rss_before) as f64 / calls.max(1) as f64;

    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let receivers: Vec<_> = [&caller, &callee]
        .into_iter()
        .map(|s| {
            let s = s.try_clone().unwrap_or_else(|e| fail(&e.to_string()));
            let stop = Arc::clone(&stop);
            let received = Arc::clone(&received);
            std::thread::spawn(move || receive(&s, epoch, &stop, &received))
        })
        .collect();
    // Warm-up second (sockets, caches), then the measured window.
    let sent_warm = send_for(&caller, &callee, &targets, epoch, Duration::from_secs(1), 0);
    std::thread::sleep(Duration::from_millis(100));
    let received_warm = received.load(Ordering::Relaxed);
    let cpu0 = cpu();
    let t0 = Instant::now();
    let sent = send_for(
        &caller,
        &callee,
        &targets,
        epoch,
        Duration::from_secs(seconds),
        sent_warm.1,
    );
    std::thread::sleep(Duration::from_millis(300));
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu_s = cpu() - cpu0;
    stop.store(true, Ordering::Relaxed);
    let mut hist = vec![0u64; BUCKETS];
    for r in receivers {
        if let Ok(h) = r.join() {
            for (a, b) in hist.iter_mut().zip(h) {
                *a += b;
            }
        }
    }
    let got = received.load(Ordering::Relaxed) - received_warm;
    let pct = |q: f64| {
        let total: u64 = hist.iter().sum();
        let want = (total as f64 * q).ceil() as u64;
        let mut acc = 0;
        for (i, n) in hist.iter().enumerate() {
            acc += n;
            if acc >= want {
                return i * 10;
            }
        }
        BUCKETS * 10
    };
    let loss = sent.0.saturating_sub(got);
    let mut out = BTreeMap::new();
    out.insert("mode", mode.clone());
    out.insert("calls", calls.to_string());
    out.insert("sent", sent.0.to_string());
    out.insert("relayed", got.to_string());
    out.insert("loss", loss.to_string());
    out.insert(
        "loss_pct",
        format!("{:.3}", 100.0 * loss as f64 / sent.0.max(1) as f64),
    );
    out.insert("pps", format!("{:.0}", got as f64 / elapsed));
    out.insert("cpu_s", format!("{cpu_s:.2}"));
    out.insert(
        "cpu_s_per_mpkt",
        format!("{:.3}", cpu_s / (got.max(1) as f64 / 1e6)),
    );
    out.insert("p50_us", pct(0.50).to_string());
    out.insert("p99_us", pct(0.99).to_string());
    out.insert("rss_kib_per_call", format!("{rss_per_call_kib:.1}"));
    let line: Vec<String> = out.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("{}", line.join(" "));
    if let Some(plane) = _plane {
        drop(_pairs);
        plane.stop();
    }
}

fn fail(why: &str) -> ! {
    eprintln!("rtp-load: {why}");
    std::process::exit(1)
}

fn socket() -> UdpSocket {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap_or_else(|e| fail(&e.to_string()));
    let _ = s.set_recv_buffer_size(16 << 20);
    let _ = s.set_send_buffer_size(16 << 20);
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|_| fail("addr"));
    s.bind(&addr.into())
        .unwrap_or_else(|e| fail(&e.to_string()));
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap_or_else(|e| fail(&e.to_string()));
    s
}

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

fn sdp_port(reply: &str) -> SocketAddr {
    let parsed =
        waswitch::sdp::Sdp::parse(reply.as_bytes()).unwrap_or_else(|e| fail(&e.to_string()));
    parsed
        .audio()
        .ok()
        .flatten()
        .and_then(|a| a.target)
        .unwrap_or_else(|| fail("no audio in rtpengine's SDP"))
}

/// One NG request (bencoded dictionary with string values); returns the reply's `sdp`.
fn ng(socket: &UdpSocket, to: SocketAddr, dict: &[(&str, &str)]) -> String {
    // Keys sorted, as bencode wants; every value a string except `replace`, a list.
    let mut entries: Vec<(String, Vec<u8>)> = dict
        .iter()
        .map(|(k, v)| (k.to_string(), format!("{}:{}", v.len(), v).into_bytes()))
        .collect();
    entries.push(("ICE".into(), b"6:remove".to_vec()));
    entries.push((
        "replace".into(),
        b"l6:origin18:session-connectione".to_vec(),
    ));
    entries.sort();
    let mut body = Vec::from(&b"d"[..]);
    for (k, v) in entries {
        body.extend(format!("{}:{}", k.len(), k).as_bytes());
        body.extend(v);
    }
    body.push(b'e');
    static COOKIE: AtomicU64 = AtomicU64::new(1);
    let cookie = format!(
        "{}-{} ",
        std::process::id(),
        COOKIE.fetch_add(1, Ordering::Relaxed)
    );
    let mut datagram = cookie.clone().into_bytes();
    datagram.extend(body);
    socket
        .send_to(&datagram, to)
        .unwrap_or_else(|e| fail(&e.to_string()));
    let mut buf = vec![0u8; 65_536];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| fail(&format!("NG: {e}")));
    let reply = String::from_utf8_lossy(&buf[..n]).to_string();
    let Some(at) = reply.find("3:sdp") else {
        fail(&format!("NG reply without SDP: {reply}"))
    };
    let rest = &reply[at + 5..];
    let colon = rest.find(':').unwrap_or_else(|| fail("NG reply"));
    let len: usize = rest[..colon].parse().unwrap_or_else(|_| fail("NG reply"));
    rest[colon + 1..colon + 1 + len].to_string()
}

/// Sends 20 ms G.711 both ways on every call for `how_long`; returns (packets sent, next
/// sequence number).
fn send_for(
    caller: &UdpSocket,
    callee: &UdpSocket,
    targets: &[(SocketAddr, SocketAddr)],
    epoch: Instant,
    how_long: Duration,
    first_seq: u16,
) -> (u64, u16) {
    let start = Instant::now();
    let mut tick = 0u32;
    let mut seq = first_seq;
    let mut sent = 0u64;
    let mut packets = vec![[0u8; PACKET]; targets.len()];
    while start.elapsed() < how_long {
        for (dir, socket) in [caller, callee].into_iter().enumerate() {
            let now = epoch.elapsed().as_nanos() as u64;
            for (i, p) in packets.iter_mut().enumerate() {
                let ssrc = (i as u32) * 2 + dir as u32;
                let _ = waswitch::media::rtp::write_packet(
                    p,
                    false,
                    0,
                    seq,
                    u32::from(seq).wrapping_mul(160),
                    ssrc,
                    &[0xd5; 160],
                );
                p[12..20].copy_from_slice(&now.to_be_bytes());
            }
            let dests: Vec<SocketAddr> = targets
                .iter()
                .map(|(a, b)| if dir == 0 { *a } else { *b })
                .collect();
            sent += send_batch(socket, &packets, &dests);
        }
        seq = seq.wrapping_add(1);
        tick += 1;
        let next = start + Duration::from_millis(20) * tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    (sent, seq)
}

fn sockaddr(addr: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(v4) = addr else {
        fail("IPv4 only")
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn send_batch(socket: &UdpSocket, packets: &[[u8; PACKET]], dests: &[SocketAddr]) -> u64 {
    let mut sent = 0u64;
    for (chunk, dest) in packets.chunks(BATCH).zip(dests.chunks(BATCH)) {
        let mut addrs: Vec<libc::sockaddr_in> = dest.iter().map(|d| sockaddr(*d)).collect();
        let mut iovs: Vec<libc::iovec> = chunk
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: zeroed mmsghdr is a valid initial value; pointers below outlive the call.
        let mut msgs: Vec<libc::mmsghdr> = (0..chunk.len())
            .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
            .collect();
        for (i, m) in msgs.iter_mut().enumerate() {
            m.msg_hdr.msg_name = (&mut addrs[i]) as *mut libc::sockaddr_in as *mut libc::c_void;
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            m.msg_hdr.msg_iov = &mut iovs[i];
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut off = 0;
        while off < msgs.len() {
            // SAFETY: msgs[off..] are initialised headers pointing at live buffers.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    msgs[off..].as_mut_ptr(),
                    (msgs.len() - off) as u32,
                    0,
                )
            };
            if n <= 0 {
                break;
            }
            off += n as usize;
        }
        sent += off as u64;
    }
    sent
}

/// Receives until `stop`, counting packets and histogramming latency.
fn receive(
    socket: &UdpSocket,
    epoch: Instant,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> Vec<u64> {
    let mut hist = vec![0u64; BUCKETS];
    let mut bufs = vec![[0u8; 2048]; BATCH];
    while !stop.load(Ordering::Relaxed) {
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: zeroed mmsghdr is a valid initial value; the iovecs outlive the call.
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
            .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
            .collect();
        for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        // SAFETY: msgs point at live buffers; MSG_WAITFORONE returns after the first.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                &mut timeout,
            )
        };
        if n <= 0 {
            continue;
        }
        let now = epoch.elapsed().as_nanos() as u64;
        for (m, b) in msgs.iter().zip(bufs.iter()).take(n as usize) {
            if m.msg_len as usize >= 20 {
                let mut t = [0u8; 8];
                t.copy_from_slice(&b[12..20]);
                let sent_at = u64::from_be_bytes(t);
                let us = now.saturating_sub(sent_at) / 1000;
                hist[((us / 10) as usize).min(BUCKETS - 1)] += 1;
            }
        }
        received.fetch_add(n as u64, Ordering::Relaxed);
    }
    hist
}

/// CPU seconds of the threads of process `pid` whose name starts with `prefix`.
fn threads_cpu(pid: &str, prefix: &str) -> f64 {
    let tck = 100.0; // USER_HZ on Linux
    let mut ticks = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if !comm.starts_with(prefix) {
                continue;
            }
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // Fields after the parenthesised name: utime is field 14, stime 15.
            if let Some(rest) = stat.rsplit(')').next() {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.len() > 12 {
                    ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    ticks as f64 / tck
}

/// Resident memory of process `pid`, KiB.
fn rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
