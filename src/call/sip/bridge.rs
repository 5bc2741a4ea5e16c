//! The actor that runs a call's SIP bridge: the sans-IO [`Bridge`] of `sip::b2bua`, driven
//! with the call's SIP events and its time, its commands carried out.
//!
//! A bridge has two legs. A leg is a SIP peer through one of the node's listeners (a PBX,
//! a trunk), or the call's WhatsApp leg: a leg actor of the same call, which gets the
//! bridge's commands for that leg and answers with SIP events of its own (see
//! `call::whatsapp::leg`). A bridge with a WhatsApp leg begins when that leg says so; a
//! plain SIP bridge begins at once. The bridge reports its leg B's progress to the call
//! (ringing, answered: under the role of whoever leg B is) and the call's end as SIP saw
//! it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;

use super::{Route, TrunkLoad};
use crate::call::leg::{FromBridge, LegMsg, LegState};
use crate::call::media::MediaMsg;
use crate::call::supervisor::CallMsg;
use crate::call::wakeup::Wakeup;
#[cfg(any(test, feature = "fault-injection"))]
use crate::call::Fault;
use crate::call::{LegRole, CALL_RPC_TIMEOUT};
use crate::media::types::{Remote, Side};
use crate::sip::b2bua::{Action, Bridge, Leg, Progress};
use crate::sip::core::CoreEvent;
use crate::sip::transport::SipHandle;
use crate::store::HangupParty;

/// A call's SIP bridge as its ingress set it up: the sans-IO bridge, the listeners of its
/// SIP legs, and its place in the ingress's routing.
pub struct BridgeSetup {
    pub(super) bridge: Box<Bridge>,
    /// Leg A's listener; `None`: leg A is the call's WhatsApp leg, or the switch itself.
    pub(super) a: Option<SipHandle>,
    /// Leg A is the switch itself: a call it places to a SIP party (nobody calls; the
    /// bridge's answers to leg A are taken here).
    pub(super) placed: bool,
    /// The listener reaching each target of leg B; `None`: the call's WhatsApp leg.
    pub(super) b: Vec<Option<SipHandle>>,
    /// Configured trunk index of each target.
    pub(super) trunk_index: Vec<usize>,
    pub(super) a_call_id: Bytes,
    pub(super) table: Arc<DashMap<Bytes, Route>>,
    pub(super) load: TrunkLoad,
}

impl std::fmt::Debug for BridgeSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeSetup")
            .field("first_trunk", &self.first_trunk())
            .finish_non_exhaustive()
    }
}

impl BridgeSetup {
    /// The trunk the call is offered first.
    pub fn first_trunk(&self) -> Option<String> {
        self.bridge.targets().first().map(|t| t.trunk.clone())
    }

    /// The same bridge with the switch itself as leg A: a call it places to a SIP party,
    /// whose media is the pair's side A (where call control plays and listens).
    pub(super) fn placed(mut self) -> Self {
        self.placed = true;
        self
    }
}

/// Who each leg of a bridge is, for the CDR's `hangup_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parties {
    /// Leg A.
    pub a: HangupParty,
    /// Leg B.
    pub b: HangupParty,
    /// Who a refusal of the call is put down to (busy, declined, no answer): the called
    /// side when a WhatsApp customer is in the call, else the switch.
    pub refusal: HangupParty,
}

/// Runs one call's [`Bridge`]; a child of the call's supervisor.
pub(crate) struct BridgeActor;

/// What a bridge actor starts with.
pub(crate) struct BridgeArgs {
    /// The bridge and its listeners.
    pub setup: BridgeSetup,
    /// The call's WhatsApp leg and which leg of the bridge it is, if the call has one.
    pub whatsapp: Option<(Leg, ActorRef<LegMsg>)>,
    /// Who the legs are.
    pub parties: Parties,
    /// The call's supervisor.
    pub call: ActorRef<CallMsg>,
    /// The call's media actor (anchors the call's media).
    pub media: Option<ActorRef<MediaMsg>>,
    /// The call's span.
    pub span: tracing::Span,
}

/// Messages of [`BridgeActor`].
#[derive(Debug)]
pub enum BridgeMsg {
    /// A SIP event for this call (from a listener, or from the call's WhatsApp leg).
    Sip(CoreEvent),
    /// The call's WhatsApp leg lets the bridge call out.
    Begin,
    /// A deadline of the bridge may have come.
    Timer,
    /// End the call (operator, shutdown); replies once both legs have settled.
    Hangup {
        /// End cause.
        cause: String,
        /// Reply.
        reply: RpcReplyPort<()>,
    },
    /// Makes the actor fail (supervision tests).
    #[cfg(any(test, feature = "fault-injection"))]
    Fault(Fault),
}

