use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/meta/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn only_event(name: &str) -> MetaEvent {
    let parsed = parse(&fixture(name)).expect("a webhook");
    assert!(parsed.invalid.is_empty(), "{name}: {:?}", parsed.invalid);
    assert_eq!(parsed.events.len(), 1, "{name}: {:?}", parsed.events);
    parsed.events.into_iter().next().expect("one event")
}

#[test]
fn metas_real_user_initiated_connect_carries_its_offer_and_caller() {
    let MetaEvent::Connect(c) =
        only_event("real-capture_calls-connect_user-initiated_sdp-offer_2025-10-17.json")
    else {
        panic!("not a connect");
    };
    assert!(c.call_id.starts_with("wacid.HBgMOTE3MzU4NTgwMTgw"));
    assert_eq!(
        (c.from.as_str(), c.to.as_str()),
        ("917358580180", "15551441906")
    );
    assert_eq!(c.direction, Some(CallDirection::UserInitiated));
    assert_eq!(c.sdp_type, SdpType::Offer);
    assert_eq!(c.timestamp, Some(1_760_681_506));
    assert_eq!(c.business.phone_number_id, "518638374672395");
    assert_eq!(c.business.display_number, "15551441906");
    assert_eq!(
        c.contact.as_ref().map(|c| c.wa_id.as_str()),
        Some("917358580180")
    );
    // Meta's real offer: ICE-lite, Opus 111 and telephone-event 126, CRLF line ends.
    let sdp = crate::sdp::Sdp::parse(c.sdp.as_bytes()).expect("Meta's SDP parses");
    let audio = sdp.audio().expect("audio").expect("an audio stream");
    assert_eq!(
        audio.codec().map(|f| (f.pt, f.name.as_str())),
        Some((111, "opus"))
    );
    assert_eq!(audio.telephone_event(), Some(126));
    assert!(c.sdp.contains("a=ice-lite\r\n"));
}

#[test]
fn metas_real_failed_terminate_reports_times_and_one_error_from_both_places() {
    let MetaEvent::Terminate(t) =
        only_event("real-capture_calls-terminate_failed-138021_2025-10-17.json")
    else {
        panic!("not a terminate");
    };
    assert_eq!(t.status, TerminateStatus::Failed);
    assert_eq!(
        (t.start_time, t.end_time, t.duration_secs),
        (Some(1_760_681_513), Some(1_760_681_533), Some(20))
    );
    // The same error appears inside the call and beside it: reported once.
    assert_eq!(t.errors.len(), 1, "{:?}", t.errors);
    assert_eq!(t.errors[0].code, Some(138_021));
    assert!(t.errors[0].message.contains("not receiving any media"));
    assert!(t.errors[0].details.is_some());
}

#[test]
fn sdk_samples_of_every_event_type() {
    let MetaEvent::Connect(uic) = only_event("pywa_calls-connect_user-initiated_sdp-offer.json")
    else {
        panic!("not a connect");
    };
    assert_eq!(
        (uic.sdp_type, uic.direction),
        (SdpType::Offer, Some(CallDirection::UserInitiated))
    );
    assert_eq!(
        uic.contact.and_then(|c| c.user_id).as_deref(),
        Some("US.13491208655302741918")
    );

    let MetaEvent::Connect(bic) =
        only_event("pywa_calls-connect_business-initiated_sdp-answer.json")
    else {
        panic!("not a connect");
    };
    assert_eq!(
        (bic.sdp_type, bic.direction),
        (SdpType::Answer, Some(CallDirection::BusinessInitiated))
    );

    let MetaEvent::Status(s) = only_event("pywa_calls-status_ringing.json") else {
        panic!("not a status");
    };
    assert_eq!(s.status, CallStatusKind::Ringing);
    assert_eq!(s.recipient_id, "163155536021");
    assert_eq!(s.biz_opaque_callback_data.as_deref(), Some("random_string"));

    let MetaEvent::Terminate(t) = only_event("pywa_calls-terminate_completed-with-errors.json")
    else {
        panic!("not a terminate");
    };
    assert_eq!(t.status, TerminateStatus::Completed);
    assert_eq!(t.duration_secs, Some(120));
    assert_eq!(
        t.errors[0].code,
        Some(12_455),
        "errors beside the call are read"
    );

    let MetaEvent::PermissionReply(yes) =
        only_event("pywa_messages-call-permission-reply_accept.json")
    else {
        panic!("not a permission reply");
    };
    assert_eq!(yes.response, PermissionResponse::Accept);
    assert_eq!(yes.expires_at, Some(1_753_186_982), "an integer expiry");
    assert_eq!(yes.source, ResponseSource::UserAction);
    assert_eq!(yes.context_id.as_deref(), Some("wamid.y=="));
    assert!(!yes.is_permanent);

    let MetaEvent::PermissionReply(no) =
        only_event("pywa_messages-call-permission-reply_reject.json")
    else {
        panic!("not a permission reply");
    };
    assert_eq!(
        (no.response, no.expires_at),
        (PermissionResponse::Reject, None)
    );
}

