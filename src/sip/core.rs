//! The SIP user-agent core of the switch's own address, sans-IO: framing, screening, server
//! transactions and the answers the switch gives itself.
//!
//! [`SipCore`] takes datagrams with their source address and the time, and yields datagrams
//! to send. It matches requests to server transactions (RFC 3261 §17.2.3), so
//! retransmissions are absorbed or answered from the transaction, and it answers:
//! OPTIONS with 200 (capabilities), an INVITE for which no route exists with 404, requests
//! that need a dialog the switch does not have with 481, REGISTER and other methods the
//! switch does not serve with 405. Responses are sent back to the source address of the
//! request (RFC 3581 `rport`/`received` handling, RFC 3261 §18.2.2), never to a host named
//! in a header.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::build::MessageBuilder;
use super::header::Via;
use super::msg::{parse_datagram, Header, HeaderName, Method, SipMessage, StartLine};
use super::overload::RateLimiter;
use super::source::{RefusalLog, Sources, UnknownSource};
use super::txn::{ClientTxn, ServerTxn, TimerConfig, Transport, TxnOutput};
use super::validate::{screen, Screened, SUPPORTED_OPTIONS};
use crate::telemetry;

/// Most server transactions held at once; beyond it new requests get a stateless 503, so a
/// flood of distinct requests cannot grow memory without limit.
pub(crate) const MAX_TRANSACTIONS: usize = 200_000;

/// Methods the switch implements (the `Allow` header of everything it sends, its own
/// answers and the B2BUA's messages alike). PRACK is not among them: the switch sends no
/// reliable provisional responses (no `100rel`), so a PRACK can only be answered 481.
pub(crate) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO";

/// Identifies a server transaction (RFC 3261 §17.2.3): branch, sent-by and method (ACK
/// matches its INVITE); for RFC 2543 peers, whose branch lacks the magic cookie, the
/// Request-URI, Call-ID, CSeq number and From tag stand in for the branch (§17.2.3, last
/// paragraph). The source address is part of the key, so a request forged from elsewhere
/// never matches, and never replays, another peer's transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TxnKey {
    branch: String,
    sent_by: String,
    method: Method,
    peer: SocketAddr,
}

impl TxnKey {
    fn of(msg: &SipMessage, top: &Via, peer: SocketAddr) -> Option<TxnKey> {
        let method = match msg.method()? {
            Method::Ack => Method::Invite,
            m => m.clone(),
        };
        let branch = match top.branch() {
            Some(b) if b.starts_with("z9hG4bK") => b.to_string(),
            _ => {
                let uri = match &msg.start {
                    StartLine::Request { uri, .. } => uri.clone(),
                    StartLine::Response { .. } => Bytes::new(),
                };
                let call_id = msg.header(&HeaderName::CallId)?.value.clone();
                let seq = super::header::CSeq::parse(&msg.header(&HeaderName::CSeq)?.value)
                    .ok()?
                    .seq;
                let from_tag =
                    super::header::NameAddr::parse(&msg.header(&HeaderName::From)?.value)
                        .ok()
                        .and_then(|a| a.tag().map(str::to_string))
                        .unwrap_or_default();
                format!(
                    "rfc2543:{}:{}:{seq}:{from_tag}",
                    String::from_utf8_lossy(&uri),
                    String::from_utf8_lossy(&call_id)
                )
            }
        };
        Some(TxnKey {
            branch,
            sent_by: format!("{}:{}", top.host, top.port.unwrap_or(5060)),
            method,
            peer,
        })
    }
}

struct Entry {
    txn: ServerTxn,
    peer: SocketAddr,
    id: ServerId,
    /// Call-ID and CSeq number of an INVITE answered 2xx, so the ACK (its own transaction,
    /// §17.2.3) finds it.
    accepted: Option<(Bytes, u32)>,
    /// The deadline already in the timer heap, so a retransmission adds no entry.
    armed: Option<Instant>,
}

/// Identifies a request the core sent on behalf of its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl RequestId {
    /// The id of a request answered outside any SIP core (the WhatsApp side of a bridged
    /// call answers the requests the bridge sends it).
    pub fn detached(n: u64) -> Self {
        RequestId(u64::MAX - n)
    }
}

/// Identifies a server transaction handed to the transaction user, which answers it with
/// [`SipCore::respond`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(u64);

impl ServerId {
    /// The id of a server transaction outside any SIP core (the WhatsApp side of a bridged
    /// call, whose INVITE the bridge answers).
    pub fn detached(n: u64) -> Self {
        ServerId(u64::MAX - n)
    }
}

/// What the core reports to its user: outcomes of requests sent with
/// [`SipCore::send_request`] and, with a transaction user attached
/// ([`SipCore::with_user`]), the requests it does not answer itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreEvent {
    /// A response (provisional or final) arrived for a request we sent.
    Response(RequestId, SipMessage),
    /// No final response came in time (Timer B or F), or the transport failed; the request
    /// that went unanswered.
    Timeout(RequestId, SipMessage),
    /// A request for the user: a new INVITE, or a request inside a dialog. The core has sent
    /// 100 Trying for an INVITE; the user answers with [`SipCore::respond`].
    Request {
        /// The server transaction to answer.
        server: ServerId,
        /// The request (top Via stamped with `received`/`rport`).
        request: SipMessage,
        /// Where it came from.
        from: SocketAddr,
    },
    /// A CANCEL matched an INVITE not yet answered finally; the core answered the CANCEL
    /// 200, the user answers the INVITE (487).
    Cancelled {
        /// The INVITE's transaction.
        server: ServerId,
        /// The INVITE's Call-ID.
        call_id: Bytes,
    },
    /// The ACK for a 2xx the user sent (the core stopped retransmitting the 2xx).
    Ack {
        /// The ACK.
        request: SipMessage,
        /// Where it came from.
        from: SocketAddr,
    },
    /// A 2xx the user sent to an INVITE was never acknowledged (Timer L); RFC 3261 §13.3.1.4
    /// says the dialog ends (the user sends BYE).
    AckTimeout {
        /// The INVITE's transaction.
        server: ServerId,
        /// The INVITE's Call-ID.
        call_id: Bytes,
    },
}

