//! The per-call supervisor: owns one call's children and decides how the call ends.
//!
//! It registers the call, spawns the children its [`CallPlan`] names (the media actor
//! first, then the legs), notes when the called leg rings and answers, and on any end
//! (hangup, a leg ending, a child failing, shutdown) tears the whole tree down and writes
//! the CDR. Legs of a SIP bridge are coupled by the bridge; the two legs of a signalled
//! call by the supervisor (the called leg's answer answers the calling leg). It never
//! touches the network or media itself.

use std::sync::Arc;
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use tracing::Instrument;

use super::ivr::{IvrActor, IvrArgs, IvrMsg, IvrSetup, FINISH_PATIENCE};
use super::leg::{LegActor, LegArgs, LegMsg, LegSignal, LegState};
use super::media::{MediaActor, MediaArgs, MediaMsg};
use super::plan::CallPlan;
use super::registry::{CallEntry, CallRegistry};
use super::sip::bridge::{BridgeActor, BridgeArgs, BridgeMsg, BridgeSetup, Parties};
use super::whatsapp::actor::{WhatsAppLegActor, WhatsAppLegArgs, WhatsAppStart};
use super::whatsapp::leg::Face;
use super::whatsapp::permit::Permit;
use super::whatsapp::WaEvent;
#[cfg(any(test, feature = "fault-injection"))]
use super::Fault;
use super::{
    close_out, now_ms, CallEnd, CallId, CallOffer, CallSnapshot, LegRole, CALL_RPC_TIMEOUT,
};
use crate::media::ports::PortAllocator;
use crate::sip::b2bua::Leg;
use crate::store::writer::CdrQueue;
use crate::store::HangupParty;
use crate::telemetry;

/// How long a SIP bridge may take to settle its hangup with the trunk before the call moves
/// on without it.
const BRIDGE_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long stopping a recording waits for its file to be final (the CDR names it then).
const RECORDING_FINISH_PATIENCE: Duration = Duration::from_secs(10);

/// How long the call's end waits for its recording to be kept (uploaded, stored).
const RECORDING_KEEP_PATIENCE: Duration = Duration::from_secs(10);

/// How long a stopping child may take before the call moves on without it.
const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Supervisor of one call.
pub struct CallSupervisor;

/// What a call starts with.
pub struct CallArgs {
    /// The call's id.
    pub id: CallId,
    /// What was offered.
    pub offer: CallOffer,
    /// What the call is made of.
    pub plan: Box<CallPlan>,
    /// When (Unix ms).
    pub offered_at: i64,
    /// Registry of live calls, where the call registers itself.
    pub registry: CallRegistry,
    /// Where the CDR goes.
    pub cdrs: CdrQueue,
    /// RTP port pool.
    pub ports: PortAllocator,
    /// The call's two port pairs, leased when it was admitted.
    pub leases: [crate::media::ports::PortLease; 2],
    /// Media shards (`None`: nothing is relayed).
    pub media: Option<crate::media::plane::MediaPlane>,
    /// Recording policy and storage (`None`: nothing is recorded).
    pub recordings: Option<super::recordings::Recordings>,
    /// This node, for the CDR.
    pub node_id: Arc<str>,
}

/// Children of a call, as named in logs and in `waswitch_actor_failures_total{actor}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildRole {
    /// A signalling leg.
    Leg(LegRole),
    /// The B2BUA of a SIP call (both signalling legs).
    Bridge,
    /// The media actor.
    Media,
    /// The call-control actor (an IVR).
    Control,
}

impl ChildRole {
    /// Metric and log name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildRole::Leg(role) => role.as_str(),
            ChildRole::Bridge => "sip_b2bua",
            ChildRole::Media => "media",
            ChildRole::Control => "call_control",
        }
    }
}

/// Messages of [`CallSupervisor`].
#[derive(Debug)]
pub enum CallMsg {
    /// A leg changed state (sent by the leg).
    LegChanged {
        /// Which leg.
        role: LegRole,
        /// Its new state.
        state: LegState,
        /// The far end's cause, when the leg ended.
        cause: Option<String>,
    },
    /// A leg could not do its part before it connected (Meta refused `pre_accept` or
    /// `accept`, its media could not be set up): the call fails, and was never answered
    /// end to end, whatever the other leg did meanwhile.
    LegFailed {
        /// Which leg.
        role: LegRole,
        /// Why (the CDR's end cause).
        cause: String,
    },
    /// A far-end event for one leg (sent by protocol drivers).
    Signal {
        /// Which leg.
        role: LegRole,
        /// The event.
        signal: LegSignal,
    },
    /// Start (`true`) or stop the call's recording (the REST API, an app): `202`, or the
    /// status and why not.
    Recording {
        /// Start or stop.
        start: bool,
        /// Whether it was done.
        reply: RpcReplyPort<Result<(), (u16, String)>>,
    },
    /// The call's recording ended on its own (its media went): its file.
    RecordingSaved(Result<super::recordings::Saved, String>),
    /// The call's control dials a queue or a route (their recording policy applies when it
    /// is answered).
    DialTarget {
        /// The queue.
        queue: Option<String>,
        /// The route.
        route: Option<String>,
    },
    /// A SIP call was offered to this trunk (sent by the bridge; the last one goes in the
    /// CDR).
    Routed {
        /// Trunk name.
        trunk: String,
    },
    /// A SIP call's bridge is done: both legs are settled.
    BridgeEnded {
        /// Who ended the call.
        by: HangupParty,
        /// End cause.
        cause: String,
    },
    /// End the call from outside (API, operator, shutdown).
    Hangup {
        /// Who ends it.
        by: HangupParty,
        /// End cause.
        cause: String,
        /// Replies once the call is torn down.
        reply: Option<RpcReplyPort<()>>,
    },
    /// The call's current view.
    Snapshot(RpcReplyPort<CallSnapshot>),
    /// Verbs (JSON, as an app answers) replace what the call's control runs now.
    Actions {
        /// The verbs.
        body: serde_json::Value,
        /// Whether they run, or the status and why not.
        reply: RpcReplyPort<Result<(), (u16, String)>>,
    },
    /// Anchor the call's media in a shard (for legs that are not SIP bridges, e.g. WhatsApp).
    AnchorMedia(RpcReplyPort<Option<super::media::Anchor>>),
    /// What one side's SDP says about its media.
    MediaRemote(crate::media::types::Side, crate::media::types::Remote),
    /// A media request passed to the call's media actor as is (prompts, DTMF).
    Media(MediaMsg),
    /// Meta's id of the call is known (business-initiated calls learn it after they start).
    WaCallId(String),
    /// Meta's own webhook names the call (its SIP-mode `call_created`): this id is kept
    /// over one the call's SIP dialog gave it.
    MetaWaCallId(String),
    /// Something Meta said about the call (webhooks), for the WhatsApp leg of that Meta
    /// call id.
    WhatsApp {
        /// Meta's call id.
        wa_call_id: String,
        /// What Meta said.
        event: WaEvent,
    },
    /// Meta's id of the call to a WhatsApp user the call's control dialled.
    DialledWaCallId(String),
    /// The call's control dials a WhatsApp user (their permission reserved): a second
    /// WhatsApp leg, on the media pair's side B.
    DialWhatsApp(Box<crate::call::plan::WhatsAppOutbound>),
    /// The call's control dials: a SIP bridge with the WhatsApp leg as its caller.
    Dial(Box<BridgeSetup>),
    /// Makes the supervisor itself fail (supervision tests): the root closes the call out.
    #[cfg(any(test, feature = "fault-injection"))]
    FaultSelf(Fault),
    /// Makes one child fail (supervision tests).
    #[cfg(any(test, feature = "fault-injection"))]
    Fault {
        /// Which child.
        child: ChildRole,
        /// How.
        fault: Fault,
    },
}

