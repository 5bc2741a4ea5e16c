//! Meta's SIP interface as a carrier of a WhatsApp leg: what the Graph API's actions and
//! Meta's webhooks are in Graph mode, a SIP dialog with Meta (`wa.meta.vc`, over TLS) is in
//! SIP mode.
//!
//! [`MetaSipInbound`] is a customer's call: Meta's INVITE, answered here. The leg's
//! `pre_accept` needs nothing on the wire (Meta wants no provisional response), `accept` is
//! our 200 with the answer (Meta's Record-Route copied unchanged, or Meta's ACK never comes),
//! `reject` a final refusal, `terminate` a BYE along Meta's route set. Meta's BYE and
//! CANCEL are its `terminate` webhook. Nothing ever goes to Meta inside the dialog but the
//! BYE: hold and session refresh toward the business are answered by the WhatsApp leg
//! itself, and Meta takes no re-INVITE.
//!
//! Sans-IO: it builds the SIP commands; the leg's actor sends them.

use std::net::SocketAddr;

use bytes::Bytes;

use super::WaEvent;
use crate::meta::graph::CallAction;
use crate::sip::build::MessageBuilder;
use crate::sip::core::{CoreEvent, ServerId, SipCommand};
use crate::sip::dialog::Dialog;
use crate::sip::msg::{HeaderName, Method, SipMessage};

/// Meta's header on its SIP requests.
pub(crate) const EXTERNAL_DOMAIN: &str = "X-FB-External-Domain";
/// Meta's id of the call, on its INVITE and BYE.
pub(crate) const WACID: &str = "x-wa-meta-wacid";

/// The value of header `name` (any case) of `msg`, as text.
pub(crate) fn header_text(msg: &SipMessage, name: &str) -> Option<String> {
    msg.headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(&h.value).trim().to_string())
}

/// A customer's call as Meta's INVITE brought it.
#[derive(Debug, Clone)]
pub(crate) struct MetaSipCall {
    /// The INVITE's server transaction.
    pub(crate) server: ServerId,
    /// Meta's INVITE.
    pub(crate) invite: SipMessage,
    /// Where it came from (the TLS connection our answers and requests go back over).
    pub(crate) peer: SocketAddr,
    /// Our Contact.
    pub(crate) contact: String,
}

impl MetaSipCall {
    /// The INVITE's Call-ID.
    pub(crate) fn call_id(&self) -> Bytes {
        self.invite
            .header(&HeaderName::CallId)
            .map(|h| h.value.clone())
            .unwrap_or_default()
    }

    /// Meta's id of the call: `x-wa-meta-wacid`, else the Call-ID.
    pub(crate) fn wa_call_id(&self) -> String {
        header_text(&self.invite, WACID)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| String::from_utf8_lossy(&self.call_id()).into_owned())
    }

    /// A final refusal of the INVITE.
    pub(crate) fn refusal(&self, code: u16, reason: &str, tag: &str) -> SipCommand {
        SipCommand::Respond {
            server: self.server,
            response: MessageBuilder::response_to(&self.invite, code, reason, Some(tag)).build(),
        }
    }
}

/// A customer's call over SIP, with what its leg needs to carry it: the listener it came
/// through, and the node's routing of SIP events by Call-ID.
#[derive(Clone)]
pub struct MetaSipLink {
    /// The call.
    pub(crate) call: MetaSipCall,
    /// The TLS listener Meta's INVITE came through.
    pub(crate) origin: crate::sip::transport::SipHandle,
    /// Where the listeners send each Call-ID's events.
    pub(crate) table: std::sync::Arc<dashmap::DashMap<Bytes, crate::call::sip::Route>>,
}

impl std::fmt::Debug for MetaSipLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaSipLink")
            .field("call", &self.call)
            .finish_non_exhaustive()
    }
}

/// Where the inbound dialog stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The INVITE waits for our final response.
    Offered,
    /// Our 200 went out.
    Answered,
    /// Refused, ended by either side.
    Over,
}

/// The dialog of a customer's call with Meta.
#[derive(Debug)]
pub(crate) struct MetaSipInbound {
    call: MetaSipCall,
    tag: String,
    stage: Stage,
    dialog: Option<Dialog>,
}

impl MetaSipInbound {
    /// The dialog of `call`, answered with our tag `tag`.
    pub(crate) fn new(call: MetaSipCall, tag: &str) -> Self {
        Self {
            call,
            tag: tag.to_string(),
            stage: Stage::Offered,
            dialog: None,
        }
    }

