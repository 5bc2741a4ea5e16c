//! Interop with a real libwebrtc: headless Chromium plays Meta's part. Its offer goes in as
//! the `session.sdp` of a user-initiated connect webhook; the switch's WebRTC leg answers; the
//! answer goes back to Chromium; ICE and DTLS complete; the leg sends a 1 kHz Opus tone and
//! Chromium sends a 440 Hz one. Chromium's `getStats` must show our packets and a non-zero
//! audio level, and the leg must decode Chromium's tone.
//!
//! Everything runs inside a network namespace holding only loopback (`unshare -n`): the test
//! re-runs itself there, so no ICE check can leave the machine. Chromium is driven over the
//! DevTools protocol on a pipe (`--remote-debugging-pipe`).

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use waswitch::media::webrtc::{LegOutput, WebRtcLeg, OPUS_PT};
use waswitch::meta::webhook::{self, MetaEvent, SdpType};
use waswitch::sim::webhooks::{ascii_json, user_call_connect, BusinessRef};

use common::chromium::{in_loopback_namespace, Chromium};

/// What the leg saw.
#[derive(Default)]
struct LegReport {
    connected: bool,
    packets_in: usize,
    decoded: Vec<f32>,
    packets_out: u64,
    /// RFC 4733 digits received, with their durations (8 kHz units).
    digits: Vec<(char, u32)>,
}

/// Runs the leg on its socket until `stop`: ICE/DTLS, a 1 kHz Opus tone out every 20 ms
/// once connected, Chromium's audio decoded.
fn run_leg(mut leg: WebRtcLeg, socket: UdpSocket, stop: Arc<AtomicBool>) -> LegReport {
    let mut report = LegReport::default();
    let mut encoder =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).expect("decoder");
    let dtmf_pt = leg.dtmf_pt();
    let mut dtmf = waswitch::media::dtmf::DtmfReceiver::default();
    let mut next_frame = Instant::now();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(30);
    socket
        .set_read_timeout(Some(Duration::from_millis(2)))
        .expect("timeout");
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        loop {
            match leg.poll().expect("leg") {
                LegOutput::Timeout(_) => break,
                LegOutput::Transmit { to, data } => {
                    let _ = socket.send_to(&data, to);
                }
                LegOutput::Connected => report.connected = true,
                LegOutput::Disconnected => return report,
                LegOutput::Rtp {
                    pt,
                    payload,
                    timestamp,
                    ..
                } if Some(pt) == dtmf_pt => {
                    if let Some(d) = dtmf.on_packet(timestamp, &payload) {
                        report.digits.push((d.digit, d.duration));
                    }
                }
                LegOutput::Rtp { pt, payload, .. } => {
                    report.packets_in += 1;
                    if pt == OPUS_PT {
                        let mut pcm = [0f32; 5760];
                        if let Ok(n) = decoder.decode_float(&payload, &mut pcm, false) {
                            report.decoded.extend_from_slice(&pcm[..n]);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            leg.handle_receive(Instant::now(), from, &buf[..n])
                .expect("input");
        }
        let now = Instant::now();
        leg.handle_timeout(now).expect("timeout");
        if report.connected && now >= next_frame {
            next_frame += Duration::from_millis(20);
            let k = report.packets_out;
            let tone: Vec<f32> = (0..960)
                .map(|i| {
                    let t = (k * 960 + i) as f32 / 48_000.0;
                    0.3 * (2.0 * std::f32::consts::PI * 1000.0 * t).sin()
                })
                .collect();
            let mut packet = [0u8; 1500];
            let len = encoder.encode_float(&tone, &mut packet).expect("encode");
            leg.send_rtp(
                now,
                OPUS_PT,
                1000 + k,
                (k * 960) as u32,
                k == 0,
                &packet[..len],
            )
            .expect("send");
            report.packets_out += 1;
        }
    }
    report
}

/// The page's side: a 440 Hz WebAudio tone on a peer connection, the far audio played.
const PAGE_SETUP: &str = "const ctx = new AudioContext();
     const osc = ctx.createOscillator(); osc.frequency.value = 440;
     const dst = ctx.createMediaStreamDestination(); osc.connect(dst); osc.start();
     const pc = new RTCPeerConnection({iceServers: []}); window.pc = pc;
     pc.addTrack(dst.stream.getAudioTracks()[0], dst.stream);
     pc.ontrack = (e) => { const a = new Audio(); a.srcObject = e.streams[0] || new MediaStream([e.track]); a.play().catch(() => {}); window.remote = a; };";

/// Waits for ICE gathering to end (every candidate in the SDP, as Meta does it).
const GATHERED: &str = "await new Promise((done) => {
       if (pc.iceGatheringState === 'complete') return done();
       pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
       setTimeout(done, 5000);
     });";