impl CoreEvent {
    /// The Call-ID the event belongs to, for routing it to its call (a view of the
    /// message's bytes: no copy).
    pub fn call_id(&self) -> Option<Bytes> {
        let msg = match self {
            CoreEvent::Response(_, m)
            | CoreEvent::Timeout(_, m)
            | CoreEvent::Request { request: m, .. }
            | CoreEvent::Ack { request: m, .. } => m,
            CoreEvent::Cancelled { call_id, .. } | CoreEvent::AckTimeout { call_id, .. } => {
                return Some(call_id.clone())
            }
        };
        msg.header(&HeaderName::CallId).map(|h| h.value.clone())
    }
}

/// What a transaction user asks of the core (the same operations as its methods, as values
/// that can cross a channel to the task that owns the core).
#[derive(Debug, Clone)]
pub enum SipCommand {
    /// Answer a server transaction.
    Respond {
        /// Which.
        server: ServerId,
        /// The response.
        response: SipMessage,
    },
    /// Send a request in a new client transaction.
    Request {
        /// The request, without our Via.
        request: SipMessage,
        /// Next hop.
        to: SocketAddr,
    },
    /// Send the ACK for a 2xx (no transaction).
    Ack {
        /// The ACK, without our Via.
        request: SipMessage,
        /// Next hop.
        to: SocketAddr,
    },
    /// CANCEL the INVITE we sent with this Call-ID.
    Cancel {
        /// Its Call-ID.
        call_id: Bytes,
    },
    /// Stop retransmitting the INVITE we sent with this Call-ID, without a CANCEL (no
    /// provisional response ever came, so there is nothing to cancel, §9.1).
    Abandon {
        /// Its Call-ID.
        call_id: Bytes,
    },
}

/// Client transaction key (RFC 3261 §17.1.3): our branch and the CSeq method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    branch: String,
    method: Method,
}

struct ClientEntry {
    txn: ClientTxn,
    peer: SocketAddr,
    id: RequestId,
    armed: Option<Instant>,
    /// Call-ID of an INVITE, indexed in `client_invites`.
    invite_call_id: Option<Bytes>,
}

/// A deadline in the timer heap: which transaction it belongs to.
#[derive(Debug, Clone)]
enum TimerOwner {
    Server(TxnKey),
    Client(ClientKey),
}

/// The switch's SIP core for one listening address.
pub(crate) struct SipCore {
    counters: MessageCounters,
    timers: TimerConfig,
    transport: Transport,
    txns: HashMap<TxnKey, Entry>,
    clients: HashMap<ClientKey, ClientEntry>,
    events: VecDeque<CoreEvent>,
    local: SocketAddr,
    branch_seed: u64,
    next_request: u64,
    /// Deadlines of transactions; stale entries are skipped when popped.
    wheel: BinaryHeap<Reverse<(Instant, u64)>>,
    ids: HashMap<u64, TimerOwner>,
    next_id: u64,
    out: VecDeque<(SocketAddr, Bytes)>,
    tag_counter: u64,
    draining: bool,
    admission: Option<Arc<Mutex<RateLimiter>>>,
    /// INVITEs the rate limit refused, kept while their retransmissions may come.
    refused: Refused,
    /// Who may start calls; `None`: anyone (the transaction user decides).
    sources: Option<Arc<Sources>>,
    /// Agents whose phones register (`None`: REGISTER is not served).
    agents: Option<(Arc<super::registrar::Agents>, super::transport::Kind)>,
    refusals: RefusalLog,
    /// A transaction user takes INVITEs and in-dialog requests.
    user: bool,
    /// Transport written in our Via when not UDP/TCP (`TLS`).
    via_protocol: Option<&'static str>,
    next_server: u64,
    server_ids: HashMap<ServerId, TxnKey>,
    accepted: HashMap<(Bytes, u32), TxnKey>,
    client_invites: HashMap<Bytes, ClientKey>,
    /// This core's share of `waswitch_sip_transactions_active` (every listener and
    /// connection has a core; the gauge is their sum).
    published: usize,
}

impl Drop for SipCore {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::SIP_TRANSACTIONS_ACTIVE).decrement(self.published as f64);
    }
}

impl SipCore {
    /// A core for an unreliable (UDP) or reliable (TCP, TLS) transport, listening at
    /// `local` (written in the Via of requests it sends). `branch_seed` makes its branches
    /// unique across restarts (pass a random value).
    pub(crate) fn new(
        transport: Transport,
        timers: TimerConfig,
        local: SocketAddr,
        branch_seed: u64,
    ) -> Self {
        Self {
            timers,
            transport,
            txns: HashMap::new(),
            clients: HashMap::new(),
            events: VecDeque::new(),
            local,
            branch_seed,
            next_request: 0,
            counters: MessageCounters::default(),
            wheel: BinaryHeap::new(),
            ids: HashMap::new(),
            next_id: 0,
            out: VecDeque::new(),
            tag_counter: 0,
            draining: false,
            admission: None,
            refused: Refused::default(),
            sources: None,
            agents: None,
            refusals: RefusalLog::default(),
            user: false,
            via_protocol: None,
            next_server: 0,
            server_ids: HashMap::new(),
            accepted: HashMap::new(),
            client_invites: HashMap::new(),
            published: 0,
        }
    }

    /// Brings this core's share of `waswitch_sip_transactions_active` up to date.
    fn publish_size(&mut self) {
        let now = self.txns.len() + self.clients.len();
        if now != self.published {
            let gauge = metrics::gauge!(telemetry::SIP_TRANSACTIONS_ACTIVE);
            if now > self.published {
                gauge.increment((now - self.published) as f64);
            } else {
                gauge.decrement((self.published - now) as f64);
            }
            self.published = now;
        }
    }

    /// Writes `protocol` (e.g. `TLS`) as the transport of our Via headers.
    pub(crate) fn with_via_protocol(mut self, protocol: &'static str) -> Self {
        self.via_protocol = Some(protocol);
        self
    }

    /// Hands new INVITEs and requests inside dialogs to a transaction user as
    /// [`CoreEvent::Request`] instead of answering them itself (404, 481).
    pub(crate) fn with_user(mut self) -> Self {
        self.user = true;
        self
    }

    /// Limits new INVITEs with `limiter` (shared by every listener of the node); above it
    /// they get a stateless 503 with Retry-After. Requests inside a dialog are never limited.
    pub(crate) fn with_admission(mut self, limiter: Arc<Mutex<RateLimiter>>) -> Self {
        self.admission = Some(limiter);
        self
    }