#[test]
fn string_expiry_batches_and_unknown_things_are_tolerated_and_reported() {
    let body = br#"{"object":"whatsapp_business_account","new_top":1,"entry":[
      {"id":"1","changes":[
        {"field":"calls","value":{"metadata":{"phone_number_id":"9","display_phone_number":"15550001"},
          "calls":[
            {"id":"wacid.A","from":"4477","to":"15550001","event":"connect","timestamp":"10",
             "session":{"sdp_type":"offer","sdp":"v=0\r\n"},"brand_new_field":true},
            {"id":"wacid.A","event":"call_summary_available","timestamp":"11"},
            {"event":"terminate"},
            {"id":"wacid.B","event":"connect","session":{"sdp_type":"offer"}}
          ],
          "statuses":[{"id":"wacid.A","type":"call","status":"SOMETHING_NEW"},
                      {"id":"wamid.Z","type":"message","status":"read"}]}},
        {"field":"account_update","value":{"event":"ACCOUNT_VIOLATION"}},
        {"field":"messages","value":{"messages":[
          {"from":"4477","id":"wamid.P","type":"interactive","timestamp":"12","interactive":{
            "type":"call_permission_reply","call_permission_reply":{
              "response":"accept","is_permanent":false,"expiration_timestamp":"1768550400",
              "response_source":"automatic"}}},
          {"from":"4477","id":"wamid.T","type":"text","text":{"body":"hi"}}]}}
      ]}]}"#;
    let p = parse(body).expect("a webhook");
    let kinds: Vec<&str> = p.events.iter().map(MetaEvent::kind).collect();
    assert_eq!(kinds, ["connect", "status", "permission_reply"]);
    let MetaEvent::Status(s) = &p.events[1] else {
        panic!("status");
    };
    assert_eq!(s.status, CallStatusKind::Other("SOMETHING_NEW".into()));
    let MetaEvent::PermissionReply(r) = &p.events[2] else {
        panic!("reply");
    };
    assert_eq!(
        (r.expires_at, &r.source),
        (Some(1_768_550_400), &ResponseSource::Automatic)
    );
    assert_eq!(
        p.unknown,
        [
            ("field", "new_top".to_string()),
            ("field", "call.brand_new_field".to_string()),
            ("event", "call_summary_available".to_string()),
            ("status_type", "message".to_string()),
            ("change_field", "account_update".to_string()),
        ]
    );
    assert_eq!(p.invalid.len(), 2, "{:?}", p.invalid);
}

