//! RTP port allocation: even ports from the configured range, RTCP on the next odd port.
//!
//! A port is held by a [`PortLease`] and returns to the pool when the lease is dropped, so a
//! call that ends in any way (including a panicking actor, whose state is dropped while
//! unwinding) gives its ports back. Released ports go to the back of the queue: a port is
//! reused as late as possible, so stray packets of an ended call never reach a new one.
//!
//! A lease given back with its sockets still bound ([`PortLease::give_back`]) keeps them
//! where they are: in the media shard that relayed them, still registered with its poller,
//! which drops whatever reaches them while they rest. The next call on that port takes them
//! as they are, in that shard, with no system call at all (a call's four sockets cost some
//! 40 of them to make and to close, and eight more to register and deregister). Such a
//! pair is handed out again only once it has rested [`REST`] (or when no other port is
//! free), and at most [`KEEP_BOUND`] pairs are kept (fewer under a low open-file limit);
//! beyond that, the shard is told to close them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a kept pair rests before another call takes it: longer than a peer that hung up
/// goes on sending.
pub const REST: Duration = Duration::from_secs(1);

/// Most pairs kept bound between calls (two sockets each), and never more than a quarter
/// of the process's open-file limit in pairs (half of it in sockets): the calls' own
/// sockets, SIP and HTTP connections and the store need the rest. A node taking calls at
/// rate R keeps some 2·R·[`REST`] pairs resting (two legs a call); 8192 covers 4,000 calls
/// a second where the limit allows (`waswitch run` raises its soft limit to the hard one).
pub const KEEP_BOUND: usize = 8192;

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
    KEEP_BOUND.min(soft / 4)
}

/// A port's RTP and RTCP sockets resting in a media shard between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resting {
    /// The shard that holds them.
    pub shard: usize,
    /// The shard's life they belong to (a shard started again after a panic has closed
    /// the sockets of its earlier life).
    pub epoch: u64,
    /// Their place in the shard.
    pub slot: usize,
}

/// Closes resting sockets the pool has no room for (the media plane tells their shard);
/// false when the shard could not be told (its queue full), and the pool keeps them.
pub type Evictor = Arc<dyn Fn(Resting) -> bool + Send + Sync>;

/// The pool of RTP ports of one node. Cheap to clone; used at call setup, never per packet.
#[derive(Clone)]
pub struct PortAllocator {
    pool: Arc<Mutex<Pool>>,
}

impl std::fmt::Debug for PortAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pool = self.lock();
        f.debug_struct("PortAllocator")
            .field("total", &pool.total)
            .field("free", &pool.free.len())
            .field("kept", &pool.bound.len())
            .finish()
    }
}

struct Pool {
    free: VecDeque<u16>,
    /// Pairs given back still bound, oldest first.
    bound: VecDeque<Bound>,
    total: usize,
    rest: Duration,
    keep: usize,
    evictor: Option<Evictor>,
}

struct Bound {
    port: u16,
    resting: Resting,
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
                evictor: None,
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

    /// Who closes resting sockets the pool cannot keep (the media plane, when it starts).
    pub(crate) fn set_evictor(&self, evictor: Evictor) {
        self.lock().evictor = Some(evictor);
    }

    /// Leases a port: a pair kept bound that has rested, else the least recently used free
    /// port (a kept pair that has not rested only when no port is free).
    pub fn lease(&self) -> Result<PortLease, PortsExhausted> {
        let mut pool = self.lock();
        let rested = pool
            .bound
            .front()
            .is_some_and(|b| b.since.elapsed() >= pool.rest);
        let taken = if rested || pool.free.is_empty() {
            pool.bound.pop_front()
        } else {
            None
        };
        self.hand_out(&mut pool, taken)
    }