/// A WhatsApp user the call's control dialled: their permission's hold, and how their call
/// went, for settling it (when they did not answer, or with the call's CDR).
struct Dialled {
    permit: Permit,
    wa_call_id: Option<String>,
    answered_at: Option<i64>,
    /// How their call ended, when they did not answer.
    cause: Option<String>,
}

impl Dialled {
    /// Their call as a record the permission is settled from: unanswered, ended by them
    /// with its own cause.
    fn unanswered(&self, call_id: &str, node_id: &str) -> crate::store::Cdr {
        let now = now_ms();
        crate::store::Cdr {
            call_id: call_id.to_string(),
            node_id: node_id.to_string(),
            direction: crate::store::Direction::BusinessInitiated,
            business_number: None,
            customer_wa_id: None,
            wa_call_id: self.wa_call_id.clone(),
            sip_call_id: None,
            trunk: None,
            offered_at: now,
            ringing_at: None,
            answered_at: None,
            ended_at: now,
            duration_ms: 0,
            outcome: crate::store::CallOutcome::Unanswered,
            hangup_by: HangupParty::Customer,
            end_cause: self.cause.clone().unwrap_or_else(|| "no_answer".into()),
            failure: None,
            media: None,
            codec_path: None,
            control: None,
            recording: None,
            meta_recording_id: None,
            meta_transcript_id: None,
        }
    }
}

/// State of a running call.
pub struct Call {
    id: CallId,
    offer: CallOffer,
    offered_at: i64,
    registry: CallRegistry,
    cdrs: CdrQueue,
    node_id: Arc<str>,
    span: tracing::Span,
    whatsapp: Option<ActorRef<LegMsg>>,
    business: Option<ActorRef<LegMsg>>,
    media: Option<ActorRef<MediaMsg>>,
    bridge: Option<ActorRef<BridgeMsg>>,
    /// The call-control actor (an IVR call).
    control: Option<ActorRef<IvrMsg>>,
    /// What call control did, for the CDR.
    control_record: Option<crate::store::ControlRecord>,
    /// A dial of the call's control was answered: the call is the destination's now.
    dial_answered: bool,
    /// WhatsApp users the call's control dialled: their permission holds, settled with the
    /// call's CDR.
    dialled: Vec<Dialled>,
    /// The leg whose answer answers the call.
    called: LegRole,
    /// The side the call's control dials (`CallPlan::dialled`).
    dial_role: LegRole,
    /// Meta's webhook named the call: its id is not replaced.
    wa_call_id_from_meta: bool,
    /// The supervisor couples the legs (a signalled call); otherwise a bridge does, or
    /// there is one leg.
    coupled: bool,
    /// A business-initiated call's hold on the customer's permission.
    permit: Option<Permit>,
    trunk: Option<String>,
    media_report: super::media::MediaReport,
    children: Vec<(ActorId, ChildRole, ActorCell)>,
    ringing_at: Option<i64>,
    answered_at: Option<i64>,
    ended: bool,
    /// The call's recording.
    recording: CallRecording,
}

/// A call's recording: what decides it, and where it stands.
struct CallRecording {
    recordings: Option<super::recordings::Recordings>,
    /// The media side of the customer (who hears the consent announcement).
    customer_side: crate::media::types::Side,
    /// The app driving the call, the queue or route its control dialled last.
    app: Option<String>,
    queue: Option<String>,
    route: Option<String>,
    /// The recording running, when it started (ms), and where its keeping is heard of.
    running: Option<Running>,
    /// The policy started one already (it does once per call).
    by_policy: bool,
    /// The first recording kept, for the CDR.
    first: Option<crate::store::CdrRecording>,
    /// The customer is reached only by a dial of the call's control (a call placed to a
    /// phone first): the policy applies then, not when the phone answers.
    at_dial_only: bool,
}

/// A recording running.
struct Running {
    started: i64,
    /// Hears the recording once kept.
    kept: tokio::sync::oneshot::Receiver<Option<super::recordings::Saved>>,
}

