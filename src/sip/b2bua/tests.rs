//! Tests of the call machine, driven like the node drives it: the caller's requests go
//! through a real [`SipCore`] (which hands out the [`ServerId`]s), the trunk's responses are
//! fabricated from the requests the bridge sent, and time is a virtual clock.

use super::session_timer::supports_timer;
use super::*;
use crate::sip::auth::{verify, Algorithm, NonceIssuer};
use crate::sip::core::{RequestId, SipCore};
use crate::sip::header::NameAddr;
use crate::sip::txn::Transport;

/// Where the caller sends from (and its Contact).
const A_ADDR: &str = "127.0.0.1:5080";
/// Our Contact on the caller's listener.
const A_CONTACT: &str = "sip:waswitch@127.0.0.1:5060";
/// Our Contact on the trunks' listener.
const B_CONTACT: &str = "sip:waswitch@127.0.0.1:5062";
const A_CALL_ID: &str = "a-call-1@127.0.0.1";
const A_TAG: &str = "atag";
const B_TAG: &str = "btag";
/// Tags and Call-IDs of the bridge derive from it: A's To tag is `abc`, B's Call-IDs
/// `abc-1@waswitch`, `abc-2@waswitch`.
const SEED: u64 = 0xabc;
const DIALLED: &str = "+15551234";

const OFFER: &str = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                     t=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
const OFFER2: &str = "v=0\r\no=alice 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                      t=0 0\r\nm=audio 40002 RTP/AVP 8\r\n";
const ANSWER: &str = "v=0\r\no=uas 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                      t=0 0\r\nm=audio 50000 RTP/AVP 0\r\n";
const ANSWER2: &str = "v=0\r\no=uas 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                       t=0 0\r\nm=audio 50002 RTP/AVP 8\r\n";

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn target(index: usize) -> Target {
    let port = [5070, 5072][index];
    Target {
        trunk: format!("t{index}"),
        addr: sock(&format!("127.0.0.1:{port}")),
        hostport: format!("127.0.0.1:{port}"),
        user: None,
        contact: B_CONTACT.into(),
        credentials: None,
        invite_timeout: Duration::from_secs(2),
        headers: Vec::new(),
        uri: None,
        webrtc: None,
    }
}

fn targets() -> Vec<Target> {
    vec![target(0), target(1)]
}

