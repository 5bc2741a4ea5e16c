//! Routing decisions, sans-IO: which trunk a call arrives from, and where it goes.
//!
//! `routing` looks only at configuration and the facts handed to it (source address,
//! dialled user, trunk health, the time); it holds no sockets, no actors and no clock.

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
    /// `usable` refuses (down, or at their call limit). `caller` picks among its sites.
    pub fn select(
        &self,
        user: &str,
        ingress: usize,
        caller: &Caller<'_>,
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
        site_trunks(route, caller, usable)
    }

    /// The usable trunks of the route named `name` (a WhatsApp business number's route), in
    /// the order to try them for `caller`.
    pub fn named(
        &self,
        name: &str,
        caller: &Caller<'_>,
        usable: impl Fn(usize) -> bool,
    ) -> Result<Vec<usize>, NoRoute> {
        let route = self
            .routes
            .iter()
            .find(|r| r.name == name)
            .ok_or(NoRoute::NoMatch)?;
        site_trunks(route, caller, usable)
    }
}

/// Who is calling, as far as choosing a route's site goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    /// The customer's country (ISO 3166-1 alpha-2), when the call has a customer.
    pub country: Option<&'a str>,
    /// Draws the order of sites of equal priority (by their weights): a random number
    /// per call.
    pub seed: u64,
}

/// A route's usable trunks for `caller`, in the order to try them: the sites open to the
/// caller's country by priority, sites of one priority in a weighted random order, each
/// site's trunks in their order. A site whose trunks are all refused by `usable` (down,
/// at their call limit) is passed over, so its calls overflow to the next site.
fn site_trunks(
    route: &SipRoute,
    caller: &Caller<'_>,
    usable: impl Fn(usize) -> bool,
) -> Result<Vec<usize>, NoRoute> {
    let mut sites: Vec<(u32, f64, usize)> = route
        .sites
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.countries.is_empty()
                || caller
                    .country
                    .is_some_and(|c| s.countries.iter().any(|x| x == c))
        })
        .map(|(i, s)| (s.priority, weighted_key(caller.seed, i, s.weight), i))
        .collect();
    if sites.is_empty() {
        return Err(NoRoute::NoMatch);
    }
    // Priority first; within one, the larger key first (Efraimidis–Spirakis: a weighted
    // random order).
    sites.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
    let mut trunks: Vec<usize> = Vec::new();
    for (_, _, i) in sites {
        for &t in &route.sites[i].trunks {
            if usable(t) && !trunks.contains(&t) {
                trunks.push(t);
            }
        }
    }
    if trunks.is_empty() {
        Err(NoRoute::AllTrunksUnavailable)
    } else {
        Ok(trunks)
    }
}

/// The sort key of site `index` with `weight` for the call drawn with `seed`: u^(1/w) for a
/// uniform u in (0, 1], so a site's chance of coming first is its share of the weights.
fn weighted_key(seed: u64, index: usize, weight: u32) -> f64 {
    // splitmix64 of the seed and the site: independent draws per site and call.
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    u.powf(1.0 / f64::from(weight.max(1)))
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
        assert_eq!(
            r.select("+4420", 0, &Caller::default(), |_| true),
            Ok(vec![1, 2])
        );
        assert_eq!(
            r.select("+1555", 0, &Caller::default(), |_| true),
            Ok(vec![0, 2])
        );
        // Calls from the SBC to +44 take its own route.
        assert_eq!(
            r.select("+4420", 1, &Caller::default(), |_| true),
            Ok(vec![0])
        );
        assert_eq!(
            r.select("+4420", 0, &Caller::default(), |t| t != 1),
            Ok(vec![2])
        );
        assert_eq!(
            r.select("+4420", 1, &Caller::default(), |t| t != 0),
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
        assert_eq!(
            r.select("+44", 0, &Caller::default(), |_| true),
            Err(NoRoute::NoMatch)
        );
        assert!(r.has_routes());
    }

    const SITES: &str = r#"
        [[trunk]]
        name = "br-pbx"
        uri = "sip:127.0.0.1:5070"
        [[trunk]]
        name = "de-pbx"
        uri = "sip:127.0.0.2:5070"
        [[trunk]]
        name = "hub-a"
        uri = "sip:127.0.0.3:5070"
        [[trunk]]
        name = "hub-b"
        uri = "sip:127.0.0.4:5070"
        [[route]]
        name = "agents"
        [[route.site]]
        name = "br"
        trunks = ["br-pbx"]
        countries = ["BR", "PT"]
        [[route.site]]
        name = "de"
        trunks = ["de-pbx"]
        countries = ["de"]
        [[route.site]]
        name = "hub-a"
        trunks = ["hub-a"]
        priority = 2
        weight = 3
        [[route.site]]
        name = "hub-b"
        trunks = ["hub-b"]
        priority = 2
        weight = 1
    "#;

    fn caller(country: Option<&str>, seed: u64) -> Caller<'_> {
        Caller { country, seed }
    }

    #[test]
    fn a_callers_country_picks_its_site_and_the_overflow_follows_by_priority() {
        let r = router(SITES);
        let br = r.named("agents", &caller(Some("BR"), 1), |_| true).unwrap();
        assert_eq!(
            br[0], 0,
            "a Brazilian customer reaches site br first: {br:?}"
        );
        assert!(!br.contains(&1), "never the German site: {br:?}");
        assert_eq!(br.len(), 3, "then the hubs: {br:?}");
        let de = r.named("agents", &caller(Some("DE"), 1), |_| true).unwrap();
        assert_eq!(de[0], 1);
        assert!(!de.contains(&0));
        // A customer of no listed country, or a call without a customer, goes to the hubs.
        let fr = r.named("agents", &caller(Some("FR"), 1), |_| true).unwrap();
        assert_eq!(
            fr.iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            [2, 3].into()
        );
        let none = r.named("agents", &caller(None, 1), |_| true).unwrap();
        assert_eq!(none.len(), 2);
        // br at its call limit (or down): its calls overflow to the hubs.
        let full = r
            .named("agents", &caller(Some("BR"), 1), |t| t != 0)
            .unwrap();
        assert!(full == [2, 3] || full == [3, 2], "{full:?}");
        assert_eq!(
            r.named("agents", &caller(Some("BR"), 1), |_| false),
            Err(NoRoute::AllTrunksUnavailable)
        );
    }

    #[test]
    fn sites_of_one_priority_share_the_calls_by_weight() {
        let r = router(SITES);
        let mut first_a = 0u32;
        let calls: u64 = 10_000;
        for seed in 0..calls {
            let order = r
                .named(
                    "agents",
                    &caller(None, seed.wrapping_mul(0x2545_F491_4F6C_DD1D)),
                    |_| true,
                )
                .unwrap();
            if order[0] == 2 {
                first_a += 1;
            }
        }
        // Weights 3:1: hub-a comes first for about 75 % of calls.
        let share = f64::from(first_a) / calls as f64;
        assert!((0.72..0.78).contains(&share), "hub-a first for {share:.3}");
        // The same seed, the same order.
        let one = r.named("agents", &caller(None, 42), |_| true);
        assert_eq!(one, r.named("agents", &caller(None, 42), |_| true));
    }
}
