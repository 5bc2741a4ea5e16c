//! The actor that runs a call's [`WhatsAppLeg`]: a child of the call's supervisor, and the
//! one place a call talks to Meta.
//!
//! It builds the leg's WebRTC side as it starts (answering Meta's offer, or making the
//! switch's), then carries out what the leg asks:
//! - `pre_accept` and `accept` are awaited here, in order, and their outcome handed back;
//! - `connect` runs as a task the actor owns (after `call_dialled` is in the audit trail),
//!   so the leg keeps answering the bridge meanwhile; its answer comes back to the leg;
//! - `reject` and `terminate` go to Meta's [`Outbox`]: the call's teardown never waits on
//!   the Graph API, and a shutdown never loses them;
//! - SIP events go to the call's bridge, media updates to the call's media actor, and the
//!   leg's progress to the supervisor.
//!
//! However the actor ends, Meta's side of the call is ended: its state's `Drop` hands the
//! leg's last words to the outbox. A `connect` still out when the actor stops is waited
//! for (at most as long as one Graph request may take), so a call Meta placed just after
//! the switch gave up on it is terminated; if the actor is killed instead, Meta's own
//! webhooks name the call (`biz_opaque_callback_data`), and the ingress terminates it then.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::leg::{Face, WaOut, Way, WhatsAppLeg};
use super::permit::Permit;
use super::sip::{MetaSipDialer, MetaSipInbound, MetaSipOutbound};
use super::WaEvent;
use crate::call::leg::{FromBridge, LegMsg, LegSignal};
use crate::call::media::MediaMsg;
use crate::call::plan::{Carrier, Dialer};
use crate::call::plan::{WhatsAppInbound, WhatsAppOutbound};
use crate::call::sip::bridge::BridgeMsg;
use crate::call::sip::Route;
use crate::call::supervisor::CallMsg;
use crate::call::wakeup::Wakeup;
use crate::call::LegRole;
use crate::media::types::Side;
use crate::meta::graph::{CallAction, GraphError};
use crate::meta::outbox::Outbox;
use crate::sip::core::SipCommand;
use crate::sip::transport::SipHandle;
use crate::store::HangupParty;

/// How long the media actor may take to build the WebRTC leg.
const ANCHOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Which way the leg crosses Meta, with what that needs.
#[derive(Debug)]
pub(crate) enum WhatsAppStart {
    /// A customer's call.
    Inbound(WhatsAppInbound),
    /// The switch calls a customer.
    Outbound(WhatsAppOutbound),
}

/// The WhatsApp leg actor.
pub(crate) struct WhatsAppLegActor;

/// What the WhatsApp leg actor starts with.
pub(crate) struct WhatsAppLegArgs {
    /// Which way the call crosses Meta.
    pub start: WhatsAppStart,
    /// How the leg meets the rest of its call.
    pub face: Face,
    /// The call's supervisor.
    pub call: ActorRef<CallMsg>,
    /// The call's media actor (builds the WebRTC leg).
    pub media: ActorRef<MediaMsg>,
    /// The switch's id of the call (Meta echoes it in its webhooks).
    pub call_id: String,
    /// The call's span.
    pub span: tracing::Span,
    /// A user the call's control dialled, reporting as this side of the call (the
    /// business side of a customer's call, the customer's of a call placed to SIP). Its
    /// media is the pair's side B (a WebRTC leg standing in for the plain side). `None`:
    /// the call's own customer.
    pub dialled: Option<LegRole>,
}

/// How the leg reaches Meta.
enum Link {
    /// Graph requests through the outbox (and webhooks, routed by the ingress).
    Graph,
    /// The SIP dialog Meta's INVITE opened, over the listener it came through.
    SipIn {
        dialog: Box<MetaSipInbound>,
        origin: SipHandle,
        table: Arc<DashMap<Bytes, Route>>,
        call_id: Bytes,
    },
    /// Our call through Meta's SIP proxy (the INVITE goes out at `connect`).
    SipOut {
        dialer: Box<MetaSipDialer>,
        call: Option<Box<MetaSipOutbound>>,
    },
}

