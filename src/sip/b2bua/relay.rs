//! Relaying between the legs once a call is set up: in-dialog requests (re-INVITE, UPDATE,
//! INFO, MESSAGE, BYE) passed to the other leg, their final responses passed back, the ACKs
//! owed across for relayed INVITEs, and SDP bodies anchored on the way through with each
//! leg's media reported.

use std::time::Instant;

use super::{
    dialog_hop, hop, reason_of, seq_of, text, APhase, Action, BState, Bridge, Leg, OwedAck, Relayed,
};
use crate::sip::build::MessageBuilder;
use crate::sip::core::{ServerId, SipCommand, ALLOW};
use crate::sip::msg::{HeaderName, Method, SipMessage};

fn content_type(msg: &SipMessage) -> Option<String> {
    msg.header(&HeaderName::ContentType).map(|h| text(&h.value))
}

impl Bridge {
    /// The body of `msg` as it goes to leg `to` (it came from the other leg): anchored SDP
    /// is rewritten to the switch's address and `to`'s port, and the sender's media is
    /// reported. Anything else is carried unchanged.
    pub(super) fn carry_body(
        &mut self,
        to: Leg,
        b: MessageBuilder,
        msg: &SipMessage,
    ) -> MessageBuilder {
        // A WebRTC leg B's later offer is answered from our own WebRTC offer, whatever leg
        // A said (its media never changes; it answered a request that carried no offer).
        let answering_b = to == Leg::B
            && msg.status().is_some_and(|c| (200..300).contains(&c))
            && self
                .b
                .as_ref()
                .is_some_and(|b| b.last_offer_from_b.is_some());
        if answering_b {
            if let Some(ours) = self.b_webrtc() {
                let out = self.carry_webrtc(to, b, msg, "application/sdp", ours);
                if let Some(bleg) = self.b.as_mut() {
                    bleg.last_offer_from_b = None;
                }
                return out;
            }
        }
        let Some(ct) = content_type(msg).filter(|_| !msg.body.is_empty()) else {
            return b;
        };
        if let Some((answer, offer)) = self.a_webrtc.as_mut() {
            match to {
                Leg::A => return b.body("application/sdp", reanswer(answer, offer, "active")),
                Leg::B if msg.is_request() => *offer = msg.body.clone(),
                Leg::B => {}
            }
        }
        if let Some(ours) = self.b_webrtc() {
            return self.carry_webrtc(to, b, msg, &ct, ours);
        }
        let Some(anchor) = self.anchor else {
            return b.body(&ct, msg.body.clone());
        };
        if !ct.to_ascii_lowercase().starts_with("application/sdp") {
            return b.body(&ct, msg.body.clone());
        }
        let from = match to {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        };
        let mut sdp = match crate::sdp::Sdp::parse(&msg.body) {
            Ok(sdp) => sdp,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable SDP passed through unanchored");
                return b.body(&ct, msg.body.clone());
            }
        };
        if let Ok(Some(audio)) = sdp.audio() {
            self.report_sdp(from, msg, audio);
        }
        let port = anchor.ports[match to {
            Leg::A => 0,
            Leg::B => 1,
        }];
        sdp.anchor(anchor.ip, port);
        b.body(&ct, sdp.to_bytes())
    }

    /// Reports the media of `from`'s SDP as it crosses (`msg` carried it). An offer in a
    /// request waits for its answer, except a call's first offer (its media may be needed
    /// for early media at once); the answer then reports both sides, the offerer's formats
    /// narrowed to what the answer kept (RFC 3264 §6.1). Any other SDP is reported as it is.
    fn report_sdp(&mut self, from: Leg, msg: &SipMessage, audio: crate::sdp::Audio) {
        let offer =
            msg.is_request() && matches!(msg.method(), Some(Method::Invite | Method::Update));
        if offer {
            let first = !crate::sip::core::in_dialog(msg);
            self.offer_pending = Some((from, audio.clone()));
            if first {
                self.report_media(from, audio);
            }
            return;
        }
        let to = match from {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        };
        let answered = match self.offer_pending.take() {
            Some((offerer, offered)) if offerer == to && !msg.is_request() => Some(offered),
            other => {
                self.offer_pending = other;
                None
            }
        };
        if let Some(offered) = answered {
            self.report_media(to, offered.narrowed_to(&audio.formats));
        }
        self.report_media(from, audio);
    }

    fn report_media(&mut self, leg: Leg, audio: crate::sdp::Audio) {
        let formats = audio.formats.clone();
        self.out.push_back(Action::Media(leg, audio));
        self.formats[match leg {
            Leg::A => 0,
            Leg::B => 1,
        }] = Some(formats);
        self.replan();
    }

    /// The current leg B's WebRTC offer, when it is a WebRTC target.
    fn b_webrtc(&self) -> Option<bytes::Bytes> {
        let b = self.b.as_ref()?;
        self.targets.get(b.target)?.webrtc.clone()
    }

    /// SDP across a bridge whose leg B is a WebRTC target: leg B gets our WebRTC offer (in
    /// the INVITE), or, answering its later offers (hold, resume), that offer with the DTLS
    /// role its first answer settled and the direction mirrored; leg B's SDP is reported
    /// and goes to leg A (the WhatsApp leg, whose media never changes) as it came.
    fn carry_webrtc(
        &mut self,
        to: Leg,
        b: MessageBuilder,
        msg: &SipMessage,
        ct: &str,
        ours: bytes::Bytes,
    ) -> MessageBuilder {
        match to {
            Leg::B => {
                if msg.is_request() {
                    return b.body("application/sdp", ours);
                }
                let their = self
                    .b
                    .as_ref()
                    .and_then(|b| b.last_offer_from_b.clone())
                    .unwrap_or_default();
                let setup = match self.b_setup.as_deref() {
                    Some("active") => "passive",
                    _ => "active",
                };
                b.body("application/sdp", reanswer(&ours, &their, setup))
            }
            Leg::A => {
                let first = self.b_setup.is_none();
                if first {
                    let text = String::from_utf8_lossy(&msg.body);
                    let setup = text
                        .lines()
                        .find_map(|l| l.trim().strip_prefix("a=setup:"))
                        .unwrap_or("active")
                        .trim()
                        .to_string();
                    self.b_setup = Some(setup);
                } else if let Some(bleg) = self.b.as_mut() {
                    bleg.last_offer_from_b = Some(msg.body.clone());
                }
                self.out.push_back(Action::WebRtcSdp {
                    sdp: msg.body.clone(),
                    first,
                });
                if msg.is_request() && !first {
                    // Leg A (the WhatsApp leg) is told of the request, not offered the
                    // browser's SDP: its media never changes, and our answer is ours.
                    return b;
                }
                b.body(ct, msg.body.clone())
            }
        }
    }

    /// Works out how the audio crosses the switch from both legs' formats (A offered
    /// first), reporting the plan when it is new. SDP crosses a SIP bridge end to end, so
    /// the legs settle on one codec and nothing is transcoded; an answer sharing no codec
    /// with the offer has no plan.
    fn replan(&mut self) {
        let [Some(a), Some(b)] = &self.formats else {
            return;
        };
        let plan = crate::sdp::plan(a, b, |_| false);
        if plan.is_none() {
            tracing::warn!(call_id = %self.a_dialog.call_id, "the legs share no codec");
        }
        if plan.is_some() && plan != self.plan {
            self.plan = plan.clone();
            if let Some(p) = plan {
                self.out.push_back(Action::MediaPlan(p));
            }
        }
    }

    /// A final response to a request we relayed onto `leg` (or to our own BYE or refresh).
    pub(super) fn relayed_response(&mut self, now: Instant, leg: Leg, resp: SipMessage) {
        let (Some(code), Some(cseq)) = (resp.status(), seq_of(&resp)) else {
            return;
        };
        if code < 200 {
            return;
        }
        let relayed = self.take_relayed(leg, cseq.seq, &cseq.method);
        let Some(relayed) = relayed else {
            // Our own request: a BYE's answer changes nothing; a failed session refresh
            // ends the call (RFC 4028 §10).
            if leg == Leg::B && matches!(cseq.method, Method::Update | Method::Invite) {
                match code {
                    200..=299 if cseq.method == Method::Invite => self.ack_refresh(&resp),
                    405 | 501 if cseq.method == Method::Update => {
                        if let Some(b) = self.b.as_mut() {
                            b.no_update = true;
                        }
                    }
                    408 | 481 => self.hangup(now, "session_refresh_failed"),
                    _ => {}
                }
            }
            return;
        };
        if code >= 300 {
            // A refused offer never reaches the media.
            self.offer_pending = None;
        }
        // Relay the final response back to the side that asked.
        let back = MessageBuilder::response_to(&relayed.request, code, &reason_of(&resp), None);
        let contact = match leg {
            Leg::B => self.a_contact.clone(),
            Leg::A => self.b_contact(),
        };
        let toward = match leg {
            Leg::B => Leg::A,
            Leg::A => Leg::B,
        };
        let mut back = self.carry_body(toward, back, &resp);
        if (200..300).contains(&code) && relayed.method == Method::Invite {
            // The offer/answer took effect: remember it (for session refreshes), and follow
            // the far side's target refresh (§12.2.1.2).
            match leg {
                Leg::B => {
                    if !relayed.request.body.is_empty() {
                        self.a_last_offer = relayed.request.body.clone();
                        if let Some(b) = self.b.as_mut() {
                            b.offer = relayed.sent_body.clone();
                        }
                    }
                    self.answer_to_a_pending = !resp.body.is_empty();
                    if let Some(dialog) = self.b.as_mut().and_then(|b| b.dialog.as_mut()) {
                        dialog.confirm(Some(&resp));
                    }
                }
                Leg::A => {
                    self.a_dialog.confirm(Some(&resp));
                    if !self.a_reliable {
                        self.a_hop = hop(&self.a_dialog.remote_target, self.a_hop);
                    }
                }
            }
            back = back.header(HeaderName::Contact, format!("<{contact}>"));
            // The far side's 2xx is acknowledged when the near side acknowledges ours.
            let owed = OwedAck {
                seq: cseq.seq,
                sent: None,
            };
            match leg {
                Leg::B => self.ack_to_b = Some(owed),
                Leg::A => self.ack_to_a = Some(owed),
            }
        }
        let response = back.build();
        if std::mem::take(&mut self.answer_to_a_pending) {
            self.a_last_answer = response.body.clone();
        }
        match leg {
            Leg::B => self.respond_a(relayed.server, response),
            Leg::A => self.b(SipCommand::Respond {
                server: relayed.server,
                response,
            }),
        }
        if matches!(code, 408 | 481) {
            // The far dialog is gone (RFC 5057): end the call.
            self.hangup(now, "dialog_lost");
        }
    }

    /// The request relayed onto `leg` that our request `seq`/`method` carried, taken out
    /// of those waiting for their answers.
    fn take_relayed(&mut self, leg: Leg, seq: u32, method: &Method) -> Option<Relayed> {
        let pending = match leg {
            Leg::B => &mut self.a_to_b,
            Leg::A => &mut self.b_to_a,
        };
        let i = pending
            .iter()
            .position(|r| r.sent_seq == seq && &r.method == method)?;
        pending.remove(i)
    }

    pub(super) fn relayed_timeout(&mut self, now: Instant, leg: Leg, request: &SipMessage) {
        let Some(cseq) = seq_of(request) else {
            return;
        };
        if cseq.method == Method::Bye {
            return;
        }
        let pending = self.take_relayed(leg, cseq.seq, &cseq.method);
        if let Some(relayed) = pending {
            let resp =
                MessageBuilder::response_to(&relayed.request, 408, "Request Timeout", None).build();
            match leg {
                Leg::B => self.respond_a(relayed.server, resp),
                Leg::A => self.b(SipCommand::Respond {
                    server: relayed.server,
                    response: resp,
                }),
            }
        }
        self.hangup(now, "request_timeout");
    }

    fn b_contact(&self) -> String {
        self.b
            .as_ref()
            .map(|b| self.targets[b.target].contact.clone())
            .unwrap_or_default()
    }

    /// A request inside one of the dialogs.
    pub(super) fn request_in(
        &mut self,
        now: Instant,
        leg: Leg,
        server: ServerId,
        request: SipMessage,
    ) {
        let method = request.method().cloned().unwrap_or(Method::Options);
        let respond =
            |this: &mut Self, code: u16, reason: &str, extra: Option<(HeaderName, String)>| {
                let mut b = MessageBuilder::response_to(&request, code, reason, None);
                if let Some((n, v)) = extra {
                    b = b.header(n, v);
                }
                let response = b.build();
                match leg {
                    Leg::A => this.respond_a(server, response),
                    Leg::B => this.b(SipCommand::Respond { server, response }),
                }
            };
        // A retransmitted initial INVITE reaches the transaction, not here; an INVITE with
        // A's Call-ID and no To tag is a new call reusing the Call-ID: refuse it.
        let dialog = match leg {
            Leg::A => Some(&mut self.a_dialog),
            Leg::B => self.b.as_mut().and_then(|b| b.dialog.as_mut()),
        };
        let Some(dialog) = dialog.filter(|d| d.matches(&request)) else {
            respond(self, 481, "Call/Transaction Does Not Exist", None);
            return;
        };
        if let Err(rejection) = dialog.receive(&request) {
            respond(self, rejection.status, &rejection.reason, None);
            return;
        }
        if leg == Leg::A && !self.a_reliable {
            // A target refresh (re-INVITE, UPDATE) moves where requests toward A go.
            self.a_hop = hop(&self.a_dialog.remote_target, self.a_hop);
        }
        if self.ended.is_some() && method != Method::Bye {
            respond(self, 481, "Call/Transaction Does Not Exist", None);
            return;
        }
        // Any request from a side counts as activity for its session timer.
        match leg {
            Leg::A if !self.a_timer.we_refresh => self.a_timer.arm(now),
            Leg::B => {
                if let Some(b) = self.b.as_mut() {
                    if !b.timer.we_refresh {
                        b.timer.arm(now);
                    }
                }
            }
            _ => {}
        }
        match method {
            Method::Bye => {
                respond(self, 200, "OK", None);
                match leg {
                    Leg::A => {
                        self.a_phase = APhase::Done;
                        self.end_b(now);
                    }
                    Leg::B => {
                        if let Some(b) = self.b.as_mut() {
                            b.state = BState::Done;
                        }
                        self.bye_a();
                    }
                }
                self.end(now, Some(leg), "normal_clearing");
            }
            Method::Invite | Method::Update => {
                if self.offer_relayed() {
                    // Glare: one offer at a time per call (RFC 3261 §14.1).
                    respond(
                        self,
                        491,
                        "Request Pending",
                        Some((HeaderName::RetryAfter, "1".into())),
                    );
                    return;
                }
                if leg == Leg::A && self.is_refresh(&request) {
                    // A session refresh from the caller: answered here, not passed on.
                    let mut b = MessageBuilder::response_to(&request, 200, "OK", None)
                        .header(HeaderName::Contact, format!("<{}>", self.a_contact));
                    if self.a_timer.interval > 0 {
                        let who = if self.a_timer.we_refresh {
                            "uas"
                        } else {
                            "uac"
                        };
                        b = b
                            .header(
                                HeaderName::SessionExpires,
                                format!("{};refresher={who}", self.a_timer.interval),
                            )
                            .header(HeaderName::Require, "timer");
                    }
                    if method == Method::Invite && !self.a_last_answer.is_empty() {
                        b = b.body("application/sdp", self.a_last_answer.clone());
                    }
                    let response = b.build();
                    self.respond_a(server, response);
                    return;
                }
                self.relay(now, leg, server, request);
            }
            Method::Info => self.relay_bounded(now, leg, server, request),
            ref m if m.as_bytes() == b"MESSAGE" => {
                self.relay_bounded(now, leg, server, request);
            }
            _ => respond(self, 501, "Not Implemented", None),
        }
    }

    /// Whether a re-INVITE or UPDATE relayed either way still waits for its answer (one
    /// offer at a time per call).
    pub(super) fn offer_relayed(&self) -> bool {
        self.a_to_b
            .iter()
            .chain(self.b_to_a.iter())
            .any(|r| matches!(r.method, Method::Invite | Method::Update))
    }

    /// Passes an INFO or MESSAGE on, unless [`MAX_RELAYED`](super::MAX_RELAYED) requests
    /// relayed the same way still wait for their answers: then this one is refused with 500
    /// and Retry-After, so every request gets an answer.
    fn relay_bounded(&mut self, now: Instant, leg: Leg, server: ServerId, request: SipMessage) {
        let busy = match leg {
            Leg::A => self.a_to_b.len() >= super::MAX_RELAYED,
            Leg::B => self.b_to_a.len() >= super::MAX_RELAYED,
        };
        if busy {
            let response =
                MessageBuilder::response_to(&request, 500, "Server Internal Error", None)
                    .header(HeaderName::RetryAfter, "1")
                    .build();
            match leg {
                Leg::A => self.respond_a(server, response),
                Leg::B => self.b(SipCommand::Respond { server, response }),
            }
            return;
        }
        self.relay(now, leg, server, request);
    }

    /// Passes an in-dialog request from `from_leg` to the other leg; with no dialog on the
    /// other side yet (a trunk still being tried), the request is answered 500 with
    /// Retry-After (481 would end the caller's early dialog, RFC 5057).
    fn relay(&mut self, _now: Instant, from_leg: Leg, server: ServerId, request: SipMessage) {
        let method = request.method().cloned().unwrap_or(Method::Info);
        let no_dialog = |this: &mut Self| {
            let response =
                MessageBuilder::response_to(&request, 500, "Server Internal Error", None)
                    .header(HeaderName::RetryAfter, "1")
                    .build();
            this.respond_a(server, response);
        };
        let (built, to) = match from_leg {
            Leg::A => {
                let Some(b) = self.b.as_mut() else {
                    no_dialog(self);
                    return;
                };
                let fallback = self.targets[b.target].addr;
                let contact = self.targets[b.target].contact.clone();
                let Some(dialog) = b.dialog.as_mut() else {
                    no_dialog(self);
                    return;
                };
                let refresh = matches!(method, Method::Invite | Method::Update);
                let builder = dialog.request(method.clone(), refresh.then_some(contact.as_str()));
                let to = dialog_hop(dialog, fallback);
                (builder, to)
            }
            Leg::B => {
                let contact = self.a_contact.clone();
                let refresh = matches!(method, Method::Invite | Method::Update);
                let builder = self
                    .a_dialog
                    .request(method.clone(), refresh.then_some(contact.as_str()));
                (builder, self.a_hop)
            }
        };
        let toward = match from_leg {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        };
        let mut built = self.carry_body(toward, built, &request);
        if method == Method::Invite || method == Method::Update {
            built = built.header(HeaderName::Allow, ALLOW);
        }
        let out = built.build();
        let sent_seq = seq_of(&out).map_or(0, |c| c.seq);
        let relayed = Relayed {
            server,
            request,
            sent_seq,
            method,
            sent_body: out.body.clone(),
        };
        match from_leg {
            Leg::A => {
                self.a_to_b.push_back(relayed);
                self.b(SipCommand::Request { request: out, to });
            }
            Leg::B => {
                self.b_to_a.push_back(relayed);
                self.a(SipCommand::Request { request: out, to });
            }
        }
    }

    /// An ACK from `leg` for our 2xx: the ACK owed to the other leg goes out now, with the
    /// body this one carried (the answer to an offer made in a 2xx).
    pub(super) fn ack_in(&mut self, leg: Leg, ack: SipMessage) {
        match leg {
            Leg::A => {
                let Some(seq) = self
                    .ack_to_b
                    .as_ref()
                    .filter(|o| o.sent.is_none())
                    .map(|o| o.seq)
                else {
                    return;
                };
                let Some((head, to)) = self.b.as_ref().and_then(|b| {
                    let dialog = b.dialog.as_ref()?;
                    Some((
                        dialog.ack(seq),
                        dialog_hop(dialog, self.targets[b.target].addr),
                    ))
                }) else {
                    return;
                };
                let out = self.carry_body(Leg::B, head, &ack).build();
                if let Some(owed) = self.ack_to_b.as_mut() {
                    owed.sent = Some(out.clone());
                }
                self.b(SipCommand::Ack { request: out, to });
            }
            Leg::B => {
                let Some(seq) = self
                    .ack_to_a
                    .as_ref()
                    .filter(|o| o.sent.is_none())
                    .map(|o| o.seq)
                else {
                    return;
                };
                let head = self.a_dialog.ack(seq);
                let out = self.carry_body(Leg::A, head, &ack).build();
                if let Some(owed) = self.ack_to_a.as_mut() {
                    owed.sent = Some(out.clone());
                }
                let to = self.a_hop;
                self.a(SipCommand::Ack { request: out, to });
            }
        }
    }
}

/// Our WebRTC offer turned into the answer to a WebRTC peer's later offer: `a=setup` is the
/// DTLS role already settled (`setup`), and the direction mirrors the peer's (its
/// `sendonly` is our `recvonly`; `inactive` stays so; otherwise `sendrecv`).
pub(super) fn reanswer(ours: &[u8], their_offer: &[u8], setup: &str) -> bytes::Bytes {
    let their = String::from_utf8_lossy(their_offer);
    let direction = their.lines().find_map(|l| match l.trim() {
        "a=sendonly" => Some("a=recvonly"),
        "a=recvonly" => Some("a=sendonly"),
        "a=inactive" => Some("a=inactive"),
        "a=sendrecv" => Some("a=sendrecv"),
        _ => None,
    });
    let mut out = String::with_capacity(ours.len() + 16);
    for line in String::from_utf8_lossy(ours).lines() {
        let line = line.trim_end();
        let replaced = if line.starts_with("a=setup:") {
            format!("a=setup:{setup}")
        } else if matches!(
            line,
            "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive"
        ) {
            direction.unwrap_or("a=sendrecv").to_string()
        } else {
            line.to_string()
        };
        out.push_str(&replaced);
        out.push_str("\r\n");
    }
    bytes::Bytes::from(out)
}