/// A request from the caller, as bytes on the wire. `to_tag` puts it inside the dialog;
/// `extra` is whole header lines, each ending in CRLF.
fn a_request(
    method: &str,
    seq: u32,
    to_tag: Option<&str>,
    branch: &str,
    extra: &str,
    body: &str,
) -> Bytes {
    let uri = if to_tag.is_some() {
        A_CONTACT.to_string()
    } else {
        format!("sip:{DIALLED}@127.0.0.1:5060")
    };
    let to = match to_tag {
        Some(t) => format!("<sip:{DIALLED}@127.0.0.1:5060>;tag={t}"),
        None => format!("<sip:{DIALLED}@127.0.0.1:5060>"),
    };
    let ct = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    Bytes::from(format!(
        "{method} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {A_ADDR};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@127.0.0.1:5080>;tag={A_TAG}\r\n\
         To: {to}\r\n\
         Call-ID: {A_CALL_ID}\r\n\
         CSeq: {seq} {method}\r\n\
         Contact: <sip:alice@127.0.0.1:5080>\r\n\
         {extra}{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// The caller's INVITE, through `core`: its transaction and the request as the core hands
/// it over.
fn receive_invite(core: &mut SipCore, now: Instant, extra: &str) -> (ServerId, SipMessage) {
    let wire = a_request("INVITE", 1, None, "z9hG4bK-a-invite", extra, OFFER);
    receive_wire(core, now, wire)
}

/// An INVITE as written on the wire, through `core`.
fn receive_wire(core: &mut SipCore, now: Instant, wire: Bytes) -> (ServerId, SipMessage) {
    core.handle_datagram(now, wire, sock(A_ADDR));
    match core.poll_event() {
        Some(CoreEvent::Request {
            server, request, ..
        }) => (server, request),
        other => panic!("expected the INVITE from the core, got {other:?}"),
    }
}

/// The value of a header as text, or "" when absent.
fn hdr(msg: &SipMessage, name: HeaderName) -> String {
    msg.header(&name)
        .map(|h| text(&h.value))
        .unwrap_or_default()
}

fn tag(msg: &SipMessage, name: HeaderName) -> Option<String> {
    NameAddr::parse(&msg.header(&name)?.value)
        .ok()?
        .tag()
        .map(str::to_string)
}

fn cseq(msg: &SipMessage) -> String {
    hdr(msg, HeaderName::CSeq)
}

fn request_uri(msg: &SipMessage) -> String {
    match &msg.start {
        StartLine::Request { uri, .. } => text(uri),
        StartLine::Response { .. } => panic!("not a request"),
    }
}

/// A response of the trunk to `sent` (a request the bridge sent on leg B).
fn b_reply(
    sent: &SipMessage,
    code: u16,
    phrase: &str,
    body: Option<&str>,
    extra: &[(HeaderName, &str)],
) -> SipMessage {
    let mut b = MessageBuilder::response_to(sent, code, phrase, Some(B_TAG))
        .header(HeaderName::Contact, "<sip:uas@127.0.0.1:5070>");
    for (name, value) in extra {
        b = b.header(name.clone(), value.to_string());
    }
    if let Some(body) = body {
        b = b.body("application/sdp", Bytes::copy_from_slice(body.as_bytes()));
    }
    b.build()
}

/// A request the bridge sent to the trunk (`Action::B(index, Request)`).
struct Sent {
    index: usize,
    request: SipMessage,
    to: SocketAddr,
}

/// The values `f` picks out of `actions`, in order.
fn pick<T>(actions: &[Action], f: impl Fn(&Action) -> Option<T>) -> Vec<T> {
    actions.iter().filter_map(f).collect()
}

fn b_requests(actions: &[Action]) -> Vec<Sent> {
    pick(actions, |a| match a {
        Action::B(index, SipCommand::Request { request, to }) => Some(Sent {
            index: *index,
            request: request.clone(),
            to: *to,
        }),
        _ => None,
    })
}

fn b_acks(actions: &[Action]) -> Vec<(usize, SipMessage, SocketAddr)> {
    pick(actions, |a| match a {
        Action::B(index, SipCommand::Ack { request, to }) => Some((*index, request.clone(), *to)),
        _ => None,
    })
}

fn b_responses(actions: &[Action]) -> Vec<(ServerId, SipMessage)> {
    pick(actions, |a| match a {
        Action::B(_, SipCommand::Respond { server, response }) => Some((*server, response.clone())),
        _ => None,
    })
}

fn b_cancels(actions: &[Action]) -> Vec<Bytes> {
    pick(actions, |a| match a {
        Action::B(_, SipCommand::Cancel { call_id }) => Some(call_id.clone()),
        _ => None,
    })
}

fn b_abandons(actions: &[Action]) -> Vec<(usize, Bytes)> {
    pick(actions, |a| match a {
        Action::B(index, SipCommand::Abandon { call_id }) => Some((*index, call_id.clone())),
        _ => None,
    })
}

fn a_responses(actions: &[Action]) -> Vec<(ServerId, SipMessage)> {
    pick(actions, |a| match a {
        Action::A(SipCommand::Respond { server, response }) => Some((*server, response.clone())),
        _ => None,
    })
}

fn a_requests(actions: &[Action]) -> Vec<(SipMessage, SocketAddr)> {
    pick(actions, |a| match a {
        Action::A(SipCommand::Request { request, to }) => Some((request.clone(), *to)),
        _ => None,
    })
}

fn progress(actions: &[Action]) -> Vec<Progress> {
    pick(actions, |a| match a {
        Action::Progress(p) => Some(p.clone()),
        _ => None,
    })
}

fn routes(actions: &[Action]) -> Vec<Bytes> {
    pick(actions, |a| match a {
        Action::Route(c) => Some(c.clone()),
        _ => None,
    })
}

fn unroutes(actions: &[Action]) -> Vec<Bytes> {
    pick(actions, |a| match a {
        Action::Unroute(c) => Some(c.clone()),
        _ => None,
    })
}

fn ended(actions: &[Action]) -> Option<(Option<Leg>, String)> {
    progress(actions).into_iter().find_map(|p| match p {
        Progress::Ended { by, cause } => Some((by, cause)),
        _ => None,
    })
}

/// The only request the bridge sent to the trunk in `actions`.
fn one_b_request(actions: &[Action]) -> Sent {
    let mut sent = b_requests(actions);
    assert_eq!(sent.len(), 1, "expected one request toward B: {actions:#?}");
    sent.pop().unwrap()
}

/// The only response the bridge gave the caller in `actions`.
fn one_a_response(actions: &[Action]) -> (ServerId, SipMessage) {
    let mut sent = a_responses(actions);
    assert_eq!(
        sent.len(),
        1,
        "expected one response toward A: {actions:#?}"
    );
    sent.pop().unwrap()
}

/// One call: the caller's core, the trunk's core, the bridge and the clock.
struct Call {
    now: Instant,
    start: Instant,
    /// The core of the caller's listener.
    a_core: SipCore,
    /// The core of the trunks' listener.
    b_core: SipCore,
    /// Any request id (the bridge ignores it).
    rid: RequestId,
    a_server: ServerId,
    bridge: Bridge,
    branches: u32,
}

impl Call {
    /// A bridge for an INVITE with `extra` header lines, and what it did first.
    fn with(cfg: BridgeConfig, extra: &str, targets: Vec<Target>) -> (Call, Vec<Action>) {
        let wire = a_request("INVITE", 1, None, "z9hG4bK-a-invite", extra, OFFER);
        Self::from_wire(cfg, wire, targets)
    }

    /// A bridge for the INVITE `wire`, and what it did first.
    fn from_wire(cfg: BridgeConfig, wire: Bytes, targets: Vec<Target>) -> (Call, Vec<Action>) {
        let start = Instant::now();
        let mut a_core = SipCore::new(
            Transport::Unreliable,
            TimerConfig::default(),
            sock("127.0.0.1:5060"),
            1,
        )
        .with_user();
        let mut b_core = SipCore::new(
            Transport::Unreliable,
            TimerConfig::default(),
            sock("127.0.0.1:5062"),
            2,
        )
        .with_user();
        let probe = MessageBuilder::request(Method::Options, "sip:127.0.0.1:5070")
            .header(HeaderName::CallId, "probe")
            .header(HeaderName::CSeq, "1 OPTIONS")
            .build();
        let rid = b_core.send_request(start, probe, sock("127.0.0.1:5070"));
        let (a_server, a_invite) = receive_wire(&mut a_core, start, wire);
        let bridge = Bridge::start(
            cfg,
            SEED,
            a_server,
            a_invite,
            sock(A_ADDR),
            false,
            A_CONTACT.into(),
            targets,
        )
        .unwrap_or_else(|(r, _)| panic!("refused: {r:?}"));
        let mut call = Call {
            now: start,
            start,
            a_core,
            b_core,
            rid,
            a_server,
            bridge,
            branches: 0,
        };
        call.bridge.begin(start, ANCHOR.with(|a| a.get()));
        let actions = call.drain();
        (call, actions)
    }

    fn new() -> (Call, Vec<Action>) {
        Self::with(BridgeConfig::default(), "", targets())
    }

    fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.bridge.poll_action()).collect()
    }

    fn event(&mut self, event: CoreEvent) -> Vec<Action> {
        self.bridge.handle_event(self.now, event);
        self.drain()
    }

    /// A response of the trunk reaches the bridge.
    fn b_says(&mut self, response: SipMessage) -> Vec<Action> {
        self.event(CoreEvent::Response(self.rid, response))
    }

    /// Moves the clock to `at` and runs the bridge's timers.
    fn advance_to(&mut self, at: Instant) -> Vec<Action> {
        assert!(at >= self.now, "the clock goes forward");
        self.now = at;
        self.bridge.handle_timeout(at);
        self.drain()
    }

    /// Moves the clock to the bridge's next deadline, which must be `expected` after
    /// the start of the call.
    fn fire(&mut self, expected: Duration) -> Vec<Action> {
        let at = self.bridge.poll_timeout().expect("a deadline is armed");
        assert_eq!(at - self.start, expected, "deadline");
        self.advance_to(at)
    }

    fn branch(&mut self) -> String {
        self.branches += 1;
        format!("z9hG4bK-a-{}", self.branches)
    }

    /// Bytes arrive from the caller: the events of its core go to the bridge. Returns the
    /// server transaction of a request (if any) and what the bridge did.
    fn a_sends(&mut self, bytes: Bytes) -> (Option<ServerId>, Vec<Action>) {
        self.a_core.handle_datagram(self.now, bytes, sock(A_ADDR));
        let mut server = None;
        let mut actions = Vec::new();
        while let Some(event) = self.a_core.poll_event() {
            if let CoreEvent::Request { server: s, .. } = &event {
                server = Some(*s);
            }
            actions.extend(self.event(event));
        }
        (server, actions)
    }

    /// A request inside A's dialog (To tag: the bridge's).
    fn a_in_dialog(&mut self, method: &str, seq: u32, body: &str) -> (ServerId, Vec<Action>) {
        let branch = self.branch();
        let to_tag = self.a_tag();
        let (server, actions) =
            self.a_sends(a_request(method, seq, Some(&to_tag), &branch, "", body));
        (server.expect("the core hands the request over"), actions)
    }

    fn a_ack(&mut self, seq: u32) -> Vec<Action> {
        let branch = self.branch();
        let to_tag = self.a_tag();
        let (server, actions) = self.a_sends(a_request("ACK", seq, Some(&to_tag), &branch, "", ""));
        assert!(server.is_none(), "an ACK has no transaction");
        actions
    }

    /// A request from the trunk inside B's dialog, through the trunk listener's core.
    fn b_in_dialog(
        &mut self,
        b_invite: &SipMessage,
        method: &str,
        seq: u32,
    ) -> (ServerId, Vec<Action>) {
        let our_from = hdr(b_invite, HeaderName::From);
        let bytes = Bytes::from(format!(
            "{method} {B_CONTACT} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-b-{method}-{seq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{}>;tag={B_TAG}\r\n\
             To: {our_from}\r\n\
             Call-ID: {}\r\n\
             CSeq: {seq} {method}\r\n\
             Contact: <sip:uas@127.0.0.1:5070>\r\n\
             Content-Length: 0\r\n\r\n",
            request_uri(b_invite),
            hdr(b_invite, HeaderName::CallId),
        ));
        self.b_core
            .handle_datagram(self.now, bytes, sock("127.0.0.1:5070"));
        let mut server = None;
        let mut actions = Vec::new();
        while let Some(event) = self.b_core.poll_event() {
            if let CoreEvent::Request { server: s, .. } = &event {
                server = Some(*s);
            }
            actions.extend(self.event(event));
        }
        (server.expect("the core hands the request over"), actions)
    }

    /// The bridge's tag in A's dialog.
    fn a_tag(&self) -> String {
        format!("{SEED:x}")
    }

    /// Up to the point where the trunk rings: the INVITE sent to B.
    fn ringing(&mut self, start_actions: &[Action]) -> SipMessage {
        let invite = one_b_request(start_actions).request;
        let actions = self.b_says(b_reply(&invite, 180, "Ringing", None, &[]));
        assert_eq!(one_a_response(&actions).1.status(), Some(180));
        invite
    }

    /// Up to the point where the call is connected and both ACKs went out: the INVITE sent
    /// to B. `extra` goes on B's 200.
    fn connect(&mut self, start_actions: &[Action], extra: &[(HeaderName, &str)]) -> SipMessage {
        let invite = self.ringing(start_actions);
        let actions = self.b_says(b_reply(&invite, 200, "OK", Some(ANSWER), extra));
        assert_eq!(one_a_response(&actions).1.status(), Some(200));
        let actions = self.a_ack(1);
        assert_eq!(b_acks(&actions).len(), 1);
        invite
    }
}

// ---- 1. a basic call -------------------------------------------------------------

#[test]
fn basic_call_offers_the_trunk_a_new_dialog() {
    let (call, actions) = Call::new();
    let sent = one_b_request(&actions);
    assert_eq!(sent.index, 0);
    assert_eq!(sent.to, sock("127.0.0.1:5070"));
    let invite = &sent.request;
    assert_eq!(invite.method(), Some(&Method::Invite));
    assert_eq!(request_uri(invite), format!("sip:{DIALLED}@127.0.0.1:5070"));
    let b_call_id = hdr(invite, HeaderName::CallId);
    assert_ne!(b_call_id, A_CALL_ID);
    assert!(!b_call_id.is_empty());
    assert_eq!(invite.body, Bytes::from_static(OFFER.as_bytes()));
    assert_eq!(hdr(invite, HeaderName::ContentType), "application/sdp");
    assert_eq!(hdr(invite, HeaderName::MaxForwards), "69");
    assert_eq!(cseq(invite), "1 INVITE");
    assert_eq!(hdr(invite, HeaderName::Contact), format!("<{B_CONTACT}>"));
    // Caller identity is carried across, its tag is not.
    let from = hdr(invite, HeaderName::From);
    assert!(from.contains("sip:alice@127.0.0.1:5080"), "{from}");
    assert!(from.contains("Alice"), "{from}");
    let from_tag = tag(invite, HeaderName::From).expect("From tag");
    assert_ne!(from_tag, A_TAG);
    assert_eq!(tag(invite, HeaderName::To), None);
    // A session timer is requested toward the trunk.
    assert_eq!(hdr(invite, HeaderName::SessionExpires), "1800");
    assert_eq!(hdr(invite, HeaderName::MinSe), "90");
    assert!(supports_timer(invite));

    assert_eq!(routes(&actions), vec![Bytes::from(b_call_id.clone())]);
    assert_eq!(
        progress(&actions),
        vec![Progress::Trying { trunk: "t0".into() }]
    );
    assert!(a_responses(&actions).is_empty(), "nothing for A yet");
    assert_eq!(call.bridge.a_call_id(), A_CALL_ID);
    assert_eq!(
        call.bridge.poll_timeout(),
        Some(call.start + Duration::from_secs(2))
    );
    assert!(!call.bridge.is_done());
}

#[test]
fn basic_call_rings_answers_acks_and_hangs_up_from_a() {
    let (mut call, actions) = Call::new();
    let invite = one_b_request(&actions).request;
    let b_call_id = Bytes::from(hdr(&invite, HeaderName::CallId));

    // 180 from B: relayed to A with our To tag.
    let actions = call.b_says(b_reply(&invite, 180, "Ringing", None, &[]));
    let (server, ringing) = one_a_response(&actions);
    assert_eq!(server, call.a_server);
    assert_eq!(ringing.status(), Some(180));
    let a_tag = tag(&ringing, HeaderName::To).expect("To tag toward A");
    assert_eq!(a_tag, call.a_tag());
    assert_ne!(a_tag, B_TAG, "B's tag does not leak to A");
    assert_eq!(hdr(&ringing, HeaderName::CallId), A_CALL_ID);
    assert_eq!(tag(&ringing, HeaderName::From).as_deref(), Some(A_TAG));
    assert_eq!(progress(&actions), vec![Progress::Ringing]);
    assert!(b_requests(&actions).is_empty());

    // 200 from B: A gets B's SDP and our Contact; B is not acknowledged yet.
    let actions = call.b_says(b_reply(&invite, 200, "OK", Some(ANSWER), &[]));
    let (server, ok) = one_a_response(&actions);
    assert_eq!(server, call.a_server);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.body, Bytes::from_static(ANSWER.as_bytes()));
    assert_eq!(hdr(&ok, HeaderName::ContentType), "application/sdp");
    assert_eq!(hdr(&ok, HeaderName::Contact), format!("<{A_CONTACT}>"));
    assert_eq!(tag(&ok, HeaderName::To), Some(a_tag.clone()));
    assert_eq!(cseq(&ok), "1 INVITE");
    assert_eq!(progress(&actions), vec![Progress::Answered]);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::B(..))),
        "no ACK to B before A's ACK: {actions:#?}"
    );

    // A's ACK: B gets its ACK, in B's dialog.
    let actions = call.a_ack(1);
    let acks = b_acks(&actions);
    assert_eq!(acks.len(), 1, "{actions:#?}");
    let (index, ack, to) = &acks[0];
    assert_eq!(*index, 0);
    assert_eq!(*to, sock("127.0.0.1:5070"));
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(request_uri(ack), "sip:uas@127.0.0.1:5070");
    assert_eq!(tag(ack, HeaderName::To).as_deref(), Some(B_TAG));
    assert_eq!(tag(ack, HeaderName::From), tag(&invite, HeaderName::From));
    assert_eq!(hdr(ack, HeaderName::CallId), text(&b_call_id));
    assert_eq!(cseq(ack), "1 ACK");
    assert!(progress(&actions).is_empty());

    // BYE from A: 200 to A, BYE to B, the call is over.
    let (bye_server, actions) = call.a_in_dialog("BYE", 2, "");
    let (server, ok) = one_a_response(&actions);
    assert_eq!(server, bye_server);
    assert_ne!(server, call.a_server);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(cseq(&ok), "2 BYE");
    let bye = one_b_request(&actions);
    assert_eq!(bye.index, 0);
    assert_eq!(bye.to, sock("127.0.0.1:5070"));
    assert_eq!(bye.request.method(), Some(&Method::Bye));
    assert_eq!(request_uri(&bye.request), "sip:uas@127.0.0.1:5070");
    assert_eq!(hdr(&bye.request, HeaderName::CallId), text(&b_call_id));
    assert_eq!(tag(&bye.request, HeaderName::To).as_deref(), Some(B_TAG));
    assert_eq!(cseq(&bye.request), "2 BYE");
    assert_eq!(
        ended(&actions),
        Some((Some(Leg::A), "normal_clearing".to_string()))
    );
    let gone = unroutes(&actions);
    assert!(gone.contains(&b_call_id), "{gone:?}");
    assert!(
        gone.contains(&Bytes::from_static(A_CALL_ID.as_bytes())),
        "{gone:?}"
    );
    assert!(call.bridge.is_done());
    assert_eq!(call.bridge.poll_timeout(), None);
}

