//! The root supervisor of a node: parent of every call supervisor and of the service actors.
//!
//! - Service actors (the CDR writer, the process sampler) are restarted when they fail, after
//!   a backoff that doubles with each failure in a row (100 ms to 30 s) and resets once a
//!   service has run for a minute.
//! - A call supervisor that dies without closing its call (a panic in the supervisor itself)
//!   is closed out here: the call leaves the registry and gets its CDR, with the failure as
//!   cause. Its children were killed with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::call::registry::CallRegistry;
use crate::call::{close_out, CallEnd};
use crate::store::writer::{CdrQueue, CdrWriter, CdrWriterArgs, CdrWriterMsg};
use crate::store::HangupParty;
use crate::telemetry::{self, ProcessSampler, SamplerMsg};

/// A service has run long enough that its next failure starts the backoff afresh.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

/// Service actors the root keeps running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    /// Batches CDRs into the store.
    CdrWriter,
    /// Samples process resource usage into metrics.
    ProcessSampler,
}

impl Service {
    /// Metric and log name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Service::CdrWriter => "cdr_writer",
            Service::ProcessSampler => "process_sampler",
        }
    }
}

/// The root supervisor.
pub(crate) struct RootSupervisor;

/// What the root starts with.
pub(crate) struct RootArgs {
    /// Live calls.
    pub registry: CallRegistry,
    /// Where CDRs go.
    pub cdrs: CdrQueue,
    /// How the CDR writer is (re)started.
    pub writer: CdrWriterArgs,
    /// This node, for CDRs.
    pub node_id: Arc<str>,
}

/// Messages of [`RootSupervisor`].
#[derive(Debug)]
pub(crate) enum RootMsg {
    /// Start a service again (after its backoff).
    Restart(Service),
    /// The running CDR writer, if any (it changes when the writer is restarted).
    CdrWriter(RpcReplyPort<Option<ActorRef<CdrWriterMsg>>>),
    /// How many times each service was restarted.
    #[cfg(test)]
    Restarts(RpcReplyPort<Vec<(Service, u32)>>),
}

struct Slot {
    service: Service,
    cell: Option<ActorCell>,
    started: Instant,
    failures_in_a_row: u32,
    restarts: u32,
}

/// State of the root.
pub(crate) struct Root {
    args: RootArgs,
    slots: Vec<Slot>,
    writer: Option<ActorRef<CdrWriterMsg>>,
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = Root;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RootArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut root = Root {
            args,
            slots: [Service::CdrWriter, Service::ProcessSampler]
                .into_iter()
                .map(|service| Slot {
                    service,
                    cell: None,
                    started: Instant::now(),
                    failures_in_a_row: 0,
                    restarts: 0,
                })
                .collect(),
            writer: None,
        };
        for service in [Service::CdrWriter, Service::ProcessSampler] {
            root.start(&myself, service).await?;
        }
        Ok(root)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        root: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Restart(service) => {
                if let Some(slot) = root.slots.iter_mut().find(|s| s.service == service) {
                    slot.restarts += 1;
                    tracing::info!(
                        service = service.as_str(),
                        restarts = slot.restarts,
                        "restarting a service"
                    );
                }
                metrics::counter!(telemetry::ACTOR_RESTARTS_TOTAL, "actor" => service.as_str())
                    .increment(1);
                if let Err(e) = root.start(&myself, service).await {
                    // Starting failed (pre_start error): try again after the next backoff.
                    root.schedule_restart(&myself, service, &e.to_string());
                }
            }
            RootMsg::CdrWriter(reply) => {
                let _ = reply.send(root.writer.clone());
            }
            #[cfg(test)]
            RootMsg::Restarts(reply) => {
                let _ = reply.send(root.slots.iter().map(|s| (s.service, s.restarts)).collect());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        root: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        if let Some(slot) = root
            .slots
            .iter_mut()
            .find(|s| s.cell.as_ref().is_some_and(|c| c.get_id() == id))
        {
            slot.cell = None;
            let service = slot.service;
            if service == Service::CdrWriter {
                root.writer = None;
            }
            if failure.is_some() {
                metrics::counter!(telemetry::ACTOR_FAILURES_TOTAL, "actor" => service.as_str())
                    .increment(1);
            }
            let why = failure.unwrap_or_else(|| "stopped".into());
            root.schedule_restart(&myself, service, &why);
            return Ok(());
        }
        // Not a service: a call supervisor. If its call is still registered, it died without
        // closing the call; close it here.
        if let Some((call_id, entry, closing)) = root.args.registry.remove_by_actor(id) {
            let failure = match &failure {
                Some(err) => {
                    metrics::counter!(telemetry::ACTOR_FAILURES_TOTAL, "actor" => "call_supervisor")
                        .increment(1);
                    format!("call_supervisor failed: {err}")
                }
                None => "call_supervisor stopped without ending the call".to_string(),
            };
            tracing::error!(%call_id, %failure, "call supervisor died; closing the call out");
            // The entry knows when the call rang and was answered: an answered call keeps its
            // duration, and counts as connected for its permission.
            let cdr = close_out(
                &root.args.node_id,
                &call_id,
                &entry,
                entry.ringing_at,
                entry.answered_at,
                CallEnd {
                    by: HangupParty::Switch,
                    cause: "internal_failure".into(),
                    failure: Some(failure),
                },
            );
            if let Some(permit) = &entry.permit {
                permit.settle(&cdr);
            }
            // Never wait on the queue here: if it is full, the root must stay free to restart
            // the writer that drains it. The call counts as closing until the CDR is queued.
            let queue = root.args.cdrs.clone();
            tokio::spawn(async move {
                queue.submit(cdr).await;
                drop(closing);
            });
        }
        Ok(())
    }
}

impl Root {
    async fn start(
        &mut self,
        myself: &ActorRef<RootMsg>,
        service: Service,
    ) -> Result<(), ActorProcessingErr> {
        let parent = myself.get_cell();
        let cell = match service {
            Service::CdrWriter => {
                let (writer, _) =
                    Actor::spawn_linked(None, CdrWriter, self.args.writer.clone(), parent).await?;
                let cell = writer.get_cell();
                self.writer = Some(writer);
                cell
            }
            Service::ProcessSampler => {
                let (sampler, _): (ActorRef<SamplerMsg>, _) =
                    Actor::spawn_linked(None, ProcessSampler, (), parent).await?;
                sampler.get_cell()
            }
        };
        if let Some(slot) = self.slots.iter_mut().find(|s| s.service == service) {
            slot.cell = Some(cell);
            slot.started = Instant::now();
        }
        Ok(())
    }

    fn schedule_restart(&mut self, myself: &ActorRef<RootMsg>, service: Service, why: &str) {
        let Some(slot) = self.slots.iter_mut().find(|s| s.service == service) else {
            return;
        };
        if slot.started.elapsed() >= BACKOFF_RESET_AFTER {
            slot.failures_in_a_row = 0;
        }
        slot.failures_in_a_row += 1;
        let delay = restart_backoff(slot.failures_in_a_row);
        tracing::error!(
            actor = service.as_str(),
            reason = why,
            restart_in_ms = delay.as_millis() as u64,
            "service actor stopped; restarting"
        );
        myself.send_after(delay, move || RootMsg::Restart(service));
    }
}

/// 100 ms for the first failure in a row, doubling, at most 30 s.
pub(crate) fn restart_backoff(failures_in_a_row: u32) -> Duration {
    let exp = failures_in_a_row.saturating_sub(1).min(10);
    Duration::from_millis(100 << exp).min(Duration::from_secs(30))
}