    /// A lease on the kept pair `taken`, else on the least recently used free port.
    fn hand_out(&self, pool: &mut Pool, taken: Option<Bound>) -> Result<PortLease, PortsExhausted> {
        let (port, resting) = match taken {
            Some(b) => {
                publish_kept(pool.bound.len());
                (b.port, Some(b.resting))
            }
            None => match pool.free.pop_front() {
                Some(port) => (port, None),
                None => return Err(PortsExhausted { total: pool.total }),
            },
        };
        Ok(PortLease {
            port,
            resting,
            pool: Arc::clone(&self.pool),
        })
    }

    /// Leases a port for a leg relayed in `shard`: a pair resting there that has rested,
    /// else a free port, else any kept pair (when no port is free). `None`: a free port
    /// first, else any kept pair.
    pub fn lease_in(&self, shard: Option<usize>) -> Result<PortLease, PortsExhausted> {
        let mut pool = self.lock();
        let rest = pool.rest;
        let here = shard.and_then(|shard| {
            pool.bound
                .iter()
                .take(16)
                .position(|b| b.resting.shard == shard && b.since.elapsed() >= rest)
        });
        let taken = match here {
            Some(i) => pool.bound.remove(i),
            None if pool.free.is_empty() => pool.bound.pop_front(),
            None => None,
        };
        self.hand_out(&mut pool, taken)
    }

    /// Leases the two ports of a call: the second, when the first rests in a shard, one
    /// resting in the same shard if one has rested (the pair is relayed there, where its
    /// sockets are), else as [`lease`](Self::lease).
    pub fn lease_two(&self) -> Result<[PortLease; 2], PortsExhausted> {
        let first = self.lease()?;
        if let Some(shard) = first.resting.map(|r| r.shard) {
            let mut pool = self.lock();
            let rest = pool.rest;
            let found = pool
                .bound
                .iter()
                .take(16)
                .position(|b| b.resting.shard == shard && b.since.elapsed() >= rest);
            if let Some(b) = found.and_then(|i| pool.bound.remove(i)) {
                let second = self.hand_out(&mut pool, Some(b))?;
                return Ok([first, second]);
            }
        }
        Ok([first, self.lease()?])
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
pub struct PortLease {
    port: u16,
    /// Where the port's sockets rest, when the pool kept them bound.
    resting: Option<Resting>,
    pool: Arc<Mutex<Pool>>,
}

impl std::fmt::Debug for PortLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortLease")
            .field("port", &self.port)
            .field("resting", &self.resting)
            .finish()
    }
}

impl PortLease {
    /// The RTP port (even); RTCP uses `port() + 1` unless muxed.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the port's sockets rest, when the pool kept them from an earlier call.
    pub fn resting(&self) -> Option<Resting> {
        self.resting
    }

    /// Where the port's sockets rest, bound, when the pool kept them from an earlier call:
    /// the lease's user takes them (or has them closed) from there.
    pub fn take_resting(&mut self) -> Option<Resting> {
        self.resting.take()
    }