#[test]
fn retransmitted_2xx_from_b_is_acknowledged_again_and_not_relayed() {
    let (mut call, actions) = Call::new();
    let invite = call.connect(&actions, &[]);
    let actions = call.b_says(b_reply(&invite, 200, "OK", Some(ANSWER), &[]));
    assert!(a_responses(&actions).is_empty(), "{actions:#?}");
    let acks = b_acks(&actions);
    assert_eq!(acks.len(), 1, "{actions:#?}");
    assert_eq!(cseq(&acks[0].1), "1 ACK");
    assert!(b_requests(&actions).is_empty());
}

#[test]
fn a_second_fork_answering_is_acknowledged_and_hung_up() {
    let (mut call, actions) = Call::new();
    let invite = call.connect(&actions, &[]);
    let fork = MessageBuilder::response_to(&invite, 200, "OK", Some("fork2"))
        .header(HeaderName::Contact, "<sip:fork@127.0.0.1:5070>")
        .body("application/sdp", Bytes::from_static(ANSWER2.as_bytes()))
        .build();
    let actions = call.b_says(fork);
    assert!(a_responses(&actions).is_empty(), "A keeps the first answer");
    let acks = b_acks(&actions);
    assert_eq!(acks.len(), 1, "{actions:#?}");
    assert_eq!(tag(&acks[0].1, HeaderName::To).as_deref(), Some("fork2"));
    let bye = one_b_request(&actions).request;
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(tag(&bye, HeaderName::To).as_deref(), Some("fork2"));
    assert_eq!(request_uri(&bye), "sip:fork@127.0.0.1:5070");
    assert!(ended(&actions).is_none(), "the call goes on");
    assert!(!call.bridge.is_done());
}

#[test]
fn display_name_with_quotes_is_escaped_toward_b() {
    let wire = a_request("INVITE", 1, None, "z9hG4bK-a-invite", "", OFFER);
    let wire = text(&wire).replace("\"Alice\"", r#""Al \"the\" Pal""#);
    let (mut call, actions) = Call::from_wire(BridgeConfig::default(), wire.into(), targets());
    let invite = one_b_request(&actions).request;
    // The call must still connect...
    let actions = call.b_says(b_reply(&invite, 200, "OK", Some(ANSWER), &[]));
    assert_eq!(
        a_responses(&actions).first().and_then(|(_, r)| r.status()),
        Some(200),
        "B's 200 reaches A: {actions:#?}"
    );
    // ...and B's From must be well-formed, with the caller's display name.
    let from =
        NameAddr::parse(&invite.header(&HeaderName::From).unwrap().value).unwrap_or_else(|e| {
            panic!(
                "B's From does not parse ({e:?}): {}",
                hdr(&invite, HeaderName::From)
            )
        });
    assert_eq!(from.display.as_deref(), Some(r#"Al "the" Pal"#));
}

// ---- 2. BYE from B ---------------------------------------------------------------

#[test]
fn bye_from_b_hangs_up_a() {
    let (mut call, actions) = Call::new();
    let invite = call.connect(&actions, &[]);
    let b_call_id = Bytes::from(hdr(&invite, HeaderName::CallId));

    let (server, actions) = call.b_in_dialog(&invite, "BYE", 1);
    let answered = b_responses(&actions);
    assert_eq!(answered.len(), 1, "{actions:#?}");
    assert_eq!(answered[0].0, server);
    assert_eq!(answered[0].1.status(), Some(200));
    assert_eq!(cseq(&answered[0].1), "1 BYE");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::B(0, SipCommand::Respond { .. }))),
        "answered on target 0's core"
    );

    let to_a = a_requests(&actions);
    assert_eq!(to_a.len(), 1, "{actions:#?}");
    let (bye, to) = &to_a[0];
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(*to, sock(A_ADDR));
    assert_eq!(request_uri(bye), "sip:alice@127.0.0.1:5080");
    assert_eq!(hdr(bye, HeaderName::CallId), A_CALL_ID);
    assert_eq!(tag(bye, HeaderName::From), Some(call.a_tag()));
    assert_eq!(tag(bye, HeaderName::To).as_deref(), Some(A_TAG));
    assert_eq!(cseq(bye), "1 BYE");
    assert!(b_requests(&actions).is_empty(), "no BYE back to B");

    assert_eq!(
        ended(&actions),
        Some((Some(Leg::B), "normal_clearing".to_string()))
    );
    let gone = unroutes(&actions);
    assert!(gone.contains(&b_call_id), "{gone:?}");
    assert!(
        gone.contains(&Bytes::from_static(A_CALL_ID.as_bytes())),
        "{gone:?}"
    );
    assert!(call.bridge.is_done());
}

#[test]
fn request_with_unknown_tag_is_refused_481() {
    let (mut call, actions) = Call::new();
    call.connect(&actions, &[]);
    let branch = call.branch();
    let (server, actions) = call.a_sends(a_request("BYE", 2, Some("nope"), &branch, "", ""));
    let (answered, resp) = one_a_response(&actions);
    assert_eq!(Some(answered), server);
    assert_eq!(resp.status(), Some(481));
    assert!(b_requests(&actions).is_empty());
    assert!(ended(&actions).is_none());
}

// ---- 3. failover -----------------------------------------------------------------

#[test]
fn failover_on_503_then_busy() {
    let (mut call, actions) = Call::new();
    let first = one_b_request(&actions).request;
    let first_call_id = Bytes::from(hdr(&first, HeaderName::CallId));

    let actions = call.b_says(b_reply(&first, 503, "Service Unavailable", None, &[]));
    assert!(
        a_responses(&actions).is_empty(),
        "A hears nothing of a failover"
    );
    let second = one_b_request(&actions);
    assert_eq!(second.index, 1);
    assert_eq!(second.to, sock("127.0.0.1:5072"));
    assert!(matches!(
        actions.iter().find(|a| matches!(a, Action::B(..))),
        Some(Action::B(1, SipCommand::Request { .. }))
    ));
    let second = second.request;
    assert_eq!(
        request_uri(&second),
        format!("sip:{DIALLED}@127.0.0.1:5072")
    );
    let second_call_id = Bytes::from(hdr(&second, HeaderName::CallId));
    assert_ne!(second_call_id, first_call_id);
    assert_ne!(text(&second_call_id), A_CALL_ID);
    assert_ne!(
        tag(&second, HeaderName::From),
        tag(&first, HeaderName::From)
    );
    assert_eq!(cseq(&second), "1 INVITE");
    assert_eq!(second.body, Bytes::from_static(OFFER.as_bytes()));
    assert_eq!(unroutes(&actions), vec![first_call_id]);
    assert_eq!(routes(&actions), vec![second_call_id]);
    assert_eq!(
        progress(&actions),
        vec![Progress::Trying { trunk: "t1".into() }]
    );

    let actions = call.b_says(b_reply(&second, 486, "Busy Here", None, &[]));
    let (server, busy) = one_a_response(&actions);
    assert_eq!(server, call.a_server);
    assert_eq!(busy.status(), Some(486));
    assert_eq!(tag(&busy, HeaderName::To), Some(call.a_tag()));
    let why = hdr(&busy, HeaderName::Reason);
    assert!(why.contains("cause=486"), "{why}");
    assert!(b_requests(&actions).is_empty(), "no third trunk");
    assert_eq!(ended(&actions), Some((None, "busy".to_string())));
    assert!(call.bridge.is_done());
}

