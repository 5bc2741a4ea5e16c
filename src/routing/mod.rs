//! Routing decisions, sans-IO: which trunk a call arrives from, and where it goes.
//!
//! `routing` looks only at configuration and the facts handed to it (source address,
//! dialled user, trunk health, the time); it holds no sockets, no actors and no clock.
//! [`schedule`] says whether business hours are open at a given moment.

pub mod schedule;

use std::net::IpAddr;

use crate::config::{SipRoute, SipTrunk};

/// SIP→SIP routing over the configured trunks and routes.
#[derive(Debug, Clone)]
pub struct SipRouter {
    trunks: Vec<SipTrunk>,
    routes: Vec<SipRoute>,
}

/// Why a call has nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// The source address belongs to no trunk's `accept_from`.
    UnknownSource,
    /// No route matches the dialled user (for calls from this trunk).
    NoMatch,
    /// Routes match but every trunk of the route is down or full.
    AllTrunksUnavailable,
}

impl SipRouter {
    /// A router over `trunks` and `routes` (route trunk indexes point into `trunks`).
    pub fn new(trunks: Vec<SipTrunk>, routes: Vec<SipRoute>) -> Self {
        Self { trunks, routes }
    }

    /// Whether any route is configured (without routes the switch takes no SIP calls).
    pub fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// The trunks, in configuration order.
    pub fn trunks(&self) -> &[SipTrunk] {
        &self.trunks
    }

    /// The trunk a call from `source` arrives from: the first whose `accept_from` holds it.
    pub fn ingress(&self, source: IpAddr) -> Option<usize> {
        self.trunks
            .iter()
            .position(|t| t.accept_from.iter().any(|net| net.contains(source)))
    }

    /// The trunks to try, in order, for a call to `user` arriving from trunk `ingress`:
    /// the longest matching prefix among the routes open to that trunk, without the trunks
    /// `usable` refuses (down, or at their call limit).
    pub fn select(
        &self,
        user: &str,
        ingress: usize,
        usable: impl Fn(usize) -> bool,
    ) -> Result<Vec<usize>, NoRoute> {
        let from = &self.trunks[ingress].name;
        let route = self
            .routes
            .iter()
            .filter(|r| r.from_trunk.as_ref().is_none_or(|t| t == from))
            .filter(|r| user.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
            .ok_or(NoRoute::NoMatch)?;
        usable_trunks(route, usable)
    }

    /// The usable trunks of the route named `name` (a WhatsApp business number's route), in
    /// order.
    pub fn named(&self, name: &str, usable: impl Fn(usize) -> bool) -> Result<Vec<usize>, NoRoute> {
        let route = self
            .routes
            .iter()
            .find(|r| r.name == name)
            .ok_or(NoRoute::NoMatch)?;
        usable_trunks(route, usable)
    }
}

/// The route's trunks that are `usable`, in order; none is [`NoRoute::AllTrunksUnavailable`].
fn usable_trunks(route: &SipRoute, usable: impl Fn(usize) -> bool) -> Result<Vec<usize>, NoRoute> {
    let trunks: Vec<usize> = route
        .trunks
        .iter()
        .copied()
        .filter(|&t| usable(t))
        .collect();
    if trunks.is_empty() {
        Err(NoRoute::AllTrunksUnavailable)
    } else {
        Ok(trunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn router(toml: &str) -> SipRouter {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::loopback(toml, &dir.path().join("r.db")).unwrap();
        SipRouter::new(config.trunks, config.routes)
    }

    const TOML: &str = r#"
        [[trunk]]
        name = "pbx"
        uri = "sip:127.0.0.1:5070"
        accept_from = ["127.0.0.1"]
        [[trunk]]
        name = "sbc"
        uri = "sip:127.0.0.2:5070"
        accept_from = ["10.0.0.0/8"]
        [[trunk]]
        name = "backup"
        uri = "sip:127.0.0.3:5070"
        [[route]]
        name = "all"
        trunks = ["pbx", "backup"]
        [[route]]
        name = "uk"
        prefix = "+44"
        trunks = ["sbc", "backup"]
        [[route]]
        name = "from-sbc"
        prefix = "+44"
        from_trunk = "sbc"
        trunks = ["pbx"]
    "#;

    #[test]
    fn ingress_is_the_first_trunk_whose_network_holds_the_source() {
        let r = router(TOML);
        assert_eq!(r.ingress("127.0.0.1".parse().unwrap()), Some(0));
        assert_eq!(r.ingress("10.1.2.3".parse().unwrap()), Some(1));
        assert_eq!(r.ingress("::ffff:10.1.2.3".parse().unwrap()), Some(1));
        assert_eq!(r.ingress("192.0.2.1".parse().unwrap()), None);
    }

    #[test]
    fn longest_prefix_wins_and_unusable_trunks_are_skipped() {
        let r = router(TOML);
        assert_eq!(r.select("+4420", 0, |_| true), Ok(vec![1, 2]));
        assert_eq!(r.select("+1555", 0, |_| true), Ok(vec![0, 2]));
        // Calls from the SBC to +44 take its own route.
        assert_eq!(r.select("+4420", 1, |_| true), Ok(vec![0]));
        assert_eq!(r.select("+4420", 0, |t| t != 1), Ok(vec![2]));
        assert_eq!(
            r.select("+4420", 1, |t| t != 0),
            Err(NoRoute::AllTrunksUnavailable)
        );
    }

    #[test]
    fn no_route_without_a_match() {
        let r = router(
            r#"
            [[trunk]]
            name = "pbx"
            uri = "sip:127.0.0.1:5070"
            [[route]]
            name = "us"
            prefix = "+1"
            trunks = ["pbx"]
        "#,
        );
        assert_eq!(r.select("+44", 0, |_| true), Err(NoRoute::NoMatch));
        assert!(r.has_routes());
    }
}
