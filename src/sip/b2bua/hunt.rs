//! Trying the route's trunks for leg B: the INVITE toward each trunk in turn, digest
//! authentication when a trunk challenges it, failover on 408, 5xx or silence, the best
//! failure mapped back to the caller, and the trunk's answer (forked 2xx included) carried
//! to leg A.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::session_timer::{session_expires, supports_timer};
use super::{
    dialled_user, dialog_hop, reason_of, seq_of, text, APhase, Action, BLeg, BState, Bridge, Leg,
    OwedAck, Progress, SessionTimer, MIN_SE,
};
use crate::sip::auth::DigestChallenge;
use crate::sip::build::MessageBuilder;
use crate::sip::core::{CoreEvent, SipCommand, ALLOW};
use crate::sip::dialog::{Dialog, DialogState};
use crate::sip::header::{self, NameAddr, Refresher};
use crate::sip::msg::{Header, HeaderName, Method, SipMessage, StartLine};

/// A display name as a quoted-string body: `\` and `"` escaped (RFC 3261 §25.1).
fn quote_display(display: &str) -> String {
    display.replace('\\', "\\\\").replace('"', "\\\"")
}

/// End cause for a final failure status.
fn cause_of(code: u16) -> &'static str {
    match code {
        486 | 600 => "busy",
        603 => "declined",
        404 | 484 | 604 => "unallocated_number",
        408 | 480 => "no_answer",
        487 => "cancelled",
        401 | 403 | 407 => "rejected",
        500..=599 => "network_failure",
        _ => "failed",
    }
}

impl Bridge {
    pub(super) fn try_next(&mut self, now: Instant) {
        let Some(index) = (self.next_target < self.targets.len()).then_some(self.next_target)
        else {
            self.fail_a(now);
            return;
        };
        self.next_target += 1;
        let b = self.start_attempt(index);
        if let Some(old) = self.b.take() {
            self.out.push_back(Action::Unroute(old.call_id));
        }
        self.b_setup = None;
        self.b = Some(b);
        self.b_deadline = Some(now + self.targets[index].invite_timeout);
        if self.cfg.parallel {
            // Ring-all: every target at once; the first to answer takes the call (and is
            // reported then), the others are cancelled; all within the ring time.
            self.ring_until = Some(
                now + self
                    .cfg
                    .ring_timeout
                    .max(self.targets[index].invite_timeout),
            );
            while self.next_target < self.targets.len() {
                let index = self.next_target;
                self.next_target += 1;
                let fork = self.start_attempt(index);
                self.forks.push(fork);
            }
        } else {
            self.out.push_back(Action::Progress(Progress::Trying {
                trunk: self.targets[index].trunk.clone(),
            }));
        }
    }