    /// What a Graph action is on the wire. `Ok(None)`: nothing to send, done; `Err`: the
    /// action cannot be carried out (the awaited action fails).
    pub(crate) fn action(&mut self, action: &CallAction) -> Result<Option<SipCommand>, String> {
        match action {
            // Meta wants no provisional response; our media answers its offer at `accept`.
            CallAction::PreAccept { .. } => Ok(None),
            CallAction::Accept { sdp, .. } => {
                if self.stage != Stage::Offered {
                    return Err("the call is no longer offered".into());
                }
                self.stage = Stage::Answered;
                let mut dialog = Dialog::uas(&self.call.invite, &self.tag)
                    .map_err(|e| format!("Meta's INVITE forms no dialog: {e}"))?;
                dialog.confirm(None);
                self.dialog = Some(dialog);
                let response =
                    MessageBuilder::response_to(&self.call.invite, 200, "OK", Some(&self.tag))
                        .header(HeaderName::Contact, format!("<{}>", self.call.contact))
                        .header(HeaderName::Allow, "INVITE, ACK, CANCEL, BYE, OPTIONS")
                        .body("application/sdp", Bytes::from(sdp.clone()))
                        .build();
                Ok(Some(SipCommand::Respond {
                    server: self.call.server,
                    response,
                }))
            }
            CallAction::Reject { .. } => Ok(self.refuse(603, "Decline")),
            CallAction::Terminate { .. } => Ok(match self.stage {
                Stage::Offered => self.refuse(480, "Temporarily Unavailable"),
                Stage::Answered => self.bye(),
                Stage::Over => None,
            }),
            CallAction::Connect { .. } => Err("a customer's call places nothing".into()),
        }
    }

    /// Refuses the INVITE, unless it was answered already.
    pub(crate) fn refuse(&mut self, code: u16, reason: &str) -> Option<SipCommand> {
        if self.stage != Stage::Offered {
            return None;
        }
        self.stage = Stage::Over;
        Some(self.call.refusal(code, reason, &self.tag))
    }

    /// Our BYE, along Meta's route set.
    fn bye(&mut self) -> Option<SipCommand> {
        self.stage = Stage::Over;
        let dialog = self.dialog.as_mut()?;
        dialog.terminate();
        let request = dialog
            .request(Method::Bye, None)
            .header(
                HeaderName::Reason,
                "Q.850;cause=16;text=\"NORMAL_CLEARING\"",
            )
            .build();
        Some(SipCommand::Request {
            request,
            to: self.call.peer,
        })
    }

    /// A SIP event of the dialog: what to send back, and what it means for the leg.
    pub(crate) fn on_event(&mut self, event: CoreEvent) -> (Option<SipCommand>, Option<WaEvent>) {
        match event {
            CoreEvent::Request {
                server, request, ..
            } => {
                let method = request.method().cloned();
                let ok = |code: u16, reason: &str| SipCommand::Respond {
                    server,
                    response: MessageBuilder::response_to(&request, code, reason, None).build(),
                };
                match method {
                    Some(Method::Bye) => {
                        let ended = self.stage != Stage::Over;
                        self.stage = Stage::Over;
                        if let Some(d) = self.dialog.as_mut() {
                            d.terminate();
                        }
                        let seconds = header_text(&request, "x-wa-meta-call-duration");
                        tracing::info!(duration = ?seconds, "Meta ended the call (BYE)");
                        let event = ended.then(|| WaEvent::Terminated {
                            cause: "normal_clearing".into(),
                        });
                        (Some(ok(200, "OK")), event)
                    }
                    Some(Method::Options | Method::Info) => (Some(ok(200, "OK")), None),
                    // Meta sends no re-INVITE; one is refused as Meta refuses ours.
                    Some(Method::Invite) => (Some(ok(488, "Not Acceptable Here")), None),
                    _ => (Some(ok(405, "Method Not Allowed")), None),
                }
            }
            CoreEvent::Cancelled { .. } => {
                let response = self.refuse(487, "Request Terminated");
                let event = response.is_some().then(|| WaEvent::Terminated {
                    cause: "normal_clearing".into(),
                });
                (response, event)
            }
            CoreEvent::AckTimeout { .. } => {
                tracing::warn!(
                    "Meta never acknowledged our 200 (its Record-Route kept?); ending the call"
                );
                let bye = self.bye();
                (
                    bye,
                    Some(WaEvent::Terminated {
                        cause: "meta_ack_timeout".into(),
                    }),
                )
            }
            // Meta's ACK; the answer to our BYE.
            CoreEvent::Ack { .. } | CoreEvent::Response(..) | CoreEvent::Timeout(..) => {
                (None, None)
            }
        }
    }
}

#[cfg(test)]
mod tests;
