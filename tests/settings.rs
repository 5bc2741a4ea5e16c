//! A number's calling settings at Meta, through the REST API of a running node and through
//! `waswitch meta settings`, with the sim as Meta (its Graph API checks the `calling`
//! object as Meta documents).

mod common;

use serde_json::{json, Value};

const PNID: &str = "105615555715855";
const NUMBER: &str = "15551112222";
const TOKEN: &str = "settings-operator-token";
const APP_TOKEN: &str = "settings-app-token-000001";

fn toml(sim: std::net::SocketAddr) -> String {
    format!(
        r#"
[http]
api_token = "{TOKEN}"
[[api_token]]
name = "crm"
token = "{APP_TOKEN}"
business_numbers = ["{NUMBER}"]
scopes = ["calls", "cdrs", "permissions", "agents"]
[meta]
graph_url = "http://{sim}"
access_token = "tok"
app_secret = "settings-app-secret"
verify_token = "vt"
[[business_number]]
phone_number_id = "{PNID}"
display_number = "{NUMBER}"
country = "BR"
echo_test = true
[[schedule]]
name = "office"
timezone = "America/Sao_Paulo"
[[schedule.hours]]
day = "MONDAY"
open = "0900"
close = "1200"
[[schedule.hours]]
day = "MONDAY"
open = "1300"
close = "1800"
[[schedule.hours]]
day = "SATURDAY"
open = "0900"
close = "2359"
[[schedule.holidays]]
date = "2099-12-25"
start = "0000"
end = "2359"
"#
    )
}

