use super::*;

/// Meta's INVITE of a customer's call, in the shape of Meta's SIP samples.
fn meta_invite() -> SipMessage {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 3480 RTP/SAVP 111 126\r\na=rtpmap:111 opus/48000/2\r\n\
               a=rtpmap:126 telephone-event/8000\r\n\
               a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
    let text = format!(
        "INVITE sip:+15551112222;tgrp=wacall;trunk-context=byoc.example.com@sip.example.com;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.9:5061;branch=z9hG4bKmeta1\r\n\
         Record-Route: <sip:wa.meta.vc;transport=tls;lr>\r\n\
         Record-Route: <sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>\r\n\
         From: \"5511987654321\" <sip:+5511987654321@wa.meta.vc>;tag=meta-tag\r\n\
         To: <sip:+15551112222@sip.example.com>\r\n\
         Contact: <sip:+5511987654321@wa.meta.vc;transport=tls;ob>;isfocus\r\n\
         Call-ID: outgoing:wacid.HBgLMTU1NTExMTIyMjIVAgARGBI\r\n\
         CSeq: 1 INVITE\r\n\
         X-FB-External-Domain: wa.meta.vc\r\n\
         x-wa-meta-wacid: wacid.HBgLMTU1NTExMTIyMjIVAgARGBI\r\n\
         Max-Forwards: 70\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    crate::sip::msg::parse_datagram(Bytes::from(text)).expect("Meta's INVITE parses")
}

fn call() -> MetaSipCall {
    MetaSipCall {
        server: ServerId::detached(1),
        invite: meta_invite(),
        peer: "127.0.0.9:40123".parse().expect("address"),
        business: "15551112222".into(),
        contact: "sip:15551112222@sip.example.com:5061;transport=tls".into(),
    }
}

fn accept() -> CallAction {
    CallAction::Accept {
        call_id: "wacid".into(),
        sdp: "v=0\r\n".into(),
        biz_opaque_callback_data: None,
    }
}

fn values(msg: &SipMessage, name: HeaderName) -> Vec<String> {
    msg.headers_named(&name)
        .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        .collect()
}

#[test]
fn meta_names_the_call_by_its_wacid() {
    let call = call();
    assert_eq!(call.wa_call_id(), "wacid.HBgLMTU1NTExMTIyMjIVAgARGBI");
    assert_eq!(
        &call.call_id()[..],
        b"outgoing:wacid.HBgLMTU1NTExMTIyMjIVAgARGBI"
    );
}

#[test]
fn accept_is_a_200_keeping_metas_record_route_unchanged_and_bye_follows_it() {
    let mut leg = MetaSipInbound::new(call(), "ourtag");
    let pre = CallAction::PreAccept {
        call_id: "wacid".into(),
        sdp: "v=0\r\n".into(),
    };
    assert!(
        matches!(leg.action(&pre), Ok(None)),
        "Meta wants no provisional response"
    );
    let Ok(Some(SipCommand::Respond { server, response })) = leg.action(&accept()) else {
        panic!("accept answers the INVITE");
    };
    assert_eq!(server, ServerId::detached(1));
    assert_eq!(response.status(), Some(200));
    assert_eq!(
        values(&response, HeaderName::RecordRoute),
        [
            "<sip:wa.meta.vc;transport=tls;lr>",
            "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>"
        ]
    );
    assert!(values(&response, HeaderName::To)[0].contains("tag=ourtag"));
    assert_eq!(
        values(&response, HeaderName::Contact),
        ["<sip:15551112222@sip.example.com:5061;transport=tls>"]
    );
    assert!(leg.action(&accept()).is_err(), "answered once");

    let terminate = CallAction::Terminate {
        call_id: "wacid".into(),
    };
    let Ok(Some(SipCommand::Request { request, to })) = leg.action(&terminate) else {
        panic!("terminate is a BYE");
    };
    assert_eq!(to, "127.0.0.9:40123".parse().expect("address"));
    assert_eq!(request.method(), Some(&Method::Bye));
    assert_eq!(
        crate::sip::dialog::request_uri(&request).as_deref(),
        Some("sip:+5511987654321@wa.meta.vc;transport=tls;ob")
    );
    assert_eq!(
        values(&request, HeaderName::Route),
        [
            "<sip:wa.meta.vc;transport=tls;lr>",
            "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>"
        ]
    );
    assert!(values(&request, HeaderName::From)[0].contains("tag=ourtag"));
    assert!(values(&request, HeaderName::To)[0].contains("tag=meta-tag"));
    assert!(matches!(leg.action(&terminate), Ok(None)), "one BYE");
}

#[test]
fn a_reject_declines_and_nothing_follows() {
    let mut leg = MetaSipInbound::new(call(), "t");
    let reject = CallAction::Reject {
        call_id: "wacid".into(),
    };
    let Ok(Some(SipCommand::Respond { response, .. })) = leg.action(&reject) else {
        panic!("reject answers the INVITE");
    };
    assert_eq!(response.status(), Some(603));
    assert!(leg.action(&accept()).is_err());
    let terminate = CallAction::Terminate {
        call_id: "wacid".into(),
    };
    assert!(matches!(leg.action(&terminate), Ok(None)));
}

fn bye_from_meta() -> SipMessage {
    let text = "BYE sip:15551112222@sip.example.com:5061;transport=tls SIP/2.0\r\n\
                Via: SIP/2.0/TLS 127.0.0.9:5061;branch=z9hG4bKmeta2\r\n\
                From: <sip:+5511987654321@wa.meta.vc>;tag=meta-tag\r\n\
                To: <sip:+15551112222@sip.example.com>;tag=ourtag\r\n\
                Call-ID: outgoing:wacid.HBgLMTU1NTExMTIyMjIVAgARGBI\r\n\
                CSeq: 2 BYE\r\n\
                x-wa-meta-call-duration: 12\r\n\
                Content-Length: 0\r\n\r\n";
    crate::sip::msg::parse_datagram(Bytes::from(text)).expect("BYE parses")
}

#[test]
fn metas_bye_is_its_terminate_and_is_answered() {
    let mut leg = MetaSipInbound::new(call(), "ourtag");
    let _ = leg.action(&accept());
    let (reply, event) = leg.on_event(CoreEvent::Request {
        server: ServerId::detached(2),
        request: bye_from_meta(),
        from: "127.0.0.9:40123".parse().expect("address"),
    });
    let Some(SipCommand::Respond { response, .. }) = reply else {
        panic!("the BYE is answered");
    };
    assert_eq!(response.status(), Some(200));
    assert_eq!(
        event,
        Some(WaEvent::Terminated {
            cause: "normal_clearing".into()
        })
    );
    let terminate = CallAction::Terminate {
        call_id: "wacid".into(),
    };
    assert!(
        matches!(leg.action(&terminate), Ok(None)),
        "no BYE after Meta's"
    );
}

#[test]
fn metas_cancel_gets_487_and_ends_the_leg_once() {
    let mut leg = MetaSipInbound::new(call(), "ourtag");
    let cancelled = || CoreEvent::Cancelled {
        server: ServerId::detached(1),
        call_id: Bytes::from_static(b"outgoing:wacid.HBgLMTU1NTExMTIyMjIVAgARGBI"),
    };
    let (reply, event) = leg.on_event(cancelled());
    let Some(SipCommand::Respond { response, .. }) = reply else {
        panic!("the INVITE is answered");
    };
    assert_eq!(response.status(), Some(487));
    assert!(matches!(event, Some(WaEvent::Terminated { .. })));
    assert!(matches!(leg.on_event(cancelled()), (None, None)));
    assert!(
        leg.action(&accept()).is_err(),
        "a cancelled call is not answered"
    );
}

#[test]
fn metas_other_requests_are_answered_without_touching_the_call() {
    let mut leg = MetaSipInbound::new(call(), "ourtag");
    let _ = leg.action(&accept());
    let mut reinvite = meta_invite();
    if let crate::sip::msg::StartLine::Request { method, .. } = &mut reinvite.start {
        *method = Method::Invite;
    }
    let (reply, event) = leg.on_event(CoreEvent::Request {
        server: ServerId::detached(3),
        request: reinvite,
        from: "127.0.0.9:40123".parse().expect("address"),
    });
    let Some(SipCommand::Respond { response, .. }) = reply else {
        panic!("answered");
    };
    assert_eq!(response.status(), Some(488));
    assert_eq!(event, None);
}

#[test]
fn no_debug_output_shows_an_srtp_key() {
    let call = call();
    let shown = format!("{call:?} {:?}", MetaSipInbound::new(call.clone(), "t"));
    assert!(!shown.contains("inline:"), "{shown}");
    let way = crate::call::whatsapp::leg::Way::Inbound {
        wa_call_id: "wacid".into(),
        answer: "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2VjcmV0".into(),
    };
    assert!(!format!("{way:?}").contains("inline:"));
}

// ---- the switch calling a customer through Meta's proxy ---------------------------------

fn dialer() -> MetaSipDialer {
    // A handle that goes nowhere: the sans-IO call never sends.
    let (handle, _rx) = crate::sip::transport::SipHandle::detached_for_tests();
    MetaSipDialer {
        origin: handle,
        table: std::sync::Arc::default(),
        proxy: "127.0.0.9:5061".into(),
        hostname: "sip.example.com".into(),
        business: "15551112222".into(),
        password: crate::config::Secret::new("meta-password"),
        sdes: true,
        contact: "sip:15551112222@sip.example.com:5061;transport=tls".into(),
    }
}

fn outbound() -> (MetaSipOutbound, SipMessage) {
    let mut call = MetaSipOutbound::new(
        &dialer(),
        "127.0.0.9:5061".parse().expect("address"),
        "c1@sip.example.com",
        "ourtag",
    );
    let SipCommand::Request { request, to } = call.invite("4915100000001", "v=0\r\n") else {
        panic!("an INVITE");
    };
    assert_eq!(to, "127.0.0.9:5061".parse().expect("address"));
    (call, request)
}

/// Meta's response to `request`, with `extra` headers.
fn response(request: &SipMessage, code: u16, extra: &[(HeaderName, &str)]) -> CoreEvent {
    let mut b = MessageBuilder::response_to(request, code, "Meta", Some("metatag"));
    for (name, value) in extra {
        b = b.header(name.clone(), value.to_string());
    }
    CoreEvent::Response(crate::sip::core::RequestId::detached(1), b.build())
}

#[test]
fn the_invite_names_the_customer_at_meta_and_comes_from_our_hostname() {
    let (_, invite) = outbound();
    assert_eq!(
        crate::sip::dialog::request_uri(&invite).as_deref(),
        Some("sip:+4915100000001@wa.meta.vc;transport=tls")
    );
    let from = values(&invite, HeaderName::From).remove(0);
    assert!(
        from.starts_with("<sip:+15551112222@sip.example.com>;tag=ourtag"),
        "{from}"
    );
}

fn answers_the_challenge(algorithm: crate::sip::auth::Algorithm) {
    let (mut call, invite) = outbound();
    let nonces = crate::sip::auth::NonceIssuer::new("wa.meta.vc", "meta-secret", 300);
    let now = 1_800_000_000;
    let challenge = nonces.challenge(now, algorithm, false);
    let (send, events) = call.on_event(response(
        &invite,
        407,
        &[(HeaderName::ProxyAuthenticate, &challenge)],
    ));
    assert!(events.is_empty(), "{events:?}");
    let [SipCommand::Request { request, .. }] = &send[..] else {
        panic!("the INVITE again: {send:?}");
    };
    assert_eq!(values(request, HeaderName::CSeq), ["2 INVITE"]);
    let credentials = request
        .header(&HeaderName::ProxyAuthorization)
        .expect("credentials");
    let user = crate::sip::auth::verify(&credentials.value, "INVITE", &nonces, now, |u| {
        (u == "15551112222").then(|| "meta-password".to_string())
    });
    assert_eq!(user.as_deref(), Ok("15551112222"));
    // A second challenge: Meta refused the credentials.
    let (send, events) = call.on_event(response(
        request,
        407,
        &[(HeaderName::ProxyAuthenticate, &challenge)],
    ));
    assert!(send.is_empty());
    assert!(
        matches!(&events[..], [WaEvent::Connected(Err((403, _)))]),
        "{events:?}"
    );
}

#[test]
fn metas_md5_challenge_is_answered_with_the_numbers_password() {
    answers_the_challenge(crate::sip::auth::Algorithm::Md5);
}

#[test]
fn metas_sha256_challenge_is_answered_with_the_numbers_password() {
    answers_the_challenge(crate::sip::auth::Algorithm::Sha256);
}

#[test]
fn ringing_then_the_answer_are_metas_webhooks_and_the_bye_follows_its_record_route() {
    let (mut call, invite) = outbound();
    let (send, events) = call.on_event(response(&invite, 180, &[]));
    assert!(send.is_empty());
    assert_eq!(
        events,
        [
            WaEvent::Connected(Ok("c1@sip.example.com".into())),
            WaEvent::Ringing
        ]
    );
    let ok = response(
        &invite,
        200,
        &[
            (HeaderName::RecordRoute, META_RR_BIC[0]),
            (HeaderName::RecordRoute, META_RR_BIC[1]),
            (
                HeaderName::Contact,
                "<sip:+4915100000001@wa.meta.vc;transport=tls;ob>",
            ),
            (
                HeaderName::Other(Bytes::from_static(b"x-wa-meta-wacid")),
                "wacid.XYZ",
            ),
        ],
    );
    let (send, events) = call.on_event(ok.clone());
    let [SipCommand::Ack { request: ack, .. }] = &send[..] else {
        panic!("the ACK: {send:?}");
    };
    assert_eq!(values(ack, HeaderName::CSeq), ["1 ACK"]);
    assert_eq!(
        values(ack, HeaderName::Route),
        [
            "<sip:wa.meta.vc;transport=tls;lr>",
            "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>"
        ]
    );
    assert!(
        matches!(&events[..], [WaEvent::Answer(_), WaEvent::Accepted]),
        "{events:?}"
    );
    // A retransmitted 200 is acknowledged again, and nothing more.
    let (send, events) = call.on_event(ok);
    assert!(matches!(&send[..], [SipCommand::Ack { .. }]));
    assert!(events.is_empty());
    let Some(SipCommand::Request { request: bye, .. }) = call.end() else {
        panic!("a BYE");
    };
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(values(&bye, HeaderName::Route).len(), 2);
    assert!(call.end().is_none(), "one BYE");
}

/// Meta's Record-Route on a 200 to our INVITE, as its proxies add them.
const META_RR_BIC: [&str; 2] = [
    "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>",
    "<sip:wa.meta.vc;transport=tls;lr>",
];

#[test]
fn metas_refusals_say_what_its_webhooks_would() {
    let (mut call, invite) = outbound();
    let (_, events) = call.on_event(response(&invite, 403, &[]));
    assert!(
        matches!(&events[..], [WaEvent::Connected(Err((403, _)))]),
        "refused before anything was placed: {events:?}"
    );
    let (mut call, invite) = outbound();
    let _ = call.on_event(response(&invite, 183, &[]));
    let (_, events) = call.on_event(response(&invite, 603, &[]));
    assert_eq!(events, [WaEvent::Rejected]);
    let (mut call, invite) = outbound();
    let (_, events) = call.on_event(response(&invite, 480, &[]));
    assert_eq!(
        events,
        [
            WaEvent::Connected(Ok("c1@sip.example.com".into())),
            WaEvent::Terminated {
                cause: "no_answer".into()
            }
        ]
    );
}

#[test]
fn ending_before_the_answer_cancels_and_an_answer_crossing_it_is_hung_up() {
    let (mut call, invite) = outbound();
    assert!(
        matches!(call.end(), Some(SipCommand::Abandon { .. })),
        "nothing to cancel before a provisional response"
    );
    let (mut call, invite2) = outbound();
    let _ = call.on_event(response(&invite2, 100, &[]));
    assert!(matches!(call.end(), Some(SipCommand::Cancel { .. })));
    let (send, events) = call.on_event(response(
        &invite2,
        200,
        &[(HeaderName::Contact, "<sip:+4915100000001@wa.meta.vc>")],
    ));
    assert!(
        matches!(
            &send[..],
            [SipCommand::Ack { .. }, SipCommand::Request { .. }]
        ),
        "ACK and BYE: {send:?}"
    );
    assert!(events.is_empty(), "{events:?}");
    drop(invite);
}
