//! The sim's users toward a business: the test plays the business with the switch's own
//! parts (its Graph API client, its media plane's WebRTC offer legs) and watches the
//! webhooks the sim sends, parsed by the switch's webhook parser. Users grant, decline and
//! ignore permission requests and revoke a grant; they pick up a business call (real media,
//! audio and DTMF echoed by the business side), reject one, and let one ring out.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use waswitch::config::{Config, Secret};
use waswitch::media::plane::{FarSide, MediaPlane};
use waswitch::media::ports::PortAllocator;
use waswitch::media::types::SourcePolicy;
use waswitch::meta::graph::{CallAction, GraphClient, GraphError};
use waswitch::meta::webhook::{self, MetaEvent, PermissionResponse, SdpType};
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load::SimContext;
use waswitch::sim::users::{Behaviour, CallAnswer, PermissionAnswer, Users};
use waswitch::sim::webhooks::{BusinessRef, WebhookSender};

const PNID: &str = "105615555715855";
const SECRET: &str = "users-secret";

/// Webhooks received, parsed, in arrival order.
type Inbox = Arc<Mutex<Vec<MetaEvent>>>;

async fn webhook_sink() -> (String, Inbox) {
    let inbox: Inbox = Arc::default();
    let kept = inbox.clone();
    let app = axum::Router::new().route(
        "/webhooks/meta",
        post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let parsed = webhook::parse(&body).expect("Meta-shaped webhook");
                kept.lock().expect("inbox").extend(parsed.events);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/webhooks/meta",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener, app,
    )));
    (url, inbox)
}