    /// New INVITEs from addresses `sources` does not admit are refused statelessly (one
    /// 403, no transaction) or dropped, as its policy says, before anything else is done
    /// for them.
    pub(crate) fn with_sources(mut self, sources: Arc<Sources>) -> Self {
        self.sources = Some(sources);
        self
    }

    /// REGISTERs are answered by `agents`' registrar.
    pub(crate) fn with_agents(
        mut self,
        agents: Arc<super::registrar::Agents>,
        via: super::transport::Kind,
    ) -> Self {
        self.agents = Some((agents, via));
        self
    }

    /// While draining, new INVITEs are answered 503 so callers retry another node.
    pub(crate) fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Server transactions in progress.
    #[cfg(test)]
    pub(crate) fn transactions(&self) -> usize {
        self.txns.len()
    }

    /// A UDP datagram arrived from `from` at `now`.
    pub(crate) fn handle_datagram(&mut self, now: Instant, data: Bytes, from: SocketAddr) {
        self.handle_frame(now, parse_datagram(data), from);
    }

    /// A message framed by the transport (a datagram, or a frame of a stream) arrived.
    pub(crate) fn handle_frame(
        &mut self,
        now: Instant,
        framed: Result<SipMessage, super::msg::ParseFailure>,
        from: SocketAddr,
    ) {
        match screen(framed) {
            Screened::Accept(msg) => self.handle_message(now, msg, from),
            Screened::Answer(resp) => {
                self.counters.count("in", Label::Name("invalid"));
                self.send(from, &resp);
            }
            Screened::Drop(why) => {
                self.counters.count("in", Label::Name("dropped"));
                tracing::debug!(%from, %why, "SIP message dropped");
            }
        }
    }

    /// A framed, screened message.
    fn handle_message(&mut self, now: Instant, mut msg: SipMessage, from: SocketAddr) {
        let Some(method) = msg.method().cloned() else {
            self.counters
                .count("in", Label::Status(msg.status().unwrap_or(0)));
            self.handle_response(now, msg);
            return;
        };
        self.counters
            .count("in", Label::Name(method.metric_label()));
        // Screening guarantees Via, Call-ID, CSeq and From parse; without them there is
        // nothing to match on and nothing sensible to answer.
        let Some(top) = top_via(&msg) else {
            return;
        };
        let Some(key) = TxnKey::of(&msg, &top, from) else {
            return;
        };
        // §18.2.1, RFC 3581: note the real source in the request's top Via, so every
        // response (the transaction's 100 Trying included) carries it.
        stamp_received(&mut msg, &top, from);
        if let Some(entry) = self.txns.get_mut(&key) {
            metrics::counter!(telemetry::SIP_RETRANSMISSIONS_TOTAL).increment(1);
            entry.txn.handle_request(now, &msg);
            self.drain(&key, now);
            return;
        }
        if method == Method::Ack {
            // An ACK for a 2xx (or for a transaction already gone): no response, ever.
            if self.user {
                self.ack_for_2xx(msg, from);
            }
            return;
        }
        if method == Method::Invite && !in_dialog(&msg) {
            // A registered agent's phone calls over the flow it registered on (its
            // connection, or its address over UDP), wherever that is.
            let agent = self
                .agents
                .as_ref()
                .is_some_and(|(agents, via)| agents.agent_at(from, *via).is_some());
            if let Some(sources) = self.sources.clone().filter(|_| !agent) {
                if !sources.admits(from.ip()) {
                    self.refuse_source(now, &msg, from, sources.policy());
                    return;
                }
            }
            // A retransmission of an INVITE refused a moment ago is refused again, whatever
            // the rate now: admitting it would set up a call its caller already gave up on.
            let admitted = !self.refused.contains(now, &key)
                && self
                    .admission
                    .as_ref()
                    .is_none_or(|l| l.lock().unwrap_or_else(PoisonError::into_inner).admit(now));
            if !admitted {
                self.refused.insert(now, key.clone(), 64 * self.timers.t1);
                metrics::counter!(telemetry::CALLS_REFUSED_TOTAL, "reason" => "cps").increment(1);
                let resp = MessageBuilder::response_to(
                    &msg,
                    503,
                    "Service Unavailable - call rate limit",
                    Some("wsw-ovl"),
                )
                .header(HeaderName::RetryAfter, "1")
                .build();
                self.send(from, &resp);
                return;
            }
        }
        if self.txns.len() >= MAX_TRANSACTIONS {
            let resp =
                MessageBuilder::response_to(&msg, 503, "Service Unavailable - overloaded", None)
                    .header(HeaderName::RetryAfter, "5")
                    .build();
            self.send(from, &resp);
            return;
        }
        let txn = ServerTxn::new(now, msg, self.transport, self.timers);
        self.next_server += 1;
        let id = ServerId(self.next_server);
        self.server_ids.insert(id, key.clone());
        self.txns.insert(
            key.clone(),
            Entry {
                txn,
                peer: from,
                id,
                accepted: None,
                armed: None,
            },
        );
        self.publish_size();
        self.drain(&key, now);
    }

    /// A new INVITE from an address no trunk accepts: counted, logged at most once a
    /// minute per source, and answered with one stateless 403 (or nothing).
    fn refuse_source(
        &mut self,
        now: Instant,
        msg: &SipMessage,
        from: SocketAddr,
        policy: UnknownSource,
    ) {
        metrics::counter!(telemetry::CALLS_REFUSED_TOTAL, "reason" => "unknown_source")
            .increment(1);
        if let Some(refused) = self.refusals.refused(from.ip(), now) {
            tracing::info!(%from, refused, ?policy, "INVITEs from an address no trunk accepts (refused since the last line)");
        }
        if policy == UnknownSource::Refuse {
            let resp = MessageBuilder::response_to(
                msg,
                403,
                "Forbidden - source address not accepted",
                Some("wsw-src"),
            )
            .build();
            self.send(from, &resp);
        }
    }

