//! One call through the back-to-back user agent, sans-IO.
//!
//! A [`Bridge`] joins two independent legs: the caller's dialog, in which the switch is the
//! UAS (leg A), and the dialog the switch creates toward a trunk, in which it is the UAC
//! (leg B). Each leg has its own Call-ID, tags, CSeq counters and route set; nothing of one
//! leaks into the other except what a B2BUA must carry across (caller identity, the dialled
//! user, SDP bodies, response codes).
//!
//! The bridge takes [`CoreEvent`]s of either leg and the time, and yields [`Action`]s:
//! commands for the SIP core of a leg, and progress for the call. It owns:
//! - trying the route's trunks in order: a trunk that answers 408 or 5xx, or nothing at all
//!   within its `invite_timeout`, is skipped for the next one; the best failure is mapped
//!   back to the caller (a 503 from a trunk becomes 500, RFC 3261 §16.7, with the trunk's
//!   status in a `Reason` header);
//! - digest authentication toward trunks that challenge the INVITE (401/407);
//! - CANCEL before answer, BYE from either side, forked 2xx (acknowledged and hung up);
//! - re-INVITE, UPDATE and INFO passed through with their bodies, the 2xx of a passed-on
//!   INVITE acknowledged toward the far side when the near side acknowledges ours (so an
//!   answer in the ACK, for offer-less INVITEs, is carried across);
//! - session timers (RFC 4028): answered toward the caller (who refreshes), requested toward
//!   the trunk (the switch refreshes when the trunk lets it), and a session that is not
//!   refreshed in time is ended.
//!
//! Until the media plane anchors calls, SDP is passed through unchanged.
//!
//! This file holds the bridge's types and its entry points (start, events, timeouts,
//! hangup); the work is done in `hunt` (trying trunks for leg B), `relay` (requests,
//! responses, ACKs and SDP between the legs), `session_timer` (RFC 4028) and `teardown`
//! (CANCEL, BYE and the end report).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::build::MessageBuilder;
use super::core::{CoreEvent, ServerId, SipCommand};
use super::dialog::Dialog;
use super::header::{CSeq, Refresher};
use super::msg::{HeaderName, Method, SipMessage, StartLine};
use super::txn::TimerConfig;
use super::uri::{Host, SipUri};

mod hunt;
mod relay;
mod session_timer;
mod teardown;

use session_timer::session_expires;

/// The smallest session interval the switch accepts (RFC 4028 §4 minimum).
pub(crate) const MIN_SE: u32 = 90;

/// Credentials for a trunk that challenges our requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// A trunk to try for leg B.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Trunk name (CDRs, logs).
    pub trunk: String,
    /// The trunk's address.
    pub addr: SocketAddr,
    /// Host and port written in the Request-URI (`127.0.0.1:5070`).
    pub hostport: String,
    /// The user to call at this trunk (its URI's user part: an extension, a queue); `None`:
    /// the number the caller dialled.
    pub user: Option<String>,
    /// Our Contact on the listener that reaches this trunk.
    pub contact: String,
    /// Credentials for a trunk that challenges.
    pub credentials: Option<Credentials>,
    /// How long to wait for any response to the INVITE before trying the next trunk.
    pub invite_timeout: Duration,
    /// Headers added to the INVITE toward this trunk (who is calling, for a WhatsApp call).
    pub headers: Vec<(HeaderName, String)>,
    /// The Request-URI, when it is not the user at `hostport` (an agent's registered
    /// Contact).
    pub uri: Option<String>,
    /// Our own WebRTC offer for this target (an agent's browser phone): sent instead of
    /// leg A's SDP, and its answer reported as [`Action::WebRtcAnswer`], never anchored.
    pub webrtc: Option<Bytes>,
}

/// Settings of every bridge on a node.
#[derive(Debug, Clone)]
pub(crate) struct BridgeConfig {
    /// Transaction timers (2xx retransmission toward the caller follows T1/T2).
    pub timers: TimerConfig,
    /// How long the called side may ring before the call is abandoned (480 to the caller).
    pub ring_timeout: Duration,
    /// Session interval requested toward trunks, in seconds (RFC 4028); 0 disables.
    pub session_expires: u32,
    /// Ring every target at once (a queue's ring-all): the first to answer takes the
    /// call, the others are cancelled; otherwise targets are tried in turn.
    pub parallel: bool,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            timers: TimerConfig::default(),
            ring_timeout: Duration::from_secs(120),
            session_expires: 1800,
            parallel: false,
        }
    }
}

