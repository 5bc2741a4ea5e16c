//! Call recording end to end: `waswitch sim` plays WhatsApp (a customer with real WebRTC
//! audio sending 440 Hz), baresip is the agent's phone at the PBX (answering with 1 kHz).
//! Checked on the customer's side (the consent announcement heard before the agent), in the
//! recording itself (Ogg Opus decoded: the customer on the left, the agent on the right, by
//! frequency), in the CDR (id, file, digest), on the signed webhook, and over the REST API
//! with scoped tokens; the policies `none` and `on_demand` through the API; Meta's own
//! recording fetched from the sim with the access token, checked and linked to the CDR; and
//! the bucket of an S3-compatible server (moto) taking uploads.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{cdr_of, free_udp_port, runtime, Uas};
use serde_json::{json, Value};
use waswitch::config::{Config, Secret};
use waswitch::node::Node;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load;
use waswitch::store::Cdr;

const SECRET: &str = "rec-meta-secret";
const PNID: &str = "105615555715855";
const NUMBER: &str = "15551112222";
const PNID2: &str = "105615555715856";
const NUMBER2: &str = "15551113333";
const TOKEN: &str = "rec-token-00000000001";
const OTHER_TOKEN: &str = "rec-other-token-00001";
const HOOK_SECRET: &str = "rec-hook-secret";

/// The customer's tone, the agent's (baresip's tone file), and the consent announcement's.
const CUSTOMER_HZ: f32 = 440.0;
const AGENT_HZ: f32 = 1000.0;
const CONSENT_HZ: f32 = 700.0;

/// The switch's configuration: number 1 (`record1`) and number 2 (`record2`) both routed
/// to `pbx`.
fn config(pbx: u16, media_ports: u16, sim: &str, dir: &Path, extra: &str) -> String {
    format!(
        r#"
[media]
ip = "127.0.0.1"
port_min = {media_ports}
port_max = {port_max}
[recording]
dir = "{rec}"
consent = "{consent}"
{extra}
[[trunk]]
name = "pbx"
uri = "sip:127.0.0.1:{pbx}"
options_interval_secs = 0
invite_timeout_ms = 3000
codecs = ["PCMU"]
[[route]]
name = "pbx"
trunks = ["pbx"]
[meta]
graph_url = "http://{sim}"
access_token = "tok"
app_secret = "{SECRET}"
verify_token = "vt"
[[business_number]]
phone_number_id = "{PNID}"
display_number = "{NUMBER}"
country = "BR"
route = "pbx"
record = "all"
[[business_number]]
phone_number_id = "{PNID2}"
display_number = "{NUMBER2}"
country = "BR"
route = "pbx"
[[api_token]]
name = "one"
token = "{TOKEN}"
business_numbers = ["{NUMBER}"]
[[api_token]]
name = "two"
token = "{OTHER_TOKEN}"
business_numbers = ["{NUMBER2}"]
"#,
        port_max = media_ports + 98,
        rec = dir.join("recordings").display(),
        consent = dir.join("consent.wav").display(),
    )
}

/// Starts the sim's Graph API and a node configured by `config(sim address)`.
fn start(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    config: impl FnOnce(&str) -> String,
) -> (SimGraph, Node, String) {
    common::write_tone_wav(&dir.join("consent.wav"), f64::from(CONSENT_HZ), 8000, 2);
    let graph = SimGraph::new(
        Secret::new("tok"),
        vec![PNID.to_string(), PNID2.to_string()],
    );
    let (node, sim) = rt.block_on(async {
        let sim = graph.serve_loopback().await.expect("sim Graph API");
        let toml = config(&sim.to_string());
        let config = Config::loopback(&toml, &dir.join("rec.db")).expect("config");
        (Node::start(config).await.expect("node"), sim.to_string())
    });
    (graph, node, sim)
}

fn cdrs(rt: &tokio::runtime::Runtime, node: Node, dir: &Path) -> Vec<Cdr> {
    common::cdrs_after(rt, node, &dir.join("rec.db"))
}

