//! The WhatsApp leg of a user-initiated call, signalled through Meta's Graph API.
//!
//! The leg answers the WebRTC offer of Meta's `connect` webhook in a media shard as it
//! starts (before the business side is called, so the trunk is offered the call's media
//! port), sends the answer with `pre_accept` when the business side alerts (so ICE and
//! DTLS come up while it rings) and with `accept` when it answers. Meta's `terminate` webhook ends it
//! from Meta's side; the switch ends it with `reject` before the accept and `terminate`
//! after. It speaks the same [`LegMsg`] protocol as every leg, so the call supervisor
//! treats it like any other.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use super::leg::{LegMsg, LegSignal, LegState};
use super::media::MediaMsg;
use super::supervisor::CallMsg;
use super::LegRole;
use crate::meta::graph::{CallAction, GraphClient};

/// How long the media actor may take to build the WebRTC leg.
const ANCHOR_TIMEOUT: Duration = Duration::from_secs(5);

/// What the WhatsApp leg of a user-initiated call starts from: Meta's connect webhook.
#[derive(Clone)]
pub struct WaStart {
    /// The Graph API client.
    pub graph: Arc<GraphClient>,
    /// Meta's id of the business number the user called.
    pub phone_number_id: String,
    /// Meta's id of the call.
    pub wa_call_id: String,
    /// Meta's SDP offer.
    pub offer_sdp: String,
    /// The business side is an echo of the caller's audio (an echo-test number), not a
    /// SIP leg.
    pub echo: bool,
}

impl std::fmt::Debug for WaStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaStart")
            .field("phone_number_id", &self.phone_number_id)
            .field("wa_call_id", &self.wa_call_id)
            .field("echo", &self.echo)
            .finish_non_exhaustive()
    }
}

/// The WhatsApp leg actor. Spawned and supervised by the call supervisor.
pub struct WaLegActor;

/// What the WhatsApp leg starts with.
pub struct WaLegArgs {
    /// The connect webhook's facts.
    pub start: WaStart,
    /// The call supervisor to report to.
    pub call: ActorRef<CallMsg>,
    /// The call's media actor (builds the WebRTC leg).
    pub media: ActorRef<MediaMsg>,
    /// The call's id, echoed by Meta in the terminate webhook.
    pub call_id: String,
    /// The call's span.
    pub span: tracing::Span,
}

/// State of a running WhatsApp leg.
pub struct WaLeg {
    start: WaStart,
    call: ActorRef<CallMsg>,
    media: ActorRef<MediaMsg>,
    call_id: String,
    state: LegState,
    /// Our answer, once made (the same text goes with pre_accept and accept).
    answer: Option<String>,
    /// Meta has our answer.
    pre_accepted: bool,
    span: tracing::Span,
}

impl Actor for WaLegActor {
    type Msg = LegMsg;
    type State = WaLeg;
    type Arguments = WaLegArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WaLegArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let span = tracing::debug_span!(parent: &args.span, "leg", role = "wa_leg", wa_call_id = %args.start.wa_call_id);
        let mut leg = WaLeg {
            start: args.start,
            call: args.call,
            media: args.media,
            call_id: args.call_id,
            state: LegState::Offered,
            answer: None,
            pre_accepted: false,
            span,
        };
        let span = leg.span.clone();
        leg.anchor().instrument(span).await;
        if leg.answer.is_none() {
            // Rejected toward Meta already; the call ends as a setup failure.
            return Err(ActorProcessingErr::from(
                "the WhatsApp offer could not be answered",
            ));
        }
        Ok(leg)
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        leg: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if leg.start.echo && leg.answer.is_some() {
            let span = leg.span.clone();
            leg.pre_accept().instrument(span).await;
            // The echo is the business side, and it answers at once.
            let _ = leg.call.send_message(CallMsg::Signal {
                role: LegRole::Business,
                signal: LegSignal::Answered,
            });
        }
        Ok(())
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
                LegMsg::Remote(signal) => leg.on_remote(signal),
                LegMsg::Alert => leg.pre_accept().await,
                LegMsg::Answer => {
                    leg.pre_accept().await;
                    leg.accept().await;
                }
                LegMsg::Hangup { cause, reply } => {
                    leg.hang_up(&cause);
                    let _ = reply.send(());
                }
                LegMsg::State(reply) => {
                    let _ = reply.send(leg.state);
                }
                #[cfg(any(test, feature = "fault-injection"))]
                LegMsg::Fault(fault) => return fault.trigger("wa_leg"),
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}