#[test]
fn every_trunk_unavailable_is_500_with_reason() {
    let (mut call, actions) = Call::new();
    let first = one_b_request(&actions).request;
    let actions = call.b_says(b_reply(&first, 503, "Service Unavailable", None, &[]));
    let second = one_b_request(&actions).request;
    let actions = call.b_says(b_reply(&second, 503, "Service Unavailable", None, &[]));
    let (server, resp) = one_a_response(&actions);
    assert_eq!(server, call.a_server);
    assert_eq!(resp.status(), Some(500), "a trunk's 503 is not passed on");
    let why = hdr(&resp, HeaderName::Reason);
    assert!(why.starts_with("SIP;cause=503"), "{why}");
    assert!(b_requests(&actions).is_empty());
    assert_eq!(ended(&actions), Some((None, "network_failure".to_string())));
    assert!(call.bridge.is_done());
}

#[test]
fn a_4xx_is_not_failed_over() {
    let (mut call, actions) = Call::new();
    let first = one_b_request(&actions).request;
    let actions = call.b_says(b_reply(&first, 404, "Not Found", None, &[]));
    assert!(b_requests(&actions).is_empty(), "no failover on 404");
    assert_eq!(one_a_response(&actions).1.status(), Some(404));
    assert_eq!(
        ended(&actions),
        Some((None, "unallocated_number".to_string()))
    );
}

// ---- 4. no response at all -------------------------------------------------------

#[test]
fn silent_trunk_is_abandoned_for_the_next_after_invite_timeout() {
    let (mut call, actions) = Call::new();
    let first = one_b_request(&actions).request;
    let first_call_id = Bytes::from(hdr(&first, HeaderName::CallId));

    // Nothing before the deadline.
    let early = call.advance_to(call.start + Duration::from_millis(1999));
    assert!(early.is_empty(), "{early:#?}");

    let actions = call.fire(Duration::from_secs(2));
    assert_eq!(b_abandons(&actions), vec![(0, first_call_id.clone())]);
    assert!(
        b_cancels(&actions).is_empty(),
        "no CANCEL without a provisional"
    );
    let second = one_b_request(&actions);
    assert_eq!(second.index, 1);
    assert_eq!(second.request.method(), Some(&Method::Invite));
    assert_ne!(
        hdr(&second.request, HeaderName::CallId),
        text(&first_call_id)
    );
    assert!(unroutes(&actions).contains(&first_call_id));
    assert!(a_responses(&actions).is_empty());
    assert_eq!(
        call.bridge.poll_timeout(),
        Some(call.start + Duration::from_secs(4)),
        "the second trunk has its own invite timeout"
    );

    // The second trunk is silent too: A gets 408.
    let actions = call.fire(Duration::from_secs(4));
    assert_eq!(b_abandons(&actions).len(), 1);
    assert!(b_requests(&actions).is_empty());
    assert_eq!(one_a_response(&actions).1.status(), Some(408));
    assert_eq!(ended(&actions), Some((None, "no_answer".to_string())));
}

#[test]
fn a_100_trying_replaces_the_invite_timeout_with_the_ring_timeout() {
    // A 100 Trying is a response: the trunk is alive, the ring timeout applies.
    let (mut call, actions) = Call::new();
    let first = one_b_request(&actions).request;
    let actions = call.b_says(b_reply(&first, 100, "Trying", None, &[]));
    assert!(actions.is_empty(), "a 100 is not relayed: {actions:#?}");
    assert_eq!(
        call.bridge.poll_timeout(),
        Some(call.start + Duration::from_secs(120))
    );
}

// ---- 5. CANCEL -------------------------------------------------------------------

/// The caller CANCELs its INVITE (through its core, which answers the CANCEL).
fn cancel_from_a(call: &mut Call) -> Vec<Action> {
    let bytes = a_request("CANCEL", 1, None, "z9hG4bK-a-invite", "", "");
    let (server, actions) = call.a_sends(bytes);
    assert!(server.is_none(), "the core answers the CANCEL itself");
    actions
}

#[test]
fn cancel_while_ringing_waits_for_the_trunk_to_settle() {
    let (mut call, actions) = Call::new();
    let invite = call.ringing(&actions);
    let b_call_id = Bytes::from(hdr(&invite, HeaderName::CallId));

    let actions = cancel_from_a(&mut call);
    let (server, resp) = one_a_response(&actions);
    assert_eq!(server, call.a_server);
    assert_eq!(resp.status(), Some(487));
    assert_eq!(tag(&resp, HeaderName::To), Some(call.a_tag()));
    assert_eq!(b_cancels(&actions), vec![b_call_id.clone()]);
    assert!(
        ended(&actions).is_none(),
        "B has not settled yet: {actions:#?}"
    );
    assert!(unroutes(&actions).is_empty());
    assert!(!call.bridge.is_done());

    // The core absorbs a retransmitted CANCEL; were the event repeated, it changes nothing.
    let again = call.event(CoreEvent::Cancelled {
        server: call.a_server,
        call_id: Bytes::from_static(A_CALL_ID.as_bytes()),
    });
    assert!(a_responses(&again).is_empty(), "{again:#?}");
    assert!(b_cancels(&again).is_empty(), "{again:#?}");

    let actions = call.b_says(b_reply(&invite, 487, "Request Terminated", None, &[]));
    assert!(a_responses(&actions).is_empty(), "A was answered already");
    assert_eq!(
        ended(&actions),
        Some((Some(Leg::A), "cancelled".to_string()))
    );
    let gone = unroutes(&actions);
    assert!(gone.contains(&b_call_id));
    assert!(gone.contains(&Bytes::from_static(A_CALL_ID.as_bytes())));
    assert!(call.bridge.is_done());
}

#[test]
fn answer_crossing_the_cancel_is_acknowledged_and_hung_up() {
    let (mut call, actions) = Call::new();
    let invite = call.ringing(&actions);
    let actions = cancel_from_a(&mut call);
    assert_eq!(b_cancels(&actions).len(), 1);
    assert!(ended(&actions).is_none());

    let actions = call.b_says(b_reply(&invite, 200, "OK", Some(ANSWER), &[]));
    assert!(
        a_responses(&actions).is_empty(),
        "A got its 487: {actions:#?}"
    );
    let acks = b_acks(&actions);
    assert_eq!(acks.len(), 1, "{actions:#?}");
    assert_eq!(cseq(&acks[0].1), "1 ACK");
    assert_eq!(tag(&acks[0].1, HeaderName::To).as_deref(), Some(B_TAG));
    let bye = one_b_request(&actions).request;
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(tag(&bye, HeaderName::To).as_deref(), Some(B_TAG));
    assert_eq!(cseq(&bye), "2 BYE");
    // The ACK goes before the BYE.
    let ack_at = actions
        .iter()
        .position(|a| matches!(a, Action::B(_, SipCommand::Ack { .. })))
        .unwrap();
    let bye_at = actions
        .iter()
        .position(|a| matches!(a, Action::B(_, SipCommand::Request { .. })))
        .unwrap();
    assert!(ack_at < bye_at);
    assert_eq!(
        ended(&actions),
        Some((Some(Leg::A), "cancelled".to_string()))
    );
    assert!(call.bridge.is_done());
}

#[test]
fn cancel_before_any_provisional_is_deferred_until_one_arrives() {
    let (mut call, actions) = Call::new();
    let invite = one_b_request(&actions).request;
    let b_call_id = Bytes::from(hdr(&invite, HeaderName::CallId));

    let actions = cancel_from_a(&mut call);
    assert_eq!(one_a_response(&actions).1.status(), Some(487));
    assert!(
        b_cancels(&actions).is_empty(),
        "no CANCEL before a provisional (§9.1)"
    );
    assert!(ended(&actions).is_none());

    let actions = call.b_says(b_reply(&invite, 180, "Ringing", None, &[]));
    assert!(
        a_responses(&actions).is_empty(),
        "not relayed after A's 487"
    );
    assert_eq!(b_cancels(&actions), vec![b_call_id]);
    assert!(!progress(&actions).contains(&Progress::Ringing));

    let actions = call.b_says(b_reply(&invite, 487, "Request Terminated", None, &[]));
    assert_eq!(
        ended(&actions),
        Some((Some(Leg::A), "cancelled".to_string()))
    );
    assert!(call.bridge.is_done());
}

#[test]
fn cancel_before_any_provisional_gives_up_on_a_silent_trunk() {
    let (mut call, actions) = Call::new();
    let invite = one_b_request(&actions).request;
    let b_call_id = Bytes::from(hdr(&invite, HeaderName::CallId));
    let actions = cancel_from_a(&mut call);
    assert!(ended(&actions).is_none());

    // 64*T1 later the bridge stops waiting, and does not try the next trunk.
    let actions = call.fire(Duration::from_secs(32));
    assert_eq!(b_abandons(&actions), vec![(0, b_call_id)]);
    assert!(b_requests(&actions).is_empty(), "{actions:#?}");
    assert_eq!(
        ended(&actions),
        Some((Some(Leg::A), "cancelled".to_string()))
    );
    assert!(call.bridge.is_done());
}

// ---- 6. re-INVITE ----------------------------------------------------------------

