//! A real switch process killed with SIGKILL in each window of a business-initiated call's
//! life, then started again on the same store: the permission is settled from the last
//! stage the audit trail shows, no grant is over-used, nothing is left reserved, and the
//! trail still verifies.
//!
//! SIPp plays the PBX; the test itself plays Meta (the sim's Graph API and signed
//! webhooks) and the WhatsApp customer (real WebRTC media), so both outlive the switch.
//! The windows before Meta is asked and after a call has ended are held open by the
//! `fault-injection` pause points (`WASWITCH_TEST_PAUSE_AT`); the two in between are
//! reached by watching the trail.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use waswitch::config::Secret;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load::SimContext;
use waswitch::sim::users::{AnsweredCall, Behaviour, CallAnswer, PermissionAnswer, Users};

use common::KillOnDrop;

const SECRET: &str = "crash-secret";
const PNID: &str = "105615555715855";
const NUMBER: &str = "15551112222";
const TOKEN: &str = "crash-token";
const CUSTOMER: &str = "4915100000301";

/// A switch process on a store that survives it, with Meta and the customer in the test.
struct Crashable {
    dir: tempfile::TempDir,
    config: PathBuf,
    http: String,
    sip: std::net::SocketAddr,
    graph: SimGraph,
    ctx: SimContext,
    api: reqwest::Client,
    switch: Option<KillOnDrop>,
}