/// Which leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leg {
    /// The caller's leg (we are UAS).
    A,
    /// The leg toward a trunk (we are UAC).
    B,
}

/// How a call progressed, for the call's supervisor and CDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Progress {
    /// A trunk was chosen and offered the call.
    Trying {
        /// Its name.
        trunk: String,
    },
    /// The called side is alerting.
    Ringing,
    /// The called side answered.
    Answered,
    /// The call is over and both legs are settled; the bridge has nothing left to do.
    Ended {
        /// Which side ended it (`None`: the switch).
        by: Option<Leg>,
        /// End cause (`normal_clearing`, `busy`, `cancelled`, `no_answer`, ...).
        cause: String,
    },
}

/// What the bridge asks of its driver.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Run this command on leg A's SIP core.
    A(SipCommand),
    /// Run this command on the SIP core that reaches `targets[index]`.
    B(usize, SipCommand),
    /// Send events with this Call-ID to this bridge from now on.
    Route(Bytes),
    /// No more events for this Call-ID.
    Unroute(Bytes),
    /// The call progressed.
    Progress(Progress),
    /// What one leg's SDP says about its media (anchored calls).
    Media(Leg, crate::sdp::Audio),
    /// How the call's audio crosses the switch, once both legs' SDP are known and
    /// whenever it changes (anchored calls).
    MediaPlan(crate::sdp::MediaPlan),
    /// Leg B (a WebRTC target) sent SDP: its answer to our offer (`first`), or a later
    /// offer of its own (hold, resume), whose direction it is.
    WebRtcSdp {
        /// The SDP.
        sdp: Bytes,
        /// The answer to our offer.
        first: bool,
    },
}

pub(crate) use crate::sdp::Anchor;

/// Most requests relayed one way at once, each waiting for its answer (INFO carrying
/// DTMF can follow each other faster than a trunk answers); one more gets 500 with
/// Retry-After.
const MAX_RELAYED: usize = 8;

/// A request received on one leg, waiting for the other leg's answer.
#[derive(Debug, Clone)]
struct Relayed {
    /// Leg and transaction to answer.
    server: ServerId,
    /// The request as received (for building the response).
    request: SipMessage,
    /// CSeq number of the request we sent on the other leg.
    sent_seq: u32,
    /// Its method.
    method: Method,
    /// The body we sent on the other leg (after anchoring).
    sent_body: Bytes,
}

/// An ACK owed to the far side of a relayed INVITE, sent when the near side acknowledges.
#[derive(Debug, Clone)]
struct OwedAck {
    /// CSeq number of the INVITE we sent (the ACK reuses it).
    seq: u32,
    /// Sent already (retransmitted 2xx get it again).
    sent: Option<SipMessage>,
}

/// Session timer of one leg (RFC 4028).
#[derive(Debug, Clone, Copy, Default)]
struct SessionTimer {
    /// Session interval, seconds (0: none).
    interval: u32,
    /// We refresh on this leg.
    we_refresh: bool,
    /// Next refresh (ours) or expiry (theirs).
    due: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BState {
    /// INVITE sent, nothing back.
    Calling,
    /// A provisional came back.
    Proceeding,
    /// Answered: the dialog is confirmed.
    Confirmed,
    /// Failed, cancelled or hung up.
    Done,
}

struct BLeg {
    target: usize,
    call_id: Bytes,
    invite: SipMessage,
    seq: u32,
    state: BState,
    dialog: Option<Dialog>,
    /// Authorization already tried for this trunk.
    authenticated: bool,
    /// A CANCEL is owed once a provisional arrives.
    cancel_pending: bool,
    /// The last SDP we sent toward B (re-sent on session refresh by re-INVITE).
    offer: Bytes,
    timer: SessionTimer,
    /// B does not allow UPDATE: refresh with re-INVITE.
    no_update: bool,
    /// A WebRTC leg B's latest offer of its own (hold, resume), which our answer mirrors.
    last_offer_from_b: Option<Bytes>,
}

/// Phase of the caller's leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum APhase {
    /// INVITE received, not answered finally.
    Offered,
    /// 2xx sent.
    Answered,
    /// Final non-2xx sent, BYE exchanged, or cancelled.
    Done,
}