/// An Ogg Opus file's two channels, decoded at 8 kHz, the pre-skip dropped.
fn decode_stereo(bytes: &[u8]) -> (Vec<f32>, Vec<f32>) {
    let mut reader = ogg::PacketReader::new(std::io::Cursor::new(bytes));
    let head = reader.read_packet().expect("ogg").expect("OpusHead");
    assert_eq!(&head.data[..8], b"OpusHead");
    assert_eq!(head.data[9], 2, "stereo");
    let pre_skip = usize::from(u16::from_le_bytes([head.data[10], head.data[11]])) / 6;
    let tags = reader.read_packet().expect("ogg").expect("OpusTags");
    assert!(tags.data.starts_with(b"OpusTags"));
    let mut decoder = opus::Decoder::new(8000, opus::Channels::Stereo).expect("decoder");
    let mut pcm = vec![0i16; 960 * 2];
    let (mut left, mut right) = (Vec::new(), Vec::new());
    while let Some(packet) = reader.read_packet().expect("ogg") {
        let n = decoder
            .decode(&packet.data, &mut pcm, false)
            .expect("an Opus packet");
        for s in pcm[..n * 2].chunks_exact(2) {
            left.push(f32::from(s[0]) / 32768.0);
            right.push(f32::from(s[1]) / 32768.0);
        }
    }
    let skip = pre_skip.min(left.len());
    (left.split_off(skip), right.split_off(skip))
}

/// The share of `samples`' power at `hz`.
fn share(samples: &[f32], hz: f32) -> f32 {
    let total = samples.iter().map(|x| x * x).sum::<f32>() / samples.len().max(1) as f32;
    waswitch::media::quality::tone_power(samples, hz, 8000.0) / total.max(1e-12)
}