async fn wait_for(inbox: &Inbox, what: &str, found: impl Fn(&[MetaEvent]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if found(&inbox.lock().expect("inbox")) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what}: {:?}",
            inbox.lock().expect("inbox")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The statuses and terminates of one call, in arrival order.
fn call_events(inbox: &Inbox, call_id: &str) -> Vec<String> {
    inbox
        .lock()
        .expect("inbox")
        .iter()
        .filter_map(|e| match e {
            MetaEvent::Connect(c) if c.call_id == call_id => {
                Some(format!("connect:{:?}", c.sdp_type))
            }
            MetaEvent::Status(s) if s.call_id == call_id => Some(format!("{:?}", s.status)),
            MetaEvent::Terminate(t) if t.call_id == call_id => Some("terminate".to_string()),
            _ => None,
        })
        .collect()
}

/// The business calls `user` through Meta's Graph API with our SDP `offer`.
async fn connect(
    business: &GraphClient,
    user: &str,
    offer: String,
    opaque: Option<String>,
) -> Result<Option<String>, GraphError> {
    let action = CallAction::Connect {
        to: user.into(),
        sdp: offer,
        biz_opaque_callback_data: opaque,
    };
    business.call_action(PNID, &action).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_users_answer_permission_requests_and_business_calls() {
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let sim_addr = graph.serve_loopback().await.expect("sim Graph API");
    let (url, inbox) = webhook_sink().await;
    let ctx = SimContext::loopback(
        graph.clone(),
        WebhookSender::new(&url, Secret::new(SECRET), Duration::from_secs(5)).expect("sender"),
        BusinessRef {
            waba_id: "1".into(),
            phone_number_id: PNID.into(),
            display_number: "15551112222".into(),
        },
    );
    let behaviour = Behaviour {
        call: CallAnswer::Accept {
            after: Duration::from_millis(300),
            hold: Duration::from_millis(1500),
        },
        permission: PermissionAnswer::Grant { lasts: None },
        dtmf: Some("42".into()),
    };
    let (users, mut answered) = Users::start(ctx, behaviour.clone());
    let meta = Config::loopback(
        &format!(
            "[meta]\ngraph_url = \"http://{sim_addr}\"\naccess_token = \"tok\"\n\
             app_secret = \"{SECRET}\"\nverify_token = \"v\"\n"
        ),
        std::path::Path::new("/nonexistent/unused.db"),
    )
    .expect("config")
    .meta
    .expect("meta");
    let business = GraphClient::new(&meta).expect("graph client");
    let plane = MediaPlane::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        PortAllocator::new(43_000, 43_099),
        1,
        SourcePolicy::Strict,
        Duration::from_secs(30),
    )
    .expect("media plane");

    // Permission: asked, granted by the user (a reply quoting the request), and visible in
    // Meta's lookup.
    let user = "4915112345678";
    let request = business
        .send_permission_request(PNID, user, "May we call you about your order?")
        .await
        .expect("request sent");
    wait_for(&inbox, "a permission reply", |events| {
        events.iter().any(|e| {
            matches!(e, MetaEvent::PermissionReply(p)
                if p.response == PermissionResponse::Accept && p.context_id.as_deref() == Some(request.as_str()) && p.is_permanent)
        })
    })
    .await;
    let permission = business.call_permission(PNID, user).await.expect("lookup");
    assert_eq!(permission.status, "permanent");

    // A business call the user picks up: our offer, Meta's answer in a connect webhook,
    // RINGING, ACCEPTED, audio and DTMF echoed back by our side, the user hangs up.
    let place = |plane: &MediaPlane| {
        let prepared = plane.webrtc_offer().expect("offer");
        let offer = prepared.local_sdp().to_string();
        let pair = plane
            .add_webrtc_pair(prepared, FarSide::Echo, std::sync::Arc::new(|_| {}))
            .expect("pair");
        (offer, pair)
    };
    let (offer, pair) = place(&plane);
    let call_id = connect(&business, user, offer, Some("order-77".into()))
        .await
        .expect("connect")
        .expect("a call id");
    wait_for(&inbox, "Meta's answer", |events| {
        events
            .iter()
            .any(|e| matches!(e, MetaEvent::Connect(c) if c.call_id == call_id))
    })
    .await;
    let answer = inbox
        .lock()
        .expect("inbox")
        .iter()
        .find_map(|e| match e {
            MetaEvent::Connect(c) if c.call_id == call_id && c.sdp_type == SdpType::Answer => {
                Some(c.sdp.clone())
            }
            _ => None,
        })
        .expect("an SDP answer");
    pair.webrtc_answer(&answer).expect("answer applied");
    let done = tokio::time::timeout(Duration::from_secs(15), answered.recv())
        .await
        .expect("the call ended in time")
        .expect("a result");
    assert_eq!(done.call_id, call_id);
    let media = done.media.expect("media");
    assert!(media.audio_verified(), "{media:?}");
    assert_eq!(media.digits_in, "42");
    wait_for(&inbox, "the terminate", |events| {
        events
            .iter()
            .any(|e| matches!(e, MetaEvent::Terminate(t) if t.call_id == call_id))
    })
    .await;
    assert_eq!(
        call_events(&inbox, &call_id),
        ["connect:Answer", "Ringing", "Accepted", "terminate"]
    );
    let statuses: Vec<_> = inbox
        .lock()
        .expect("inbox")
        .iter()
        .filter_map(|e| match e {
            MetaEvent::Status(s) if s.call_id == call_id => s.biz_opaque_callback_data.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, ["order-77", "order-77"]);
    drop(pair);

    // Rejected: RINGING, REJECTED, terminate; no media.
    users.set_behaviour(Behaviour {
        call: CallAnswer::Reject {
            after: Duration::from_millis(200),
        },
        ..behaviour.clone()
    });
    let (offer, _pair) = place(&plane);
    let rejected = connect(&business, user, offer, None)
        .await
        .expect("connect")
        .expect("id");
    let done = answered.recv().await.expect("result");
    assert_eq!(done.call_id, rejected);
    assert!(done.media.is_none());
    wait_for(&inbox, "the terminate", |events| {
        events
            .iter()
            .any(|e| matches!(e, MetaEvent::Terminate(t) if t.call_id == rejected))
    })
    .await;
    assert_eq!(
        call_events(&inbox, &rejected),
        ["connect:Answer", "Ringing", "Rejected", "terminate"]
    );

    // Ignored: it rings out; the business may also end it first.
    users.set_behaviour(Behaviour {
        call: CallAnswer::Ignore {
            ring: Duration::from_millis(400),
        },
        ..behaviour.clone()
    });
    let (offer, _pair) = place(&plane);
    let ignored = connect(&business, user, offer, None)
        .await
        .expect("connect")
        .expect("id");
    assert_eq!(answered.recv().await.expect("result").call_id, ignored);
    wait_for(&inbox, "the terminate", |events| {
        events
            .iter()
            .any(|e| matches!(e, MetaEvent::Terminate(t) if t.call_id == ignored))
    })
    .await;
    assert_eq!(
        call_events(&inbox, &ignored),
        ["connect:Answer", "Ringing", "terminate"]
    );
    assert!(call_events(&inbox, &ignored)
        .iter()
        .all(|e| e != "Accepted"));

    // The user revokes: Meta refuses the next call (138006) and tells the business.
    users.revoke(user).await;
    let refused = connect(&business, user, place(&plane).0, None).await;
    match refused {
        Err(GraphError::Meta { code, .. }) => assert_eq!(code, 138_006),
        other => panic!("a call without permission: {other:?}"),
    }
    let declines = inbox
        .lock()
        .expect("inbox")
        .iter()
        .filter(|e| matches!(e, MetaEvent::PermissionReply(p) if p.response == PermissionResponse::Reject))
        .count();
    assert_eq!(declines, 1);

    // Declined and ignored requests.
    users.set_behaviour(Behaviour {
        permission: PermissionAnswer::Decline,
        ..behaviour.clone()
    });
    let other = "4915100000002";
    let declined = business
        .send_permission_request(PNID, other, "Call?")
        .await
        .expect("request");
    wait_for(&inbox, "a decline", |events| {
        events.iter().any(|e| {
            matches!(e, MetaEvent::PermissionReply(p)
                if p.response == PermissionResponse::Reject && p.context_id.as_deref() == Some(declined.as_str()))
        })
    })
    .await;
    assert_eq!(
        business
            .call_permission(PNID, other)
            .await
            .expect("lookup")
            .status,
        "no_permission"
    );
    users.set_behaviour(Behaviour {
        permission: PermissionAnswer::Ignore,
        ..behaviour
    });
    let before = inbox.lock().expect("inbox").len();
    business
        .send_permission_request(PNID, "4915100000003", "Call?")
        .await
        .expect("request");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(inbox.lock().expect("inbox").len(), before, "no reply");
    plane.stop();
}