    /// Runs a transaction's outputs: transmissions go out, requests are answered.
    fn drain(&mut self, key: &TxnKey, now: Instant) {
        loop {
            let Some(entry) = self.txns.get_mut(key) else {
                return;
            };
            let Some(output) = entry.txn.poll_output() else {
                break;
            };
            let (peer, server) = (entry.peer, entry.id);
            match output {
                TxnOutput::Transmit(bytes) => self.out.push_back((peer, bytes)),
                TxnOutput::Deliver(request) => {
                    if self.user && for_user(&request, self.draining) {
                        self.events.push_back(CoreEvent::Request {
                            server,
                            request,
                            from: peer,
                        });
                        continue;
                    }
                    let response = match (&self.agents, request.method()) {
                        (Some((agents, via)), Some(Method::Register)) => {
                            agents.register(&request, peer, *via, now)
                        }
                        _ => self.answer(&request, key),
                    };
                    if let Some(entry) = self.txns.get_mut(key) {
                        entry.txn.respond(now, response);
                    }
                }
                TxnOutput::AckTimeout => {
                    tracing::debug!(branch = %key.branch, "final response never acknowledged");
                    if let Some((call_id, _)) = entry.accepted.clone() {
                        if self.user {
                            self.events
                                .push_back(CoreEvent::AckTimeout { server, call_id });
                        }
                    }
                }
                TxnOutput::Timeout => {
                    tracing::debug!(branch = %key.branch, "transaction timed out");
                }
                TxnOutput::Unanswered => {
                    // The transaction user never answered: a bug on some path, made
                    // visible rather than kept for the life of the process.
                    let method = key.method.metric_label();
                    tracing::warn!(branch = %key.branch, method = %method, "request never answered; its transaction gives up on it");
                    metrics::counter!(telemetry::SIP_UNANSWERED_TOTAL, "method" => method)
                        .increment(1);
                }
                TxnOutput::Terminated => {
                    if let Some(entry) = self.txns.remove(key) {
                        self.server_ids.remove(&entry.id);
                        if let Some(dialog) = entry.accepted {
                            self.accepted.remove(&dialog);
                        }
                    }
                    self.publish_size();
                    return;
                }
            }
        }
        let Some(entry) = self.txns.get_mut(key) else {
            return;
        };
        if let Some(at) = rearm(&mut entry.armed, entry.txn.poll_timeout()) {
            self.arm(at, TimerOwner::Server(key.clone()));
        }
    }

    fn arm(&mut self, at: Instant, owner: TimerOwner) {
        let id = self.next_id;
        self.next_id += 1;
        self.ids.insert(id, owner);
        self.wheel.push(Reverse((at, id)));
    }

    /// Sends `request` to `to` in a new client transaction. The core puts its own Via (with a
    /// fresh branch) on top. Outcomes come from [`poll_event`](Self::poll_event).
    pub(crate) fn send_request(
        &mut self,
        now: Instant,
        mut request: SipMessage,
        to: SocketAddr,
    ) -> RequestId {
        let (id, branch) = self.next_branch();
        request.headers.insert(0, self.our_via(&branch));
        self.start_client(now, request, to, branch, id);
        id
    }

    fn start_client(
        &mut self,
        now: Instant,
        request: SipMessage,
        to: SocketAddr,
        branch: String,
        id: RequestId,
    ) {
        let method = request.method().cloned().unwrap_or(Method::Options);
        let invite_call_id = (method == Method::Invite)
            .then(|| request.header(&HeaderName::CallId).map(|h| h.value.clone()))
            .flatten();
        let key = ClientKey { branch, method };
        if let Some(call_id) = &invite_call_id {
            self.client_invites.insert(call_id.clone(), key.clone());
        }
        let txn = ClientTxn::new(now, request, self.transport, self.timers);
        self.clients.insert(
            key.clone(),
            ClientEntry {
                txn,
                peer: to,
                id,
                armed: None,
                invite_call_id,
            },
        );
        self.publish_size();
        self.drain_client(&key);
    }

    fn our_via(&self, branch: &str) -> Header {
        let proto = match (self.via_protocol, self.transport) {
            (Some(p), _) => p,
            (None, Transport::Unreliable) => "UDP",
            (None, Transport::Reliable) => "TCP",
        };
        Header::new(
            HeaderName::Via,
            format!("SIP/2.0/{proto} {};branch={branch};rport", self.local),
        )
    }

    fn next_branch(&mut self) -> (RequestId, String) {
        self.next_request += 1;
        let branch = format!("z9hG4bK-{:x}-{:x}", self.branch_seed, self.next_request);
        (RequestId(self.next_request), branch)
    }

    /// Sends the ACK for a 2xx (RFC 3261 §13.2.2.4): its own transaction, sent once per 2xx
    /// received, never retransmitted by the core.
    pub(crate) fn send_ack(&mut self, mut ack: SipMessage, to: SocketAddr) {
        let (_, branch) = self.next_branch();
        ack.headers.insert(0, self.our_via(&branch));
        self.out.push_back((to, ack.to_bytes()));
    }

    /// CANCELs the INVITE we sent with `call_id` (§9.1): same Request-URI, Via, Call-ID,
    /// From, To, CSeq number and Route as the INVITE. False when no such INVITE is pending.
    pub(crate) fn cancel_invite(&mut self, now: Instant, call_id: &[u8]) -> bool {
        let Some(key) = self.client_invites.get(call_id) else {
            return false;
        };
        let Some(entry) = self.clients.get(key) else {
            return false;
        };
        if !matches!(
            entry.txn.state(),
            super::txn::TxnState::Calling | super::txn::TxnState::Proceeding
        ) {
            return false;
        }
        let (to, invite) = (entry.peer, entry.txn.request());
        let StartLine::Request { uri, .. } = &invite.start else {
            return false;
        };
        let mut cancel = SipMessage {
            start: StartLine::Request {
                method: Method::Cancel,
                uri: uri.clone(),
                version: Bytes::from_static(b"SIP/2.0"),
            },
            headers: Vec::with_capacity(8),
            body: Bytes::new(),
        };
        for h in &invite.headers {
            match &h.name {
                HeaderName::Via if !cancel.headers.iter().any(|c| c.name == HeaderName::Via) => {
                    cancel.headers.push(h.clone())
                }
                HeaderName::Route
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::MaxForwards => cancel.headers.push(h.clone()),
                HeaderName::CSeq => {
                    let Ok(cseq) = super::header::CSeq::parse(&h.value) else {
                        return false;
                    };
                    cancel.headers.push(Header::new(
                        HeaderName::CSeq,
                        format!("{} CANCEL", cseq.seq),
                    ));
                }
                _ => {}
            }
        }
        cancel
            .headers
            .push(Header::new(HeaderName::ContentLength, "0"));
        let branch = key.branch.clone();
        self.next_request += 1;
        let id = RequestId(self.next_request);
        self.start_client(now, cancel, to, branch, id);
        true
    }

