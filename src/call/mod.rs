//! Calls: one supervised actor tree per call, and the registry of live calls.
//!
//! `call` owns a call's life from the moment it is admitted to its CDR. Each call is a
//! [`supervisor::CallSupervisor`] with children for media and for the legs its
//! [`CallPlan`] names (the WhatsApp leg, the SIP bridge); one call failing never disturbs
//! another. Ingress (webhooks in `whatsapp`, SIP and the REST API's callbacks in `sip`)
//! decides each call's plan and talks to calls only through [`Calls`]. Media never flows
//! through these actors.
//!
//! Failure semantics, decided once for every call:
//! - a child that returns an error or panics ends *its* call: the other legs are told to hang
//!   up, the remaining children are stopped (releasing their ports), the call leaves the
//!   registry and exactly one CDR is written with the failure as its cause;
//! - a call supervisor that itself dies is closed out by the root supervisor, which writes the
//!   CDR from the registry entry; its children die with it;
//! - service actors (CDR writer, process sampler) are restarted by the root with backoff.

pub mod agents;
pub mod app;
pub(crate) mod cluster;
pub mod ivr;
pub mod leg;
pub mod media;
pub(crate) mod plan;
pub mod recordings;
pub(crate) mod registry;
pub(crate) mod sip;
pub mod stream;
pub mod supervisor;
#[cfg(test)]
mod testing;
mod wakeup;
pub(crate) mod whatsapp;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell};
use serde::Serialize;

use crate::media::ports::PortAllocator;
use crate::store::writer::CdrQueue;
use crate::store::{CallOutcome, Cdr, Direction, HangupParty};
use crate::telemetry;
use leg::{LegSignal, LegState};
pub use plan::CallPlan;
use registry::{CallEntry, CallRegistry};
use supervisor::{CallArgs, CallMsg, CallSupervisor};

/// How long a request to a call's actors may take before the call is reported unresponsive.
pub const CALL_RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the REST API waits for a call to take verbs (their prompts fetched first).
pub const ACTIONS_TIMEOUT: Duration = Duration::from_secs(35);

/// The switch's id of a call: unique, opaque, stable from admission to CDR.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CallId(String);

impl CallId {
    /// A new random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for CallId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for CallId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

/// The two signalling sides of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LegRole {
    /// The WhatsApp user's side (Meta).
    WhatsApp,
    /// The business's side (SIP trunk, agent, IVR).
    Business,
}

impl LegRole {
    /// Name used in logs and in `waswitch_actor_failures_total{actor}`.
    pub fn as_str(self) -> &'static str {
        match self {
            LegRole::WhatsApp => "wa_leg",
            LegRole::Business => "sip_leg",
        }
    }

    /// The party that hangs up when this leg's far end does.
    pub fn party(self) -> HangupParty {
        match self {
            LegRole::WhatsApp => HangupParty::Customer,
            LegRole::Business => HangupParty::Business,
        }
    }

    /// The leg that is called in a call of `direction` (its answer answers the call).
    pub fn called(direction: Direction) -> Self {
        match direction {
            Direction::UserInitiated | Direction::SipTransit => LegRole::Business,
            Direction::BusinessInitiated => LegRole::WhatsApp,
        }
    }
}

/// A call as offered to the switch by an ingress.
#[derive(Debug, Clone, Serialize)]
pub struct CallOffer {
    /// Who is calling whom.
    pub direction: Direction,
    /// The business's WhatsApp number.
    pub business_number: Option<String>,
    /// The customer's WhatsApp id.
    pub customer_wa_id: Option<String>,
    /// Meta's call id, when Meta already assigned one.
    pub wa_call_id: Option<String>,
    /// SIP Call-ID of the business leg, when it already exists.
    pub sip_call_id: Option<String>,
    /// Trunk of the business leg.
    pub trunk: Option<String>,
}

impl CallOffer {
    /// An offer with only a direction (the rest unknown yet).
    pub fn new(direction: Direction) -> Self {
        Self {
            direction,
            business_number: None,
            customer_wa_id: None,
            wa_call_id: None,
            sip_call_id: None,
            trunk: None,
        }
    }
}

/// Why a call was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallRefused {
    /// The node is draining before shutdown; the ingress answers 503 so the caller retries
    /// another node.
    #[error("node is draining")]
    Draining,
    /// The node carries its configured maximum of calls (`limits.max_calls`), or has no
    /// free media ports left; the ingress answers 503 with Retry-After.
    #[error("node at its call limit")]
    Overloaded,
    /// The call could not be set up (for example no free media port); a CDR was written.
    #[error("call setup failed: {0}")]
    Setup(String),
}