/// One call through the B2BUA.
pub(crate) struct Bridge {
    cfg: BridgeConfig,
    seed: u64,
    attempts: u32,
    targets: Vec<Target>,
    next_target: usize,
    /// Caller's INVITE transaction.
    a_server: ServerId,
    a_invite: SipMessage,
    a_dialog: Dialog,
    a_phase: APhase,
    /// Where in-dialog requests toward A go (the flow it came on for TCP, else its Contact).
    a_hop: SocketAddr,
    a_reliable: bool,
    a_contact: String,
    a_timer: SessionTimer,
    /// The 2xx we sent A for its INVITE, retransmitted by the core until A's ACK.
    a_last_answer: Bytes,
    /// The last SDP A sent (a re-INVITE with the same one is a session refresh).
    a_last_offer: Bytes,
    b: Option<BLeg>,
    /// Best failure so far from the trunks tried: code, reason, trunk.
    best: Option<(u16, String, String)>,
    /// Requests relayed from A to B, awaiting B's final responses (at most MAX_RELAYED).
    a_to_b: VecDeque<Relayed>,
    /// Requests relayed from B to A, awaiting A's final responses (at most MAX_RELAYED).
    b_to_a: VecDeque<Relayed>,
    /// ACK owed to B for a 2xx it sent to an INVITE we relayed from A.
    ack_to_b: Option<OwedAck>,
    /// ACK owed to A for a 2xx it sent to an INVITE we relayed from B.
    ack_to_a: Option<OwedAck>,
    /// Deadline of leg B's INVITE (invite timeout, then ring timeout).
    b_deadline: Option<Instant>,
    /// Ended: set once, with who and why.
    ended: Option<(Option<Leg>, String)>,
    /// Time to give up waiting for leg B to settle after the call ended.
    linger: Option<Instant>,
    out: VecDeque<Action>,
    announced_ringing: bool,
    anchor: Option<Anchor>,
    /// The response being relayed to A carries the answer to remember.
    answer_to_a_pending: bool,
    /// The audio formats of each leg's latest SDP (A, B), and the plan they make.
    formats: [Option<Vec<crate::sdp::Format>>; 2],
    plan: Option<crate::sdp::MediaPlan>,
    /// An offer carried across and not yet answered: the leg that made it and its audio.
    /// The answer narrows it (the offerer's media is what both kept); a later offer that is
    /// refused never reaches the media.
    offer_pending: Option<(Leg, crate::sdp::Audio)>,
    /// A WebRTC leg B's DTLS role from its answer (`active` or `passive`): our later
    /// answers to its offers keep the opposite.
    b_setup: Option<String>,
    /// Leg A is a browser phone: our WebRTC answer to its offer (every SDP toward leg A),
    /// and its latest offer (which our answers mirror the direction of).
    a_webrtc: Option<(Bytes, Bytes)>,
    /// Ring-all attempts besides leg B, ringing at once.
    forks: Vec<BLeg>,
    /// When ring-all gives up on every attempt (whichever is leg B by then).
    ring_until: Option<Instant>,
}

/// Why an INVITE cannot be bridged; answered with this status before any call exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Extra headers (Min-SE on 422).
    pub headers: Vec<(HeaderName, String)>,
}

