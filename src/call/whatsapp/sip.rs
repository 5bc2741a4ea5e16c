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
//! [`MetaSipOutbound`] is the switch calling a customer: `connect` is our INVITE to
//! `sip:+<wa_id>@wa.meta.vc;transport=tls` (From at the configured hostname), Meta's 407
//! answered with the number's digest password (MD5 or SHA-256, as Meta asks); Meta's
//! provisional responses, its 200 and its refusals are what its webhooks say in Graph mode;
//! `terminate` is a CANCEL before the answer, a BYE after.
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

/// The BYE ending `dialog`, along its route set, sent to `to` (Meta's proxy, or the
/// connection Meta's INVITE came on).
fn bye(dialog: &mut Dialog, to: SocketAddr) -> Option<SipCommand> {
    dialog.terminate();
    let request = dialog
        .request(Method::Bye, None)
        .header(
            HeaderName::Reason,
            "Q.850;cause=16;text=\"NORMAL_CLEARING\"",
        )
        .build();
    Some(SipCommand::Request { request, to })
}

/// A customer's call as Meta's INVITE brought it.
#[derive(Clone)]
pub(crate) struct MetaSipCall {
    /// The INVITE's server transaction.
    pub(crate) server: ServerId,
    /// Meta's INVITE.
    pub(crate) invite: SipMessage,
    /// Where it came from (the TLS connection our answers and requests go back over).
    pub(crate) peer: SocketAddr,
    /// The business number called (digits): the Request-URI's user, its parameters set
    /// aside.
    pub(crate) business: String,
    /// Our Contact.
    pub(crate) contact: String,
}

impl std::fmt::Debug for MetaSipCall {
    /// Without the INVITE's body: it holds Meta's SRTP key (`a=crypto`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaSipCall")
            .field("call_id", &String::from_utf8_lossy(&self.call_id()))
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
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
        bye(self.dialog.as_mut()?, self.call.peer)
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

/// How the switch reaches Meta's SIP proxy to call customers of a number in SIP mode.
#[derive(Clone)]
pub struct MetaSipDialer {
    /// The TLS listener (its connections to Meta).
    pub(crate) origin: crate::sip::transport::SipHandle,
    /// Where the listeners send each Call-ID's events.
    pub(crate) table: std::sync::Arc<dashmap::DashMap<Bytes, crate::call::sip::Route>>,
    /// Meta's proxy, `host:port`.
    pub(crate) proxy: String,
    /// Our hostname as configured with Meta (the From's host).
    pub(crate) hostname: String,
    /// The business number, digits.
    pub(crate) business: String,
    /// Meta's password for the number.
    pub(crate) password: crate::config::Secret,
    /// Our offer is SDES (else WebRTC's ICE and DTLS).
    pub(crate) sdes: bool,
    /// Our Contact.
    pub(crate) contact: String,
}

impl std::fmt::Debug for MetaSipDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaSipDialer")
            .field("proxy", &self.proxy)
            .field("hostname", &self.hostname)
            .field("business", &self.business)
            .field("sdes", &self.sdes)
            .finish_non_exhaustive()
    }
}

/// Where our call to Meta stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutStage {
    /// Not sent yet.
    Idle,
    /// INVITE sent, no final response.
    Inviting,
    /// Answered (and acknowledged).
    Answered,
    /// Refused, cancelled or ended.
    Over,
}

/// The switch's call to a customer through Meta's SIP proxy.
pub(crate) struct MetaSipOutbound {
    business: String,
    hostname: String,
    password: crate::config::Secret,
    contact: String,
    /// Meta's proxy address.
    proxy: SocketAddr,
    call_id: String,
    tag: String,
    /// The INVITE last sent (the digest's retry replaces it).
    invite: Option<SipMessage>,
    stage: OutStage,
    /// A provisional response came (a CANCEL may follow).
    provisional: bool,
    /// Meta took the call (reported once).
    taken: bool,
    /// Credentials were given (a second challenge is a refusal).
    authorised: bool,
    /// We ended the call before Meta's answer: a 2xx that crosses is acknowledged and
    /// hung up.
    ended: bool,
    dialog: Option<Dialog>,
}

