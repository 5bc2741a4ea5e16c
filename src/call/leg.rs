//! Signalling legs: what every leg of a call speaks, and the plain leg.
//!
//! [`LegState`] is the progress of one leg, and [`LegMsg`] what a call's supervisor (and,
//! for a leg of a SIP bridge, the bridge) says to a leg: every leg answers it, whatever its
//! protocol. A leg reports each change of its state to its supervisor, which decides what
//! the call makes of it.
//!
//! [`LegActor`] is the leg without a protocol, for calls signalled from outside
//! ([`CallPlan::Signalled`](super::plan::CallPlan::Signalled)): far-end events arrive as
//! [`LegSignal`]s, and the supervisor couples its two legs (the called leg's alerting and
//! answer are passed to the calling leg). The WhatsApp leg is
//! `call::whatsapp::actor::WhatsAppLegActor`.

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;

use super::sip::bridge::BridgeMsg;
use super::supervisor::CallMsg;
use super::whatsapp::WaEvent;
#[cfg(any(test, feature = "fault-injection"))]
use super::Fault;
use super::LegRole;
use crate::media::types::Remote;
use crate::sip::build::MessageBuilder;
use crate::sip::core::{CoreEvent, RequestId, SipCommand};
use crate::sip::msg::{HeaderName, Method, SipMessage};

/// The session description of a side of a bridge that is not a SIP peer (the WhatsApp
/// leg, as caller or callee, or the switch itself placing a call): the SDP it gave first
/// (its offer, or its answer), and what it answers the SIP side's later offers (hold,
/// resume, a codec change) with. Each answer is that SDP narrowed to the offer
/// (`Sdp::answer`: one codec, the direction mirrored); the origin version moves on by one
/// whenever what is said changes, and stays when it does not (RFC 3264 §8).
#[derive(Debug, Clone, Default)]
pub(crate) struct LocalSdp {
    /// What the side said first; later answers are cut from it.
    ours: Option<crate::sdp::Sdp>,
    /// The description said last (its version the current one).
    last: Option<crate::sdp::Sdp>,
}

impl LocalSdp {
    /// The side's first SDP.
    pub(crate) fn new(offer: &Bytes) -> LocalSdp {
        let ours = crate::sdp::Sdp::parse(offer).ok();
        LocalSdp {
            last: ours.clone(),
            ours,
        }
    }

    /// Says `sdp` next: with the version after the last one when it says something new.
    fn say(&mut self, mut sdp: crate::sdp::Sdp) -> Bytes {
        if let Some(last) = &self.last {
            let version = last.version().unwrap_or(0);
            if sdp.same_content(last) {
                sdp.set_version(version);
            } else {
                sdp.set_version(version.wrapping_add(1));
            }
        }
        let body = Bytes::from(sdp.to_bytes());
        self.last = Some(sdp);
        body
    }

    /// The answer to a later offer, or why none can be given (the caller answers 488).
    pub(crate) fn answer(&mut self, offer: &[u8]) -> Result<Bytes, crate::sdp::NotAcceptable> {
        let ours = self
            .ours
            .as_ref()
            .ok_or(crate::sdp::NotAcceptable::NoAudio)?;
        let answer = ours.answer(&crate::sdp::Sdp::parse(offer)?)?;
        Ok(self.say(answer))
    }

    /// An offer of our own, for a request that made none: everything we can do.
    pub(crate) fn offer(&mut self) -> Option<Bytes> {
        let ours = self.ours.clone()?;
        Some(self.say(ours))
    }
}