/// `waswitch meta settings ARGS --config CONFIG`: exit code, standard output and error.
fn settings_cli(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_waswitch"));
    cmd.args(["meta", "settings"]).args(args);
    cmd.args(["--config", &config.to_string_lossy()]);
    let out = cmd.output().expect("waswitch");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn sim() -> (waswitch::sim::graph::SimGraph, std::net::SocketAddr) {
    let graph = waswitch::sim::graph::SimGraph::new(
        waswitch::config::Secret::new("tok"),
        vec![PNID.to_string()],
    );
    let addr = graph.serve_loopback().await.expect("sim");
    (graph, addr)
}

async fn call(
    http: &reqwest::Client,
    node: &waswitch::node::Node,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http
        .request(method, format!("http://{}{path}", node.http_addr()))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The operator sets a number's calling settings through the API, its calling hours from
/// a `[[schedule]]`; Meta (the sim) takes them, and the API reads back what Meta holds. The
/// SIP password comes only when asked for. Hours Meta refuses come back with Meta's own
/// error, and change nothing.
#[test]
fn calling_settings_round_trip_through_meta_and_metas_refusals_come_back_as_meta_wrote_them() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let (graph, sim_addr) = sim().await;
        let config = waswitch::config::Config::loopback(&toml(sim_addr), &dir.path().join("s.db"))
            .expect("config");
        let node = waswitch::node::Node::start(config).await.expect("node");
        let http = reqwest::Client::new();
        let path = format!("/v1/numbers/{PNID}/calling");
        let change = json!({
            "status": "ENABLED",
            "call_icon_visibility": "DISABLE_ALL",
            "call_icons": {"restrict_to_user_countries": ["BR", "PT"]},
            "callback_permission_status": "ENABLED",
            "call_hours": {"schedule": "office"},
            "sip": {"status": "ENABLED", "servers": [{"hostname": "sip.example.com", "port": 5061,
                     "request_uri_user_params": {"tgrp": "wacall"}}]},
            "srtp_key_exchange_protocol": "SDES",
            "audio": {"additional_codecs": ["PCMU"]},
        });
        let (status, held) = call(
            &http,
            &node,
            reqwest::Method::PUT,
            &path,
            TOKEN,
            Some(change),
        )
        .await;
        assert_eq!(status, 200, "{held}");
        assert_eq!(held["call_icon_visibility"], "DISABLE_ALL");
        assert_eq!(held["callback_permission_status"], "ENABLED");
        assert_eq!(held["srtp_key_exchange_protocol"], "SDES");
        assert_eq!(held["audio"]["additional_codecs"], json!(["PCMU"]));
        assert_eq!(
            held["call_hours"],
            json!({
                "status": "ENABLED",
                "timezone_id": "America/Sao_Paulo",
                "weekly_operating_hours": [
                    {"day_of_week": "MONDAY", "open_time": "0900", "close_time": "1200"},
                    {"day_of_week": "MONDAY", "open_time": "1300", "close_time": "1800"},
                    {"day_of_week": "SATURDAY", "open_time": "0900", "close_time": "2359"},
                ],
                "holiday_schedule": [
                    {"date": "2099-12-25", "start_time": "0000", "end_time": "2359"},
                ],
            })
        );
        // What Meta was sent is what it holds (the sim recorded the request).
        let sent = graph
            .recorded()
            .into_iter()
            .rfind(|r| r.endpoint == "settings" && r.action.as_deref() == Some("update"))
            .expect("the update reached Meta");
        assert_eq!(sent.body["calling"]["call_hours"], held["call_hours"]);
        // Read back by display number too; the password only when asked for.
        let (status, read) = call(
            &http,
            &node,
            reqwest::Method::GET,
            &format!("/v1/numbers/+{NUMBER}/calling"),
            TOKEN,
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(read, held);
        assert!(read["sip"]["servers"][0].get("sip_user_password").is_none());
        let (_, with) = call(
            &http,
            &node,
            reqwest::Method::GET,
            &format!("{path}?include_sip_credentials=true"),
            TOKEN,
            None,
        )
        .await;
        let password = with["sip"]["servers"][0]["sip_user_password"]
            .as_str()
            .expect("the SIP password");
        assert!(!password.is_empty());

        // Hours Meta refuses: its error, as it wrote it; the settings stay as they were.
        for (bad, says) in [
            (
                json!({"status": "ENABLED", "timezone_id": "America/Sao_Paulo",
                       "weekly_operating_hours": [
                         {"day_of_week": "MONDAY", "open_time": "0900", "close_time": "1200"},
                         {"day_of_week": "MONDAY", "open_time": "1100", "close_time": "1300"}]}),
                "overlap",
            ),
            (
                json!({"status": "ENABLED", "timezone_id": "Mars/Olympus_Mons",
                       "weekly_operating_hours": [
                         {"day_of_week": "MONDAY", "open_time": "0900", "close_time": "1200"}]}),
                "time zone",
            ),
            (
                json!({"status": "ENABLED", "timezone_id": "UTC",
                       "weekly_operating_hours": [
                         {"day_of_week": "MONDAY", "open_time": "0900", "close_time": "1000"}],
                       "holiday_schedule": [
                         {"date": "2001-01-01", "start_time": "0000", "end_time": "2359"}]}),
                "in the past",
            ),
            (
                json!({"status": "ENABLED", "timezone_id": "UTC",
                       "weekly_operating_hours": [
                         {"day_of_week": "MONDAY", "open_time": "0100", "close_time": "0200"},
                         {"day_of_week": "MONDAY", "open_time": "0300", "close_time": "0400"},
                         {"day_of_week": "MONDAY", "open_time": "0500", "close_time": "0600"}]}),
                "at most 2",
            ),
            (
                json!({"status": "SOMETIMES", "timezone_id": "UTC",
                       "weekly_operating_hours": []}),
                "call_hours.status",
            ),
        ] {
            let (status, body) = call(
                &http,
                &node,
                reqwest::Method::PUT,
                &path,
                TOKEN,
                Some(json!({"call_hours": bad})),
            )
            .await;
            assert_eq!(status, 400, "{body}");
            assert_eq!(body["meta"]["code"], 100, "{body}");
            assert_eq!(body["meta"]["message"], "Invalid parameter", "{body}");
            let details = body["meta"]["error_data"]["details"].as_str().unwrap_or("");
            assert!(details.contains(says), "{says}: {body}");
        }
        let (_, after) = call(&http, &node, reqwest::Method::GET, &path, TOKEN, None).await;
        assert_eq!(after, held, "a refused change changed nothing");

        // Ours to refuse before Meta hears of it: an unknown schedule, a number not
        // served, an app's token.
        let (status, body) = call(
            &http,
            &node,
            reqwest::Method::PUT,
            &path,
            TOKEN,
            Some(json!({"call_hours": {"schedule": "night"}})),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            body["error"].as_str().unwrap_or("").contains("office"),
            "{body}"
        );
        let (status, _) = call(
            &http,
            &node,
            reqwest::Method::GET,
            "/v1/numbers/999/calling",
            TOKEN,
            None,
        )
        .await;
        assert_eq!(status, 404);
        let (status, _) = call(&http, &node, reqwest::Method::GET, &path, APP_TOKEN, None).await;
        assert_eq!(status, 403);
        node.drain_and_stop().await;
    });
}

