//! The WhatsApp leg of a call, sans-IO: one state machine for every call with a WhatsApp
//! side, whichever way it crosses Meta and however it meets the rest of its call.
//!
//! Two questions describe a WhatsApp leg, and they are independent:
//! - **Which way it crosses Meta** ([`Way`]). An *inbound* leg is a customer's call (Meta's
//!   `connect` webhook with an offer): the switch answers it with `pre_accept` and `accept`,
//!   or declines it with `reject`, and ends it with `terminate`. An *outbound* leg is the
//!   switch calling a customer: Graph `connect` with the switch's offer, then Meta's
//!   webhooks say how it goes (answer SDP, ringing, accepted, rejected, terminated), and
//!   `terminate` ends it, once Meta's id of the call is known.
//! - **How it meets the rest of the call** ([`Face`]). As the *caller* of the call's SIP
//!   bridge (its leg A) it is offered to the business's trunks: the bridge's responses say
//!   when the business rings and answers, and what the business sends it is answered here.
//!   As the *callee* (leg B), the bridge calls it: it answers the bridge's INVITE as Meta's
//!   webhooks tell (ringing → 180, accepted → 200 with the codec the PBX offered first,
//!   declined → 603, Meta's failure → 503, gone before the answer → 480, after → BYE). With
//!   an *echo* there is no other side: the customer hears themselves, answered at once.
//!
//! A customer's call to a trunk is inbound and caller; a PBX calling a customer is outbound
//! and callee; an API callback is outbound and caller (the customer is called first, and
//! the bridge calls the agent once they answer).
//!
//! The leg is told the time; it never does I/O. It asks for what it needs with [`WaOut`]s,
//! which the leg's actor carries out: Graph requests, events for the bridge, media updates,
//! and what the call should hear.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::WaEvent;
use crate::call::leg::LegState;
use crate::media::transcode::Codec;
use crate::media::types::Remote;
use crate::meta::graph::CallAction;
use crate::sip::build::MessageBuilder;
use crate::sip::core::{CoreEvent, RequestId, ServerId, SipCommand};
use crate::sip::header::NameAddr;
use crate::sip::msg::{HeaderName, Method, SipMessage};

/// How long placing a call with Meta may take before the customer's time to answer starts.
pub(crate) const CONNECT_ALLOWANCE: Duration = Duration::from_secs(5);

/// Which way the leg crosses Meta.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Way {
    /// The customer called: Meta's id of the call and the switch's answer to Meta's offer.
    Inbound {
        /// Meta's call id.
        wa_call_id: String,
        /// Our answer (the same text goes with `pre_accept` and `accept`).
        answer: String,
    },
    /// The switch calls the customer with its offer.
    Outbound {
        /// The customer's WhatsApp number.
        customer: String,
        /// Our offer, for Graph `connect`.
        offer: String,
        /// How long the customer may take to answer a callback.
        ring_timeout: Duration,
    },
}

impl std::fmt::Debug for Way {
    /// Without the SDP: an SDES answer or offer holds our SRTP key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Way::Inbound { wa_call_id, .. } => f
                .debug_struct("Inbound")
                .field("wa_call_id", wa_call_id)
                .finish_non_exhaustive(),
            Way::Outbound {
                customer,
                ring_timeout,
                ..
            } => f
                .debug_struct("Outbound")
                .field("customer", customer)
                .field("ring_timeout", ring_timeout)
                .finish_non_exhaustive(),
        }
    }
}

/// How the leg meets the rest of its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Face {
    /// Leg A of the call's SIP bridge: it calls the business.
    Caller,
    /// Leg B of the call's SIP bridge: the business calls it.
    Callee,
    /// No other side: the customer's audio is echoed, and the echo answers at once.
    Echo,
}

