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

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::auth::DigestChallenge;
use super::build::MessageBuilder;
use super::core::{CoreEvent, ServerId, SipCommand, ALLOW};
use super::dialog::{Dialog, DialogState};
use super::header::{CSeq, NameAddr, Refresher, SessionExpires};
use super::msg::{HeaderName, Method, SipMessage, StartLine};
use super::txn::TimerConfig;
use super::uri::{Host, SipUri};

/// The smallest session interval the switch accepts (RFC 4028 §4 minimum).
pub const MIN_SE: u32 = 90;

/// Credentials for a trunk that challenges our requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// A trunk to try for leg B.
#[derive(Debug, Clone)]
pub struct Target {
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
}

/// Settings of every bridge on a node.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Transaction timers (2xx retransmission toward the caller follows T1/T2).
    pub timers: TimerConfig,
    /// How long the called side may ring before the call is abandoned (480 to the caller).
    pub ring_timeout: Duration,
    /// Session interval requested toward trunks, in seconds (RFC 4028); 0 disables.
    pub session_expires: u32,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            timers: TimerConfig::default(),
            ring_timeout: Duration::from_secs(120),
            session_expires: 1800,
        }
    }
}

/// Which leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// The caller's leg (we are UAS).
    A,
    /// The leg toward a trunk (we are UAC).
    B,
}

/// How a call progressed, for the call's supervisor and CDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
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
pub enum Action {
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
}

pub use crate::sdp::Anchor;

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

