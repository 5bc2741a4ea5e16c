//! The WhatsApp leg driven by hand: what the bridge sends it and what Meta says, in the
//! orders they can come, for each way a call crosses Meta and each way it meets its call.

use std::time::{Duration, Instant};

use super::*;
use crate::call::testing::{pbx_invite as invite, PBX_OFFER};
use crate::call::whatsapp::actor::connect_refusal;
use crate::meta::graph::GraphError;

/// The leg as the bridge's callee (a PBX calls a customer).
struct Callee(WhatsAppLeg);

impl Callee {
    fn new(tag: &str) -> Callee {
        Callee(WhatsAppLeg::new(outbound(), Face::Callee, "call-1", tag))
    }

    fn on_command(&mut self, command: SipCommand) -> Vec<WaOut> {
        self.0.on_sip(command)
    }

    fn on_event(&mut self, event: WaEvent) -> Vec<WaOut> {
        self.0.on_meta(event)
    }

    fn pbx_media(&mut self, remote: Remote) -> Vec<WaOut> {
        self.0.sip_media(remote)
    }
}

fn outbound() -> Way {
    Way::Outbound {
        customer: "4915112345678".into(),
        offer: "v=0\r\n(our offer)".into(),
        ring_timeout: Duration::from_secs(60),
    }
}

fn inbound() -> Way {
    Way::Inbound {
        wa_call_id: "wacid.in".into(),
        answer: "v=0\r\n(our answer)".into(),
    }
}

/// Meta is to terminate call `id`.
fn terminate(id: &str) -> WaOut {
    WaOut::Send(CallAction::Terminate { call_id: id.into() })
}

/// The names of the Graph requests among `outs` (awaited, placed or sent).
fn graph(outs: &[WaOut]) -> Vec<&'static str> {
    outs.iter()
        .filter_map(|o| match o {
            WaOut::Await(a) | WaOut::Dial(a) | WaOut::Send(a) => Some(a.name()),
            _ => None,
        })
        .collect()
}

/// The action awaited among `outs`.
fn awaited(outs: &[WaOut]) -> Option<CallAction> {
    outs.iter().find_map(|o| match o {
        WaOut::Await(a) => Some(a.clone()),
        _ => None,
    })
}

fn request(invite: SipMessage) -> SipCommand {
    SipCommand::Request {
        request: invite,
        to: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
    }
}

/// The statuses of the responses among `outs`.
fn statuses(outs: &[WaOut]) -> Vec<u16> {
    outs.iter()
        .filter_map(|o| match o {
            WaOut::Bridge(CoreEvent::Response(_, r)) => r.status(),
            _ => None,
        })
        .collect()
}

fn pbx() -> Remote {
    Remote {
        addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 40000))),
        rtcp_mux: false,
        clock: 8000,
        dtmf_pt: Some(101),
        dtmf_clock: 8000,
        codec_pt: Some(18),
        codec: None,
        sends: true,
    }
}