/// What the leg asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WaOut {
    /// Send this to Meta and tell the leg how it went ([`WhatsAppLeg::graph_done`]) before
    /// giving it anything else: `pre_accept` and `accept`, whose failures end the call.
    Await(CallAction),
    /// Place the call: record `call_dialled` in the audit trail, then send this `connect`;
    /// Meta's answer comes back as [`WaEvent::Connected`].
    Dial(CallAction),
    /// Send this to Meta without waiting (`reject`, `terminate`).
    Send(CallAction),
    /// Give this to the call's SIP bridge, as this leg's SIP.
    Bridge(CoreEvent),
    /// The call's SIP bridge may start calling out.
    Begin,
    /// Meta's SDP answer to our offer, for the WebRTC leg.
    WebRtcAnswer(String),
    /// The business side's media as its SDP says, with the codec chosen for it.
    SipMedia(Remote),
    /// Meta's id of the call is known.
    WaCallId(String),
    /// The leg's state changed, with the far end's cause when it ended (reported to the
    /// call).
    Changed(LegState, Option<String>),
    /// The leg could not do its part before it connected: the call fails with this cause.
    Failed(String),
    /// The call must end, from the switch's side, with this cause.
    EndCall(String),
}

/// Phase of the bridge's INVITE, for a callee leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No INVITE from the bridge yet.
    Idle,
    /// `connect` sent; no answer from the Graph API yet.
    Connecting,
    /// Meta took the call.
    Proceeding,
    /// The customer answered.
    Answered,
    /// Over.
    Done,
}

/// Meta's side of an outbound call, ended exactly once whatever ends first: the switch
/// (maybe before Meta's id of the call is known) or Meta.
#[derive(Debug, Default)]
struct MetaCall {
    /// Meta's call id, once `connect` answered.
    id: Option<String>,
    /// The switch ended the call.
    ended: bool,
    /// Meta's side is over (ended by Meta, or `terminate` sent).
    over: bool,
}

impl MetaCall {
    /// The switch ends the call: `terminate` now if Meta's id is known, else when it comes.
    fn end(&mut self) -> Option<CallAction> {
        self.ended = true;
        if self.over {
            return None;
        }
        let call_id = self.id.clone()?;
        self.over = true;
        Some(CallAction::Terminate { call_id })
    }

    /// `connect` answered with Meta's id: `terminate` at once when the call already ended.
    fn placed(&mut self, id: &str) -> Option<CallAction> {
        self.id = Some(id.to_string());
        if self.ended && !self.over {
            self.over = true;
            return Some(CallAction::Terminate {
                call_id: id.to_string(),
            });
        }
        None
    }
}

/// The leg's SIP toward the bridge when it is the bridge's callee.
#[derive(Debug)]
struct Callee {
    phase: Phase,
    /// The bridge's INVITE.
    invite: Option<SipMessage>,
    /// Our dialog tag.
    tag: String,
    /// Our answer toward the bridge (the PBX's codec, chosen from its offer), and what we
    /// answer the PBX's later offers with (narrowed to that codec).
    answer: Option<crate::call::leg::LocalSdp>,
    /// The codec chosen, its payload type and clock.
    codec: Option<(Codec, u8, u32)>,
    /// The PBX's media as last reported.
    pbx: Option<Remote>,
}

/// One call's WhatsApp leg.
#[derive(Debug)]
pub(crate) struct WhatsAppLeg {
    way: Way,
    face: Face,
    /// The switch's id of the call (Meta echoes it in its webhooks).
    call_id: String,
    state: LegState,
    /// Inbound: `pre_accept` sent.
    pre_accepted: bool,
    /// Inbound: `accept` is due once `pre_accept` succeeds.
    accept_due: bool,
    /// Outbound: Meta's side of the call.
    meta: MetaCall,
    /// Outbound caller: the customer answered (the bridge may call the business).
    customer_answered: bool,
    /// Outbound caller: the customer's time to answer ends.
    deadline: Option<Instant>,
    /// The bridge is ready for us (we may tell it to begin).
    bridge_ready: bool,
    /// Beginning waits for the bridge.
    begin_due: bool,
    /// Leg A's offer, as the bridge made it (answered to the business's re-offers).
    caller_offer: crate::call::leg::LocalSdp,
    callee: Callee,
    /// Numbers requests and responses given to the bridge.
    seq: u64,
}