    /// Stops the INVITE we sent with `call_id` without a CANCEL (nothing came back, so
    /// there is nothing to cancel); later responses to it are dropped.
    pub(crate) fn abandon_invite(&mut self, call_id: &[u8]) {
        if let Some(key) = self.client_invites.remove(call_id) {
            self.clients.remove(&key);
        }
        self.publish_size();
    }

    /// Answers a server transaction handed over as [`CoreEvent::Request`]. A response for a
    /// transaction that is gone is dropped.
    pub(crate) fn respond(&mut self, now: Instant, server: ServerId, response: SipMessage) {
        let Some(key) = self.server_ids.get(&server).cloned() else {
            return;
        };
        let Some(entry) = self.txns.get_mut(&key) else {
            return;
        };
        if key.method == Method::Invite
            && response.status().is_some_and(|c| (200..300).contains(&c))
        {
            let dialog = response
                .header(&HeaderName::CallId)
                .map(|h| h.value.clone())
                .zip(
                    response
                        .header(&HeaderName::CSeq)
                        .and_then(|h| super::header::CSeq::parse(&h.value).ok())
                        .map(|c| c.seq),
                );
            if let Some(dialog) = dialog {
                self.accepted.insert(dialog.clone(), key.clone());
                entry.accepted = Some(dialog);
            }
        }
        entry.txn.respond(now, response);
        self.drain(&key, now);
    }

    /// The transport could not reach `peer` (a connection failed): every client transaction
    /// toward it fails as if timed out (RFC 3261 §17.1.4).
    pub(crate) fn transport_failed(&mut self, _now: Instant, peer: SocketAddr) {
        let keys: Vec<ClientKey> = self
            .clients
            .iter()
            .filter(|(_, e)| e.peer == peer)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(entry) = self.clients.get_mut(&key) {
                entry.txn.handle_transport_error();
            }
            self.drain_client(&key);
        }
    }

    /// Runs a command of the transaction user.
    pub(crate) fn execute(&mut self, now: Instant, command: SipCommand) {
        match command {
            SipCommand::Respond { server, response } => self.respond(now, server, response),
            SipCommand::Request { request, to } => {
                self.send_request(now, request, to);
            }
            SipCommand::Ack { request, to } => self.send_ack(request, to),
            SipCommand::Cancel { call_id } => {
                self.cancel_invite(now, &call_id);
            }
            SipCommand::Abandon { call_id } => self.abandon_invite(&call_id),
        }
    }

    /// An ACK outside any transaction: the ACK for a 2xx the user sent, found by Call-ID and
    /// CSeq number, stops that 2xx's retransmissions and goes to the user.
    fn ack_for_2xx(&mut self, ack: SipMessage, from: SocketAddr) {
        let dialog = ack
            .header(&HeaderName::CallId)
            .map(|h| h.value.clone())
            .zip(
                ack.header(&HeaderName::CSeq)
                    .and_then(|h| super::header::CSeq::parse(&h.value).ok())
                    .map(|c| c.seq),
            );
        if let Some(entry) = dialog
            .and_then(|d| self.accepted.get(&d))
            .and_then(|key| self.txns.get_mut(key))
        {
            entry.txn.ack_received();
        }
        self.events.push_back(CoreEvent::Ack { request: ack, from });
    }

    /// The next outcome of a request sent with [`send_request`](Self::send_request).
    pub(crate) fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    fn handle_response(&mut self, now: Instant, response: SipMessage) {
        let Some(key) = client_key(&response) else {
            return;
        };
        let Some(entry) = self.clients.get_mut(&key) else {
            // A response to nothing we sent (or to a finished transaction): dropped.
            return;
        };
        entry.txn.handle_response(now, response);
        self.drain_client(&key);
    }

    fn drain_client(&mut self, key: &ClientKey) {
        loop {
            let Some(entry) = self.clients.get_mut(key) else {
                return;
            };
            let Some(output) = entry.txn.poll_output() else {
                break;
            };
            let (peer, id) = (entry.peer, entry.id);
            match output {
                TxnOutput::Transmit(bytes) => self.out.push_back((peer, bytes)),
                TxnOutput::Deliver(resp) => self.events.push_back(CoreEvent::Response(id, resp)),
                TxnOutput::Timeout | TxnOutput::AckTimeout | TxnOutput::Unanswered => {
                    let request = entry.txn.request().clone();
                    self.events.push_back(CoreEvent::Timeout(id, request))
                }
                TxnOutput::Terminated => {
                    if let Some(entry) = self.clients.remove(key) {
                        if let Some(call_id) = entry.invite_call_id {
                            if self.client_invites.get(&call_id) == Some(key) {
                                self.client_invites.remove(&call_id);
                            }
                        }
                    }
                    self.publish_size();
                    return;
                }
            }
        }
        let Some(entry) = self.clients.get_mut(key) else {
            return;
        };
        if let Some(at) = rearm(&mut entry.armed, entry.txn.poll_timeout()) {
            self.arm(at, TimerOwner::Client(key.clone()));
        }
    }

    /// What the switch itself answers to a request outside any call.
    fn answer(&mut self, req: &SipMessage, key: &TxnKey) -> SipMessage {
        // A CANCEL is answered 200 when it matches a transaction (§9.2), whatever that
        // transaction's state; otherwise 481.
        let cancel_matched = key.method == Method::Cancel
            && self.txns.contains_key(&TxnKey {
                method: Method::Invite,
                ..key.clone()
            });
        if cancel_matched && self.user {
            let invite = TxnKey {
                method: Method::Invite,
                ..key.clone()
            };
            if let Some(entry) = self.txns.get(&invite) {
                if matches!(
                    entry.txn.state(),
                    super::txn::TxnState::Trying | super::txn::TxnState::Proceeding
                ) {
                    let call_id = req
                        .header(&HeaderName::CallId)
                        .map(|h| h.value.clone())
                        .unwrap_or_default();
                    self.events.push_back(CoreEvent::Cancelled {
                        server: entry.id,
                        call_id,
                    });
                }
            }
        }
        self.tag_counter += 1;
        let tag = format!("wsw{:x}", self.tag_counter);
        let method = req.method().cloned().unwrap_or(Method::Options);
        let respond = |code, reason: &str| {
            MessageBuilder::response_to(req, code, reason, Some(&tag))
                .header(HeaderName::Allow, ALLOW)
                .header(HeaderName::Supported, SUPPORTED_OPTIONS.join(", "))
        };
        match method {
            // A proxy probing the node (Kamailio's dispatcher) stops sending it new calls.
            Method::Options if self.draining && !in_dialog(req) => {
                respond(503, "Service Unavailable - draining").header(HeaderName::RetryAfter, "30")
            }
            Method::Options => respond(200, "OK").header(
                HeaderName::Other(Bytes::from_static(b"Accept")),
                "application/sdp",
            ),
            Method::Cancel if cancel_matched => respond(200, "OK"),
            // A re-INVITE for a dialog this switch does not have.
            Method::Invite if in_dialog(req) => respond(481, "Call/Transaction Does Not Exist"),
            Method::Invite if self.draining => {
                respond(503, "Service Unavailable - draining").header(HeaderName::RetryAfter, "30")
            }
            Method::Invite => respond(404, "Not Found - no route"),
            Method::Bye | Method::Cancel | Method::Update | Method::Info | Method::Prack => {
                respond(481, "Call/Transaction Does Not Exist")
            }
            _ => respond(405, "Method Not Allowed"),
        }
        .header(
            HeaderName::Server,
            concat!("waswitch/", env!("CARGO_PKG_VERSION")),
        )
        .build()
    }

    /// Time has reached the earliest deadline.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.wheel.peek().copied() {
            if at > now {
                break;
            }
            self.wheel.pop();
            match self.ids.remove(&id) {
                Some(TimerOwner::Server(key)) => {
                    let Some(entry) = self.txns.get_mut(&key) else {
                        continue;
                    };
                    if entry.armed == Some(at) {
                        entry.armed = None;
                    }
                    // Stale deadline: the transaction has re-armed since.
                    if entry.txn.poll_timeout().is_some_and(|t| t <= now) {
                        entry.txn.handle_timeout(now);
                    }
                    self.drain(&key, now);
                }
                Some(TimerOwner::Client(key)) => {
                    let Some(entry) = self.clients.get_mut(&key) else {
                        continue;
                    };
                    if entry.armed == Some(at) {
                        entry.armed = None;
                    }
                    if entry.txn.poll_timeout().is_some_and(|t| t <= now) {
                        entry.txn.handle_timeout(now);
                    }
                    self.drain_client(&key);
                }
                None => {}
            }
        }
    }

    /// The earliest deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.wheel.peek().map(|Reverse((at, _))| *at)
    }

    /// The next datagram to send and where.
    pub(crate) fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        let (to, bytes) = self.out.pop_front()?;
        if let Some(code) = status_of(&bytes) {
            self.counters.count("out", Label::Status(code));
        }
        Some((to, bytes))
    }

    fn send(&mut self, to: SocketAddr, resp: &SipMessage) {
        let mut out = BytesMut::new();
        resp.encode(&mut out);
        self.out.push_back((to, out.freeze()));
    }
}

