//! Call actions that must reach Meta whatever happens to the call that sent them: the
//! `reject` or `terminate` a call sends as it ends, the `terminate` of a call Meta placed
//! after the switch gave up on it, the `reject` of a call the switch refuses.
//!
//! A call hands its action over and moves on, so a slow Graph API never holds a call's
//! teardown. The outbox sends at most [`MAX_IN_FLIGHT`] actions at once, in the order they
//! came, and is drained when the node stops so a shutdown loses none of them. Handing over
//! never waits and needs no runtime: a call whose state is dropped as the process ends still
//! queues its `terminate`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use super::graph::{CallAction, GraphClient};

/// Actions queued before handing over fails (and is logged as an error).
pub(crate) const CAPACITY: usize = 8192;
/// Actions sent at once.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

struct Job {
    phone_number_id: String,
    action: CallAction,
    span: tracing::Span,
}

/// Where calls hand over the actions Meta must get. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Job>,
    graph: Arc<GraphClient>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued", &(CAPACITY - self.tx.capacity()))
            .finish_non_exhaustive()
    }
}

/// The task sending an outbox's actions; the node drains it when it stops.
#[derive(Debug)]
pub struct OutboxWorker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<usize>,
}

impl Outbox {
    /// An outbox sending through `graph`, and the task that sends (call from a runtime).
    pub fn start(graph: Arc<GraphClient>) -> (Outbox, OutboxWorker) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(Arc::clone(&graph), rx, stopped));
        (Outbox { tx, graph }, OutboxWorker { stop, task })
    }

    /// The Graph API client, for the actions whose outcome a call waits for.
    pub fn graph(&self) -> &Arc<GraphClient> {
        &self.graph
    }

    /// Queues `action` for business number `phone_number_id`, logged in the current
    /// span. False (and an error logged) when the queue is full or the node has stopped:
    /// Meta then ends the call at its own timeout.
    pub fn send(&self, phone_number_id: &str, action: CallAction) -> bool {
        let name = action.name();
        let call_id = match &action {
            CallAction::Reject { call_id } | CallAction::Terminate { call_id } => call_id.clone(),
            _ => String::new(),
        };
        let job = Job {
            phone_number_id: phone_number_id.to_string(),
            action,
            span: tracing::Span::current(),
        };
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(e) => {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "the outbox is full",
                    mpsc::error::TrySendError::Closed(_) => "the node has stopped",
                };
                tracing::error!(action = name, wa_call_id = %call_id, why, "Meta not told: it ends the call at its own timeout");
                false
            }
        }
    }
}

impl OutboxWorker {
    /// Stops taking new actions, sends those queued and waits for them, at most `timeout`;
    /// the number left unsent.
    pub async fn drain(self, timeout: Duration) -> usize {
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(left)) => left,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Meta outbox failed");
                0
            }
            Err(_) => {
                task.abort();
                tracing::error!(
                    timeout_secs = timeout.as_secs(),
                    "Meta outbox not drained in time; Meta ends the rest at its own timeout"
                );
                1
            }
        }
    }
}

async fn run(
    graph: Arc<GraphClient>,
    mut rx: mpsc::Receiver<Job>,
    mut stopped: oneshot::Receiver<()>,
) -> usize {
    let mut in_flight = JoinSet::new();
    let mut stopping = false;
    loop {
        if in_flight.len() >= MAX_IN_FLIGHT {
            in_flight.join_next().await;
            continue;
        }
        let job = tokio::select! {
            job = rx.recv() => job,
            _ = &mut stopped, if !stopping => {
                // Nothing new from now on; what is queued is still sent.
                stopping = true;
                rx.close();
                continue;
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
        };
        let Some(job) = job else {
            break;
        };
        let graph = Arc::clone(&graph);
        let span = job.span.clone();
        in_flight.spawn(
            async move {
                if let Err(e) = graph.call_action(&job.phone_number_id, &job.action).await {
                    tracing::warn!(error = %e, action = job.action.name(), "Meta was not told");
                }
            }
            .instrument(span),
        );
    }
    while in_flight.join_next().await.is_some() {}
    0
}
