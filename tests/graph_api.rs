//! The Graph API client against the sim's Graph API over loopback HTTP: call actions with
//! Meta's validation, typed errors, retries only where repeating is safe, time limits.

use std::time::Duration;

use waswitch::config::{MetaConfig, Secret};
use waswitch::meta::graph::{CallAction, GraphClient, GraphError};
use waswitch::sim::graph::{Fault, SimCallState, SimGraph};

const NUMBER: &str = "105615555715855";
const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
const ANSWER: &str = "v=0\r\no=- 7 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

async fn sim() -> (SimGraph, String) {
    let sim = SimGraph::new(Secret::new("sim-token"), vec![NUMBER.to_string()]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let router = sim.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (sim, url)
}

fn client(url: &str, token: &str, timeout_ms: u64) -> GraphClient {
    GraphClient::new(&MetaConfig {
        graph_url: url.to_string(),
        api_version: "v23.0".into(),
        access_token: Secret::new(token),
        app_secret: Secret::new("s"),
        verify_token: Secret::new("v"),
        request_timeout: Duration::from_millis(timeout_ms),
        max_attempts: 3,
        sip: None,
    })
    .expect("client")
}

#[tokio::test]
async fn a_user_call_is_pre_accepted_accepted_and_terminated() {
    let (sim, url) = sim().await;
    let graph = client(&url, "sim-token", 2000);
    let id = sim.place_user_call(NUMBER, "4477001", OFFER);
    let pre = CallAction::PreAccept {
        call_id: id.clone(),
        sdp: ANSWER.into(),
    };
    assert_eq!(graph.call_action(NUMBER, &pre).await, Ok(None));
    assert_eq!(
        sim.call(&id).map(|c| c.state),
        Some(SimCallState::PreAccepted(ANSWER.into()))
    );
    // Accept must carry the pre-accepted answer: another one is refused, as Meta does.
    let other = CallAction::Accept {
        call_id: id.clone(),
        sdp: OFFER.into(),
        biz_opaque_callback_data: None,
    };
    match graph.call_action(NUMBER, &other).await {
        Err(GraphError::Meta {
            status,
            code,
            details,
            fbtrace_id,
            ..
        }) => {
            assert_eq!((status, code), (400, 100));
            assert!(details.is_some_and(|d| d.contains("does not match")));
            assert!(fbtrace_id.is_some());
        }
        other => panic!("expected Meta's error, got {other:?}"),
    }
    let accept = CallAction::Accept {
        call_id: id.clone(),
        sdp: ANSWER.into(),
        biz_opaque_callback_data: Some("cdr-1".into()),
    };
    assert_eq!(graph.call_action(NUMBER, &accept).await, Ok(None));
    let end = CallAction::Terminate {
        call_id: id.clone(),
    };
    assert_eq!(graph.call_action(NUMBER, &end).await, Ok(None));
    assert_eq!(sim.call(&id).map(|c| c.state), Some(SimCallState::Ended));
    let actions: Vec<_> = sim
        .recorded()
        .iter()
        .map(|r| (r.action.clone().unwrap_or_default(), r.status))
        .collect();
    assert_eq!(
        actions,
        [
            ("pre_accept".into(), 200),
            ("accept".into(), 400),
            ("accept".into(), 200),
            ("terminate".into(), 200)
        ]
    );
    let recorded = sim.recorded();
    assert_eq!(recorded[2].body["session"]["sdp_type"], "answer");
    assert_eq!(recorded[2].body["biz_opaque_callback_data"], "cdr-1");
}

#[tokio::test]
async fn business_calls_need_a_permission_and_get_metas_call_id() {
    let (sim, url) = sim().await;
    let graph = client(&url, "sim-token", 2000);
    let connect = CallAction::Connect {
        to: "4477002".into(),
        sdp: OFFER.into(),
        biz_opaque_callback_data: None,
    };
    let refused = graph.call_action(NUMBER, &connect).await;
    assert_eq!(
        refused.as_ref().err().and_then(GraphError::code),
        Some(138_006)
    );
    assert!(!refused.err().is_some_and(|e| e.transient()));
    sim.grant(NUMBER, "4477002", None);
    let permission = graph
        .call_permission(NUMBER, "4477002")
        .await
        .expect("permission");
    assert_eq!(
        (permission.status.as_str(), permission.can_call),
        ("permanent", Some(true))
    );
    let id = graph
        .call_action(NUMBER, &connect)
        .await
        .expect("connect")
        .expect("a call id");
    assert!(id.starts_with("wacid."));
    // A second call to the same user while the first is up: Meta's duplicate-call error.
    let dup = graph.call_action(NUMBER, &connect).await;
    assert_eq!(dup.err().and_then(|e| e.code()), Some(138_003));
    let wamid = graph
        .send_permission_request(
            NUMBER,
            "4477003",
            "We would like to call you about your order",
        )
        .await
        .expect("request sent");
    assert!(wamid.starts_with("wamid."));
    let none = graph
        .call_permission(NUMBER, "4477003")
        .await
        .expect("permission");
    assert_eq!(
        (none.status.as_str(), none.can_call),
        ("no_permission", Some(false))
    );
}

#[tokio::test]
async fn transient_failures_are_retried_only_where_repeating_is_safe() {
    let (sim, url) = sim().await;
    let graph = client(&url, "sim-token", 2000);
    let id = sim.place_user_call(NUMBER, "4477001", OFFER);
    let fault = |status| Fault {
        status,
        delay: Duration::ZERO,
    };
    // Terminate survives a 503 and a 429.
    sim.inject(&[fault(503), fault(429)]);
    let end = CallAction::Terminate {
        call_id: id.clone(),
    };
    assert_eq!(graph.call_action(NUMBER, &end).await, Ok(None));
    assert_eq!(sim.recorded().len(), 3, "two failures, then success");
    // Connect is never repeated: a retry could place a second call.
    sim.grant(NUMBER, "4477009", None);
    sim.inject(&[fault(500)]);
    let connect = CallAction::Connect {
        to: "4477009".into(),
        sdp: OFFER.into(),
        biz_opaque_callback_data: None,
    };
    let failed = graph.call_action(NUMBER, &connect).await;
    assert!(
        matches!(failed, Err(GraphError::Meta { status: 500, .. })),
        "{failed:?}"
    );
    assert_eq!(sim.recorded().len(), 4, "one attempt only");
    // After a 500 Meta may have acted: a call action is not repeated (an accept repeated
    // after it took effect would fail on an accepted call).
    let id2 = sim.place_user_call(NUMBER, "4477010", OFFER);
    sim.inject(&[fault(500)]);
    let end2 = CallAction::Terminate { call_id: id2 };
    let once = graph.call_action(NUMBER, &end2).await;
    assert!(
        matches!(once, Err(GraphError::Meta { status: 500, .. })),
        "{once:?}"
    );
    assert_eq!(sim.recorded().len(), 5, "one attempt only");
    // Three attempts at most: a persistent outage surfaces as the last error (a read is
    // repeated on any 5xx).
    sim.inject(&[fault(502), fault(502), fault(502)]);
    let settings = graph.calling_settings(NUMBER).await;
    assert!(matches!(
        settings,
        Err(GraphError::Meta { status: 502, .. })
    ));
    assert_eq!(sim.recorded().len(), 8);
}

#[tokio::test]
async fn time_limits_wrong_tokens_and_settings() {
    let (sim, url) = sim().await;
    let graph = client(&url, "sim-token", 300);
    sim.inject(&[Fault {
        status: 200,
        delay: Duration::from_secs(3),
    }]);
    // A slow answer is a timeout; a status read is retried and the next attempt succeeds.
    let settings = graph
        .calling_settings(NUMBER)
        .await
        .expect("settings on retry");
    assert_eq!(settings["status"], "ENABLED");
    graph
        .update_calling_settings(NUMBER, serde_json::json!({"status": "DISABLED"}))
        .await
        .expect("update");
    let after = graph.calling_settings(NUMBER).await.expect("settings");
    assert_eq!(after["status"], "DISABLED");
    assert_eq!(
        after["call_icon_visibility"], "DEFAULT",
        "a partial update keeps the rest"
    );
    let bad = client(&url, "stolen-token", 2000);
    let err = bad.calling_settings(NUMBER).await.expect_err("refused");
    assert_eq!(err.code(), Some(190));
    let unknown = graph
        .calling_settings("999")
        .await
        .expect_err("unknown number");
    assert_eq!(unknown.code(), Some(100));
    // Nothing listening: a transport error, after the retries.
    let nowhere = client("http://127.0.0.1:9", "sim-token", 300);
    assert!(matches!(
        nowhere.calling_settings(NUMBER).await,
        Err(GraphError::Unreachable(_))
    ));
}

#[tokio::test]
async fn the_sim_refuses_what_meta_refuses() {
    let (sim, url) = sim().await;
    let id = sim.place_user_call(NUMBER, "4477001", OFFER);
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        http.post(format!("{url}/v23.0/{NUMBER}/calls"))
            .bearer_auth("sim-token")
            .json(&body)
            .send()
    };
    // sdp_type "offer" on accept (Meta's own parameter table says so; Meta refuses it).
    let r = post(
        serde_json::json!({"messaging_product": "whatsapp", "call_id": id,
        "action": "accept", "session": {"sdp_type": "offer", "sdp": ANSWER}}),
    )
    .await
    .expect("answer");
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], 100);
    assert!(body["error"]["error_data"]["details"]
        .as_str()
        .is_some_and(|d| d.contains("answer")));
    // LF-only SDP, a missing messaging_product, an unknown action, an unknown call.
    for bad in [
        serde_json::json!({"messaging_product": "whatsapp", "call_id": id, "action": "accept",
            "session": {"sdp_type": "answer", "sdp": "v=0\no=- 1 1 IN IP4 1.2.3.4\n"}}),
        serde_json::json!({"call_id": id, "action": "terminate"}),
        serde_json::json!({"messaging_product": "whatsapp", "call_id": id, "action": "hold"}),
        serde_json::json!({"messaging_product": "whatsapp", "call_id": "wacid.nope", "action": "terminate"}),
    ] {
        let r = post(bad.clone()).await.expect("answer");
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
    assert_eq!(sim.call(&id).map(|c| c.state), Some(SimCallState::Offered));
    assert_eq!(sim.recorded().len(), 5);
}

#[tokio::test]
async fn a_text_message_reaches_the_customer_and_an_empty_or_overlong_one_is_refused() {
    let (sim, url) = sim().await;
    let graph = client(&url, "sim-token", 2000);
    let text = "We are closed now. Write to us here and we will answer in the morning.";
    let id = graph
        .send_text(NUMBER, "5511987654321", text)
        .await
        .expect("sent");
    assert!(id.starts_with("wamid."), "{id}");
    let sent = sim.recorded();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].endpoint, "messages");
    assert_eq!(sent[0].status, 200);
    assert_eq!(sent[0].body["type"], "text");
    assert_eq!(sent[0].body["to"], "5511987654321");
    assert_eq!(sent[0].body["text"]["body"], text);
    for bad in [
        String::new(),
        "x".repeat(waswitch::meta::graph::MAX_TEXT + 1),
    ] {
        let refused = graph.send_text(NUMBER, "5511987654321", &bad).await;
        assert!(
            matches!(refused, Err(GraphError::Meta { status: 400, .. })),
            "{refused:?}"
        );
    }
    // Never retried: one request per message.
    assert_eq!(sim.recorded().len(), 3);
}