/// State of a running bridge actor.
pub(crate) struct BridgeState {
    bridge: Box<Bridge>,
    /// Leg A's listener; `None`: leg A is the call's WhatsApp leg, or the switch itself.
    a: Option<SipHandle>,
    /// Leg A is the switch itself (a call it places to a SIP party).
    placed: bool,
    b: Vec<Option<SipHandle>>,
    /// The call's WhatsApp leg, and which leg of the bridge it is.
    whatsapp: Option<(Leg, ActorRef<LegMsg>)>,
    parties: Parties,
    /// Began calling out.
    begun: bool,
    /// Numbers the switch's answers as leg A of a call it places.
    local_seq: u64,
    /// The switch's SDP as leg A of a call it places (answers to the phone's re-offers).
    local_sdp: Option<crate::call::leg::LocalSdp>,
    /// The WhatsApp side hears ringback (the trunk rings without early media).
    ringback: bool,
    /// Both SIP legs' media as their SDP said in this pass, for the media actor in one
    /// message.
    remotes: [Option<Remote>; 2],
    /// The trunk sent SDP: its early media or its answer's audio reaches the WhatsApp side.
    b_media: bool,
    /// A hangup waiting for the bridge to settle (the trunk's answer to our CANCEL or BYE,
    /// a 2xx crossing the CANCEL hung up) before it is confirmed.
    hangup_reply: Option<RpcReplyPort<()>>,
    trunk_index: Vec<usize>,
    table: Arc<DashMap<Bytes, Route>>,
    load: TrunkLoad,
    call: ActorRef<CallMsg>,
    media: Option<ActorRef<MediaMsg>>,
    span: tracing::Span,
    routed: Vec<Bytes>,
    /// Configured index of the trunk currently counted in the load.
    counted: Option<usize>,
    timer: Wakeup<BridgeMsg>,
}

impl Actor for BridgeActor {
    type Msg = BridgeMsg;
    type State = BridgeState;
    type Arguments = BridgeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: BridgeArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let setup = args.setup;
        let span = tracing::info_span!(parent: &args.span, "sip_b2bua");
        // Take over the A leg's route; events that came in meanwhile are replayed in order.
        let pending = match setup
            .table
            .insert(setup.a_call_id.clone(), Route::Call(myself.clone()))
        {
            Some(Route::Pending(events)) => events,
            _ => Vec::new(),
        };
        let mut state = BridgeState {
            bridge: setup.bridge,
            a: setup.a,
            placed: setup.placed,
            b: setup.b,
            whatsapp: args.whatsapp,
            parties: args.parties,
            begun: false,
            local_seq: 0,
            local_sdp: None,
            ringback: false,
            remotes: [None, None],
            b_media: false,
            hangup_reply: None,
            trunk_index: setup.trunk_index,
            table: setup.table,
            load: setup.load,
            call: args.call,
            media: args.media,
            span,
            routed: vec![setup.a_call_id],
            counted: None,
            timer: Wakeup::default(),
        };
        match state.whatsapp.clone() {
            Some((_, leg)) => {
                // The caller's events that came while the call was admitted (a CANCEL
                // while the customer's permission was checked) are handled before anyone
                // is called: a caller who gave up is never connected.
                let now = Instant::now();
                for event in pending {
                    state.bridge.handle_event(now, event);
                }
                if state.bridge.is_done() {
                    tracing::info!(parent: &state.span, "the caller gave up before the call went on");
                }
                let ready = FromBridge::Ready {
                    bridge: myself.clone(),
                    offer: state.bridge.a_offer().clone(),
                };
                if leg.send_message(LegMsg::Bridge(ready)).is_err() {
                    return Err(ActorProcessingErr::from("the call's WhatsApp leg is gone"));
                }
            }
            None => {
                for event in pending {
                    let _ = myself.send_message(BridgeMsg::Sip(event));
                }
                state.begin().await;
            }
        }
        let span = state.span.clone();
        state.run(&myself).instrument(span).await;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            BridgeMsg::Sip(event) => state.bridge.handle_event(now, event),
            BridgeMsg::Begin => state.begin().await,
            BridgeMsg::Timer => {
                state.timer.fired();
                if state.bridge.poll_timeout().is_some_and(|at| at <= now) {
                    state.bridge.handle_timeout(now);
                }
            }
            BridgeMsg::Hangup { cause, reply } => {
                // A permission that ended while the customer was being called (do-not-call,
                // a revocation) refuses the caller as precisely as a refusal at admission.
                match crate::permission::Blocked::from_name(&cause) {
                    Some(blocked) => {
                        let (code, phrase) = blocked.sip_status();
                        state.bridge.hangup_with(
                            now,
                            &cause,
                            (code, &format!("{phrase} - {blocked}")),
                            &blocked.sip_reason(),
                        )
                    }
                    None => state.bridge.hangup(now, &cause),
                }
                state.hangup_reply = Some(reply);
            }
            #[cfg(any(test, feature = "fault-injection"))]
            BridgeMsg::Fault(fault) => fault.trigger("sip_b2bua")?,
        }
        let span = state.span.clone();
        state.run(&myself).instrument(span).await;
        Ok(())
    }

    // No `post_stop`: an actor that panics never runs it, so the state's `Drop` does the
    // closing out, whichever way the actor ends.
}