#[test]
fn an_answered_call_connects_rings_answers_with_the_pbxs_first_spoken_codec_and_ends_with_a_bye() {
    let mut c = Callee::new("watag");
    assert!(matches!(
        &c.on_command(request(invite(PBX_OFFER)))[..],
        [WaOut::Dial(CallAction::Connect { .. })]
    ));
    // The bridge reports the PBX's media before any codec is chosen: nothing yet.
    assert!(c.pbx_media(pbx()).is_empty());
    // A status before the connect is answered changes nothing here (the registry holds
    // webhooks that overtake the Graph API's answer).
    assert!(c.on_event(WaEvent::Ringing).is_empty());
    let outs = c.on_event(WaEvent::Connected(Ok("wacid.1".into())));
    assert_eq!(outs[0], WaOut::WaCallId("wacid.1".into()));
    assert_eq!(statuses(&outs), vec![100]);
    assert_eq!(
        c.on_event(WaEvent::Answer("v=0\r\n".into())),
        vec![WaOut::WebRtcAnswer("v=0\r\n".into())]
    );
    assert_eq!(statuses(&c.on_event(WaEvent::Ringing)), vec![180]);
    let outs = c.on_event(WaEvent::Accepted);
    assert_eq!(statuses(&outs), vec![200]);
    // PCMA: G.729 is not spoken here; the PBX's media goes to the plane with it.
    let media = outs
        .iter()
        .find_map(|o| match o {
            WaOut::SipMedia(r) => Some(*r),
            _ => None,
        })
        .expect("the PBX's media");
    assert_eq!(media.codec, Some(Codec::Pcma));
    assert_eq!(media.codec_pt, Some(8));
    let answer = outs
        .iter()
        .find_map(|o| match o {
            WaOut::Bridge(CoreEvent::Response(_, r)) if r.status() == Some(200) => {
                Some(String::from_utf8_lossy(&r.body).into_owned())
            }
            _ => None,
        })
        .expect("a 200 with SDP");
    assert!(answer.contains("m=audio 9 RTP/AVP 8 101\r\n"), "{answer}");
    assert!(answer.contains("a=rtpmap:8 PCMA/8000"), "{answer}");
    // A late REJECTED or a second ACCEPTED changes nothing.
    assert!(c.on_event(WaEvent::Accepted).is_empty());
    assert!(c.on_event(WaEvent::Rejected).is_empty());
    // A new address from the PBX (a re-INVITE the bridge relayed) goes to the plane with
    // the chosen codec.
    let moved = c.pbx_media(pbx());
    assert!(matches!(&moved[..], [WaOut::SipMedia(r)] if r.codec == Some(Codec::Pcma)));
    // The customer hangs up: a BYE from leg B in the bridge's dialog.
    let outs = c.on_event(WaEvent::Terminated {
        cause: "normal_clearing".into(),
    });
    match outs.as_slice() {
        [WaOut::Bridge(CoreEvent::Request { request, .. })] => {
            assert_eq!(request.method(), Some(&Method::Bye));
            let header = |n: HeaderName| {
                String::from_utf8_lossy(&request.header(&n).expect("header").value).into_owned()
            };
            assert!(header(HeaderName::From).ends_with(";tag=watag"));
            assert!(header(HeaderName::To).ends_with(";tag=b1"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_decline_is_603_and_a_terminate_before_any_answer_is_480() {
    let mut c = Callee::new("t");
    c.on_command(request(invite(PBX_OFFER)));
    c.on_event(WaEvent::Connected(Ok("wacid.2".into())));
    assert_eq!(statuses(&c.on_event(WaEvent::Rejected)), vec![603]);
    // The terminate that follows a decline finds the call answered already.
    assert!(c
        .on_event(WaEvent::Terminated {
            cause: "normal_clearing".into()
        })
        .is_empty());

    let mut c = Callee::new("t");
    c.on_command(request(invite(PBX_OFFER)));
    c.on_event(WaEvent::Connected(Ok("wacid.3".into())));
    let outs = c.on_event(WaEvent::Terminated {
        cause: "normal_clearing".into(),
    });
    assert_eq!(statuses(&outs), vec![480]);
}

#[test]
fn meta_refusing_the_connect_answers_the_invite_with_its_status() {
    let mut c = Callee::new("t");
    c.on_command(request(invite(PBX_OFFER)));
    let outs = c.on_event(WaEvent::Connected(Err((403, "Forbidden".into()))));
    assert_eq!(statuses(&outs), vec![403]);
    let e = GraphError::Meta {
        status: 401,
        code: 138_006,
        subcode: None,
        message: "No approved call permission".into(),
        details: None,
        fbtrace_id: None,
    };
    assert_eq!(connect_refusal(&e).0, 403);
    assert_eq!(connect_refusal(&GraphError::Timeout).0, 503);
}

#[test]
fn a_cancel_before_metas_call_id_terminates_the_call_when_the_id_comes() {
    let mut c = Callee::new("t");
    c.on_command(request(invite(PBX_OFFER)));
    let outs = c.on_command(SipCommand::Cancel {
        call_id: Bytes::from_static(b"b-leg@waswitch"),
    });
    assert_eq!(statuses(&outs), vec![487]);
    let outs = c.on_event(WaEvent::Connected(Ok("wacid.4".into())));
    assert!(outs.contains(&terminate("wacid.4")), "{outs:?}");
    assert!(statuses(&outs).is_empty(), "{outs:?}");
}

#[test]
fn a_cancel_while_ringing_terminates_at_once_and_a_pbx_without_a_spoken_codec_gets_488() {
    let mut c = Callee::new("t");
    c.on_command(request(invite(PBX_OFFER)));
    c.on_event(WaEvent::Connected(Ok("wacid.5".into())));
    let outs = c.on_command(SipCommand::Cancel {
        call_id: Bytes::from_static(b"b-leg@waswitch"),
    });
    assert_eq!(statuses(&outs), vec![487]);
    assert!(outs.contains(&terminate("wacid.5")));

    let g729 = "v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                m=audio 40000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
    let mut c = Callee::new("t");
    c.on_command(request(invite(g729)));
    c.on_event(WaEvent::Connected(Ok("wacid.6".into())));
    let outs = c.on_event(WaEvent::Accepted);
    assert_eq!(statuses(&outs), vec![488]);
    assert!(outs.contains(&terminate("wacid.6")));
}

#[test]
fn in_dialog_offers_keep_the_codec_mirror_hold_and_refuse_what_cannot_be_answered() {
    let mut c = Callee::new("t");
    c.on_command(request(invite(PBX_OFFER)));
    c.on_event(WaEvent::Connected(Ok("wacid.10".into())));
    // An offer before our answer exists.
    let early = in_dialog(Method::Update, PBX_OFFER);
    assert_eq!(statuses(&c.on_command(request(early))), vec![491]);
    c.on_event(WaEvent::Accepted);
    // Hold: the PBX only sends, so we only receive.
    let hold = format!("{PBX_OFFER}a=sendonly\r\n");
    let outs = c.on_command(request(in_dialog(Method::Invite, &hold)));
    let body = outs
        .iter()
        .find_map(|o| match o {
            WaOut::Bridge(CoreEvent::Response(_, r)) if r.status() == Some(200) => {
                Some(String::from_utf8_lossy(&r.body).into_owned())
            }
            _ => None,
        })
        .expect("200 with SDP");
    assert!(
        body.contains("a=recvonly") && body.contains("PCMA"),
        "{body}"
    );
    // An offer without the codec in use.
    let pcmu = PBX_OFFER.replace(" 18 8 0 101", " 0 101");
    let outs = c.on_command(request(in_dialog(Method::Invite, &pcmu)));
    assert_eq!(statuses(&outs), vec![488]);
    // An offerless re-INVITE gets our SDP as the offer.
    let outs = c.on_command(request(in_dialog(Method::Invite, "")));
    assert!(
        outs.iter().any(|o| matches!(o,
        WaOut::Bridge(CoreEvent::Response(_, r)) if r.status() == Some(200) && !r.body.is_empty()))
    );
    assert_eq!(safe_phrase("bad\r\nBYE \"x\""), "badBYE x");
}

/// A request inside the callee's dialog.
fn in_dialog(method: Method, body: &str) -> SipMessage {
    let mut b = MessageBuilder::request(method.clone(), "sip:whatsapp@whatsapp.invalid")
        .header(
            HeaderName::Via,
            "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKb2",
        )
        .header(HeaderName::From, "<sip:15551112222@pbx.invalid>;tag=b1")
        .header(HeaderName::To, "<sip:4915112345678@whatsapp.invalid>;tag=t")
        .header(HeaderName::CallId, "b-leg@waswitch")
        .header(HeaderName::CSeq, format!("2 {method}"));
    if !body.is_empty() {
        b = b.body("application/sdp", body.to_string());
    }
    b.build()
}

#[test]
fn metas_side_is_ended_once_whichever_ends_first() {
    let dialled = || {
        let mut leg = WhatsAppLeg::new(outbound(), Face::Caller, "call-2", "t");
        let outs = leg.start(Instant::now());
        assert!(matches!(
            &outs[..],
            [WaOut::Dial(CallAction::Connect { .. })]
        ));
        leg
    };
    // The call ends before Meta's id is known: terminated when the id comes, once.
    let mut leg = dialled();
    assert!(leg.hangup().is_empty());
    let outs = leg.on_meta(WaEvent::Connected(Ok("wacid.7".into())));
    assert!(outs.contains(&terminate("wacid.7")), "{outs:?}");
    assert!(leg.hangup().is_empty());
    // Placed first: the switch ends it, once.
    let mut leg = dialled();
    assert_eq!(
        graph(&leg.on_meta(WaEvent::Connected(Ok("wacid.8".into())))),
        Vec::<&str>::new()
    );
    assert_eq!(leg.hangup(), vec![terminate("wacid.8")]);
    assert!(leg.hangup().is_empty());
    // Meta ended it: nothing to send.
    let mut leg = dialled();
    leg.on_meta(WaEvent::Connected(Ok("wacid.9".into())));
    leg.on_meta(WaEvent::Terminated {
        cause: "normal_clearing".into(),
    });
    assert!(leg.hangup().is_empty());
}

#[test]
fn a_callee_hung_up_while_meta_places_the_call_ends_the_invite_when_the_id_comes() {
    let mut c = Callee::new("t");
    c.on_command(request(invite(PBX_OFFER)));
    // The call ends (the supervisor hangs the leg up) while `connect` is out.
    assert!(c.0.hangup().is_empty());
    let outs = c.on_event(WaEvent::Connected(Ok("wacid.11".into())));
    assert!(outs.contains(&terminate("wacid.11")), "{outs:?}");
    // The bridge, waiting for a provisional to cancel, hears the INVITE is over.
    assert_eq!(statuses(&outs), vec![487]);
    // A bridge that begins after the call ended calls nobody.
    let mut c = Callee::new("t");
    c.0.hangup();
    assert!(c.0.bridge_ready(Bytes::new()).is_empty());
}

#[test]
fn an_inbound_caller_pre_accepts_when_the_business_rings_and_accepts_when_it_answers() {
    let mut leg = WhatsAppLeg::new(inbound(), Face::Caller, "call-3", "t");
    assert!(leg.start(Instant::now()).is_empty());
    const LEG_A: &str = "v=0\r\no=waswitch 3 1 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\n\
        t=0 0\r\nm=audio 9 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
    assert_eq!(
        leg.bridge_ready(Bytes::from_static(LEG_A.as_bytes())),
        vec![WaOut::Begin]
    );
    // The business rings: our answer goes to Meta with pre_accept, once.
    let ringing = response_to_caller(180);
    let outs = leg.on_sip(ringing.clone());
    assert_eq!(graph(&outs), vec!["pre_accept"]);
    assert!(leg.on_sip(ringing).is_empty());
    assert!(leg
        .graph_done(&awaited(&outs).expect("pre_accept"), true)
        .is_empty());
    // It answers: acknowledged at once, and accepted toward Meta with the same SDP and
    // the switch's call id.
    let outs = leg.on_sip(response_to_caller(200));
    assert!(outs
        .iter()
        .any(|o| matches!(o, WaOut::Bridge(CoreEvent::Ack { .. }))));
    match awaited(&outs) {
        Some(CallAction::Accept {
            call_id,
            sdp,
            biz_opaque_callback_data,
        }) => {
            assert_eq!(call_id, "wacid.in");
            assert_eq!(sdp, "v=0\r\n(our answer)");
            assert_eq!(biz_opaque_callback_data.as_deref(), Some("call-3"));
        }
        other => panic!("{other:?}"),
    }
    let accept = awaited(&outs).expect("accept");
    assert_eq!(
        leg.graph_done(&accept, true),
        vec![WaOut::Changed(LegState::Answered, None)]
    );
    assert_eq!(leg.state(), LegState::Answered);
    // The business's re-offer is answered with leg A's SDP narrowed to it (the offer's
    // G.729 first, but PCMU is what leg A has), the version moved on.
    let outs = leg.on_sip(request(in_dialog(Method::Invite, PBX_OFFER)));
    let answer = outs.iter().find_map(|o| match o {
        WaOut::Bridge(CoreEvent::Response(_, r)) if r.status() == Some(200) => {
            Some(String::from_utf8_lossy(&r.body).into_owned())
        }
        _ => None,
    });
    let answer = answer.expect("a 200 with an answer");
    assert!(answer.contains("o=waswitch 3 2 "), "{answer}");
    assert!(answer.contains("m=audio 9 RTP/AVP 0 101\r\n"), "{answer}");
    // Ending it terminates (accepted), once.
    assert_eq!(graph(&leg.hangup()), vec!["terminate"]);
    assert!(leg.hangup().is_empty());
}

#[test]
fn an_inbound_caller_answered_without_ringing_pre_accepts_first_and_a_refusal_stops_there() {
    let mut leg = WhatsAppLeg::new(inbound(), Face::Caller, "call-4", "t");
    let outs = leg.on_sip(response_to_caller(200));
    assert_eq!(graph(&outs), vec!["pre_accept"]);
    // Meta refuses the pre_accept: the call is declined and fails; accept never goes.
    let outs = leg.graph_done(&awaited(&outs).expect("pre_accept"), false);
    assert_eq!(graph(&outs), vec!["reject"]);
    assert!(outs.contains(&WaOut::Failed("meta_pre_accept_failed".into())));
    assert_eq!(leg.state(), LegState::Ended);
    assert!(leg
        .on_sip(response_to_caller(200))
        .iter()
        .all(|o| !matches!(o, WaOut::Await(_))));
    assert!(leg.hangup().is_empty());

    // A refused accept: Meta may have taken the call, so it is terminated.
    let mut leg = WhatsAppLeg::new(inbound(), Face::Caller, "call-5", "t");
    let outs = leg.on_sip(response_to_caller(200));
    let outs = leg.graph_done(&awaited(&outs).expect("pre_accept"), true);
    let outs = leg.graph_done(&awaited(&outs).expect("accept"), false);
    assert_eq!(graph(&outs), vec!["terminate"]);
    assert!(outs.contains(&WaOut::Failed("meta_accept_failed".into())));
}

#[test]
fn an_inbound_call_ended_by_meta_sends_nothing_more_and_one_ended_by_us_is_declined() {
    let mut leg = WhatsAppLeg::new(inbound(), Face::Caller, "call-6", "t");
    leg.on_sip(response_to_caller(180));
    let outs = leg.on_meta(WaEvent::Terminated {
        cause: "meta_failed_131".into(),
    });
    assert_eq!(
        outs,
        vec![WaOut::Changed(
            LegState::Ended,
            Some("meta_failed_131".into())
        )]
    );
    assert!(leg.hangup().is_empty());

    let mut leg = WhatsAppLeg::new(inbound(), Face::Caller, "call-7", "t");
    assert_eq!(graph(&leg.hangup()), vec!["reject"]);
    assert!(leg.hangup().is_empty());
    // A bridge ready after the leg ended is not let begin.
    assert!(leg.bridge_ready(Bytes::new()).is_empty());
}

#[test]
fn an_echo_answers_at_once() {
    let mut leg = WhatsAppLeg::new(inbound(), Face::Echo, "call-8", "t");
    let outs = leg.start(Instant::now());
    assert_eq!(graph(&outs), vec!["pre_accept"]);
    let outs = leg.graph_done(&awaited(&outs).expect("pre_accept"), true);
    assert_eq!(graph(&outs), vec!["accept"]);
    let outs = leg.graph_done(&awaited(&outs).expect("accept"), true);
    assert_eq!(outs, vec![WaOut::Changed(LegState::Answered, None)]);
}

#[test]
fn a_callback_calls_the_business_once_the_customer_answers() {
    let t0 = Instant::now();
    let mut leg = WhatsAppLeg::new(outbound(), Face::Caller, "call-9", "t");
    let outs = leg.start(t0);
    match &outs[..] {
        [WaOut::Dial(CallAction::Connect {
            to,
            biz_opaque_callback_data,
            ..
        })] => {
            assert_eq!(to, "4915112345678");
            assert_eq!(biz_opaque_callback_data.as_deref(), Some("call-9"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        leg.poll_timeout(),
        Some(t0 + Duration::from_secs(60) + CONNECT_ALLOWANCE)
    );
    // The bridge is ready before the customer answers: it waits.
    assert!(leg.bridge_ready(Bytes::new()).is_empty());
    assert_eq!(
        leg.on_meta(WaEvent::Connected(Ok("wacid.12".into()))),
        vec![WaOut::WaCallId("wacid.12".into())]
    );
    assert_eq!(
        leg.on_meta(WaEvent::Answer("v=0 meta".into())),
        vec![WaOut::WebRtcAnswer("v=0 meta".into())]
    );
    assert_eq!(
        leg.on_meta(WaEvent::Ringing),
        vec![WaOut::Changed(LegState::Ringing, None)]
    );
    assert_eq!(
        leg.on_meta(WaEvent::Accepted),
        vec![WaOut::Changed(LegState::Answered, None), WaOut::Begin]
    );
    assert_eq!(leg.poll_timeout(), None);
    // The agent rings and answers: nothing more toward Meta; the answer is acknowledged.
    assert!(graph(&leg.on_sip(response_to_caller(180))).is_empty());
    let outs = leg.on_sip(response_to_caller(200));
    assert!(graph(&outs).is_empty());
    assert!(outs
        .iter()
        .any(|o| matches!(o, WaOut::Bridge(CoreEvent::Ack { .. }))));
    assert_eq!(leg.hangup(), vec![terminate("wacid.12")]);
}

#[test]
fn a_callback_customer_who_declines_lets_it_ring_out_or_is_refused_ends_the_leg_with_why() {
    let declined = {
        let mut leg = WhatsAppLeg::new(outbound(), Face::Caller, "call-10", "t");
        leg.start(Instant::now());
        leg.on_meta(WaEvent::Connected(Ok("wacid.13".into())));
        leg.on_meta(WaEvent::Rejected)
    };
    assert_eq!(
        declined,
        vec![WaOut::Changed(LegState::Ended, Some("declined".into()))]
    );
    // Meta's terminate of a call never answered: no answer, unless Meta failed it.
    for (cause, heard) in [
        ("normal_clearing", "no_answer"),
        ("meta_failed_5", "meta_failed_5"),
    ] {
        let mut leg = WhatsAppLeg::new(outbound(), Face::Caller, "call-11", "t");
        leg.start(Instant::now());
        let outs = leg.on_meta(WaEvent::Terminated {
            cause: cause.into(),
        });
        assert_eq!(
            outs,
            vec![WaOut::Changed(LegState::Ended, Some(heard.into()))]
        );
    }
    // The customer's time runs out: Meta's call is ended and so is the leg.
    let t0 = Instant::now();
    let mut leg = WhatsAppLeg::new(outbound(), Face::Caller, "call-12", "t");
    leg.start(t0);
    leg.on_meta(WaEvent::Connected(Ok("wacid.14".into())));
    assert!(leg.handle_timeout(t0 + Duration::from_secs(1)).is_empty());
    let at = leg.poll_timeout().expect("deadline");
    assert_eq!(
        leg.handle_timeout(at),
        vec![
            terminate("wacid.14"),
            WaOut::Changed(LegState::Ended, Some("no_answer".into()))
        ]
    );
    // Meta refuses to place it: the call ends with Meta's status.
    let mut leg = WhatsAppLeg::new(outbound(), Face::Caller, "call-13", "t");
    leg.start(Instant::now());
    assert_eq!(
        leg.on_meta(WaEvent::Connected(Err((403, "Forbidden".into())))),
        vec![WaOut::EndCall("whatsapp_refused_403".into())]
    );
    assert!(leg.hangup().is_empty());
}

/// A response the bridge relays to its caller for "our" INVITE.
fn response_to_caller(code: u16) -> SipCommand {
    let invite = MessageBuilder::request(Method::Invite, "sip:15551112222@whatsapp.invalid")
        .header(
            HeaderName::Via,
            "SIP/2.0/TLS whatsapp.invalid;branch=z9hG4bK1w",
        )
        .header(
            HeaderName::From,
            "<sip:+4915112345678@whatsapp.invalid>;tag=1w",
        )
        .header(HeaderName::To, "<sip:15551112222@whatsapp.invalid>")
        .header(HeaderName::CallId, "wa-1@waswitch")
        .header(HeaderName::CSeq, "1 INVITE")
        .build();
    let response = MessageBuilder::response_to(&invite, code, "x", Some("b1")).build();
    SipCommand::Respond {
        server: ServerId::detached(0),
        response,
    }
}