#[test]
fn metas_recordings_and_transcripts_are_read_with_their_media() {
    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
        {"field":"calls","value":{"messaging_product":"whatsapp",
          "metadata":{"display_phone_number":"15550001","phone_number_id":"99"},
          "calls":[
            {"id":"wacid.R","from":"4477","to":"15550001","event":"call_recording_available",
             "timestamp":"20","call_recording":{"type":"audio","audio":{"id":"123",
             "sha256":"q83vEjRWeJA=","mime_type":"audio/ogg; codecs=opus",
             "url":"https://lookaside.example/123"}}},
            {"id":"wacid.R","from":"4477","to":"15550001",
             "event":"call_transcription_available","timestamp":"21",
             "call_transcript":{"type":"document","document":{"id":"124","sha256":"AA==",
             "url":"https://lookaside.example/124"}}},
            {"id":"wacid.S","event":"call_recording_available","timestamp":"22"}
          ]}}]}]}"#;
    let p = parse(body).expect("a webhook");
    let media: Vec<&CallMedia> = p
        .events
        .iter()
        .filter_map(|e| match e {
            MetaEvent::Media(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(media.len(), 2, "{:?}", p.events);
    assert_eq!(
        (
            media[0].call_id.as_str(),
            media[0].transcript,
            media[0].media_id.as_str()
        ),
        ("wacid.R", false, "123")
    );
    assert_eq!(media[0].url, "https://lookaside.example/123");
    assert_eq!(media[0].user, "4477");
    assert_eq!(media[0].business.display_number, "15550001");
    assert!(media[1].transcript);
    assert_eq!(
        media[1].mime_type, "application/json",
        "Meta's type when it gives none"
    );
    assert_eq!(p.events[0].kind(), "call_recording_available");
    assert_eq!(p.events[1].kind(), "call_transcription_available");
    // Redeliveries are told apart from the other media of the same call.
    assert_ne!(p.events[0].dedup_key(), p.events[1].dedup_key());
    // One without its media is reported, not guessed at.
    assert_eq!(p.invalid.len(), 1, "{:?}", p.invalid);
    assert!(p.invalid[0].contains("wacid.S"), "{:?}", p.invalid);
}

#[test]
fn bodies_that_are_not_webhooks_are_errors() {
    assert!(matches!(parse(b"{not json"), Err(PayloadError::Json(_))));
    assert_eq!(
        parse(b"[1,2]"),
        Err(PayloadError::Shape("not a JSON object"))
    );
    assert_eq!(
        parse(b"{\"object\":\"x\"}"),
        Err(PayloadError::Shape("no entry array"))
    );
    // Non-ASCII escaped as Meta signs it reads back as the same text.
    let p = parse(br#"{"entry":[{"changes":[{"field":"calls","value":{"contacts":[{"wa_id":"1","profile":{"name":"J\u00f6rg"}}],"calls":[{"id":"wacid.Q","event":"terminate","from":"1"}]}}]}]}"#)
        .expect("webhook");
    let MetaEvent::Terminate(t) = &p.events[0] else {
        panic!("terminate");
    };
    assert_eq!(
        t.contact.as_ref().and_then(|c| c.name.as_deref()),
        Some("Jörg")
    );
    assert_eq!(t.status, TerminateStatus::Unknown);
}

#[test]
fn dedup_recognises_redeliveries_within_its_window_and_stays_bounded() {
    let t0 = Instant::now();
    let mut d = Dedup::new(Duration::from_secs(60), 3);
    assert!(!d.seen("a", t0));
    d.remember("a".into(), t0);
    assert!(d.seen("a", t0 + Duration::from_secs(59)));
    assert!(
        !d.seen("a", t0 + Duration::from_secs(60)),
        "forgotten after the window"
    );
    for k in ["b", "c", "d", "e"] {
        d.remember(k.into(), t0 + Duration::from_secs(61));
    }
    assert_eq!(d.len(), 3);
    assert!(
        !d.seen("b", t0 + Duration::from_secs(61)),
        "the oldest made room"
    );
    assert!(d.seen("e", t0 + Duration::from_secs(61)));
    // Statuses of one call are different events; a second RINGING is the same one.
    let ringing = |status| {
        MetaEvent::Status(CallStatus {
            call_id: "wacid.X".into(),
            status,
            recipient_id: String::new(),
            timestamp: None,
            biz_opaque_callback_data: None,
            business: Business::default(),
        })
    };
    assert_ne!(
        ringing(CallStatusKind::Ringing).dedup_key(),
        ringing(CallStatusKind::Accepted).dedup_key()
    );
}
