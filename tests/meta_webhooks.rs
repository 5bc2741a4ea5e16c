//! Meta's webhooks through a running node's HTTP listener: signature, replay, malformed
//! bodies, the verification challenge, and the metrics they leave.

use waswitch::config::Config;
use waswitch::meta::signature;
use waswitch::node::Node;

const SECRET: &str = "test-app-secret";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/meta/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

async fn post(client: &reqwest::Client, url: &str, body: &[u8], signature: Option<String>) -> u16 {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        req = req.header("X-Hub-Signature-256", s);
    }
    req.send().await.expect("response").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_authenticated_deduplicated_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "[meta]\naccess_token = \"t\"\napp_secret = \"{SECRET}\"\nverify_token = \"vt-123\"\n"
    );
    let config = Config::loopback(&toml, &dir.path().join("m.db")).expect("config");
    let node = Node::start(config).await.expect("node");
    let base = format!("http://{}", node.http_addr());
    let url = format!("{base}/webhooks/meta");
    let client = reqwest::Client::new();

    // Verification handshake.
    let challenge = client
        .get(format!(
            "{url}?hub.mode=subscribe&hub.verify_token=vt-123&hub.challenge=1158201444"
        ))
        .send()
        .await
        .expect("response");
    assert_eq!(challenge.status().as_u16(), 200);
    assert_eq!(challenge.text().await.expect("body"), "1158201444");
    let wrong = client
        .get(format!(
            "{url}?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1"
        ))
        .send()
        .await
        .expect("response");
    assert_eq!(wrong.status().as_u16(), 403);

    let body = fixture("real-capture_calls-connect_user-initiated_sdp-offer_2025-10-17.json");
    let good = signature::sign(SECRET.as_bytes(), &body);
    assert_eq!(post(&client, &url, &body, Some(good.clone())).await, 200);
    // The same delivery again (Meta's retry): accepted, recognised as a duplicate.
    assert_eq!(post(&client, &url, &body, Some(good.clone())).await, 200);
    let mut tampered = body.clone();
    let last = tampered.len() - 3;
    tampered[last] = b' ';
    assert_eq!(
        post(&client, &url, &tampered, Some(good.clone())).await,
        401
    );
    let other = signature::sign(b"someone-else", &body);
    assert_eq!(post(&client, &url, &body, Some(other)).await, 401);
    assert_eq!(post(&client, &url, &body, None).await, 401);
    let junk = b"{\"entry\": oops";
    let junk_sig = signature::sign(SECRET.as_bytes(), junk);
    assert_eq!(post(&client, &url, junk, Some(junk_sig)).await, 400);

    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "waswitch_meta_webhooks_total{outcome=\"accepted\"} 2",
        "waswitch_meta_webhooks_total{outcome=\"bad_signature\"} 3",
        "waswitch_meta_webhooks_total{outcome=\"malformed\"} 1",
        "waswitch_meta_webhook_events_total{kind=\"connect\",delivery=\"new\"} 1",
        "waswitch_meta_webhook_events_total{kind=\"connect\",delivery=\"duplicate\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line}:\n{metrics}");
    }
    assert!(node.drain_and_stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_meta_configured_the_webhook_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::loopback("", &dir.path().join("m.db")).expect("config");
    let node = Node::start(config).await.expect("node");
    let response = reqwest::Client::new()
        .post(format!("http://{}/webhooks/meta", node.http_addr()))
        .body("{}")
        .send()
        .await
        .expect("response");
    assert_eq!(response.status().as_u16(), 404);
    assert!(response.text().await.expect("body").contains("[meta]"));
    assert!(node.drain_and_stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sims_webhooks_reach_the_switch_and_a_slow_answer_is_retried() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use waswitch::config::Secret;
    use waswitch::sim::webhooks::{user_call_connect, BusinessRef, WebhookSender};

    let business = BusinessRef {
        waba_id: "1".into(),
        phone_number_id: "105615555715855".into(),
        display_number: "15551112222".into(),
    };
    let payload = user_call_connect(&business, "wacid.SIM1", "4477001", "Zoë", "v=0\r\n");

    // Against a switch.
    let dir = tempfile::tempdir().expect("tempdir");
    let toml =
        format!("[meta]\naccess_token = \"t\"\napp_secret = \"{SECRET}\"\nverify_token = \"v\"\n");
    let node = Node::start(Config::loopback(&toml, &dir.path().join("s.db")).expect("config"))
        .await
        .expect("node");
    let url = format!("http://{}/webhooks/meta", node.http_addr());
    let sender =
        WebhookSender::new(&url, Secret::new(SECRET), Duration::from_secs(5)).expect("sender");
    assert_eq!(sender.deliver(&payload).await.attempts, [Some(200)]);
    let mut forged =
        WebhookSender::new(&url, Secret::new("not-the-secret"), Duration::from_secs(5))
            .expect("sender");
    forged.retry_after = Duration::from_millis(10);
    let refused = forged.deliver(&payload).await;
    assert_eq!(refused.attempts, [Some(401), Some(401), Some(401)]);
    assert!(!refused.delivered());
    assert!(node.drain_and_stop().await.clean());

    // Against an endpoint that is slow the first time: Meta gives up waiting and retries.
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let seen = Arc::clone(&seen);
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let slow = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut sender =
        WebhookSender::new(&slow, Secret::new(SECRET), Duration::from_millis(300)).expect("sender");
    sender.retry_after = Duration::from_millis(10);
    let d = sender.deliver(&payload).await;
    assert_eq!(d.attempts, [None, Some(200)]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
