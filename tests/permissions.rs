//! Call permissions through a running switch: the business asks over the REST API, the
//! request goes to the sim's Graph API, the sim's user answers with a signed permission
//! reply webhook, and the switch's view, its limits, the do-not-call list and the audit
//! trail follow. A `kill -9` during a burst of changes loses nothing that was acknowledged.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use waswitch::config::{Config, Secret};
use waswitch::node::Node;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load::SimContext;
use waswitch::sim::users::{Behaviour, CallAnswer, PermissionAnswer, Users};
use waswitch::sim::webhooks;

const SECRET: &str = "perm-secret";
const PNID: &str = "105615555715855";
const NUMBER: &str = "15551112222";
const TOKEN: &str = "perm-token";

struct Switch {
    node: Node,
    graph: SimGraph,
    sim_addr: std::net::SocketAddr,
    ctx: SimContext,
    http: reqwest::Client,
}

impl Switch {
    async fn start(dir: &Path, extra: &str) -> Switch {
        let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
        let sim_addr = graph.serve_loopback().await.expect("sim Graph API");
        let toml = format!(
            "[http]\napi_token = \"{TOKEN}\"\n{extra}\
             [meta]\ngraph_url = \"http://{sim_addr}\"\naccess_token = \"tok\"\n\
             app_secret = \"{SECRET}\"\nverify_token = \"vt\"\n\
             [[business_number]]\nphone_number_id = \"{PNID}\"\ndisplay_number = \"{NUMBER}\"\n\
             country = \"BR\"\necho_test = true\n"
        );
        let config = Config::loopback(&toml, &dir.join("p.db")).expect("config");
        let node = Node::start(config).await.expect("node");
        let ctx = common::sim_context(&graph, node.http_addr(), SECRET, PNID, NUMBER);
        Switch {
            node,
            graph,
            sim_addr,
            ctx,
            http: reqwest::Client::new(),
        }
    }

