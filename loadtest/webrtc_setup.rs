//! WebRTC leg setup cost: how many legs one core sets up per second (ICE + DTLS), and how
//! much memory a connected leg holds.
//!
//!   cargo run --release --example webrtc-setup -- [LEGS]        (default 500)
//!
//! Each of our legs answers an offer from a str0m peer configured as Meta is (ICE-lite,
//! DTLS `actpass`); datagrams pass between the two in memory with a virtual clock, so only
//! protocol work is measured. CPU time is counted inside our leg's calls only (building it,
//! answering, handling input and timeouts, polling), not the peer's. Memory per leg is the
//! heap the connected legs hold: a counting allocator measures what is freed when they are
//! released, the peers kept (resident memory is printed too, for both sides together).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use waswitch::media::webrtc::{LegOutput, WebRtcLeg};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Sets up one leg against one ICE-lite peer; returns both, connected, and the CPU time
/// spent in our leg.
fn setup(n: u32, start: Instant) -> (WebRtcLeg, Rtc, Duration) {
    let ours: SocketAddr = SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 40_000));
    let theirs: SocketAddr = SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 3_484));
    let mut now = start;
    // Meta's offers carry no RTP header extensions.
    let mut peer = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .clear_extension_map()
        .enable_opus(true)
        .build(now);
    peer.add_local_candidate(Candidate::host(theirs, "udp").expect("candidate"));
    let mut change = peer.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = change.apply().expect("offer");
    let offer = offer.to_sdp_string();

    let mut spent = Duration::ZERO;
    let t = Instant::now();
    let mut leg = WebRtcLeg::accept_offer(&offer, ours, now).expect("answer");
    let answer = leg.local_sdp().to_string();
    spent += t.elapsed();
    peer.sdp_api()
        .accept_answer(
            pending,
            SdpAnswer::from_sdp_string(&answer).expect("answer"),
        )
        .expect("accepted");

    let (mut to_peer, mut to_leg): (VecDeque<Vec<u8>>, VecDeque<Vec<u8>>) = Default::default();
    let (mut leg_up, mut peer_up) = (false, false);
    for _ in 0..10_000 {
        let t = Instant::now();
        let leg_next = loop {
            match leg.poll().expect("poll") {
                LegOutput::Timeout(at) => break at,
                LegOutput::Transmit { data, .. } => to_peer.push_back(data),
                LegOutput::Connected => leg_up = true,
                _ => {}
            }
        };
        spent += t.elapsed();
        let peer_next = loop {
            match peer.poll_output().expect("peer") {
                Output::Timeout(at) => break at,
                Output::Transmit(tx) => to_leg.push_back(tx.contents.to_vec()),
                Output::Event(Event::Connected) => peer_up = true,
                Output::Event(_) => {}
            }
        };
        if leg_up && peer_up {
            return (leg, peer, spent);
        }
        if to_peer.is_empty() && to_leg.is_empty() {
            // Nothing in flight: the virtual clock jumps to the next timer.
            now = now.max(leg_next.min(peer_next));
            let t = Instant::now();
            leg.handle_timeout(now).expect("timeout");
            spent += t.elapsed();
            peer.handle_input(Input::Timeout(now))
                .expect("peer timeout");
            continue;
        }
        while let Some(d) = to_peer.pop_front() {
            let input = Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source: ours,
                    destination: theirs,
                    contents: d.as_slice().try_into().expect("datagram"),
                },
            );
            peer.handle_input(input).expect("peer input");
        }
        let t = Instant::now();
        while let Some(d) = to_leg.pop_front() {
            leg.handle_receive(now, theirs, &d).expect("leg input");
        }
        spent += t.elapsed();
    }
    panic!("leg {n} did not connect");
}

fn main() {
    let legs: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    // Warm up (first use of the crypto provider, allocator growth).
    let _ = setup(65_000, Instant::now());
    let before = rss_kib();
    let mut spent = Duration::ZERO;
    let wall = Instant::now();
    let mut ours = Vec::with_capacity(legs as usize);
    let mut peers = Vec::with_capacity(legs as usize);
    for n in 0..legs {
        let (leg, peer, s) = setup(n, Instant::now());
        spent += s;
        ours.push(leg);
        peers.push(peer);
    }
    let wall = wall.elapsed();
    let with_legs = rss_kib();
    let live_with = LIVE.load(Ordering::Relaxed);
    drop(ours);
    let live_without = LIVE.load(Ordering::Relaxed);
    let per_leg_kib = live_with.saturating_sub(live_without) as f64 / 1024.0 / f64::from(legs);
    println!(
        "legs={legs} our_cpu_per_setup_ms={:.3} setups_per_s_per_core={:.0} \
         wall_s={:.2} (both sides) rss_before_kib={before} rss_connected_kib={with_legs} (both sides) \
         heap_kib_per_connected_leg={per_leg_kib:.1}",
        spent.as_secs_f64() * 1000.0 / f64::from(legs),
        f64::from(legs) / spent.as_secs_f64(),
        wall.as_secs_f64(),
    );
    drop(peers);
}
