//! RTP port allocation: even ports from the configured range, RTCP on the next odd port.
//!
//! A port is held by a [`PortLease`] and returns to the pool when the lease is dropped, so a
//! call that ends in any way (including a panicking actor, whose state is dropped while
//! unwinding) gives its ports back. Released ports go to the back of the queue: a port is
//! reused as late as possible, so stray packets of an ended call never reach a new one.
//!
//! A lease given back with its sockets still bound ([`PortLease::give_back`]) keeps them: the
//! next call on that port takes them as they are, with no socket, bind, option or close
//! system call (a call's four sockets cost some 40 of them to make and to close). Such a
//! pair is handed out again only once it has rested [`REST`] (or when no other port is
//! free), and at most [`KEEP_BOUND`] pairs are kept (fewer under a low open-file limit);
//! whatever a kept socket received while it rested is dropped before it is used again.

use std::collections::VecDeque;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a kept pair rests before another call takes it: longer than a peer that hung up
/// goes on sending.
pub const REST: Duration = Duration::from_secs(1);

/// Most pairs kept bound between calls (two sockets each), and never more than an eighth
/// of the process's open-file limit in pairs (a quarter of it in sockets): the calls' own
/// sockets, SIP and HTTP connections and the store need the rest.
pub const KEEP_BOUND: usize = 4096;

/// [`KEEP_BOUND`], within the process's soft open-file limit (read from
/// `/proc/self/limits`; 1024 assumed where it cannot be read).
fn keep_within_file_limit() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    KEEP_BOUND.min(soft / 8)
}

/// The pool of RTP ports of one node. Cheap to clone; used at call setup, never per packet.
#[derive(Clone, Debug)]
pub struct PortAllocator {
    pool: Arc<Mutex<Pool>>,
}

#[derive(Debug)]
struct Pool {
    free: VecDeque<u16>,
    /// Pairs given back still bound, oldest first.
    bound: VecDeque<Bound>,
    total: usize,
    rest: Duration,
    keep: usize,
}

#[derive(Debug)]
struct Bound {
    port: u16,
    sockets: (UdpSocket, UdpSocket),
    since: Instant,
}

/// All ports of the range are leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no free RTP port: all {total} port pairs are in use")]
pub struct PortsExhausted {
    /// Size of the pool in port pairs.
    pub total: usize,
}

impl PortAllocator {
    /// A pool of the even ports in `first..=last` (each with `port + 1` for RTCP when it
    /// fits in the range).
    pub fn new(first: u16, last: u16) -> Self {
        let start = first + first % 2;
        let free: VecDeque<u16> = (u32::from(start)..u32::from(last))
            .step_by(2)
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        let total = free.len();
        Self {
            pool: Arc::new(Mutex::new(Pool {
                free,
                bound: VecDeque::new(),
                total,
                rest: REST,
                keep: keep_within_file_limit(),
            })),
        }
    }

    /// The same pool keeping at most `keep` bound pairs, each resting `rest` (tests).
    pub fn keeping(self, keep: usize, rest: Duration) -> Self {
        {
            let mut pool = self.lock();
            pool.keep = keep;
            pool.rest = rest;
        }
        self
    }

    /// Leases a port: a pair kept bound that has rested, else the least recently used free
    /// port (a kept pair that has not rested only when no port is free).
    pub fn lease(&self) -> Result<PortLease, PortsExhausted> {
        let mut pool = self.lock();
        let rested = pool
            .bound
            .front()
            .is_some_and(|b| b.since.elapsed() >= pool.rest);
        if rested || pool.free.is_empty() {
            if let Some(b) = pool.bound.pop_front() {
                publish_kept(pool.bound.len());
                return Ok(PortLease {
                    port: b.port,
                    sockets: Some(b.sockets),
                    pool: Arc::clone(&self.pool),
                });
            }
        }
        match pool.free.pop_front() {
            Some(port) => Ok(PortLease {
                port,
                sockets: None,
                pool: Arc::clone(&self.pool),
            }),
            None => Err(PortsExhausted { total: pool.total }),
        }
    }

    /// Port pairs currently leased (kept bound pairs are not).
    pub fn in_use(&self) -> usize {
        let pool = self.lock();
        pool.total - pool.free.len() - pool.bound.len()
    }

    /// Pairs kept bound between calls.
    pub fn kept_bound(&self) -> usize {
        self.lock().bound.len()
    }