/// `waswitch meta settings get|set` against the sim: the settings as JSON on standard
/// output; a change Meta refuses exits 1 with Meta's error on standard error.
#[test]
fn the_command_line_reads_and_changes_the_settings() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_graph, sim_addr) = rt.block_on(sim());
    let config = dir.path().join("waswitch.toml");
    std::fs::write(&config, toml(sim_addr)).expect("config");
    let run = |args: &[&str]| settings_cli(&config, args);
    // The sim serves on the runtime's worker threads while the commands run.
    let (code, out, err) = run(&[
        "set",
        r#"{"callback_permission_status": "ENABLED", "call_hours": {"schedule": "office", "status": "DISABLED"}}"#,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let held: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(held["callback_permission_status"], "ENABLED");
    assert_eq!(held["call_hours"]["status"], "DISABLED");
    assert_eq!(held["call_hours"]["timezone_id"], "America/Sao_Paulo");
    let (code, out, _) = run(&["get", "--number", NUMBER]);
    assert_eq!(code, Some(0));
    assert_eq!(serde_json::from_str::<Value>(&out).expect("JSON"), held);
    let (code, _, err) = run(&[
        "set",
        r#"{"call_hours": {"status": "ENABLED", "timezone_id": "UTC", "weekly_operating_hours": []}}"#,
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("must not be empty") && err.contains("\"code\": 100"),
        "{err}"
    );
    let (code, _, err) = run(&["get", "--number", "999"]);
    assert_eq!(code, Some(2), "{err}");
    drop(rt);
}

#[test]
fn the_sip_password_is_fetched_into_a_file_the_number_reads_and_is_never_printed() {
    use std::os::unix::fs::PermissionsExt;
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_graph, sim_addr) = rt.block_on(sim());
    let config = dir.path().join("waswitch.toml");
    std::fs::write(&config, toml(sim_addr)).expect("config");
    let run = settings_cli;
    let file = dir.path().join("sip-password");
    let file_arg = file.to_string_lossy().into_owned();
    // No SIP server at Meta yet: nothing to fetch, and no file.
    let (code, _, err) = run(&config, &["get", "--save-sip-password", &file_arg]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no SIP server"), "{err}");
    assert!(!file.exists());
    let (code, _, err) = run(
        &config,
        &[
            "set",
            r#"{"status": "ENABLED", "sip": {"status": "ENABLED", "servers": [{"hostname": "sip.example.com", "port": 5061}]}}"#,
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = run(&config, &["get", "--include-sip-credentials"]);
    assert_eq!(code, Some(0));
    let shown: Value = serde_json::from_str(&out).expect("JSON");
    let password = shown["sip"]["servers"][0]["sip_user_password"]
        .as_str()
        .expect("Meta's password")
        .to_string();
    assert!(password.len() >= 8, "{shown}");

    let (code, out, err) = run(&config, &["get", "--save-sip-password", &file_arg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains(&password), "{out}");
    assert!(out.contains("saved to"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&file).expect("saved").trim(),
        password
    );
    let mode = std::fs::metadata(&file).expect("file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // A number in SIP mode reads it from there.
    let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls");
    let sip_mode = format!(
        "[sip]\ntransports = [\"udp\", \"tls\"]\n[sip.tls]\ncert = \"{tls}/server.pem\"\n\
         key = \"{tls}/server.key\"\nca = \"{tls}/ca.pem\"\n{}",
        toml(sim_addr)
            .replace("echo_test = true", &format!("echo_test = true\nsignaling = \"sip\"\nsrtp = \"dtls\"\nsip_password_file = \"{file_arg}\""))
            .replace("verify_token = \"vt\"", "verify_token = \"vt\"\n[meta.sip]\nhostname = \"sip.example.com\"")
    );
    let loaded = waswitch::config::Config::from_toml(&config, &sip_mode, |_| None).expect("valid");
    assert_eq!(loaded.business_numbers[0].sip_password.expose(), password);
    drop(rt);
}