async fn get(url: &str, token: Option<&str>) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("GET");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.bytes().await.expect("body").to_vec(),
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Number 1 records every call (`all`): the customer hears the consent announcement, then
/// the agent; the file (Ogg Opus) has the customer's 440 Hz on the left and the agent's
/// 1 kHz on the right, and starts after the announcement; the CDR names it with its digest;
/// the signed `recording.ready` event announces it; it downloads only with number 1's
/// token, and a DELETE removes it with an audit record.
#[test]
fn consent_is_played_then_both_sides_are_recorded_on_their_channels() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("baresip");
    std::fs::create_dir_all(&work).expect("baresip dir");
    let pbx = free_udp_port();
    // The agent's phone answers calls to the business number.
    let (_baresip, log) = common::start_baresip_with(
        &work,
        pbx,
        "10200-10249",
        &[],
        NUMBER,
        ";audio_codecs=PCMU",
        "",
    );
    let (hook, posted) = rt.block_on(common::webhook_sink(false));
    let extra = format!("[cdr_webhook]\nurl = \"{hook}\"\nsecret = \"{HOOK_SECRET}\"\n");
    let (graph, node, _) = start(&rt, dir.path(), |sim| {
        config(pbx, 45_200, sim, dir.path(), "")
            + &extra.replace("[cdr_webhook]", "\n[cdr_webhook]")
    });
    let http = node.http_addr();
    let mut ctx = common::sim_context(&graph, http, SECRET, PNID, NUMBER);
    ctx.listen = vec![CONSENT_HZ, AGENT_HZ];
    ctx.expect_hz = AGENT_HZ;
    let r = rt.block_on(load::user_call(
        &ctx,
        "5511987654321",
        Duration::from_secs(6),
    ));
    let baresip_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(r.error, None, "{r:?}\n{baresip_log}");
    assert!(r.connected && r.audio_verified, "{r:?}");
    assert_eq!(
        r.tones.first(),
        Some(&(CONSENT_HZ as u32)),
        "consent first: {r:?}"
    );
    assert_eq!(
        r.tones.last(),
        Some(&(AGENT_HZ as u32)),
        "then the agent: {r:?}"
    );
    let cdrs = cdrs(&rt, node, dir.path());
    let cdr = cdr_of(&cdrs, &r.wa_call_id);
    let recording = cdr.recording.clone().expect("the CDR names the recording");
    let file = PathBuf::from(&recording.file);
    assert_eq!(file.extension().and_then(|e| e.to_str()), Some("ogg"));
    let bytes = std::fs::read(&file).expect("the recording's file");
    assert_eq!(
        sha256_hex(&bytes),
        recording.sha256,
        "the CDR's digest is the file's"
    );
    let (left, right) = decode_stereo(&bytes);
    let seconds = left.len() as f32 / 8000.0;
    // 6 s held, 2 s of announcement before the recording: about 4 s.
    assert!((2.5..=5.5).contains(&seconds), "{seconds} s recorded");
    let (l, r_) = (
        &left[left.len() / 4..left.len() * 3 / 4],
        &right[right.len() / 4..right.len() * 3 / 4],
    );
    assert!(
        share(l, CUSTOMER_HZ) > 0.5,
        "left: 440 Hz share {}",
        share(l, CUSTOMER_HZ)
    );
    assert!(
        share(l, AGENT_HZ) < 0.1,
        "left: 1 kHz share {}",
        share(l, AGENT_HZ)
    );
    assert!(
        share(r_, AGENT_HZ) > 0.5,
        "right: 1 kHz share {}",
        share(r_, AGENT_HZ)
    );
    assert!(
        share(r_, CUSTOMER_HZ) < 0.1,
        "right: 440 Hz share {}",
        share(r_, CUSTOMER_HZ)
    );
    assert!(
        share(&left, CONSENT_HZ) < 0.05 && share(&right, CONSENT_HZ) < 0.05,
        "the announcement is not in the recording"
    );
    // The signed event.
    let ready: Vec<Value> = posted
        .lock()
        .expect("posted")
        .iter()
        .filter_map(|(ts, sig, body)| {
            let v: Value = serde_json::from_slice(body).ok()?;
            (v["event"] == "recording.ready").then(|| {
                let expected =
                    waswitch::store::webhook::signature(HOOK_SECRET.as_bytes(), *ts, body);
                assert_eq!(sig, &expected, "signed");
                v
            })
        })
        .collect();
    assert_eq!(ready.len(), 1, "{ready:?}");
    assert_eq!(ready[0]["recording_id"], recording.id.as_str());
    assert_eq!(ready[0]["sha256"], recording.sha256.as_str());
    assert_eq!(ready[0]["business_number"], NUMBER);
    assert_eq!(ready[0]["call_id"], cdr.call_id.as_str());
    // Downloads and deletion, on a node started again over the same store.
    let (_graph, node, _) = start(&rt, dir.path(), |sim| {
        config(pbx, 45_200, sim, dir.path(), "")
    });
    let http = node.http_addr();
    let url = format!("http://{http}/v1/recordings/{}", recording.id);
    rt.block_on(async {
        assert_eq!(get(&url, None).await.0, 401, "no token");
        assert_eq!(
            get(&url, Some(OTHER_TOKEN)).await.0,
            403,
            "another number's token"
        );
        let (status, headers, body) = get(&url, Some(TOKEN)).await;
        assert_eq!(status, 200);
        assert_eq!(body, bytes, "the file as kept");
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("audio/ogg; codecs=opus")
        );
        let client = reqwest::Client::new();
        let other = client
            .delete(&url)
            .bearer_auth(OTHER_TOKEN)
            .send()
            .await
            .expect("DELETE");
        assert_eq!(other.status().as_u16(), 403);
        let deleted = client
            .delete(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("DELETE");
        assert_eq!(deleted.status().as_u16(), 204);
        assert_eq!(get(&url, Some(TOKEN)).await.0, 404, "gone");
        node.drain_and_stop().await;
    });
    assert!(!file.exists(), "the file is removed");
}