#[test]
fn reinvite_from_a_is_relayed_with_its_offer() {
    let (mut call, actions) = Call::new();
    let invite = call.connect(&actions, &[]);
    let b_call_id = hdr(&invite, HeaderName::CallId);

    let (reinvite_server, actions) = call.a_in_dialog("INVITE", 2, OFFER2);
    assert!(
        a_responses(&actions).is_empty(),
        "A waits for B: {actions:#?}"
    );
    let sent = one_b_request(&actions);
    assert_eq!(sent.index, 0);
    assert_eq!(sent.to, sock("127.0.0.1:5070"));
    let reinvite = sent.request;
    assert_eq!(reinvite.method(), Some(&Method::Invite));
    assert_eq!(request_uri(&reinvite), "sip:uas@127.0.0.1:5070");
    assert_eq!(cseq(&reinvite), "2 INVITE");
    assert_eq!(hdr(&reinvite, HeaderName::CallId), b_call_id);
    assert_eq!(tag(&reinvite, HeaderName::To).as_deref(), Some(B_TAG));
    assert_eq!(reinvite.body, Bytes::from_static(OFFER2.as_bytes()));
    assert_eq!(hdr(&reinvite, HeaderName::ContentType), "application/sdp");
    assert_eq!(
        hdr(&reinvite, HeaderName::Contact),
        format!("<{B_CONTACT}>")
    );

    let actions = call.b_says(b_reply(&reinvite, 200, "OK", Some(ANSWER2), &[]));
    let (server, ok) = one_a_response(&actions);
    assert_eq!(server, reinvite_server);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(cseq(&ok), "2 INVITE");
    assert_eq!(ok.body, Bytes::from_static(ANSWER2.as_bytes()));
    assert_eq!(hdr(&ok, HeaderName::Contact), format!("<{A_CONTACT}>"));
    assert_eq!(tag(&ok, HeaderName::To), Some(call.a_tag()));
    assert!(b_acks(&actions).is_empty(), "B's ACK waits for A's");

    let actions = call.a_ack(2);
    let acks = b_acks(&actions);
    assert_eq!(acks.len(), 1, "{actions:#?}");
    assert_eq!(cseq(&acks[0].1), "2 ACK");
    assert_eq!(tag(&acks[0].1, HeaderName::To).as_deref(), Some(B_TAG));
    assert_eq!(hdr(&acks[0].1, HeaderName::CallId), b_call_id);

    // A retransmitted ACK is not passed on twice.
    let actions = call.a_ack(2);
    assert!(b_acks(&actions).is_empty(), "{actions:#?}");
    assert!(ended(&actions).is_none());
}

#[test]
fn reinvite_with_the_same_sdp_is_answered_locally() {
    let (mut call, actions) = Call::new();
    call.connect(&actions, &[]);
    let (server, actions) = call.a_in_dialog("INVITE", 2, OFFER);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::B(..))),
        "nothing to B: {actions:#?}"
    );
    let (answered, ok) = one_a_response(&actions);
    assert_eq!(answered, server);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(cseq(&ok), "2 INVITE");
    assert_eq!(
        ok.body,
        Bytes::from_static(ANSWER.as_bytes()),
        "the current answer"
    );
    assert_eq!(hdr(&ok, HeaderName::Contact), format!("<{A_CONTACT}>"));
    // Its ACK has nothing to be passed on with.
    let actions = call.a_ack(2);
    assert!(b_acks(&actions).is_empty(), "{actions:#?}");
}

#[test]
fn second_reinvite_while_one_is_pending_is_491() {
    let (mut call, actions) = Call::new();
    call.connect(&actions, &[]);
    let (_, actions) = call.a_in_dialog("INVITE", 2, OFFER2);
    assert_eq!(b_requests(&actions).len(), 1);
    let (server, actions) = call.a_in_dialog("UPDATE", 3, OFFER);
    let (answered, resp) = one_a_response(&actions);
    assert_eq!(answered, server);
    assert_eq!(resp.status(), Some(491));
    assert!(b_requests(&actions).is_empty());
}

#[test]
fn infos_in_a_row_are_relayed_each_answered_and_one_too_many_gets_500() {
    let (mut call, actions) = Call::new();
    call.connect(&actions, &[]);
    // DTMF as INFO, faster than the trunk answers: each is passed on.
    let mut sent = Vec::new();
    for seq in 2..2 + MAX_RELAYED as u32 {
        let (server, actions) = call.a_in_dialog("INFO", seq, "");
        assert!(a_responses(&actions).is_empty(), "{actions:#?}");
        sent.push((server, one_b_request(&actions).request));
    }
    // One more while all of them wait: refused at once, with a time to retry.
    let (refused, actions) = call.a_in_dialog("INFO", 2 + MAX_RELAYED as u32, "");
    let (answered, resp) = one_a_response(&actions);
    assert_eq!(answered, refused);
    assert_eq!(resp.status(), Some(500));
    assert_eq!(hdr(&resp, HeaderName::RetryAfter), "1");
    assert!(b_requests(&actions).is_empty());
    // B's answers, in any order, each reach the request they answer.
    for (server, relayed) in sent.into_iter().rev() {
        let actions = call.b_says(b_reply(&relayed, 200, "OK", None, &[]));
        let (answered, ok) = one_a_response(&actions);
        assert_eq!((answered, ok.status()), (server, Some(200)));
        assert_eq!(cseq(&ok).split(' ').nth(1), Some("INFO"));
    }
}

#[test]
fn rejected_reinvite_offer_is_not_remembered() {
    let (mut call, actions) = Call::new();
    call.connect(&actions, &[]);
    let (_, actions) = call.a_in_dialog("INVITE", 2, OFFER2);
    let reinvite = one_b_request(&actions).request;
    let actions = call.b_says(b_reply(&reinvite, 488, "Not Acceptable Here", None, &[]));
    assert_eq!(one_a_response(&actions).1.status(), Some(488));
    // A tries the same offer again: B must see it, not get a local 200 with the old SDP.
    let (_, actions) = call.a_in_dialog("INVITE", 3, OFFER2);
    assert_eq!(b_requests(&actions).len(), 1, "{actions:#?}");
}

#[test]
fn reinvite_2xx_from_b_refreshes_the_remote_target() {
    let (mut call, actions) = Call::new();
    call.connect(&actions, &[]);
    let (_, actions) = call.a_in_dialog("INVITE", 2, OFFER2);
    let reinvite = one_b_request(&actions).request;
    let moved = MessageBuilder::response_to(&reinvite, 200, "OK", Some(B_TAG))
        .header(HeaderName::Contact, "<sip:uas@127.0.0.1:5074>")
        .body("application/sdp", Bytes::from_static(ANSWER2.as_bytes()))
        .build();
    call.b_says(moved);
    let actions = call.a_ack(2);
    let acks = b_acks(&actions);
    assert_eq!(acks.len(), 1);
    assert_eq!(request_uri(&acks[0].1), "sip:uas@127.0.0.1:5074");
    assert_eq!(acks[0].2, sock("127.0.0.1:5074"));
}

#[test]
fn reinvite_from_a_refreshes_where_requests_toward_a_go() {
    let (mut call, actions) = Call::new();
    let invite = call.connect(&actions, &[]);
    let branch = call.branch();
    let to_tag = call.a_tag();
    let wire = text(&a_request("INVITE", 2, Some(&to_tag), &branch, "", OFFER2)).replace(
        "Contact: <sip:alice@127.0.0.1:5080>",
        "Contact: <sip:alice@127.0.0.1:5090>",
    );
    let (_, actions) = call.a_sends(wire.into());
    let reinvite = one_b_request(&actions).request;
    call.b_says(b_reply(&reinvite, 200, "OK", Some(ANSWER2), &[]));
    call.a_ack(2);
    let (_, actions) = call.b_in_dialog(&invite, "BYE", 1);
    let to_a = a_requests(&actions);
    assert_eq!(to_a.len(), 1, "{actions:#?}");
    assert_eq!(request_uri(&to_a[0].0), "sip:alice@127.0.0.1:5090");
    assert_eq!(
        to_a[0].1,
        sock("127.0.0.1:5090"),
        "sent where its Request-URI says"
    );
}

// ---- 7. session timers -----------------------------------------------------------

const CALLER_TIMER: &str = "Session-Expires: 90\r\nSupported: timer\r\n";

#[test]
fn caller_session_timer_is_answered_and_enforced() {
    let (mut call, actions) = Call::with(BridgeConfig::default(), CALLER_TIMER, targets());
    let invite = call.ringing(&actions);
    let actions = call.b_says(b_reply(&invite, 200, "OK", Some(ANSWER), &[]));
    let ok = one_a_response(&actions).1;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(hdr(&ok, HeaderName::SessionExpires), "90;refresher=uac");
    assert_eq!(hdr(&ok, HeaderName::Require), "timer");
    let actions = call.a_ack(1);
    assert_eq!(b_acks(&actions).len(), 1);
    let b_call_id = Bytes::from(hdr(&invite, HeaderName::CallId));

    // The caller never refreshes: the session ends before 90 s are up.
    let expiry = call.bridge.poll_timeout().expect("session timer armed");
    assert!(expiry > call.start && expiry < call.start + Duration::from_secs(90));
    let quiet = call.advance_to(expiry - Duration::from_millis(1));
    assert!(quiet.is_empty(), "{quiet:#?}");
    let actions = call.advance_to(expiry);
    let to_a = a_requests(&actions);
    assert_eq!(to_a.len(), 1, "{actions:#?}");
    assert_eq!(to_a[0].0.method(), Some(&Method::Bye));
    assert_eq!(to_a[0].1, sock(A_ADDR));
    let to_b = one_b_request(&actions).request;
    assert_eq!(to_b.method(), Some(&Method::Bye));
    assert_eq!(hdr(&to_b, HeaderName::CallId), text(&b_call_id));
    assert_eq!(ended(&actions), Some((None, "session_expired".to_string())));
    assert!(unroutes(&actions).contains(&b_call_id));
    assert!(call.bridge.is_done());
}