    /// Keeps this port's sockets, still bound and resting where `resting` says: when the
    /// lease is dropped, the pool keeps them for a later call.
    pub fn give_back(&mut self, resting: Resting) {
        self.resting = Some(resting);
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(resting) = self.resting.take() else {
            pool.free.push_back(self.port);
            return;
        };
        if pool.bound.len() < pool.keep {
            pool.bound.push_back(Bound {
                port: self.port,
                resting,
                since: Instant::now(),
            });
            publish_kept(pool.bound.len());
            return;
        }
        // No room to keep them: their shard closes them. The port goes to the back of the
        // queue, leased again long after they are closed (a bind that finds it still taken
        // moves on to another port). A shard that cannot be told leaves them kept.
        let evictor = pool.evictor.clone();
        drop(pool);
        let evicted = evictor.is_some_and(|evict| evict(resting));
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if evicted {
            pool.free.push_back(self.port);
        } else {
            pool.bound.push_back(Bound {
                port: self.port,
                resting,
                since: Instant::now(),
            });
            publish_kept(pool.bound.len());
        }
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

    fn resting(slot: usize) -> Resting {
        Resting {
            shard: 0,
            epoch: 0,
            slot,
        }
    }

    /// A pair given back resting is kept and handed out again with its place once it has
    /// rested; before that, free ports go first; beyond the limit, its shard is told to
    /// close it and the port is free again.
    #[test]
    fn pairs_given_back_resting_are_kept_rested_and_reused_as_they_are() {
        let evicted = Arc::new(Mutex::new(Vec::new()));
        let ports = PortAllocator::new(42_900, 42_909).keeping(1, Duration::from_millis(200));
        let seen = evicted.clone();
        ports.set_evictor(Arc::new(move |r| {
            seen.lock().unwrap().push(r);
            true
        }));
        let mut a = ports.lease().expect("a");
        let mut b = ports.lease().expect("b");
        assert!(a.take_resting().is_none(), "nothing kept yet");
        a.give_back(resting(3));
        drop(a);
        b.give_back(resting(4));
        drop(b);
        assert_eq!(ports.kept_bound(), 1, "the limit: b's sockets are closed");
        assert_eq!(*evicted.lock().unwrap(), [resting(4)]);
        assert_eq!(ports.in_use(), 0);
        // Not rested yet: a free port goes first.
        let mut c = ports.lease().expect("c");
        assert_eq!(c.port(), 42_904);
        assert!(c.take_resting().is_none());
        std::thread::sleep(Duration::from_millis(250));
        let mut d = ports.lease().expect("d");
        assert_eq!(d.port(), 42_900);
        assert_eq!(d.take_resting(), Some(resting(3)));
        let mut e = ports.lease().expect("e");
        assert_eq!(e.port(), 42_906);
        assert!(e.take_resting().is_none());
        let f = ports.lease().expect("f");
        assert_eq!(f.port(), 42_908);
        let g = ports.lease().expect("g");
        assert_eq!(g.port(), 42_902, "b's port came back last");
    }

    /// A call's two ports come from one shard when the first rests in one.
    #[test]
    fn a_calls_two_ports_rest_in_the_same_shard() {
        let ports = PortAllocator::new(42_900, 42_909).keeping(8, Duration::ZERO);
        let in_shard = |shard, slot| Resting {
            shard,
            epoch: 0,
            slot,
        };
        let mut leases: Vec<_> = (0..3).map(|_| ports.lease().expect("lease")).collect();
        for (l, (shard, slot)) in leases.iter_mut().zip([(0, 1), (1, 2), (0, 3)]) {
            l.give_back(in_shard(shard, slot));
        }
        drop(leases);
        let [mut a, mut b] = ports.lease_two().expect("two");
        assert_eq!(a.take_resting(), Some(in_shard(0, 1)));
        assert_eq!(b.take_resting(), Some(in_shard(0, 3)));
    }

    /// A leg's port comes from its shard's kept pairs, else from the free ports: pairs
    /// resting in another shard are left to their calls.
    #[test]
    fn a_legs_port_comes_from_its_shard_or_the_free_ones() {
        let ports = PortAllocator::new(42_900, 42_909).keeping(8, Duration::ZERO);
        let mut leases: Vec<_> = (0..2).map(|_| ports.lease().expect("lease")).collect();
        for (l, shard) in leases.iter_mut().zip([0, 1]) {
            l.give_back(Resting {
                shard,
                epoch: 0,
                slot: shard,
            });
        }
        drop(leases);
        let mut here = ports.lease_in(Some(1)).expect("in shard 1");
        assert_eq!(here.take_resting().map(|r| r.shard), Some(1));
        let mut free = ports.lease_in(Some(2)).expect("a free port");
        assert!(free.take_resting().is_none());
        let mut any = ports.lease_in(None).expect("a free port");
        assert!(any.take_resting().is_none());
        assert_eq!(ports.kept_bound(), 1, "shard 0's pair is left");
    }
}