impl Link {
    /// What a Graph action sent without waiting (`reject`, `terminate`) is toward Meta
    /// over SIP, with the listener it goes through; `None` for the Graph link, or when
    /// there is nothing left to send.
    fn sip_send(&mut self, action: &CallAction) -> Option<(SipCommand, &SipHandle)> {
        match self {
            Link::Graph => None,
            Link::SipIn { dialog, origin, .. } => {
                dialog.action(action).ok().flatten().map(|c| (c, &*origin))
            }
            Link::SipOut { dialer, call } => call.as_mut()?.end().map(|c| (c, &dialer.origin)),
        }
    }
}

/// State of a running WhatsApp leg.
pub(crate) struct WhatsAppLegState {
    leg: WhatsAppLeg,
    link: Link,
    outbox: Outbox,
    phone_number_id: String,
    permit: Option<Permit>,
    call: ActorRef<CallMsg>,
    media: ActorRef<MediaMsg>,
    /// The call's bridge, once it is ready for this leg.
    bridge: Option<ActorRef<BridgeMsg>>,
    /// What was said to the bridge before it was ready.
    to_bridge: Vec<BridgeMsg>,
    /// Placing the call with Meta.
    tasks: JoinSet<WaEvent>,
    timer: Wakeup<LegMsg>,
    span: tracing::Span,
    /// A user the call's control dialled (side B), and the side of the call it reports as.
    dialled: Option<LegRole>,
}

impl Actor for WhatsAppLegActor {
    type Msg = LegMsg;
    type State = WhatsAppLegState;
    type Arguments = WhatsAppLegArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WhatsAppLegArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let span = args.span.clone();
        start(args).instrument(span).await
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        leg: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Link::SipIn { table, call_id, .. } = &leg.link {
            // The dialog's events come here now; those that came meanwhile, in order.
            if let Some(Route::Pending(events)) =
                table.insert(call_id.clone(), Route::Meta(myself.clone()))
            {
                for event in events {
                    let _ = myself.send_message(LegMsg::MetaSip(event));
                }
            }
        }
        let outs = leg.leg.start(Instant::now());
        let span = leg.span.clone();
        leg.carry_out(&myself, outs).instrument(span).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        leg: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = leg.span.clone();
        async move {
            let outs = match msg {
                LegMsg::WhatsApp(event) => leg.leg.on_meta(event),
                LegMsg::MetaSip(event) => leg.meta_sip(event).await,
                LegMsg::Bridge(FromBridge::Ready { bridge, offer }) => {
                    for msg in leg.to_bridge.drain(..) {
                        let _ = bridge.send_message(msg);
                    }
                    leg.bridge = Some(bridge);
                    leg.leg.bridge_ready(offer)
                }
                LegMsg::Bridge(FromBridge::Sip(command)) => leg.leg.on_sip(command),
                LegMsg::Bridge(FromBridge::Media(remote)) => leg.leg.sip_media(remote),
                // Signalled from outside like any leg: a far-end hangup is Meta's.
                LegMsg::Remote(LegSignal::HungUp { cause }) => {
                    leg.leg.on_meta(WaEvent::Terminated { cause })
                }
                LegMsg::Remote(_) => Vec::new(),
                // The bridge tells a WhatsApp leg how the business side goes, in SIP.
                // The call's control answers the customer (an IVR).
                LegMsg::Answer => leg.leg.answer(),
                LegMsg::Alert => Vec::new(),
                LegMsg::Hangup { cause, reply } => {
                    tracing::debug!(%cause, "ending the WhatsApp leg");
                    let outs = leg.leg.hangup();
                    leg.carry_out(&myself, outs).await;
                    let _ = reply.send(());
                    Vec::new()
                }
                LegMsg::State(reply) => {
                    let _ = reply.send(leg.leg.state());
                    Vec::new()
                }
                LegMsg::Wake => {
                    let mut outs = Vec::new();
                    while let Some(done) = leg.tasks.try_join_next() {
                        outs.extend(leg.finished(done));
                    }
                    if leg
                        .leg
                        .poll_timeout()
                        .is_some_and(|at| at <= Instant::now())
                    {
                        leg.timer.fired();
                        outs.extend(leg.leg.handle_timeout(Instant::now()));
                    }
                    outs
                }
                #[cfg(any(test, feature = "fault-injection"))]
                LegMsg::Fault(fault) => return fault.trigger(LegRole::WhatsApp.as_str()),
            };
            leg.carry_out(&myself, outs).await;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        leg: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A `connect` still out: its answer decides whether Meta's call is terminated.
        if leg.tasks.is_empty() {
            return Ok(());
        }
        let patience = leg.outbox.graph().longest_request();
        let span = leg.span.clone();
        async {
            let deadline = tokio::time::Instant::now() + patience;
            while let Ok(Some(done)) =
                tokio::time::timeout_at(deadline, leg.tasks.join_next()).await
            {
                let outs = leg.finished(done);
                leg.carry_out(&myself, outs).await;
            }
        }
        .instrument(span)
        .await;
        Ok(())
    }
}