impl WhatsAppLeg {
    /// A leg crossing Meta `way`, meeting its call as `face`; `call_id` is the switch's id
    /// of the call and `tag` its dialog tag toward the bridge.
    pub(crate) fn new(way: Way, face: Face, call_id: &str, tag: &str) -> WhatsAppLeg {
        WhatsAppLeg {
            way,
            face,
            call_id: call_id.to_string(),
            state: LegState::Offered,
            pre_accepted: false,
            accept_due: false,
            meta: MetaCall::default(),
            customer_answered: false,
            deadline: None,
            bridge_ready: false,
            begin_due: false,
            caller_offer: Default::default(),
            callee: Callee {
                phase: Phase::Idle,
                invite: None,
                tag: tag.to_string(),
                answer: None,
                codec: None,
                pbx: None,
            },
            seq: 0,
        }
    }

    /// The leg's progress.
    pub(crate) fn state(&self) -> LegState {
        self.state
    }

    fn inbound(&self) -> bool {
        matches!(self.way, Way::Inbound { .. })
    }

    /// Starts the leg: an echo answers; a callback's customer is called.
    pub(crate) fn start(&mut self, now: Instant) -> Vec<WaOut> {
        match (&self.way, self.face) {
            (Way::Inbound { .. }, Face::Echo) => {
                // The echo is the business side, and it answers at once.
                self.accept_due = true;
                self.pre_accept().into_iter().collect()
            }
            (Way::Outbound { ring_timeout, .. }, Face::Caller) => {
                // Meta's own ring time normally ends an unanswered call first; this holds
                // if its webhook never comes.
                self.deadline = Some(now + *ring_timeout + CONNECT_ALLOWANCE);
                vec![self.dial()]
            }
            _ => Vec::new(),
        }
    }

    /// The call's SIP bridge is ready for this leg; `offer` is the SDP its leg A offered.
    /// A caller lets it begin once it may (an inbound call at once, a callback once the
    /// customer answered); a callee lets it begin at once (it then sends its INVITE here).
    pub(crate) fn bridge_ready(&mut self, offer: Bytes) -> Vec<WaOut> {
        self.bridge_ready = true;
        self.caller_offer = crate::call::leg::LocalSdp::new(&offer);
        let may = match (&self.way, self.face) {
            (Way::Inbound { .. }, Face::Caller) => self.state != LegState::Ended,
            // A callee the switch already hung up calls nobody.
            (_, Face::Callee) => self.state != LegState::Ended && !self.meta.ended,
            (Way::Outbound { .. }, Face::Caller) => self.begin_due,
            (_, Face::Echo) => false,
        };
        if may {
            self.begin_due = false;
            vec![WaOut::Begin]
        } else {
            Vec::new()
        }
    }

    fn begin(&mut self) -> Option<WaOut> {
        if self.bridge_ready {
            Some(WaOut::Begin)
        } else {
            self.begin_due = true;
            None
        }
    }

    fn dial(&mut self) -> WaOut {
        let (customer, offer) = match &self.way {
            Way::Outbound {
                customer, offer, ..
            } => (customer.clone(), offer.clone()),
            Way::Inbound { .. } => (String::new(), String::new()),
        };
        WaOut::Dial(CallAction::Connect {
            to: customer,
            sdp: offer,
            biz_opaque_callback_data: Some(self.call_id.clone()),
        })
    }

    // ---- inbound: answering Meta ----------------------------------------------------

    /// Sends our answer with `pre_accept`, once.
    fn pre_accept(&mut self) -> Option<WaOut> {
        let Way::Inbound { wa_call_id, answer } = &self.way else {
            return None;
        };
        if self.pre_accepted || self.state == LegState::Ended {
            return None;
        }
        self.pre_accepted = true;
        Some(WaOut::Await(CallAction::PreAccept {
            call_id: wa_call_id.clone(),
            sdp: answer.clone(),
        }))
    }

    /// Accepts the call (the business answered): after the `pre_accept`, which is sent
    /// first if it was not.
    fn accept(&mut self) -> Vec<WaOut> {
        if !matches!(self.state, LegState::Offered | LegState::Ringing) {
            return Vec::new();
        }
        self.accept_due = true;
        // `accept` follows the `pre_accept`'s success (the driver reports each awaited
        // request before it gives the leg anything else).
        match self.pre_accept() {
            Some(out) => vec![out],
            None => self.send_accept(),
        }
    }

