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

/// What a caller that is not a SIP peer (the WhatsApp leg, or the switch itself placing a
/// call) answers a command of its bridge toward leg A: the ACK of a 2xx to its INVITE, and
/// 200 to the called side's requests (with `offer`, leg A's SDP, when they make an offer:
/// leg A's media never changes). `seq` numbers the answer. Nothing else needs an answer.
pub(crate) fn answer_as_caller(command: &SipCommand, offer: &Bytes, seq: u64) -> Option<CoreEvent> {
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
    let mut response = MessageBuilder::response_to(request, 200, "OK", None);
    if matches!(method, Some(Method::Invite | Method::Update)) && !request.body.is_empty() {
        response = response.body("application/sdp", offer.clone());
    }
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
}