impl Drop for BridgeState {
    /// Closes the call out on the SIP side however the actor ended. A bridge that has not
    /// settled (its actor failed mid-call) hangs up now: BYE to an answered trunk, CANCEL
    /// to a ringing one, a final response to a SIP caller still waiting, queued to the
    /// listeners without waiting (so it works outside the runtime too). Routes and trunk
    /// load are given back. The call's WhatsApp leg ends Meta's side itself.
    fn drop(&mut self) {
        if !self.bridge.is_done() {
            self.bridge.hangup(Instant::now(), "internal_failure");
            let mut out = Vec::new();
            while let Some(action) = self.bridge.poll_action() {
                let handle = match &action {
                    Action::A(_) => self.a.clone(),
                    Action::B(index, _) => self.b.get(*index).cloned().flatten(),
                    _ => None,
                };
                if let (Some(handle), Action::A(command) | Action::B(_, command)) = (handle, action)
                {
                    out.push((handle, command));
                }
            }
            if !out.is_empty() {
                tracing::warn!(parent: &self.span, commands = out.len(), "SIP bridge failed; hanging up what the trunk still holds");
                for (handle, command) in out {
                    if !handle.try_send(command) {
                        tracing::error!(parent: &self.span, "a hangup toward the trunk could not be queued; the trunk ends the call at its own timeout");
                    }
                }
            }
        }
        for call_id in self.routed.drain(..) {
            self.table.remove(&call_id);
        }
        if let Some(t) = self.counted.take() {
            self.load.remove(t);
        }
    }
}

impl BridgeState {
    /// The bridge's leg that is the call's WhatsApp leg.
    fn whatsapp_leg(&self) -> Option<Leg> {
        self.whatsapp.as_ref().map(|(leg, _)| *leg)
    }

    /// Hands a command or event to the call's WhatsApp leg.
    fn tell_whatsapp(&self, msg: FromBridge) {
        if let Some((_, leg)) = &self.whatsapp {
            // A leg that is gone has ended the call already.
            let _ = leg.send_message(LegMsg::Bridge(msg));
        }
    }

    /// Calls out (once, and not once the call is over), with the call's media anchored in
    /// a shard: the WhatsApp leg's WebRTC pair when it has one (its RTP side toward the
    /// SIP leg), else a plain pair.
    async fn begin(&mut self) {
        if self.begun || self.bridge.is_done() {
            return;
        }
        self.begun = true;
        let anchor = match &self.media {
            Some(media) => match media.call(MediaMsg::Anchor, Some(CALL_RPC_TIMEOUT)).await {
                Ok(ractor::rpc::CallResult::Success(a)) => a,
                _ => None,
            },
            None => None,
        };
        // The pair's side A is the WhatsApp leg's: when that is the bridge's leg B, the
        // bridge's leg A (the PBX) is offered the pair's side B. A call the switch places
        // has its called party on side A, where call control plays and listens (a WhatsApp
        // user it dials stands in for side B).
        let anchor = match self.whatsapp_leg() {
            Some(Leg::B) => anchor.map(|a| a.swapped()),
            None if self.placed => anchor.map(|a| a.swapped()),
            _ => anchor,
        };
        // A browser phone calling (an agent's page): a WebRTC leg of ours answers its
        // offer and stands in for the pair's side B; Opus passes through to WhatsApp.
        if self.whatsapp_leg() == Some(Leg::B) && self.bridge.a_offer_is_webrtc() {
            if let Some(media) = &self.media {
                let offer = String::from_utf8_lossy(self.bridge.a_offer()).into_owned();
                match media
                    .call(
                        |reply| MediaMsg::AnswerAgent(offer, reply),
                        Some(CALL_RPC_TIMEOUT),
                    )
                    .await
                {
                    Ok(ractor::rpc::CallResult::Success(Ok(answer))) => {
                        self.bridge.set_a_webrtc(Bytes::from(answer));
                    }
                    other => {
                        let why = match other {
                            Ok(ractor::rpc::CallResult::Success(Err(e))) => e,
                            _ => "media did not answer".to_string(),
                        };
                        tracing::warn!(error = %why, "the browser phone's WebRTC offer cannot be answered");
                        // Nobody is called: the browser hears why.
                        self.bridge.hangup_with(
                            Instant::now(),
                            "media_failure",
                            (488, "Not Acceptable Here - WebRTC offer not usable"),
                            "Q.850;cause=88",
                        );
                        return;
                    }
                }
            }
        }
        self.bridge.begin(Instant::now(), anchor);
    }