impl std::fmt::Debug for MetaSipOutbound {
    /// Without the INVITE: its offer holds our SRTP key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaSipOutbound")
            .field("call_id", &self.call_id)
            .field("proxy", &self.proxy)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl MetaSipOutbound {
    /// A call through `proxy` as `dialer` describes, with Call-ID `call_id` and our tag.
    pub(crate) fn new(dialer: &MetaSipDialer, proxy: SocketAddr, call_id: &str, tag: &str) -> Self {
        Self {
            business: dialer.business.clone(),
            hostname: dialer.hostname.clone(),
            password: dialer.password.clone(),
            contact: dialer.contact.clone(),
            proxy,
            call_id: call_id.to_string(),
            tag: tag.to_string(),
            invite: None,
            stage: OutStage::Idle,
            provisional: false,
            taken: false,
            authorised: false,
            ended: false,
            dialog: None,
        }
    }

    /// Our Call-ID.
    pub(crate) fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The INVITE placing the call to `customer` (digits) with our `offer`.
    pub(crate) fn invite(&mut self, customer: &str, offer: &str) -> SipCommand {
        let uri = format!("sip:+{customer}@wa.meta.vc;transport=tls");
        let request = MessageBuilder::request(Method::Invite, &uri)
            .header(HeaderName::MaxForwards, "70")
            .header(
                HeaderName::From,
                format!(
                    "<sip:+{}@{}>;tag={}",
                    self.business, self.hostname, self.tag
                ),
            )
            .header(HeaderName::To, format!("<sip:+{customer}@wa.meta.vc>"))
            .header(HeaderName::CallId, self.call_id.clone())
            .header(HeaderName::CSeq, "1 INVITE")
            .header(HeaderName::Contact, format!("<{}>", self.contact))
            .header(HeaderName::Allow, "INVITE, ACK, CANCEL, BYE, OPTIONS")
            .body("application/sdp", Bytes::from(offer.to_string()))
            .build();
        self.invite = Some(request.clone());
        self.stage = OutStage::Inviting;
        SipCommand::Request {
            request,
            to: self.proxy,
        }
    }

    /// The switch ends the call: CANCEL while Meta has not answered (or giving up on an
    /// INVITE nothing answered yet), BYE once it has.
    pub(crate) fn end(&mut self) -> Option<SipCommand> {
        self.ended = true;
        match self.stage {
            OutStage::Idle | OutStage::Over => None,
            OutStage::Inviting => {
                let call_id = Bytes::from(self.call_id.clone());
                Some(if self.provisional {
                    SipCommand::Cancel { call_id }
                } else {
                    SipCommand::Abandon { call_id }
                })
            }
            OutStage::Answered => {
                self.stage = OutStage::Over;
                self.bye()
            }
        }
    }

    fn bye(&mut self) -> Option<SipCommand> {
        bye(self.dialog.as_mut()?, self.proxy)
    }

    /// Meta took the call: reported once, with our Call-ID as its id until Meta's own
    /// (`x-wa-meta-wacid`) is known.
    fn taken(&mut self, msg: &SipMessage, events: &mut Vec<WaEvent>) {
        if !self.taken {
            self.taken = true;
            let id = header_text(msg, WACID)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| self.call_id.clone());
            events.push(WaEvent::Connected(Ok(id)));
        }
    }

    /// The INVITE again with credentials for `challenge` (from a 401 or 407).
    fn authorise(&mut self, response: &SipMessage) -> Option<SipCommand> {
        let (challenge_header, answer_header) = if response.status() == Some(401) {
            (HeaderName::WwwAuthenticate, HeaderName::Authorization)
        } else {
            (
                HeaderName::ProxyAuthenticate,
                HeaderName::ProxyAuthorization,
            )
        };
        let mut challenges: Vec<crate::sip::auth::DigestChallenge> = response
            .headers_named(&challenge_header)
            .filter_map(|h| crate::sip::auth::DigestChallenge::parse(&h.value).ok())
            .collect();
        // SHA-256 before MD5 when Meta offers both.
        challenges.sort_by_key(|c| c.algorithm != crate::sip::auth::Algorithm::Sha256);
        let challenge = challenges.first()?;
        let previous = self.invite.as_ref()?;
        let uri = crate::sip::dialog::request_uri(previous)?;
        let cnonce = format!("{:x}", uuid::Uuid::new_v4().as_u64_pair().0);
        let credentials = challenge.respond(
            "INVITE",
            &uri,
            &self.business,
            self.password.expose(),
            &cnonce,
            1,
        );
        let mut request = previous.clone();
        request.headers.retain(|h| {
            h.name != HeaderName::CSeq
                && h.name != HeaderName::Via
                && h.name != HeaderName::ProxyAuthorization
                && h.name != HeaderName::Authorization
        });
        request
            .headers
            .push(crate::sip::msg::Header::new(HeaderName::CSeq, "2 INVITE"));
        request
            .headers
            .push(crate::sip::msg::Header::new(answer_header, credentials));
        self.invite = Some(request.clone());
        self.authorised = true;
        Some(SipCommand::Request {
            request,
            to: self.proxy,
        })
    }