/// Builds the leg's WebRTC side and the leg.
async fn start(args: WhatsAppLegArgs) -> Result<WhatsAppLegState, ActorProcessingErr> {
    let tag = format!("{:x}wa", uuid::Uuid::new_v4().as_u64_pair().0);
    let (way, link, outbox, phone_number_id, permit, span) = match args.start {
        WhatsAppStart::Inbound(w) => {
            let span = tracing::debug_span!(parent: &args.span, "leg", role = "wa_leg", wa_call_id = %w.wa_call_id);
            let offer = w.offer_sdp;
            let echo = args.face == Face::Echo;
            // Over SIP, Meta's offer is WebRTC's ICE and DTLS or else SDES-SRTP (the number's
            // setting decides which Meta sends; the SDES answerer says what an offer lacks).
            let sdes =
                matches!(w.carrier, Carrier::Sip(_)) && !crate::sdp::is_webrtc(offer.as_bytes());
            let anchored = if sdes {
                args.media
                    .call(
                        |reply| MediaMsg::AnchorSdes { offer, reply },
                        Some(ANCHOR_TIMEOUT),
                    )
                    .instrument(span.clone())
                    .await
            } else {
                args.media
                    .call(
                        |reply| MediaMsg::AnchorWebRtc { offer, echo, reply },
                        Some(ANCHOR_TIMEOUT),
                    )
                    .instrument(span.clone())
                    .await
            };
            let answer = match anchored {
                Ok(ractor::rpc::CallResult::Success(Ok(answer))) => answer,
                other => {
                    let why = match other {
                        Ok(ractor::rpc::CallResult::Success(Err(e))) => e,
                        _ => "media did not answer".into(),
                    };
                    tracing::warn!(parent: &span, error = %why, "WhatsApp offer not answerable; rejecting the call");
                    let _entered = span.enter();
                    match &w.carrier {
                        Carrier::Graph => {
                            w.outbox.send(
                                &w.phone_number_id,
                                CallAction::Reject {
                                    call_id: w.wa_call_id.clone(),
                                },
                            );
                        }
                        Carrier::Sip(link) => {
                            let reason =
                                format!("Not Acceptable Here - {}", super::leg::safe_phrase(&why));
                            link.origin
                                .send(link.call.refusal(488, &reason, &tag))
                                .await;
                            link.table.remove(&link.call.call_id());
                        }
                    }
                    return Err(ActorProcessingErr::from(
                        "the WhatsApp offer could not be answered",
                    ));
                }
            };
            let way = Way::Inbound {
                wa_call_id: w.wa_call_id,
                answer,
            };
            let link = match w.carrier {
                Carrier::Graph => Link::Graph,
                Carrier::Sip(l) => {
                    let l = *l;
                    Link::SipIn {
                        call_id: l.call.call_id(),
                        dialog: Box::new(MetaSipInbound::new(l.call, &tag)),
                        origin: l.origin,
                        table: l.table,
                    }
                }
            };
            (way, link, w.outbox, w.phone_number_id, None, span)
        }
        WhatsAppStart::Outbound(w) => {
            let span = tracing::debug_span!(parent: &args.span, "leg", role = if args.dialled.is_some() { "wa_leg_dialled" } else { "wa_leg" });
            let sdes = matches!(&w.dialer, Dialer::Sip(d) if d.sdes) && args.dialled.is_none();
            let offered = if sdes {
                args.media
                    .call(MediaMsg::OfferSdes, Some(ANCHOR_TIMEOUT))
                    .instrument(span.clone())
                    .await
                    .map(|r| r.map(|o| o.map(|sdp| (sdp, ()))))
            } else if args.dialled.is_some() {
                // A WebRTC leg standing in for the pair's side B.
                args.media
                    .call(MediaMsg::OfferAgent, Some(ANCHOR_TIMEOUT))
                    .instrument(span.clone())
                    .await
                    .map(|r| r.map(|o| o.map(|sdp| (sdp, ()))))
            } else {
                args.media
                    .call(MediaMsg::OfferWebRtc, Some(ANCHOR_TIMEOUT))
                    .instrument(span.clone())
                    .await
                    .map(|r| r.map(|o| o.map(|(sdp, _)| (sdp, ()))))
            };
            let offer = match offered {
                Ok(ractor::rpc::CallResult::Success(Ok((offer, ())))) => offer,
                Ok(ractor::rpc::CallResult::Success(Err(e))) => {
                    return Err(ActorProcessingErr::from(format!(
                        "no WebRTC offer for the customer: {e}"
                    )))
                }
                _ => {
                    return Err(ActorProcessingErr::from(
                        "no WebRTC offer for the customer: media did not answer",
                    ))
                }
            };
            let way = Way::Outbound {
                customer: w.customer,
                offer,
                ring_timeout: w.ring_timeout,
            };
            let link = match w.dialer {
                Dialer::Graph => Link::Graph,
                Dialer::Sip(dialer) => Link::SipOut { dialer, call: None },
            };
            (way, link, w.outbox, w.phone_number_id, Some(w.permit), span)
        }
    };
    let mut leg = WhatsAppLeg::new(way, args.face, &args.call_id, &tag);
    // The permission may have ended between its reservation and now: the call ends as a
    // refusal for that reason, and nobody is called.
    if let Some(blocked) = match &permit {
        Some(p) => p.cut_off().await,
        None => None,
    } {
        tracing::info!(parent: &span, reason = blocked.as_str(), "the customer's permission ended before the call was placed");
        leg.hangup();
        let _ = args.call.send_message(CallMsg::Hangup {
            by: HangupParty::Switch,
            cause: blocked.as_str().to_string(),
            reply: None,
        });
    }
    Ok(WhatsAppLegState {
        leg,
        link,
        outbox,
        phone_number_id,
        permit,
        call: args.call,
        media: args.media,
        bridge: None,
        to_bridge: Vec::new(),
        tasks: JoinSet::new(),
        timer: Wakeup::default(),
        span,
        dialled: args.dialled,
    })
}

