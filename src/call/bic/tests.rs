//! The WhatsApp callee's SIP, driven by hand: what the bridge sends leg B and what Meta
//! says, in the orders they can come.

use super::*;

fn invite(body: &str) -> SipMessage {
    MessageBuilder::request(Method::Invite, "sip:4915112345678@whatsapp.invalid")
        .header(
            HeaderName::Via,
            "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKb1",
        )
        .header(HeaderName::From, "<sip:15551112222@pbx.invalid>;tag=b1")
        .header(HeaderName::To, "<sip:4915112345678@whatsapp.invalid>")
        .header(HeaderName::CallId, "b-leg@waswitch")
        .header(HeaderName::CSeq, "1 INVITE")
        .header(HeaderName::Contact, "<sip:waswitch@127.0.0.1:5060>")
        .body("application/sdp", body.to_string())
        .build()
}

const PBX_OFFER: &str =
    "v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
     m=audio 40000 RTP/AVP 18 8 0 101\r\na=rtpmap:18 G729/8000\r\na=rtpmap:8 PCMA/8000\r\n\
     a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";

fn request(invite: SipMessage) -> SipCommand {
    SipCommand::Request {
        request: invite,
        to: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
    }
}

/// The statuses of the responses among `outs`.
fn statuses(outs: &[CalleeOut]) -> Vec<u16> {
    outs.iter()
        .filter_map(|o| match o {
            CalleeOut::Bridge(CoreEvent::Response(_, r)) => r.status(),
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
    let mut c = WhatsAppCallee::new("watag");
    assert_eq!(
        c.on_command(request(invite(PBX_OFFER))),
        vec![CalleeOut::Connect]
    );
    // The bridge reports the PBX's media before any codec is chosen: nothing yet.
    assert!(c.pbx_media(pbx()).is_empty());
    // A status before the connect is answered changes nothing here (the registry holds
    // webhooks that overtake the Graph API's answer).
    assert!(c.on_event(WaEvent::Ringing).is_empty());
    let outs = c.on_event(WaEvent::Connected(Ok("wacid.1".into())));
    assert_eq!(outs[0], CalleeOut::WaCallId("wacid.1".into()));
    assert_eq!(statuses(&outs), vec![100]);
    assert_eq!(
        c.on_event(WaEvent::Answer("v=0\r\n".into())),
        vec![CalleeOut::Answer("v=0\r\n".into())]
    );
    assert_eq!(statuses(&c.on_event(WaEvent::Ringing)), vec![180]);
    let outs = c.on_event(WaEvent::Accepted);
    assert_eq!(statuses(&outs), vec![200]);
    // PCMA: G.729 is not spoken here; the PBX's media goes to the plane with it.
    let media = outs
        .iter()
        .find_map(|o| match o {
            CalleeOut::PbxMedia(r) => Some(*r),
            _ => None,
        })
        .expect("the PBX's media");
    assert_eq!(media.codec, Some(Codec::Pcma));
    assert_eq!(media.codec_pt, Some(8));
    let answer = outs
        .iter()
        .find_map(|o| match o {
            CalleeOut::Bridge(CoreEvent::Response(_, r)) if r.status() == Some(200) => {
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
    assert!(matches!(&moved[..], [CalleeOut::PbxMedia(r)] if r.codec == Some(Codec::Pcma)));
    // The customer hangs up: a BYE from leg B in the bridge's dialog.
    let outs = c.on_event(WaEvent::Terminated {
        cause: "normal_clearing".into(),
    });
    match outs.as_slice() {
        [CalleeOut::Bridge(CoreEvent::Request { request, .. })] => {
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
    let mut c = WhatsAppCallee::new("t");
    c.on_command(request(invite(PBX_OFFER)));
    c.on_event(WaEvent::Connected(Ok("wacid.2".into())));
    assert_eq!(statuses(&c.on_event(WaEvent::Rejected)), vec![603]);
    // The terminate that follows a decline finds the call answered already.
    assert!(c
        .on_event(WaEvent::Terminated {
            cause: "normal_clearing".into()
        })
        .is_empty());

    let mut c = WhatsAppCallee::new("t");
    c.on_command(request(invite(PBX_OFFER)));
    c.on_event(WaEvent::Connected(Ok("wacid.3".into())));
    let outs = c.on_event(WaEvent::Terminated {
        cause: "normal_clearing".into(),
    });
    assert_eq!(statuses(&outs), vec![480]);
}

#[test]
fn meta_refusing_the_connect_answers_the_invite_with_its_status() {
    let mut c = WhatsAppCallee::new("t");
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
    let mut c = WhatsAppCallee::new("t");
    c.on_command(request(invite(PBX_OFFER)));
    let outs = c.on_command(SipCommand::Cancel {
        call_id: Bytes::from_static(b"b-leg@waswitch"),
    });
    assert_eq!(statuses(&outs), vec![487]);
    let outs = c.on_event(WaEvent::Connected(Ok("wacid.4".into())));
    assert!(
        outs.contains(&CalleeOut::Terminate("wacid.4".into())),
        "{outs:?}"
    );
    assert!(statuses(&outs).is_empty(), "{outs:?}");
}

#[test]
fn a_cancel_while_ringing_terminates_at_once_and_a_pbx_without_a_spoken_codec_gets_488() {
    let mut c = WhatsAppCallee::new("t");
    c.on_command(request(invite(PBX_OFFER)));
    c.on_event(WaEvent::Connected(Ok("wacid.5".into())));
    let outs = c.on_command(SipCommand::Cancel {
        call_id: Bytes::from_static(b"b-leg@waswitch"),
    });
    assert_eq!(statuses(&outs), vec![487]);
    assert!(outs.contains(&CalleeOut::Terminate("wacid.5".into())));

    let g729 = "v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                m=audio 40000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
    let mut c = WhatsAppCallee::new("t");
    c.on_command(request(invite(g729)));
    c.on_event(WaEvent::Connected(Ok("wacid.6".into())));
    let outs = c.on_event(WaEvent::Accepted);
    assert_eq!(statuses(&outs), vec![488]);
    assert!(outs.contains(&CalleeOut::Terminate("wacid.6".into())));
}

#[test]
fn refusals_carry_their_reason() {
    let r = refusal(&invite(PBX_OFFER), Blocked::NoPermission, "x");
    assert_eq!(r.status(), Some(403));
    let reason =
        String::from_utf8_lossy(&r.header(&HeaderName::Reason).expect("Reason").value).into_owned();
    assert_eq!(reason, "SIP;cause=403;text=\"call permission required\"");
    for b in Blocked::ALL {
        assert_eq!(Blocked::from_name(b.as_str()), Some(b));
    }
}

#[test]
fn an_offer_is_usable_only_with_a_codec_carried_to_whatsapp() {
    assert!(offer_usable(PBX_OFFER.as_bytes()));
    assert!(!offer_usable(b""));
    let g729 = "v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                m=audio 40000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
    assert!(!offer_usable(g729.as_bytes()));
}

#[test]
fn metas_side_is_ended_once_whichever_ends_first() {
    // The call ends before Meta's id is known: the placing task ends it.
    let side = MetaSide::default();
    assert_eq!(side.end(), None);
    assert!(side.placed("wacid.7"));
    assert_eq!(side.end(), None);
    // Placed first: the switch ends it, once.
    let side = MetaSide::default();
    assert!(!side.placed("wacid.8"));
    assert_eq!(side.end(), Some("wacid.8".to_string()));
    assert_eq!(side.end(), None);
    // Meta ended it: nothing to send.
    let side = MetaSide::default();
    assert!(!side.placed("wacid.9"));
    side.over();
    assert_eq!(side.end(), None);
}

#[test]
fn in_dialog_offers_keep_the_codec_mirror_hold_and_refuse_what_cannot_be_answered() {
    let mut c = WhatsAppCallee::new("t");
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
            CalleeOut::Bridge(CoreEvent::Response(_, r)) if r.status() == Some(200) => {
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
    assert!(outs.iter().any(|o| matches!(o,
        CalleeOut::Bridge(CoreEvent::Response(_, r)) if r.status() == Some(200) && !r.body.is_empty())));
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
