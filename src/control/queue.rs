//! Agent queues, sans-IO: which agents a waiting call is offered to next.
//!
//! An [`AgentBook`] knows each agent's state: whether their phone is registered, the
//! presence they chose (available or offline), whether they are on a call, and the wrap-up
//! time after one. A [`Queue`] picks from its members by its [`Strategy`]: the agent idle
//! longest, the next in turn, or every available agent at once. Agents already tried for a
//! call (they let it ring out) are passed over, so a ring timeout moves to the next agent;
//! when nobody is left the caller goes to the queue's overflow. Time is an input.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// An agent's presence, as the agent and the switch see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Takes calls.
    Available,
    /// On a call.
    Busy,
    /// Just finished a call; takes calls again after the wrap-up time.
    WrapUp,
    /// Takes no calls (chose so, or no phone registered).
    Offline,
}

impl Presence {
    /// As the API and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Available => "available",
            Presence::Busy => "busy",
            Presence::WrapUp => "wrap_up",
            Presence::Offline => "offline",
        }
    }
}

/// How a queue picks among its available agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The agent idle the longest (since their last call, or since they became available).
    LongestIdle,
    /// The next member after the one offered last, in the queue's order.
    RoundRobin,
    /// Every available member at once; the first to answer takes the call.
    RingAll,
}

#[derive(Debug, Clone)]
struct AgentState {
    registered: bool,
    /// The agent chose to take calls.
    willing: bool,
    on_call: bool,
    /// Being rung for a call (offered to no other until released).
    ringing: bool,
    wrap_up_until: Option<Instant>,
    /// Since when the agent has been free (for longest-idle).
    idle_since: Instant,
}

impl AgentState {
    /// An agent not registered yet, willing to take calls once they are.
    fn fresh(now: Instant) -> AgentState {
        AgentState {
            registered: false,
            willing: true,
            on_call: false,
            ringing: false,
            wrap_up_until: None,
            idle_since: now,
        }
    }
}

/// Every agent's state.
#[derive(Debug, Clone, Default)]
pub struct AgentBook {
    agents: BTreeMap<String, AgentState>,
}

impl AgentBook {
    /// A book of `users`, none registered, all willing to take calls once they are.
    pub fn new<'a>(users: impl IntoIterator<Item = &'a str>, now: Instant) -> AgentBook {
        AgentBook {
            agents: users
                .into_iter()
                .map(|u| (u.to_string(), AgentState::fresh(now)))
                .collect(),
        }
    }

    /// Adds agent `user` (not registered, willing); an agent already there is kept as is.
    pub fn add(&mut self, user: &str, now: Instant) {
        self.agents
            .entry(user.to_string())
            .or_insert_with(|| AgentState::fresh(now));
    }

    /// Removes agent `user`.
    pub fn remove(&mut self, user: &str) {
        self.agents.remove(user);
    }

    fn touch(&mut self, user: &str, now: Instant, f: impl FnOnce(&mut AgentState, Instant)) {
        if let Some(a) = self.agents.get_mut(user) {
            let was = Self::state(a, now);
            f(a, now);
            if was != Presence::Available && Self::state(a, now) == Presence::Available {
                a.idle_since = now;
            }
        }
    }

    /// The agent's phone registered (or unregistered).
    pub fn set_registered(&mut self, user: &str, registered: bool, now: Instant) {
        self.touch(user, now, |a, _| a.registered = registered);
    }

    /// The agent chose to take calls (`true`) or not.
    pub fn set_willing(&mut self, user: &str, willing: bool, now: Instant) {
        self.touch(user, now, |a, _| a.willing = willing);
    }

    /// The agent's phone rings for a call: busy to every other call until answered or
    /// released.
    pub fn reserve(&mut self, user: &str, now: Instant) {
        self.touch(user, now, |a, _| a.ringing = true);
    }

    /// The agent's phone stopped ringing unanswered: free again, idle since as before.
    pub fn release(&mut self, user: &str) {
        if let Some(a) = self.agents.get_mut(user) {
            a.ringing = false;
        }
    }

    /// The agent answered a call.
    pub fn call_started(&mut self, user: &str, now: Instant) {
        self.touch(user, now, |a, _| {
            a.on_call = true;
            a.ringing = false;
            a.wrap_up_until = None;
        });
    }

    /// The agent's call ended; they wrap up for `wrap_up` before the next one.
    pub fn call_ended(&mut self, user: &str, wrap_up: Duration, now: Instant) {
        self.touch(user, now, |a, now| {
            a.on_call = false;
            a.wrap_up_until = (!wrap_up.is_zero()).then(|| now + wrap_up);
            // Idle time counts from the call's end, wrap-up included.
            a.idle_since = now;
        });
    }

    fn state(a: &AgentState, now: Instant) -> Presence {
        if !a.registered || !a.willing {
            Presence::Offline
        } else if a.on_call || a.ringing {
            Presence::Busy
        } else if a.wrap_up_until.is_some_and(|t| now < t) {
            Presence::WrapUp
        } else {
            Presence::Available
        }
    }

    /// The agent's presence at `now` (`None`: no such agent).
    pub fn presence(&self, user: &str, now: Instant) -> Option<Presence> {
        self.agents.get(user).map(|a| Self::state(a, now))
    }

    /// The end of the earliest wrap-up still running: when an agent may become available
    /// without anything else happening.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.agents
            .values()
            .filter_map(|a| a.wrap_up_until)
            .filter(|t| *t > now)
            .min()
    }
}

