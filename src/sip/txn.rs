//! SIP transactions, sans-IO (RFC 3261 §17, with RFC 6026's Accepted state).
//!
//! [`ClientTxn`] and [`ServerTxn`] own one transaction each: the request, the last response,
//! and the timers. They never read a clock or touch a socket. The driver feeds them what
//! arrives (`handle_response`, `handle_request`, `respond`) and the time (`handle_timeout`),
//! then drains [`poll_output`](ClientTxn::poll_output) and re-arms its timer at
//! [`poll_timeout`](ClientTxn::poll_timeout); both may change after any input.
//!
//! Timers (T1, T2, T4 configurable): A/B/D/M on INVITE clients, E/F/K on non-INVITE clients,
//! G/H/I/L on INVITE servers, J on non-INVITE servers. On reliable transports nothing is
//! retransmitted and the wait timers D, I, J, K are zero. The INVITE server also hosts the
//! UAS core's 2xx retransmission (§13.3.1.4): T1 doubling up to T2 until the TU reports the
//! ACK, giving up after 64·T1 with [`TxnOutput::AckTimeout`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::build::MessageBuilder;
use super::msg::{parse_datagram, HeaderName, Method, SipMessage};

/// How long an INVITE server transaction waits for its TU's final response before it
/// answers 500 itself: hours beyond what a call rings (`sip.ring_timeout_secs` is at most
/// an hour per trunk), so only an answer lost on some path reaches it.
pub(crate) const UNANSWERED_INVITE: Duration = Duration::from_secs(6 * 3600);

/// Timer base values (RFC 3261 §17.1.1.1, Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// Round-trip estimate (default 500 ms).
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Longest a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// Whether the transport retransmits for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// UDP: the transaction retransmits.
    Unreliable,
    /// TCP, TLS: no retransmission, no wait states.
    Reliable,
}

/// What a transaction asks of its driver and its transaction user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnOutput {
    /// Send these octets to the transaction's peer.
    Transmit(Bytes),
    /// Give this message to the transaction user (a response for a client transaction).
    Deliver(SipMessage),
    /// Timer B or F: no final response came; the TU treats it as a 408.
    Timeout,
    /// Timer H: the final non-2xx response was never acknowledged.
    AckTimeout,
    /// A server transaction's TU never answered its request: an INVITE within
    /// [`UNANSWERED_INVITE`] (the transaction answers 500 itself), another method within
    /// 128·T1 (the transaction ends: its client gave up at 64·T1).
    Unanswered,
    /// The transaction is over; drop it.
    Terminated,
}

/// The states of RFC 3261 §17 (Calling and Trying are the client's first state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnState {
    /// INVITE client sent the request.
    Calling,
    /// Non-INVITE client sent the request, or non-INVITE server got it.
    Trying,
    /// A provisional response was received (client) or sent (server).
    Proceeding,
    /// A 2xx to an INVITE was received or sent (RFC 6026).
    Accepted,
    /// A final non-2xx (INVITE) or any final (non-INVITE) was received or sent.
    Completed,
    /// INVITE server got the ACK for its non-2xx final response.
    Confirmed,
    /// Over.
    Terminated,
}

/// A retransmission timer and its current interval.
#[derive(Debug, Clone, Copy)]
struct Retransmit {
    at: Instant,
    interval: Duration,
}

/// The two timers a transaction has at most at once.
#[derive(Debug, Default)]
struct Timers {
    retransmit: Option<Retransmit>,
    /// Lifetime timer: B, D, F, H, I, J, K, L or M.
    end: Option<Instant>,
}