    /// A SIP event of the call: what to send, and what it means (Meta's webhooks in Graph
    /// mode).
    pub(crate) fn on_event(&mut self, event: CoreEvent) -> (Vec<SipCommand>, Vec<WaEvent>) {
        let mut send = Vec::new();
        let mut events = Vec::new();
        match event {
            CoreEvent::Response(_, response) => {
                let is_invite = response
                    .header(&HeaderName::CSeq)
                    .is_some_and(|h| h.value.ends_with(b"INVITE"));
                if !is_invite {
                    // The answer to our BYE.
                    return (send, events);
                }
                let code = response.status().unwrap_or(0);
                let reason = match &response.start {
                    crate::sip::msg::StartLine::Response { reason, .. } => {
                        String::from_utf8_lossy(reason).into_owned()
                    }
                    crate::sip::msg::StartLine::Request { .. } => String::new(),
                };
                match code {
                    100 => self.provisional = true,
                    101..=199 => {
                        self.provisional = true;
                        if self.stage == OutStage::Inviting {
                            self.taken(&response, &mut events);
                            if matches!(code, 180 | 183) {
                                events.push(WaEvent::Ringing);
                            }
                        }
                    }
                    200..=299 => {
                        let Some(invite) = self.invite.clone() else {
                            return (send, events);
                        };
                        let seq = crate::sip::header::CSeq::parse(
                            &invite
                                .header(&HeaderName::CSeq)
                                .map(|h| h.value.clone())
                                .unwrap_or_default(),
                        )
                        .map_or(1, |c| c.seq);
                        let Ok(mut dialog) = Dialog::uac(&invite, &response) else {
                            tracing::warn!("Meta's 200 forms no dialog; the call cannot go on");
                            return (send, events);
                        };
                        dialog.confirm(Some(&response));
                        send.push(SipCommand::Ack {
                            request: dialog.ack(seq).build(),
                            to: self.proxy,
                        });
                        if self.stage != OutStage::Inviting {
                            // A retransmitted 2xx: acknowledged again, nothing more.
                            return (send, events);
                        }
                        self.dialog = Some(dialog);
                        self.stage = OutStage::Answered;
                        if self.ended {
                            // Answered across our CANCEL: hung up at once.
                            self.stage = OutStage::Over;
                            send.extend(self.bye());
                            return (send, events);
                        }
                        self.taken(&response, &mut events);
                        events.push(WaEvent::Answer(
                            String::from_utf8_lossy(&response.body).into_owned(),
                        ));
                        events.push(WaEvent::Accepted);
                    }
                    401 | 407 if !self.authorised && self.stage == OutStage::Inviting => {
                        match self.authorise(&response) {
                            Some(retry) => send.push(retry),
                            None => {
                                self.stage = OutStage::Over;
                                events.push(WaEvent::Connected(Err((
                                    403,
                                    "Forbidden - Meta's challenge could not be answered".into(),
                                ))));
                            }
                        }
                    }
                    _ if self.stage == OutStage::Inviting => {
                        self.stage = OutStage::Over;
                        let phrase = super::leg::safe_phrase(&reason);
                        match code {
                            // The customer declined.
                            486 | 600 | 603 => {
                                self.taken(&response, &mut events);
                                events.push(WaEvent::Rejected);
                            }
                            // Not answered, or cancelled by us.
                            408 | 480 | 487 => {
                                self.taken(&response, &mut events);
                                events.push(WaEvent::Terminated {
                                    cause: if code == 487 {
                                        "cancelled".into()
                                    } else {
                                        "no_answer".into()
                                    },
                                });
                            }
                            // Credentials refused: the PBX is told so, not challenged
                            // for ours.
                            401 | 407 => events.push(WaEvent::Connected(Err((
                                403,
                                "Forbidden - Meta refused the number's SIP credentials".into(),
                            )))),
                            // Meta refused before placing anything: its status goes to
                            // the PBX as it came.
                            _ if !self.taken => events.push(WaEvent::Connected(Err((
                                code,
                                if phrase.is_empty() {
                                    "Refused by Meta".into()
                                } else {
                                    phrase
                                },
                            )))),
                            _ => events.push(WaEvent::Terminated {
                                cause: format!("meta_failed_sip_{code}"),
                            }),
                        }
                    }
                    _ => {}
                }
            }
            CoreEvent::Timeout(_, request) => {
                if request.method() == Some(&Method::Invite) && self.stage == OutStage::Inviting {
                    self.stage = OutStage::Over;
                    events.push(if self.taken {
                        WaEvent::Terminated {
                            cause: "meta_failed_sip_timeout".into(),
                        }
                    } else {
                        WaEvent::Connected(Err((
                            503,
                            "Service Unavailable - Meta's SIP proxy did not answer".into(),
                        )))
                    });
                }
            }
            CoreEvent::Request {
                server, request, ..
            } => {
                let method = request.method().cloned();
                let respond = |code: u16, reason: &str| SipCommand::Respond {
                    server,
                    response: MessageBuilder::response_to(&request, code, reason, None).build(),
                };
                match method {
                    Some(Method::Bye) => {
                        send.push(respond(200, "OK"));
                        if self.stage == OutStage::Answered {
                            self.stage = OutStage::Over;
                            if let Some(d) = self.dialog.as_mut() {
                                d.terminate();
                            }
                            events.push(WaEvent::Terminated {
                                cause: "normal_clearing".into(),
                            });
                        }
                    }
                    Some(Method::Options | Method::Info | Method::Notify) => {
                        send.push(respond(200, "OK"))
                    }
                    Some(Method::Invite) => send.push(respond(488, "Not Acceptable Here")),
                    _ => send.push(respond(405, "Method Not Allowed")),
                }
            }
            CoreEvent::Cancelled { .. } | CoreEvent::Ack { .. } | CoreEvent::AckTimeout { .. } => {}
        }
        (send, events)
    }
}

#[cfg(test)]
mod tests;