impl Actor for CallSupervisor {
    type Msg = CallMsg;
    type State = Call;
    type Arguments = CallArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CallArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let span = tracing::info_span!(
            "call",
            call_id = %args.id,
            direction = args.offer.direction.as_str()
        );
        let permit = args.plan.permit().cloned();
        let at_dial_only = matches!(*args.plan, CallPlan::AppToSip { .. });
        let customer_side = match &*args.plan {
            CallPlan::SipToWhatsApp { .. } | CallPlan::AppToSip { .. } => {
                crate::media::types::Side::B
            }
            _ => crate::media::types::Side::A,
        };
        let app = match &*args.plan {
            CallPlan::Ivr { ivr, .. }
            | CallPlan::AppCall { ivr, .. }
            | CallPlan::AppToSip { ivr, .. } => ivr.app_name(),
            _ => None,
        };
        args.registry.insert(
            args.id.clone(),
            CallEntry {
                actor: myself.clone(),
                offer: args.offer.clone(),
                permit: permit.clone(),
                offered_at: args.offered_at,
                ringing_at: None,
                answered_at: None,
                dialled_wa_call_ids: Vec::new(),
                whatsapp_leg: None,
                business_leg: None,
            },
        );
        let mut call = Call {
            id: args.id,
            offer: args.offer,
            offered_at: args.offered_at,
            registry: args.registry,
            cdrs: args.cdrs,
            node_id: args.node_id,
            span,
            whatsapp: None,
            business: None,
            media: None,
            bridge: None,
            control: None,
            control_record: None,
            dial_answered: false,
            dialled: Vec::new(),
            called: args.plan.called(),
            dial_role: args.plan.dialled(),
            wa_call_id_from_meta: false,
            coupled: matches!(*args.plan, CallPlan::Signalled(_)),
            permit,
            trunk: None,
            media_report: Default::default(),
            children: Vec::with_capacity(3),
            ringing_at: None,
            answered_at: None,
            ended: false,
            recording: CallRecording {
                recordings: args.recordings,
                customer_side,
                app,
                queue: None,
                route: None,
                running: None,
                by_policy: false,
                first: None,
                at_dial_only,
            },
        };
        let span = call.span.clone();
        let started = async {
            let result = call
                .spawn_children(&myself, args.ports, args.leases, args.media, args.plan)
                .await;
            match &result {
                Ok(()) => tracing::info!("call started"),
                Err(e) => tracing::warn!(error = %e, "call setup failed"),
            }
            result
        }
        .instrument(span.clone())
        .await;
        match started {
            Ok(()) => Ok(call),
            Err(e) => {
                let end = CallEnd {
                    by: HangupParty::Switch,
                    cause: "setup_failed".into(),
                    failure: Some(format!("setup: {e}")),
                };
                async {
                    call.stop_children().await;
                    call.finish(end).await;
                }
                .instrument(span)
                .await;
                Err(e)
            }
        }
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        call: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        #[cfg(any(test, feature = "fault-injection"))]
        if let CallMsg::FaultSelf(fault) = msg {
            return fault.trigger("call_supervisor");
        }
        let span = call.span.clone();
        call.on_message(&myself, msg).instrument(span).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        call: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = call.span.clone();
        call.on_child_event(&myself, event).instrument(span).await;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        call: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Stopped from outside without ending first: still close the call out.
        if !call.ended {
            call.stop_children().await;
            call.finish(CallEnd {
                by: HangupParty::Switch,
                cause: "supervisor_stopped".into(),
                failure: None,
            })
            .await;
        }
        Ok(())
    }
}