/// How a call ends, as decided by whoever ends it.
#[derive(Debug, Clone)]
pub struct CallEnd {
    /// Which side ended it.
    pub by: HangupParty,
    /// End cause.
    pub cause: String,
    /// Which part of the switch failed, for failed calls.
    pub failure: Option<String>,
}

/// A live call's view, for the REST API and operators.
#[derive(Debug, Clone, Serialize)]
pub struct CallSnapshot {
    /// The call id.
    pub call_id: CallId,
    /// What was offered.
    pub offer: CallOffer,
    /// When it was offered (Unix ms).
    pub offered_at: i64,
    /// When the called party started ringing.
    pub ringing_at: Option<i64>,
    /// When the called party answered.
    pub answered_at: Option<i64>,
    /// The WhatsApp leg (`None`: not answering).
    pub whatsapp_leg: Option<LegState>,
    /// The business leg (`None`: not answering).
    pub business_leg: Option<LegState>,
    /// Media: ports, anchoring, DTMF, counters (`None`: media not answering).
    pub media: Option<media::MediaPorts>,
}

/// Makes a call's child fail, to exercise supervision (tests and the `fault-injection`
/// feature only; never in a release build).
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The child panics.
    Panic,
    /// The child's handler returns an error.
    Error,
}

#[cfg(any(test, feature = "fault-injection"))]
impl Fault {
    fn trigger(self, actor: &str) -> Result<(), ractor::ActorProcessingErr> {
        match self {
            Fault::Panic => panic!("{actor}: panic injected by a test"),
            Fault::Error => Err(format!("{actor}: error injected by a test").into()),
        }
    }
}