impl Drop for WhatsAppLegState {
    /// However the actor ended, Meta's side of the call is ended.
    fn drop(&mut self) {
        let _entered = self.span.enter();
        for out in self.leg.hangup() {
            if let WaOut::Send(action) = out {
                tracing::warn!(
                    action = action.name(),
                    "WhatsApp leg gone; ending Meta's side"
                );
                if matches!(self.link, Link::Graph) {
                    self.outbox.send(&self.phone_number_id, action);
                } else if let Some((command, origin)) = self.link.sip_send(&action) {
                    if !origin.try_send(command) {
                        tracing::warn!("the SIP listener took no last word to Meta");
                    }
                }
            }
        }
        match &self.link {
            Link::SipIn { table, call_id, .. } => {
                table.remove_if(call_id, |_, r| matches!(r, Route::Meta(_)));
            }
            Link::SipOut {
                dialer,
                call: Some(call),
            } => {
                dialer.table.remove_if(call.call_id().as_bytes(), |_, r| {
                    matches!(r, Route::Meta(_))
                });
            }
            _ => {}
        }
    }
}

impl WhatsAppLegState {
    /// The side of the call the leg is: the customer's, or (a user the call dialled) the
    /// side its dials reach.
    fn role(&self) -> LegRole {
        self.dialled.unwrap_or(LegRole::WhatsApp)
    }