/// What a caller that is not a SIP peer answers a command of its bridge toward leg A: the
/// ACK of a 2xx to its INVITE, and the called side's requests: 200 (an INVITE or UPDATE
/// offering SDP gets `sdp`'s answer narrowed to it, or 488 when none can be given; an
/// INVITE without an offer gets our offer, answered in the ACK). `seq` numbers the answer.
/// Nothing else needs an answer.
pub(crate) fn answer_as_caller(
    command: &SipCommand,
    sdp: &mut LocalSdp,
    seq: u64,
) -> Option<CoreEvent> {
    let request = match command {
        SipCommand::Respond { response, .. } => {
            let invite = response
                .header(&HeaderName::CSeq)
                .is_some_and(|h| h.value.ends_with(b"INVITE"));
            let code = response.status().unwrap_or(0);
            return (invite && (200..300).contains(&code)).then(|| ack_for(response));
        }
        SipCommand::Request { request, .. } => request,
        _ => return None,
    };
    let method = request.method().cloned();
    let offers = matches!(method, Some(Method::Invite | Method::Update));
    let response = if offers && !request.body.is_empty() {
        match sdp.answer(&request.body) {
            Ok(answer) => MessageBuilder::response_to(request, 200, "OK", None)
                .body("application/sdp", answer),
            Err(why) => {
                tracing::info!(reason = %why, "a later offer refused");
                MessageBuilder::response_to(request, 488, "Not Acceptable Here", None).header(
                    HeaderName::Warning,
                    format!(
                        "305 waswitch \"{}\"",
                        super::whatsapp::leg::safe_phrase(&why.to_string())
                    ),
                )
            }
        }
    } else if method == Some(Method::Invite) {
        let response = MessageBuilder::response_to(request, 200, "OK", None);
        match sdp.offer() {
            Some(offer) => response.body("application/sdp", offer),
            None => response,
        }
    } else {
        MessageBuilder::response_to(request, 200, "OK", None)
    };
    Some(CoreEvent::Response(
        RequestId::detached(seq),
        response.build(),
    ))
}

/// The ACK for a 2xx the bridge sent its caller.
fn ack_for(response: &SipMessage) -> CoreEvent {
    let call_id = response
        .header(&HeaderName::CallId)
        .map(|h| h.value.clone())
        .unwrap_or_default();
    let seq = response
        .header(&HeaderName::CSeq)
        .and_then(|h| {
            std::str::from_utf8(&h.value)
                .ok()?
                .split(' ')
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "1".into());
    let ack = MessageBuilder::request(Method::Ack, "sip:waswitch@whatsapp.invalid")
        .header(HeaderName::CallId, call_id)
        .header(HeaderName::CSeq, format!("{seq} ACK"))
        .build();
    CoreEvent::Ack {
        request: ack,
        from: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
    }
}

/// Progress of one signalling leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LegState {
    /// Created; the far end has been offered the call (or offered it to us).
    Offered,
    /// The far end is alerting (SIP 18x, WhatsApp ringing).
    Ringing,
    /// Answered (SIP 200 OK, WhatsApp accept).
    Answered,
    /// Over, for any reason.
    Ended,
}

/// An event from the far end of a leg, as decoded by its protocol driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegSignal {
    /// The far end is alerting.
    Ringing,
    /// The far end answered.
    Answered,
    /// The far end hung up, rejected or cancelled, with its cause.
    HungUp {
        /// End cause, e.g. `normal_clearing`, `busy`, `declined`, `cancelled`.
        cause: String,
    },
}

impl LegState {
    /// The state after `signal`, or `None` when the signal changes nothing. Late and repeated
    /// signals (a 180 after the 200, a retransmitted 200, a BYE crossing ours) are absorbed:
    /// networks reorder and duplicate, and none of that may end a call.
    pub fn on_signal(self, signal: &LegSignal) -> Option<LegState> {
        use LegState::*;
        match (self, signal) {
            (Ended, _) => None,
            (_, LegSignal::HungUp { .. }) => Some(Ended),
            (Offered, LegSignal::Ringing) => Some(Ringing),
            (Offered | Ringing, LegSignal::Answered) => Some(Answered),
            (Ringing, LegSignal::Ringing) | (Answered, _) => None,
        }
    }
}

/// One signalling leg of a call. Spawned and supervised by the call supervisor.
pub struct LegActor;

/// What a leg starts with.
pub struct LegArgs {
    /// Which side of the call.
    pub role: LegRole,
    /// The leg's protocol id (Meta's call id, or the SIP Call-ID), when known.
    pub leg_id: Option<String>,
    /// The call supervisor to report to.
    pub call: ActorRef<CallMsg>,
    /// The call's span; the leg's span is its child.
    pub span: tracing::Span,
}

