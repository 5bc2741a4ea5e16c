//! The node's agents and queues: who the agents are, whether their phone is registered,
//! the presence they chose, their calls and wrap-up; and the calls waiting in each queue.
//! The registrar tells it when a phone registers or goes; the REST API reads it and sets
//! an agent's chosen presence; calls waiting in a queue are offered agents from it.
//!
//! Serving a queue: a call enters with [`Directory::enqueue`] and a sink that hears its
//! offers. Waiting calls are served in arrival order: each one not ringing anyone is
//! offered the agent(s) its queue's strategy picks, and those agents are reserved (busy to
//! every other call) until the call says they answered ([`Directory::answered`]) or let it
//! ring out ([`Directory::no_answer`]); an agent who rang out is passed over for that call
//! until every member has been tried. An answered agent is busy until
//! [`Directory::call_ended`], then wraps up. Offers are made whenever something changes,
//! and on [`Directory::tick`] (wrap-ups ending). The state itself is
//! [`control::queue::AgentBook`](crate::control::queue::AgentBook) and
//! [`control::queue::Queue`](crate::control::queue::Queue), sans-IO; this is their shared,
//! clocked front.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::control::queue::{AgentBook, Presence, Queue};
use crate::telemetry;

/// The agents a waiting call is offered (rung at once; one, or all for ring-all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOffer {
    /// The call's ticket.
    pub ticket: u64,
    /// The agents reserved for it.
    pub agents: Vec<String>,
}

/// Hears the offers made to one waiting call.
pub type OfferSink = Arc<dyn Fn(QueueOffer) + Send + Sync>;

/// How a call left its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// The caller hung up while waiting.
    Abandoned,
    /// The queue's timeout passed: the call goes to the overflow.
    Overflow,
}

impl Left {
    fn as_str(self) -> &'static str {
        match self {
            Left::Abandoned => "abandoned",
            Left::Overflow => "overflow",
        }
    }
}

struct Waiting {
    ticket: u64,
    queue: usize,
    since: Instant,
    /// Agents who let this call ring out.
    tried: Vec<String>,
    /// Agents being rung for it now.
    ringing: Vec<String>,
    /// Every member was tried: the next round starts no sooner than this.
    not_before: Option<Instant>,
    sink: OfferSink,
}

/// After every free member let a call ring out (or their phone failed), the call waits
/// this long before they are rung again.
pub const RETRY_PAUSE: Duration = Duration::from_secs(3);

/// What the API shows of an agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AgentView {
    /// The SIP user.
    pub user: String,
    /// The name shown to others.
    pub display_name: Option<String>,
    /// The queues the agent answers.
    pub queues: Vec<String>,
    /// A phone is registered.
    pub registered: bool,
    /// `available`, `busy`, `wrap_up` or `offline`.
    pub presence: &'static str,
}

/// What the API shows of a queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueView {
    /// Its name.
    pub name: String,
    /// `longest_idle`, `round_robin` or `ring_all`.
    pub strategy: &'static str,
    /// Members available to take a call now.
    pub available: usize,
    /// The members and their presence.
    pub members: Vec<MemberView>,
    /// Where callers overflow to.
    pub overflow_route: Option<String>,
}

/// A queue member's presence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberView {
    /// The agent.
    pub user: String,
    /// Their presence.
    pub presence: &'static str,
}