#[test]
fn caller_refresh_keeps_the_session_alive() {
    let (mut call, actions) = Call::with(BridgeConfig::default(), CALLER_TIMER, targets());
    call.connect(&actions, &[]);
    let expiry = call.bridge.poll_timeout().unwrap();
    let lead = expiry - call.start;

    // A refreshes (same SDP) 50 s in: answered here, with the timer, and re-armed.
    call.advance_to(call.start + Duration::from_secs(50));
    let (server, actions) = call.a_in_dialog("INVITE", 2, OFFER);
    let (answered, ok) = one_a_response(&actions);
    assert_eq!(answered, server);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(hdr(&ok, HeaderName::SessionExpires), "90;refresher=uac");
    assert!(b_requests(&actions).is_empty());
    assert_eq!(
        call.bridge.poll_timeout(),
        Some(call.start + Duration::from_secs(50) + lead)
    );
    let actions = call.advance_to(expiry);
    assert!(ended(&actions).is_none(), "{actions:#?}");
}

#[test]
fn trunk_session_timer_is_refreshed_with_update() {
    let (mut call, actions) = Call::new();
    let invite = call.connect(
        &actions,
        &[
            (HeaderName::SessionExpires, "1800;refresher=uac"),
            (HeaderName::Allow, "INVITE, ACK, CANCEL, BYE, UPDATE"),
        ],
    );
    let actions = call.fire(Duration::from_secs(900));
    let sent = one_b_request(&actions);
    assert_eq!(sent.index, 0);
    assert_eq!(sent.to, sock("127.0.0.1:5070"));
    let update = sent.request;
    assert_eq!(update.method(), Some(&Method::Update));
    assert_eq!(cseq(&update), "2 UPDATE");
    assert_eq!(
        hdr(&update, HeaderName::CallId),
        hdr(&invite, HeaderName::CallId)
    );
    assert_eq!(tag(&update, HeaderName::To).as_deref(), Some(B_TAG));
    assert_eq!(
        hdr(&update, HeaderName::SessionExpires),
        "1800;refresher=uac"
    );
    assert!(update.body.is_empty());
    assert!(a_requests(&actions).is_empty(), "A is not involved");
    assert!(ended(&actions).is_none());

    let actions = call.b_says(b_reply(&update, 200, "OK", None, &[]));
    assert!(actions.is_empty(), "{actions:#?}");
    assert_eq!(
        call.bridge.poll_timeout(),
        Some(call.start + Duration::from_secs(1800)),
        "the next refresh"
    );
}

#[test]
fn trunk_session_timer_is_refreshed_with_reinvite_without_update() {
    let (mut call, actions) = Call::new();
    call.connect(
        &actions,
        &[(HeaderName::SessionExpires, "1800;refresher=uac")],
    );
    let actions = call.fire(Duration::from_secs(900));
    let refresh = one_b_request(&actions).request;
    assert_eq!(refresh.method(), Some(&Method::Invite));
    assert_eq!(cseq(&refresh), "2 INVITE");
    assert_eq!(
        refresh.body,
        Bytes::from_static(OFFER.as_bytes()),
        "the same offer"
    );
    assert_eq!(
        hdr(&refresh, HeaderName::SessionExpires),
        "1800;refresher=uac"
    );
    assert!(a_requests(&actions).is_empty());

    // The refresh's 2xx is acknowledged by the bridge itself, and A hears nothing.
    let actions = call.b_says(b_reply(&refresh, 200, "OK", Some(ANSWER), &[]));
    let acks = b_acks(&actions);
    assert_eq!(acks.len(), 1, "{actions:#?}");
    assert_eq!(cseq(&acks[0].1), "2 ACK");
    assert!(a_responses(&actions).is_empty());
    assert!(a_requests(&actions).is_empty());
}

#[test]
fn trunk_that_refreshes_and_stops_ends_the_call() {
    let (mut call, actions) = Call::new();
    call.connect(
        &actions,
        &[(HeaderName::SessionExpires, "1800;refresher=uas")],
    );
    let at = call.bridge.poll_timeout().unwrap();
    assert!(
        at > call.start + Duration::from_secs(900) && at < call.start + Duration::from_secs(1800)
    );
    let actions = call.advance_to(at);
    assert_eq!(ended(&actions), Some((None, "session_expired".to_string())));
    assert_eq!(a_requests(&actions).len(), 1);
    assert_eq!(b_requests(&actions).len(), 1);
}

#[test]
fn failed_refresh_ends_the_call() {
    let (mut call, actions) = Call::new();
    call.connect(
        &actions,
        &[
            (HeaderName::SessionExpires, "1800;refresher=uac"),
            (HeaderName::Allow, "INVITE, ACK, BYE, UPDATE"),
        ],
    );
    let actions = call.fire(Duration::from_secs(900));
    let update = one_b_request(&actions).request;
    let actions = call.b_says(b_reply(
        &update,
        481,
        "Call/Transaction Does Not Exist",
        None,
        &[],
    ));
    assert_eq!(
        ended(&actions),
        Some((None, "session_refresh_failed".to_string()))
    );
    assert_eq!(a_requests(&actions).len(), 1, "BYE to A: {actions:#?}");
}

#[test]
fn too_short_session_interval_is_refused_422() {
    let now = Instant::now();
    let mut core = SipCore::new(
        Transport::Unreliable,
        TimerConfig::default(),
        sock("127.0.0.1:5060"),
        1,
    )
    .with_user();
    let (server, invite) = receive_invite(
        &mut core,
        now,
        "Session-Expires: 30\r\nSupported: timer\r\n",
    );
    let refused = Bridge::start(
        BridgeConfig::default(),
        SEED,
        server,
        invite.clone(),
        sock(A_ADDR),
        false,
        A_CONTACT.into(),
        targets(),
    );
    let Err((refusal, to_tag)) = refused else {
        panic!("a 30 s session interval must be refused");
    };
    assert_eq!(refusal.status, 422);
    assert_eq!(
        refusal.headers,
        vec![(HeaderName::MinSe, MIN_SE.to_string())]
    );
    let resp = refusal.response(&invite, &to_tag);
    assert_eq!(resp.status(), Some(422));
    assert_eq!(hdr(&resp, HeaderName::MinSe), "90");
    assert_eq!(tag(&resp, HeaderName::To), Some(to_tag));
    assert_eq!(hdr(&resp, HeaderName::CallId), A_CALL_ID);
}

#[test]
fn minimum_session_interval_is_accepted() {
    let (call, actions) = Call::with(
        BridgeConfig::default(),
        "Session-Expires: 90\r\nSupported: timer\r\n",
        targets(),
    );
    assert_eq!(b_requests(&actions).len(), 1);
    assert!(!call.bridge.is_done());
}

// ---- 8. digest authentication ----------------------------------------------------

fn credentialed() -> Vec<Target> {
    let mut t = targets();
    t[0].credentials = Some(Credentials {
        username: "user".into(),
        password: "secret".into(),
    });
    t
}

