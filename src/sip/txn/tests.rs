//! Every transaction state and timer, driven by a virtual clock through lost, duplicated and
//! reordered messages. No test sleeps: time is an input.

use std::time::{Duration, Instant};

use super::*;
use crate::sip::header::CSeq;
use crate::sip::msg::parse_datagram;

const MS: Duration = Duration::from_millis(1);

fn request(method: Method) -> SipMessage {
    let m = method.to_string();
    MessageBuilder::request(method, "sip:agent@192.0.2.20:5070")
        .header(
            HeaderName::Via,
            "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-txn-1;rport",
        )
        .header(HeaderName::Route, "<sip:proxy.example.com;lr>")
        .header(HeaderName::MaxForwards, "70")
        .header(HeaderName::From, "<sip:customer@wa.example.net>;tag=from1")
        .header(HeaderName::To, "<sip:agent@pbx.example.com>")
        .header(HeaderName::CallId, "txn-test-1@192.0.2.10")
        .header(HeaderName::CSeq, format!("17 {m}"))
        .build()
}

fn response(req: &SipMessage, code: u16) -> SipMessage {
    MessageBuilder::response_to(req, code, "Reason", Some("to-tag-9")).build()
}

/// Collected outputs with the virtual time at which they appeared.
#[derive(Debug, Default)]
struct Log(Vec<(Duration, TxnOutput)>);

impl Log {
    fn transmits(&self) -> Vec<Duration> {
        self.0
            .iter()
            .filter(|(_, o)| matches!(o, TxnOutput::Transmit(_)))
            .map(|(t, _)| *t)
            .collect()
    }
    fn delivered(&self) -> Vec<u16> {
        self.0
            .iter()
            .filter_map(|(_, o)| match o {
                TxnOutput::Deliver(m) => Some(m.status().unwrap_or(0)),
                _ => None,
            })
            .collect()
    }
    fn has(&self, want: &TxnOutput) -> bool {
        self.0.iter().any(|(_, o)| o == want)
    }
    fn when(&self, want: &TxnOutput) -> Option<Duration> {
        self.0.iter().find(|(_, o)| o == want).map(|(t, _)| *t)
    }
}

/// A transaction under a virtual clock.
trait Machine {
    fn poll_output(&mut self) -> Option<TxnOutput>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant);
}

impl Machine for ClientTxn {
    fn poll_output(&mut self) -> Option<TxnOutput> {
        ClientTxn::poll_output(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        ClientTxn::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        ClientTxn::handle_timeout(self, now)
    }
}

impl Machine for ServerTxn {
    fn poll_output(&mut self) -> Option<TxnOutput> {
        ServerTxn::poll_output(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        ServerTxn::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        ServerTxn::handle_timeout(self, now)
    }
}

struct Clock {
    t0: Instant,
    now: Instant,
}

impl Clock {
    fn new() -> Self {
        let t0 = Instant::now();
        Self { t0, now: t0 }
    }

    fn at(&self) -> Duration {
        self.now - self.t0
    }

    fn drain(&self, m: &mut impl Machine, log: &mut Log) {
        while let Some(o) = m.poll_output() {
            log.0.push((self.at(), o));
        }
    }