    /// Carries out what the bridge asks, then re-arms its timer.
    async fn run(&mut self, myself: &ActorRef<BridgeMsg>) {
        let whatsapp = self.whatsapp_leg();
        while let Some(action) = self.bridge.poll_action() {
            match action {
                Action::A(command) => match &self.a {
                    Some(handle) => {
                        handle.send(command).await;
                    }
                    None if self.placed => {
                        // The switch is the caller: it acknowledges the answer and
                        // takes the called side's requests.
                        self.local_seq += 1;
                        let bridge = &self.bridge;
                        let sdp = self.local_sdp.get_or_insert_with(|| {
                            crate::call::leg::LocalSdp::new(bridge.a_offer())
                        });
                        if let Some(event) =
                            crate::call::leg::answer_as_caller(&command, sdp, self.local_seq)
                        {
                            self.bridge.handle_event(Instant::now(), event);
                        }
                    }
                    None => self.tell_whatsapp(FromBridge::Sip(command)),
                },
                Action::B(index, command) => match self.b.get(index) {
                    Some(Some(handle)) => {
                        handle.send(command).await;
                    }
                    _ if whatsapp == Some(Leg::B) => self.tell_whatsapp(FromBridge::Sip(command)),
                    _ => {}
                },
                Action::Route(call_id) => {
                    self.table
                        .insert(call_id.clone(), Route::Call(myself.clone()));
                    self.routed.push(call_id);
                }
                Action::Unroute(call_id) => {
                    self.table.remove(&call_id);
                    self.routed.retain(|c| *c != call_id);
                }
                Action::Progress(progress) => self.progress(progress),
                Action::Media(leg, audio) => self.leg_media(leg, audio),
                Action::WebRtcSdp { sdp, first } => self.webrtc_sdp(&sdp, first),
                Action::MediaPlan(plan) => {
                    // With a WhatsApp leg the pair's codecs are the WhatsApp side's business;
                    // a placed call's are its called party's.
                    if let (Some(media), None, false) = (&self.media, whatsapp, self.placed) {
                        let _ = media.send_message(MediaMsg::Plan(plan.summary()));
                    }
                }
            }
        }
        let remotes = std::mem::take(&mut self.remotes);
        if remotes != [None, None] {
            if let Some(media) = &self.media {
                let _ = media.send_message(MediaMsg::Remotes(remotes));
            }
        }
        if self.bridge.is_done() {
            if let Some(reply) = self.hangup_reply.take() {
                let _ = reply.send(());
            }
        }
        self.timer
            .set(myself, self.bridge.poll_timeout(), || BridgeMsg::Timer);
    }