impl Crashable {
    async fn new(media_ports: u16) -> Crashable {
        let dir = tempfile::tempdir().expect("tempdir");
        let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
        let sim = graph.serve_loopback().await.expect("sim Graph API");
        let http = format!("127.0.0.1:{}", common::free_udp_port());
        let sip: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_udp_port())
            .parse()
            .expect("address");
        let config = dir.path().join("waswitch.toml");
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"{http}\"\napi_token = \"{TOKEN}\"\n\
                 [sip]\nlisten = \"{sip}\"\n\
                 [store]\nurl = \"sqlite://{}\"\n\
                 [media]\nip = \"127.0.0.1\"\nshards = 1\nport_min = {media_ports}\nport_max = {}\n\
                 [permissions]\nprofile = \"strict\"\n\
                 [[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5999\"\n\
                 accept_from = [\"127.0.0.1/32\"]\nbusiness_calls = true\noptions_interval_secs = 0\n\
                 [meta]\ngraph_url = \"http://{sim}\"\naccess_token = \"tok\"\n\
                 app_secret = \"{SECRET}\"\nverify_token = \"vt\"\n\
                 [[business_number]]\nphone_number_id = \"{PNID}\"\ndisplay_number = \"{NUMBER}\"\n\
                 country = \"BR\"\necho_test = true\n",
                dir.path().join("w.db").display(),
                media_ports + 98,
            ),
        )
        .expect("config");
        let ctx = common::sim_context(&graph, &http, SECRET, PNID, NUMBER);
        Crashable {
            dir,
            config,
            http,
            sip,
            graph,
            ctx,
            api: reqwest::Client::new(),
            switch: None,
        }
    }

    /// Starts the switch (paused for good at `pause`, if given) and waits until it answers.
    async fn start(&mut self, pause: Option<&str>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_waswitch"));
        cmd.args(["run", "--config"])
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = pause {
            cmd.env("WASWITCH_TEST_PAUSE_AT", p);
        }
        self.switch = Some(KillOnDrop(cmd.spawn().expect("spawn waswitch")));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self
                .api
                .get(format!("http://{}/ready", self.http))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the switch did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and the process reaped.
    fn kill_9(&mut self) {
        if let Some(mut s) = self.switch.take() {
            s.stop();
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        common::api(
            &self.api,
            format!("http://{}{path}", self.http),
            TOKEN,
            method,
            body,
        )
        .await
    }

    async fn view(&self) -> Value {
        let (status, v) = self
            .send(
                reqwest::Method::GET,
                &format!("/v1/permissions/{NUMBER}/{CUSTOMER}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn grant(&self) {
        let (code, v) = self
            .send(
                reqwest::Method::POST,
                &format!("/v1/permissions/{NUMBER}/{CUSTOMER}/request"),
                Some(json!({"purpose": "About your order"})),
            )
            .await;
        assert_eq!(code, 201, "{v}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.view().await["status"] != "granted" {
            assert!(Instant::now() < deadline, "never granted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn records(&self) -> Vec<Value> {
        let (status, v) = self
            .send(
                reqwest::Method::GET,
                &format!("/v1/audit?wa_id={CUSTOMER}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["records"].as_array().cloned().unwrap_or_default()
    }

    /// The customer's records once one of `kind` is among them.
    async fn until(&self, kind: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let records = self.records().await;
            if records.iter().any(|r| r["kind"] == kind) {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind}: {:?}",
                kinds(&records)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The PBX dials the customer in the background (killed when dropped).
    fn dial_in_background(&self) -> KillOnDrop {
        let stats = self
            .dir
            .path()
            .join(format!("{}.csv", uuid::Uuid::new_v4()));
        KillOnDrop(
            Command::new("sipp")
                .arg("-sf")
                .arg(common::scenario("bic_uac_wait_bye.xml"))
                .arg(self.sip.to_string())
                .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
                .args(["-p", &common::free_udp_port().to_string()])
                .args(["-mp", &common::free_udp_ports(4).to_string()])
                .args(["-key", "biz", NUMBER, "-s", CUSTOMER, "-t", "u1"])
                .args(["-m", "1", "-timeout", "60s", "-rtp_echo", "-nostdin"])
                .args(["-trace_stat", "-stf"])
                .arg(stats)
                .current_dir(self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sipp runs (Debian package sip-tester)"),
        )
    }

    /// The PBX dials the customer once more with `scenario`: SIPp's log of it.
    async fn dial(&self, scenario: &'static str) -> String {
        let target = self.sip;
        let log = self
            .dir
            .path()
            .join(format!("{}.log", uuid::Uuid::new_v4()));
        let path = log.clone();
        let (code, counters, out) = tokio::task::spawn_blocking(move || {
            common::run_sipp_with(
                scenario,
                "u1",
                target,
                1,
                10,
                &[
                    "-key",
                    "biz",
                    NUMBER,
                    "-s",
                    CUSTOMER,
                    "-rtp_echo",
                    "-trace_msg",
                    "-message_file",
                    &path.to_string_lossy(),
                ],
            )
        })
        .await
        .expect("sipp");
        let seen = std::fs::read_to_string(&log).unwrap_or_default();
        common::assert_all_succeeded(code, &counters, &format!("{seen}\n{out}"), 1);
        seen
    }

    fn connects(&self) -> usize {
        self.graph
            .recorded()
            .into_iter()
            .filter(|r| r.action.as_deref() == Some("connect"))
            .count()
    }

    /// `waswitch audit verify` on the store.
    fn verify(&self) {
        let out = Command::new(env!("CARGO_BIN_EXE_waswitch"))
            .args(["audit", "--config"])
            .arg(&self.config)
            .arg("verify")
            .current_dir(self.dir.path())
            .output()
            .expect("audit verify");
        assert!(out.status.success(), "{out:?}");
    }
}

fn kinds(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn detail(record: &Value) -> Value {
    serde_json::from_str(record["detail"].as_str().unwrap_or("{}")).unwrap_or(Value::Null)
}

/// The call id of the customer's one attempt.
fn attempt_id(records: &[Value]) -> String {
    records
        .iter()
        .find(|r| r["kind"] == "call_attempted")
        .map(detail)
        .and_then(|d| d["call_id"].as_str().map(str::to_string))
        .expect("call_attempted names its call")
}

fn behaviour(call: CallAnswer) -> Behaviour {
    Behaviour {
        call,
        permission: PermissionAnswer::Grant {
            lasts: Some(Duration::from_secs(86_400)),
        },
        dtmf: None,
    }
}

/// Kills the switch in a window, starts it again, and checks what the start settled: the
/// attempt's `call_finished` names it, has `outcome`, and says why; nothing is reserved;
/// the grant's calls used are `used`; the trail verifies. The attempt's record.
async fn restart_and_settle(sw: &mut Crashable, call_id: &str, outcome: &str, used: u64) -> Value {
    sw.kill_9();
    sw.start(None).await;
    let records = sw.until("call_finished").await;
    let finished: Vec<Value> = records
        .iter()
        .filter(|r| r["kind"] == "call_finished")
        .map(detail)
        .collect();
    assert_eq!(finished.len(), 1, "{finished:?}");
    let f = finished[0].clone();
    assert_eq!(f["call_id"], call_id, "{f}");
    assert_eq!(f["outcome"], outcome, "{f}");
    assert!(
        f["settled_at_start"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{f}"
    );
    let view = sw.view().await;
    assert_eq!(view["calls_in_progress"], 0, "{view}");
    assert_eq!(view["calls_used"], used, "{view}");
    sw.verify();
    f
}

/// The reproduction: strict profile, granted, the PBX calls, the customer answers
/// (`call_connected` is in the trail), the switch is killed and started again. The grant
/// is used: the next INVITE gets `403 … call permission used`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_customer_answered_the_one_call_grant_stays_used() {
    let mut sw = Crashable::new(53_000).await;
    sw.start(None).await;
    let (_users, _answered) = Users::start(
        sw.ctx.clone(),
        behaviour(CallAnswer::Accept {
            after: Duration::from_millis(300),
            // Long enough to outlast the kill; the test ends once the customer hangs up.
            hold: Duration::from_secs(3),
        }),
    );
    sw.grant().await;
    let _pbx = sw.dial_in_background();
    let records = sw.until("call_connected").await;
    let id = attempt_id(&records);
    assert_eq!(
        kinds(&records),
        [
            "requested",
            "granted",
            "call_attempted",
            "call_dialled",
            "call_connected"
        ]
    );
    let f = restart_and_settle(&mut sw, &id, "connected", 1).await;
    assert_eq!(f["stage"], "answered", "{f}");
    let log = sw.dial("bic_uac_refused.xml").await;
    assert!(
        log.contains("SIP/2.0 403 Forbidden - call permission used"),
        "{log}"
    );
    assert_eq!(sw.connects(), 1, "Meta asked to place a second call");
}

/// Killed after Meta was asked to place the call, before the customer answered: the
/// customer may have picked up while the switch was down, so the grant counts as used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_the_customer_rings_the_grant_counts_as_used() {
    let mut sw = Crashable::new(53_200).await;
    sw.start(None).await;
    let (_users, _answered) = Users::start(
        sw.ctx.clone(),
        behaviour(CallAnswer::Ignore {
            ring: Duration::from_secs(60),
        }),
    );
    sw.grant().await;
    let _pbx = sw.dial_in_background();
    let records = sw.until("call_dialled").await;
    let id = attempt_id(&records);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sw.connects() == 0 {
        assert!(Instant::now() < deadline, "Meta never asked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let f = restart_and_settle(&mut sw, &id, "unknown", 1).await;
    assert_eq!(f["stage"], "dialled", "{f}");
    let log = sw.dial("bic_uac_refused.xml").await;
    assert!(
        log.contains("SIP/2.0 403 Forbidden - call permission used"),
        "{log}"
    );
    // It counts toward the daily limit too.
    assert_eq!(sw.view().await["remaining"]["calls_today"], 99);
}

/// Killed after the reservation, before Meta was asked: the trail proves the call never
/// reached Meta, so the grant is given back, and a new call connects on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_meta_was_asked_the_grant_is_given_back() {
    let mut sw = Crashable::new(53_400).await;
    sw.start(Some("before_dial")).await;
    let (_users, mut answered) = Users::start(
        sw.ctx.clone(),
        behaviour(CallAnswer::Accept {
            after: Duration::from_millis(300),
            hold: Duration::from_secs(1),
        }),
    );
    sw.grant().await;
    let pbx = sw.dial_in_background();
    let records = sw.until("call_attempted").await;
    let id = attempt_id(&records);
    // Held at the pause point: nothing dialled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !kinds(&sw.records().await).contains(&"call_dialled".to_string()),
        "dialled"
    );
    assert_eq!(sw.connects(), 0);
    drop(pbx);
    let f = restart_and_settle(&mut sw, &id, "failed", 0).await;
    assert_eq!(f["stage"], "reserved", "{f}");
    assert_eq!(sw.view().await["remaining"]["calls_on_grant"], 1);
    // The grant given back is usable.
    sw.dial("bic_uac_wait_bye.xml").await;
    let call: AnsweredCall = tokio::time::timeout(Duration::from_secs(20), answered.recv())
        .await
        .expect("the customer's call ended in time")
        .expect("a call");
    assert!(call.media.is_some_and(|m| m.audio_verified()));
    assert_eq!(sw.connects(), 1);
}

/// Killed after the call ended, before its CDR and settlement were written: the answered
/// call counts as connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_call_ended_before_its_cdr_the_grant_is_used() {
    let mut sw = Crashable::new(53_600).await;
    sw.start(Some("before_cdr")).await;
    let (_users, mut answered) = Users::start(
        sw.ctx.clone(),
        behaviour(CallAnswer::Accept {
            after: Duration::from_millis(300),
            hold: Duration::from_secs(1),
        }),
    );
    sw.grant().await;
    let _pbx = sw.dial_in_background();
    let records = sw.until("call_connected").await;
    let id = attempt_id(&records);
    // The customer hangs up; the switch ends the call and stops before its CDR.
    tokio::time::timeout(Duration::from_secs(20), answered.recv())
        .await
        .expect("the customer's call ended in time")
        .expect("a call");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !kinds(&sw.records().await).contains(&"call_finished".to_string()),
        "settled before the pause point"
    );
    let f = restart_and_settle(&mut sw, &id, "connected", 1).await;
    assert_eq!(f["stage"], "answered", "{f}");
    let log = sw.dial("bic_uac_refused.xml").await;
    assert!(
        log.contains("SIP/2.0 403 Forbidden - call permission used"),
        "{log}"
    );
}