impl Timers {
    fn next(&self) -> Option<Instant> {
        match (self.retransmit.map(|r| r.at), self.end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A client transaction: sends a request, absorbs retransmissions, delivers responses.
#[derive(Debug)]
pub(crate) struct ClientTxn {
    request: SipMessage,
    wire: Bytes,
    invite: bool,
    state: TxnState,
    transport: Transport,
    config: TimerConfig,
    timers: Timers,
    /// The ACK sent for a non-2xx final response, re-sent on its retransmissions.
    ack: Option<Bytes>,
    out: VecDeque<TxnOutput>,
}

impl ClientTxn {
    /// Starts a client transaction for `request` at `now`: the request is queued for
    /// transmission and the timers are armed.
    pub(crate) fn new(
        now: Instant,
        request: SipMessage,
        transport: Transport,
        config: TimerConfig,
    ) -> Self {
        let invite = request.method() == Some(&Method::Invite);
        let wire = request.to_bytes();
        let mut txn = Self {
            request,
            wire: wire.clone(),
            invite,
            state: if invite {
                TxnState::Calling
            } else {
                TxnState::Trying
            },
            transport,
            config,
            timers: Timers::default(),
            ack: None,
            out: VecDeque::new(),
        };
        txn.out.push_back(TxnOutput::Transmit(wire));
        if transport == Transport::Unreliable {
            // Timer A or E.
            txn.timers.retransmit = Some(Retransmit {
                at: now + config.t1,
                interval: config.t1,
            });
        }
        // Timer B or F.
        txn.timers.end = Some(now + 64 * config.t1);
        txn
    }

    /// Current state.
    pub(crate) fn state(&self) -> TxnState {
        self.state
    }

    /// The request this transaction sends.
    pub(crate) fn request(&self) -> &SipMessage {
        &self.request
    }

    /// Next output, if any.
    pub(crate) fn poll_output(&mut self) -> Option<TxnOutput> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// A response matched to this transaction arrived.
    pub(crate) fn handle_response(&mut self, now: Instant, response: SipMessage) {
        let Some(code) = response.status() else {
            return;
        };
        use TxnState::*;
        match (self.state, code) {
            (Calling | Trying | Proceeding, 100..=199) => {
                self.state = Proceeding;
                if self.invite {
                    // No more INVITE retransmissions; Timer B only runs in Calling.
                    self.timers = Timers::default();
                } else if let Some(r) = &mut self.timers.retransmit {
                    // Timer E continues, at T2 from now on (§17.1.2.2).
                    r.interval = self.config.t2;
                }
                self.out.push_back(TxnOutput::Deliver(response));
            }
            (Calling | Proceeding, 200..=299) if self.invite => {
                self.state = Accepted;
                self.timers = Timers {
                    retransmit: None,
                    end: Some(now + 64 * self.config.t1), // Timer M
                };
                self.out.push_back(TxnOutput::Deliver(response));
            }
            (Accepted, 200..=299) => {
                // A retransmitted or forked 2xx: the TU acknowledges each one.
                self.out.push_back(TxnOutput::Deliver(response));
            }
            (Calling | Proceeding, 300..=699) if self.invite => {
                self.state = Completed;
                let ack = self.ack_for(&response).to_bytes();
                self.out.push_back(TxnOutput::Transmit(ack.clone()));
                self.ack = Some(ack);
                self.timers = Timers {
                    retransmit: None,
                    end: Some(now + self.wait(Duration::from_secs(32))), // Timer D
                };
                self.out.push_back(TxnOutput::Deliver(response));
            }
            (Completed, 300..=699) if self.invite => {
                // Our ACK was lost: send it again; the TU has the response already.
                if let Some(ack) = &self.ack {
                    self.out.push_back(TxnOutput::Transmit(ack.clone()));
                }
            }
            (Trying | Proceeding, 200..=699) => {
                self.state = Completed;
                self.timers = Timers {
                    retransmit: None,
                    end: Some(now + self.wait(self.config.t4)), // Timer K
                };
                self.out.push_back(TxnOutput::Deliver(response));
            }
            // Retransmitted finals in Completed, late provisionals, anything once terminated.
            _ => {}
        }
        self.terminate_if_due(now);
    }

    /// Time has reached (or passed) [`poll_timeout`](Self::poll_timeout).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Some(r) = self.timers.retransmit {
            if now >= r.at {
                self.out.push_back(TxnOutput::Transmit(self.wire.clone()));
                let interval = match (self.invite, self.state) {
                    (true, _) => r.interval * 2, // Timer A doubles without a cap.
                    (false, TxnState::Proceeding) => self.config.t2,
                    (false, _) => (r.interval * 2).min(self.config.t2),
                };
                self.timers.retransmit = Some(Retransmit {
                    at: now + interval,
                    interval,
                });
            }
        }
        if self.timers.end.is_some_and(|end| now >= end) {
            if matches!(
                self.state,
                TxnState::Calling | TxnState::Trying | TxnState::Proceeding
            ) {
                self.out.push_back(TxnOutput::Timeout);
            }
            self.terminate();
        }
    }

    /// The transport could not send (connection refused, ICMP): the TU treats it as a 503.
    pub(crate) fn handle_transport_error(&mut self) {
        if self.state != TxnState::Terminated {
            self.out.push_back(TxnOutput::Timeout);
            self.terminate();
        }
    }

    fn wait(&self, unreliable: Duration) -> Duration {
        match self.transport {
            Transport::Unreliable => unreliable,
            Transport::Reliable => Duration::ZERO,
        }
    }

    fn terminate_if_due(&mut self, now: Instant) {
        if self.timers.end.is_some_and(|end| now >= end)
            && matches!(self.state, TxnState::Completed)
        {
            self.terminate();
        }
    }

    fn terminate(&mut self) {
        self.state = TxnState::Terminated;
        self.timers = Timers::default();
        self.out.push_back(TxnOutput::Terminated);
    }

    /// The ACK for a non-2xx final response (§17.1.1.3): same Request-URI, top Via, Call-ID,
    /// From, CSeq number and Route as the INVITE; To from the response.
    fn ack_for(&self, response: &SipMessage) -> SipMessage {
        let uri = match &self.request.start {
            super::msg::StartLine::Request { uri, .. } => String::from_utf8_lossy(uri).into_owned(),
            super::msg::StartLine::Response { .. } => String::new(),
        };
        let mut b = MessageBuilder::request(Method::Ack, &uri);
        if let Some(via) = self.request.header(&HeaderName::Via) {
            let top = super::header::split_list(&via.value)
                .ok()
                .and_then(|v| v.first().map(|t| Bytes::copy_from_slice(t)))
                .unwrap_or_else(|| via.value.clone());
            b = b.header(HeaderName::Via, top);
        }
        for h in self.request.headers_named(&HeaderName::Route) {
            b = b.header(HeaderName::Route, h.value.clone());
        }
        b = b.header(HeaderName::MaxForwards, "70");
        for name in [HeaderName::From, HeaderName::CallId] {
            if let Some(h) = self.request.header(&name) {
                b = b.header(name, h.value.clone());
            }
        }
        if let Some(to) = response.header(&HeaderName::To) {
            b = b.header(HeaderName::To, to.value.clone());
        }
        let seq = self
            .request
            .header(&HeaderName::CSeq)
            .and_then(|h| super::header::CSeq::parse(&h.value).ok())
            .map_or(1, |c| c.seq);
        b.header(HeaderName::CSeq, format!("{seq} ACK")).build()
    }
}

/// A server transaction: receives a request, absorbs its retransmissions, sends the TU's
/// responses (and retransmits them where the transport does not).
#[derive(Debug)]
pub(crate) struct ServerTxn {
    invite: bool,
    state: TxnState,
    transport: Transport,
    config: TimerConfig,
    timers: Timers,
    /// The last response sent, re-sent when the request is retransmitted.
    last_response: Option<Bytes>,
    /// 2xx retransmission (INVITE, Accepted) has to stop at the ACK.
    awaiting_ack: bool,
    out: VecDeque<TxnOutput>,
}

impl ServerTxn {
    /// Starts a server transaction for a received `request`, which is delivered to the TU.
    /// An INVITE is answered with 100 Trying at once (§17.2.1), so the client stops
    /// retransmitting while the B2BUA works. A request the TU never answers is reported
    /// with [`TxnOutput::Unanswered`]: an INVITE after [`UNANSWERED_INVITE`], answered 500
    /// by the transaction itself; another method after 128·T1 (twice the client's Timer F,
    /// so a relayed request's own timeout still finds this transaction to answer), and the
    /// transaction ends.
    pub(crate) fn new(
        now: Instant,
        request: SipMessage,
        transport: Transport,
        config: TimerConfig,
    ) -> Self {
        let invite = request.method() == Some(&Method::Invite);
        let mut txn = Self {
            invite,
            state: if invite {
                TxnState::Proceeding
            } else {
                TxnState::Trying
            },
            transport,
            config,
            timers: Timers {
                retransmit: None,
                end: Some(
                    now + if invite {
                        UNANSWERED_INVITE
                    } else {
                        128 * config.t1
                    },
                ),
            },
            last_response: None,
            awaiting_ack: false,
            out: VecDeque::new(),
        };
        if invite {
            let trying = MessageBuilder::response_to(&request, 100, "Trying", None)
                .build()
                .to_bytes();
            txn.out.push_back(TxnOutput::Transmit(trying.clone()));
            txn.last_response = Some(trying);
        }
        txn.out.push_back(TxnOutput::Deliver(request));
        txn
    }