/// The deadline to put in the timer heap, if `next` is not already there (`armed`).
fn rearm(armed: &mut Option<Instant>, next: Option<Instant>) -> Option<Instant> {
    if next.is_some() && next != *armed {
        *armed = next;
        next
    } else {
        None
    }
}

/// Whether a transaction user takes `request`: a new INVITE (unless draining, which the core
/// answers 503), or a request inside a dialog other than OPTIONS and CANCEL.
fn for_user(request: &SipMessage, draining: bool) -> bool {
    match request.method() {
        Some(Method::Invite) => in_dialog(request) || !draining,
        Some(Method::Options | Method::Cancel | Method::Ack | Method::Register) | None => false,
        Some(_) => in_dialog(request),
    }
}

/// A request inside a dialog carries a To tag.
pub(crate) fn in_dialog(msg: &SipMessage) -> bool {
    msg.header(&HeaderName::To)
        .and_then(|h| super::header::NameAddr::parse(&h.value).ok())
        .is_some_and(|to| to.tag().is_some())
}

/// The client transaction a response belongs to: top Via branch and CSeq method.
fn client_key(response: &SipMessage) -> Option<ClientKey> {
    let via = Via::parse_all(&response.header(&HeaderName::Via)?.value).ok()?;
    let branch = via.into_iter().next()?.branch()?.to_string();
    let method = super::header::CSeq::parse(&response.header(&HeaderName::CSeq)?.value)
        .ok()?
        .method;
    Some(ClientKey { branch, method })
}

/// The top Via of a message, parsed.
fn top_via(msg: &SipMessage) -> Option<Via> {
    let value = &msg.header(&HeaderName::Via)?.value;
    let list = super::header::split_list(value).ok()?;
    Via::parse_all(list.first()?).ok()?.pop()
}

/// Adds `received` (and fills `rport`) to the top Via of a received request for its real
/// source (RFC 3261 §18.2.1, RFC 3581 §4). `top` is that Via, already parsed; the header is
/// rewritten only when something is added.
fn stamp_received(msg: &mut SipMessage, top: &Via, peer: SocketAddr) {
    let add_received = top.host != peer.ip().to_string() && top.received().is_none();
    let fill_rport = top.rport() == Some(None);
    if !add_received && !fill_rport {
        return;
    }
    let Some(pos) = msg.headers.iter().position(|h| h.name == HeaderName::Via) else {
        return;
    };
    let value = msg.headers[pos].value.clone();
    let Some(first) = super::header::split_list(&value)
        .ok()
        .and_then(|l| l.first().map(|t| t.len()))
    else {
        return;
    };
    let mut text = String::from_utf8_lossy(&value[..first]).into_owned();
    if add_received {
        text.push_str(&format!(";received={}", peer.ip()));
    }
    if fill_rport {
        // The parameter name is case-insensitive; keep everything else as written.
        let lower = text.to_ascii_lowercase();
        let mut from = 0;
        while let Some(i) = lower[from..].find(";rport") {
            let end = from + i + ";rport".len();
            if matches!(lower.as_bytes().get(end), None | Some(b';') | Some(b' ')) {
                text.insert_str(end, &format!("={}", peer.port()));
                break;
            }
            from = end;
        }
    }
    let mut new = BytesMut::from(text.as_bytes());
    new.extend_from_slice(&value[first..]);
    msg.headers[pos] = Header::new(HeaderName::Via, new.freeze());
}

fn status_of(bytes: &[u8]) -> Option<u16> {
    if bytes.starts_with(b"SIP/2.0 ") && bytes.len() >= 11 {
        std::str::from_utf8(&bytes[8..11]).ok()?.parse().ok()
    } else {
        None
    }
}