impl Refusal {
    fn new(status: u16, reason: &str) -> Self {
        Self {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// The response to `invite` that carries this refusal.
    pub(crate) fn response(&self, invite: &SipMessage, to_tag: &str) -> SipMessage {
        let mut b = MessageBuilder::response_to(invite, self.status, &self.reason, Some(to_tag));
        for (name, value) in &self.headers {
            b = b.header(name.clone(), value.clone());
        }
        b.build()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn seq_of(msg: &SipMessage) -> Option<CSeq> {
    CSeq::parse(&msg.header(&HeaderName::CSeq)?.value).ok()
}

/// The user part of a request's Request-URI (the dialled number).
pub(crate) fn dialled_user(invite: &SipMessage) -> Option<String> {
    let StartLine::Request { uri, .. } = &invite.start else {
        return None;
    };
    SipUri::parse(&String::from_utf8_lossy(uri)).ok()?.user
}

/// Where a request for `uri` goes: its address when it names an IP literal, `fallback`
/// otherwise (the switch resolves no names on the call path).
fn hop(uri: &str, fallback: SocketAddr) -> SocketAddr {
    let Ok(u) = SipUri::parse(uri) else {
        return fallback;
    };
    let ip: IpAddr = match u.host {
        Host::V4(a) => a.into(),
        Host::V6(a) => a.into(),
        _ => return fallback,
    };
    SocketAddr::new(ip, u.port.unwrap_or(5060))
}

/// The next hop of a dialog: its first Route, else the remote target.
fn dialog_hop(dialog: &Dialog, fallback: SocketAddr) -> SocketAddr {
    let first = dialog
        .route_set
        .first()
        .map(|r| r.trim_start_matches('<').trim_end_matches('>').to_string());
    hop(first.as_deref().unwrap_or(&dialog.remote_target), fallback)
}

/// The reason phrase of a response.
fn reason_of(resp: &SipMessage) -> String {
    match &resp.start {
        StartLine::Response { reason, .. } => text(reason),
        StartLine::Request { .. } => String::new(),
    }
}

impl Bridge {
    /// Prepares bridging `invite` (received as `server`, from `from`; `a_reliable` when it
    /// came over TCP/TLS) to `targets`; [`begin`](Self::begin) offers it to the first. `seed` makes tags and Call-IDs unique (pass a
    /// random value); `a_contact` is our Contact on the caller's listener. The caller is
    /// refused when the INVITE cannot start a dialog or its session interval is too short.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        cfg: BridgeConfig,
        seed: u64,
        server: ServerId,
        invite: SipMessage,
        from: SocketAddr,
        a_reliable: bool,
        a_contact: String,
        targets: Vec<Target>,
    ) -> Result<Bridge, (Refusal, String)> {
        let tag = format!("{seed:x}");
        let refuse = |r: Refusal| Err((r, tag.clone()));
        let a_dialog = match Dialog::uas(&invite, &tag) {
            Ok(d) => d,
            Err(e) => return refuse(Refusal::new(400, &format!("Bad Request - {e}"))),
        };
        let mut a_timer = SessionTimer::default();
        if let Some(se) = session_expires(&invite) {
            if se.delta < MIN_SE {
                let mut r = Refusal::new(422, "Session Interval Too Small");
                r.headers.push((HeaderName::MinSe, MIN_SE.to_string()));
                return refuse(r);
            }
            a_timer.interval = se.delta;
            // The caller refreshes unless it asked us to (RFC 4028 §9).
            a_timer.we_refresh = se.refresher == Some(Refresher::Uas);
        }
        if targets.is_empty() {
            return refuse(Refusal::new(
                503,
                "Service Unavailable - no trunk available",
            ));
        }
        let a_hop = if a_reliable {
            from
        } else {
            hop(&a_dialog.remote_target, from)
        };
        let bridge = Bridge {
            cfg,
            seed,
            attempts: 0,
            targets,
            next_target: 0,
            a_server: server,
            a_last_offer: invite.body.clone(),
            a_invite: invite,
            a_dialog,
            a_phase: APhase::Offered,
            a_hop,
            a_reliable,
            a_contact,
            a_timer,
            a_last_answer: Bytes::new(),
            b: None,
            best: None,
            a_to_b: VecDeque::new(),
            b_to_a: VecDeque::new(),
            ack_to_b: None,
            ack_to_a: None,
            b_deadline: None,
            ended: None,
            linger: None,
            out: VecDeque::new(),
            announced_ringing: false,
            anchor: None,
            answer_to_a_pending: false,
            formats: [None, None],
            offer_pending: None,
            plan: None,
            b_setup: None,
            a_webrtc: None,
            forks: Vec::new(),
            ring_until: None,
        };
        Ok(bridge)
    }

    /// Offers the call to the first trunk. With `anchor`, every SDP crossing the bridge is
    /// rewritten to point at the switch, and each leg's media is reported as
    /// [`Action::Media`]; without, SDP passes through unchanged.
    pub(crate) fn begin(&mut self, now: Instant, anchor: Option<Anchor>) {
        self.anchor = anchor;
        self.try_next(now);
    }

    /// Leg A's SDP, as its INVITE carried it.
    pub(crate) fn a_offer(&self) -> &Bytes {
        &self.a_invite.body
    }

    /// Leg A offered WebRTC (a browser phone: DTLS-SRTP with ICE).
    pub(crate) fn a_offer_is_webrtc(&self) -> bool {
        crate::sdp::is_webrtc(&self.a_invite.body)
    }

    /// Our WebRTC answer to leg A's offer: every SDP toward leg A is it (its direction
    /// mirroring leg A's latest offer), never the far side's.
    pub(crate) fn set_a_webrtc(&mut self, answer: Bytes) {
        self.a_webrtc = Some((answer, self.a_invite.body.clone()));
    }

    /// The targets (to map [`Action::B`] indexes to transports).
    pub(crate) fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Leg A's Call-ID.
    #[cfg(test)]
    pub(crate) fn a_call_id(&self) -> &str {
        &self.a_dialog.call_id
    }

    /// The next action.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// The earliest deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        [
            self.b_deadline,
            self.a_timer.due,
            self.b.as_ref().and_then(|b| b.timer.due),
            self.linger,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Over: nothing more will happen.
    pub(crate) fn is_done(&self) -> bool {
        self.ended.is_some() && self.linger.is_none()
    }

    fn a(&mut self, cmd: SipCommand) {
        self.out.push_back(Action::A(cmd));
    }

    fn b(&mut self, cmd: SipCommand) {
        if let Some(b) = &self.b {
            self.out.push_back(Action::B(b.target, cmd));
        }
    }

    fn respond_a(&mut self, server: ServerId, response: SipMessage) {
        self.a(SipCommand::Respond { server, response });
    }

    /// A response to A's INVITE with our tag and Contact.
    fn a_response(&self, code: u16, reason: &str) -> MessageBuilder {
        MessageBuilder::response_to(&self.a_invite, code, reason, Some(&self.a_dialog.local_tag))
            .header(HeaderName::Contact, format!("<{}>", self.a_contact))
    }

    /// An event for this call from either leg's core (routed by Call-ID).
    pub(crate) fn handle_event(&mut self, now: Instant, event: CoreEvent) {
        let call_id = event.call_id();
        let leg = match call_id {
            Some(c) if c[..] == *self.a_dialog.call_id.as_bytes() => Leg::A,
            Some(c) if self.b.as_ref().is_some_and(|b| b.call_id == c) => Leg::B,
            Some(c) if self.forks.iter().any(|f| f.call_id == c) => {
                self.fork_event(now, event);
                return;
            }
            _ => {
                // Responses of an abandoned attempt are unrouted before they arrive; an
                // in-dialog request that gets here matches neither leg.
                if let CoreEvent::Request {
                    server, request, ..
                } = event
                {
                    let resp = MessageBuilder::response_to(
                        &request,
                        481,
                        "Call/Transaction Does Not Exist",
                        None,
                    )
                    .build();
                    self.a(SipCommand::Respond {
                        server,
                        response: resp,
                    });
                }
                return;
            }
        };
        match (leg, event) {
            (Leg::B, CoreEvent::Response(_, resp)) => self.b_response(now, resp),
            (Leg::A, CoreEvent::Response(_, resp)) => self.a_response_in(now, resp),
            (Leg::B, CoreEvent::Timeout(_, req)) => self.b_timeout(now, &req),
            (Leg::A, CoreEvent::Timeout(_, req)) => self.relayed_timeout(now, Leg::A, &req),
            (
                leg,
                CoreEvent::Request {
                    server, request, ..
                },
            ) => self.request_in(now, leg, server, request),
            (Leg::A, CoreEvent::Cancelled { server, .. }) if server == self.a_server => {
                self.cancelled(now)
            }
            (leg, CoreEvent::Ack { request, .. }) => self.ack_in(leg, request),
            (Leg::A, CoreEvent::AckTimeout { server, .. }) if server == self.a_server => {
                self.hangup(now, "ack_timeout");
            }
            _ => {}
        }
    }

    fn b_response(&mut self, now: Instant, resp: SipMessage) {
        let Some(cseq) = seq_of(&resp) else {
            return;
        };
        let is_invite_txn = self
            .b
            .as_ref()
            .is_some_and(|b| cseq.method == Method::Invite && cseq.seq == b.invite_seq());
        if is_invite_txn {
            self.b_invite_response(now, resp);
            return;
        }
        self.relayed_response(now, Leg::B, resp);
    }

    fn a_response_in(&mut self, now: Instant, resp: SipMessage) {
        self.relayed_response(now, Leg::A, resp);
    }

    /// Ends the call from the switch's side (operator, shutdown, timer).
    pub(crate) fn hangup(&mut self, now: Instant, cause: &str) {
        let reason = format!("SIP;cause=480;text=\"{cause}\"");
        self.hangup_with(now, cause, (480, "Temporarily Unavailable"), &reason);
    }

    /// [`hangup`](Self::hangup), refusing a caller still waiting with `status` and
    /// `Reason: reason` (a policy that ended the call, say).
    pub(crate) fn hangup_with(
        &mut self,
        now: Instant,
        cause: &str,
        status: (u16, &str),
        reason: &str,
    ) {
        if self.ended.is_some() {
            return;
        }
        if self.a_phase == APhase::Offered {
            let resp = self
                .a_response(status.0, status.1)
                .header(HeaderName::Reason, reason.to_string())
                .build();
            let server = self.a_server;
            self.respond_a(server, resp);
            self.a_phase = APhase::Done;
        }
        self.bye_a();
        self.end_b(now);
        self.end(now, None, cause);
    }

    /// Time has reached [`poll_timeout`](Self::poll_timeout).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.linger.is_some_and(|at| now >= at) {
            // The trunk never settled after our CANCEL: stop waiting (ring-all attempts
            // that never rang are abandoned).
            for fork in std::mem::take(&mut self.forks) {
                self.out.push_back(Action::Unroute(fork.call_id.clone()));
                if fork.state == BState::Calling {
                    self.out.push_back(Action::B(
                        fork.target,
                        SipCommand::Abandon {
                            call_id: fork.call_id,
                        },
                    ));
                }
            }
            if let Some(b) = self.b.as_mut() {
                if b.state == BState::Calling {
                    let call_id = b.call_id.clone();
                    self.b(SipCommand::Abandon { call_id });
                }
                if let Some(b) = self.b.as_mut() {
                    b.state = BState::Done;
                }
            }
            self.settled();
            return;
        }
        if self.b_deadline.is_some_and(|at| now >= at) {
            self.b_deadline = None;
            let state = match self.b.as_ref().map(|b| b.state) {
                // Ring-all: nobody answered in time, whoever rang or not.
                Some(BState::Calling) if self.cfg.parallel => Some(BState::Proceeding),
                other => other,
            };
            match state {
                Some(BState::Calling) => {
                    // Nothing at all from the trunk in time: try the next one.
                    if let Some(call_id) = self.b.as_ref().map(|b| b.call_id.clone()) {
                        self.b(SipCommand::Abandon { call_id });
                    }
                    self.b_give_up(now, 408, "Request Timeout - trunk did not respond");
                }
                Some(BState::Proceeding) => {
                    // Ringing too long: give up on the call.
                    self.note_failure(480, "Temporarily Unavailable - no answer".into());
                    if self.a_phase == APhase::Offered {
                        let resp = self
                            .a_response(480, "Temporarily Unavailable - no answer")
                            .build();
                        let server = self.a_server;
                        self.respond_a(server, resp);
                        self.a_phase = APhase::Done;
                    }
                    self.end_b(now);
                    self.end(now, None, "no_answer");
                }
                _ => {}
            }
        }
        if self.a_timer.due.is_some_and(|at| now >= at) {
            if self.a_timer.we_refresh {
                // We never offer to refresh toward the caller except when asked to: send an
                // UPDATE without a body.
                self.a_timer.arm(now);
                let to = self.a_hop;
                let update = self
                    .a_dialog
                    .request(Method::Update, Some(&self.a_contact.clone()))
                    .header(
                        HeaderName::SessionExpires,
                        format!("{};refresher=uas", self.a_timer.interval),
                    )
                    .build();
                self.a(SipCommand::Request {
                    request: update,
                    to,
                });
            } else {
                self.hangup(now, "session_expired");
                return;
            }
        }
        let b_due = self
            .b
            .as_ref()
            .is_some_and(|b| b.timer.due.is_some_and(|at| now >= at));
        if b_due {
            self.refresh_b(now);
        }
    }
}

impl BLeg {
    /// CSeq number of the current INVITE transaction.
    fn invite_seq(&self) -> u32 {
        self.seq
    }
}

#[cfg(test)]
mod tests;