/// The live call of the sim's `wa_call_id`, by the switch's id (from `GET /v1/calls`).
async fn live_call(http: std::net::SocketAddr, token: &str, wa_call_id: &str) -> String {
    let client = reqwest::Client::new();
    for _ in 0..100 {
        let (status, body) = common::api(
            &client,
            format!("http://{http}/v1/calls"),
            token,
            reqwest::Method::GET,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let found = body["calls"].as_array().and_then(|calls| {
            calls
                .iter()
                .find(|c| {
                    let wa = c.get("wa_call_id").unwrap_or(&c["offer"]["wa_call_id"]);
                    wa == wa_call_id && !c["answered_at"].is_null()
                })
                .and_then(|c| c["call_id"].as_str().map(str::to_string))
        });
        if let Some(id) = found {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no answered live call for {wa_call_id}");
}

/// Number 2's calls follow the default (`on_demand`): nothing is recorded unless asked; a
/// start, a second start (409), a stop, and the CDR names what was recorded. With the
/// number set to `none`, a start is refused (403) and nothing is recorded.
#[test]
fn on_demand_records_only_between_start_and_stop_and_none_refuses() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let pbx = free_udp_port();
    let uas = Uas::start_with("b2bua_uas.xml", "u1", pbx, 3, &["-rtp_echo"]);
    let (graph, node, _) = start(&rt, dir.path(), |sim| {
        config(pbx, 45_400, sim, dir.path(), "").replace("consent = ", "# consent = ")
    });
    let http = node.http_addr();
    let ctx = common::sim_context(&graph, http, SECRET, PNID2, NUMBER2);
    let wa_ids = rt.block_on(async {
        let caller = load::user_call(&ctx, "5511911111111", Duration::from_secs(5));
        let control = async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let wa = graph_call(&graph, "5511911111111").await;
            let id = live_call(http, OTHER_TOKEN, &wa).await;
            let client = reqwest::Client::new();
            let url = format!("http://{http}/v1/calls/{id}/actions");
            let post = |body: Value| {
                common::api(
                    &client,
                    url.clone(),
                    OTHER_TOKEN,
                    reqwest::Method::POST,
                    Some(body),
                )
            };
            let stop_first = post(json!({"recording": "stop"})).await;
            assert_eq!(stop_first.0, 409, "{stop_first:?}");
            let started = post(json!({"recording": "start"})).await;
            assert_eq!(started.0, 202, "{started:?}");
            let again = post(json!({"recording": "start"})).await;
            assert_eq!(again.0, 409, "{again:?}");
            let bad = post(json!({"recording": "pause"})).await;
            assert_eq!(bad.0, 400, "{bad:?}");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let stopped = post(json!({"recording": "stop"})).await;
            assert_eq!(stopped.0, 202, "{stopped:?}");
            wa
        };
        let (r, wa) = tokio::join!(caller, control);
        assert_eq!(r.error, None, "{r:?}");
        // A call nobody asks to record.
        let quiet = load::user_call(&ctx, "5511922222222", Duration::from_secs(2)).await;
        assert_eq!(quiet.error, None, "{quiet:?}");
        (wa, quiet.wa_call_id)
    });
    let first = cdrs(&rt, node, dir.path());
    let recorded = cdr_of(&first, &wa_ids.0)
        .recording
        .clone()
        .expect("recorded on demand");
    let bytes = std::fs::read(&recorded.file).expect("file");
    assert_eq!(sha256_hex(&bytes), recorded.sha256);
    let (left, _) = decode_stereo(&bytes);
    let seconds = left.len() as f32 / 8000.0;
    assert!(
        (1.0..=2.5).contains(&seconds),
        "{seconds} s between start and stop"
    );
    assert!(
        cdr_of(&first, &wa_ids.1).recording.is_none(),
        "not asked, not recorded"
    );

    // The same number with record = "none".
    let dir2 = tempfile::tempdir().expect("tempdir");
    let (graph, node, _) = start(&rt, dir2.path(), |sim| {
        config(pbx, 45_400, sim, dir2.path(), "")
            .replace("consent = ", "# consent = ")
            .replace(
                &format!("display_number = \"{NUMBER2}\""),
                &format!("display_number = \"{NUMBER2}\"\nrecord = \"none\""),
            )
    });
    let http = node.http_addr();
    let ctx = common::sim_context(&graph, http, SECRET, PNID2, NUMBER2);
    let wa = rt.block_on(async {
        let caller = load::user_call(&ctx, "5511933333333", Duration::from_secs(3));
        let control = async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let wa = graph_call(&graph, "5511933333333").await;
            let id = live_call(http, OTHER_TOKEN, &wa).await;
            let refused = common::api(
                &reqwest::Client::new(),
                format!("http://{http}/v1/calls/{id}/actions"),
                OTHER_TOKEN,
                reqwest::Method::POST,
                Some(json!({"recording": "start"})),
            )
            .await;
            assert_eq!(refused.0, 403, "{refused:?}");
            assert!(refused.1.to_string().contains("none"), "{refused:?}");
            wa
        };
        let (r, wa) = tokio::join!(caller, control);
        assert_eq!(r.error, None, "{r:?}");
        wa
    });
    let refused = cdrs(&rt, node, dir2.path());
    assert!(cdr_of(&refused, &wa).recording.is_none());
    let left_over: Vec<_> = std::fs::read_dir(dir2.path().join("recordings"))
        .map(|d| d.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(left_over.is_empty(), "{left_over:?}");
    let (code, counts) = uas.finish();
    assert_eq!(code, Some(0), "{counts:?}");
}

/// Meta's id of the sim's latest call from `user`.
async fn graph_call(graph: &SimGraph, user: &str) -> String {
    for _ in 0..100 {
        if let Some(id) = graph.call_of_user(user) {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the sim has no call from {user}");
}

/// Meta's recording of a call: the sim announces it (`call_recording_available`, signed);
/// the switch fetches it with the access token, checks its SHA-256, keeps it and links it
/// to the call's CDR, and serves it to the number's token. One whose digest does not match
/// is not kept.
#[test]
fn metas_recording_is_fetched_checked_and_linked_to_the_cdr() {
    use base64::Engine;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let pbx = free_udp_port();
    let uas = Uas::start_with("b2bua_uas.xml", "u1", pbx, 1, &["-rtp_echo"]);
    let (graph, node, sim) = start(&rt, dir.path(), |sim| {
        config(pbx, 45_600, sim, dir.path(), "").replace("consent = ", "# consent = ")
    });
    let http = node.http_addr();
    let ctx = common::sim_context(&graph, http, SECRET, PNID2, NUMBER2);
    let r = rt.block_on(load::user_call(
        &ctx,
        "5511944444444",
        Duration::from_secs(2),
    ));
    assert_eq!(r.error, None, "{r:?}");
    // Meta's recording: any bytes stand for its Ogg Opus here; what matters is that the
    // switch gets exactly them.
    let audio: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = base64::engine::general_purpose::STANDARD.encode(sha2::Digest::finalize(
        <sha2::Sha256 as sha2::Digest>::new_with_prefix(&audio),
    ));
    let sim_base = format!("http://{sim}");
    let path = graph.add_media("9001", "audio/ogg; codecs=opus", audio.clone());
    let forged = graph.add_media("9002", "audio/ogg; codecs=opus", b"not it".to_vec());
    let business = waswitch::sim::webhooks::BusinessRef {
        waba_id: "1".into(),
        phone_number_id: PNID2.into(),
        display_number: NUMBER2.into(),
    };
    let sent = rt.block_on(async {
        // The call's CDR is written first (as with Meta, the recording comes after).
        tokio::time::sleep(Duration::from_millis(800)).await;
        let good = waswitch::sim::webhooks::call_media(
            &business,
            &r.wa_call_id,
            "5511944444444",
            (
                "9001",
                &sha,
                "audio/ogg; codecs=opus",
                &format!("{sim_base}{path}"),
            ),
            false,
        );
        let bad = waswitch::sim::webhooks::call_media(
            &business,
            &r.wa_call_id,
            "5511944444444",
            (
                "9002",
                &sha,
                "audio/ogg; codecs=opus",
                &format!("{sim_base}{forged}"),
            ),
            true,
        );
        let a = ctx.webhooks.deliver(&good).await;
        let b = ctx.webhooks.deliver(&bad).await;
        (a.delivered(), b.delivered())
    });
    assert_eq!(sent, (true, true), "both webhooks taken");
    // Fetched and linked.
    let url = format!("http://{http}/v1/recordings/meta-9001");
    let got = rt.block_on(async {
        for _ in 0..100 {
            let got = get(&url, Some(OTHER_TOKEN)).await;
            if got.0 == 200 {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("Meta's recording never kept");
    });
    assert_eq!(got.2, audio, "the bytes Meta served");
    rt.block_on(async {
        let metrics = common::metrics_text(http).await;
        assert!(
            metrics.contains(r#"waswitch_recordings_total{source="meta",outcome="failed"} 1"#),
            "the forged one is refused: {metrics}"
        );
        assert_eq!(
            get(
                &format!("http://{http}/v1/recordings/meta-9002"),
                Some(OTHER_TOKEN)
            )
            .await
            .0,
            404
        );
    });
    let cdrs = cdrs(&rt, node, dir.path());
    let cdr = cdr_of(&cdrs, &r.wa_call_id);
    assert_eq!(cdr.meta_recording_id.as_deref(), Some("meta-9001"));
    assert_eq!(
        cdr.meta_transcript_id, None,
        "the forged transcript is not linked"
    );
    let (code, counts) = uas.finish();
    assert_eq!(code, Some(0), "{counts:?}");
}

/// An S3-compatible server on loopback: moto (PyPI `moto[server]`, installed by `.ci/run`
/// at /opt/waswitch-moto, or on PATH), with bucket `bucket` made. Killed when dropped.
fn s3_server(port: u16, bucket: &str) -> common::KillOnDrop {
    let bin = std::env::var("WASWITCH_TEST_MOTO").unwrap_or_else(|_| {
        let venv = "/opt/waswitch-moto/bin/moto_server";
        if Path::new(venv).exists() {
            venv.to_string()
        } else {
            "moto_server".to_string()
        }
    });
    let child = std::process::Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin} (pip install 'moto[server]'; .ci/run does): {e}"));
    let server = common::KillOnDrop(child);
    let url = format!("http://127.0.0.1:{port}/{bucket}");
    let started = std::time::Instant::now();
    loop {
        let made = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "PUT",
                &url,
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if made == "200" {
            return server;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "moto did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With `storage = "s3"` a recording is uploaded to the bucket once final and its local
/// file removed; the CDR names the object, and the API serves it from the bucket. With the
/// bucket down, the recording stays local and the sweeper uploads it once it is back.
#[test]
fn recordings_go_to_an_s3_bucket_and_wait_locally_while_it_is_down() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let pbx = free_udp_port();
    let s3_port = free_udp_port();
    let uas = Uas::start_with("b2bua_uas.xml", "u1", pbx, 2, &["-rtp_echo"]);
    let bucket = s3_server(s3_port, "call-recordings");
    let s3 = format!(
        "storage = \"s3\"\nsweep_interval_secs = 1\n[recording.s3]\n\
         endpoint = \"http://127.0.0.1:{s3_port}\"\nregion = \"us-east-1\"\n\
         bucket = \"call-recordings\"\nprefix = \"calls/\"\n\
         access_key_id = \"test-key\"\nsecret_access_key = \"test-secret\"\n"
    );
    let (graph, node, _) = start(&rt, dir.path(), |sim| {
        config(pbx, 45_800, sim, dir.path(), &s3).replace("consent = ", "# consent = ")
    });
    let http = node.http_addr();
    let ctx = common::sim_context(&graph, http, SECRET, PNID, NUMBER);
    let files = || -> Vec<PathBuf> {
        std::fs::read_dir(dir.path().join("recordings"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let first = rt.block_on(load::user_call(
        &ctx,
        "5511955555555",
        Duration::from_secs(2),
    ));
    assert_eq!(first.error, None, "{first:?}");
    // Its call over and its recording uploaded, nothing stays on disk.
    rt.block_on(async {
        assert!(node.calls().wait_idle(Duration::from_secs(10)).await);
        for _ in 0..100 {
            if files().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the first recording stays on disk: {:?}", files());
    });
    // The bucket goes down; the next call's recording waits on disk.
    drop(bucket);
    let second = rt.block_on(load::user_call(
        &ctx,
        "5511966666666",
        Duration::from_secs(2),
    ));
    assert_eq!(second.error, None, "{second:?}");
    let local: Vec<PathBuf> = rt.block_on(async {
        assert!(node.calls().wait_idle(Duration::from_secs(10)).await);
        for _ in 0..100 {
            let files = files();
            let all_final = files
                .iter()
                .all(|f| f.extension().is_some_and(|e| e == "ogg"));
            if !files.is_empty() && all_final {
                return files;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the second recording is not kept locally: {:?}", files());
    });
    assert_eq!(local.len(), 1, "only the one not uploaded: {local:?}");
    // Back: the sweeper uploads it and removes the local file.
    let _bucket = s3_server(s3_port, "call-recordings");
    rt.block_on(async {
        for _ in 0..200 {
            if !local[0].exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the sweeper never uploaded {}", local[0].display());
    });
    let cdrs_seen = rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        node.calls().wait_idle(Duration::from_secs(10)).await
    });
    assert!(cdrs_seen);
    let store_db = dir.path().join("rec.db");
    let cdrs = common::cdrs_after(&rt, node, &store_db);
    // The restarted bucket is empty but for what the sweeper put there: the second call's.
    let second_rec = cdr_of(&cdrs, &second.wa_call_id)
        .recording
        .clone()
        .expect("recorded");
    let key = second_rec
        .file
        .strip_prefix("s3://call-recordings/")
        .unwrap_or_else(|| panic!("{} is not in the bucket", second_rec.file))
        .to_string();
    assert!(key.starts_with("calls/"), "{key}");
    // Read back from the bucket with the same credentials (objects are private).
    let object = rt.block_on(async {
        use futures::StreamExt;
        let bucket = waswitch::store::blobs::Blobs::new(&waswitch::config::RecordingStorage::S3(
            waswitch::config::S3Config {
                endpoint: Some(format!("http://127.0.0.1:{s3_port}")),
                region: "us-east-1".into(),
                bucket: "call-recordings".into(),
                prefix: "calls/".into(),
                access_key_id: Secret::new("test-key"),
                secret_access_key: Secret::new("test-secret"),
            },
        ))
        .expect("bucket client");
        let got = bucket.download(&key, false).await.expect("the object");
        let mut body = Vec::new();
        let mut chunks = got.chunks;
        while let Some(chunk) = chunks.next().await {
            body.extend_from_slice(&chunk.expect("chunk"));
        }
        assert_eq!(body.len() as u64, got.length);
        body
    });
    assert_eq!(
        sha256_hex(&object),
        second_rec.sha256,
        "the object is the recording"
    );
    let (left, _) = decode_stereo(&object);
    assert!(left.len() > 8000, "{} samples", left.len());
    assert!(cdr_of(&cdrs, &first.wa_call_id).recording.is_some());
    // The API serves it from the bucket.
    let (_graph, node, _) = start(&rt, dir.path(), |sim| {
        config(pbx, 45_800, sim, dir.path(), &s3).replace("consent = ", "# consent = ")
    });
    let http = node.http_addr();
    rt.block_on(async {
        let url = format!("http://{http}/v1/recordings/{}", second_rec.id);
        let (status, _, body) = get(&url, Some(TOKEN)).await;
        assert_eq!(status, 200);
        assert_eq!(body, object);
        node.drain_and_stop().await;
    });
    let (code, counts) = uas.finish();
    assert_eq!(code, Some(0), "{counts:?}");
}