impl Call {
    async fn spawn_children(
        &mut self,
        myself: &ActorRef<CallMsg>,
        ports: PortAllocator,
        leases: [crate::media::ports::PortLease; 2],
        plane: Option<crate::media::plane::MediaPlane>,
        plan: Box<CallPlan>,
    ) -> Result<(), ActorProcessingErr> {
        let (media, _) = Actor::spawn_linked(
            None,
            MediaActor,
            MediaArgs {
                ports,
                leases,
                plane,
                call: myself.clone(),
                span: self.span.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        self.children
            .push((media.get_id(), ChildRole::Media, media.get_cell()));
        self.media = Some(media);
        tracing::debug!(plan = plan.name(), "spawning the call's legs");
        match *plan {
            CallPlan::WhatsAppToSip { whatsapp, sip } => {
                let wa = self
                    .spawn_whatsapp(myself, WhatsAppStart::Inbound(whatsapp), Face::Caller)
                    .await?;
                self.spawn_bridge(myself, sip, Some((Leg::A, wa)), WHATSAPP_CALLER)
                    .await
            }
            CallPlan::Ivr { whatsapp, ivr } => {
                let wa = self
                    .spawn_whatsapp(myself, WhatsAppStart::Inbound(whatsapp), Face::Caller)
                    .await?;
                self.spawn_control(myself, *ivr, Some(wa)).await
            }
            CallPlan::Echo { whatsapp } => self
                .spawn_whatsapp(myself, WhatsAppStart::Inbound(whatsapp), Face::Echo)
                .await
                .map(drop),
            CallPlan::SipToWhatsApp { sip, whatsapp } => {
                let wa = self
                    .spawn_whatsapp(myself, WhatsAppStart::Outbound(whatsapp), Face::Callee)
                    .await?;
                let parties = Parties {
                    a: HangupParty::Business,
                    b: HangupParty::Customer,
                    refusal: HangupParty::Customer,
                };
                self.spawn_bridge(myself, sip, Some((Leg::B, wa)), parties)
                    .await
            }
            CallPlan::Callback { whatsapp, sip } => {
                let wa = self
                    .spawn_whatsapp(myself, WhatsAppStart::Outbound(whatsapp), Face::Caller)
                    .await?;
                self.spawn_bridge(myself, sip, Some((Leg::A, wa)), WHATSAPP_CALLER)
                    .await
            }
            CallPlan::AppCall { whatsapp, ivr } => {
                let wa = self
                    .spawn_whatsapp(myself, WhatsAppStart::Outbound(whatsapp), Face::Caller)
                    .await?;
                self.spawn_control(myself, *ivr, Some(wa)).await
            }
            CallPlan::AppToSip { sip, ivr } => {
                let parties = Parties {
                    a: HangupParty::Switch,
                    b: HangupParty::Business,
                    refusal: HangupParty::Business,
                };
                self.spawn_bridge(myself, sip, None, parties).await?;
                self.spawn_control(myself, *ivr, None).await
            }
            CallPlan::SipToSip { sip } => {
                let parties = Parties {
                    a: HangupParty::Caller,
                    b: HangupParty::Callee,
                    refusal: HangupParty::Switch,
                };
                self.spawn_bridge(myself, sip, None, parties).await
            }
            CallPlan::Signalled(_) => {
                for role in [LegRole::WhatsApp, LegRole::Business] {
                    let leg_id = match role {
                        LegRole::WhatsApp => self.offer.wa_call_id.clone(),
                        LegRole::Business => self.offer.sip_call_id.clone(),
                    };
                    let args = LegArgs {
                        role,
                        leg_id,
                        call: myself.clone(),
                        span: self.span.clone(),
                    };
                    let (leg, _) =
                        Actor::spawn_linked(None, LegActor, args, myself.get_cell()).await?;
                    self.children
                        .push((leg.get_id(), ChildRole::Leg(role), leg.get_cell()));
                    match role {
                        LegRole::WhatsApp => self.whatsapp = Some(leg),
                        LegRole::Business => self.business = Some(leg),
                    }
                    self.registry.mark_leg(&self.id, role, LegState::Offered);
                }
                Ok(())
            }
        }
    }

    /// Spawns the call's WhatsApp leg.
    async fn spawn_whatsapp(
        &mut self,
        myself: &ActorRef<CallMsg>,
        start: WhatsAppStart,
        face: Face,
    ) -> Result<ActorRef<LegMsg>, ActorProcessingErr> {
        let args = WhatsAppLegArgs {
            start,
            face,
            call: myself.clone(),
            media: media_ref(&self.media)?,
            call_id: self.id.to_string(),
            span: self.span.clone(),
            dialled: None,
        };
        let (leg, _) = Actor::spawn_linked(None, WhatsAppLegActor, args, myself.get_cell()).await?;
        self.children.push((
            leg.get_id(),
            ChildRole::Leg(LegRole::WhatsApp),
            leg.get_cell(),
        ));
        self.whatsapp = Some(leg.clone());
        self.registry
            .mark_leg(&self.id, LegRole::WhatsApp, LegState::Offered);
        Ok(leg)
    }

    /// Spawns a WhatsApp leg calling a user the call's control dialled: the call's side
    /// its dials reach (the business side of a customer's call, the customer's of a call
    /// placed to SIP), its media standing in for the pair's side B.
    async fn spawn_dialled_whatsapp(
        &mut self,
        myself: &ActorRef<CallMsg>,
        whatsapp: crate::call::plan::WhatsAppOutbound,
    ) -> Result<(), ActorProcessingErr> {
        let role = self.dial_role;
        if self.leg(role).is_some() {
            return Err(ActorProcessingErr::from(
                "the call already has the side its dials reach",
            ));
        }
        self.dial_answered = false;
        match role {
            LegRole::Business => self.trunk = Some(format!("whatsapp:{}", whatsapp.customer)),
            LegRole::WhatsApp => {
                // The customer of a call placed to SIP is the user it reached.
                self.offer.customer_wa_id = Some(whatsapp.customer.clone());
            }
        }
        self.dialled.push(Dialled {
            permit: whatsapp.permit.clone(),
            wa_call_id: None,
            answered_at: None,
            cause: None,
        });
        let args = WhatsAppLegArgs {
            start: WhatsAppStart::Outbound(whatsapp),
            face: Face::Caller,
            call: myself.clone(),
            media: media_ref(&self.media)?,
            call_id: self.id.to_string(),
            span: self.span.clone(),
            dialled: Some(role),
        };
        let (leg, _) = Actor::spawn_linked(None, WhatsAppLegActor, args, myself.get_cell()).await?;
        self.children
            .push((leg.get_id(), ChildRole::Leg(role), leg.get_cell()));
        match role {
            LegRole::Business => self.business = Some(leg),
            LegRole::WhatsApp => self.whatsapp = Some(leg),
        }
        self.registry.mark_leg(&self.id, role, LegState::Offered);
        Ok(())
    }

    /// A dialled WhatsApp user's leg ended before they answered: the call goes on with
    /// its control (the script learns the dial was not answered). False when the call has
    /// no such leg, or it had answered.
    fn dialled_unanswered(&mut self, role: LegRole, cause: Option<&str>) -> bool {
        if role != self.dial_role || self.dial_answered || self.dialled.is_empty() {
            return false;
        }
        let slot = match role {
            LegRole::Business => &mut self.business,
            LegRole::WhatsApp => &mut self.whatsapp,
        };
        let Some(leg) = slot.take() else {
            return false;
        };
        tracing::info!(
            cause = cause.unwrap_or(""),
            "the dialled WhatsApp user did not answer; back to call control"
        );
        if let Some(d) = self.dialled.last_mut() {
            // Settled now: a later dial of the same user is not held up by this one.
            d.cause = cause.map(str::to_string);
            d.permit
                .settle(&d.unanswered(self.id.as_str(), &self.node_id));
        }
        let id = leg.get_id();
        self.children.retain(|(child, _, _)| *child != id);
        leg.stop(Some("dial ended".into()));
        if let Some(media) = &self.media {
            let _ = media.send_message(MediaMsg::DropAgent);
        }
        if let Some(control) = &self.control {
            let _ = control.send_message(IvrMsg::Call(crate::control::Event::DialEnded {
                answered: false,
            }));
        }
        true
    }

    /// Spawns the call-control actor, which runs the IVR.
    async fn spawn_control(
        &mut self,
        myself: &ActorRef<CallMsg>,
        setup: IvrSetup,
        whatsapp: Option<ActorRef<LegMsg>>,
    ) -> Result<(), ActorProcessingErr> {
        let args = IvrArgs {
            setup,
            call: myself.clone(),
            whatsapp,
            media: media_ref(&self.media)?,
            call_id: self.id.to_string(),
            span: self.span.clone(),
        };
        let (control, _) = Actor::spawn_linked(None, IvrActor, args, myself.get_cell()).await?;
        self.children
            .push((control.get_id(), ChildRole::Control, control.get_cell()));
        self.control = Some(control);
        Ok(())
    }

    /// Spawns the call's SIP bridge, with the call's WhatsApp leg as one of its legs when
    /// it has one.
    async fn spawn_bridge(
        &mut self,
        myself: &ActorRef<CallMsg>,
        setup: BridgeSetup,
        whatsapp: Option<(Leg, ActorRef<LegMsg>)>,
        parties: Parties,
    ) -> Result<(), ActorProcessingErr> {
        let args = BridgeArgs {
            setup,
            whatsapp,
            parties,
            call: myself.clone(),
            media: self.media.clone(),
            span: self.span.clone(),
        };
        let (bridge, _) = Actor::spawn_linked(None, BridgeActor, args, myself.get_cell()).await?;
        self.children
            .push((bridge.get_id(), ChildRole::Bridge, bridge.get_cell()));
        self.bridge = Some(bridge);
        Ok(())
    }

    fn leg(&self, role: LegRole) -> Option<&ActorRef<LegMsg>> {
        match role {
            LegRole::WhatsApp => self.whatsapp.as_ref(),
            LegRole::Business => self.business.as_ref(),
        }
    }

    /// Names the call by Meta's id; webhooks that came for that id before, in order.
    fn name_wa_call(&mut self, wa_call_id: &str) {
        self.offer.wa_call_id = Some(wa_call_id.to_string());
        let early = self.registry.set_wa_call_id(&self.id, wa_call_id);
        if let Some(leg) = &self.whatsapp {
            for event in early {
                let _ = leg.send_message(LegMsg::WhatsApp(event));
            }
        }
    }

    async fn on_message(&mut self, myself: &ActorRef<CallMsg>, msg: CallMsg) {
        match msg {
            CallMsg::LegChanged { role, state, cause } => {
                self.registry.mark_leg(&self.id, role, state);
                self.on_leg_changed(myself, role, state, cause).await
            }
            CallMsg::Signal { role, signal } => {
                if let Some(leg) = self.leg(role) {
                    // A leg that is gone has already ended the call; nothing to deliver.
                    let _ = leg.send_message(LegMsg::Remote(signal));
                }
            }
            CallMsg::LegFailed { role, cause } if self.dialled_unanswered(role, Some(&cause)) => {}
            CallMsg::LegFailed { role, cause } => {
                // The business may have answered already (its 200 crossing Meta's
                // refusal): the customer never was connected, so the call was not answered.
                self.answered_at = None;
                self.registry.mark_answered(&self.id, None);
                let end = CallEnd {
                    by: HangupParty::Switch,
                    failure: Some(format!(
                        "{} failed before it connected: {cause}",
                        match role {
                            LegRole::WhatsApp => "the WhatsApp side",
                            LegRole::Business => "the business side",
                        }
                    )),
                    cause,
                };
                self.teardown(myself, Some(role), end).await;
            }
            CallMsg::Routed { trunk } => self.trunk = Some(trunk),
            CallMsg::Recording { start, reply } => {
                let done = if start {
                    self.start_recording(false).await
                } else {
                    self.stop_recording(false).await
                };
                let _ = reply.send(done);
            }
            CallMsg::RecordingSaved(saved) => {
                if let Some(running) = self.recording.running.take() {
                    self.recording_saved(saved, running, false).await;
                }
            }
            CallMsg::DialTarget { queue, route } => {
                self.recording.queue = queue;
                self.recording.route = route;
            }
            CallMsg::BridgeEnded { by, cause } => {
                let dials_sip = self.dial_role == LegRole::Business;
                if let (Some(control), false, true) = (&self.control, self.dial_answered, dials_sip)
                {
                    // A dial of the call's control that nobody answered: the script goes
                    // on with the customer, and the bridge is done.
                    tracing::info!(%cause, "dial not answered; back to the IVR");
                    let _ = control.send_message(IvrMsg::Call(crate::control::Event::DialEnded {
                        answered: false,
                    }));
                    if let Some(bridge) = self.bridge.take() {
                        let id = bridge.get_id();
                        self.children.retain(|(child, _, _)| *child != id);
                        bridge.stop(Some("dial ended".into()));
                    }
                    return;
                }
                // The bridge has nothing left to send: it is stopped with the others.
                self.bridge = None;
                let end = CallEnd {
                    by,
                    cause,
                    failure: None,
                };
                self.teardown(myself, None, end).await;
            }
            CallMsg::Hangup { by, cause, reply } => {
                self.teardown(
                    myself,
                    None,
                    CallEnd {
                        by,
                        cause,
                        failure: None,
                    },
                )
                .await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            CallMsg::Snapshot(reply) => {
                let snapshot = self.snapshot().await;
                let _ = reply.send(snapshot);
            }
            CallMsg::Actions { body, reply } => match &self.control {
                Some(control) => {
                    let _ = control.send_message(IvrMsg::Actions { body, reply });
                }
                None => {
                    let _ = reply.send(Err((
                        409,
                        "the call is not under call control (no IVR or app)".into(),
                    )));
                }
            },
            CallMsg::AnchorMedia(reply) => {
                let anchor = match &self.media {
                    Some(m) => match m.call(MediaMsg::Anchor, Some(CALL_RPC_TIMEOUT)).await {
                        Ok(ractor::rpc::CallResult::Success(a)) => a,
                        _ => None,
                    },
                    None => None,
                };
                let _ = reply.send(anchor);
            }
            CallMsg::Media(msg) => {
                if let Some(m) = &self.media {
                    let _ = m.send_message(msg);
                }
            }
            CallMsg::WaCallId(_) if self.wa_call_id_from_meta => {}
            CallMsg::WaCallId(wa_call_id) => self.name_wa_call(&wa_call_id),
            CallMsg::MetaWaCallId(wa_call_id) => {
                self.wa_call_id_from_meta = true;
                self.name_wa_call(&wa_call_id);
            }
            CallMsg::Dial(setup) => {
                let wa = match (&self.whatsapp, self.dial_role) {
                    (Some(wa), LegRole::Business) => wa.clone(),
                    _ => {
                        // A call placed to SIP dials WhatsApp users only.
                        tracing::warn!("a SIP dial in a call without a WhatsApp caller");
                        if let Some(control) = &self.control {
                            let _ = control.send_message(IvrMsg::Call(
                                crate::control::Event::DialEnded { answered: false },
                            ));
                        }
                        return;
                    }
                };
                if let Some(old) = self.bridge.take() {
                    let id = old.get_id();
                    self.children.retain(|(child, _, _)| *child != id);
                    old.stop(Some("a new dial".into()));
                }
                self.dial_answered = false;
                if let Some(trunk) = setup.first_trunk() {
                    self.trunk = Some(trunk);
                }
                if let Err(e) = self
                    .spawn_bridge(myself, *setup, Some((Leg::A, wa)), WHATSAPP_CALLER)
                    .await
                {
                    tracing::warn!(error = %e, "dial not started");
                    if let Some(control) = &self.control {
                        let _ =
                            control.send_message(IvrMsg::Call(crate::control::Event::DialEnded {
                                answered: false,
                            }));
                    }
                }
            }
            CallMsg::WhatsApp { wa_call_id, event } => {
                let dialled = self
                    .dialled
                    .iter()
                    .position(|d| d.wa_call_id.as_deref() == Some(wa_call_id.as_str()));
                let leg = match dialled {
                    None if self.dial_role == LegRole::Business => self.whatsapp.as_ref(),
                    // A call placed to SIP has no WhatsApp leg but the ones it dialled.
                    None => None,
                    Some(i) if i + 1 == self.dialled.len() => self.leg(self.dial_role),
                    // A user dialled before, whose leg is gone: nothing of theirs reaches
                    // the customer's leg.
                    Some(_) => None,
                };
                if let Some(leg) = leg {
                    // A leg that is gone has ended the call already.
                    let _ = leg.send_message(LegMsg::WhatsApp(event));
                }
            }
            CallMsg::DialledWaCallId(wa_call_id) => {
                let early = self.registry.add_dialled_wa_call_id(&self.id, &wa_call_id);
                if self.dial_role == LegRole::WhatsApp {
                    // The customer's call, in a call placed to SIP, is the user it reached.
                    self.offer.wa_call_id = Some(wa_call_id.clone());
                }
                if let Some(d) = self.dialled.last_mut() {
                    d.wa_call_id = Some(wa_call_id);
                }
                if let Some(leg) = self.leg(self.dial_role) {
                    for event in early {
                        let _ = leg.send_message(LegMsg::WhatsApp(event));
                    }
                }
            }
            CallMsg::DialWhatsApp(whatsapp) => {
                if let Err(e) = self.spawn_dialled_whatsapp(myself, *whatsapp).await {
                    tracing::warn!(error = %e, "WhatsApp dial not started");
                    if let Some(control) = &self.control {
                        let _ =
                            control.send_message(IvrMsg::Call(crate::control::Event::DialEnded {
                                answered: false,
                            }));
                    }
                }
            }
            CallMsg::MediaRemote(side, remote) => {
                if let Some(m) = &self.media {
                    let _ = m.send_message(MediaMsg::Remote(side, remote));
                }
            }
            // Handled before it reaches here.
            #[cfg(any(test, feature = "fault-injection"))]
            CallMsg::FaultSelf(_) => {}
            #[cfg(any(test, feature = "fault-injection"))]
            CallMsg::Fault { child, fault } => {
                let _ = match child {
                    ChildRole::Leg(role) => self
                        .leg(role)
                        .map(|leg| leg.send_message(LegMsg::Fault(fault)).is_ok()),
                    ChildRole::Bridge => self
                        .bridge
                        .as_ref()
                        .map(|b| b.send_message(BridgeMsg::Fault(fault)).is_ok()),
                    ChildRole::Media => self
                        .media
                        .as_ref()
                        .map(|m| m.send_message(MediaMsg::Fault(fault)).is_ok()),
                    ChildRole::Control => None,
                };
            }
        }
    }

    async fn on_leg_changed(
        &mut self,
        myself: &ActorRef<CallMsg>,
        role: LegRole,
        state: LegState,
        cause: Option<String>,
    ) {
        if let Some(control) = &self.control {
            match (role == self.dial_role, state) {
                // The party the control talks to answered (the customer; the phone a
                // call placed to SIP rang).
                (false, LegState::Answered) => {
                    let _ = control.send_message(IvrMsg::Answered);
                }
                (true, LegState::Answered) if !self.dial_answered => {
                    self.dial_answered = true;
                    if let Some(d) = self.dialled.last_mut() {
                        d.answered_at = Some(now_ms());
                        d.permit.connected(d.wa_call_id.clone());
                    }
                    let _ = control.send_message(IvrMsg::AnsweredBy(self.trunk.clone()));
                    let _ = control.send_message(IvrMsg::Call(crate::control::Event::DialEnded {
                        answered: true,
                    }));
                    self.record_by_policy().await;
                }
                _ => {}
            }
        }
        let called = self.called;
        let calling = match called {
            LegRole::WhatsApp => LegRole::Business,
            LegRole::Business => LegRole::WhatsApp,
        };
        match state {
            LegState::Ringing if role == called => {
                let at = *self.ringing_at.get_or_insert_with(now_ms);
                self.registry.mark_ringing(&self.id, at);
                if let Some(leg) = self.leg(calling).filter(|_| self.coupled) {
                    let _ = leg.send_message(LegMsg::Alert);
                }
            }
            LegState::Answered if role == called && self.answered_at.is_none() => {
                let now = now_ms();
                self.answered_at = Some(now);
                metrics::histogram!(
                    telemetry::CALL_SETUP_SECONDS,
                    "direction" => self.offer.direction.as_str()
                )
                .record((now - self.offered_at).max(0) as f64 / 1000.0);
                if let Some(leg) = self.leg(calling).filter(|_| self.coupled) {
                    let _ = leg.send_message(LegMsg::Answer);
                }
                self.registry.mark_answered(&self.id, Some(now));
                if let Some(permit) = &self.permit {
                    permit.connected(self.offer.wa_call_id.clone());
                }
                tracing::info!("call answered");
                if !self.recording.at_dial_only {
                    self.record_by_policy().await;
                }
            }
            LegState::Ended if self.dialled_unanswered(role, cause.as_deref()) => {}
            LegState::Ended => {
                let end = CallEnd {
                    by: role.party(),
                    cause: cause.unwrap_or_else(|| "normal_clearing".into()),
                    failure: None,
                };
                self.teardown(myself, Some(role), end).await;
            }
            _ => {}
        }
    }

    async fn on_child_event(&mut self, myself: &ActorRef<CallMsg>, event: SupervisionEvent) {
        if self.ended {
            return;
        }
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                let failure = err.to_string();
                (cell, Some(failure))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let why = reason.unwrap_or_else(|| "no reason given".into());
                (cell, Some(format!("stopped unexpectedly ({why})")))
            }
            _ => return,
        };
        let Some(role) = self
            .children
            .iter()
            .find(|(id, _, _)| *id == cell.get_id())
            .map(|(_, role, _)| *role)
        else {
            return;
        };
        let failure = failure.unwrap_or_default();
        let name = role.as_str();
        metrics::counter!(telemetry::ACTOR_FAILURES_TOTAL, "actor" => name).increment(1);
        tracing::error!(actor = name, error = %failure, "call child failed; ending the call");
        self.children.retain(|(id, _, _)| *id != cell.get_id());
        let failed_leg = match role {
            ChildRole::Leg(r) => Some(r),
            ChildRole::Bridge => {
                self.bridge = None;
                None
            }
            ChildRole::Media => None,
            ChildRole::Control => {
                self.control = None;
                None
            }
        };
        let end = CallEnd {
            by: HangupParty::Switch,
            cause: "internal_failure".into(),
            failure: Some(format!("{name} failed: {failure}")),
        };
        self.teardown(myself, failed_leg, end).await;
    }

    /// Ends the call: hangs up every leg but `ended_leg` (which is already over), stops the
    /// children, writes the CDR and stops the supervisor. Runs once.
    async fn teardown(
        &mut self,
        myself: &ActorRef<CallMsg>,
        ended_leg: Option<LegRole>,
        end: CallEnd,
    ) {
        if self.ended {
            return;
        }
        // The recording is finalised while the media still runs (and an app still hears of
        // it).
        if self.recording.running.is_some() {
            let _ = self.stop_recording(true).await;
        }
        if let Some(control) = self.control.take() {
            // The script stops first, so a recording in progress is finalised while the
            // media still runs.
            match control
                .call(
                    IvrMsg::Finish,
                    Some(FINISH_PATIENCE + Duration::from_secs(1)),
                )
                .await
            {
                Ok(ractor::rpc::CallResult::Success(record)) => self.control_record = Some(record),
                _ => tracing::warn!("call control did not report"),
            }
        }
        for role in [LegRole::WhatsApp, LegRole::Business] {
            if Some(role) == ended_leg {
                continue;
            }
            if let Some(leg) = self.leg(role) {
                let cause = end.cause.clone();
                let hung_up = leg
                    .call(
                        |reply| LegMsg::Hangup { cause, reply },
                        Some(CALL_RPC_TIMEOUT),
                    )
                    .await;
                if !matches!(hung_up, Ok(ractor::rpc::CallResult::Success(()))) {
                    tracing::warn!(leg = role.as_str(), "leg did not confirm hangup");
                }
            }
        }
        if let Some(bridge) = self.bridge.take() {
            let cause = end.cause.clone();
            // The bridge confirms once the trunk has answered our CANCEL or BYE (and a 2xx
            // crossing the CANCEL is hung up), so nothing is left half-done when it stops.
            let hung_up = bridge
                .call(
                    |reply| BridgeMsg::Hangup { cause, reply },
                    Some(BRIDGE_SETTLE_TIMEOUT),
                )
                .await;
            if !matches!(hung_up, Ok(ractor::rpc::CallResult::Success(()))) {
                tracing::warn!("SIP bridge did not confirm hangup");
            }
        }
        if let Some(media) = &self.media {
            if let Ok(ractor::rpc::CallResult::Success(q)) =
                media.call(MediaMsg::Close, Some(CALL_RPC_TIMEOUT)).await
            {
                self.media_report = q;
            }
        }
        self.stop_children().await;
        self.finish(end).await;
        myself.stop(None);
    }

    /// The call's recording policy now (its number's route when its control dialled none).
    fn record_policy(
        &self,
        recordings: &super::recordings::Recordings,
    ) -> crate::config::RecordPolicy {
        let r = &self.recording;
        let number = self.offer.business_number.as_deref();
        let route = r.route.clone().or_else(|| {
            number.and_then(|n| recordings.config().policies.number_routes.get(n).cloned())
        });
        recordings.config().policy(
            number,
            route.as_deref(),
            r.queue.as_deref(),
            r.app.as_deref(),
        )
    }

    /// Starts the recording the call's policy asks for (`all`), once per call; a policy of
    /// `none` (a queue's, a route's) ends one the policy started before.
    async fn record_by_policy(&mut self) {
        let Some(recordings) = self.recording.recordings.clone() else {
            return;
        };
        match self.record_policy(&recordings) {
            crate::config::RecordPolicy::All => {
                if self.recording.by_policy || self.recording.running.is_some() {
                    return;
                }
                match self.start_recording(true).await {
                    Ok(()) => self.recording.by_policy = true,
                    Err((_, why)) => {
                        tracing::warn!(error = %why, "the call's recording (policy \"all\") not started")
                    }
                }
            }
            crate::config::RecordPolicy::None if self.recording.running.is_some() => {
                tracing::info!(
                    "the party reached is never recorded (policy \"none\"): recording stopped"
                );
                let _ = self.stop_recording(true).await;
            }
            _ => {}
        }
    }

    /// Starts recording the call (by its policy, or asked on demand): the consent
    /// announcement first, when one is configured.
    async fn start_recording(&mut self, by_policy: bool) -> Result<(), (u16, String)> {
        let Some(recordings) = self.recording.recordings.clone() else {
            return Err((409, "this node records no calls".into()));
        };
        if !by_policy && self.record_policy(&recordings) == crate::config::RecordPolicy::None {
            return Err((
                403,
                "this call is never recorded (its record policy is \"none\")".into(),
            ));
        }
        if self.recording.running.is_some() {
            return Err((409, "the call is being recorded already".into()));
        }
        if self.answered_at.is_none() && !self.dial_answered && self.control.is_none() {
            return Err((409, "the call is not answered yet".into()));
        }
        let Some(media) = self.media.clone() else {
            return Err((409, "the call has no media".into()));
        };
        let planned = recordings.plan(self.id.as_str());
        let side = self.recording.customer_side;
        let consent = recordings
            .consent_for(self.offer.customer_wa_id.as_deref())
            .map(|p| (side, p));
        let (kept_tx, kept) = tokio::sync::oneshot::channel();
        let job = super::recordings::Job {
            planned: planned.clone(),
            recordings,
            owner: super::recordings::Owner {
                call_id: self.id.to_string(),
                business_number: self.offer.business_number.clone().unwrap_or_default(),
                customer: self.offer.customer_wa_id.clone(),
                app: self.recording.app.clone().unwrap_or_default(),
            },
            swap: side == crate::media::types::Side::B,
            kept: Some(kept_tx),
        };
        let taken = media
            .call(
                |reply| MediaMsg::StartRecording {
                    job,
                    consent,
                    reply,
                },
                Some(CALL_RPC_TIMEOUT),
            )
            .await;
        match taken {
            Ok(ractor::rpc::CallResult::Success(Ok(()))) => {
                tracing::info!(recording = %planned.id, by_policy, "call recording started");
                self.recording.running = Some(Running {
                    started: now_ms(),
                    kept,
                });
                Ok(())
            }
            Ok(ractor::rpc::CallResult::Success(Err(e))) => Err((409, e)),
            _ => Err((503, "the call's media did not answer".into())),
        }
    }

    /// Stops the call's recording (it is kept by the recorder's own hand-over). A recording
    /// the policy runs is not stopped on demand.
    async fn stop_recording(&mut self, ending: bool) -> Result<(), (u16, String)> {
        if !ending && self.recording.by_policy && self.recording.running.is_some() {
            return Err((
                409,
                "the call is recorded by its policy (\"all\"): it is not stopped on demand".into(),
            ));
        }
        let Some(running) = self.recording.running.take() else {
            return Err((409, "the call is not being recorded".into()));
        };
        let Some(media) = self.media.clone() else {
            return Err((409, "the call has no media".into()));
        };
        match media
            .call(MediaMsg::StopRecording, Some(RECORDING_FINISH_PATIENCE))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(Some(saved))) => {
                self.recording_saved(saved, running, ending).await;
            }
            Ok(ractor::rpc::CallResult::Success(None)) => {
                tracing::info!("recording stopped before it began: nothing recorded");
            }
            _ => tracing::warn!(
                "the recording's file was not final in time: the CDR does not name it (it is kept when it is)"
            ),
        }
        Ok(())
    }

    /// A recording's file is final: noted for the CDR; the call's app hears of it once it is
    /// kept. At the call's end the app hears of it before its script stops.
    async fn recording_saved(
        &mut self,
        saved: Result<super::recordings::Saved, String>,
        running: Running,
        ending: bool,
    ) {
        let Some(recordings) = self.recording.recordings.clone() else {
            return;
        };
        let saved = match saved {
            Ok(s) => s,
            // Counted and cleaned up where it is kept.
            Err(_) => return,
        };
        if self.recording.first.is_none() {
            self.recording.first = Some(recordings.cdr_entry(&saved));
        }
        // An app driving the call hears of it (an IVR without one ignores it).
        let Some(control) = self.control.clone() else {
            return;
        };
        let started = running.started;
        let told = async move {
            if let Ok(Some(kept)) = running.kept.await {
                let _ = control.send_message(IvrMsg::CallRecorded {
                    id: kept.planned.id.clone(),
                    bytes: kept.bytes,
                    duration_ms: (now_ms() - started).max(0) as u64,
                    media_type: kept.planned.format.mime(),
                });
            }
        }
        .instrument(self.span.clone());
        let telling = tokio::spawn(told);
        if ending {
            // The call's end waits for the store, not for a slow bucket forever (the upload
            // goes on without it).
            let _ = tokio::time::timeout(RECORDING_KEEP_PATIENCE, telling).await;
        }
    }

    async fn stop_children(&mut self) {
        let stops = self.children.drain(..).map(|(_, _, cell)| async move {
            cell.stop_and_wait(Some("call ended".into()), Some(CHILD_STOP_TIMEOUT))
                .await
        });
        futures::future::join_all(stops).await;
    }

    /// Removes the call from the registry and writes its CDR, unless someone else already did.
    async fn finish(&mut self, end: CallEnd) {
        if self.ended {
            return;
        }
        self.ended = true;
        super::pause_point("before_cdr").await;
        if let Some((mut entry, closing)) = self.registry.remove(&self.id) {
            super::pause_point("before_cdr_submitted").await;
            if self.trunk.is_some() {
                entry.offer.trunk = self.trunk.clone();
            }
            // A call placed to SIP learns its customer when its control dials them.
            if entry.offer.customer_wa_id.is_none() {
                entry.offer.customer_wa_id = self.offer.customer_wa_id.clone();
            }
            if entry.offer.wa_call_id.is_none() {
                entry.offer.wa_call_id = self.offer.wa_call_id.clone();
            }
            let mut cdr = close_out(
                &self.node_id,
                &self.id,
                &entry,
                self.ringing_at,
                self.answered_at,
                end,
            );
            if cdr.answered_at.is_some() {
                metrics::histogram!(
                    telemetry::CALL_DURATION_SECONDS,
                    "direction" => cdr.direction.as_str()
                )
                .record(cdr.duration_ms as f64 / 1000.0);
            }
            cdr.media = self.media_report.quality;
            cdr.codec_path = self.media_report.codec_path.clone();
            cdr.control = self.control_record.take();
            cdr.recording = self.recording.first.take();
            if let Some(permit) = &entry.permit {
                permit.settle(&cdr);
            }
            // Each WhatsApp user the control dialled who is not settled yet (answered, or
            // still ringing at the end), as their own call saw it.
            for d in self.dialled.drain(..) {
                let mut theirs = cdr.clone();
                theirs.wa_call_id = d.wa_call_id.clone();
                theirs.answered_at = d.answered_at;
                if d.answered_at.is_none() {
                    theirs = d.unanswered(&cdr.call_id, &cdr.node_id);
                }
                d.permit.settle(&theirs);
            }
            tracing::info!(
                outcome = cdr.outcome.as_str(),
                cause = %cdr.end_cause,
                hangup_by = cdr.hangup_by.as_str(),
                failure = cdr.failure.as_deref().unwrap_or(""),
                "call ended"
            );
            self.cdrs.submit(cdr).await;
            drop(closing);
        }
    }

    async fn snapshot(&self) -> CallSnapshot {
        async fn leg_state(leg: Option<&ActorRef<LegMsg>>) -> Option<LegState> {
            match leg?.call(LegMsg::State, Some(CALL_RPC_TIMEOUT)).await {
                Ok(ractor::rpc::CallResult::Success(s)) => Some(s),
                _ => None,
            }
        }
        let media = match &self.media {
            Some(m) => match m.call(MediaMsg::Ports, Some(CALL_RPC_TIMEOUT)).await {
                Ok(ractor::rpc::CallResult::Success(p)) => Some(p),
                _ => None,
            },
            None => None,
        };
        CallSnapshot {
            call_id: self.id.clone(),
            offer: self.offer.clone(),
            offered_at: self.offered_at,
            ringing_at: self.ringing_at,
            answered_at: self.answered_at,
            whatsapp_leg: leg_state(self.whatsapp.as_ref()).await,
            business_leg: leg_state(self.business.as_ref()).await,
            media,
        }
    }
}

/// The media actor, which a WhatsApp leg needs from its start.
fn media_ref(media: &Option<ActorRef<MediaMsg>>) -> Result<ActorRef<MediaMsg>, ActorProcessingErr> {
    media
        .clone()
        .ok_or_else(|| ActorProcessingErr::from("the call has no media actor"))
}

/// Who the legs of a bridge with a WhatsApp caller are: the customer calls, the business
/// is called.
const WHATSAPP_CALLER: Parties = Parties {
    a: HangupParty::Customer,
    b: HangupParty::Business,
    refusal: HangupParty::Business,
};