    /// What one leg's SDP says about its media. The WhatsApp leg's media is its WebRTC
    /// leg's, never the SDP the bridge sees of it; the trunk facing a WhatsApp caller sets
    /// the pair's side B with its codec (passed through or transcoded), and the PBX facing
    /// a WhatsApp callee is handed to that leg, which chose the PBX's codec.
    fn leg_media(&mut self, leg: Leg, audio: crate::sdp::Audio) {
        // SDP crosses the bridge unchanged but for the address, so two SIP legs settle on
        // one codec by offer/answer: nothing to transcode. A WhatsApp leg A speaks Opus
        // whatever leg B answers: leg B's codec is named, and the media plane transcodes
        // when the two differ.
        let transcoded = leg == Leg::B && (self.whatsapp_leg() == Some(Leg::A) || self.placed);
        let remote = Remote::from_sdp(&audio, transcoded);
        if self.placed {
            // The called party is side A; leg A (the switch) has no media of its own. Its
            // codec is named: a WhatsApp user dialled later speaks Opus.
            if let (Leg::B, Some(media)) = (leg, &self.media) {
                let _ = media.send_message(MediaMsg::Remote(Side::A, remote));
                let _ = media.send_message(MediaMsg::Plan(crate::call::media::codec_path(&remote)));
            }
            return;
        }
        match (self.whatsapp_leg(), leg) {
            (Some(w), l) if w == l => {}
            (Some(Leg::A), Leg::B) => {
                // The trunk's audio takes over from ringback.
                self.b_media = true;
                self.set_ringback(false);
                if let Some(media) = &self.media {
                    let _ = media.send_message(MediaMsg::Remote(Side::B, remote));
                    let _ =
                        media.send_message(MediaMsg::Plan(crate::call::media::codec_path(&remote)));
                }
            }
            (Some(_), _) => self.tell_whatsapp(FromBridge::Media(remote)),
            (None, leg) => {
                // Sent with the other leg's, if any, at the end of the pass.
                let side = match leg {
                    Leg::A => Side::A,
                    Leg::B => Side::B,
                };
                self.remotes[side.index()] = Some(remote);
            }
        }
    }

    /// A browser phone's SDP: its answer to our WebRTC offer goes to the media actor (its
    /// leg stands in for the pair's side B); a later offer of its own puts the customer on
    /// hold (a comfort tone, never silence: Meta drops silent calls) or takes them off.
    fn webrtc_sdp(&mut self, sdp: &[u8], first: bool) {
        let Some(media) = &self.media else {
            return;
        };
        let text = String::from_utf8_lossy(sdp).into_owned();
        if first {
            self.b_media = true;
            let _ = media.send_message(MediaMsg::AgentAnswer(text));
            return;
        }
        let held = text
            .lines()
            .any(|l| matches!(l.trim(), "a=sendonly" | "a=inactive"));
        tracing::info!(held, "the agent's phone changed the call's direction");
        self.ringback = held;
        let _ = media.send_message(MediaMsg::Ringback(Side::A, held));
    }

    fn set_ringback(&mut self, on: bool) {
        if self.ringback == on {
            return;
        }
        self.ringback = on;
        if let Some(media) = &self.media {
            let _ = media.send_message(MediaMsg::Ringback(Side::A, on));
        }
    }

    fn progress(&mut self, progress: Progress) {
        // Leg B progressing: the customer when the bridge calls the WhatsApp leg, else
        // the trunk.
        let role = match self.whatsapp_leg() {
            Some(Leg::B) => LegRole::WhatsApp,
            _ => LegRole::Business,
        };
        let report = |call: &ActorRef<CallMsg>, state: LegState| {
            let _ = call.send_message(CallMsg::LegChanged {
                role,
                state,
                cause: None,
            });
        };
        match progress {
            Progress::Trying { trunk } => {
                tracing::info!(%trunk, "offering the call to a trunk");
                let index = self
                    .bridge
                    .targets()
                    .iter()
                    .position(|t| t.trunk == trunk)
                    .and_then(|i| self.trunk_index.get(i).copied());
                if let Some(old) = self.counted.take() {
                    self.load.remove(old);
                }
                if let Some(t) = index {
                    self.load.add(t);
                    self.counted = Some(t);
                }
                if role == LegRole::Business {
                    let _ = self.call.send_message(CallMsg::Routed { trunk });
                }
            }
            Progress::Ringing => {
                // Meta drops a call that carries no media for 20 s: a trunk ringing without
                // early media gets ringback played toward WhatsApp meanwhile.
                if self.whatsapp_leg() == Some(Leg::A) && !self.b_media {
                    self.set_ringback(true);
                }
                report(&self.call, LegState::Ringing)
            }
            Progress::Answered => {
                self.set_ringback(false);
                report(&self.call, LegState::Answered)
            }
            Progress::Ended { by, cause } => {
                // A refused call (busy, declined, no answer) is the called side's doing
                // when a customer is in it, as much as hanging up is.
                let refused = matches!(
                    cause.as_str(),
                    "busy" | "declined" | "no_answer" | "unallocated_number" | "rejected"
                );
                let by = match by {
                    Some(Leg::A) => self.parties.a,
                    Some(Leg::B) => self.parties.b,
                    None if refused => self.parties.refusal,
                    None => HangupParty::Switch,
                };
                let _ = self.call.send_message(CallMsg::BridgeEnded { by, cause });
            }
        }
    }
}
