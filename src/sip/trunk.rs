//! Trunk health, sans-IO: each trunk is probed with OPTIONS at its configured interval; a
//! trunk that answers is up, one that times out or answers 408, 5xx or 6xx is down, and
//! routing skips it until a probe succeeds again.
//!
//! [`TrunkMonitor`] decides when to probe and what the answers mean; the SIP core sends the
//! probes in ordinary client transactions (so they retransmit and time out by the rules).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::build::MessageBuilder;
use super::core::{CoreEvent, RequestId, SipCore};
use super::msg::{HeaderName, Method};

/// The health of every probed trunk, shared with routing. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TrunkHealth(Arc<DashMap<String, bool>>);

impl TrunkHealth {
    /// Whether routing may use the trunk: not known to be down (a trunk never probed, or
    /// not probed yet, is tried).
    pub fn usable(&self, trunk: &str) -> bool {
        self.0.get(trunk).is_none_or(|up| *up)
    }

    /// The last probe result, `None` before the first.
    pub fn get(&self, trunk: &str) -> Option<bool> {
        self.0.get(trunk).map(|up| *up)
    }

    /// Records a probe result and exports it as `waswitch_trunk_up{trunk}`.
    pub fn apply(&self, change: &HealthChange) {
        self.0.insert(change.trunk.clone(), change.up);
        metrics::gauge!(crate::telemetry::TRUNK_UP, "trunk" => change.trunk.clone())
            .set(if change.up { 1.0 } else { 0.0 });
        if change.up {
            tracing::info!(trunk = %change.trunk, why = %change.why, "trunk up");
        } else {
            tracing::warn!(trunk = %change.trunk, why = %change.why, "trunk down; routing skips it");
        }
    }
}

/// One trunk to watch.
#[derive(Debug, Clone)]
pub(crate) struct ProbeTarget {
    /// Trunk name (metric label, routing key).
    pub name: String,
    /// Where its OPTIONS go.
    pub address: SocketAddr,
    /// Time between the end of one probe and the next.
    pub interval: Duration,
}

#[derive(Debug)]
struct Probe {
    target: ProbeTarget,
    next_at: Instant,
    pending: Option<RequestId>,
    up: Option<bool>,
    sent: u64,
}

/// A change of a trunk's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    /// Trunk name.
    pub trunk: String,
    /// Up (answers) or down.
    pub up: bool,
    /// Why, for the log.
    pub why: String,
}

/// Probes trunks and tracks their health.
#[derive(Debug)]
pub(crate) struct TrunkMonitor {
    probes: Vec<Probe>,
    local: SocketAddr,
}

impl TrunkMonitor {
    /// Watches `targets`; the first probes go out at `now`.
    pub(crate) fn new(now: Instant, local: SocketAddr, targets: Vec<ProbeTarget>) -> Self {
        Self {
            probes: targets
                .into_iter()
                .map(|target| Probe {
                    target,
                    next_at: now,
                    pending: None,
                    up: None,
                    sent: 0,
                })
                .collect(),
            local,
        }
    }