/// Waits for the connection, lets 2.5 s of audio flow, and reports Chromium's statistics.
const STATS: &str = "const t0 = Date.now();
     while (pc.connectionState !== 'connected' && Date.now() - t0 < 15000) {
       await new Promise((r) => setTimeout(r, 50));
     }
     const state = pc.connectionState;
     await new Promise((r) => setTimeout(r, 2500));
     let out = {state};
     (await pc.getStats()).forEach((s) => {
       if (s.type === 'inbound-rtp' && s.kind === 'audio') {
         out.packetsReceived = s.packetsReceived; out.audioLevel = s.audioLevel;
         out.totalAudioEnergy = s.totalAudioEnergy;
       }
       if (s.type === 'outbound-rtp' && s.kind === 'audio') out.packetsSent = s.packetsSent;
       if (s.type === 'transport') { out.dtlsState = s.dtlsState; out.dtlsRole = s.dtlsRole; }
     });
     return out;";

/// Runs the leg until Chromium has reported, then checks both directions.
fn exchange_and_check(
    chromium: &mut Chromium,
    leg: WebRtcLeg,
    socket: UdpSocket,
    before_stats: &str,
    chromium_dtls_role: &str,
) -> LegReport {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_leg = Arc::clone(&stop);
    let leg_thread = std::thread::spawn(move || run_leg(leg, socket, stop_leg));
    let stats = chromium.eval(&format!("{before_stats}\n{STATS}"));
    stop.store(true, Ordering::Relaxed);
    let report = leg_thread.join().expect("leg thread");
    eprintln!("chromium: {stats}");
    eprintln!(
        "leg: connected={} packets_in={} packets_out={}",
        report.connected, report.packets_in, report.packets_out
    );
    assert_eq!(stats["state"], "connected", "{stats}");
    assert_eq!(stats["dtlsState"], "connected", "{stats}");
    assert_eq!(stats["dtlsRole"], chromium_dtls_role, "{stats}");
    assert!(report.connected);
    let received = stats["packetsReceived"].as_u64().unwrap_or(0);
    assert!(received >= 50, "Chromium received our audio: {stats}");
    assert!(
        stats["totalAudioEnergy"].as_f64().unwrap_or(0.0) > 0.0
            && stats["audioLevel"].as_f64().unwrap_or(0.0) > 0.05,
        "our tone is audible in Chromium: {stats}"
    );
    assert!(report.packets_in >= 50, "we received Chromium's audio");
    // Chromium's 440 Hz dominates what we decoded (skip the codec's start-up).
    let tail = &report.decoded[report.decoded.len().min(48_000 / 2)..];
    assert!(tail.len() >= 24_000, "at least half a second decoded");
    let power = waswitch::media::quality::tone_power;
    let (p440, p1000) = (power(tail, 440.0, 48_000.0), power(tail, 1000.0, 48_000.0));
    assert!(
        p440 > 20.0 * p1000,
        "440 Hz from Chromium: {p440} vs {p1000}"
    );
    report
}

const NAME: &str = "chromium_as_meta_connects_to_our_answer_and_audio_flows_both_ways";