    /// Sends the INVITE toward `targets[index]` (routing its Call-ID here) and returns its
    /// leg.
    fn start_attempt(&mut self, index: usize) -> BLeg {
        self.attempts += 1;
        let target = self.targets[index].clone();
        let call_id = Bytes::from(format!("{:x}-{}@waswitch", self.seed, self.attempts));
        let user = target.user.clone().or_else(|| dialled_user(&self.a_invite));
        let uri = match (&target.uri, &user) {
            (Some(uri), _) => uri.clone(),
            (None, Some(u)) => format!("sip:{u}@{}", target.hostport),
            (None, None) => format!("sip:{}", target.hostport),
        };
        let max_forwards = self
            .a_invite
            .header(&HeaderName::MaxForwards)
            .and_then(|h| header::max_forwards(&h.value).ok())
            .unwrap_or(70)
            .saturating_sub(1);
        let from = self
            .a_invite
            .header(&HeaderName::From)
            .and_then(|h| NameAddr::parse(&h.value).ok());
        let from = match from {
            Some(NameAddr {
                display: Some(d),
                uri,
                ..
            }) => format!("\"{}\" <{uri}>", quote_display(&d)),
            Some(a) => format!("<{}>", a.uri),
            None => "<sip:anonymous@anonymous.invalid>".into(),
        };
        let mut builder = MessageBuilder::request(Method::Invite, &uri)
            .header(HeaderName::MaxForwards, max_forwards.to_string())
            .header(
                HeaderName::From,
                format!("{from};tag={:x}b{}", self.seed, self.attempts),
            )
            .header(HeaderName::To, format!("<{uri}>"))
            .header(HeaderName::CallId, call_id.clone())
            .header(HeaderName::CSeq, "1 INVITE")
            .header(HeaderName::Contact, format!("<{}>", target.contact))
            .header(HeaderName::Allow, ALLOW);
        for h in self.a_invite.headers_named(&HeaderName::PAssertedIdentity) {
            builder = builder.header(HeaderName::PAssertedIdentity, h.value.clone());
        }
        for (name, value) in &target.headers {
            builder = builder.header(name.clone(), value.clone());
        }
        if self.cfg.session_expires > 0 {
            builder = builder
                .header(HeaderName::Supported, "timer")
                .header(
                    HeaderName::SessionExpires,
                    self.cfg.session_expires.to_string(),
                )
                .header(HeaderName::MinSe, MIN_SE.to_string());
        }
        let a_invite = self.a_invite.clone();
        // A WebRTC target (a browser phone) gets our own WebRTC offer; a trunk, leg A's
        // SDP anchored at the switch.
        let invite = match &target.webrtc {
            Some(offer) => builder.body("application/sdp", offer.clone()).build(),
            None => self.carry_body(Leg::B, builder, &a_invite).build(),
        };
        let leg = BLeg {
            target: index,
            call_id: call_id.clone(),
            offer: invite.body.clone(),
            invite: invite.clone(),
            seq: 1,
            state: BState::Calling,
            dialog: None,
            authenticated: false,
            cancel_pending: false,
            timer: SessionTimer::default(),
            no_update: false,
            last_offer_from_b: None,
        };
        self.out.push_back(Action::Route(call_id));
        self.out.push_back(Action::B(
            index,
            SipCommand::Request {
                request: invite,
                to: target.addr,
            },
        ));
        leg
    }

    /// An event of a ring-all attempt besides leg B: its ringing is announced, its answer
    /// makes it leg B (the others are cancelled), its failure is noted; once every attempt
    /// failed the caller hears the best failure.
    pub(super) fn fork_event(&mut self, now: Instant, event: CoreEvent) {
        let Some(call_id) = event.call_id() else {
            return;
        };
        let Some(i) = self.forks.iter().position(|f| f.call_id == call_id) else {
            return;
        };
        let resp = match event {
            CoreEvent::Response(_, resp) => resp,
            CoreEvent::Timeout(_, request)
                if seq_of(&request).is_some_and(|c| c.method == Method::Invite) =>
            {
                let fork = self.fork_done(i);
                if !fork.cancel_pending && fork.state != BState::Done && self.ended.is_none() {
                    self.note_failure_of(fork.target, 408, "Request Timeout".into());
                    self.maybe_all_failed(now);
                }
                return;
            }
            CoreEvent::Request {
                server, request, ..
            } => {
                // Nothing is relayed from an attempt that has not answered.
                let resp = MessageBuilder::response_to(
                    &request,
                    481,
                    "Call/Transaction Does Not Exist",
                    None,
                )
                .build();
                let target = self.forks[i].target;
                self.out.push_back(Action::B(
                    target,
                    SipCommand::Respond {
                        server,
                        response: resp,
                    },
                ));
                return;
            }
            _ => return,
        };
        let (Some(code), Some(cseq)) = (resp.status(), seq_of(&resp)) else {
            return;
        };
        if cseq.method != Method::Invite {
            return;
        }
        match code {
            100 => {}
            101..=199 => {
                let fork = &mut self.forks[i];
                if fork.state == BState::Calling {
                    fork.state = BState::Proceeding;
                }
                if fork.cancel_pending {
                    fork.cancel_pending = false;
                    fork.state = BState::Done;
                    let (target, call_id) = (fork.target, fork.call_id.clone());
                    self.out
                        .push_back(Action::B(target, SipCommand::Cancel { call_id }));
                    return;
                }
                if self.a_phase == APhase::Offered && !self.announced_ringing {
                    self.announced_ringing = true;
                    let head = self.a_response(180, "Ringing").build();
                    let server = self.a_server;
                    self.respond_a(server, head);
                    self.out.push_back(Action::Progress(Progress::Ringing));
                }
            }
            200..=299 => {
                let fork = self.fork_done(i);
                let cancelled = fork.cancel_pending || fork.state == BState::Done;
                if cancelled || self.ended.is_some() || self.a_phase != APhase::Offered {
                    // Answered as it was cancelled: acknowledge and hang it up.
                    if let Ok(dialog) = Dialog::uac(&fork.invite, &resp) {
                        let fallback = self.targets[fork.target].addr;
                        let (target, seq) = (fork.target, fork.invite_seq());
                        self.ack_and_bye_on(target, dialog, seq, fallback);
                    }
                    return;
                }
                // The winner becomes leg B; the previous leg B joins the cancelled.
                if let Some(old) = self.b.replace(fork) {
                    self.forks.push(old);
                }
                self.b_answered(now, resp);
            }
            _ => {
                let fork = self.fork_done(i);
                if !fork.cancel_pending && fork.state != BState::Done && self.ended.is_none() {
                    self.note_failure_of(fork.target, code, reason_of(&resp));
                    self.maybe_all_failed(now);
                }
            }
        }
    }