impl SessionTimer {
    fn arm(&mut self, now: Instant) {
        if self.interval == 0 {
            self.due = None;
            return;
        }
        let s = u64::from(self.interval);
        self.due = Some(if self.we_refresh {
            now + Duration::from_secs(s / 2)
        } else {
            // §10: the side that does not refresh ends the session shortly before it
            // expires.
            now + Duration::from_secs(s - (s / 3).min(32))
        });
    }
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
pub struct Bridge {
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
    /// Request relayed from A to B, awaiting B's final response.
    a_to_b: Option<Relayed>,
    /// Request relayed from B to A, awaiting A's final response.
    b_to_a: Option<Relayed>,
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
}

/// Why an INVITE cannot be bridged; answered with this status before any call exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
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
    pub fn response(&self, invite: &SipMessage, to_tag: &str) -> SipMessage {
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

/// A display name as a quoted-string body: `\` and `"` escaped (RFC 3261 §25.1).
fn quote_display(display: &str) -> String {
    display.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The user part of a request's Request-URI (the dialled number).
pub fn dialled_user(invite: &SipMessage) -> Option<String> {
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

fn session_expires(msg: &SipMessage) -> Option<SessionExpires> {
    SessionExpires::parse(&msg.header(&HeaderName::SessionExpires)?.value).ok()
}

fn supports_timer(msg: &SipMessage) -> bool {
    [HeaderName::Supported, HeaderName::Require]
        .iter()
        .flat_map(|n| msg.headers_named(n))
        .any(|h| {
            super::header::tokens(&h.value)
                .is_ok_and(|t| t.iter().any(|t| t.eq_ignore_ascii_case("timer")))
        })
}

fn content_type(msg: &SipMessage) -> Option<String> {
    msg.header(&HeaderName::ContentType).map(|h| text(&h.value))
}

/// The reason phrase of a response.
fn reason_of(resp: &SipMessage) -> String {
    match &resp.start {
        StartLine::Response { reason, .. } => text(reason),
        StartLine::Request { .. } => String::new(),
    }
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
    /// Prepares bridging `invite` (received as `server`, from `from`; `a_reliable` when it
    /// came over TCP/TLS) to `targets`; [`begin`](Self::begin) offers it to the first. `seed` makes tags and Call-IDs unique (pass a
    /// random value); `a_contact` is our Contact on the caller's listener. The caller is
    /// refused when the INVITE cannot start a dialog or its session interval is too short.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
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
            a_to_b: None,
            b_to_a: None,
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
            plan: None,
        };
        Ok(bridge)
    }

    /// Offers the call to the first trunk. With `anchor`, every SDP crossing the bridge is
    /// rewritten to point at the switch, and each leg's media is reported as
    /// [`Action::Media`]; without, SDP passes through unchanged.
    pub fn begin(&mut self, now: Instant, anchor: Option<Anchor>) {
        self.anchor = anchor;
        self.try_next(now);
    }

    /// The body of `msg` as it goes to leg `to` (it came from the other leg): anchored SDP
    /// is rewritten to the switch's address and `to`'s port, and the sender's media is
    /// reported. Anything else is carried unchanged.
    fn carry_body(&mut self, to: Leg, b: MessageBuilder, msg: &SipMessage) -> MessageBuilder {
        let Some(ct) = content_type(msg).filter(|_| !msg.body.is_empty()) else {
            return b;
        };
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
            let formats = audio.formats.clone();
            self.out.push_back(Action::Media(from, audio));
            self.formats[match from {
                Leg::A => 0,
                Leg::B => 1,
            }] = Some(formats);
            self.replan();
        }
        let port = anchor.ports[match to {
            Leg::A => 0,
            Leg::B => 1,
        }];
        sdp.anchor(anchor.ip, port);
        b.body(&ct, sdp.to_bytes())
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

    /// Leg A's SDP, as its INVITE carried it.
    pub fn a_offer(&self) -> &Bytes {
        &self.a_invite.body
    }

    /// The targets (to map [`Action::B`] indexes to transports).
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Leg A's Call-ID.
    pub fn a_call_id(&self) -> &str {
        &self.a_dialog.call_id
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
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
    pub fn is_done(&self) -> bool {
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

    // ---- leg B: trying trunks -------------------------------------------------------

    fn try_next(&mut self, now: Instant) {
        let Some(index) = (self.next_target < self.targets.len()).then_some(self.next_target)
        else {
            self.fail_a(now);
            return;
        };
        self.next_target += 1;
        self.attempts += 1;
        let target = self.targets[index].clone();
        let call_id = Bytes::from(format!("{:x}-{}@waswitch", self.seed, self.attempts));
        let user = target.user.clone().or_else(|| dialled_user(&self.a_invite));
        let uri = match &user {
            Some(u) => format!("sip:{u}@{}", target.hostport),
            None => format!("sip:{}", target.hostport),
        };
        let max_forwards = self
            .a_invite
            .header(&HeaderName::MaxForwards)
            .and_then(|h| super::header::max_forwards(&h.value).ok())
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
        let invite = self.carry_body(Leg::B, builder, &a_invite).build();
        if let Some(old) = self.b.take() {
            self.out.push_back(Action::Unroute(old.call_id));
        }
        self.b = Some(BLeg {
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
        });
        self.b_deadline = Some(now + target.invite_timeout);
        self.out.push_back(Action::Route(call_id));
        self.out.push_back(Action::Progress(Progress::Trying {
            trunk: target.trunk.clone(),
        }));
        self.b(SipCommand::Request {
            request: invite,
            to: target.addr,
        });
    }

    /// Remembers a trunk's failure if it is the best to report (RFC 3261 §16.7.6: 6xx
    /// first, then the lowest class).
    fn note_failure(&mut self, code: u16, reason: String) {
        let trunk = self
            .b
            .as_ref()
            .map(|b| self.targets[b.target].trunk.clone())
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

    fn b_invite_response(&mut self, now: Instant, resp: SipMessage) {
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
                    self.settled();
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
                if code == 408 || (500..=599).contains(&code) {
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
                *h = super::msg::Header::new(HeaderName::CSeq, format!("{} INVITE", b.seq));
            }
        }
        invite
            .headers
            .push(super::msg::Header::new(answer_header, authorization));
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
        self.b_deadline = None;
        if self.ended.is_some() || self.a_phase != APhase::Offered {
            // The caller went away while the trunk answered: hang the trunk up.
            self.ack_and_bye(dialog, seq, fallback);
            self.b = self.b.take().map(|mut b| {
                b.state = BState::Done;
                b
            });
            self.settled();
            return;
        }
        // Session timer toward B: we refresh when B says so (or says nothing of who).
        if let Some(se) = session_expires(&resp) {
            b.timer.interval = se.delta;
            b.timer.we_refresh = se.refresher != Some(Refresher::Uas);
            b.timer.arm(now);
        }
        b.no_update = !resp.headers_named(&HeaderName::Allow).any(|h| {
            super::header::tokens(&h.value).is_ok_and(|t| t.iter().any(|m| m == "UPDATE"))
        });
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
    fn ack_and_bye(&mut self, mut dialog: Dialog, seq: u32, fallback: SocketAddr) {
        let to = dialog_hop(&dialog, fallback);
        let ack = dialog.ack(seq).build();
        self.b(SipCommand::Ack { request: ack, to });
        let bye = dialog.request(Method::Bye, None).build();
        self.b(SipCommand::Request { request: bye, to });
    }

    fn b_timeout(&mut self, now: Instant, request: &SipMessage) {
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
    fn b_give_up(&mut self, now: Instant, code: u16, reason: &str) {
        let Some(b) = self.b.as_mut() else {
            return;
        };
        b.state = BState::Done;
        self.b_deadline = None;
        if self.ended.is_some() {
            self.settled();
            return;
        }
        self.note_failure(code, reason.into());
        self.try_next(now);
    }

    // ---- events ---------------------------------------------------------------------

    /// An event for this call from either leg's core (routed by Call-ID).
    pub fn handle_event(&mut self, now: Instant, event: CoreEvent) {
        let call_id = event.call_id();
        let leg = match call_id {
            Some(c) if c[..] == *self.a_dialog.call_id.as_bytes() => Leg::A,
            Some(c) if self.b.as_ref().is_some_and(|b| b.call_id == c) => Leg::B,
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

    /// A final response to a request we relayed onto `leg` (or to our own BYE or refresh).
    fn relayed_response(&mut self, now: Instant, leg: Leg, resp: SipMessage) {
        let (Some(code), Some(cseq)) = (resp.status(), seq_of(&resp)) else {
            return;
        };
        if code < 200 {
            return;
        }
        let pending = match leg {
            Leg::B => &mut self.a_to_b,
            Leg::A => &mut self.b_to_a,
        };
        let relayed = match pending {
            Some(r) if r.sent_seq == cseq.seq && r.method == cseq.method => pending.take(),
            _ => None,
        };
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

    fn ack_refresh(&mut self, resp: &SipMessage) {
        let Some(b) = self.b.as_ref() else {
            return;
        };
        let Some(dialog) = &b.dialog else {
            return;
        };
        let Some(seq) = seq_of(resp).map(|c| c.seq) else {
            return;
        };
        let to = dialog_hop(dialog, self.targets[b.target].addr);
        let ack = dialog.ack(seq).build();
        self.b(SipCommand::Ack { request: ack, to });
    }

    fn relayed_timeout(&mut self, now: Instant, leg: Leg, request: &SipMessage) {
        let Some(cseq) = seq_of(request) else {
            return;
        };
        if cseq.method == Method::Bye {
            return;
        }
        let pending = match leg {
            Leg::B => self.a_to_b.take(),
            Leg::A => self.b_to_a.take(),
        };
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

    fn cancelled(&mut self, now: Instant) {
        if self.a_phase != APhase::Offered {
            return;
        }
        let resp = self.a_response(487, "Request Terminated").build();
        let server = self.a_server;
        self.respond_a(server, resp);
        self.a_phase = APhase::Done;
        self.end_b(now);
        self.end(now, Some(Leg::A), "cancelled");
    }

    /// Stops leg B whatever its state: CANCEL, abandon or BYE.
    fn end_b(&mut self, _now: Instant) {
        let Some(b) = self.b.as_mut() else {
            return;
        };
        match b.state {
            BState::Calling => {
                // No provisional yet: a CANCEL may not be sent (§9.1); send it once one
                // arrives, and stop waiting after a while in any case.
                b.cancel_pending = true;
            }
            BState::Proceeding => {
                let call_id = b.call_id.clone();
                self.b(SipCommand::Cancel { call_id });
            }
            BState::Confirmed => {
                b.state = BState::Done;
                let fallback = self.targets[b.target].addr;
                if let Some(dialog) = b.dialog.as_mut() {
                    let to = dialog_hop(dialog, fallback);
                    let bye = dialog.request(Method::Bye, None).build();
                    dialog.terminate();
                    self.b(SipCommand::Request { request: bye, to });
                }
            }
            BState::Done => {}
        }
    }

    /// Sends BYE to A if its dialog is up.
    fn bye_a(&mut self) {
        if self.a_phase != APhase::Answered {
            return;
        }
        self.a_phase = APhase::Done;
        let to = self.a_hop;
        let bye = self.a_dialog.request(Method::Bye, None).build();
        self.a_dialog.terminate();
        self.a(SipCommand::Request { request: bye, to });
    }

    /// Ends the call from the switch's side (operator, shutdown, timer).
    pub fn hangup(&mut self, now: Instant, cause: &str) {
        let reason = format!("SIP;cause=480;text=\"{cause}\"");
        self.hangup_with(now, cause, (480, "Temporarily Unavailable"), &reason);
    }

    /// [`hangup`](Self::hangup), refusing a caller still waiting with `status` and
    /// `Reason: reason` (a policy that ended the call, say).
    pub fn hangup_with(&mut self, now: Instant, cause: &str, status: (u16, &str), reason: &str) {
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

    /// Records the end; the bridge is done once leg B has settled too.
    fn end(&mut self, now: Instant, by: Option<Leg>, cause: &str) {
        if self.ended.is_none() {
            self.ended = Some((by, cause.to_string()));
            self.a_timer.due = None;
            if let Some(b) = self.b.as_mut() {
                b.timer.due = None;
            }
        }
        let pending = self
            .b
            .as_ref()
            .is_some_and(|b| matches!(b.state, BState::Calling | BState::Proceeding));
        if pending {
            // Wait for the trunk's answer to our CANCEL (a 2xx crossing it is hung up), but
            // not forever.
            self.b_deadline = None;
            self.linger = Some(now + 64 * self.cfg.timers.t1);
            return;
        }
        self.settled();
    }

    /// Both legs are settled: report the end once.
    fn settled(&mut self) {
        self.linger = None;
        self.b_deadline = None;
        if let Some((by, cause)) = self.ended.clone() {
            if let Some(b) = &self.b {
                self.out.push_back(Action::Unroute(b.call_id.clone()));
            }
            self.out.push_back(Action::Unroute(Bytes::copy_from_slice(
                self.a_dialog.call_id.as_bytes(),
            )));
            self.out
                .push_back(Action::Progress(Progress::Ended { by, cause }));
        }
    }

    /// A request inside one of the dialogs.
    fn request_in(&mut self, now: Instant, leg: Leg, server: ServerId, request: SipMessage) {
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
                if self.a_to_b.is_some() || self.b_to_a.is_some() {
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
            Method::Info => self.relay(now, leg, server, request),
            ref m if m.as_bytes() == b"MESSAGE" => {
                self.relay(now, leg, server, request);
            }
            _ => respond(self, 501, "Not Implemented", None),
        }
    }

    /// Whether a re-INVITE or UPDATE from A only refreshes the session: no body (UPDATE),
    /// or the same SDP as before.
    fn is_refresh(&self, request: &SipMessage) -> bool {
        match request.method() {
            Some(Method::Update) => request.body.is_empty(),
            Some(Method::Invite) => !request.body.is_empty() && request.body == self.a_last_offer,
            _ => false,
        }
    }

    /// Passes an in-dialog request from `from_leg` to the other leg.
    fn relay(&mut self, _now: Instant, from_leg: Leg, server: ServerId, request: SipMessage) {
        let method = request.method().cloned().unwrap_or(Method::Info);
        let (built, to) = match from_leg {
            Leg::A => {
                let Some(b) = self.b.as_mut() else {
                    return;
                };
                let fallback = self.targets[b.target].addr;
                let contact = self.targets[b.target].contact.clone();
                let Some(dialog) = b.dialog.as_mut() else {
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
                self.a_to_b = Some(relayed);
                self.b(SipCommand::Request { request: out, to });
            }
            Leg::B => {
                self.b_to_a = Some(relayed);
                self.a(SipCommand::Request { request: out, to });
            }
        }
    }

    /// An ACK from `leg` for our 2xx: the ACK owed to the other leg goes out now, with the
    /// body this one carried (the answer to an offer made in a 2xx).
    fn ack_in(&mut self, leg: Leg, ack: SipMessage) {
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

    /// Time has reached [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.linger.is_some_and(|at| now >= at) {
            // The trunk never settled after our CANCEL: stop waiting.
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
            let state = self.b.as_ref().map(|b| b.state);
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

    /// Leg B's session timer fired: refresh (UPDATE, or re-INVITE with the same SDP) when
    /// we are the refresher, else the session expired.
    fn refresh_b(&mut self, now: Instant) {
        let Some(b) = self.b.as_mut() else {
            return;
        };
        if !b.timer.we_refresh {
            self.hangup(now, "session_expired");
            return;
        }
        if self.a_to_b.is_some() {
            // An offer is in progress; it refreshes the session itself.
            b.timer.arm(now);
            return;
        }
        b.timer.arm(now);
        let fallback = self.targets[b.target].addr;
        let contact = self.targets[b.target].contact.clone();
        let interval = b.timer.interval;
        let (method, body) = if b.no_update {
            (Method::Invite, Some(b.offer.clone()))
        } else {
            (Method::Update, None)
        };
        let Some(dialog) = b.dialog.as_mut() else {
            return;
        };
        let to = dialog_hop(dialog, fallback);
        let mut req = dialog
            .request(method, Some(&contact))
            .header(HeaderName::Supported, "timer")
            .header(
                HeaderName::SessionExpires,
                format!("{interval};refresher=uac"),
            );
        if let Some(body) = body.filter(|b| !b.is_empty()) {
            req = req.body("application/sdp", body);
        }
        let request = req.build();
        self.b(SipCommand::Request { request, to });
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