#[test]
fn chromium_as_meta_connects_to_our_answer_and_audio_flows_both_ways() {
    if !in_loopback_namespace(NAME) {
        return;
    }
    let mut chromium = Chromium::start();
    let offer = chromium.eval(&format!(
        "{PAGE_SETUP}
         await pc.setLocalDescription(await pc.createOffer());
         {GATHERED}
         return pc.localDescription.sdp;"
    ));
    let offer = offer.as_str().expect("an SDP offer").to_string();
    assert!(offer.contains("opus/48000"), "{offer}");

    // The offer travels as Meta's connect webhook does, and is read back by the switch.
    let business = BusinessRef {
        waba_id: "1".into(),
        phone_number_id: "105615555715855".into(),
        display_number: "15551112222".into(),
    };
    let body = ascii_json(&user_call_connect(
        &business,
        "wacid.CHROME",
        "4477001",
        "Test",
        &offer,
    ));
    let parsed = webhook::parse(&body).expect("webhook");
    let Some(MetaEvent::Connect(connect)) = parsed.events.into_iter().next() else {
        panic!("a connect event");
    };
    assert_eq!(connect.sdp_type, SdpType::Offer);

    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let leg = WebRtcLeg::accept_offer(
        &connect.sdp,
        socket.local_addr().expect("addr"),
        Instant::now(),
    )
    .expect("our answer");
    let answer = leg.local_sdp().to_string();
    assert!(answer.contains("a=setup:active"));
    let apply = format!(
        "await pc.setRemoteDescription({{type: 'answer', sdp: {}}});",
        json!(answer)
    );
    // Once connected, the user presses 1 and 5 (RFC 4733 on Meta's PT 126, 8000 Hz).
    let apply = format!(
        "{apply}
         const t1 = Date.now();
         while (pc.connectionState !== 'connected' && Date.now() - t1 < 15000) {{
           await new Promise((r) => setTimeout(r, 50));
         }}
         pc.getSenders()[0].dtmf.insertDTMF('15', 200, 100);"
    );
    // We answered active: Chromium is the DTLS server.
    let report = exchange_and_check(&mut chromium, leg, socket, &apply, "server");
    let keys: Vec<char> = report.digits.iter().map(|d| d.0).collect();
    assert_eq!(
        keys,
        ['1', '5'],
        "DTMF through the leg: {:?}",
        report.digits
    );
    // 200 ms asked at 8000 Hz units; Chromium rounds the tone up to its packet grid (it
    // reports 240 ms), so up to 60 ms more.
    assert!(
        report.digits.iter().all(|d| (1600..=2080).contains(&d.1)),
        "{:?}",
        report.digits
    );
}

const NAME_OFFER: &str = "chromium_answers_our_offer_and_audio_flows_both_ways";

#[test]
fn chromium_answers_our_offer_and_audio_flows_both_ways() {
    if !in_loopback_namespace(NAME_OFFER) {
        return;
    }
    let mut chromium = Chromium::start();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut leg =
        WebRtcLeg::offer(socket.local_addr().expect("addr"), Instant::now()).expect("offer");
    let answer = chromium.eval(&format!(
        "{PAGE_SETUP}
         await pc.setRemoteDescription({{type: 'offer', sdp: {offer}}});
         await pc.setLocalDescription(await pc.createAnswer());
         {GATHERED}
         return pc.localDescription.sdp;",
        offer = json!(leg.local_sdp())
    ));
    let answer = answer.as_str().expect("an SDP answer");
    assert!(
        answer.contains("a=rtpmap:126 telephone-event/8000"),
        "{answer}"
    );
    leg.accept_answer(answer).expect("answer applied");
    // Chromium answered `active` to our `actpass`: it is the DTLS client.
    exchange_and_check(&mut chromium, leg, socket, "", "client");
}

