//! Business-initiated WhatsApp calls: SIPp plays the business's PBX (an agent dials the
//! customer: From is the business's WhatsApp number, the Request-URI the customer), and
//! `waswitch sim` plays WhatsApp (its Graph API, signed webhooks, customers who grant or
//! decline permission and answer with real WebRTC media). Every call is checked on both
//! sides, in the audit trail and in its CDR.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use waswitch::config::{Config, Secret};
use waswitch::node::Node;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load::SimContext;
use waswitch::sim::users::{AnsweredCall, Behaviour, CallAnswer, PermissionAnswer, Users};

const SECRET: &str = "bic-secret";
const PNID: &str = "105615555715855";
const NUMBER: &str = "15551112222";
/// A business number of a country where Meta offers no business-initiated calling.
const US_PNID: &str = "105615555799999";
const US_NUMBER: &str = "15550001111";
const TOKEN: &str = "bic-token";

struct Switch {
    node: Node,
    graph: SimGraph,
    ctx: SimContext,
    http: reqwest::Client,
    dir: PathBuf,
}

impl Switch {
    /// A switch whose PBX trunk is SIPp on loopback, with `extra` configuration.
    async fn start(dir: &Path, media_ports: u16, extra: &str) -> Switch {
        let graph = SimGraph::new(
            Secret::new("tok"),
            vec![PNID.to_string(), US_PNID.to_string()],
        );
        let sim_addr = graph.serve_loopback().await.expect("sim Graph API");
        let toml = format!(
            "[http]\napi_token = \"{TOKEN}\"\n\
             [media]\nip = \"127.0.0.1\"\nshards = 2\nport_min = {media_ports}\nport_max = {}\n\
             {extra}\
             [[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5999\"\n\
             accept_from = [\"127.0.0.1/32\"]\nbusiness_calls = true\noptions_interval_secs = 0\n\
             [meta]\ngraph_url = \"http://{sim_addr}\"\naccess_token = \"tok\"\n\
             app_secret = \"{SECRET}\"\nverify_token = \"vt\"\n\
             [[business_number]]\nphone_number_id = \"{PNID}\"\ndisplay_number = \"{NUMBER}\"\n\
             country = \"BR\"\necho_test = true\n\
             [[business_number]]\nphone_number_id = \"{US_PNID}\"\n\
             display_number = \"{US_NUMBER}\"\ncountry = \"US\"\necho_test = true\n",
            media_ports + 198
        );
        let config = Config::loopback(&toml, &dir.join("b.db")).expect("config");
        let node = Node::start(config).await.expect("node");
        let ctx = common::sim_context(&graph, node.http_addr(), SECRET, PNID, NUMBER);
        Switch {
            node,
            graph,
            ctx,
            http: reqwest::Client::new(),
            dir: dir.to_path_buf(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://{}{path}", self.node.http_addr());
        common::api(&self.http, url, TOKEN, method, body).await
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

    /// Asks `wa_id` for permission and waits until the pair is `status`.
    async fn ask(&self, wa_id: &str, status: &str) -> Value {
        let (code, v) = self
            .send(
                reqwest::Method::POST,
                &format!("/v1/permissions/{NUMBER}/{wa_id}/request"),
                Some(json!({"purpose": "About your order ON-12853"})),
            )
            .await;
        assert_eq!(code, 201, "{v}");
        self.wait_status(wa_id, status).await
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

    /// The pair's audit records' kinds, once `last` is among them (records of a call's end
    /// are written as its CDR is).
    async fn audit_until(&self, wa_id: &str, last: &str) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, v) = self
                .send(
                    reqwest::Method::GET,
                    &format!("/v1/audit?wa_id={wa_id}"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{v}");
            let records = v["records"].as_array().cloned().unwrap_or_default();
            if records.iter().any(|r| r["kind"] == last) {
                return records;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {last} for {wa_id}: {records:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The detail of the customer's `call_finished` record, once it is written.
    async fn finished(&self, wa_id: &str) -> Value {
        let records = self.audit_until(wa_id, "call_finished").await;
        records
            .iter()
            .find(|r| r["kind"] == "call_finished")
            .map(detail)
            .expect("call_finished")
    }

    /// The statuses the sim answered to Graph call action `action`, in order.
    fn actions(&self, action: &str) -> Vec<u16> {
        self.graph
            .recorded()
            .into_iter()
            .filter(|r| r.action.as_deref() == Some(action))
            .map(|r| r.status)
            .collect()
    }

    async fn metrics(&self) -> String {
        common::metrics_text(self.node.http_addr()).await
    }

    /// The PBX (SIPp) dials `customer` from business number `from` with `scenario`, `calls`
    /// times; its exit code, counters, and the SIP messages it saw.
    async fn dial(
        &self,
        scenario: &'static str,
        from: &str,
        customer: &str,
        calls: u32,
    ) -> (i32, std::collections::HashMap<String, u64>, String) {
        let target = self.node.sip_udp_addr().expect("SIP over UDP");
        let messages = self.dir.join(format!("sipp-{}.log", uuid::Uuid::new_v4()));
        let from = from.to_string();
        let customer = customer.to_string();
        let log = messages.clone();
        let (code, counters, out) = tokio::task::spawn_blocking(move || {
            common::run_sipp_with(
                scenario,
                "u1",
                target,
                calls,
                50,
                &[
                    "-key",
                    "biz",
                    &from,
                    "-s",
                    &customer,
                    "-rtp_echo",
                    "-trace_msg",
                    "-message_file",
                    &log.to_string_lossy(),
                ],
            )
        })
        .await
        .expect("sipp");
        let seen = std::fs::read_to_string(&messages).unwrap_or_default();
        (code, counters, format!("{seen}\n{out}"))
    }
}

/// The final failure responses the PBX received: (status line, Reason header).
fn refusals(log: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for message in log.split("\n\n") {
        let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
        let Some(first) = lines.find(|l| l.starts_with("SIP/2.0 ")) else {
            continue;
        };
        let code: u16 = first[8..11].parse().unwrap_or(0);
        if code < 300 {
            continue;
        }
        let reason = message
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("Reason:"))
            .map(|r| r.trim().to_string())
            .unwrap_or_default();
        out.push((first.to_string(), reason));
    }
    out.sort();
    out.dedup();
    out
}

/// The PBX got exactly one refusal: status line `SIP/2.0 {line}`, with a `Reason` of the
/// same status and `text`.
fn assert_refused(log: &str, line: &str, text: &str) {
    assert_eq!(
        refusals(log),
        vec![(
            format!("SIP/2.0 {line}"),
            format!("SIP;cause={};text=\"{text}\"", &line[..3])
        )],
        "{log}"
    );
}

fn behaviour(call: CallAnswer, permission: PermissionAnswer) -> Behaviour {
    Behaviour {
        call,
        permission,
        dtmf: None,
    }
}

fn talk() -> CallAnswer {
    CallAnswer::Accept {
        after: Duration::from_millis(400),
        hold: Duration::from_secs(3),
    }
}

fn day() -> PermissionAnswer {
    PermissionAnswer::Grant {
        lasts: Some(Duration::from_secs(86_400)),
    }
}

async fn next_answered(
    answered: &mut tokio::sync::mpsc::UnboundedReceiver<AnsweredCall>,
) -> AnsweredCall {
    tokio::time::timeout(Duration::from_secs(20), answered.recv())
        .await
        .expect("the customer's call ended in time")
        .expect("a call")
}

fn kinds(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// A record's detail, parsed.
fn detail(record: &Value) -> Value {
    serde_json::from_str(record["detail"].as_str().unwrap_or("{}")).unwrap_or(Value::Null)
}

async fn cdrs(node: Node, dir: &Path) -> Vec<waswitch::store::Cdr> {
    use waswitch::store::{CdrFilter, CdrRepository, Store};
    assert!(
        node.calls().wait_idle(Duration::from_secs(15)).await,
        "calls left over"
    );
    node.drain_and_stop().await;
    let config = Config::loopback("", &dir.join("b.db")).expect("config");
    let store = Store::open(&config.store).await.expect("store");
    store
        .list(&CdrFilter {
            limit: 100,
            ..CdrFilter::default()
        })
        .await
        .expect("cdrs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_customer_is_called_from_the_pbx_with_audio_and_a_one_call_grant_is_then_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(dir.path(), 51_000, "[permissions]\nprofile = \"strict\"\n").await;
    let (_users, mut answered) = Users::start(sw.ctx.clone(), behaviour(talk(), day()));
    let customer = "4915100000101";
    sw.ask(customer, "granted").await;

    let (code, counters, log) = sw.dial("bic_uac_wait_bye.xml", NUMBER, customer, 1).await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    let call = next_answered(&mut answered).await;
    let media = call.media.expect("media");
    assert!(media.audio_verified(), "{media:?}");
    // Meta was asked to connect the customer with the switch's offer, tagged with the
    // switch's call id; nothing else (the customer hung up).
    let actions: Vec<String> = sw
        .graph
        .recorded()
        .into_iter()
        .filter_map(|r| r.action)
        .collect();
    assert_eq!(actions, vec!["connect"], "{actions:?}");

    // The one call the strict profile allows is used: the next is refused at once.
    let view = sw.view(customer).await;
    assert_eq!(view["calls_used"], 1, "{view}");
    assert_eq!(view["calls_in_progress"], 0, "{view}");
    let (code, counters, log) = sw.dial("bic_uac_refused.xml", NUMBER, customer, 1).await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    assert_refused(
        &log,
        "403 Forbidden - call permission used",
        "call permission used",
    );

    let records = sw.audit_until(customer, "call_blocked").await;
    let k = kinds(&records);
    for kind in [
        "requested",
        "granted",
        "call_attempted",
        "call_connected",
        "call_finished",
        "call_blocked",
    ] {
        assert!(k.contains(&kind.to_string()), "{kind} missing: {k:?}");
    }
    let finished = records
        .iter()
        .find(|r| r["kind"] == "call_finished")
        .map(detail)
        .expect("call_finished");
    assert_eq!(finished["outcome"], "connected", "{finished}");
    assert!(
        finished["duration_ms"].as_i64().unwrap_or(0) >= 2_000,
        "{finished}"
    );
    assert_eq!(finished["wa_call_id"], json!(call.call_id), "{finished}");
    let metrics = sw.metrics().await;
    assert!(
        metrics.contains("waswitch_bic_attempts_total{result=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("waswitch_calls_blocked_total{reason=\"used\"} 1"),
        "{metrics}"
    );

    let cdrs = cdrs(sw.node, dir.path()).await;
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr.direction, waswitch::store::Direction::BusinessInitiated);
    assert_eq!(cdr.outcome, waswitch::store::CallOutcome::Answered);
    assert_eq!(cdr.hangup_by, waswitch::store::HangupParty::Customer);
    assert_eq!(cdr.trunk.as_deref(), Some("pbx"));
    assert_eq!(cdr.customer_wa_id.as_deref(), Some(customer));
    assert_eq!(cdr.wa_call_id.as_deref(), Some(call.call_id.as_str()));
    assert_eq!(
        cdr.codec_path.as_deref(),
        Some("opus <-> PCMU (transcoded)"),
        "{cdr:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_permission_a_declined_request_an_excluded_country_and_a_declined_call_are_refused_precisely(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(dir.path(), 51_200, "").await;
    let (users, _answered) =
        Users::start(sw.ctx.clone(), behaviour(talk(), PermissionAnswer::Decline));
    let refused = |log: &str, status: &str, text: &str| {
        assert_eq!(
            refusals(log),
            vec![(
                format!("SIP/2.0 {status} - {text}"),
                format!("SIP;cause={};text=\"{text}\"", &status[..3])
            )],
            "{log}"
        );
    };

    // Never asked.
    let (code, counters, log) = sw
        .dial("bic_uac_refused.xml", NUMBER, "4915100000201", 1)
        .await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    refused(&log, "403 Forbidden", "call permission required");

    // Asked and declined.
    let declined = "4915100000202";
    sw.ask(declined, "declined").await;
    let (code, counters, log) = sw.dial("bic_uac_refused.xml", NUMBER, declined, 1).await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    refused(&log, "403 Forbidden", "call permission required");

    // A US business number places no business-initiated calls, whatever the customer said.
    let (code, counters, log) = sw
        .dial("bic_uac_refused.xml", US_NUMBER, "4915100000203", 1)
        .await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    refused(&log, "403 Forbidden", "country not allowed");

    // A sanctioned region is never called.
    let (code, counters, log) = sw
        .dial("bic_uac_refused.xml", NUMBER, "989121234567", 1)
        .await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    refused(&log, "403 Forbidden", "region sanctioned");

    // Granted, then the customer declines the call itself: 603 from WhatsApp.
    let granted = "4915100000204";
    users.set_behaviour(behaviour(
        CallAnswer::Reject {
            after: Duration::from_millis(300),
        },
        day(),
    ));
    sw.ask(granted, "granted").await;
    let (code, counters, log) = sw.dial("bic_uac_refused.xml", NUMBER, granted, 1).await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    let seen = refusals(&log);
    assert_eq!(seen.len(), 1, "{log}");
    assert!(seen[0].0.starts_with("SIP/2.0 603"), "{seen:?}");
    assert!(log.contains("SIP/2.0 180 Ringing"), "{log}");

    // Every refusal is in the trail with its reason; the declined call counts unanswered.
    let finished = sw.finished(granted).await;
    assert_eq!(finished["outcome"], "unanswered", "{finished}");
    let (status, all) = sw
        .send(reqwest::Method::GET, "/v1/audit?limit=1000", None)
        .await;
    assert_eq!(status, 200);
    let mut reasons: Vec<String> = all["records"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|r| r["kind"] == "call_blocked")
        .map(|r| detail(r)["reason"].as_str().unwrap_or("?").to_string())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            "country_not_allowed",
            "no_permission",
            "no_permission",
            "sanctioned"
        ]
    );
    let metrics = sw.metrics().await;
    assert!(
        metrics.contains("waswitch_calls_blocked_total{reason=\"no_permission\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("waswitch_bic_attempts_total{result=\"unanswered\"} 1"),
        "{metrics}"
    );
    sw.node.drain_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_grant_refuses_the_call_and_a_revocation_or_dnc_cancels_a_call_still_ringing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(dir.path(), 51_400, "[sip]\nring_timeout_secs = 20\n").await;
    let (users, _answered) = Users::start(
        sw.ctx.clone(),
        behaviour(
            CallAnswer::Ignore {
                ring: Duration::from_secs(15),
            },
            PermissionAnswer::Grant {
                lasts: Some(Duration::from_secs(2)),
            },
        ),
    );
    // A grant of two seconds has lapsed three seconds on.
    let expiring = "4915100000301";
    sw.ask(expiring, "granted").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, counters, log) = sw.dial("bic_uac_refused.xml", NUMBER, expiring, 1).await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    assert_refused(
        &log,
        "403 Forbidden - call permission expired",
        "call permission expired",
    );
    let records = sw.audit_until(expiring, "call_blocked").await;
    assert!(
        kinds(&records).contains(&"expired".to_string()),
        "{records:?}"
    );

    // Put on the do-not-call list while the customer's phone rings: the call is cancelled
    // at once (the PBX refused as it would be dialling now, Meta told to terminate).
    users.set_behaviour(behaviour(
        CallAnswer::Ignore {
            ring: Duration::from_secs(15),
        },
        day(),
    ));
    let queued = "4915100000302";
    sw.ask(queued, "granted").await;
    let dial = sw.dial("bic_uac_refused.xml", NUMBER, queued, 1);
    let dnc = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sw
            .node
            .calls()
            .waiting_business_calls(NUMBER, queued)
            .is_empty()
            || sw.actions("connect").is_empty()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the call never rang"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, v) = sw
            .send(
                reqwest::Method::PUT,
                &format!("/v1/dnc/{NUMBER}/{queued}"),
                Some(json!({"reason": "asked on the phone not to be called"})),
            )
            .await;
        assert!((200..300).contains(&status), "{v}");
    };
    let ((code, counters, log), ()) = tokio::join!(dial, dnc);
    common::assert_all_succeeded(code, &counters, &log, 1);
    assert!(log.contains("SIP/2.0 180 Ringing"), "{log}");
    assert_refused(
        &log,
        "403 Forbidden - customer is on the do-not-call list",
        "customer is on the do-not-call list",
    );
    let finished = sw.finished(queued).await;
    // Cut off by the switch, not left unanswered by the customer.
    assert_eq!(finished["outcome"], "failed", "{finished}");
    assert_eq!(finished["end_cause"], "do_not_call", "{finished}");

    // The customer revokes while the phone rings: the same, with its own reason.
    let revoking = "4915100000303";
    sw.ask(revoking, "granted").await;
    let before = sw.actions("connect").len();
    let dial = sw.dial("bic_uac_refused.xml", NUMBER, revoking, 1);
    let revoke = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sw.actions("connect").len() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the call never rang"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        users.revoke(revoking).await;
    };
    let ((code, counters, log), ()) = tokio::join!(dial, revoke);
    common::assert_all_succeeded(code, &counters, &log, 1);
    assert_refused(
        &log,
        "403 Forbidden - call permission revoked",
        "call permission revoked",
    );
    // Meta was told to end both cancelled calls.
    let terminates = sw
        .actions("terminate")
        .iter()
        .filter(|&&s| s == 200)
        .count();
    assert_eq!(terminates, 2);
    // And the customer who revoked is on the do-not-call list for the next call.
    let (code, counters, log) = sw.dial("bic_uac_refused.xml", NUMBER, revoking, 1).await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    assert_refused(
        &log,
        "403 Forbidden - customer is on the do-not-call list",
        "customer is on the do-not-call list",
    );
    sw.node.drain_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_simultaneous_invites_on_a_one_call_permission_connect_exactly_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(dir.path(), 51_600, "[permissions]\nprofile = \"strict\"\n").await;
    let (_users, mut answered) = Users::start(sw.ctx.clone(), behaviour(talk(), day()));
    let customer = "4915100000401";
    sw.ask(customer, "granted").await;
    // Two INVITEs 20 ms apart, each either answered or refused.
    let (code, counters, log) = sw.dial("bic_uac_either.xml", NUMBER, customer, 2).await;
    common::assert_all_succeeded(code, &counters, &log, 2);
    assert_refused(
        &log,
        "403 Forbidden - call permission used",
        "call permission used",
    );
    let call = next_answered(&mut answered).await;
    assert!(call.media.is_some_and(|m| m.audio_verified()));
    assert!(
        tokio::time::timeout(Duration::from_secs(2), answered.recv())
            .await
            .is_err(),
        "a second call reached the customer"
    );
    let connects = sw.actions("connect").len();
    assert_eq!(connects, 1);
    let view = sw.view(customer).await;
    assert_eq!(view["calls_used"], 1, "{view}");
    sw.node.drain_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_callback_calls_the_customer_then_bridges_them_to_a_sipp_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_port = common::free_udp_port();
    let trunk = format!(
        "[[trunk]]\nname = \"agents\"\nuri = \"sip:127.0.0.1:{agent_port}\"\n\
         options_interval_secs = 0\n\
         [[trunk]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:5998\"\npstn = true\n\
         options_interval_secs = 0\n"
    );
    let sw = Switch::start(dir.path(), 51_800, &trunk).await;
    let (_users, mut answered) = Users::start(sw.ctx.clone(), behaviour(talk(), day()));
    let customer = "4915100000501";
    let place = |wa_id: &str, extra: Value| {
        let mut body = json!({"business_number": NUMBER, "wa_id": wa_id, "trunk": "agents"});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        sw.send(reqwest::Method::POST, "/v1/calls", Some(body))
    };

    // Refused before anything is dialled: no permission yet, a PSTN trunk, unknown names.
    let (status, v) = place(customer, json!({})).await;
    assert_eq!(
        (status, v["reason"].clone()),
        (403, json!("no_permission")),
        "{v}"
    );
    sw.ask(customer, "granted").await;
    let (status, v) = place(customer, json!({"trunk": "carrier"})).await;
    assert_eq!((status, v["reason"].clone()), (403, json!("pstn")), "{v}");
    let (status, v) = place(customer, json!({"trunk": "nowhere"})).await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = sw
        .send(
            reqwest::Method::POST,
            "/v1/calls",
            Some(json!({"business_number": "19990000000", "wa_id": customer, "trunk": "agents"})),
        )
        .await;
    assert_eq!(status, 404, "{v}");
    assert!(
        sw.graph.recorded().iter().all(|r| r.action.is_none()),
        "nothing was dialled"
    );

    // Placed: the customer is called first; when they answer, agent 2001 (SIPp, echoing
    // the audio) is called and the two are bridged until the customer hangs up.
    let agent_log = dir.path().join("agent.log");
    let agent = common::Uas::start_with(
        "b2bua_uas.xml",
        "u1",
        agent_port,
        1,
        &[
            "-rtp_echo",
            "-trace_msg",
            "-message_file",
            &agent_log.to_string_lossy(),
        ],
    );
    let (status, v) = place(customer, json!({"user": "2001"})).await;
    assert_eq!(status, 201, "{v}");
    let call_id = v["call_id"].as_str().expect("call id").to_string();
    let call = next_answered(&mut answered).await;
    let media = call.media.expect("media");
    assert!(media.audio_verified(), "{media:?}");
    let (code, counters) = tokio::task::spawn_blocking(move || agent.finish())
        .await
        .expect("agent");
    assert_eq!(code, Some(0), "{counters:?}");
    assert_eq!(counters.get("SuccessfulCall(C)"), Some(&1), "{counters:?}");
    // The agent was called at the extension asked for, as the customer.
    let seen = std::fs::read_to_string(&agent_log).unwrap_or_default();
    assert!(
        seen.contains(&format!("INVITE sip:2001@127.0.0.1:{agent_port}")),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("<sip:+{customer}@whatsapp.invalid>")),
        "{seen}"
    );

    let finished = sw.finished(customer).await;
    assert_eq!(finished["outcome"], "connected", "{finished}");
    assert_eq!(finished["call_id"], json!(call_id), "{finished}");
    let cdrs = cdrs(sw.node, dir.path()).await;
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr.call_id, call_id);
    assert_eq!(cdr.direction, waswitch::store::Direction::BusinessInitiated);
    assert_eq!(cdr.outcome, waswitch::store::CallOutcome::Answered);
    assert_eq!(cdr.hangup_by, waswitch::store::HangupParty::Customer);
    assert_eq!(cdr.trunk.as_deref(), Some("agents"));
    assert_eq!(cdr.wa_call_id.as_deref(), Some(call.call_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_call_gets_480_at_the_ring_timeout_and_metas_own_check_can_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(
        dir.path(),
        52_000,
        "[sip]\nring_timeout_secs = 2\n[permissions]\nauthoritative_check = true\n",
    )
    .await;
    let (users, _answered) = Users::start(
        sw.ctx.clone(),
        behaviour(
            CallAnswer::Ignore {
                ring: Duration::from_secs(15),
            },
            day(),
        ),
    );
    // The phone rings past the switch's ring timeout: 480 to the PBX, terminate to Meta,
    // and an unanswered attempt in the trail (it counts toward automatic revocation).
    let customer = "4915100000601";
    sw.ask(customer, "granted").await;
    let started = std::time::Instant::now();
    let (code, counters, log) = sw.dial("bic_uac_refused.xml", NUMBER, customer, 1).await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    assert!(started.elapsed() >= Duration::from_secs(2), "{log}");
    assert!(log.contains("SIP/2.0 180 Ringing"), "{log}");
    let seen = refusals(&log);
    assert_eq!(seen.len(), 1, "{log}");
    assert!(seen[0].0.starts_with("SIP/2.0 480"), "{seen:?}");
    let finished = sw.finished(customer).await;
    assert_eq!(finished["outcome"], "unanswered", "{finished}");
    assert_eq!(finished["end_cause"], "no_answer", "{finished}");
    let terminated = sw.actions("terminate").contains(&200);
    assert!(terminated, "Meta was told the call ended");
    // Meta's own records lose the grant without a webhook the switch saw: with the
    // authoritative check on, Meta's answer refuses the call the switch's records allow.
    let lost = "4915100000602";
    sw.ask(lost, "granted").await;
    sw.graph.revoke(PNID, lost);
    let (code, counters, log) = sw.dial("bic_uac_refused.xml", NUMBER, lost, 1).await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    assert_refused(
        &log,
        "403 Forbidden - Meta reports no call permission",
        "Meta reports no call permission",
    );
    assert!(sw
        .graph
        .recorded()
        .iter()
        .any(|r| r.endpoint == "call_permissions"));
    drop(users);
    sw.node.drain_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_an_answered_business_call_hangs_up_both_sides_and_settles_the_permission() {
    use waswitch::call::supervisor::ChildRole;
    use waswitch::call::Fault;
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(dir.path(), 52_200, "").await;
    let (_users, mut answered) = Users::start(
        sw.ctx.clone(),
        behaviour(
            CallAnswer::Accept {
                after: Duration::from_millis(300),
                hold: Duration::from_secs(20),
            },
            day(),
        ),
    );
    let customer = "4915100000701";
    sw.ask(customer, "granted").await;
    let dial = sw.dial("bic_uac_wait_bye.xml", NUMBER, customer, 1);
    let fail = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let calls = sw.node.calls();
            let mut live = None;
            for id in calls.ids() {
                if let Some(s) = calls.snapshot(&id).await {
                    if s.answered_at.is_some() {
                        live = Some(id);
                    }
                }
            }
            if let Some(id) = live {
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert!(calls.inject_fault(&id, ChildRole::Bridge, Fault::Panic));
                return id;
            }
            assert!(tokio::time::Instant::now() < deadline, "never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // The PBX gets its BYE from the failed bridge, so its scenario completes.
    let ((code, counters, log), id) = tokio::join!(dial, fail);
    common::assert_all_succeeded(code, &counters, &log, 1);
    // Meta was told to end the customer's call, which ended well before its 20 s.
    let call = next_answered(&mut answered).await;
    assert!(sw.actions("terminate").contains(&200));
    assert!(call.media.is_some());
    let finished = sw.finished(customer).await;
    // The customer did talk: the permission counts the call.
    assert_eq!(finished["outcome"], "connected", "{finished}");
    assert_eq!(sw.view(customer).await["calls_in_progress"], 0);
    let cdrs = cdrs(sw.node, dir.path()).await;
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].call_id, id.to_string());
    assert_eq!(cdrs[0].end_cause, "internal_failure");
    assert!(
        cdrs[0]
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("panic injected")),
        "{:?}",
        cdrs[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_waiting_for_the_customer_is_cancelled_when_they_go_on_the_dnc_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trunk = "[[trunk]]\nname = \"agents\"\nuri = \"sip:127.0.0.1:5997\"\n\
                 options_interval_secs = 0\n";
    let sw = Switch::start(dir.path(), 52_400, trunk).await;
    let (_users, _answered) = Users::start(
        sw.ctx.clone(),
        behaviour(
            CallAnswer::Ignore {
                ring: Duration::from_secs(15),
            },
            day(),
        ),
    );
    let customer = "4915100000801";
    sw.ask(customer, "granted").await;
    let (status, v) = sw
        .send(
            reqwest::Method::POST,
            "/v1/calls",
            Some(json!({"business_number": NUMBER, "wa_id": customer, "trunk": "agents", "user": "2001"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    // The customer's phone rings; the business puts them on the do-not-call list.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sw.actions("connect").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never placed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, v) = sw
        .send(
            reqwest::Method::PUT,
            &format!("/v1/dnc/{NUMBER}/{customer}"),
            Some(json!({"reason": "asked by email"})),
        )
        .await;
    assert!((200..300).contains(&status), "{v}");
    let finished = sw.finished(customer).await;
    assert_eq!(finished["outcome"], "failed", "{finished}");
    assert_eq!(finished["end_cause"], "do_not_call", "{finished}");
    assert!(sw.actions("terminate").contains(&200));
    // A new callback is refused at once.
    let (status, v) = sw
        .send(
            reqwest::Method::POST,
            "/v1/calls",
            Some(json!({"business_number": NUMBER, "wa_id": customer, "trunk": "agents"})),
        )
        .await;
    assert_eq!(
        (status, v["reason"].clone()),
        (403, json!("do_not_call")),
        "{v}"
    );
    let cdrs = cdrs(sw.node, dir.path()).await;
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    assert_eq!(cdrs[0].end_cause, "do_not_call");
    assert_eq!(cdrs[0].outcome, waswitch::store::CallOutcome::Unanswered);
}

/// A customer granted as `<wa_id>` is the customer a PBX dials as `00<wa_id>` (and a
/// do-not-call entry written as `+<wa_id>` holds for them). Opting out voids consent:
/// after the entry is removed, the INVITE is still refused until the customer grants
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_dialled_in_any_spelling_is_one_and_a_removed_dnc_entry_restores_no_consent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sw = Switch::start(
        dir.path(),
        52_800,
        "[permissions]\nrequests_per_day = 5\nrequests_per_week = 10\n",
    )
    .await;
    let (_users, mut answered) = Users::start(sw.ctx.clone(), behaviour(talk(), day()));
    let customer = "4915100000701";
    sw.ask(customer, "granted").await;

    // The PBX dials with the international prefix 00: the same customer, called.
    let (code, counters, log) = sw
        .dial("bic_uac_wait_bye.xml", NUMBER, &format!("00{customer}"), 1)
        .await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    let call = next_answered(&mut answered).await;
    assert!(call.media.is_some_and(|m| m.audio_verified()));
    let connect = sw
        .graph
        .recorded()
        .into_iter()
        .find(|r| r.action.as_deref() == Some("connect"))
        .expect("connect");
    assert_eq!(connect.body["to"], customer, "{:?}", connect.body);

    // Opted out (written with +), then the entry removed: still refused.
    let (status, v) = sw
        .send(
            reqwest::Method::PUT,
            &format!("/v1/dnc/{NUMBER}/+{customer}"),
            Some(json!({"reason": "asked not to be called"})),
        )
        .await;
    assert_eq!(
        (status, v["status"].clone()),
        (200, json!("withdrawn")),
        "{v}"
    );
    let (status, v) = sw
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/dnc/{NUMBER}/{customer}"),
            None,
        )
        .await;
    assert_eq!((status, v["dnc"].clone()), (200, json!(false)), "{v}");
    let (code, counters, log) = sw
        .dial("bic_uac_refused.xml", NUMBER, &format!("+{customer}"), 1)
        .await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    assert_refused(
        &log,
        "403 Forbidden - call permission withdrawn",
        "call permission withdrawn",
    );
    let records = sw.audit_until(customer, "call_blocked").await;
    let k = kinds(&records);
    let added = k.iter().position(|x| x == "dnc_added").expect("dnc_added");
    assert_eq!(k[added + 1], "withdrawn", "{k:?}");
    let voided = detail(&records[added + 1]);
    assert_eq!(
        voided["reason"], "do-not-call entry added: consent voided",
        "{voided}"
    );

    // A new grant, and the customer can be called again.
    sw.ask(customer, "granted").await;
    let (code, counters, log) = sw.dial("bic_uac_wait_bye.xml", NUMBER, customer, 1).await;
    common::assert_all_succeeded(code, &counters, &log, 1);
    let call = next_answered(&mut answered).await;
    assert!(call.media.is_some_and(|m| m.audio_verified()));

    // Not a number at all: 404 with the reason; cut short: 484.
    for (user, status) in [
        ("alice", "404 Not Found"),
        ("4915", "484 Address Incomplete"),
    ] {
        let (code, counters, log) = sw.dial("bic_uac_refused.xml", NUMBER, user, 1).await;
        common::assert_all_succeeded(code, &counters, &log, 1);
        assert!(
            log.contains(&format!("SIP/2.0 {status} - not a WhatsApp number")),
            "{log}"
        );
    }
    let cdrs = cdrs(sw.node, dir.path()).await;
    assert!(
        cdrs.iter()
            .all(|c| c.customer_wa_id.as_deref() == Some(customer)),
        "{cdrs:?}"
    );
}