    /// Port pairs in the pool.
    pub fn capacity(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        // The pool's invariants hold between statements, so a panic elsewhere while the lock
        // was held cannot leave it inconsistent.
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The node's port pairs kept bound between calls, in `waswitch_state_entries` (bounded by
/// [`KEEP_BOUND`]; their sockets are file descriptors, their buffers kernel memory).
fn publish_kept(n: usize) {
    metrics::gauge!(crate::telemetry::STATE_ENTRIES, "table" => "kept_media_ports").set(n as f64);
}

/// An RTP port held by one leg; returned to the pool on drop.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    /// The port's RTP and RTCP sockets, when the pool kept them bound.
    sockets: Option<(UdpSocket, UdpSocket)>,
    pool: Arc<Mutex<Pool>>,
}

impl PortLease {
    /// The RTP port (even); RTCP uses `port() + 1` unless muxed.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port's sockets, bound, when the pool kept them from an earlier call.
    pub fn take_sockets(&mut self) -> Option<(UdpSocket, UdpSocket)> {
        self.sockets.take()
    }

    /// Keeps this port's sockets (still bound to it) with the lease: when it is dropped,
    /// the pool keeps them for a later call.
    pub fn give_back(&mut self, rtp: UdpSocket, rtcp: UdpSocket) {
        self.sockets = Some((rtp, rtcp));
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        let sockets = match self.sockets.take() {
            Some(sockets) if pool.bound.len() < pool.keep => {
                pool.bound.push_back(Bound {
                    port: self.port,
                    sockets,
                    since: Instant::now(),
                });
                publish_kept(pool.bound.len());
                return;
            }
            other => other,
        };
        if sockets.is_some() {
            // No room to keep them: closed outside the pool's lock, before the port is free.
            drop(pool);
            drop(sockets);
            pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        }
        pool.free.push_back(self.port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_even_ports_once_and_reuses_them_last() {
        let ports = PortAllocator::new(20000, 20009);
        assert_eq!(ports.capacity(), 5);
        let a = ports.lease().unwrap();
        let b = ports.lease().unwrap();
        assert_eq!((a.port(), b.port()), (20000, 20002));
        assert_eq!(ports.in_use(), 2);
        drop(a);
        let rest: Vec<_> = (0..4).map(|_| ports.lease().unwrap()).collect();
        let numbers: Vec<_> = rest.iter().map(PortLease::port).collect();
        // 20000 was released last, so it comes back last.
        assert_eq!(numbers, [20004, 20006, 20008, 20000]);
        assert_eq!(ports.lease().unwrap_err(), PortsExhausted { total: 5 });
        drop(rest);
        drop(b);
        assert_eq!(ports.in_use(), 0);
    }

    #[test]
    fn odd_first_port_is_rounded_up() {
        let ports = PortAllocator::new(20001, 20004);
        assert_eq!(ports.lease().unwrap().port(), 20002);
        assert_eq!(ports.capacity(), 1);
    }

    fn bound_pair(port: u16) -> (UdpSocket, UdpSocket) {
        let rtp = UdpSocket::bind(("127.0.0.1", port)).expect("rtp");
        let rtcp = UdpSocket::bind(("127.0.0.1", port + 1)).expect("rtcp");
        (rtp, rtcp)
    }

    /// A pair given back bound is kept and handed out again with its sockets once it has
    /// rested; before that, free ports go first; beyond the limit, sockets are closed.
    #[test]
    fn pairs_given_back_bound_are_kept_rested_and_reused_as_they_are() {
        let ports = PortAllocator::new(42_900, 42_909).keeping(1, Duration::from_millis(200));
        let mut a = ports.lease().expect("a");
        let mut b = ports.lease().expect("b");
        assert!(a.take_sockets().is_none(), "nothing kept yet");
        let (rtp, rtcp) = bound_pair(a.port());
        let kept_fd = rtp.local_addr().expect("addr");
        a.give_back(rtp, rtcp);
        drop(a);
        let (rtp, rtcp) = bound_pair(b.port());
        b.give_back(rtp, rtcp);
        drop(b);
        assert_eq!(ports.kept_bound(), 1, "the limit: b's sockets were closed");
        assert_eq!(ports.in_use(), 0);
        // Not rested yet: a free port goes first.
        let mut c = ports.lease().expect("c");
        assert_eq!(c.port(), 42_904);
        assert!(c.take_sockets().is_none());
        std::thread::sleep(Duration::from_millis(250));
        let mut d = ports.lease().expect("d");
        assert_eq!(d.port(), 42_900);
        let (rtp, _rtcp) = d.take_sockets().expect("kept sockets");
        assert_eq!(rtp.local_addr().expect("addr"), kept_fd);
        // b's port was closed and freed: it can be bound again.
        let mut e = ports.lease().expect("e");
        assert_eq!(e.port(), 42_906);
        assert!(e.take_sockets().is_none());
        let f = ports.lease().expect("f");
        assert_eq!(f.port(), 42_908);
        let g = ports.lease().expect("g");
        assert_eq!(g.port(), 42_902, "b's port came back last");
        drop(bound_pair(g.port()));
    }
}