    /// Leg B is settled: the call is too, unless ring-all attempts still owe their final
    /// answer (the last of them settles it).
    fn settled_unless_forks(&mut self) {
        if self.forks.is_empty() {
            self.settled();
        }
    }

    /// Ring-all attempt `i` has its final answer: it goes, with its route; a call that
    /// ended and was only waiting for it is settled.
    fn fork_done(&mut self, i: usize) -> BLeg {
        let fork = self.forks.remove(i);
        self.out.push_back(Action::Unroute(fork.call_id.clone()));
        let b_pending = self
            .b
            .as_ref()
            .is_some_and(|b| matches!(b.state, BState::Calling | BState::Proceeding));
        if self.linger.is_some() && self.forks.is_empty() && !b_pending {
            self.settled();
        }
        fork
    }

    /// Cancels every ring-all attempt besides leg B (one not yet ringing is cancelled
    /// when its first provisional arrives).
    pub(super) fn cancel_forks(&mut self) {
        for fork in &mut self.forks {
            match fork.state {
                BState::Calling => fork.cancel_pending = true,
                BState::Proceeding => {
                    fork.state = BState::Done;
                    self.out.push_back(Action::B(
                        fork.target,
                        SipCommand::Cancel {
                            call_id: fork.call_id.clone(),
                        },
                    ));
                }
                BState::Confirmed | BState::Done => {}
            }
        }
    }

    /// Leg B failed in ring-all: an attempt still ringing takes its place. True when the
    /// call goes on.
    fn promote_fork(&mut self, now: Instant) -> bool {
        let live = self
            .forks
            .iter()
            .position(|f| !f.cancel_pending && f.state != BState::Done);
        match live {
            Some(i) => {
                let fork = self.forks.remove(i);
                if let Some(old) = self.b.replace(fork) {
                    self.out.push_back(Action::Unroute(old.call_id));
                }
                // The ring time goes on for the attempts still ringing.
                if self.b_deadline.is_none() {
                    self.b_deadline = self.ring_until.or(Some(now + self.cfg.ring_timeout));
                }
                true
            }
            None => false,
        }
    }