/// Messages of [`LegActor`].
#[derive(Debug)]
pub enum LegMsg {
    /// An event from the far end.
    Remote(LegSignal),
    /// The other side is alerting: a WhatsApp leg pre-accepts, so its media comes up while
    /// the business side rings.
    Alert,
    /// The other side answered: answer this leg (WhatsApp `accept`, SIP 200 OK).
    Answer,
    /// End this leg from our side (BYE, CANCEL, `terminate`) with a cause; replies when done.
    Hangup {
        /// End cause sent to the far end.
        cause: String,
        /// Done.
        reply: RpcReplyPort<()>,
    },
    /// Current state.
    State(RpcReplyPort<LegState>),
    /// Something Meta said about the call (for a WhatsApp leg).
    WhatsApp(WaEvent),
    /// From the call's SIP bridge, to the leg that is one of its legs.
    Bridge(FromBridge),
    /// A SIP event of the dialog with Meta (a WhatsApp leg Meta carries over SIP).
    MetaSip(CoreEvent),
    /// A deadline of the leg may have come, or a task of its own finished.
    Wake,
    /// Makes the leg fail (supervision tests).
    #[cfg(any(test, feature = "fault-injection"))]
    Fault(Fault),
}

/// What a call's SIP bridge says to the leg actor that is one of its legs.
#[derive(Debug)]
pub enum FromBridge {
    /// The bridge is running: it takes this leg's SIP events, and `offer` is the SDP its
    /// leg A offered.
    Ready {
        /// The bridge actor.
        bridge: ActorRef<BridgeMsg>,
        /// Leg A's SDP offer, as the bridge made it.
        offer: Bytes,
    },
    /// A SIP command of the bridge toward this leg.
    Sip(SipCommand),
    /// The other leg's media, as its SDP says.
    Media(Remote),
}

/// State of a running leg.
pub struct Leg {
    role: LegRole,
    leg_id: Option<String>,
    state: LegState,
    call: ActorRef<CallMsg>,
    span: tracing::Span,
}