    /// A task's outcome, for the leg.
    fn finished(&mut self, done: Result<WaEvent, tokio::task::JoinError>) -> Vec<WaOut> {
        match done {
            Ok(event) => self.leg.on_meta(event),
            Err(e) => {
                tracing::error!(error = %e, "placing the call with Meta failed");
                self.leg.on_meta(WaEvent::Connected(Err((
                    500,
                    "Server Internal Error - placing the call failed".into(),
                ))))
            }
        }
    }

    fn tell_bridge(&mut self, msg: BridgeMsg) {
        match &self.bridge {
            Some(bridge) => {
                // A bridge that is gone has ended the call already.
                let _ = bridge.send_message(msg);
            }
            None => self.to_bridge.push(msg),
        }
    }

    /// Carries out what the leg asks, feeding back the outcomes it waits for.
    async fn carry_out(&mut self, myself: &ActorRef<LegMsg>, outs: Vec<WaOut>) {
        let mut queue: std::collections::VecDeque<WaOut> = outs.into();
        while let Some(out) = queue.pop_front() {
            match out {
                WaOut::Await(action) => {
                    let ok = match &mut self.link {
                        Link::Graph => {
                            let result = self
                                .outbox
                                .graph()
                                .call_action(&self.phone_number_id, &action)
                                .await;
                            match &result {
                                Ok(_) => tracing::debug!(action = action.name(), "sent to Meta"),
                                Err(e) => {
                                    tracing::warn!(error = %e, action = action.name(), "Meta refused; ending the call")
                                }
                            }
                            result.is_ok()
                        }
                        Link::SipOut { .. } => false,
                        Link::SipIn { dialog, origin, .. } => match dialog.action(&action) {
                            Ok(command) => {
                                if let Some(command) = command {
                                    origin.send(command).await;
                                }
                                true
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, action = action.name(), "not carried to Meta over SIP; ending the call");
                                false
                            }
                        },
                    };
                    queue.extend(self.leg.graph_done(&action, ok));
                }
                WaOut::Dial(action) => {
                    if matches!(self.link, Link::SipOut { .. }) {
                        queue.extend(self.dial_sip(myself, action).await);
                    } else {
                        self.dial(myself, action);
                    }
                }
                WaOut::Send(action) => {
                    if matches!(self.link, Link::Graph) {
                        self.outbox.send(&self.phone_number_id, action);
                    } else if let Some((command, origin)) = self.link.sip_send(&action) {
                        origin.send(command).await;
                    }
                }
                WaOut::WebRtcAnswer(sdp)
                    if matches!(&self.link, Link::SipOut { dialer, .. } if dialer.sdes)
                        && self.dialled.is_none() =>
                {
                    let applied = self
                        .media
                        .call(|r| MediaMsg::SdesAnswer(sdp, r), Some(ANCHOR_TIMEOUT))
                        .await;
                    if !matches!(applied, Ok(ractor::rpc::CallResult::Success(Ok(())))) {
                        let _ = self.call.send_message(CallMsg::Hangup {
                            by: HangupParty::Switch,
                            cause: "meta_answer_unusable".into(),
                            reply: None,
                        });
                    }
                }
                WaOut::Bridge(event) => self.tell_bridge(BridgeMsg::Sip(event)),
                WaOut::Begin => self.tell_bridge(BridgeMsg::Begin),
                WaOut::WebRtcAnswer(sdp) if self.dialled.is_some() => {
                    let _ = self.media.send_message(MediaMsg::AgentAnswer(sdp));
                }
                WaOut::WebRtcAnswer(sdp) => {
                    let _ = self.media.send_message(MediaMsg::WebRtcAnswer(sdp));
                }
                WaOut::SipMedia(remote) => {
                    let path = crate::call::media::codec_path(&remote);
                    let _ = self.media.send_message(MediaMsg::Remote(Side::B, remote));
                    let _ = self.media.send_message(MediaMsg::Plan(path));
                }
                WaOut::WaCallId(id) if self.dialled.is_some() => {
                    let _ = self.call.send_message(CallMsg::DialledWaCallId(id));
                }
                WaOut::WaCallId(id) => {
                    let _ = self.call.send_message(CallMsg::WaCallId(id));
                }
                WaOut::Changed(state, cause) => {
                    let _ = self.call.send_message(CallMsg::LegChanged {
                        role: self.role(),
                        state,
                        cause,
                    });
                }
                WaOut::Failed(cause) => {
                    let _ = self.call.send_message(CallMsg::LegFailed {
                        role: self.role(),
                        cause,
                    });
                }
                WaOut::EndCall(cause) => {
                    let _ = self.call.send_message(CallMsg::Hangup {
                        by: HangupParty::Switch,
                        cause,
                        reply: None,
                    });
                }
            }
        }
        self.timer
            .set(myself, self.leg.poll_timeout(), || LegMsg::Wake);
    }

    /// An event of the SIP dialog with Meta: answered, and what it means for the leg.
    async fn meta_sip(&mut self, event: crate::sip::core::CoreEvent) -> Vec<WaOut> {
        let events = match &mut self.link {
            Link::SipIn { dialog, origin, .. } => {
                let (command, event) = dialog.on_event(event);
                if let Some(command) = command {
                    origin.send(command).await;
                }
                event.into_iter().collect()
            }
            Link::SipOut {
                dialer,
                call: Some(call),
            } => {
                let (commands, events) = call.on_event(event);
                for command in commands {
                    dialer.origin.send(command).await;
                }
                events
            }
            _ => Vec::new(),
        };
        let mut outs = Vec::new();
        for event in events {
            if let (WaEvent::Connected(Err(_)), Some(permit)) = (&event, &self.permit) {
                // Meta refused the INVITE outright: nothing was placed.
                permit.not_placed();
            }
            outs.extend(self.leg.on_meta(event));
        }
        outs
    }

    /// Places the call through Meta's SIP proxy: `call_dialled` is in the audit trail
    /// before the INVITE leaves (when it cannot be written, Meta is not asked and the call
    /// fails with 503); Meta's answers come back as the dialog's events.
    async fn dial_sip(&mut self, myself: &ActorRef<LegMsg>, action: CallAction) -> Vec<WaOut> {
        let CallAction::Connect { to, sdp, .. } = action else {
            return Vec::new();
        };
        if let Some(permit) = &self.permit {
            if let Err(e) = permit.dialled().await {
                tracing::error!(error = %e, "call_dialled not written to the audit trail; Meta not asked");
                return self.leg.on_meta(WaEvent::Connected(Err((
                    503,
                    "Service Unavailable - audit trail not written".to_string(),
                ))));
            }
        }
        let Link::SipOut { dialer, call } = &mut self.link else {
            return Vec::new();
        };
        let proxy = match tokio::net::lookup_host(dialer.proxy.as_str()).await {
            Ok(mut addrs) => addrs.next(),
            Err(e) => {
                tracing::warn!(proxy = %dialer.proxy, error = %e, "Meta's SIP proxy not resolved");
                None
            }
        };
        let Some(proxy) = proxy else {
            if let Some(permit) = &self.permit {
                permit.not_placed();
            }
            return self.leg.on_meta(WaEvent::Connected(Err((
                503,
                "Service Unavailable - Meta's SIP proxy not found".to_string(),
            ))));
        };
        let host = dialer
            .proxy
            .rsplit_once(':')
            .map_or(dialer.proxy.as_str(), |(h, _)| h);
        if host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_err()
        {
            // Meta's certificate names wa.meta.vc, not the address it resolved to.
            crate::sip::transport::tls::name_peer(proxy, host);
        }
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        let call_id = format!("{hi:x}{lo:x}@{}", dialer.hostname);
        let tag = format!("{:x}wa", lo ^ hi.rotate_left(7));
        let mut outbound = Box::new(MetaSipOutbound::new(dialer, proxy, &call_id, &tag));
        dialer
            .table
            .insert(Bytes::from(call_id.clone()), Route::Meta(myself.clone()));
        let customer = to.trim_start_matches('+').to_string();
        let invite = outbound.invite(&customer, &sdp);
        tracing::info!(%proxy, %call_id, "calling the customer through Meta's SIP proxy");
        dialer.origin.send(invite).await;
        *call = Some(outbound);
        Vec::new()
    }

    /// Places the call with Meta from a task of the actor's: `call_dialled` is in the
    /// audit trail before the request leaves (when it cannot be written, Meta is not
    /// asked and the call fails with 503); Meta's answer comes back to the leg.
    fn dial(&mut self, myself: &ActorRef<LegMsg>, action: CallAction) {
        let graph = Arc::clone(self.outbox.graph());
        let pnid = self.phone_number_id.clone();
        let permit = self.permit.clone();
        let me = myself.clone();
        self.tasks.spawn(
            async move {
                crate::call::pause_point("before_dial").await;
                let event = place(permit, &graph, &pnid, &action).await;
                let _ = me.send_message(LegMsg::Wake);
                event
            }
            .instrument(self.span.clone()),
        );
    }
}