    /// A ring-all attempt failed: when leg B and every other attempt have too, the caller
    /// hears the best failure.
    fn maybe_all_failed(&mut self, now: Instant) {
        let b_alive = self.b.as_ref().is_some_and(|b| b.state != BState::Done);
        if !b_alive && !self.promote_fork(now) && self.ended.is_none() {
            self.fail_a(now);
        }
    }

    /// Remembers a trunk's failure if it is the best to report (RFC 3261 §16.7.6: 6xx
    /// first, then the lowest class).
    pub(super) fn note_failure(&mut self, code: u16, reason: String) {
        let target = self.b.as_ref().map_or(usize::MAX, |b| b.target);
        self.note_failure_of(target, code, reason);
    }

    /// [`note_failure`](Self::note_failure) of `targets[target]`.
    pub(super) fn note_failure_of(&mut self, target: usize, code: u16, reason: String) {
        let trunk = self
            .targets
            .get(target)
            .map(|t| t.trunk.clone())
            .unwrap_or_default();
        let rank = |c: u16| match c {
            600..=699 => 0,
            400..=499 => 1,
            500..=599 => 2,
            _ => 3,
        };
        let better = match &self.best {
            None => true,
            Some((best, _, _)) => rank(code) < rank(*best),
        };
        if better {
            self.best = Some((code, reason, trunk));
        }
    }

    /// Every trunk failed: answer the caller with the best failure.
    fn fail_a(&mut self, now: Instant) {
        let (code, reason, trunk) =
            self.best
                .clone()
                .unwrap_or((503, "Service Unavailable".into(), String::new()));
        // A 503 from a trunk says the trunk is unavailable, not this switch (§16.7 item 6).
        let (status, phrase) = if code == 503 {
            (500, "Server Internal Error - trunk unavailable".to_string())
        } else {
            (code, reason.clone())
        };
        if self.a_phase == APhase::Offered {
            let mut resp = self.a_response(status, &phrase);
            if !trunk.is_empty() {
                resp = resp.header(
                    HeaderName::Reason,
                    format!(
                        "SIP;cause={code};text=\"{} from {trunk}\"",
                        reason.replace('"', "'")
                    ),
                );
            }
            let server = self.a_server;
            self.respond_a(server, resp.build());
            self.a_phase = APhase::Done;
        }
        self.end(now, None, cause_of(code));
    }

    pub(super) fn b_invite_response(&mut self, now: Instant, resp: SipMessage) {
        let Some(code) = resp.status() else {
            return;
        };
        let Some(b) = self.b.as_mut() else {
            return;
        };
        match code {
            100..=199 => {
                if b.state == BState::Calling {
                    b.state = BState::Proceeding;
                    self.b_deadline = Some(now + self.cfg.ring_timeout);
                }
                if b.cancel_pending {
                    b.cancel_pending = false;
                    let call_id = b.call_id.clone();
                    self.b(SipCommand::Cancel { call_id });
                    return;
                }
                if code == 100 || self.a_phase != APhase::Offered {
                    return;
                }
                if let Ok(d) = Dialog::uac(&b.invite, &resp) {
                    if b.dialog.is_none() {
                        b.dialog = Some(d);
                    }
                }
                let head = self.a_response(code, &reason_of(&resp));
                let relayed = self.carry_body(Leg::A, head, &resp).build();
                let server = self.a_server;
                self.respond_a(server, relayed);
                if !self.announced_ringing {
                    self.announced_ringing = true;
                    self.out.push_back(Action::Progress(Progress::Ringing));
                }
            }
            200..=299 => self.b_answered(now, resp),
            _ => {
                b.state = BState::Done;
                self.b_deadline = None;
                if self.ended.is_some() || self.a_phase != APhase::Offered {
                    // Our CANCEL (or hangup) took effect.
                    self.settled_unless_forks();
                    return;
                }
                if matches!(code, 401 | 407)
                    && !b.authenticated
                    && self.retry_with_credentials(now, &resp)
                {
                    return;
                }
                let (code, reason) = match code {
                    // The trunk's challenge is for our credentials, which the caller cannot
                    // answer: refuse the call instead of passing the challenge on.
                    401 | 407 => (
                        403,
                        "Forbidden - trunk refused the switch's credentials".to_string(),
                    ),
                    _ => (code, reason_of(&resp)),
                };
                self.note_failure(code, reason);
                if self.cfg.parallel {
                    // Ring-all: the attempts still ringing go on.
                    if !self.promote_fork(now) {
                        self.fail_a(now);
                    }
                } else if code == 408 || (500..=599).contains(&code) {
                    self.try_next(now);
                } else {
                    self.fail_a(now);
                }
            }
        }
    }

