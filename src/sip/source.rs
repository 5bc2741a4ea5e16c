//! Who may start calls: the networks of the trunks' `accept_from`, and what a new INVITE
//! from anywhere else gets. Sans-IO: the core asks [`Sources::admits`] with the source
//! address, and [`RefusalLog`] decides, from the time it is given, whether a refusal is
//! worth a log line.
//!
//! A refusal is stateless (RFC 3261 §8.2.6.1 allows a UAS to answer outside a transaction):
//! one 403 per INVITE and no transaction behind it, so no retransmitted responses a forged
//! source could turn into a reflection attack; or, by configuration, nothing at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// An IP network (`10.0.0.0/8`, `127.0.0.1`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl IpNet {
    /// Parses `ADDR` or `ADDR/LEN`.
    pub fn parse(s: &str) -> Option<IpNet> {
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = len.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// Whether `ip` is inside the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// What a new INVITE from an address no trunk accepts gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownSource {
    /// One stateless `403 Forbidden`.
    Refuse,
    /// Nothing: the datagram is dropped (a scanner learns nothing).
    Drop,
}

/// The networks allowed to start calls, and the policy for everyone else.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    networks: Vec<IpNet>,
    policy: UnknownSource,
}

impl Sources {
    /// Calls may come from `networks`; others get `policy`.
    pub(crate) fn new(networks: Vec<IpNet>, policy: UnknownSource) -> Sources {
        Sources { networks, policy }
    }

    /// Whether `ip` may start a call.
    pub(crate) fn admits(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }

    /// What a call from elsewhere gets.
    pub(crate) fn policy(&self) -> UnknownSource {
        self.policy
    }
}

/// How often one source's refusals are logged at most.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(60);
/// Sources remembered at most; beyond it refusals are counted but not logged until the
/// oldest entries age out.
const LOG_SOURCES: usize = 4096;

/// Per-source rate limit on refusal log lines: the first refusal of a source is logged,
/// then at most one line per [`LOG_EVERY`] saying how many were refused meanwhile.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    sources: HashMap<IpAddr, (Instant, u64)>,
}

impl RefusalLog {
    /// A refusal of `ip` at `now`: `Some(n)` when a line is due (`n` refusals since the
    /// last line, this one included), `None` to stay quiet.
    pub(crate) fn refused(&mut self, ip: IpAddr, now: Instant) -> Option<u64> {
        if let Some((last, quiet)) = self.sources.get_mut(&ip) {
            *quiet += 1;
            if now.duration_since(*last) < LOG_EVERY {
                return None;
            }
            let n = *quiet;
            *last = now;
            *quiet = 0;
            return Some(n);
        }
        if self.sources.len() >= LOG_SOURCES {
            self.sources
                .retain(|_, (last, _)| now.duration_since(*last) < LOG_EVERY);
            if self.sources.len() >= LOG_SOURCES {
                return None;
            }
        }
        self.sources.insert(ip, (now, 0));
        Some(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_admit_what_they_contain() {
        let s = Sources::new(
            vec![
                IpNet::parse("10.1.0.0/16").expect("net"),
                IpNet::parse("::1").expect("net"),
            ],
            UnknownSource::Refuse,
        );
        assert!(s.admits("10.1.200.3".parse().expect("ip")));
        assert!(!s.admits("10.2.0.1".parse().expect("ip")));
        assert!(s.admits("::1".parse().expect("ip")));
        // IPv4-mapped IPv6 counts as IPv4.
        assert!(s.admits("::ffff:10.1.0.9".parse().expect("ip")));
    }

    #[test]
    fn a_flooding_source_is_logged_once_a_minute_with_its_count() {
        let mut log = RefusalLog::default();
        let t = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(log.refused(ip, t), Some(1));
        for k in 1..1000 {
            assert_eq!(log.refused(ip, t + Duration::from_millis(k)), None);
        }
        assert_eq!(log.refused(ip, t + LOG_EVERY), Some(1000));
        // Another source is logged on its own.
        assert_eq!(log.refused("192.0.2.8".parse().expect("ip"), t), Some(1));
        // The table is bounded.
        for k in 0..(LOG_SOURCES as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + k));
            let _ = log.refused(ip, t + LOG_EVERY);
        }
        assert!(log.sources.len() <= LOG_SOURCES);
    }
}
