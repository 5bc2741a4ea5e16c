//! RTP port allocation: even ports from the configured range, RTCP on the next odd port.
//!
//! A port is held by a [`PortLease`] and returns to the pool when the lease is dropped, so a
//! call that ends in any way (including a panicking actor, whose state is dropped while
//! unwinding) gives its ports back. Released ports go to the back of the queue: a port is
//! reused as late as possible, so stray packets of an ended call never reach a new one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

/// The pool of RTP ports of one node. Cheap to clone; used at call setup, never per packet.
#[derive(Clone, Debug)]
pub struct PortAllocator {
    pool: Arc<Mutex<Pool>>,
}

#[derive(Debug)]
struct Pool {
    free: VecDeque<u16>,
    total: usize,
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
            pool: Arc::new(Mutex::new(Pool { free, total })),
        }
    }

    /// Leases the least recently used free port.
    pub fn lease(&self) -> Result<PortLease, PortsExhausted> {
        let mut pool = self.lock();
        match pool.free.pop_front() {
            Some(port) => Ok(PortLease {
                port,
                pool: Arc::clone(&self.pool),
            }),
            None => Err(PortsExhausted { total: pool.total }),
        }
    }

    /// Port pairs currently leased.
    pub fn in_use(&self) -> usize {
        let pool = self.lock();
        pool.total - pool.free.len()
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

/// An RTP port held by one leg; returned to the pool on drop.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    pool: Arc<Mutex<Pool>>,
}

impl PortLease {
    /// The RTP port (even); RTCP uses `port() + 1` unless muxed.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
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
}
