//! An actor's one deadline, owned: arming it again replaces the sleeper, and dropping it
//! (the actor ends, however it ends) cancels it. Nothing of a call sleeps past the call.

use std::time::Instant;

use ractor::{ActorRef, Message};
use tokio::task::JoinHandle;

/// One pending wake-up of an actor.
pub(crate) struct Wakeup<M: Message> {
    at: Option<Instant>,
    sleeper: Option<JoinHandle<Result<(), ractor::MessagingErr<M>>>>,
}

impl<M: Message> Default for Wakeup<M> {
    fn default() -> Self {
        Wakeup {
            at: None,
            sleeper: None,
        }
    }
}

impl<M: Message> Wakeup<M> {
    /// Wakes `actor` with `msg()` at `at` (`None`: not at all), instead of any earlier
    /// setting.
    pub(crate) fn set(&mut self, actor: &ActorRef<M>, at: Option<Instant>, msg: fn() -> M) {
        if at == self.at {
            return;
        }
        self.at = at;
        if let Some(old) = self.sleeper.take() {
            old.abort();
        }
        if let Some(at) = at {
            let wait = at.saturating_duration_since(Instant::now());
            self.sleeper = Some(actor.send_after(wait, msg));
        }
    }

    /// The wake-up came: it is no longer pending.
    pub(crate) fn fired(&mut self) {
        self.at = None;
        self.sleeper = None;
    }
}

impl<M: Message> Drop for Wakeup<M> {
    fn drop(&mut self) {
        if let Some(sleeper) = self.sleeper.take() {
            sleeper.abort();
        }
    }
}