impl Actor for LegActor {
    type Msg = LegMsg;
    type State = Leg;
    type Arguments = LegArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: LegArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let span = tracing::debug_span!(parent: &args.span, "leg", role = args.role.as_str());
        Ok(Leg {
            role: args.role,
            leg_id: args.leg_id,
            state: LegState::Offered,
            call: args.call,
            span,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        leg: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = leg.span.clone();
        async move {
            match msg {
                LegMsg::Remote(signal) => {
                    if let Some(next) = leg.state.on_signal(&signal) {
                        tracing::debug!(from = ?leg.state, to = ?next, ?signal, "leg changed");
                        leg.state = next;
                        let cause = match signal {
                            LegSignal::HungUp { cause } => Some(cause),
                            _ => None,
                        };
                        leg.call.send_message(CallMsg::LegChanged {
                            role: leg.role,
                            state: next,
                            cause,
                        })?;
                    }
                }
                LegMsg::Alert => {}
                LegMsg::Answer => {
                    if matches!(leg.state, LegState::Offered | LegState::Ringing) {
                        leg.state = LegState::Answered;
                    }
                }
                LegMsg::Hangup { cause, reply } => {
                    if leg.state != LegState::Ended {
                        tracing::debug!(%cause, leg_id = ?leg.leg_id, "hanging up leg");
                        leg.state = LegState::Ended;
                    }
                    let _ = reply.send(());
                }
                LegMsg::State(reply) => {
                    let _ = reply.send(leg.state);
                }
                LegMsg::WhatsApp(WaEvent::Terminated { cause }) => {
                    if let Some(next) = leg.state.on_signal(&LegSignal::HungUp {
                        cause: cause.clone(),
                    }) {
                        leg.state = next;
                        leg.call.send_message(CallMsg::LegChanged {
                            role: leg.role,
                            state: next,
                            cause: Some(cause),
                        })?;
                    }
                }
                LegMsg::WhatsApp(_) | LegMsg::Bridge(_) | LegMsg::MetaSip(_) | LegMsg::Wake => {}
                #[cfg(any(test, feature = "fault-injection"))]
                LegMsg::Fault(fault) => return fault.trigger(leg.role.as_str()),
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reordered_and_repeated_signals_are_absorbed() {
        use LegState::*;
        let hung_up = LegSignal::HungUp {
            cause: "normal_clearing".into(),
        };
        assert_eq!(Offered.on_signal(&LegSignal::Ringing), Some(Ringing));
        assert_eq!(Ringing.on_signal(&LegSignal::Ringing), None);
        assert_eq!(Ringing.on_signal(&LegSignal::Answered), Some(Answered));
        assert_eq!(Offered.on_signal(&LegSignal::Answered), Some(Answered));
        // A 180 overtaken by its 200, and a retransmitted 200.
        assert_eq!(Answered.on_signal(&LegSignal::Ringing), None);
        assert_eq!(Answered.on_signal(&LegSignal::Answered), None);
        assert_eq!(Answered.on_signal(&hung_up), Some(Ended));
        assert_eq!(Offered.on_signal(&hung_up), Some(Ended));
        // Anything after the end (a BYE crossing ours).
        assert_eq!(Ended.on_signal(&hung_up), None);
        assert_eq!(Ended.on_signal(&LegSignal::Answered), None);
    }

    fn request(method: &str, body: &str) -> SipCommand {
        let mut b = MessageBuilder::request(
            Method::from_token(Bytes::copy_from_slice(method.as_bytes())),
            "sip:whatsapp@whatsapp.invalid",
        )
        .header(HeaderName::CallId, "c1")
        .header(HeaderName::CSeq, format!("2 {method}"));
        if !body.is_empty() {
            b = b.body("application/sdp", Bytes::from(body.to_string()));
        }
        SipCommand::Request {
            request: b.build(),
            to: std::net::SocketAddr::from(([127, 0, 0, 1], 5060)),
        }
    }

    fn response(event: Option<CoreEvent>) -> SipMessage {
        match event {
            Some(CoreEvent::Response(_, r)) => r,
            other => panic!("a response: {other:?}"),
        }
    }

    const OURS: &str = "v=0\r\no=waswitch 7 1 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\n\
        t=0 0\r\nm=audio 9 RTP/AVP 111 0 8 101\r\na=rtpmap:111 opus/48000/2\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

    fn pbx(direction: &str, version: u32, pts: &str) -> String {
        format!(
            "v=0\r\no=pbx 1 {version} IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\n\
             t=0 0\r\nm=audio 4000 RTP/AVP {pts}\r\na=rtpmap:101 telephone-event/8000\r\n\
             a={direction}\r\n"
        )
    }

    fn origin(r: &SipMessage) -> String {
        String::from_utf8_lossy(&r.body)
            .lines()
            .find(|l| l.starts_with("o="))
            .unwrap_or_default()
            .to_string()
    }

    /// Hold, hold again, resume, a codec we never offered, an offer of ours: each answered
    /// as RFC 3264 asks, the version moving only when what we say changes.
    #[test]
    fn later_offers_get_narrowed_answers_with_versions_that_move_with_them() {
        let mut sdp = LocalSdp::new(&Bytes::from_static(OURS.as_bytes()));
        let held = response(answer_as_caller(
            &request("INVITE", &pbx("sendonly", 2, "0 101")),
            &mut sdp,
            1,
        ));
        assert_eq!(held.status(), Some(200));
        let body = String::from_utf8_lossy(&held.body).into_owned();
        assert!(body.contains("m=audio 9 RTP/AVP 0 101\r\n"), "{body}");
        assert!(body.contains("a=recvonly\r\n"), "{body}");
        assert_eq!(origin(&held), "o=waswitch 7 2 IN IP4 0.0.0.0");
        let again = response(answer_as_caller(
            &request("INVITE", &pbx("sendonly", 2, "0 101")),
            &mut sdp,
            2,
        ));
        assert_eq!(
            origin(&again),
            "o=waswitch 7 2 IN IP4 0.0.0.0",
            "nothing new"
        );
        let resumed = response(answer_as_caller(
            &request("UPDATE", &pbx("sendrecv", 3, "8 0 101")),
            &mut sdp,
            3,
        ));
        let body = String::from_utf8_lossy(&resumed.body).into_owned();
        assert!(body.contains("m=audio 9 RTP/AVP 8 101\r\n"), "{body}");
        assert!(body.contains("a=sendrecv\r\n"), "{body}");
        assert_eq!(origin(&resumed), "o=waswitch 7 3 IN IP4 0.0.0.0");
        let g729 = response(answer_as_caller(
            &request("INVITE", &pbx("sendrecv", 4, "18")),
            &mut sdp,
            4,
        ));
        assert_eq!(g729.status(), Some(488));
        assert!(g729.body.is_empty());
        let offerless = response(answer_as_caller(&request("INVITE", ""), &mut sdp, 5));
        assert_eq!(offerless.status(), Some(200));
        let body = String::from_utf8_lossy(&offerless.body).into_owned();
        assert!(body.contains("m=audio 9 RTP/AVP 111 0 8 101\r\n"), "{body}");
        assert_eq!(origin(&offerless), "o=waswitch 7 4 IN IP4 0.0.0.0");
        let info = response(answer_as_caller(&request("INFO", ""), &mut sdp, 6));
        assert_eq!(info.status(), Some(200));
        assert!(info.body.is_empty());
    }
}