/// What `waswitch_sip_messages_total`'s `method_or_status` label holds; bounded: methods
/// the switch knows, `other`, `invalid`, `dropped`, or a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Label {
    /// A method's bounded label, or `invalid` / `dropped`.
    Name(&'static str),
    /// A response's status code.
    Status(u16),
}

/// `waswitch_sip_messages_total`'s counters by direction and label, each looked up in the
/// metrics registry once per core rather than for every message (a lookup builds the key,
/// hashes it and, for a status, formats it).
#[derive(Default)]
struct MessageCounters {
    handles: HashMap<(&'static str, Label), metrics::Counter>,
}

impl MessageCounters {
    fn count(&mut self, direction: &'static str, label: Label) {
        self.handles
            .entry((direction, label))
            .or_insert_with(|| {
                let what: metrics::SharedString = match label {
                    Label::Name(name) => name.into(),
                    Label::Status(code) => code.to_string().into(),
                };
                metrics::counter!(
                    telemetry::SIP_MESSAGES_TOTAL,
                    "direction" => direction,
                    "method_or_status" => what
                )
            })
            .increment(1);
    }
}

/// The INVITEs the rate limit refused (stateless 503), each for as long as its caller may
/// retransmit it (64·T1), at most [`Refused::MAX`] of them (the oldest forgotten first).
#[derive(Debug, Default)]
struct Refused {
    keys: std::collections::HashSet<TxnKey>,
    order: VecDeque<(Instant, TxnKey)>,
}

impl Refused {
    const MAX: usize = 65_536;

    fn expire(&mut self, now: Instant) {
        while let Some((until, _)) = self.order.front() {
            if *until > now && self.order.len() <= Self::MAX {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.keys.remove(&key);
            }
        }
    }

    fn contains(&mut self, now: Instant, key: &TxnKey) -> bool {
        if self.keys.is_empty() {
            return false;
        }
        self.expire(now);
        self.keys.contains(key)
    }