async fn place(
    permit: Option<Permit>,
    graph: &crate::meta::graph::GraphClient,
    pnid: &str,
    action: &CallAction,
) -> WaEvent {
    if let Some(permit) = &permit {
        if let Err(e) = permit.dialled().await {
            tracing::error!(error = %e, "call_dialled not written to the audit trail; Meta not asked");
            return WaEvent::Connected(Err((
                503,
                "Service Unavailable - audit trail not written".to_string(),
            )));
        }
    }
    let result = match graph.call_action(pnid, action).await {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err((
            480,
            "Temporarily Unavailable - no call id from Meta".to_string(),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "Meta refused the call");
            if e.not_carried_out() {
                if let Some(permit) = &permit {
                    permit.not_placed();
                }
            }
            Err(connect_refusal(&e))
        }
    };
    WaEvent::Connected(result)
}

/// The SIP status and reason of a refused Graph `connect`.
pub(crate) fn connect_refusal(e: &GraphError) -> (u16, String) {
    match e.code() {
        // No approved call permission (Meta's records disagree with the switch's).
        Some(138_006) => (403, "Forbidden - Meta reports no call permission".into()),
        // The number is not on WhatsApp, or its client cannot take calls.
        Some(138_001) => (404, "Not Found - receiver uncallable on WhatsApp".into()),
        // A call with the customer is already in progress.
        Some(138_003) => (
            486,
            "Busy Here - a call with the customer is in progress".into(),
        ),
        _ if e.transient() => (503, "Service Unavailable - WhatsApp unreachable".into()),
        _ => (
            480,
            format!(
                "Temporarily Unavailable - {}",
                super::leg::safe_phrase(&e.to_string())
            ),
        ),
    }
}