    /// When the next probe is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.probes
            .iter()
            .filter(|p| p.pending.is_none())
            .map(|p| p.next_at)
            .min()
    }

    /// Sends the probes that are due.
    pub(crate) fn handle_timeout(&mut self, now: Instant, core: &mut SipCore) {
        for p in &mut self.probes {
            if p.pending.is_some() || p.next_at > now {
                continue;
            }
            p.sent += 1;
            let uri = format!("sip:{}", p.target.address);
            let request = MessageBuilder::request(Method::Options, &uri)
                .header(HeaderName::MaxForwards, "70")
                .header(
                    HeaderName::From,
                    format!("<sip:waswitch@{}>;tag=probe{}", self.local, p.sent),
                )
                .header(HeaderName::To, format!("<{uri}>"))
                .header(
                    HeaderName::CallId,
                    format!("probe-{}-{}@{}", p.target.name, p.sent, self.local.ip()),
                )
                .header(HeaderName::CSeq, format!("{} OPTIONS", p.sent))
                .build();
            p.pending = Some(core.send_request(now, request, p.target.address));
        }
    }

    /// Whether `event` settles one of this monitor's probes.
    pub(crate) fn is_probe(&self, event: &CoreEvent) -> bool {
        let id = match event {
            CoreEvent::Response(id, _) | CoreEvent::Timeout(id, _) => *id,
            _ => return false,
        };
        self.probes.iter().any(|p| p.pending == Some(id))
    }

    /// Takes an event of the core; returns a health change when a probe settled one.
    /// Events for other requests are ignored (`None`).
    pub(crate) fn handle_event(&mut self, now: Instant, event: &CoreEvent) -> Option<HealthChange> {
        let (id, verdict) = match event {
            CoreEvent::Response(id, resp) => match resp.status() {
                Some(100..=199) | None => return None,
                Some(code @ (408 | 500..=699)) => (*id, (false, format!("answered {code}"))),
                Some(code) => (*id, (true, format!("answered {code}"))),
            },
            CoreEvent::Timeout(id, _) => (*id, (false, "no answer".to_string())),
            _ => return None,
        };
        let p = self.probes.iter_mut().find(|p| p.pending == Some(id))?;
        p.pending = None;
        p.next_at = now + p.target.interval;
        let (up, why) = verdict;
        let changed = p.up != Some(up);
        p.up = Some(up);
        changed.then(|| HealthChange {
            trunk: p.target.name.clone(),
            up,
            why,
        })
    }

    /// Current health: `None` until the first probe settles.
    #[cfg(test)]
    pub(crate) fn health(&self, trunk: &str) -> Option<bool> {
        self.probes
            .iter()
            .find(|p| p.target.name == trunk)
            .and_then(|p| p.up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::msg::parse_datagram;
    use crate::sip::txn::{TimerConfig, Transport};

    #[test]
    fn answered_probes_mark_up_and_silence_marks_down_after_timer_f() {
        let t0 = Instant::now();
        let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let pbx: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        let mut core = SipCore::new(Transport::Unreliable, TimerConfig::default(), local, 1);
        let mut mon = TrunkMonitor::new(
            t0,
            local,
            vec![ProbeTarget {
                name: "pbx".into(),
                address: pbx,
                interval: Duration::from_secs(10),
            }],
        );
        assert_eq!(mon.poll_timeout(), Some(t0));
        mon.handle_timeout(t0, &mut core);
        let (to, probe) = core.poll_transmit().expect("OPTIONS sent");
        assert_eq!(to, pbx);
        let probe = parse_datagram(probe).expect("parses");
        assert_eq!(probe.method(), Some(&Method::Options));
        // The PBX answers 200: up.
        let ok = MessageBuilder::response_to(&probe, 200, "OK", Some("p")).build();
        core.handle_datagram(t0, ok.to_bytes(), pbx);
        let ev = core.poll_event().expect("response event");
        let change = mon.handle_event(t0, &ev).expect("first result is a change");
        assert!(change.up);
        assert_eq!(mon.health("pbx"), Some(true));
        // Next probe 10 s later; nobody answers: down once Timer F (32 s) fires.
        assert_eq!(mon.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        let t1 = t0 + Duration::from_secs(10);
        mon.handle_timeout(t1, &mut core);
        let mut now = t1;
        let mut change = None;
        while change.is_none() {
            now = core.poll_timeout().expect("retransmissions, then Timer F");
            core.handle_timeout(now);
            while core.poll_transmit().is_some() {}
            while let Some(ev) = core.poll_event() {
                change = change.or(mon.handle_event(now, &ev));
            }
        }
        assert_eq!(now, t1 + Duration::from_secs(32));
        assert_eq!(change.map(|c| c.up), Some(false));
        assert_eq!(mon.health("pbx"), Some(false));
    }
}