/// A running switch whose business number `PNID_NODE` is served as `number_toml` says
/// (an echo test, or a route), signalled through `graph` on loopback; its runtime, the
/// node, a signed webhook sender to it and the business.
fn running_switch(
    graph: &waswitch::sim::graph::SimGraph,
    dir: &std::path::Path,
    before_meta: &str,
    number_toml: &str,
) -> (
    tokio::runtime::Runtime,
    waswitch::node::Node,
    waswitch::sim::webhooks::WebhookSender,
    BusinessRef,
) {
    use waswitch::config::{Config, Secret};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let node = rt.block_on(async {
        let sim_addr = graph.serve_loopback().await.expect("sim Graph API");
        let toml = format!(
            "[media]\nip = \"127.0.0.1\"\n{before_meta}\
             [meta]\ngraph_url = \"http://{sim_addr}\"\naccess_token = \"tok\"\n\
             app_secret = \"sec\"\nverify_token = \"vt\"\n\
             [[business_number]]\nphone_number_id = \"{PNID_NODE}\"\n\
             display_number = \"15551112222\"\ncountry = \"BR\"\n{number_toml}\n"
        );
        let config = Config::loopback(&toml, &dir.join("c.db")).expect("config");
        waswitch::node::Node::start(config).await.expect("node")
    });
    let webhooks = waswitch::sim::webhooks::WebhookSender::new(
        &format!("http://{}/webhooks/meta", node.http_addr()),
        Secret::new("sec"),
        Duration::from_secs(10),
    )
    .expect("sender");
    let business = BusinessRef {
        waba_id: "1".into(),
        phone_number_id: PNID_NODE.into(),
        display_number: "15551112222".into(),
    };
    (rt, node, webhooks, business)
}

/// Meta's id of the business number of the running-switch tests.
const PNID_NODE: &str = "105615555715855";

const NAME_NODE: &str = "chromium_as_meta_calls_an_echo_number_of_a_running_switch";

/// The whole path of a user's call: Chromium's offer goes to a running switch as a signed
/// connect webhook; the switch answers in its media shards and sends the answer with
/// pre_accept and accept to the sim's Graph API; the answer goes back to Chromium; ICE and
/// DTLS complete and Chromium's tone comes back from the echo-test number (Chromium's
/// `getStats` shows the packets and the level); its DTMF reaches the switch.
#[test]
fn chromium_as_meta_calls_an_echo_number_of_a_running_switch() {
    if !in_loopback_namespace(NAME_NODE) {
        return;
    }
    use waswitch::config::Secret;
    use waswitch::sim::graph::SimGraph;
    use waswitch::sim::webhooks::{terminate, Ending};
    const PNID: &str = PNID_NODE;
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let (rt, node, webhooks, business) = running_switch(&graph, dir.path(), "", "echo_test = true");

    let mut chromium = Chromium::start();
    let offer = chromium.eval(&format!(
        "{PAGE_SETUP}
         await pc.setLocalDescription(await pc.createOffer());
         {GATHERED}
         return pc.localDescription.sdp;"
    ));
    let offer = offer.as_str().expect("an SDP offer").to_string();
    let wa_call_id = graph.place_user_call(PNID, "4477001", &offer);
    let connect = user_call_connect(&business, &wa_call_id, "4477001", "Test", &offer);
    let answer = rt.block_on(async {
        assert!(webhooks.deliver(&connect).await.delivered());
        graph
            .wait_call(&wa_call_id, Duration::from_secs(10), |c| c.answer.is_some())
            .await
            .and_then(|c| c.answer)
            .expect("the switch pre-accepted with an answer")
    });
    assert!(answer.contains("a=setup:active"), "{answer}");
    let apply = format!(
        "await pc.setRemoteDescription({{type: 'answer', sdp: {}}});
         const t1 = Date.now();
         while (pc.connectionState !== 'connected' && Date.now() - t1 < 15000) {{
           await new Promise((r) => setTimeout(r, 50));
         }}
         pc.getSenders()[0].dtmf.insertDTMF('15', 200, 100);",
        json!(answer)
    );
    let stats = chromium.eval(&format!("{apply}\n{STATS}"));
    eprintln!("chromium: {stats}");
    assert_eq!(stats["state"], "connected", "{stats}");
    assert_eq!(stats["dtlsRole"], "server", "{stats}");
    assert!(
        stats["packetsReceived"].as_u64().unwrap_or(0) >= 50,
        "Chromium received the switch's audio: {stats}"
    );
    assert!(
        stats["audioLevel"].as_f64().unwrap_or(0.0) > 0.05,
        "its echoed tone is audible: {stats}"
    );

    let call = node
        .calls()
        .registry()
        .by_wa_call_id(&wa_call_id)
        .expect("a live call");
    let snapshot = rt.block_on(node.calls().snapshot(&call)).expect("snapshot");
    let media = snapshot.media.expect("media");
    let keys: Vec<(char, char)> = media.digits.iter().map(|d| (d.side, d.digit)).collect();
    assert_eq!(keys, [('a', '1'), ('a', '5')], "{:?}", media.digits);
    assert!(media.stats.is_some_and(|s| s[0].packets_in >= 100));
    let actions: Vec<String> = graph
        .recorded()
        .iter()
        .filter_map(|r| r.action.clone())
        .collect();
    assert_eq!(actions, ["pre_accept", "accept"]);

    // The user hangs up.
    let ending = Ending {
        business_initiated: false,
        user: "4477001".into(),
        talked: Some((1, 3)),
        error: None,
        opaque: None,
    };
    rt.block_on(async {
        assert!(webhooks
            .deliver(&terminate(&business, &wa_call_id, &ending))
            .await
            .delivered());
        assert!(node.calls().wait_idle(Duration::from_secs(5)).await);
        node.drain_and_stop().await;
    });
}

