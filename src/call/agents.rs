//! The node's agents: who they are, whether their phone is registered, the presence they
//! chose, and (as queues are served) their calls and wrap-up. The registrar tells it when
//! a phone registers or goes; the REST API reads it and sets an agent's chosen presence.
//! The state itself is [`control::queue::AgentBook`](crate::control::queue::AgentBook),
//! sans-IO; this is its shared, clocked front.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::control::queue::{AgentBook, Presence};

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

#[derive(Debug)]
struct Inner {
    book: AgentBook,
    queues: Vec<crate::config::QueueConfig>,
    /// Display name, queues, registered.
    info: BTreeMap<String, (Option<String>, Vec<String>, bool)>,
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
                queues: queues.to_vec(),
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
    }

    /// The agent chose to take calls (`true`) or not; false when there is no such agent.
    pub fn set_willing(&self, user: &str, willing: bool) -> bool {
        let mut inner = self.lock();
        if !inner.info.contains_key(user) {
            return false;
        }
        inner.book.set_willing(user, willing, Instant::now());
        true
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