#[test]
fn challenged_invite_is_resent_with_credentials_once() {
    let (mut call, actions) = Call::with(BridgeConfig::default(), "", credentialed());
    let first = one_b_request(&actions).request;
    let challenge = [(
        HeaderName::ProxyAuthenticate,
        r#"Digest realm="pbx", nonce="abc""#,
    )];

    let actions = call.b_says(b_reply(
        &first,
        407,
        "Proxy Authentication Required",
        None,
        &challenge,
    ));
    assert!(
        a_responses(&actions).is_empty(),
        "A hears nothing: {actions:#?}"
    );
    assert!(routes(&actions).is_empty() && unroutes(&actions).is_empty());
    let sent = one_b_request(&actions);
    assert_eq!(sent.index, 0);
    assert_eq!(sent.to, sock("127.0.0.1:5070"));
    let second = sent.request;
    assert_eq!(second.method(), Some(&Method::Invite));
    assert_eq!(
        hdr(&second, HeaderName::CallId),
        hdr(&first, HeaderName::CallId)
    );
    assert_eq!(
        hdr(&second, HeaderName::From),
        hdr(&first, HeaderName::From)
    );
    assert_eq!(cseq(&second), "2 INVITE");
    assert_eq!(second.body, first.body);
    let auth = hdr(&second, HeaderName::ProxyAuthorization);
    assert!(auth.starts_with("Digest "), "{auth}");
    for part in [
        r#"username="user""#,
        r#"realm="pbx""#,
        r#"nonce="abc""#,
        &format!(r#"uri="sip:{DIALLED}@127.0.0.1:5070""#),
    ] {
        assert!(auth.contains(part), "{part} missing in {auth}");
    }
    assert!(second.header(&HeaderName::Authorization).is_none());

    // Challenged again: the caller gets the 407, no third INVITE.
    let actions = call.b_says(b_reply(
        &second,
        407,
        "Proxy Authentication Required",
        None,
        &challenge,
    ));
    assert!(b_requests(&actions).is_empty(), "no loop: {actions:#?}");
    let (server, resp) = one_a_response(&actions);
    assert_eq!(server, call.a_server);
    // The challenge is for the switch's credentials: the caller gets 403, not a 407 it
    // could never answer.
    assert_eq!(resp.status(), Some(403));
    assert!(resp.header(&HeaderName::ProxyAuthenticate).is_none());
    assert_eq!(ended(&actions), Some((None, "rejected".to_string())));
    assert!(call.bridge.is_done());
}

#[test]
fn digest_answer_verifies_against_the_challenger() {
    let issuer = NonceIssuer::new("pbx", "s3cret", 300);
    let challenge = issuer.challenge(1_000, Algorithm::Md5, false);
    let (mut call, actions) = Call::with(BridgeConfig::default(), "", credentialed());
    let first = one_b_request(&actions).request;
    let actions = call.b_says(b_reply(
        &first,
        401,
        "Unauthorized",
        None,
        &[(HeaderName::WwwAuthenticate, &challenge)],
    ));
    let second = one_b_request(&actions).request;
    assert_eq!(cseq(&second), "2 INVITE");
    assert!(second.header(&HeaderName::ProxyAuthorization).is_none());
    let credentials = second
        .header(&HeaderName::Authorization)
        .expect("Authorization");
    let who = verify(&credentials.value, "INVITE", &issuer, 1_000, |u| {
        (u == "user").then(|| "secret".to_string())
    });
    assert_eq!(who.as_deref(), Ok("user"));

    // Accepted this time: the call goes on with the retried transaction.
    let actions = call.b_says(b_reply(&second, 180, "Ringing", None, &[]));
    assert_eq!(one_a_response(&actions).1.status(), Some(180));
    let actions = call.b_says(b_reply(&second, 200, "OK", Some(ANSWER), &[]));
    assert_eq!(one_a_response(&actions).1.status(), Some(200));
    let actions = call.a_ack(1);
    let acks = b_acks(&actions);
    assert_eq!(acks.len(), 1);
    assert_eq!(
        cseq(&acks[0].1),
        "2 ACK",
        "the ACK matches the INVITE answered"
    );
}

#[test]
fn challenge_without_credentials_goes_back_to_a() {
    let (mut call, actions) = Call::new();
    let first = one_b_request(&actions).request;
    let actions = call.b_says(b_reply(
        &first,
        407,
        "Proxy Authentication Required",
        None,
        &[(
            HeaderName::ProxyAuthenticate,
            r#"Digest realm="pbx", nonce="abc""#,
        )],
    ));
    assert!(b_requests(&actions).is_empty());
    assert_eq!(one_a_response(&actions).1.status(), Some(403));
}

#[test]
fn resent_invite_has_an_invite_timeout() {
    let (mut call, actions) = Call::with(BridgeConfig::default(), "", credentialed());
    let first = one_b_request(&actions).request;
    call.advance_to(call.start + Duration::from_secs(1));
    call.b_says(b_reply(
        &first,
        407,
        "Proxy Authentication Required",
        None,
        &[(
            HeaderName::ProxyAuthenticate,
            r#"Digest realm="pbx", nonce="abc""#,
        )],
    ));
    assert_eq!(
        call.bridge.poll_timeout(),
        Some(call.start + Duration::from_secs(3))
    );
}

// ---- 9. ring timeout -------------------------------------------------------------

#[test]
fn ringing_too_long_is_480_and_cancel() {
    let cfg = BridgeConfig {
        ring_timeout: Duration::from_secs(30),
        ..BridgeConfig::default()
    };
    let (mut call, actions) = Call::with(cfg, "", targets());
    call.advance_to(call.start + Duration::from_secs(1));
    let invite = call.ringing(&actions);
    let b_call_id = Bytes::from(hdr(&invite, HeaderName::CallId));

    let quiet = call.advance_to(call.start + Duration::from_secs(30));
    assert!(quiet.is_empty(), "{quiet:#?}");
    let actions = call.fire(Duration::from_secs(31));
    let (server, resp) = one_a_response(&actions);
    assert_eq!(server, call.a_server);
    assert_eq!(resp.status(), Some(480));
    assert_eq!(tag(&resp, HeaderName::To), Some(call.a_tag()));
    assert_eq!(b_cancels(&actions), vec![b_call_id.clone()]);
    assert!(
        b_requests(&actions).is_empty(),
        "no next trunk on no-answer"
    );
    assert!(ended(&actions).is_none(), "B has not settled yet");

    let actions = call.b_says(b_reply(&invite, 487, "Request Terminated", None, &[]));
    assert!(a_responses(&actions).is_empty());
    assert_eq!(ended(&actions), Some((None, "no_answer".to_string())));
    assert!(unroutes(&actions).contains(&b_call_id));
    assert!(call.bridge.is_done());
}

#[test]
fn ringing_too_long_settles_even_if_the_cancel_goes_unanswered() {
    let (mut call, actions) = Call::new();
    call.ringing(&actions);
    let actions = call.fire(Duration::from_secs(120));
    assert_eq!(one_a_response(&actions).1.status(), Some(480));
    assert!(ended(&actions).is_none());
    let actions = call.fire(Duration::from_secs(152));
    assert!(
        b_abandons(&actions).is_empty(),
        "it had a provisional: cancelled, not abandoned"
    );
    assert_eq!(ended(&actions), Some((None, "no_answer".to_string())));
    assert!(call.bridge.is_done());
}

// ---- the switch's own hangup -----------------------------------------------------

#[test]
fn hangup_before_answer_is_480_to_a() {
    let (mut call, actions) = Call::new();
    call.ringing(&actions);
    let now = call.now;
    call.bridge.hangup(now, "admin");
    let actions = call.drain();
    let resp = one_a_response(&actions).1;
    assert_eq!(resp.status(), Some(480));
    assert!(hdr(&resp, HeaderName::Reason).contains("admin"));
    assert_eq!(b_cancels(&actions).len(), 1);
}

#[test]
fn ack_timeout_from_a_hangs_up() {
    let (mut call, actions) = Call::new();
    let invite = call.ringing(&actions);
    call.b_says(b_reply(&invite, 200, "OK", Some(ANSWER), &[]));
    let actions = call.event(CoreEvent::AckTimeout {
        server: call.a_server,
        call_id: Bytes::from_static(A_CALL_ID.as_bytes()),
    });
    assert_eq!(a_requests(&actions).len(), 1, "BYE to A: {actions:#?}");
    let bye = one_b_request(&actions).request;
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(ended(&actions), Some((None, "ack_timeout".to_string())));
}

thread_local! {
    /// The anchor the next `Call` begins with (tests of anchored calls set it).
    static ANCHOR: std::cell::Cell<Option<Anchor>> = const { std::cell::Cell::new(None) };
}

#[test]
fn anchored_calls_rewrite_sdp_both_ways_and_report_each_legs_media() {
    let anchor = Anchor {
        ip: "10.9.9.9".parse().unwrap(),
        ports: [30_000, 30_002],
    };
    ANCHOR.with(|a| a.set(Some(anchor)));
    let (mut call, actions) = Call::new();
    ANCHOR.with(|a| a.set(None));
    let invite = one_b_request(&actions).request;
    let offer = String::from_utf8(invite.body.to_vec()).unwrap();
    assert!(offer.contains("c=IN IP4 10.9.9.9\r\n"), "{offer}");
    assert!(
        offer.contains("m=audio 30002 "),
        "B is offered the B-facing port: {offer}"
    );
    let media: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Media(leg, audio) => Some((*leg, audio.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(media.len(), 1);
    assert_eq!(media[0].0, Leg::A);
    assert!(media[0].1.target.is_some(), "A's own address from its SDP");

    let answer_sdp = "v=0\r\no=uas 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                      t=0 0\r\nm=audio 7078 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    let ok = b_reply(&invite, 200, "OK", Some(answer_sdp), &[]);
    let actions = call.b_says(ok);
    let (_, to_a) = one_a_response(&actions);
    let answer = String::from_utf8(to_a.body.to_vec()).unwrap();
    assert!(answer.contains("m=audio 30000 RTP/AVP 0 101"), "{answer}");
    assert!(answer.contains("c=IN IP4 10.9.9.9"), "{answer}");
    let b_media = actions.iter().find_map(|a| match a {
        Action::Media(Leg::B, r) => Some(r.clone()),
        _ => None,
    });
    let b_media = b_media.expect("B's media reported");
    assert_eq!(b_media.target, Some("127.0.0.1:7078".parse().unwrap()));
    assert_eq!(b_media.telephone_event(), Some(101));
    assert_eq!(b_media.direction, crate::sdp::Direction::SendRecv);
    let plans: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::MediaPlan(p) => Some(p.summary()),
            _ => None,
        })
        .collect();
    assert_eq!(plans, ["PCMU pass-through"]);
}

#[test]
fn a_trunk_naming_a_user_is_called_at_that_user_not_the_dialled_number() {
    let mut t = targets();
    t[0].user = Some("queue7".into());
    let (_call, actions) = Call::with(BridgeConfig::default(), "", t);
    let invite = one_b_request(&actions).request;
    assert_eq!(request_uri(&invite), "sip:queue7@127.0.0.1:5070");
    assert!(
        hdr(&invite, HeaderName::To).contains("sip:queue7@127.0.0.1:5070"),
        "{}",
        hdr(&invite, HeaderName::To)
    );
}

fn ring_all() -> BridgeConfig {
    BridgeConfig {
        parallel: true,
        ..BridgeConfig::default()
    }
}

/// Ring-all: both targets get the INVITE at once; the second answers, takes the call (and
/// is the one reported), and the first, still ringing, is cancelled.
#[test]
fn ring_all_invites_every_target_at_once_and_the_first_answer_wins() {
    let (mut call, actions) = Call::with(ring_all(), "", targets());
    let sent = b_requests(&actions);
    assert_eq!(sent.len(), 2, "{actions:#?}");
    assert_eq!((sent[0].index, sent[1].index), (0, 1));
    assert_ne!(
        hdr(&sent[0].request, HeaderName::CallId),
        hdr(&sent[1].request, HeaderName::CallId)
    );
    assert_eq!(routes(&actions).len(), 2);
    assert!(
        !progress(&actions)
            .iter()
            .any(|p| matches!(p, Progress::Trying { .. })),
        "nobody is reported before someone answers"
    );
    // Both ring: the caller hears ringing once.
    let actions = call.b_says(b_reply(&sent[0].request, 180, "Ringing", None, &[]));
    assert_eq!(one_a_response(&actions).1.status(), Some(180));
    let actions = call.b_says(b_reply(&sent[1].request, 180, "Ringing", None, &[]));
    assert!(a_responses(&actions).is_empty(), "{actions:#?}");
    // The second answers.
    let actions = call.b_says(b_reply(&sent[1].request, 200, "OK", Some(ANSWER), &[]));
    assert_eq!(one_a_response(&actions).1.status(), Some(200));
    assert_eq!(
        b_cancels(&actions),
        [Bytes::from(hdr(&sent[0].request, HeaderName::CallId))],
        "the other stops ringing"
    );
    assert!(progress(&actions).contains(&Progress::Trying { trunk: "t1".into() }));
    assert!(progress(&actions).contains(&Progress::Answered));
    // The cancelled one's 487 changes nothing.
    let actions = call.b_says(b_reply(
        &sent[0].request,
        487,
        "Request Terminated",
        None,
        &[],
    ));
    assert!(a_responses(&actions).is_empty() && ended(&actions).is_none());
}

/// Ring-all: one target refuses, the other goes on ringing and answers; when every target
/// refuses, the caller hears the best failure.
#[test]
fn ring_all_goes_on_while_any_target_rings_and_fails_only_when_all_have() {
    let (mut call, actions) = Call::with(ring_all(), "", targets());
    let sent = b_requests(&actions);
    let actions = call.b_says(b_reply(&sent[0].request, 486, "Busy Here", None, &[]));
    assert!(a_responses(&actions).is_empty(), "{actions:#?}");
    assert!(ended(&actions).is_none());
    let actions = call.b_says(b_reply(&sent[1].request, 200, "OK", Some(ANSWER), &[]));
    assert_eq!(one_a_response(&actions).1.status(), Some(200));

    let (mut call, actions) = Call::with(ring_all(), "", targets());
    let sent = b_requests(&actions);
    call.b_says(b_reply(&sent[1].request, 603, "Decline", None, &[]));
    let actions = call.b_says(b_reply(&sent[0].request, 486, "Busy Here", None, &[]));
    let (_, resp) = one_a_response(&actions);
    assert_eq!(resp.status(), Some(603), "6xx is the best failure");
    assert!(ended(&actions).is_some());
}

/// Ring-all: nobody answers within the ring time: every target is cancelled and the
/// caller hears 480.
#[test]
fn ring_all_cancels_everyone_when_nobody_answers_in_time() {
    let cfg = BridgeConfig {
        ring_timeout: Duration::from_secs(5),
        ..ring_all()
    };
    let (mut call, actions) = Call::with(cfg, "", targets());
    let sent = b_requests(&actions);
    call.b_says(b_reply(&sent[0].request, 180, "Ringing", None, &[]));
    call.b_says(b_reply(&sent[1].request, 180, "Ringing", None, &[]));
    let at = call.bridge.poll_timeout().expect("a deadline");
    let actions = call.advance_to(at);
    assert_eq!(one_a_response(&actions).1.status(), Some(480));
    assert_eq!(b_cancels(&actions).len(), 2, "{actions:#?}");
    // Both settle with their 487; then the call ends as unanswered.
    let actions = call.b_says(b_reply(
        &sent[0].request,
        487,
        "Request Terminated",
        None,
        &[],
    ));
    assert!(ended(&actions).is_none(), "the other attempt is still owed");
    let actions = call.b_says(b_reply(
        &sent[1].request,
        487,
        "Request Terminated",
        None,
        &[],
    ));
    assert_eq!(
        ended(&actions).map(|(_, cause)| cause),
        Some("no_answer".into())
    );
}

/// Ring-all: the first target declines while the second rings; the second still gets
/// only the ring time, then is cancelled and the caller hears 480.
#[test]
fn ring_all_keeps_the_ring_time_after_one_target_declines() {
    let cfg = BridgeConfig {
        ring_timeout: Duration::from_secs(5),
        ..ring_all()
    };
    let (mut call, actions) = Call::with(cfg, "", targets());
    let sent = b_requests(&actions);
    call.b_says(b_reply(&sent[1].request, 180, "Ringing", None, &[]));
    let actions = call.b_says(b_reply(&sent[0].request, 603, "Decline", None, &[]));
    assert!(a_responses(&actions).is_empty(), "{actions:#?}");
    let at = call
        .bridge
        .poll_timeout()
        .expect("the ring time still runs");
    assert!(
        at - call.start <= Duration::from_secs(5),
        "{:?}",
        at - call.start
    );
    let actions = call.advance_to(at);
    assert_eq!(one_a_response(&actions).1.status(), Some(480));
    assert_eq!(
        b_cancels(&actions),
        [Bytes::from(hdr(&sent[1].request, HeaderName::CallId))]
    );
}

/// Ring-all: the caller gives up while both ring: both are cancelled, and the call ends
/// only once both have answered the CANCEL (a 2xx crossing it would be hung up).
#[test]
fn ring_all_cancels_every_attempt_when_the_caller_gives_up_and_waits_for_them() {
    let (mut call, actions) = Call::with(ring_all(), "", targets());
    let sent = b_requests(&actions);
    call.b_says(b_reply(&sent[0].request, 180, "Ringing", None, &[]));
    call.b_says(b_reply(&sent[1].request, 180, "Ringing", None, &[]));
    let (_, actions) = call.a_sends(a_request("CANCEL", 1, None, "z9hG4bK-a-invite", "", ""));
    assert_eq!(b_cancels(&actions).len(), 2, "{actions:#?}");
    let actions = call.b_says(b_reply(
        &sent[0].request,
        487,
        "Request Terminated",
        None,
        &[],
    ));
    assert!(ended(&actions).is_none(), "the other attempt is still owed");
    // The other answers as it is cancelled: acknowledged and hung up, then the end.
    let actions = call.b_says(b_reply(&sent[1].request, 200, "OK", Some(ANSWER), &[]));
    assert_eq!(b_acks(&actions).len(), 1, "{actions:#?}");
    assert!(b_requests(&actions)
        .iter()
        .any(|s| s.request.method() == Some(&Method::Bye)));
    assert!(ended(&actions).is_some(), "{actions:#?}");
}

fn media_reports(actions: &[Action]) -> Vec<(Leg, crate::sdp::Audio)> {
    pick(actions, |a| match a {
        Action::Media(leg, audio) => Some((*leg, audio.clone())),
        _ => None,
    })
}

fn pts(audio: &crate::sdp::Audio) -> Vec<u8> {
    audio.formats.iter().map(|f| f.pt).collect()
}

/// A later offer reaches the media only with its answer, narrowed to what the answer kept;
/// one the far side refuses never reaches it.
#[test]
fn a_later_offer_reaches_the_media_narrowed_by_its_answer_and_a_refused_one_never() {
    ANCHOR.with(|a| {
        a.set(Some(Anchor {
            ip: "10.9.9.9".parse().unwrap(),
            ports: [30_000, 30_002],
        }))
    });
    let (mut call, actions) = Call::new();
    ANCHOR.with(|a| a.set(None));
    let first = media_reports(&actions);
    assert_eq!(first.len(), 1, "the first offer at once (early media)");
    let invite = call.ringing(&actions);
    let answer = "v=0\r\no=uas 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                  t=0 0\r\nm=audio 7078 RTP/AVP 0\r\n";
    let actions = call.b_says(b_reply(&invite, 200, "OK", Some(answer), &[]));
    let media = media_reports(&actions);
    let a_kept = media
        .iter()
        .find(|(l, _)| *l == Leg::A)
        .expect("A narrowed");
    assert_eq!(pts(&a_kept.1), [0], "A offered more; the answer kept PCMU");
    call.a_ack(1);

    // A holds, offering PCMA and PCMU: nothing moves until B answers, and B refuses.
    let hold = "v=0\r\no=alice 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                t=0 0\r\nm=audio 9000 RTP/AVP 8 0\r\na=sendonly\r\n";
    let (_, actions) = call.a_in_dialog("INVITE", 2, hold);
    assert!(media_reports(&actions).is_empty(), "{actions:#?}");
    let reinvite = one_b_request(&actions).request;
    let actions = call.b_says(b_reply(&reinvite, 488, "Not Acceptable Here", None, &[]));
    assert_eq!(one_a_response(&actions).1.status(), Some(488));
    assert!(media_reports(&actions).is_empty(), "{actions:#?}");

    // Offered again, B takes PCMU only: A's media is its new address with PCMU alone.
    let hold = hold.replace("o=alice 1 2", "o=alice 1 3");
    let (_, actions) = call.a_in_dialog("INVITE", 3, &hold);
    assert!(media_reports(&actions).is_empty());
    let reinvite = one_b_request(&actions).request;
    let held = "v=0\r\no=uas 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                t=0 0\r\nm=audio 7078 RTP/AVP 0\r\na=recvonly\r\n";
    let actions = call.b_says(b_reply(&reinvite, 200, "OK", Some(held), &[]));
    let media = media_reports(&actions);
    assert_eq!(media.len(), 2, "{media:#?}");
    let (leg, a) = &media[0];
    assert_eq!(*leg, Leg::A);
    assert_eq!(a.target, Some(sock("127.0.0.1:9000")));
    assert_eq!(pts(a), [0], "narrowed: A may send only what B kept");
    assert_eq!(a.codec().map(|c| c.pt), Some(0), "not PCMA, A's first");
    assert_eq!(a.direction, crate::sdp::Direction::SendOnly);
    assert_eq!(media[1].0, Leg::B);
    assert_eq!(media[1].1.direction, crate::sdp::Direction::RecvOnly);
}