    /// Answers an inbound call for the switch itself (an IVR): `pre_accept`, then
    /// `accept`. An outbound leg is answered by the customer, not by this.
    pub(crate) fn answer(&mut self) -> Vec<WaOut> {
        if self.inbound() {
            self.accept()
        } else {
            Vec::new()
        }
    }

    fn send_accept(&mut self) -> Vec<WaOut> {
        let Way::Inbound { wa_call_id, answer } = &self.way else {
            return Vec::new();
        };
        if !self.accept_due || !matches!(self.state, LegState::Offered | LegState::Ringing) {
            return Vec::new();
        }
        self.accept_due = false;
        vec![WaOut::Await(CallAction::Accept {
            call_id: wa_call_id.clone(),
            sdp: answer.clone(),
            biz_opaque_callback_data: Some(self.call_id.clone()),
        })]
    }

    /// How a [`WaOut::Await`]ed request went.
    pub(crate) fn graph_done(&mut self, action: &CallAction, ok: bool) -> Vec<WaOut> {
        match (action, ok) {
            (CallAction::PreAccept { .. }, true) => self.send_accept(),
            (CallAction::PreAccept { .. }, false) => self.fail("meta_pre_accept_failed"),
            (CallAction::Accept { .. }, true) => {
                if !matches!(self.state, LegState::Offered | LegState::Ringing) {
                    return Vec::new();
                }
                self.state = LegState::Answered;
                vec![WaOut::Changed(LegState::Answered, None)]
            }
            (CallAction::Accept { .. }, false) => {
                // Meta may have taken it after all: terminate rather than reject.
                self.state = LegState::Answered;
                self.fail("meta_accept_failed")
            }
            _ => Vec::new(),
        }
    }

    /// Ends the leg and the call after a failure of ours.
    fn fail(&mut self, cause: &str) -> Vec<WaOut> {
        let mut out = self.hangup();
        out.push(WaOut::Failed(cause.to_string()));
        out
    }

    // ---- the call ending it ---------------------------------------------------------

    /// Ends the leg from the switch's side. An inbound call is declined before it was
    /// accepted and terminated after; an outbound one is terminated once Meta's id is
    /// known. A callee's SIP toward the bridge goes on answering (the bridge's CANCEL or
    /// BYE still gets its response).
    pub(crate) fn hangup(&mut self) -> Vec<WaOut> {
        let action = match &self.way {
            Way::Inbound { wa_call_id, .. } => {
                let call_id = wa_call_id.clone();
                match self.state {
                    LegState::Ended => None,
                    LegState::Answered => Some(CallAction::Terminate { call_id }),
                    LegState::Offered | LegState::Ringing => Some(CallAction::Reject { call_id }),
                }
            }
            Way::Outbound { .. } => self.meta.end(),
        };
        if self.face != Face::Callee {
            self.state = LegState::Ended;
        }
        self.deadline = None;
        action.map(WaOut::Send).into_iter().collect()
    }