    fn graph_url(&self) -> String {
        format!("http://{}", self.sim_addr)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.node.http_addr())
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        common::api(&self.http, self.url(path), TOKEN, method, body).await
    }

    /// POSTs a permission request for customer `wa_id` with `body`.
    async fn request(&self, wa_id: &str, body: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/permissions/{NUMBER}/{wa_id}/request"),
            Some(body),
        )
        .await
    }

    async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    async fn view(&self, wa_id: &str) -> Value {
        let (status, v) = self
            .send(
                reqwest::Method::GET,
                &format!("/v1/permissions/{NUMBER}/{wa_id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn wait_status(&self, wa_id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.view(wa_id).await;
            if v["status"] == status {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{wa_id} never {status}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn audit(&self, wa_id: &str) -> Vec<Value> {
        let (status, v) = self
            .send(
                reqwest::Method::GET,
                &format!("/v1/audit?wa_id={wa_id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["records"].as_array().cloned().unwrap_or_default()
    }
}

fn kinds(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn behaviour(permission: PermissionAnswer) -> Behaviour {
    Behaviour {
        call: CallAnswer::Ignore {
            ring: Duration::from_secs(30),
        },
        permission,
        dtmf: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_granted_declined_limited_and_revoked_with_every_step_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(dir.path(), "").await;
    let (users, _answered) = Users::start(
        sw.ctx.clone(),
        behaviour(PermissionAnswer::Grant {
            lasts: Some(Duration::from_secs(7 * 86_400)),
        }),
    );

    // Asked and granted for 7 days.
    let granted = "4915100000001";
    let (status, record) = sw
        .request(granted, json!({"purpose": "About your order ON-12853"}))
        .await;
    assert_eq!(status, 201, "{record}");
    assert_eq!(record["kind"], "requested");
    let view = sw.wait_status(granted, "granted").await;
    assert_eq!(view["permanent"], false);
    let expires = view["expires_at"].as_i64().expect("an expiry");
    let week = 7 * 86_400_000;
    let now = waswitch::call::now_ms();
    assert!(
        (now + week - 60_000..=now + week + 60_000).contains(&expires),
        "{view}"
    );
    // The request the sim's user saw carried the purpose.
    let sent = sw
        .graph
        .recorded()
        .into_iter()
        .find(|r| r.endpoint == "messages")
        .expect("the request message");
    assert_eq!(
        sent.body["interactive"]["body"]["text"],
        "About your order ON-12853"
    );
    // A second request today is over Meta's limit of one per 24 h.
    let (status, refused) = sw.request(granted, json!({"purpose": "again"})).await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["reason"], "daily_request_limit");
    assert_eq!(view["remaining"]["requests"], 0, "{view}");

    // Meta redelivers the same reply: nothing changes.
    let trail = sw.audit(granted).await;
    let grant = trail
        .iter()
        .find(|r| r["kind"] == "granted")
        .expect("granted record");
    let detail: Value =
        serde_json::from_str(grant["detail"].as_str().expect("detail")).expect("detail JSON");
    let message_id = detail["message_id"].as_str().expect("reply id").to_string();
    assert_eq!(
        detail["context_id"],
        record["detail"]
            .as_str()
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
            .expect("request detail")["request_message_id"]
    );
    let again = webhooks::permission_reply(
        &sw.ctx.business,
        granted,
        &message_id,
        true,
        Some(9_999_999_999),
        None,
    );
    assert!(sw.ctx.webhooks.deliver(&again).await.delivered());
    assert_eq!(kinds(&sw.audit(granted).await), ["requested", "granted"]);
    assert_eq!(sw.view(granted).await["expires_at"].as_i64(), Some(expires));

    // The customer revokes from the business profile: revoked, and on the DNC list.
    users.revoke(granted).await;
    let view = sw.wait_status(granted, "revoked").await;
    assert_eq!(view["dnc"], true, "{view}");
    assert_eq!(
        kinds(&sw.audit(granted).await),
        ["requested", "granted", "revoked", "dnc_added"]
    );
    let (_, list) = sw.send(reqwest::Method::GET, "/v1/dnc", None).await;
    assert_eq!(
        list["dnc"],
        json!([{"business_number": NUMBER, "wa_id": granted}])
    );
    // A DNC customer gets no request.
    let (status, refused) = sw.request(granted, json!({"purpose": "later"})).await;
    assert_eq!(status, 403, "{refused}");

    // Another customer declines.
    users.set_behaviour(behaviour(PermissionAnswer::Decline));
    let declined = "4915100000002";
    let (status, _) = sw
        .request(declined, json!({"purpose": "Your delivery"}))
        .await;
    assert_eq!(status, 201);
    sw.wait_status(declined, "declined").await;

    // Outside the service window the business sends its approved template instead.
    users.set_behaviour(behaviour(PermissionAnswer::Grant { lasts: None }));
    let templated = "4915100000004";
    let (status, record) = sw
        .request(
            templated,
            json!({"purpose": "Callback you asked for",
                        "template": {"name": "callback_permission", "language": "de",
                                     "parameters": ["ON-12853"]}}),
        )
        .await;
    assert_eq!(status, 201, "{record}");
    let detail: Value =
        serde_json::from_str(record["detail"].as_str().expect("detail")).expect("JSON");
    assert_eq!(detail["template"], "callback_permission");
    let sent = sw
        .graph
        .recorded()
        .into_iter()
        .rev()
        .find(|r| r.endpoint == "messages")
        .expect("the template message");
    assert_eq!(sent.body["type"], "template");
    assert_eq!(sent.body["template"]["language"]["code"], "de");
    assert_eq!(
        sent.body["template"]["components"][0]["parameters"][0]["text"],
        "ON-12853"
    );
    let view = sw.wait_status(templated, "granted").await;
    assert_eq!(view["permanent"], true, "{view}");

    // The business puts a third customer on the DNC list and takes them off again.
    let other = "4915100000003";
    let (status, v) = sw
        .send(
            reqwest::Method::PUT,
            &format!("/v1/dnc/{NUMBER}/{other}"),
            Some(json!({"reason": "asked by phone"})),
        )
        .await;
    assert_eq!((status, v["dnc"].clone()), (200, json!(true)));
    let (status, v) = sw
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/dnc/{NUMBER}/{other}"),
            None,
        )
        .await;
    assert_eq!((status, v["dnc"].clone()), (200, json!(false)));

    // Bad input: an unknown number, a customer id that is not a number, no purpose.
    let (status, _) = sw
        .send(
            reqwest::Method::GET,
            "/v1/permissions/999/4915100000001",
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = sw
        .send(
            reqwest::Method::GET,
            &format!("/v1/permissions/{NUMBER}/abc"),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = sw.request(other, json!({"purpose": " "})).await;
    assert_eq!(status, 400);

    // The whole trail as CSV, and intact.
    let csv = sw
        .http
        .get(sw.url("/v1/audit?format=csv"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("csv")
        .text()
        .await
        .expect("text");
    // Ten changes, and the refused request to the customer on the DNC list.
    assert_eq!(csv.lines().count(), 1 + 11, "{csv}");
    let metrics = sw.metrics().await;
    for series in [
        "waswitch_permission_requests_total{outcome=\"sent\"} 3",
        "waswitch_permission_requests_total{outcome=\"daily_request_limit\"} 1",
        "waswitch_permission_requests_total{outcome=\"do_not_call\"} 1",
        "waswitch_permission_replies_total{outcome=\"granted\"} 2",
        "waswitch_permission_replies_total{outcome=\"declined\"} 1",
        "waswitch_permission_grants_active 1",
        "waswitch_dnc_added_total{actor=\"customer\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    assert_eq!(
        sw.node.store().verify_audit().await.expect("verify"),
        waswitch::store::audit::Verified::Intact(11)
    );
    sw.node.drain_and_stop().await;

    // A restart rebuilds the same permissions from the trail.
    let sw = Switch::start(dir.path(), "").await;
    let view = sw.view(granted).await;
    assert_eq!(
        (view["status"].clone(), view["dnc"].clone()),
        (json!("revoked"), json!(true))
    );
    assert_eq!(sw.view(declined).await["status"], "declined");
    sw.node.drain_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_grant_is_recorded_expired_and_metas_view_can_refuse_a_call() {
    use waswitch::permission::service::authoritative_check;
    use waswitch::permission::Blocked;
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(dir.path(), "").await;

    // A grant that ends two seconds from now (Meta sends nothing when it lapses).
    let user = "4915100000009";
    let unix = (waswitch::call::now_ms() / 1000) as u64;
    let reply = webhooks::permission_reply(
        &sw.ctx.business,
        user,
        "wamid.SHORT",
        true,
        Some(unix + 2),
        None,
    );
    assert!(sw.ctx.webhooks.deliver(&reply).await.delivered());
    assert_eq!(sw.view(user).await["status"], "granted");
    assert_eq!(
        sw.node
            .permissions()
            .sweep_expired(waswitch::call::now_ms())
            .await
            .expect("sweep"),
        0
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // Seen lapsed before the sweep records it; recorded once.
    assert_eq!(sw.view(user).await["status"], "expired");
    let now = waswitch::call::now_ms();
    assert_eq!(
        sw.node
            .permissions()
            .sweep_expired(now)
            .await
            .expect("sweep"),
        1
    );
    assert_eq!(
        sw.node
            .permissions()
            .sweep_expired(now)
            .await
            .expect("sweep"),
        0
    );
    assert_eq!(kinds(&sw.audit(user).await), ["granted", "expired"]);
    let metrics = sw.metrics().await;
    assert!(
        metrics.contains("waswitch_permission_grants_active 0"),
        "{metrics}"
    );

    // Meta's view, asked before dialling when the business wants it authoritative.
    let meta = Config::loopback(
        &format!(
            "[meta]\ngraph_url = \"{}\"\naccess_token = \"tok\"\napp_secret = \"s\"\n\
             verify_token = \"v\"\n",
            sw.graph_url()
        ),
        &dir.path().join("unused.db"),
    )
    .expect("config")
    .meta
    .expect("meta");
    let graph = waswitch::meta::graph::GraphClient::new(&meta).expect("graph");
    let now = waswitch::call::now_ms();
    assert_eq!(
        authoritative_check(&graph, PNID, user, now).await,
        Err(Blocked::MetaRefused)
    );
    sw.graph.grant(PNID, user, Some(unix + 3600));
    assert_eq!(authoritative_check(&graph, PNID, user, now).await, Ok(()));
    sw.graph.grant(PNID, user, None);
    assert_eq!(authoritative_check(&graph, PNID, user, now).await, Ok(()));
    sw.graph.revoke(PNID, user);
    assert_eq!(
        authoritative_check(&graph, PNID, user, now).await,
        Err(Blocked::MetaRefused)
    );
    sw.node.drain_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_call_from_the_customer_resets_the_request_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(dir.path(), "").await;
    let user = "4915100000021";
    assert_eq!(sw.request(user, json!({"purpose": "first"})).await.0, 201);
    assert_eq!(sw.request(user, json!({"purpose": "second"})).await.0, 429);
    // The customer calls the business (its echo-test number) and the call connects.
    let result = waswitch::sim::load::user_call(&sw.ctx, user, Duration::from_secs(1)).await;
    assert!(result.audio_verified, "{result:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !kinds(&sw.audit(user).await).contains(&"user_call_connected".to_string()) {
        assert!(tokio::time::Instant::now() < deadline, "no reset recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sw.request(user, json!({"purpose": "after the call"}))
            .await
            .0,
        201
    );
    assert_eq!(
        kinds(&sw.audit(user).await),
        ["requested", "user_call_connected", "requested"]
    );
    sw.node.drain_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_a_sanctioned_region_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(dir.path(), "").await;
    // +98: Iran, on the default list.
    let result =
        waswitch::sim::load::user_call(&sw.ctx, "989121234567", Duration::from_secs(1)).await;
    assert!(!result.accepted && !result.connected, "{result:?}");
    assert_eq!(result.error.as_deref(), Some("no_answer"), "{result:?}");
    let actions: Vec<String> = sw
        .graph
        .recorded()
        .into_iter()
        .filter_map(|r| r.action)
        .collect();
    assert_eq!(actions, ["reject"]);
    let metrics = sw.metrics().await;
    assert!(
        metrics.contains("waswitch_calls_blocked_total{reason=\"sanctioned\"} 1"),
        "{metrics}"
    );
    assert_eq!(sw.node.calls().active(), 0);
    sw.node.drain_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_older_than_one_applied_is_recorded_as_superseded_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(dir.path(), "").await;
    let user = "4915100000031";
    let at = |mut payload: Value, unix: u64| {
        payload["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] =
            json!(unix.to_string());
        payload
    };
    let t = 1_790_000_000u64;
    let business = &sw.ctx.business;
    let grant = webhooks::permission_reply(business, user, "wamid.A", true, None, None);
    let revoke = webhooks::permission_reply(business, user, "wamid.B", false, None, None);
    let late = webhooks::permission_reply(business, user, "wamid.C", true, None, None);
    for payload in [at(grant, t), at(revoke, t + 10), at(late, t + 5)] {
        assert!(sw.ctx.webhooks.deliver(&payload).await.delivered());
    }
    // The late grant (sent before the revocation, delivered after it) does not undo it.
    let view = sw.view(user).await;
    assert_eq!(view["status"], "revoked", "{view}");
    assert_eq!(
        kinds(&sw.audit(user).await),
        ["granted", "revoked", "dnc_added", "reply_superseded"]
    );
    sw.node.drain_and_stop().await;
    // After a restart the order still holds.
    let sw = Switch::start(dir.path(), "").await;
    let older = webhooks::permission_reply(&sw.ctx.business, user, "wamid.D", true, None, None);
    assert!(sw.ctx.webhooks.deliver(&at(older, t + 7)).await.delivered());
    assert_eq!(sw.view(user).await["status"], "revoked");
    sw.node.drain_and_stop().await;
}

/// A permission request obeys the rules a call does: a customer in a sanctioned region, a
/// business number of an excluded country and a customer on the do-not-call list each get
/// 403 with the call's reason and a `request_blocked` record, and nothing reaches Meta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_a_call_rule_refuses_is_403_recorded_and_never_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A second business number, of a country where Meta offers no business calling.
    let sw = Switch::start(
        dir.path(),
        "[[business_number]]\nphone_number_id = \"105615555799999\"\n\
         display_number = \"15550001111\"\ncountry = \"US\"\necho_test = true\n",
    )
    .await;
    let body = json!({"purpose": "About your order"});
    // +98: Iran, sanctioned by default.
    let (status, v) = sw.request("989121234567", body.clone()).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["reason"], "sanctioned", "{v}");
    assert_eq!(v["error"], "region sanctioned", "{v}");
    let (status, v) = sw
        .send(
            reqwest::Method::POST,
            "/v1/permissions/15550001111/4915100000401/request",
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["reason"], "country_not_allowed", "{v}");
    let dnc = "4915100000402";
    let (status, _) = sw
        .send(
            reqwest::Method::PUT,
            &format!("/v1/dnc/{NUMBER}/{dnc}"),
            Some(json!({"reason": "asked not to be called"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, v) = sw.request(dnc, body.clone()).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["reason"], "do_not_call", "{v}");

    let sent: Vec<String> = sw
        .graph
        .recorded()
        .into_iter()
        .map(|r| r.endpoint)
        .collect();
    assert!(
        !sent.iter().any(|e| e == "messages"),
        "sent to Meta: {sent:?}"
    );
    for (wa_id, reason) in [
        ("989121234567", "sanctioned"),
        ("4915100000401", "country_not_allowed"),
        (dnc, "do_not_call"),
    ] {
        let records = sw.audit(wa_id).await;
        let blocked: Vec<&Value> = records
            .iter()
            .filter(|r| r["kind"] == "request_blocked")
            .collect();
        assert_eq!(blocked.len(), 1, "{wa_id}: {records:?}");
        let detail: Value =
            serde_json::from_str(blocked[0]["detail"].as_str().unwrap_or("{}")).expect("detail");
        assert_eq!(detail["reason"], reason, "{detail}");
        assert_eq!(detail["purpose"], "About your order", "{detail}");
    }
    let metrics = sw.metrics().await;
    for reason in ["sanctioned", "country_not_allowed", "do_not_call"] {
        let line = format!("waswitch_permission_requests_total{{outcome=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    sw.node.drain_and_stop().await;
}

/// `+<wa_id>`, `<wa_id>` and `00<wa_id>` are one customer in every door of the API: a
/// grant asked one way is seen the others, a do-not-call entry written one way holds for
/// all, the trail is found by any spelling and keys every record by the E.164 digits.
/// What is not a number gets 400 naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_customers_number_is_one_customer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(dir.path(), "").await;
    let (_users, _calls) = Users::start(
        sw.ctx.clone(),
        behaviour(PermissionAnswer::Grant { lasts: None }),
    );
    let digits = "4915100000501";
    let (status, v) = sw
        .send(
            reqwest::Method::POST,
            &format!("/v1/permissions/+{NUMBER}/+{digits}/request"),
            Some(json!({"purpose": "About your order"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["wa_id"], digits, "{v}");
    for spelling in [
        digits.to_string(),
        format!("00{digits}"),
        format!("+{digits}"),
    ] {
        let v = sw.wait_status(&spelling, "granted").await;
        assert_eq!(v["wa_id"], digits, "{v}");
        assert_eq!(v["permanent"], true, "{v}");
    }
    // Meta was sent the digits.
    let to: Vec<Value> = sw
        .graph
        .recorded()
        .into_iter()
        .filter(|r| r.endpoint == "messages")
        .map(|r| r.body["to"].clone())
        .collect();
    assert_eq!(to, vec![json!(digits)]);

    let (status, v) = sw
        .send(
            reqwest::Method::PUT,
            &format!("/v1/dnc/{NUMBER}/00{digits}"),
            Some(json!({"reason": "opt-out by phone"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(sw.view(&format!("+{digits}")).await["dnc"], true);
    let (_, list) = sw.send(reqwest::Method::GET, "/v1/dnc", None).await;
    assert_eq!(
        list["dnc"],
        json!([{"business_number": NUMBER, "wa_id": digits}]),
        "{list}"
    );
    let records = sw.audit(&format!("%2B{digits}")).await;
    assert_eq!(
        kinds(&records),
        ["requested", "granted", "dnc_added", "withdrawn"],
        "{records:?}"
    );
    assert!(records.iter().all(|r| r["wa_id"] == digits), "{records:?}");
    assert_eq!(sw.audit(&format!("00{digits}")).await.len(), 4);

    for (bad, why) in [
        ("alice", "is not a phone number"),
        ("4912", "too short"),
        ("+999123456789", "no known country calling code"),
    ] {
        let (status, v) = sw
            .send(
                reqwest::Method::GET,
                &format!("/v1/permissions/{NUMBER}/{bad}"),
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {v}");
        let error = v["error"].as_str().unwrap_or("");
        assert!(
            error.starts_with("wa_id: ") && error.contains(why),
            "{bad}: {v}"
        );
    }
    sw.node.drain_and_stop().await;
}

/// A JSON body without `Content-Type` is read as JSON; one sent as a form (`curl -d`) gets
/// 415 saying what to send; a body that does not parse gets 400 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_json_with_or_without_the_header_and_mistakes_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(dir.path(), "").await;
    let url = sw.url(&format!("/v1/dnc/{NUMBER}/4915100000601"));
    let send = |content_type: Option<&'static str>, body: &'static str| {
        let mut req = sw.http.put(url.clone()).bearer_auth(TOKEN).body(body);
        if let Some(t) = content_type {
            req = req.header("Content-Type", t);
        }
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            (status, resp.text().await.expect("text"))
        }
    };
    let (status, body) = send(None, r#"{"reason": "asked by phone"}"#).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(
        Some("application/x-www-form-urlencoded"),
        r#"{"reason": "asked by phone"}"#,
    )
    .await;
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("Content-Type: application/json"), "{body}");
    let (status, body) = send(Some("application/json"), r#"{"reason": 7}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("body: reason: invalid type"), "{body}");
    // An empty body is no body: the entry with its default reason.
    let (status, body) = send(None, "").await;
    assert_eq!(status, 200, "{body}");
    sw.node.drain_and_stop().await;
}