    /// Answers a trunk's digest challenge by re-sending the INVITE with credentials (same
    /// Call-ID, next CSeq). False when the trunk has none or the challenge is unusable.
    fn retry_with_credentials(&mut self, now: Instant, challenge: &SipMessage) -> bool {
        let Some(b) = self.b.as_mut() else {
            return false;
        };
        let Some(creds) = self.targets[b.target].credentials.clone() else {
            return false;
        };
        let (challenge_header, answer_header) = if challenge.status() == Some(407) {
            (
                HeaderName::ProxyAuthenticate,
                HeaderName::ProxyAuthorization,
            )
        } else {
            (HeaderName::WwwAuthenticate, HeaderName::Authorization)
        };
        let Some(parsed) = challenge
            .headers_named(&challenge_header)
            .find_map(|h| DigestChallenge::parse(&h.value).ok())
        else {
            return false;
        };
        let StartLine::Request { uri, .. } = &b.invite.start else {
            return false;
        };
        let cnonce = format!("{:x}{:x}", self.seed, b.seq);
        let authorization = parsed.respond(
            "INVITE",
            &text(uri),
            &creds.username,
            &creds.password,
            &cnonce,
            1,
        );
        b.seq += 1;
        b.authenticated = true;
        b.state = BState::Calling;
        let mut invite = b.invite.clone();
        invite.headers.retain(|h| {
            h.name != HeaderName::Authorization && h.name != HeaderName::ProxyAuthorization
        });
        for h in invite.headers.iter_mut() {
            if h.name == HeaderName::CSeq {
                *h = Header::new(HeaderName::CSeq, format!("{} INVITE", b.seq));
            }
        }
        invite
            .headers
            .push(Header::new(answer_header, authorization));
        b.invite = invite.clone();
        let to = self.targets[b.target].addr;
        self.b_deadline = Some(now + self.targets[b.target].invite_timeout);
        self.b(SipCommand::Request {
            request: invite,
            to,
        });
        true
    }