    /// The earliest deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time has reached [`poll_timeout`](Self::poll_timeout): a callback's customer who did
    /// not answer in time is given up on.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Vec<WaOut> {
        if self.deadline.is_none_or(|at| now < at) {
            return Vec::new();
        }
        self.deadline = None;
        if self.customer_answered || self.state == LegState::Ended {
            return Vec::new();
        }
        tracing::info!("the customer did not answer in time");
        let mut out = self.hangup();
        out.push(WaOut::Changed(LegState::Ended, Some("no_answer".into())));
        out
    }

    // ---- Meta's webhooks -------------------------------------------------------------

    /// What Meta said about the call.
    pub(crate) fn on_meta(&mut self, event: WaEvent) -> Vec<WaOut> {
        if matches!(
            event,
            WaEvent::Terminated { .. } | WaEvent::Rejected | WaEvent::Connected(Err(_))
        ) {
            // Nothing left on Meta's side to end.
            self.meta.over = true;
        }
        if self.inbound() {
            return match event {
                // A customer's call: Meta ending it ends the leg.
                WaEvent::Terminated { cause } if self.state != LegState::Ended => {
                    self.state = LegState::Ended;
                    vec![WaOut::Changed(LegState::Ended, Some(cause))]
                }
                _ => Vec::new(),
            };
        }
        match self.face {
            Face::Callee => self.callee_event(event),
            _ => self.caller_event(event),
        }
    }

    /// Meta's news of a callback's customer, who is called first.
    fn caller_event(&mut self, event: WaEvent) -> Vec<WaOut> {
        let ended = self.state == LegState::Ended;
        match event {
            WaEvent::Connected(Ok(id)) => {
                tracing::info!(wa_call_id = %id, "Meta took the call");
                let mut out = vec![WaOut::WaCallId(id.clone())];
                out.extend(self.meta.placed(&id).map(WaOut::Send));
                out
            }
            WaEvent::Connected(Err((code, why))) => {
                tracing::warn!(code, %why, "Meta refused the call");
                if ended {
                    return Vec::new();
                }
                self.state = LegState::Ended;
                self.deadline = None;
                vec![WaOut::EndCall(format!("whatsapp_refused_{code}"))]
            }
            WaEvent::Answer(sdp) => vec![WaOut::WebRtcAnswer(sdp)],
            WaEvent::Ringing if !self.customer_answered && !ended => {
                self.state = LegState::Ringing;
                vec![WaOut::Changed(LegState::Ringing, None)]
            }
            WaEvent::Accepted if !self.customer_answered && !ended => {
                self.customer_answered = true;
                self.deadline = None;
                self.state = LegState::Answered;
                tracing::info!("the customer answered; calling the business");
                let mut out = vec![WaOut::Changed(LegState::Answered, None)];
                out.extend(self.begin());
                out
            }
            WaEvent::Rejected if !self.customer_answered && !ended => {
                self.state = LegState::Ended;
                self.deadline = None;
                vec![WaOut::Changed(LegState::Ended, Some("declined".into()))]
            }
            WaEvent::Terminated { cause } if !ended => {
                self.state = LegState::Ended;
                self.deadline = None;
                // Meta's failures keep their cause (the permission is given back).
                let cause = if self.customer_answered || cause.starts_with("meta_failed") {
                    cause
                } else {
                    "no_answer".into()
                };
                vec![WaOut::Changed(LegState::Ended, Some(cause))]
            }
            _ => Vec::new(),
        }
    }

    // ---- the bridge's SIP --------------------------------------------------------------

    /// A SIP command the call's bridge sent this leg.
    pub(crate) fn on_sip(&mut self, command: SipCommand) -> Vec<WaOut> {
        match self.face {
            Face::Callee => self.callee_command(command),
            Face::Caller => self.caller_command(command),
            Face::Echo => Vec::new(),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// What the bridge sends its caller: responses to "our" INVITE (the business
    /// ringing, then answering: an inbound call is pre-accepted, then accepted, and the
    /// answer acknowledged at once), and the business's requests, answered here (a later
    /// offer gets leg A's SDP narrowed to it: the WhatsApp side's media never changes).
    fn caller_command(&mut self, command: SipCommand) -> Vec<WaOut> {
        let mut out = Vec::new();
        if let SipCommand::Respond { response, .. } = &command {
            let invite = response
                .header(&HeaderName::CSeq)
                .is_some_and(|h| h.value.ends_with(b"INVITE"));
            let code = response.status().unwrap_or(0);
            if invite && (101..200).contains(&code) {
                out.extend(self.pre_accept());
            }
        }
        let seq = self.next_seq();
        let answered = matches!(&command, SipCommand::Respond { response, .. } if response.status().is_some_and(|c| (200..300).contains(&c)));
        if let Some(event) =
            crate::call::leg::answer_as_caller(&command, &mut self.caller_offer, seq)
        {
            out.push(WaOut::Bridge(event));
            if answered && self.inbound() {
                out.extend(self.accept());
            }
        }
        out
    }

    fn respond(
        &mut self,
        request: &SipMessage,
        code: u16,
        reason: &str,
        sdp: Option<Bytes>,
    ) -> WaOut {
        let mut b = MessageBuilder::response_to(request, code, reason, Some(&self.callee.tag));
        if (101..300).contains(&code) {
            b = b.header(
                HeaderName::Contact,
                "<sip:whatsapp@whatsapp.invalid>".to_string(),
            );
        }
        if let Some(sdp) = sdp {
            b = b.body("application/sdp", sdp);
        }
        let id = RequestId::detached(self.next_seq());
        WaOut::Bridge(CoreEvent::Response(id, b.build()))
    }

    /// A response to the bridge's INVITE.
    fn invite_response(&mut self, code: u16, reason: &str, sdp: Option<Bytes>) -> Vec<WaOut> {
        match self.callee.invite.clone() {
            Some(invite) => vec![self.respond(&invite, code, reason, sdp)],
            None => Vec::new(),
        }
    }

    /// What the bridge sends its callee.
    fn callee_command(&mut self, command: SipCommand) -> Vec<WaOut> {
        match command {
            SipCommand::Request { request, .. } => self.callee_request(request),
            SipCommand::Cancel { .. } => {
                let mut out = Vec::new();
                if matches!(self.callee.phase, Phase::Connecting | Phase::Proceeding) {
                    out.extend(self.invite_response(487, "Request Terminated", None));
                }
                out.extend(self.callee_end());
                out
            }
            SipCommand::Abandon { .. } => self.callee_end(),
            SipCommand::Ack { .. } | SipCommand::Respond { .. } => Vec::new(),
        }
    }

    fn callee_request(&mut self, request: SipMessage) -> Vec<WaOut> {
        let method = request.method().cloned();
        let in_dialog = request
            .header(&HeaderName::To)
            .and_then(|h| NameAddr::parse(&h.value).ok())
            .is_some_and(|a| a.tag().is_some());
        match method {
            Some(Method::Invite) if !in_dialog => {
                if self.callee.phase != Phase::Idle {
                    return Vec::new();
                }
                if self.meta.ended {
                    // The call ended before the bridge called us: nobody is dialled.
                    self.callee.phase = Phase::Done;
                    self.state = LegState::Ended;
                    return vec![self.respond(&request, 480, "Temporarily Unavailable", None)];
                }
                self.callee.phase = Phase::Connecting;
                self.callee.invite = Some(request);
                vec![self.dial()]
            }
            Some(Method::Bye) => {
                let mut out = vec![self.respond(&request, 200, "OK", None)];
                out.extend(self.callee_end());
                out
            }
            // A re-INVITE or UPDATE from the PBX (hold, a new address: the bridge reports
            // its media): the WhatsApp side keeps its media; our answer keeps its codec, in
            // the direction the offer asks, or is 488 when the offer dropped that codec.
            Some(Method::Invite | Method::Update) if !request.body.is_empty() => {
                let Some(sdp) = self.callee.answer.as_mut() else {
                    // No answer of ours yet (an offer in the early dialog).
                    return vec![self.respond(&request, 491, "Request Pending", None)];
                };
                match sdp.answer(&request.body) {
                    Ok(answer) => vec![self.respond(&request, 200, "OK", Some(answer))],
                    Err(why) => {
                        tracing::info!(reason = %why, "the PBX's later offer refused");
                        vec![self.respond(&request, 488, "Not Acceptable Here", None)]
                    }
                }
            }
            // An offerless re-INVITE: our SDP goes in the 200 as the offer.
            Some(Method::Invite) => {
                let sdp = self.callee.answer.as_mut().and_then(|s| s.offer());
                vec![self.respond(&request, 200, "OK", sdp)]
            }
            _ => vec![self.respond(&request, 200, "OK", None)],
        }
    }

    /// The bridge is done with its callee: Meta's side is ended (once Meta's id is known).
    fn callee_end(&mut self) -> Vec<WaOut> {
        let was = self.callee.phase;
        self.callee.phase = Phase::Done;
        self.state = LegState::Ended;
        match was {
            Phase::Done | Phase::Idle => Vec::new(),
            _ => self.meta.end().map(WaOut::Send).into_iter().collect(),
        }
    }

    /// Meta's news of a customer the bridge calls, as SIP toward the bridge.
    fn callee_event(&mut self, event: WaEvent) -> Vec<WaOut> {
        match event {
            WaEvent::Connected(Ok(id)) => {
                tracing::info!(wa_call_id = %id, "Meta took the call");
                let mut out = vec![WaOut::WaCallId(id.clone())];
                if let Some(terminate) = self.meta.placed(&id) {
                    // The call ended while Meta placed it: the bridge, waiting to cancel,
                    // hears that the INVITE is over.
                    out.push(WaOut::Send(terminate));
                    if self.callee.phase == Phase::Connecting {
                        self.callee.phase = Phase::Done;
                        self.state = LegState::Ended;
                        out.extend(self.invite_response(487, "Request Terminated", None));
                    }
                    return out;
                }
                if self.callee.phase == Phase::Connecting {
                    self.callee.phase = Phase::Proceeding;
                    out.extend(self.invite_response(100, "Trying", None));
                }
                out
            }
            WaEvent::Connected(Err((code, why))) => {
                if self.callee.phase != Phase::Connecting {
                    return Vec::new();
                }
                self.callee.phase = Phase::Done;
                self.state = LegState::Ended;
                self.invite_response(code, &why, None)
            }
            WaEvent::Answer(sdp) => match self.callee.phase {
                Phase::Proceeding | Phase::Answered => vec![WaOut::WebRtcAnswer(sdp)],
                _ => Vec::new(),
            },
            WaEvent::Ringing => match self.callee.phase {
                Phase::Proceeding => {
                    self.state = LegState::Ringing;
                    self.invite_response(180, "Ringing", None)
                }
                _ => Vec::new(),
            },
            WaEvent::Accepted => {
                if self.callee.phase != Phase::Proceeding {
                    return Vec::new();
                }
                self.callee.phase = Phase::Answered;
                let offer = self
                    .callee
                    .invite
                    .as_ref()
                    .map(|i| i.body.clone())
                    .unwrap_or_default();
                let mut out = Vec::new();
                let Some(answer) = self.answer_to(&offer) else {
                    // The PBX offered nothing the switch speaks with Opus.
                    self.callee.phase = Phase::Done;
                    self.state = LegState::Ended;
                    out.extend(self.invite_response(488, "Not Acceptable Here", None));
                    out.extend(self.meta.end().map(WaOut::Send));
                    return out;
                };
                self.callee.answer = Some(crate::call::leg::LocalSdp::new(&answer));
                if let Some(remote) = self.callee.pbx {
                    out.extend(self.sip_media(remote));
                }
                tracing::info!("the customer answered");
                self.state = LegState::Answered;
                out.extend(self.invite_response(200, "OK", Some(answer)));
                out
            }
            WaEvent::Rejected => {
                if self.callee.phase != Phase::Proceeding {
                    return Vec::new();
                }
                self.callee.phase = Phase::Done;
                self.state = LegState::Ended;
                self.invite_response(603, "Decline", None)
            }
            WaEvent::Terminated { cause } => match self.callee.phase {
                // Meta failed the call (not the customer's doing): the PBX hears a
                // network failure, and the permission is given back.
                Phase::Proceeding | Phase::Connecting if cause.starts_with("meta_failed") => {
                    self.callee.phase = Phase::Done;
                    self.state = LegState::Ended;
                    let phrase = format!("Service Unavailable - {}", safe_phrase(&cause));
                    self.invite_response(503, &phrase, None)
                }
                Phase::Proceeding | Phase::Connecting => {
                    self.callee.phase = Phase::Done;
                    self.state = LegState::Ended;
                    let phrase = format!("Temporarily Unavailable - {}", safe_phrase(&cause));
                    self.invite_response(480, &phrase, None)
                }
                Phase::Answered => {
                    self.callee.phase = Phase::Done;
                    self.state = LegState::Ended;
                    self.bye().into_iter().collect()
                }
                Phase::Idle | Phase::Done => Vec::new(),
            },
        }
    }

    /// The customer hung up: a BYE from leg B inside the bridge's dialog.
    fn bye(&mut self) -> Option<WaOut> {
        let invite = self.callee.invite.as_ref()?;
        let from = invite.header(&HeaderName::From)?.value.clone();
        let to = invite.header(&HeaderName::To)?.value.clone();
        let call_id = invite.header(&HeaderName::CallId)?.value.clone();
        let contact = invite
            .header(&HeaderName::Contact)
            .and_then(|h| NameAddr::parse(&h.value).ok())
            .map_or_else(|| "sip:waswitch@whatsapp.invalid".to_string(), |a| a.uri);
        let tag = self.callee.tag.clone();
        let n = self.next_seq();
        let request = MessageBuilder::request(Method::Bye, &contact)
            .header(
                HeaderName::Via,
                format!("SIP/2.0/TLS whatsapp.invalid;branch=z9hG4bKwa{n:x}"),
            )
            .header(HeaderName::MaxForwards, "70")
            .header(
                HeaderName::From,
                format!("{};tag={tag}", String::from_utf8_lossy(&to)),
            )
            .header(HeaderName::To, from)
            .header(HeaderName::CallId, call_id)
            .header(HeaderName::CSeq, "1 BYE")
            .build();
        Some(WaOut::Bridge(CoreEvent::Request {
            server: ServerId::detached(n),
            request,
            from: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
        }))
    }

    /// The business side's media as the bridge found it in the PBX's SDP (it reports it
    /// from every offer it relays); once the codec is chosen it goes to the media with it.
    pub(crate) fn sip_media(&mut self, mut remote: Remote) -> Vec<WaOut> {
        self.callee.pbx = Some(remote);
        let Some((codec, pt, clock)) = self.callee.codec else {
            return Vec::new();
        };
        remote.codec = Some(codec);
        remote.codec_pt = Some(pt);
        remote.clock = clock;
        vec![WaOut::SipMedia(remote)]
    }

    /// Our answer to the PBX's offer: its first codec the switch speaks (Opus, PCMU,
    /// PCMA) and its telephone-events; the address is the anchor's (the bridge writes
    /// it).
    fn answer_to(&mut self, offer: &[u8]) -> Option<Bytes> {
        let audio = crate::sdp::Sdp::parse(offer).ok()?.audio().ok()??;
        let format = audio
            .formats
            .iter()
            .find(|f| Codec::from_name(&f.name).is_some())?;
        let codec = Codec::from_name(&format.name)?;
        let mut sdp = format!(
            "v=0\r\no=waswitch {n} 1 IN IP4 0.0.0.0\r\ns=WhatsApp call\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n",
            n = self.seq + 1
        );
        let te = audio.telephone_event_format().cloned();
        let mut pts = format.pt.to_string();
        if let Some(te) = &te {
            pts.push_str(&format!(" {}", te.pt));
        }
        sdp.push_str(&format!("m=audio 9 RTP/AVP {pts}\r\n"));
        match codec {
            Codec::Opus => sdp.push_str(&format!(
                "a=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} useinbandfec=1\r\n",
                pt = format.pt
            )),
            c => sdp.push_str(&format!("a=rtpmap:{} {}/8000\r\n", format.pt, c.name())),
        }
        if let Some(te) = &te {
            sdp.push_str(&format!(
                "a=rtpmap:{pt} telephone-event/{clock}\r\na=fmtp:{pt} 0-15\r\n",
                pt = te.pt,
                clock = te.clock
            ));
        }
        sdp.push_str("a=ptime:20\r\na=sendrecv\r\n");
        self.callee.codec = Some((codec, format.pt, format.clock));
        Some(Bytes::from(sdp))
    }
}

/// Text from elsewhere (Meta's error messages, webhook causes) made safe for a SIP reason
/// phrase: printable ASCII without quotes, at most 80 characters.
pub(crate) fn safe_phrase(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| !matches!(c, '"' | '\\'))
        .take(80)
        .collect()
}

#[cfg(test)]
mod tests;