    fn insert(&mut self, now: Instant, key: TxnKey, keep: std::time::Duration) {
        if self.keys.insert(key.clone()) {
            self.order.push_back((now + keep, key));
        }
        self.expire(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PEER: &str = "127.0.0.1:5080";

    fn options(branch: &str) -> Bytes {
        Bytes::from(format!(
            "OPTIONS sip:waswitch@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5080;branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\n\
             To: <sip:waswitch@127.0.0.1>\r\nCall-ID: {branch}@127.0.0.1\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    /// A UDP core at 127.0.0.1:5060 with default timers.
    fn core() -> SipCore {
        SipCore::new(
            Transport::Unreliable,
            TimerConfig::default(),
            "127.0.0.1:5060".parse().unwrap(),
            7,
        )
    }

    fn sent(core: &mut SipCore) -> Vec<SipMessage> {
        std::iter::from_fn(|| core.poll_transmit())
            .map(|(to, b)| {
                assert_eq!(to, PEER.parse().unwrap(), "answers go to the source");
                parse_datagram(b).expect("our output parses")
            })
            .collect()
    }

    /// What the switch advertises is what it does: one `Allow` list for its own answers
    /// and the B2BUA's messages, without PRACK (no reliable provisionals are ever sent).
    #[test]
    fn options_advertises_exactly_the_methods_implemented() {
        let mut core = core();
        core.handle_datagram(
            Instant::now(),
            options("z9hG4bK-allow"),
            PEER.parse().unwrap(),
        );
        let out = sent(&mut core);
        let allow =
            String::from_utf8_lossy(&out[0].header(&HeaderName::Allow).unwrap().value).into_owned();
        assert_eq!(allow, ALLOW);
        let methods: Vec<&str> = allow.split(", ").collect();
        assert!(!methods.contains(&"PRACK"), "{allow}");
        for m in [
            "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO",
        ] {
            assert!(methods.contains(&m), "{m} missing from {allow}");
        }
    }

    #[test]
    fn options_is_answered_once_and_retransmissions_replayed() {
        let now = Instant::now();
        let mut core = core();
        let peer = PEER.parse().unwrap();
        core.handle_datagram(now, options("z9hG4bK-o1"), peer);
        let out = sent(&mut core);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status(), Some(200));
        let via = &out[0].header(&HeaderName::Via).unwrap().value;
        assert!(via.ends_with(b";rport=5080"), "{via:?}");
        core.handle_datagram(
            now + Duration::from_millis(500),
            options("z9hG4bK-o1"),
            peer,
        );
        let replay = sent(&mut core);
        assert_eq!(replay, out, "the retransmission gets the same response");
        assert_eq!(core.transactions(), 1);
        // Regression: every retransmission once added a timer entry until Timer J.
        for _ in 0..1000 {
            core.handle_datagram(now + Duration::from_secs(1), options("z9hG4bK-o1"), peer);
            while core.poll_transmit().is_some() {}
        }
        assert_eq!(core.wheel.len(), 1, "one deadline per transaction");
        // Timer J (64·T1) ends the transaction.
        let deadline = core.poll_timeout().expect("timer J");
        assert_eq!(deadline, now + Duration::from_secs(32));
        core.handle_timeout(deadline);
        assert_eq!(core.transactions(), 0);
        assert_eq!(core.poll_timeout(), None);
    }

    #[test]
    fn invite_without_a_route_gets_trying_then_404_and_the_ack_closes_it() {
        let now = Instant::now();
        let mut core = core();
        let peer = PEER.parse().unwrap();
        let invite = String::from_utf8(options("z9hG4bK-i1").to_vec())
            .unwrap()
            .replace("OPTIONS", "INVITE");
        core.handle_datagram(now, Bytes::from(invite.clone()), peer);
        let out = sent(&mut core);
        let codes: Vec<_> = out.iter().map(|m| m.status()).collect();
        assert_eq!(codes, [Some(100), Some(404)]);
        let to = &out[1].header(&HeaderName::To).unwrap().value;
        let ack = invite
            .replace("INVITE sip", "ACK sip")
            .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
            .replace(
                "To: <sip:waswitch@127.0.0.1>",
                &format!("To: {}", String::from_utf8_lossy(to)),
            );
        core.handle_datagram(now + Duration::from_millis(100), Bytes::from(ack), peer);
        assert!(sent(&mut core).is_empty(), "an ACK is never answered");
        // Timer I = T4 after the ACK.
        core.handle_timeout(now + Duration::from_secs(6));
        assert_eq!(core.transactions(), 0);
    }

    /// The count of `waswitch_sip_messages_total`'s series for `direction` and `label`.
    fn messages(direction: &str, label: &str) -> f64 {
        telemetry::metric_sum(
            telemetry::SIP_MESSAGES_TOTAL,
            &format!("direction=\"{direction}\",method_or_status=\"{label}\""),
        )
    }

    #[test]
    fn messages_are_counted_by_direction_and_method_or_status() {
        let before = [
            messages("in", "OPTIONS"),
            messages("out", "200"),
            messages("in", "dropped"),
        ];
        let mut core = core();
        let peer = PEER.parse().unwrap();
        let now = Instant::now();
        for n in 0..3 {
            core.handle_datagram(now, options(&format!("z9hG4bK-count{n}")), peer);
        }
        core.handle_datagram(
            now,
            Bytes::from_static(b"OPTIONS sip:x SIP/2.0\r\n\r\n"),
            peer,
        );
        let codes: Vec<_> = sent(&mut core).iter().filter_map(|m| m.status()).collect();
        assert_eq!(codes.iter().filter(|c| **c == 200).count(), 3, "{codes:?}");
        let after = [
            messages("in", "OPTIONS"),
            messages("out", "200"),
            messages("in", "dropped"),
        ];
        assert_eq!(after[0] - before[0], 3.0);
        assert_eq!(after[1] - before[1], 3.0);
        assert_eq!(after[2] - before[2], 1.0);
    }

    #[test]
    fn new_invites_above_the_call_rate_get_503_but_dialogs_never_do() {
        let now = Instant::now();
        let limiter = Arc::new(Mutex::new(RateLimiter::new(5)));
        let mut core = core().with_admission(limiter);
        let peer = PEER.parse().unwrap();
        let invite = |n: u32| {
            String::from_utf8(options(&format!("z9hG4bK-cps{n}")).to_vec())
                .unwrap()
                .replace("OPTIONS", "INVITE")
        };
        for n in 0..8 {
            core.handle_datagram(now, Bytes::from(invite(n)), peer);
        }
        let finals: Vec<_> = sent(&mut core)
            .into_iter()
            .filter_map(|m| m.status().filter(|c| *c >= 200))
            .collect();
        assert_eq!(finals, [404, 404, 404, 404, 404, 503, 503, 503]);
        // An in-dialog re-INVITE and a BYE pass while the limit is exhausted.
        let reinvite = invite(20).replace(
            "To: <sip:waswitch@127.0.0.1>",
            "To: <sip:waswitch@127.0.0.1>;tag=x",
        );
        core.handle_datagram(now, Bytes::from(reinvite), peer);
        let codes: Vec<_> = sent(&mut core).iter().filter_map(|m| m.status()).collect();
        assert!(!codes.contains(&503), "{codes:?}");
        // A second later the rate allows new calls again, but not the retransmission of
        // one refused a second ago: its caller took the 503 and gave up on it.
        let later = now + Duration::from_secs(1);
        core.handle_datagram(later, Bytes::from(invite(7)), peer);
        let codes: Vec<_> = sent(&mut core).iter().filter_map(|m| m.status()).collect();
        assert_eq!(codes, [503], "the refused INVITE's retransmission");
        core.handle_datagram(later, Bytes::from(invite(30)), peer);
        let codes: Vec<_> = sent(&mut core).iter().filter_map(|m| m.status()).collect();
        assert_eq!(codes, [100, 404]);
        // Once its retransmissions are over (64·T1), the same branch is a new request.
        core.handle_datagram(now + Duration::from_secs(40), Bytes::from(invite(7)), peer);
        let codes: Vec<_> = sent(&mut core).iter().filter_map(|m| m.status()).collect();
        assert_eq!(codes, [100, 404]);
    }

    #[test]
    fn cancel_matching_a_transaction_gets_200_and_strangers_481() {
        let now = Instant::now();
        let mut core = core();
        let peer = PEER.parse().unwrap();
        let invite = String::from_utf8(options("z9hG4bK-c1").to_vec())
            .unwrap()
            .replace("OPTIONS", "INVITE")
            .replace(";rport", ";RPORT");
        core.handle_datagram(now, Bytes::from(invite.clone()), peer);
        let out = sent(&mut core);
        // Uppercase RPORT is filled in too.
        let via = &out[0].header(&HeaderName::Via).unwrap().value;
        assert!(via.ends_with(b";RPORT=5080"), "{via:?}");
        let cancel = |branch: &str| {
            invite
                .replace("INVITE sip", "CANCEL sip")
                .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
                .replace("z9hG4bK-c1", branch)
        };
        core.handle_datagram(now, Bytes::from(cancel("z9hG4bK-c1")), peer);
        assert_eq!(sent(&mut core)[0].status(), Some(200));
        core.handle_datagram(now, Bytes::from(cancel("z9hG4bK-nope")), peer);
        assert_eq!(sent(&mut core)[0].status(), Some(481));
        // A re-INVITE for a dialog we do not have.
        let reinvite = invite.replace("z9hG4bK-c1", "z9hG4bK-c2").replace(
            "To: <sip:waswitch@127.0.0.1>",
            "To: <sip:waswitch@127.0.0.1>;tag=gone",
        );
        core.handle_datagram(now, Bytes::from(reinvite), peer);
        let codes: Vec<_> = sent(&mut core).iter().filter_map(|m| m.status()).collect();
        assert_eq!(codes, [100, 481]);
        // A broken ACK is never answered.
        let bad_ack =
            "ACK sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-a\r\n\
            From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: a\r\n\
            CSeq: 99999999999 ACK\r\nContent-Length: 0\r\n\r\n";
        core.handle_datagram(now, Bytes::from(bad_ack), peer);
        assert!(sent(&mut core).is_empty());
    }

    #[test]
    fn garbage_is_dropped_and_a_bad_request_gets_400() {
        let now = Instant::now();
        let mut core = core();
        let peer = PEER.parse().unwrap();
        core.handle_datagram(now, Bytes::from_static(b"\x00\x01 hello"), peer);
        assert!(sent(&mut core).is_empty());
        let bad = String::from_utf8(options("z9hG4bK-b1").to_vec())
            .unwrap()
            .replace("CSeq: 1 OPTIONS", "CSeq: 99999999999 OPTIONS");
        core.handle_datagram(now, Bytes::from(bad), peer);
        let out = sent(&mut core);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status(), Some(400));
        assert_eq!(core.transactions(), 0);
    }
}