    fn b_answered(&mut self, now: Instant, resp: SipMessage) {
        let Some(b) = self.b.as_mut() else {
            return;
        };
        let fallback = self.targets[b.target].addr;
        let Ok(mut dialog) = Dialog::uac(&b.invite, &resp) else {
            return;
        };
        dialog.confirm(Some(&resp));
        let seq = b.invite_seq();
        let already = b
            .dialog
            .as_ref()
            .filter(|d| d.state == DialogState::Confirmed);
        if let Some(confirmed) = already {
            if confirmed.remote_tag == dialog.remote_tag {
                // A retransmitted 2xx: acknowledge it again once we have (§13.2.2.4).
                if let Some(ack) = self.ack_to_b.as_ref().and_then(|a| a.sent.clone()) {
                    let to = dialog_hop(confirmed, fallback);
                    self.b(SipCommand::Ack { request: ack, to });
                }
            } else {
                // A second fork answered: acknowledge and hang it up (§13.2.2.4).
                self.ack_and_bye(dialog, seq, fallback);
            }
            return;
        }
        b.state = BState::Confirmed;
        let winner = b.target;
        self.b_deadline = None;
        if self.cfg.parallel {
            // Ring-all: the others stop ringing; the winner is the one reported.
            self.cancel_forks();
            self.out.push_back(Action::Progress(Progress::Trying {
                trunk: self.targets[winner].trunk.clone(),
            }));
        }
        let Some(b) = self.b.as_mut() else {
            return;
        };
        if self.ended.is_some() || self.a_phase != APhase::Offered {
            // The caller went away while the trunk answered: hang the trunk up.
            self.ack_and_bye(dialog, seq, fallback);
            self.b = self.b.take().map(|mut b| {
                b.state = BState::Done;
                b
            });
            self.settled_unless_forks();
            return;
        }
        // Session timer toward B: we refresh when B says so (or says nothing of who).
        if let Some(se) = session_expires(&resp) {
            b.timer.interval = se.delta;
            b.timer.we_refresh = se.refresher != Some(Refresher::Uas);
            b.timer.arm(now);
        }
        b.no_update = !resp
            .headers_named(&HeaderName::Allow)
            .any(|h| header::tokens(&h.value).is_ok_and(|t| t.iter().any(|m| m == "UPDATE")));
        b.dialog = Some(dialog);
        self.ack_to_b = Some(OwedAck { seq, sent: None });
        // Answer the caller with the trunk's SDP.
        let mut answer = self
            .carry_body(Leg::A, self.a_response(200, "OK"), &resp)
            .header(HeaderName::Allow, ALLOW);
        if self.a_timer.interval > 0 {
            let who = if self.a_timer.we_refresh {
                "uas"
            } else {
                "uac"
            };
            answer = answer.header(
                HeaderName::SessionExpires,
                format!("{};refresher={who}", self.a_timer.interval),
            );
            if supports_timer(&self.a_invite) {
                answer = answer.header(HeaderName::Require, "timer");
            }
            self.a_timer.arm(now);
        }
        let answer = answer.build();
        self.a_last_answer = answer.body.clone();
        let server = self.a_server;
        self.respond_a(server, answer);
        self.a_phase = APhase::Answered;
        self.a_dialog.confirm(None);
        self.out.push_back(Action::Progress(Progress::Answered));
    }

    /// Acknowledges a 2xx that will not be used and ends its dialog.
    fn ack_and_bye(&mut self, dialog: Dialog, seq: u32, fallback: SocketAddr) {
        if let Some(target) = self.b.as_ref().map(|b| b.target) {
            self.ack_and_bye_on(target, dialog, seq, fallback);
        }
    }

    /// [`ack_and_bye`](Self::ack_and_bye) toward `targets[target]`.
    fn ack_and_bye_on(
        &mut self,
        target: usize,
        mut dialog: Dialog,
        seq: u32,
        fallback: SocketAddr,
    ) {
        let to = dialog_hop(&dialog, fallback);
        let ack = dialog.ack(seq).build();
        self.out
            .push_back(Action::B(target, SipCommand::Ack { request: ack, to }));
        let bye = dialog.request(Method::Bye, None).build();
        self.out
            .push_back(Action::B(target, SipCommand::Request { request: bye, to }));
    }

    pub(super) fn b_timeout(&mut self, now: Instant, request: &SipMessage) {
        let method = seq_of(request).map(|c| c.method);
        if method == Some(Method::Invite) {
            let is_initial = self
                .b
                .as_ref()
                .is_some_and(|b| b.state != BState::Confirmed && b.state != BState::Done);
            if is_initial {
                self.b_give_up(now, 408, "Request Timeout - no answer from trunk");
                return;
            }
        }
        self.relayed_timeout(now, Leg::B, request);
    }

    /// Leg B's INVITE failed without a final response (timeout).
    pub(super) fn b_give_up(&mut self, now: Instant, code: u16, reason: &str) {
        let Some(b) = self.b.as_mut() else {
            return;
        };
        b.state = BState::Done;
        self.b_deadline = None;
        if self.ended.is_some() {
            self.settled_unless_forks();
            return;
        }
        self.note_failure(code, reason.into());
        if self.cfg.parallel {
            self.maybe_all_failed(now);
        } else {
            self.try_next(now);
        }
    }
}