const NAME_BARESIP: &str = "chromium_as_the_customer_reaches_a_baresip_agent_through_the_switch";

/// The product's first flow with real peers on both ends: Chromium plays the customer on
/// WhatsApp (its offer in a signed connect webhook), the switch delivers the call as SIP to
/// baresip, an auto-answering agent phone. Chromium's 440 Hz reaches the agent (baresip
/// records what it decodes) and the agent's 1 kHz reaches Chromium (its analyser finds the
/// peak); the customer hangs up and the agent's phone gets the BYE.
#[test]
fn chromium_as_the_customer_reaches_a_baresip_agent_through_the_switch() {
    if !in_loopback_namespace(NAME_BARESIP) {
        return;
    }
    use waswitch::config::{Config, Secret};
    use waswitch::sim::graph::{SimCallState, SimGraph};
    use waswitch::sim::webhooks::{terminate, Ending};
    use waswitch::store::{CallOutcome, CdrFilter, CdrRepository, HangupParty, Store};
    const PNID: &str = PNID_NODE;
    const AGENT_PORT: u16 = 5090;

    // The agent's phone: baresip answers every call, plays 1 kHz from a file and records
    // what it decodes (sndfile), on loopback only.
    let work = tempfile::tempdir().expect("workdir");
    let (mut baresip, log_path) = common::start_baresip(
        work.path(),
        AGENT_PORT,
        "10000-10099",
        &[],
        ";audio_codecs=PCMU,PCMA",
    );
    let baresip_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let dir = tempfile::tempdir().expect("tempdir");
    let graph = SimGraph::new(Secret::new("tok"), vec![PNID.to_string()]);
    let trunk = format!(
        "[[trunk]]\nname = \"agents\"\nuri = \"sip:agent@127.0.0.1:{AGENT_PORT}\"\n\
         options_interval_secs = 0\n[[route]]\nname = \"support\"\ntrunks = [\"agents\"]\n"
    );
    let (rt, node, webhooks, business) =
        running_switch(&graph, dir.path(), &trunk, "route = \"support\"");

    // The customer calls: Chromium's offer goes in as Meta's connect webhook.
    let mut chromium = Chromium::start();
    let offer = chromium.eval(&format!(
        "{PAGE_SETUP}
         await pc.setLocalDescription(await pc.createOffer());
         {GATHERED}
         return pc.localDescription.sdp;"
    ));
    let offer = offer.as_str().expect("an SDP offer").to_string();
    let wa_call_id = graph.place_user_call(PNID, "4477002", &offer);
    let connect = user_call_connect(&business, &wa_call_id, "4477002", "Customer", &offer);
    let answer = rt.block_on(async {
        assert!(webhooks.deliver(&connect).await.delivered());
        // baresip answers at once: the switch pre-accepts on its 180 and accepts on its 200.
        graph
            .wait_call(&wa_call_id, Duration::from_secs(10), |c| {
                c.state == SimCallState::Active
            })
            .await
            .and_then(|c| c.answer)
    });
    let Some(answer) = answer else {
        panic!(
            "the switch accepted with an answer; Meta saw {:?}; baresip:\n{}",
            graph.recorded(),
            baresip_log()
        );
    };
    let stats = chromium.eval(&format!(
        "await pc.setRemoteDescription({{type: 'answer', sdp: {answer}}});
         {stats}
         const ctx = new AudioContext();
         const analyser = ctx.createAnalyser(); analyser.fftSize = 8192;
         ctx.createMediaStreamSource(window.remote.srcObject).connect(analyser);
         await new Promise((r) => setTimeout(r, 1000));
         const bins = new Float32Array(analyser.frequencyBinCount);
         analyser.getFloatFrequencyData(bins);
         let peak = 1;
         for (let i = 1; i < bins.length; i++) if (bins[i] > bins[peak]) peak = i;
         out.peakHz = peak * ctx.sampleRate / analyser.fftSize;
         return out;",
        answer = json!(answer),
        // The statistics, then a look at the spectrum before they are returned.
        stats = STATS.trim_end().trim_end_matches("return out;")
    ));
    eprintln!("chromium: {stats}");
    assert_eq!(stats["state"], "connected", "{stats}");
    assert!(
        stats["packetsReceived"].as_u64().unwrap_or(0) >= 50,
        "Chromium received the agent's audio: {stats}"
    );
    assert!(
        stats["audioLevel"].as_f64().unwrap_or(0.0) > 0.05,
        "the agent is audible: {stats}"
    );
    let peak = stats["peakHz"].as_f64().unwrap_or(0.0);
    assert!(
        (960.0..=1040.0).contains(&peak),
        "the agent's 1 kHz is what Chromium hears: {stats}"
    );
    let acts: Vec<String> = graph
        .recorded()
        .iter()
        .filter_map(|r| r.action.clone())
        .collect();
    assert_eq!(acts, ["pre_accept", "accept"]);

    // The customer hangs up: the agent's phone gets the BYE.
    let ending = Ending {
        business_initiated: false,
        user: "4477002".into(),
        talked: Some((1, 4)),
        error: None,
        opaque: None,
    };
    let cdrs = rt.block_on(async {
        assert!(webhooks
            .deliver(&terminate(&business, &wa_call_id, &ending))
            .await
            .delivered());
        assert!(node.calls().wait_idle(Duration::from_secs(10)).await);
        node.drain_and_stop().await;
        let config = Config::loopback("", &dir.path().join("c.db")).expect("config");
        let store = Store::open(&config.store).await.expect("store");
        store
            .list(&CdrFilter {
                limit: 10,
                ..CdrFilter::default()
            })
            .await
            .expect("CDRs")
    });
    let ended = Instant::now();
    while !baresip_log().contains("terminated") {
        assert!(
            ended.elapsed() < Duration::from_secs(5),
            "baresip saw the BYE: {}",
            baresip_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    baresip.stop();
    let log = baresip_log();
    assert!(log.contains("Call established"), "{log}");

    // What the agent heard: Chromium's 440 Hz, transcoded to PCMU by the switch.
    let heard =
        common::baresip_recording(work.path()).expect("baresip's recording of what it decoded");
    let (samples, rate) = common::read_wav(&heard);
    assert!(
        samples.len() as f32 >= rate * 2.0,
        "at least 2 s recorded: {}",
        samples.len()
    );
    let tail = &samples[samples.len() / 4..];
    let power = waswitch::media::quality::tone_power;
    let (p440, p1000) = (power(tail, 440.0, rate), power(tail, 1000.0, rate));
    assert!(
        p440 > 20.0 * p1000 && p440 > 1e-4,
        "the agent heard Chromium's 440 Hz: {p440} vs {p1000}"
    );

    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr.outcome, CallOutcome::Answered, "{cdr:?}");
    assert_eq!(cdr.trunk.as_deref(), Some("agents"));
    assert_eq!(cdr.hangup_by, HangupParty::Customer);
    assert_eq!(cdr.customer_wa_id.as_deref(), Some("4477002"));
    assert_eq!(
        cdr.codec_path.as_deref(),
        Some("opus <-> PCMU (transcoded)")
    );
}