impl WaLeg {
    /// Answers Meta's offer in a media shard. A failure rejects the call toward Meta and
    /// ends it.
    async fn anchor(&mut self) {
        let offer = self.start.offer_sdp.clone();
        let echo = self.start.echo;
        let anchored = self
            .media
            .call(
                |reply| MediaMsg::AnchorWebRtc { offer, echo, reply },
                Some(ANCHOR_TIMEOUT),
            )
            .await;
        match anchored {
            Ok(ractor::rpc::CallResult::Success(Ok(answer))) => self.answer = Some(answer),
            Ok(ractor::rpc::CallResult::Success(Err(e))) => {
                tracing::warn!(error = %e, "WhatsApp offer not answerable; rejecting the call");
                self.fail("media_setup_failed");
            }
            _ => {
                tracing::warn!("media did not answer; rejecting the call");
                self.fail("media_setup_failed");
            }
        }
    }

    /// Sends our answer with `pre_accept` (once). A failure rejects the call toward Meta
    /// and ends it.
    async fn pre_accept(&mut self) {
        if self.pre_accepted || self.state == LegState::Ended {
            return;
        }
        let Some(answer) = self.answer.clone() else {
            return;
        };
        self.pre_accepted = true;
        let action = CallAction::PreAccept {
            call_id: self.start.wa_call_id.clone(),
            sdp: answer,
        };
        if let Err(e) = self
            .start
            .graph
            .call_action(&self.start.phone_number_id, &action)
            .await
        {
            tracing::warn!(error = %e, "pre_accept failed; rejecting the call");
            return self.fail("meta_pre_accept_failed");
        }
        tracing::debug!("pre_accept sent");
    }

    /// Accepts the call toward Meta (the business answered).
    async fn accept(&mut self) {
        if !matches!(self.state, LegState::Offered | LegState::Ringing) {
            return;
        }
        let Some(sdp) = self.answer.clone() else {
            return;
        };
        let action = CallAction::Accept {
            call_id: self.start.wa_call_id.clone(),
            sdp,
            biz_opaque_callback_data: Some(self.call_id.clone()),
        };
        match self
            .start
            .graph
            .call_action(&self.start.phone_number_id, &action)
            .await
        {
            Ok(_) => {
                self.state = LegState::Answered;
                tracing::info!("WhatsApp call accepted");
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; ending the call");
                // Meta may have taken it after all: terminate rather than reject.
                self.state = LegState::Answered;
                self.fail("meta_accept_failed");
            }
        }
    }

    /// A far-end event (Meta's terminate webhook).
    fn on_remote(&mut self, signal: LegSignal) {
        if let Some(next) = self.state.on_signal(&signal) {
            self.state = next;
            let cause = match signal {
                LegSignal::HungUp { cause } => Some(cause),
                _ => None,
            };
            let _ = self.call.send_message(CallMsg::LegChanged {
                role: LegRole::WhatsApp,
                state: next,
                cause,
            });
        }
    }

    /// Ends the leg from our side: `reject` before the accept, `terminate` after. The
    /// request runs on its own, so a slow Graph API never holds the call's teardown.
    fn hang_up(&mut self, cause: &str) {
        let action = match self.state {
            LegState::Ended => return,
            LegState::Answered => CallAction::Terminate {
                call_id: self.start.wa_call_id.clone(),
            },
            LegState::Offered | LegState::Ringing => CallAction::Reject {
                call_id: self.start.wa_call_id.clone(),
            },
        };
        self.state = LegState::Ended;
        tracing::debug!(%cause, action = action.name(), "ending the WhatsApp leg");
        let graph = self.start.graph.clone();
        let number = self.start.phone_number_id.clone();
        let span = self.span.clone();
        tokio::spawn(
            async move {
                if let Err(e) = graph.call_action(&number, &action).await {
                    tracing::warn!(error = %e, action = action.name(), "Meta was not told the call ended");
                }
            }
            .instrument(span),
        );
    }

    /// Ends the leg and the call after a failure of ours.
    fn fail(&mut self, cause: &str) {
        self.hang_up(cause);
        let _ = self.call.send_message(CallMsg::LegFailed {
            role: LegRole::WhatsApp,
            cause: cause.to_string(),
        });
    }
}