    /// Current state.
    pub(crate) fn state(&self) -> TxnState {
        self.state
    }

    /// Next output, if any.
    pub(crate) fn poll_output(&mut self) -> Option<TxnOutput> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// A request matched to this transaction arrived: a retransmission, or (INVITE) the ACK
    /// for a non-2xx final response.
    pub(crate) fn handle_request(&mut self, now: Instant, request: &SipMessage) {
        use TxnState::*;
        let is_ack = request.method() == Some(&Method::Ack);
        match (self.state, is_ack) {
            (Completed, true) if self.invite => {
                self.state = Confirmed;
                self.timers = Timers {
                    retransmit: None,
                    end: Some(now + self.wait(self.config.t4)), // Timer I
                };
                self.terminate_if_due(now);
            }
            (Proceeding | Completed, false) => {
                if let Some(r) = &self.last_response {
                    self.out.push_back(TxnOutput::Transmit(r.clone()));
                }
            }
            // Trying: absorbed until the TU answers. Accepted: absorbed (RFC 6026).
            // Confirmed, Terminated: absorbed.
            _ => {}
        }
    }

    /// The TU answers with `response`.
    pub(crate) fn respond(&mut self, now: Instant, response: SipMessage) {
        let Some(code) = response.status() else {
            return;
        };
        use TxnState::*;
        let wire = response.to_bytes();
        match (self.state, code) {
            (Trying | Proceeding, 100..=199) => {
                self.state = Proceeding;
                self.send(wire);
            }
            (Proceeding, 200..=299) if self.invite => {
                self.state = Accepted;
                self.send(wire);
                self.awaiting_ack = true;
                self.timers = Timers {
                    retransmit: (self.transport == Transport::Unreliable).then_some(Retransmit {
                        at: now + self.config.t1,
                        interval: self.config.t1,
                    }),
                    end: Some(now + 64 * self.config.t1), // Timer L
                };
            }
            (Accepted, 200..=299) => {
                // The TU re-sends its 2xx (a forked or updated answer): pass it on.
                self.send(wire);
            }
            (Proceeding, 300..=699) if self.invite => {
                self.state = Completed;
                self.send(wire);
                self.timers = Timers {
                    retransmit: (self.transport == Transport::Unreliable).then_some(Retransmit {
                        at: now + self.config.t1, // Timer G
                        interval: self.config.t1,
                    }),
                    end: Some(now + 64 * self.config.t1), // Timer H
                };
            }
            (Trying | Proceeding, 200..=699) if !self.invite => {
                self.state = Completed;
                self.send(wire);
                self.timers = Timers {
                    retransmit: None,
                    end: Some(now + self.wait(64 * self.config.t1)), // Timer J
                };
                self.terminate_if_due(now);
            }
            // A response after the final one is a TU bug; nothing is sent.
            _ => {}
        }
    }

