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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "webrtc_pair.rs"]
#[allow(dead_code)]
mod webrtc_pair;
use webrtc_pair::setup;

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
        let c = setup(n, Instant::now());
        let (leg, peer, s) = (c.leg, c.peer, c.our_cpu);
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