/// A queue of agents.
#[derive(Debug, Clone)]
pub struct Queue {
    strategy: Strategy,
    members: Vec<String>,
    /// Round-robin: the member offered last.
    last: Option<usize>,
}

impl Queue {
    /// A queue of `members` (in order) picking by `strategy`.
    pub fn new(strategy: Strategy, members: Vec<String>) -> Queue {
        Queue {
            strategy,
            members,
            last: None,
        }
    }

    /// Whether any member would be offered a call that has tried nobody.
    pub fn anyone_available(&self, book: &AgentBook, now: Instant) -> bool {
        self.members
            .iter()
            .any(|m| book.presence(m, now) == Some(Presence::Available))
    }

    /// The agents to ring now for a call: one (longest idle, or next in turn) or all
    /// available ones (ring-all), never one in `tried`. Empty: nobody can take it now.
    pub fn offer(&mut self, book: &AgentBook, tried: &[String], now: Instant) -> Vec<String> {
        let free =
            |m: &String| !tried.contains(m) && book.presence(m, now) == Some(Presence::Available);
        match self.strategy {
            Strategy::RingAll => self.members.iter().filter(|m| free(m)).cloned().collect(),
            Strategy::LongestIdle => self
                .members
                .iter()
                .filter(|m| free(m))
                .min_by_key(|m| book.agents.get(*m).map(|a| a.idle_since))
                .cloned()
                .into_iter()
                .collect(),
            Strategy::RoundRobin => {
                let n = self.members.len();
                let start = self.last.map_or(0, |l| l + 1);
                let pick = (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| free(&self.members[i]));
                match pick {
                    Some(i) => {
                        self.last = Some(i);
                        vec![self.members[i].clone()]
                    }
                    None => Vec::new(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(now: Instant) -> AgentBook {
        let mut b = AgentBook::new(["alice", "bob", "carol"], now);
        for u in ["alice", "bob", "carol"] {
            b.set_registered(u, true, now);
        }
        b
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn presence_follows_registration_choice_calls_and_wrap_up() {
        let t0 = Instant::now();
        let mut b = AgentBook::new(["alice"], t0);
        assert_eq!(b.presence("alice", t0), Some(Presence::Offline));
        assert_eq!(b.presence("nobody", t0), None);
        b.set_registered("alice", true, t0);
        assert_eq!(b.presence("alice", t0), Some(Presence::Available));
        b.call_started("alice", t0);
        assert_eq!(b.presence("alice", t0), Some(Presence::Busy));
        let end = t0 + Duration::from_secs(60);
        b.call_ended("alice", Duration::from_secs(10), end);
        assert_eq!(b.presence("alice", end), Some(Presence::WrapUp));
        assert_eq!(b.poll_timeout(end), Some(end + Duration::from_secs(10)));
        let later = end + Duration::from_secs(10);
        assert_eq!(b.presence("alice", later), Some(Presence::Available));
        assert_eq!(b.poll_timeout(later), None);
        b.set_willing("alice", false, later);
        assert_eq!(b.presence("alice", later), Some(Presence::Offline));
        b.set_willing("alice", true, later);
        b.set_registered("alice", false, later);
        assert_eq!(b.presence("alice", later), Some(Presence::Offline));
    }

    #[test]
    fn longest_idle_takes_the_agent_free_the_longest_and_a_ring_timeout_moves_on() {
        let t0 = Instant::now();
        let mut b = book(t0);
        let mut q = Queue::new(Strategy::LongestIdle, names(&["alice", "bob", "carol"]));
        // alice and bob had calls; bob's ended first, so he has been idle longest of those,
        // but carol never had one: she is idle since the start.
        b.call_started("alice", t0 + Duration::from_secs(1));
        b.call_started("bob", t0 + Duration::from_secs(1));
        b.call_ended("bob", Duration::ZERO, t0 + Duration::from_secs(5));
        b.call_ended("alice", Duration::ZERO, t0 + Duration::from_secs(9));
        let now = t0 + Duration::from_secs(10);
        assert_eq!(q.offer(&b, &[], now), names(&["carol"]));
        // carol lets it ring out: bob (idle since 5 s) before alice (since 9 s).
        assert_eq!(q.offer(&b, &names(&["carol"]), now), names(&["bob"]));
        assert_eq!(
            q.offer(&b, &names(&["carol", "bob"]), now),
            names(&["alice"])
        );
        // Everyone tried: nobody left (the call overflows).
        assert!(q
            .offer(&b, &names(&["carol", "bob", "alice"]), now)
            .is_empty());
    }

    #[test]
    fn round_robin_rotates_and_skips_whoever_is_not_available() {
        let t0 = Instant::now();
        let mut b = book(t0);
        let mut q = Queue::new(Strategy::RoundRobin, names(&["alice", "bob", "carol"]));
        assert_eq!(q.offer(&b, &[], t0), names(&["alice"]));
        assert_eq!(q.offer(&b, &[], t0), names(&["bob"]));
        b.call_started("carol", t0);
        assert_eq!(q.offer(&b, &[], t0), names(&["alice"]));
        b.call_ended("carol", Duration::from_secs(30), t0);
        assert_eq!(q.offer(&b, &[], t0), names(&["bob"]));
        // carol's wrap-up over: her turn comes.
        assert_eq!(
            q.offer(&b, &[], t0 + Duration::from_secs(30)),
            names(&["carol"])
        );
    }

    #[test]
    fn ring_all_rings_every_available_member_and_nobody_means_overflow() {
        let t0 = Instant::now();
        let mut b = book(t0);
        let mut q = Queue::new(Strategy::RingAll, names(&["alice", "bob", "carol"]));
        b.set_willing("bob", false, t0);
        assert_eq!(q.offer(&b, &[], t0), names(&["alice", "carol"]));
        b.set_registered("alice", false, t0);
        b.call_started("carol", t0);
        assert!(q.offer(&b, &[], t0).is_empty());
    }

    #[test]
    fn an_agent_being_rung_is_offered_to_no_other_call_until_released() {
        let t0 = Instant::now();
        let mut b = book(t0);
        let mut q = Queue::new(Strategy::LongestIdle, names(&["alice", "bob"]));
        let first = q.offer(&b, &[], t0);
        assert_eq!(first, names(&["alice"]));
        b.reserve("alice", t0);
        assert_eq!(b.presence("alice", t0), Some(Presence::Busy));
        // A second call waiting meanwhile gets the other agent.
        assert_eq!(q.offer(&b, &[], t0), names(&["bob"]));
        b.reserve("bob", t0);
        assert!(q.offer(&b, &[], t0).is_empty());
        assert!(!q.anyone_available(&b, t0));
        // Alice lets it ring out: free again, and still the longest idle.
        b.release("alice");
        assert_eq!(b.presence("alice", t0), Some(Presence::Available));
        assert_eq!(q.offer(&b, &[], t0), names(&["alice"]));
        // Bob answers: busy until the call ends, then wraps up.
        b.call_started("bob", t0);
        assert_eq!(b.presence("bob", t0), Some(Presence::Busy));
    }
}