    /// The TU received the ACK for this transaction's 2xx (it matches the dialog, not the
    /// transaction, §17.2.3): stop retransmitting the 2xx.
    pub(crate) fn ack_received(&mut self) {
        if self.state == TxnState::Accepted {
            self.awaiting_ack = false;
            self.timers.retransmit = None;
        }
    }

    /// Time has reached (or passed) [`poll_timeout`](Self::poll_timeout).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Some(r) = self.timers.retransmit {
            if now >= r.at {
                if let Some(resp) = &self.last_response {
                    self.out.push_back(TxnOutput::Transmit(resp.clone()));
                }
                let interval = (r.interval * 2).min(self.config.t2);
                self.timers.retransmit = Some(Retransmit {
                    at: now + interval,
                    interval,
                });
            }
        }
        if self.timers.end.is_some_and(|end| now >= end) {
            match self.state {
                // Timer H: only an INVITE's final response is acknowledged.
                TxnState::Completed if self.invite => self.out.push_back(TxnOutput::AckTimeout),
                TxnState::Accepted if self.awaiting_ack => {
                    self.out.push_back(TxnOutput::AckTimeout)
                }
                TxnState::Trying | TxnState::Proceeding => {
                    self.out.push_back(TxnOutput::Unanswered);
                    if let Some(failure) = self.unanswered_failure() {
                        // Timers G and H take over, as for any final failure.
                        self.respond(now, failure);
                        return;
                    }
                }
                _ => {}
            }
            self.terminate();
        }
    }

    fn send(&mut self, wire: Bytes) {
        self.out.push_back(TxnOutput::Transmit(wire.clone()));
        self.last_response = Some(wire);
    }

    /// An INVITE's 500 made from its last provisional response (the same Via, From, To,
    /// Call-ID and CSeq), so the caller stops waiting; `None` for other methods.
    fn unanswered_failure(&self) -> Option<SipMessage> {
        if !self.invite {
            return None;
        }
        let provisional = parse_datagram(self.last_response.clone()?).ok()?;
        Some(
            MessageBuilder::response_to_headers(
                &provisional.headers,
                500,
                "Server Internal Error",
                Some("unanswered"),
            )
            .build(),
        )
    }

    fn wait(&self, unreliable: Duration) -> Duration {
        match self.transport {
            Transport::Unreliable => unreliable,
            Transport::Reliable => Duration::ZERO,
        }
    }

    fn terminate_if_due(&mut self, now: Instant) {
        if self.timers.end.is_some_and(|end| now >= end) {
            self.terminate();
        }
    }

    fn terminate(&mut self) {
        self.state = TxnState::Terminated;
        self.timers = Timers::default();
        self.out.push_back(TxnOutput::Terminated);
    }
}

#[cfg(test)]
mod tests;