    /// Fires every timer due up to `t0 + until`, in order; bounded so a livelock fails.
    fn run_until(&mut self, m: &mut impl Machine, log: &mut Log, until: Duration) {
        self.drain(m, log);
        for _ in 0..10_000 {
            match m.poll_timeout() {
                Some(at) if at <= self.t0 + until => {
                    self.now = self.now.max(at);
                    m.handle_timeout(self.now);
                    self.drain(m, log);
                }
                _ => {
                    self.now = self.t0 + until;
                    return;
                }
            }
        }
        panic!("timers never settle");
    }
}

/// A client transaction over UDP with default timers, started now.
fn udp_client(clock: &Clock, request: SipMessage) -> ClientTxn {
    ClientTxn::new(
        clock.now,
        request,
        Transport::Unreliable,
        TimerConfig::default(),
    )
}

/// A server transaction over UDP with default timers.
fn udp_server(request: SipMessage) -> ServerTxn {
    ServerTxn::new(
        Instant::now(),
        request,
        Transport::Unreliable,
        TimerConfig::default(),
    )
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn invite_client_retransmits_on_timer_a_and_times_out_on_timer_b() {
    let mut clock = Clock::new();
    let mut log = Log::default();
    let mut txn = udp_client(&clock, request(Method::Invite));
    assert_eq!(txn.state(), TxnState::Calling);
    clock.run_until(&mut txn, &mut log, secs(40.0));
    // Sent at 0, then A doubles without a cap: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s.
    assert_eq!(
        log.transmits(),
        [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5].map(secs)
    );
    assert_eq!(log.when(&TxnOutput::Timeout), Some(secs(32.0))); // B = 64·T1
    assert!(log.has(&TxnOutput::Terminated));
    assert_eq!(txn.state(), TxnState::Terminated);
    assert_eq!(txn.poll_timeout(), None);
}

#[test]
fn invite_client_on_tcp_never_retransmits() {
    let mut clock = Clock::new();
    let mut log = Log::default();
    let mut txn = ClientTxn::new(
        clock.now,
        request(Method::Invite),
        Transport::Reliable,
        TimerConfig::default(),
    );
    clock.run_until(&mut txn, &mut log, secs(40.0));
    assert_eq!(log.transmits(), [Duration::ZERO]);
    assert_eq!(log.when(&TxnOutput::Timeout), Some(secs(32.0)));
}

#[test]
fn t1_is_configurable() {
    let mut clock = Clock::new();
    let mut log = Log::default();
    let config = TimerConfig {
        t1: 100 * MS,
        ..TimerConfig::default()
    };
    let mut txn = ClientTxn::new(
        clock.now,
        request(Method::Invite),
        Transport::Unreliable,
        config,
    );
    clock.run_until(&mut txn, &mut log, secs(10.0));
    assert_eq!(log.transmits()[1], 100 * MS);
    assert_eq!(log.when(&TxnOutput::Timeout), Some(6400 * MS));
}

#[test]
fn invite_client_provisional_stops_retransmission_and_2xx_enters_accepted() {
    let mut clock = Clock::new();
    let mut log = Log::default();
    let req = request(Method::Invite);
    let mut txn = udp_client(&clock, req.clone());
    // The first INVITE is lost: the retransmission at 0.5 s gets through.
    clock.run_until(&mut txn, &mut log, 700 * MS);
    assert_eq!(log.transmits(), [Duration::ZERO, 500 * MS]);
    txn.handle_response(clock.now, response(&req, 180));
    assert_eq!(txn.state(), TxnState::Proceeding);
    // No retransmission and no Timer B in Proceeding, however long the phone rings.
    clock.run_until(&mut txn, &mut log, secs(120.0));
    assert_eq!(log.transmits().len(), 2);
    assert!(!log.has(&TxnOutput::Timeout));
    // 200 OK, then its retransmission: both go to the TU (it ACKs each), RFC 6026.
    txn.handle_response(clock.now, response(&req, 200));
    assert_eq!(txn.state(), TxnState::Accepted);
    txn.handle_response(clock.now, response(&req, 200));
    // A late 180 (reordered behind the 200) is ignored.
    txn.handle_response(clock.now, response(&req, 180));
    clock.drain(&mut txn, &mut log);
    assert_eq!(log.delivered(), [180, 200, 200]);
    // Timer M = 64·T1 after the 2xx.
    clock.run_until(&mut txn, &mut log, secs(120.0 + 32.0));
    assert_eq!(log.when(&TxnOutput::Terminated), Some(secs(152.0)));
    assert!(!log.has(&TxnOutput::Timeout));
}

#[test]
fn invite_client_acks_a_failure_and_absorbs_its_retransmissions() {
    let mut clock = Clock::new();
    let mut log = Log::default();
    let req = request(Method::Invite);
    let mut txn = udp_client(&clock, req.clone());
    clock.drain(&mut txn, &mut log);
    txn.handle_response(clock.now, response(&req, 486));
    assert_eq!(txn.state(), TxnState::Completed);
    clock.drain(&mut txn, &mut log);
    let ack = match &log.0[1].1 {
        TxnOutput::Transmit(b) => parse_datagram(b.clone()).expect("ACK parses"),
        other => panic!("expected the ACK, got {other:?}"),
    };
    assert_eq!(ack.method(), Some(&Method::Ack));
    let value = |m: &SipMessage, h: HeaderName| m.header(&h).map(|h| h.value.clone());
    assert_eq!(value(&ack, HeaderName::Via), value(&req, HeaderName::Via));
    assert_eq!(
        value(&ack, HeaderName::Route),
        value(&req, HeaderName::Route)
    );
    assert_eq!(value(&ack, HeaderName::From), value(&req, HeaderName::From));
    assert_eq!(
        value(&ack, HeaderName::CallId),
        value(&req, HeaderName::CallId)
    );
    assert!(value(&ack, HeaderName::To).is_some_and(|v| v.ends_with(b";tag=to-tag-9")));
    let cseq = CSeq::parse(&ack.header(&HeaderName::CSeq).expect("CSeq").value).expect("CSeq");
    assert_eq!((cseq.seq, cseq.method), (17, Method::Ack));
    // The 486 is retransmitted twice (our ACK was lost): ACK again, TU told once.
    txn.handle_response(clock.now + 500 * MS, response(&req, 486));
    txn.handle_response(clock.now + 1500 * MS, response(&req, 486));
    clock.run_until(&mut txn, &mut log, secs(40.0));
    assert_eq!(log.transmits().len(), 4);
    assert_eq!(log.delivered(), [486]);
    assert_eq!(log.when(&TxnOutput::Terminated), Some(secs(32.0))); // Timer D
}

#[test]
fn invite_client_on_tcp_terminates_at_once_after_a_failure() {
    let clock = Clock::new();
    let req = request(Method::Invite);
    let mut txn = ClientTxn::new(
        clock.now,
        req.clone(),
        Transport::Reliable,
        TimerConfig::default(),
    );
    txn.handle_response(clock.now, response(&req, 503));
    assert_eq!(txn.state(), TxnState::Terminated);
}

#[test]
fn non_invite_client_timer_e_caps_at_t2_and_f_times_out() {
    let mut clock = Clock::new();
    let mut log = Log::default();
    let mut txn = udp_client(&clock, request(Method::Options));
    assert_eq!(txn.state(), TxnState::Trying);
    clock.run_until(&mut txn, &mut log, secs(40.0));
    let sent = log.transmits();
    // 0, 0.5, 1.5, 3.5, 7.5, then every 4 s (T2) until F at 32 s.
    assert_eq!(
        sent,
        [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5].map(secs)
    );
    assert_eq!(log.when(&TxnOutput::Timeout), Some(secs(32.0)));
}

#[test]
fn non_invite_client_proceeding_retransmits_at_t2_then_completes_for_t4() {
    let mut clock = Clock::new();
    let mut log = Log::default();
    let req = request(Method::Bye);
    let mut txn = udp_client(&clock, req.clone());
    clock.run_until(&mut txn, &mut log, 600 * MS);
    txn.handle_response(clock.now, response(&req, 100));
    assert_eq!(txn.state(), TxnState::Proceeding);
    clock.run_until(&mut txn, &mut log, secs(10.0));
    // After the 100 at 0.6 s: the pending 1.5 s retransmission, then every T2.
    assert_eq!(log.transmits(), [0.0, 0.5, 1.5, 5.5, 9.5].map(secs));
    txn.handle_response(clock.now, response(&req, 200));
    assert_eq!(txn.state(), TxnState::Completed);
    txn.handle_response(clock.now, response(&req, 200)); // duplicate: absorbed
    clock.run_until(&mut txn, &mut log, secs(20.0));
    assert_eq!(log.delivered(), [100, 200]);
    assert_eq!(log.when(&TxnOutput::Terminated), Some(secs(15.0))); // K = T4
    assert_eq!(log.transmits().len(), 5);
}

#[test]
fn invite_server_sends_trying_answers_retransmissions_and_retransmits_failure() {
    let mut clock = Clock::new();
    let mut log = Log::default();
    let req = request(Method::Invite);
    let mut txn = udp_server(req.clone());
    clock.drain(&mut txn, &mut log);
    assert!(matches!(&log.0[0].1, TxnOutput::Transmit(b) if b.starts_with(b"SIP/2.0 100 Trying")));
    assert!(matches!(&log.0[1].1, TxnOutput::Deliver(m) if m == &req));
    // A retransmitted INVITE gets the 100 again and is not delivered twice.
    txn.handle_request(clock.now, &req);
    txn.respond(clock.now, response(&req, 180));
    txn.handle_request(clock.now, &req);
    clock.drain(&mut txn, &mut log);
    let sent: Vec<_> = log
        .0
        .iter()
        .filter_map(|(_, o)| match o {
            TxnOutput::Transmit(b) => Some(String::from_utf8_lossy(&b[..15]).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        [
            "SIP/2.0 100 Try",
            "SIP/2.0 100 Try",
            "SIP/2.0 180 Rea",
            "SIP/2.0 180 Rea"
        ]
    );
    // Busy: G retransmits (0.5, 1.5, 3.5, 7.5, then every 4 s) until the ACK at 9 s.
    txn.respond(clock.now, response(&req, 486));
    assert_eq!(txn.state(), TxnState::Completed);
    let before = log.transmits().len();
    clock.run_until(&mut txn, &mut log, secs(9.0));
    assert_eq!(
        log.transmits()[before..],
        [0.0, 0.5, 1.5, 3.5, 7.5].map(secs)
    );
    let ack = MessageBuilder::request(Method::Ack, "sip:agent@192.0.2.20:5070").build();
    txn.handle_request(clock.now, &ack);
    assert_eq!(txn.state(), TxnState::Confirmed);
    // Confirmed absorbs ACK retransmissions; Timer I = T4.
    txn.handle_request(clock.now, &ack);
    clock.run_until(&mut txn, &mut log, secs(30.0));
    assert_eq!(log.transmits().len(), before + 5);
    assert_eq!(log.when(&TxnOutput::Terminated), Some(secs(14.0)));
    assert!(!log.has(&TxnOutput::AckTimeout));
}

#[test]
fn invite_server_timer_h_reports_a_missing_ack() {
    let mut clock = Clock::new();
    let mut log = Log::default();
    let req = request(Method::Invite);
    let mut txn = udp_server(req.clone());
    txn.respond(clock.now, response(&req, 404));
    clock.run_until(&mut txn, &mut log, secs(60.0));
    assert_eq!(log.when(&TxnOutput::AckTimeout), Some(secs(32.0)));
    assert_eq!(txn.state(), TxnState::Terminated);
}

#[test]
fn invite_server_retransmits_2xx_until_acked_and_absorbs_invites_in_accepted() {
    let mut clock = Clock::new();
    let mut log = Log::default();
    let req = request(Method::Invite);
    let mut txn = udp_server(req.clone());
    txn.respond(clock.now, response(&req, 200));
    assert_eq!(txn.state(), TxnState::Accepted);
    clock.run_until(&mut txn, &mut log, secs(2.0));
    // 100, 200 at 0; 200 again at 0.5 and 1.5.
    assert_eq!(log.transmits(), [0.0, 0.0, 0.5, 1.5].map(secs));
    txn.handle_request(clock.now, &req); // a late retransmitted INVITE: absorbed (RFC 6026)
    txn.ack_received();
    clock.run_until(&mut txn, &mut log, secs(40.0));
    assert_eq!(log.transmits().len(), 4);
    assert_eq!(log.when(&TxnOutput::Terminated), Some(secs(32.0))); // Timer L
    assert!(!log.has(&TxnOutput::AckTimeout));
}

#[test]
fn invite_server_gives_up_on_2xx_without_ack() {
    let mut clock = Clock::new();
    let mut log = Log::default();
    let req = request(Method::Invite);
    let mut txn = udp_server(req.clone());
    txn.respond(clock.now, response(&req, 200));
    clock.run_until(&mut txn, &mut log, secs(40.0));
    assert_eq!(log.when(&TxnOutput::AckTimeout), Some(secs(32.0)));
    // T1 doubling capped at T2: 0.5 1.5 3.5 7.5 11.5 ... 31.5, plus the first 100 and 200.
    assert_eq!(log.transmits().len(), 2 + 10);
}

#[test]
fn non_invite_server_absorbs_and_replays_then_waits_timer_j() {
    let mut clock = Clock::new();
    let mut log = Log::default();
    let req = request(Method::Options);
    let mut txn = udp_server(req.clone());
    assert_eq!(txn.state(), TxnState::Trying);
    txn.handle_request(clock.now, &req); // absorbed: nothing sent, nothing delivered again
    clock.drain(&mut txn, &mut log);
    assert_eq!(log.0.len(), 1);
    txn.respond(clock.now, response(&req, 200));
    txn.handle_request(clock.now + secs(1.0), &req); // replayed
    clock.run_until(&mut txn, &mut log, secs(40.0));
    assert_eq!(log.transmits().len(), 2);
    assert_eq!(log.when(&TxnOutput::Terminated), Some(secs(32.0))); // J = 64·T1
                                                                    // Regression: Timer J once reported a missing ACK, which only INVITEs have.
    assert!(!log.has(&TxnOutput::AckTimeout));
}

#[test]
fn a_request_its_tu_never_answers_ends_its_transaction_as_unanswered() {
    // Non-INVITE: twice the client's Timer F (64·T1).
    let mut clock = Clock::new();
    let mut log = Log::default();
    let info = request(Method::Info);
    let mut txn = ServerTxn::new(
        clock.now,
        info,
        Transport::Unreliable,
        TimerConfig::default(),
    );
    clock.run_until(&mut txn, &mut log, secs(60.0));
    clock.run_until(&mut txn, &mut log, secs(70.0));
    assert_eq!(log.when(&TxnOutput::Unanswered), Some(secs(64.0)));
    assert_eq!(log.when(&TxnOutput::Terminated), Some(secs(64.0)));
    assert_eq!(log.transmits().len(), 0, "nothing is made up for the TU");

    // INVITE: its 100 Trying and a 180 went out; only hours beyond any ring timeout does
    // the transaction answer 500 itself, and the caller's ACK ends it.
    let mut clock = Clock::new();
    let mut log = Log::default();
    let invite = request(Method::Invite);
    let mut txn = ServerTxn::new(
        clock.now,
        invite.clone(),
        Transport::Unreliable,
        TimerConfig::default(),
    );
    txn.respond(clock.now, response(&invite, 180));
    clock.run_until(&mut txn, &mut log, UNANSWERED_INVITE - secs(1.0));
    assert_eq!(
        txn.state(),
        TxnState::Proceeding,
        "still waiting for its answer"
    );
    clock.run_until(&mut txn, &mut log, UNANSWERED_INVITE + secs(1.0));
    assert_eq!(log.when(&TxnOutput::Unanswered), Some(UNANSWERED_INVITE));
    assert_eq!(txn.state(), TxnState::Completed);
    let failure = log
        .0
        .iter()
        .rev()
        .find_map(|(_, o)| match o {
            TxnOutput::Transmit(b) => Some(parse_datagram(b.clone()).expect("parses")),
            _ => None,
        })
        .expect("a final response");
    assert_eq!(failure.status(), Some(500));
    let to = failure.header(&HeaderName::To).expect("To").value.clone();
    assert!(
        to.ends_with(b";tag=to-tag-9"),
        "the provisional's To tag: {to:?}"
    );
    let ack = MessageBuilder::request(Method::Ack, "sip:agent@192.0.2.20:5070").build();
    txn.handle_request(clock.now, &ack);
    clock.run_until(&mut txn, &mut log, UNANSWERED_INVITE + secs(10.0));
    assert_eq!(txn.state(), TxnState::Terminated);

    // Answered in time, the guard is gone: a 200 to the INVITE ends on Timer L as ever.
    let mut clock = Clock::new();
    let mut log = Log::default();
    let mut txn = ServerTxn::new(
        clock.now,
        invite.clone(),
        Transport::Unreliable,
        TimerConfig::default(),
    );
    txn.respond(clock.now, response(&invite, 200));
    txn.ack_received();
    clock.run_until(&mut txn, &mut log, UNANSWERED_INVITE + secs(1.0));
    assert!(!log.has(&TxnOutput::Unanswered));
}

#[test]
fn non_invite_server_on_tcp_terminates_with_its_final_response() {
    let clock = Clock::new();
    let req = request(Method::Bye);
    let mut txn = ServerTxn::new(
        clock.now,
        req.clone(),
        Transport::Reliable,
        TimerConfig::default(),
    );
    txn.respond(clock.now, response(&req, 200));
    assert_eq!(txn.state(), TxnState::Terminated);
}

#[test]
fn client_and_server_converge_over_a_lossy_duplicating_network() {
    // UAC INVITE txn ↔ UAS INVITE txn: the first INVITE and the first 200 are lost, every
    // other datagram is delivered twice. The call still completes and each side's TU sees
    // the INVITE once and the 200 at least once.
    let config = TimerConfig::default();
    let t0 = Instant::now();
    let req = request(Method::Invite);
    let mut uac = ClientTxn::new(t0, req.clone(), Transport::Unreliable, config);
    let mut uas: Option<ServerTxn> = None;
    let mut now = t0;
    let mut sent_to_uas = 0;
    let mut sent_to_uac = 0;
    let mut uas_delivered = 0;
    let mut uac_got_200 = 0;
    for _ in 0..200 {
        while let Some(o) = uac.poll_output() {
            match o {
                TxnOutput::Transmit(b) => {
                    sent_to_uas += 1;
                    if sent_to_uas == 1 {
                        continue; // lost
                    }
                    for _ in 0..2 {
                        let m = parse_datagram(b.clone()).expect("parses");
                        match &mut uas {
                            None => {
                                uas = Some(ServerTxn::new(now, m, Transport::Unreliable, config))
                            }
                            Some(s) => s.handle_request(now, &m),
                        }
                    }
                }
                TxnOutput::Deliver(m) if m.status() == Some(200) => uac_got_200 += 1,
                _ => {}
            }
        }
        if let Some(s) = &mut uas {
            while let Some(o) = s.poll_output() {
                match o {
                    TxnOutput::Transmit(b) => {
                        let m = parse_datagram(b).expect("parses");
                        if m.status() == Some(200) {
                            sent_to_uac += 1;
                            if sent_to_uac == 1 {
                                continue; // lost
                            }
                        }
                        uac.handle_response(now, m.clone());
                        uac.handle_response(now, m);
                    }
                    TxnOutput::Deliver(_) => {
                        uas_delivered += 1;
                        s.respond(now, response(&req, 200));
                    }
                    _ => {}
                }
            }
            if uac_got_200 > 0 {
                s.ack_received();
            }
        }
        let next = [
            uac.poll_timeout(),
            uas.as_ref().and_then(ServerTxn::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { break };
        now = now.max(next);
        uac.handle_timeout(now);
        if let Some(s) = &mut uas {
            s.handle_timeout(now);
        }
    }
    assert_eq!(uas_delivered, 1);
    assert!(uac_got_200 >= 1);
    assert_eq!(uac.state(), TxnState::Terminated);
    assert_eq!(uas.map(|s| s.state()), Some(TxnState::Terminated));
}