struct Inner {
    book: AgentBook,
    queues: Vec<crate::config::QueueConfig>,
    /// Each queue's picking state (round-robin's turn), in `queues`' order.
    pickers: Vec<Queue>,
    /// Calls waiting, in arrival order.
    waiting: Vec<Waiting>,
    next_ticket: u64,
    /// Display name, queues, registered.
    info: BTreeMap<String, (Option<String>, Vec<String>, bool)>,
    /// Agents of the configuration file (the API does not change them).
    configured: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("agents", &self.info.len())
            .field("queues", &self.queues.len())
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

/// The node's agents, shared.
#[derive(Debug, Clone)]
pub struct Directory {
    inner: Arc<Mutex<Inner>>,
}

impl Directory {
    /// The agents and queues of the configuration.
    pub fn new(
        agents: &[crate::config::AgentConfig],
        queues: &[crate::config::QueueConfig],
    ) -> Directory {
        let now = Instant::now();
        Directory {
            inner: Arc::new(Mutex::new(Inner {
                book: AgentBook::new(agents.iter().map(|a| a.user.as_str()), now),
                pickers: queues
                    .iter()
                    .map(|q| Queue::new(q.strategy, q.members.clone()))
                    .collect(),
                queues: queues.to_vec(),
                waiting: Vec::new(),
                next_ticket: 1,
                configured: agents.iter().map(|a| a.user.clone()).collect(),
                info: agents
                    .iter()
                    .map(|a| {
                        (
                            a.user.clone(),
                            (a.display_name.clone(), a.queues.clone(), false),
                        )
                    })
                    .collect(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The agent's phone registered (`true`) or went.
    pub fn set_registered(&self, user: &str, registered: bool) {
        let mut inner = self.lock();
        inner.book.set_registered(user, registered, Instant::now());
        if let Some(info) = inner.info.get_mut(user) {
            info.2 = registered;
        }
        self.dispatch(inner);
    }

    /// The agent chose to take calls (`true`) or not; false when there is no such agent.
    pub fn set_willing(&self, user: &str, willing: bool) -> bool {
        let mut inner = self.lock();
        if !inner.info.contains_key(user) {
            return false;
        }
        inner.book.set_willing(user, willing, Instant::now());
        self.dispatch(inner);
        true
    }

    /// Exports every queue's series at zero (dashboards and alerts see them from the start).
    pub fn export_metrics(&self) {
        for q in &self.lock().queues {
            let name = q.name.clone();
            metrics::gauge!(telemetry::QUEUE_WAITING, "queue" => name.clone()).set(0.0);
            metrics::gauge!(telemetry::QUEUE_LONGEST_WAIT_SECONDS, "queue" => name.clone())
                .set(0.0);
            for outcome in ["answered", "abandoned", "overflow"] {
                metrics::counter!(telemetry::QUEUE_CALLS_TOTAL, "queue" => name.clone(), "outcome" => outcome)
                    .increment(0);
            }
            metrics::counter!(telemetry::QUEUE_ANSWERED_WITHIN_SL_TOTAL, "queue" => name)
                .increment(0);
        }
    }

    /// Whether agent `user` comes from the configuration file.
    pub fn is_configured(&self, user: &str) -> bool {
        self.lock().configured.contains(user)
    }

    /// The names of the queues.
    pub fn queue_names(&self) -> Vec<String> {
        self.lock().queues.iter().map(|q| q.name.clone()).collect()
    }

    /// Adds agent `user` (or changes their name and queues): a member of `queues` from now
    /// on, of no others. Their registration and calls are kept.
    pub fn upsert(&self, user: &str, display_name: Option<String>, queues: Vec<String>) {
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let registered = inner.info.get(user).is_some_and(|i| i.2);
            inner.book.add(user, Instant::now());
            for (i, q) in inner.queues.iter_mut().enumerate() {
                let member = q.members.iter().any(|m| m == user);
                let wanted = queues.contains(&q.name);
                if member != wanted {
                    if wanted {
                        q.members.push(user.to_string());
                    } else {
                        q.members.retain(|m| m != user);
                    }
                    inner.pickers[i] = Queue::new(q.strategy, q.members.clone());
                }
            }
            inner
                .info
                .insert(user.to_string(), (display_name, queues, registered));
        }
        // A waiting call may take the new member at once.
        self.tick();
    }

    /// Removes agent `user` from the directory and their queues; false when unknown.
    pub fn remove(&self, user: &str) -> bool {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.info.remove(user).is_none() {
            return false;
        }
        inner.book.remove(user);
        for (i, q) in inner.queues.iter_mut().enumerate() {
            if q.members.iter().any(|m| m == user) {
                q.members.retain(|m| m != user);
                inner.pickers[i] = Queue::new(q.strategy, q.members.clone());
            }
        }
        true
    }

    /// Queue `name`'s settings.
    pub fn queue(&self, name: &str) -> Option<crate::config::QueueConfig> {
        self.lock().queues.iter().find(|q| q.name == name).cloned()
    }

    /// A call starts waiting in queue `name`; `sink` hears the agents it is offered. Its
    /// ticket, or `None` when there is no such queue.
    pub fn enqueue(&self, name: &str, sink: OfferSink) -> Option<u64> {
        let mut inner = self.lock();
        let queue = inner.queues.iter().position(|q| q.name == name)?;
        let ticket = inner.next_ticket;
        inner.next_ticket += 1;
        inner.waiting.push(Waiting {
            ticket,
            queue,
            since: Instant::now(),
            tried: Vec::new(),
            ringing: Vec::new(),
            not_before: None,
            sink,
        });
        self.dispatch(inner);
        Some(ticket)
    }

    /// The call's place among those waiting in its queue (1: next to be served).
    pub fn position(&self, ticket: u64) -> Option<usize> {
        let inner = self.lock();
        let me = inner.waiting.iter().find(|w| w.ticket == ticket)?;
        Some(
            inner
                .waiting
                .iter()
                .filter(|w| w.queue == me.queue)
                .take_while(|w| w.ticket != ticket)
                .count()
                + 1,
        )
    }

    /// `user`'s phone stopped ringing for the call unanswered: the agent is free again,
    /// and the call is offered someone else.
    pub fn no_answer(&self, ticket: u64, user: &str) {
        self.give_back(ticket, user, true);
    }

    /// Frees `user` if they are reserved for call `ticket` (never one reserved for another
    /// call since: an offer may arrive after its call left); `tried`: passed over for this
    /// call until the next round.
    fn give_back(&self, ticket: u64, user: &str, tried: bool) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(w) = inner.waiting.iter_mut().find(|w| w.ticket == ticket) else {
            return;
        };
        if !w.ringing.iter().any(|u| u == user) {
            return;
        }
        w.ringing.retain(|u| u != user);
        if tried && !w.tried.iter().any(|u| u == user) {
            w.tried.push(user.to_string());
        }
        inner.book.release(user);
        self.dispatch(guard);
    }

    /// `user`'s phone was offered the call but not rung (another kind of phone than the
    /// ones rung with it): the agent is free again, and may be offered it later.
    pub fn release(&self, ticket: u64, user: &str) {
        self.give_back(ticket, user, false);
    }

    /// `user` answered the call: it leaves the queue (other agents rung for it are
    /// released) and the agent is busy until [`call_ended`](Self::call_ended). How long
    /// the call waited.
    pub fn answered(&self, ticket: u64, user: &str) -> Option<Duration> {
        let mut inner = self.lock();
        let now = Instant::now();
        let i = inner.waiting.iter().position(|w| w.ticket == ticket)?;
        let w = inner.waiting.remove(i);
        for other in w.ringing.iter().filter(|u| *u != user) {
            inner.book.release(other);
        }
        inner.book.call_started(user, now);
        let waited = now.saturating_duration_since(w.since);
        let q = &inner.queues[w.queue];
        let name = q.name.clone();
        metrics::counter!(telemetry::QUEUE_CALLS_TOTAL, "queue" => name.clone(), "outcome" => "answered")
            .increment(1);
        if waited <= q.service_level {
            metrics::counter!(telemetry::QUEUE_ANSWERED_WITHIN_SL_TOTAL, "queue" => name)
                .increment(1);
        }
        self.dispatch(inner);
        Some(waited)
    }

    /// The call leaves its queue unanswered; the agents rung for it are released. How long
    /// it waited.
    pub fn leave(&self, ticket: u64, why: Left) -> Option<Duration> {
        let mut inner = self.lock();
        let i = inner.waiting.iter().position(|w| w.ticket == ticket)?;
        let w = inner.waiting.remove(i);
        for user in &w.ringing {
            inner.book.release(user);
        }
        let name = inner.queues[w.queue].name.clone();
        metrics::counter!(telemetry::QUEUE_CALLS_TOTAL, "queue" => name, "outcome" => why.as_str())
            .increment(1);
        self.dispatch(inner);
        Some(Instant::now().saturating_duration_since(w.since))
    }

    /// `user`'s call from queue `queue` ended: the agent wraps up for the queue's wrap-up
    /// time, then takes calls again.
    pub fn call_ended(&self, user: &str, queue: &str) {
        let mut inner = self.lock();
        let wrap_up = inner
            .queues
            .iter()
            .find(|q| q.name == queue)
            .map_or(Duration::ZERO, |q| q.wrap_up);
        inner.book.call_ended(user, wrap_up, Instant::now());
        self.dispatch(inner);
    }

    /// Offers agents to waiting calls whose wait a wrap-up ending may have changed, and
    /// refreshes the queues' gauges. The node calls it every half second.
    pub fn tick(&self) {
        let inner = self.lock();
        self.dispatch(inner);
    }

    /// Offers each waiting call that rings nobody the agents its queue picks (in arrival
    /// order), then tells their sinks, outside the lock.
    fn dispatch(&self, mut guard: std::sync::MutexGuard<'_, Inner>) {
        let now = Instant::now();
        let inner = &mut *guard;
        let mut offers: Vec<(OfferSink, QueueOffer)> = Vec::new();
        for w in inner.waiting.iter_mut() {
            if !w.ringing.is_empty() || w.not_before.is_some_and(|t| now < t) {
                continue;
            }
            let picker = &mut inner.pickers[w.queue];
            let agents = picker.offer(&inner.book, &w.tried, now);
            if agents.is_empty() && !w.tried.is_empty() && picker.anyone_available(&inner.book, now)
            {
                // Everyone free has been tried: a new round, after a pause (a phone that
                // fails at once is not rung in a loop).
                w.tried.clear();
                w.not_before = Some(now + RETRY_PAUSE);
                continue;
            }
            if agents.is_empty() {
                continue;
            }
            for a in &agents {
                inner.book.reserve(a, now);
            }
            w.ringing = agents.clone();
            offers.push((
                Arc::clone(&w.sink),
                QueueOffer {
                    ticket: w.ticket,
                    agents,
                },
            ));
        }
        for (i, q) in inner.queues.iter().enumerate() {
            let mut count = 0usize;
            let mut longest = Duration::ZERO;
            for w in inner.waiting.iter().filter(|w| w.queue == i) {
                count += 1;
                longest = longest.max(now.saturating_duration_since(w.since));
            }
            metrics::gauge!(telemetry::QUEUE_WAITING, "queue" => q.name.clone()).set(count as f64);
            metrics::gauge!(telemetry::QUEUE_LONGEST_WAIT_SECONDS, "queue" => q.name.clone())
                .set(longest.as_secs_f64());
        }
        drop(guard);
        for (sink, offer) in offers {
            sink(offer);
        }
    }

    /// One agent.
    pub fn get(&self, user: &str) -> Option<AgentView> {
        let inner = self.lock();
        Self::view(&inner, user, Instant::now())
    }

    /// Every agent, by user.
    pub fn list(&self) -> Vec<AgentView> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .info
            .keys()
            .filter_map(|u| Self::view(&inner, u, now))
            .collect()
    }

    /// Every queue, with its members' presence.
    pub fn queues(&self) -> Vec<QueueView> {
        use crate::control::queue::Strategy;
        let inner = self.lock();
        let now = Instant::now();
        inner
            .queues
            .iter()
            .map(|q| {
                let members: Vec<MemberView> = q
                    .members
                    .iter()
                    .map(|m| MemberView {
                        user: m.clone(),
                        presence: inner
                            .book
                            .presence(m, now)
                            .unwrap_or(Presence::Offline)
                            .as_str(),
                    })
                    .collect();
                QueueView {
                    name: q.name.clone(),
                    strategy: match q.strategy {
                        Strategy::LongestIdle => "longest_idle",
                        Strategy::RoundRobin => "round_robin",
                        Strategy::RingAll => "ring_all",
                    },
                    available: members
                        .iter()
                        .filter(|m| m.presence == Presence::Available.as_str())
                        .count(),
                    members,
                    overflow_route: q.overflow_route.clone(),
                }
            })
            .collect()
    }

    fn view(inner: &Inner, user: &str, now: Instant) -> Option<AgentView> {
        let (display_name, queues, registered) = inner.info.get(user)?;
        Some(AgentView {
            user: user.to_string(),
            display_name: display_name.clone(),
            queues: queues.clone(),
            registered: *registered,
            presence: inner
                .book
                .presence(user, now)
                .unwrap_or(Presence::Offline)
                .as_str(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentConfig, QueueConfig, Secret};
    use crate::control::queue::Strategy;

    fn directory() -> Directory {
        let agent = |u: &str| AgentConfig {
            user: u.into(),
            password: Secret::new("p"),
            display_name: None,
            queues: vec!["support".into()],
            business_number: None,
        };
        let queue = QueueConfig {
            name: "support".into(),
            strategy: Strategy::LongestIdle,
            ring_timeout: Duration::from_secs(15),
            timeout: Duration::from_secs(120),
            wrap_up: Duration::from_secs(10),
            service_level: Duration::from_secs(20),
            announce_position: None,
            overflow_route: None,
            members: vec!["alice".into(), "bob".into()],
        };
        Directory::new(&[agent("alice"), agent("bob")], &[queue])
    }

    fn sink() -> (OfferSink, std::sync::mpsc::Receiver<QueueOffer>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let sink: OfferSink = Arc::new(move |o| {
            let _ = tx.lock().unwrap_or_else(PoisonError::into_inner).send(o);
        });
        (sink, rx)
    }

    #[test]
    fn waiting_calls_are_served_in_arrival_order_and_an_agent_rings_for_one_call_at_a_time() {
        let d = directory();
        let (s1, rx1) = sink();
        let (s2, rx2) = sink();
        assert_eq!(d.enqueue("nowhere", s1.clone()), None);
        let t1 = d.enqueue("support", s1).unwrap();
        let t2 = d.enqueue("support", s2).unwrap();
        assert_eq!((d.position(t1), d.position(t2)), (Some(1), Some(2)));
        // Nobody registered: nobody is offered.
        assert!(rx1.try_recv().is_err() && rx2.try_recv().is_err());
        d.set_registered("alice", true);
        assert_eq!(rx1.try_recv().unwrap().agents, ["alice"]);
        assert!(
            rx2.try_recv().is_err(),
            "alice rings for the first call only"
        );
        d.set_registered("bob", true);
        assert_eq!(rx2.try_recv().unwrap().agents, ["bob"]);
        assert_eq!(d.get("alice").unwrap().presence, "busy");
        // Alice answers; the first call leaves the queue; bob lets the second ring out.
        assert!(d.answered(t1, "alice").is_some());
        assert_eq!(d.position(t1), None);
        assert_eq!(d.position(t2), Some(1));
        d.no_answer(t2, "bob");
        assert_eq!(d.get("bob").unwrap().presence, "available");
        // Bob was tried and Alice is on a call: a new round starts only after the pause.
        assert!(rx2.try_recv().is_err(), "no ringing in a loop");
        // Alice's call ends: she wraps up (10 s) before the next one.
        d.call_ended("alice", "support");
        assert_eq!(d.get("alice").unwrap().presence, "wrap_up");
        // The caller gives up.
        assert!(d.leave(t2, Left::Abandoned).is_some());
        assert_eq!(d.leave(t2, Left::Abandoned), None, "once");
    }

    #[test]
    fn an_agent_going_offline_is_not_offered() {
        let d = directory();
        d.set_registered("alice", true);
        assert!(d.set_willing("alice", false));
        assert!(!d.set_willing("nobody", false));
        let (s, rx) = sink();
        let t = d.enqueue("support", s).unwrap();
        assert!(rx.try_recv().is_err());
        assert!(d.set_willing("alice", true));
        assert_eq!(
            rx.try_recv().unwrap(),
            QueueOffer {
                ticket: t,
                agents: vec!["alice".into()]
            }
        );
    }
}