/// Stops this task when the process was started with `WASWITCH_TEST_PAUSE_AT` naming
/// `point` (`point` for good, `point:MS` for that many milliseconds): a test then kills the
/// switch (`kill -9`) or stops it in exactly that window of a call's life. Points:
/// `before_dial` (a business call's permission is reserved, Meta not yet asked),
/// `before_cdr` (a call has ended, its CDR and permission settlement not yet written),
/// `before_cdr_submitted` (its CDR is built, not yet handed to the writer). The
/// `fault-injection` feature only; a no-op otherwise.
pub async fn pause_point(point: &str) {
    #[cfg(any(test, feature = "fault-injection"))]
    if let Ok(setting) = std::env::var("WASWITCH_TEST_PAUSE_AT") {
        let (name, ms) = match setting.split_once(':') {
            Some((name, ms)) => (name.to_string(), ms.parse::<u64>().ok()),
            None => (setting, None),
        };
        if name == point {
            tracing::warn!(
                point,
                ?ms,
                "paused here for a test (WASWITCH_TEST_PAUSE_AT)"
            );
            match ms {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(any(test, feature = "fault-injection")))]
    let _ = point;
}

pub use crate::clock::now_ms;

/// Builds the CDR of a call that has just left the registry and counts it in
/// `waswitch_calls_total`.
pub fn close_out(
    node_id: &str,
    id: &CallId,
    entry: &CallEntry,
    ringing_at: Option<i64>,
    answered_at: Option<i64>,
    end: CallEnd,
) -> Cdr {
    let ended_at = now_ms();
    let outcome = if end.failure.is_some() {
        CallOutcome::Failed
    } else if answered_at.is_some() {
        CallOutcome::Answered
    } else {
        CallOutcome::Unanswered
    };
    metrics::counter!(
        telemetry::CALLS_TOTAL,
        "direction" => entry.offer.direction.as_str(),
        "outcome" => outcome.as_str()
    )
    .increment(1);
    Cdr {
        call_id: id.to_string(),
        node_id: node_id.to_string(),
        direction: entry.offer.direction,
        business_number: entry.offer.business_number.clone(),
        customer_wa_id: entry.offer.customer_wa_id.clone(),
        wa_call_id: entry.offer.wa_call_id.clone(),
        sip_call_id: entry.offer.sip_call_id.clone(),
        trunk: entry.offer.trunk.clone(),
        offered_at: entry.offered_at,
        ringing_at,
        answered_at,
        ended_at,
        duration_ms: answered_at.map_or(0, |a| (ended_at - a).max(0)),
        outcome,
        hangup_by: end.by,
        end_cause: end.cause,
        failure: end.failure,
        media: None,
        codec_path: None,
        control: None,
        recording: None,
        meta_recording_id: None,
        meta_transcript_id: None,
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The call plane of a node: admits calls, finds them, ends them. Cheap to clone.
#[derive(Clone)]
pub struct Calls {
    inner: Arc<CallsInner>,
}

struct CallsInner {
    registry: CallRegistry,
    /// The parent of every call supervisor (the node's root supervisor).
    parent: ActorCell,
    cdrs: CdrQueue,
    ports: PortAllocator,
    media: std::sync::OnceLock<crate::media::plane::MediaPlane>,
    recordings: std::sync::OnceLock<recordings::Recordings>,
    node_id: Arc<str>,
    max_calls: usize,
    /// Calls past the limit check and not yet in the registry, so concurrent admissions
    /// cannot overshoot `max_calls`.
    admitting: std::sync::atomic::AtomicUsize,
}

impl Calls {
    /// The call plane under `parent` (the node's root supervisor, which closes out a call
    /// whose supervisor dies), admitting at most `max_calls` calls at once (0: no limit).
    pub fn new(
        registry: CallRegistry,
        parent: ActorCell,
        cdrs: CdrQueue,
        ports: PortAllocator,
        node_id: &str,
        max_calls: u32,
    ) -> Self {
        Self {
            inner: Arc::new(CallsInner {
                registry,
                parent,
                cdrs,
                ports,
                media: std::sync::OnceLock::new(),
                recordings: std::sync::OnceLock::new(),
                node_id: Arc::from(node_id),
                max_calls: max_calls as usize,
                admitting: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// Admits a call made as `plan` says and starts its actor tree.
    pub async fn start(&self, offer: CallOffer, plan: CallPlan) -> Result<CallId, CallRefused> {
        self.start_as(CallId::new(), offer, plan).await
    }

    /// [`start`](Self::start) with the call's id chosen beforehand (a business-initiated
    /// call reserves its permission under it before it is admitted).
    pub async fn start_as(
        &self,
        id: CallId,
        offer: CallOffer,
        plan: CallPlan,
    ) -> Result<CallId, CallRefused> {
        let inner = &self.inner;
        if plan.direction() != offer.direction {
            return Err(CallRefused::Setup(format!(
                "a {} plan does not carry a {} call",
                plan.name(),
                offer.direction.as_str()
            )));
        }
        if inner.registry.is_draining() {
            metrics::counter!(telemetry::CALLS_REFUSED_TOTAL, "reason" => "draining").increment(1);
            return Err(CallRefused::Draining);
        }
        use std::sync::atomic::Ordering::SeqCst;
        let ahead = inner.admitting.fetch_add(1, SeqCst);
        // Undone however this function returns.
        let _admitting = scopeguard(|| {
            inner.admitting.fetch_sub(1, SeqCst);
        });
        if inner.max_calls > 0 && inner.registry.len() + ahead >= inner.max_calls {
            metrics::counter!(telemetry::CALLS_REFUSED_TOTAL, "reason" => "overload").increment(1);
            return Err(CallRefused::Overloaded);
        }
        // A call anchors two legs: its two port pairs are leased here, at admission, so a
        // call that cannot have them is refused up front (503), never failed halfway, and
        // calls admitted together cannot count the same free ports.
        let leases = match inner.ports.lease_two() {
            Ok(leases) => leases,
            Err(_) => {
                metrics::counter!(telemetry::CALLS_REFUSED_TOTAL, "reason" => "media_ports")
                    .increment(1);
                return Err(CallRefused::Overloaded);
            }
        };
        let args = CallArgs {
            id: id.clone(),
            offer,
            plan: Box::new(plan),
            offered_at: now_ms(),
            registry: inner.registry.clone(),
            cdrs: inner.cdrs.clone(),
            ports: inner.ports.clone(),
            leases,
            media: inner.media.get().cloned(),
            recordings: inner.recordings.get().cloned(),
            node_id: Arc::clone(&inner.node_id),
        };
        match Actor::spawn_linked(None, CallSupervisor, args, inner.parent.clone()).await {
            Ok(_) => Ok(id),
            Err(e) => {
                metrics::counter!(telemetry::CALLS_REFUSED_TOTAL, "reason" => "setup_failed")
                    .increment(1);
                Err(CallRefused::Setup(e.to_string()))
            }
        }
    }

    /// Delivers what Meta said about a WhatsApp call; false if the call is gone.
    pub fn whatsapp_event(&self, id: &CallId, wa_call_id: &str, event: whatsapp::WaEvent) -> bool {
        match self.inner.registry.get(id) {
            Some(call) => call
                .send_message(CallMsg::WhatsApp {
                    wa_call_id: wa_call_id.to_string(),
                    event,
                })
                .is_ok(),
            None => false,
        }
    }

    /// Call `id` is known to Meta as `wa_call_id` (learnt after it was placed); false if
    /// the call is gone.
    pub fn learn_wa_call_id(&self, id: &CallId, wa_call_id: &str) -> bool {
        match self.inner.registry.get(id) {
            Some(call) => call
                .send_message(CallMsg::MetaWaCallId(wa_call_id.to_string()))
                .is_ok(),
            None => false,
        }
    }

    /// Delivers a far-end event to one leg of a call; false if the call is gone.
    pub fn signal(&self, id: &CallId, role: LegRole, signal: LegSignal) -> bool {
        match self.inner.registry.get(id) {
            Some(call) => call.send_message(CallMsg::Signal { role, signal }).is_ok(),
            None => false,
        }
    }

    /// Ends a call from outside (API, operator, shutdown); false if the call is gone.
    pub async fn hangup(&self, id: &CallId, by: HangupParty, cause: &str) -> bool {
        let Some(call) = self.inner.registry.get(id) else {
            return false;
        };
        let cause = cause.to_string();
        call.call(
            |reply| CallMsg::Hangup {
                by,
                cause,
                reply: Some(reply),
            },
            Some(CALL_RPC_TIMEOUT),
        )
        .await
        .is_ok_and(|r| matches!(r, ractor::rpc::CallResult::Success(())))
    }

    /// Replaces what call `id`'s control runs with `body`'s verbs (JSON, as an app answers);
    /// `None` when the call is gone, else whether they run or the status and why not.
    pub async fn actions(
        &self,
        id: &CallId,
        body: serde_json::Value,
    ) -> Option<Result<(), (u16, String)>> {
        let call = self.inner.registry.get(id)?;
        // Recording on demand is the call's own, not a verb.
        if let Some(what) = body
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("recording"))
        {
            let start = match what.as_str() {
                Some("start") => true,
                Some("stop") => false,
                _ => return Some(Err((400, "recording: \"start\" or \"stop\"".into()))),
            };
            return match call
                .call(
                    |reply| CallMsg::Recording { start, reply },
                    Some(ACTIONS_TIMEOUT),
                )
                .await
            {
                Ok(ractor::rpc::CallResult::Success(r)) => Some(r),
                Ok(ractor::rpc::CallResult::Timeout) => {
                    Some(Err((504, "the call did not answer in time".into())))
                }
                _ => None,
            };
        }
        // Fetching the verbs' prompts takes up to the app's timeout.
        match call
            .call(
                |reply| CallMsg::Actions { body, reply },
                Some(ACTIONS_TIMEOUT),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(r)) => Some(r),
            Ok(ractor::rpc::CallResult::Timeout) => {
                Some(Err((504, "the call did not take the verbs in time".into())))
            }
            _ => None,
        }
    }

    /// Anchors a call's media in a shard: the address and the port per side; `None` when
    /// the call is gone or the node relays no media.
    pub async fn anchor_media(&self, id: &CallId) -> Option<media::Anchor> {
        let call = self.inner.registry.get(id)?;
        match call
            .call(CallMsg::AnchorMedia, Some(CALL_RPC_TIMEOUT))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(a)) => a,
            _ => None,
        }
    }

    /// Tells a call's media what one side's SDP says; false if the call is gone.
    pub fn media_remote(
        &self,
        id: &CallId,
        side: crate::media::types::Side,
        remote: crate::media::types::Remote,
    ) -> bool {
        match self.inner.registry.get(id) {
            Some(call) => call
                .send_message(CallMsg::MediaRemote(side, remote))
                .is_ok(),
            None => false,
        }
    }

    /// Plays `prompt` toward one side of an anchored call; with `barge_in`, a digit from
    /// that side stops it. False if the call is gone.
    pub fn play_prompt(
        &self,
        id: &CallId,
        side: crate::media::types::Side,
        prompt: crate::media::prompt::Prompt,
        barge_in: bool,
    ) -> bool {
        self.inner.registry.get(id).is_some_and(|call| {
            call.send_message(CallMsg::Media(media::MediaMsg::Play(
                side, prompt, barge_in,
            )))
            .is_ok()
        })
    }

    /// Sends DTMF `digit` toward one side of an anchored call. False if the call is gone.
    pub fn send_dtmf(
        &self,
        id: &CallId,
        side: crate::media::types::Side,
        digit: char,
        duration: Duration,
    ) -> bool {
        self.inner.registry.get(id).is_some_and(|call| {
            call.send_message(CallMsg::Media(media::MediaMsg::SendDtmf(
                side, digit, duration,
            )))
            .is_ok()
        })
    }

    /// A live call's view; `None` if it is gone or does not answer in time.
    pub async fn snapshot(&self, id: &CallId) -> Option<CallSnapshot> {
        let call = self.inner.registry.get(id)?;
        match call.call(CallMsg::Snapshot, Some(CALL_RPC_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(s)) => Some(s),
            _ => None,
        }
    }

    /// Business-initiated calls to customer `wa_id` of `business_number` still waiting
    /// for the customer.
    pub fn waiting_business_calls(&self, business_number: &str, wa_id: &str) -> Vec<CallId> {
        self.inner
            .registry
            .waiting_business_calls(business_number, wa_id)
    }

    /// The live calls as the registry knows them (no call is asked; no media).
    pub fn views(&self) -> Vec<CallSnapshot> {
        self.inner.registry.views()
    }

    /// The business number of live call `id` (`Some(None)`: a call without one).
    pub fn business_number(&self, id: &CallId) -> Option<Option<String>> {
        self.inner.registry.business_number(id)
    }

    /// Ids of the live calls.
    pub fn ids(&self) -> Vec<CallId> {
        self.inner.registry.ids()
    }

    /// Number of live calls.
    pub fn active(&self) -> usize {
        self.inner.registry.len()
    }

    /// Refuses new calls from now on; calls in progress continue.
    pub fn begin_drain(&self) {
        self.inner.registry.begin_drain();
    }

    /// The node is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.registry.is_draining()
    }

    /// Waits until no call is left or `timeout` passes; true when none is left.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        self.inner.registry.wait_empty(timeout).await
    }

    /// Hangs up every live call with `cause` (the switch hangs up).
    pub async fn hangup_all(&self, cause: &str) {
        let calls = self.ids();
        let hangups = calls
            .iter()
            .map(|id| self.hangup(id, HangupParty::Switch, cause));
        futures::future::join_all(hangups).await;
    }

    /// Relays calls' media through `plane` (whose port pool must be this plane's).
    pub fn set_media(
        &self,
        plane: crate::media::plane::MediaPlane,
    ) -> Result<(), crate::once::SetTwice> {
        crate::once::set(&self.inner.media, plane, "the media plane")
    }

    /// Records calls as `recordings` says (without, nothing is recorded).
    pub fn set_recordings(
        &self,
        recordings: recordings::Recordings,
    ) -> Result<(), crate::once::SetTwice> {
        crate::once::set(&self.inner.recordings, recordings, "the recordings")
    }

    /// The node's RTP port pool.
    pub fn ports(&self) -> &PortAllocator {
        &self.inner.ports
    }

    /// The CDR queue calls write to.
    pub fn cdr_queue(&self) -> &CdrQueue {
        &self.inner.cdrs
    }

    /// The parent of every call supervisor (the node's root supervisor).
    pub fn parent(&self) -> &ActorCell {
        &self.inner.parent
    }

    /// The registry of live calls.
    pub fn registry(&self) -> &CallRegistry {
        &self.inner.registry
    }

    /// Makes one child of a live call fail (supervision tests; built only with the
    /// `fault-injection` feature). False when the call is not live.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn inject_fault(&self, id: &CallId, child: supervisor::ChildRole, fault: Fault) -> bool {
        self.inner
            .registry
            .get(id)
            .is_some_and(|call| call.send_message(CallMsg::Fault { child, fault }).is_ok())
    }

    /// Makes media shard `n` panic (the `fault-injection` feature): it is started again,
    /// and the calls it relayed fail. False without a media plane.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn inject_shard_panic(&self, n: usize) -> bool {
        self.inner
            .media
            .get()
            .is_some_and(|plane| plane.inject_shard_panic(n).is_ok())
    }

    /// Makes live call `id`'s supervisor itself fail (the `fault-injection` feature): the
    /// root supervisor closes the call out. False when the call is not live.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn inject_supervisor_fault(&self, id: &CallId, fault: Fault) -> bool {
        self.inner
            .registry
            .get(id)
            .is_some_and(|call| call.send_message(CallMsg::FaultSelf(fault)).is_ok())
    }
}

#[cfg(test)]
mod tests;
