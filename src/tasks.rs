//! Work that must finish after whoever started it is gone: an audit record for a call that
//! has ended, a permission change whose HTTP client hung up. Such work is never detached:
//! it runs in a [`Background`] set that its owner (the permission service, for the node)
//! waits for at shutdown, so the node stops only once each piece is done, or reports how
//! many were cut short.
//!
//! Work that belongs to one call and must end with it does not go here: a call's actors
//! own theirs (a `JoinSet` in the actor, cancelled when the actor stops).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// A set of owned background tasks. Cheap to clone; clones share the set.
#[derive(Clone, Default)]
pub struct Background {
    set: Arc<Mutex<JoinSet<()>>>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("pending", &self.pending())
            .finish()
    }
}

impl Background {
    /// An empty set.
    pub fn new() -> Background {
        Background::default()
    }

    /// Runs `work` in the set. Without a runtime (the process is ending) nothing runs and
    /// `false` says so: the caller decides what that loses.
    pub fn spawn(
        &self,
        what: &'static str,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(what, "no runtime left to run background work");
            return false;
        };
        let mut set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        // Reap what has finished, so the set holds only work in flight.
        while let Some(done) = set.try_join_next() {
            report(done);
        }
        set.spawn_on(work, &runtime);
        true
    }

    /// Runs `work` in the set and hands its result back through the receiver; the work
    /// goes on if the receiver is dropped.
    pub fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl Future<Output = T> + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.spawn(what, async move {
            let _ = tx.send(work.await);
        });
        rx
    }

    /// Work started and not yet reaped.
    pub fn pending(&self) -> usize {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Waits up to `timeout` for every task, including those started while waiting, then
    /// aborts what is left and returns how many that was.
    pub async fn settle(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut set =
                std::mem::take(&mut *self.set.lock().unwrap_or_else(PoisonError::into_inner));
            if set.is_empty() {
                return 0;
            }
            loop {
                match tokio::time::timeout_at(deadline, set.join_next()).await {
                    Ok(Some(done)) => report(done),
                    Ok(None) => break,
                    Err(_) => {
                        let mut left = set.len();
                        set.abort_all();
                        left += std::mem::take(
                            &mut *self.set.lock().unwrap_or_else(PoisonError::into_inner),
                        )
                        .len();
                        return left;
                    }
                }
            }
        }
    }
}

fn report(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(error = %e, "background work panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settle_waits_for_work_started_while_settling_and_reports_what_it_cut_short() {
        let bg = Background::new();
        let (tx, rx) = oneshot::channel::<()>();
        let inner = bg.clone();
        bg.spawn("first", async move {
            let _ = rx.await;
            // Started while the set is being settled: waited for too.
            inner.spawn("second", async {
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        });
        assert_eq!(bg.pending(), 1);
        let settling = tokio::spawn({
            let bg = bg.clone();
            async move { bg.settle(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let _ = tx.send(());
        assert_eq!(settling.await.expect("settle"), 0);
        assert_eq!(bg.pending(), 0);

        bg.spawn("stuck", std::future::pending());
        assert_eq!(bg.settle(Duration::from_millis(20)).await, 1);
        assert_eq!(bg.pending(), 0);
    }

    #[tokio::test]
    async fn a_result_comes_back_and_finished_work_is_reaped() {
        let bg = Background::new();
        assert_eq!(bg.run("sum", async { 2 + 2 }).await, Ok(4));
        for _ in 0..100 {
            bg.spawn("noop", async {});
            tokio::task::yield_now().await;
        }
        assert!(
            bg.pending() < 100,
            "finished work is reaped: {}",
            bg.pending()
        );
        assert_eq!(bg.settle(Duration::from_secs(1)).await, 0);
    }

    #[test]
    fn without_a_runtime_nothing_runs_and_the_caller_hears_it() {
        let bg = Background::new();
        assert!(!bg.spawn("late", async {}));
        assert_eq!(bg.pending(), 0);
    }
}
