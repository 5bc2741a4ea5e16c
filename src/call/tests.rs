//! Call-plane behaviour on a real node (SQLite store in a temp dir, real actors).

use std::path::Path;
use std::time::Duration;

use ractor::ActorRef;

use super::leg::{LegSignal, LegState};
use super::supervisor::{CallMsg, ChildRole};
use super::{CallId, CallOffer, CallPlan, CallRefused, Calls, Fault, LegRole};
use crate::config::{Config, StoreUrl};
use crate::node::root::{RootMsg, Service};
use crate::node::Node;
use crate::store::writer::CdrWriterMsg;
use crate::store::{CallOutcome, CdrFilter, CdrRepository, Direction, HangupParty};
use crate::telemetry;

async fn test_node(dir: &Path, grace: Duration) -> Node {
    test_node_with(dir, grace, |_| {}).await
}

/// A node on loopback with a SQLite store in `dir`, after `tweak` adjusts its config.
async fn test_node_with(dir: &Path, grace: Duration, tweak: impl FnOnce(&mut Config)) -> Node {
    let mut config = Config::loopback("", Path::new(&sqlite_path(dir))).expect("defaults");
    config.store.cdr_flush_interval = Duration::from_millis(20);
    config.shutdown.grace = grace;
    tweak(&mut config);
    Node::start(config).await.expect("node starts")
}

fn sqlite_path(dir: &Path) -> String {
    dir.join("calls.db").to_string_lossy().into_owned()
}

fn offer(direction: Direction) -> CallOffer {
    CallOffer {
        business_number: Some("15550001111".into()),
        customer_wa_id: Some("4915112345678".into()),
        ..CallOffer::new(direction)
    }
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The node's root supervisor, the parent of the calls.
fn root(calls: &Calls) -> ActorRef<RootMsg> {
    calls.parent().clone().into()
}

async fn flush(calls: &Calls) -> u64 {
    let writer = root(calls)
        .call(RootMsg::CdrWriter, Some(Duration::from_secs(5)))
        .await
        .expect("root answers")
        .unwrap()
        .expect("writer running");
    writer
        .call(CdrWriterMsg::Flush, Some(Duration::from_secs(30)))
        .await
        .expect("writer answers")
        .unwrap()
        .expect("flush succeeds")
}

async fn admit(calls: &Calls, direction: Direction) -> CallId {
    calls
        .start(offer(direction), CallPlan::Signalled(direction))
        .await
        .expect("admitted")
}

/// The stored CDR of a call (after a flush).
async fn cdr_of(node: &Node, id: &CallId) -> crate::store::Cdr {
    node.store()
        .get(id.as_str())
        .await
        .expect("query")
        .expect("the call has a CDR")
}

async fn answer(calls: &Calls, id: &CallId, called: LegRole) {
    assert!(calls.signal(id, called, LegSignal::Ringing));
    assert!(calls.signal(id, called, LegSignal::Answered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_calls_forty_failures_isolated_exactly_one_cdr_each() {
    const CALLS: usize = 2000;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = test_node(dir.path(), Duration::from_secs(1)).await;
    let calls = node.calls().clone();
    let failures_before = telemetry::metric_sum(telemetry::ACTOR_FAILURES_TOTAL, "");

    let starts = (0..CALLS).map(|i| {
        let calls = calls.clone();
        async move {
            let direction = if i % 2 == 0 {
                Direction::UserInitiated
            } else {
                Direction::BusinessInitiated
            };
            let id = calls
                .start(offer(direction), CallPlan::Signalled(direction))
                .await
                .expect("call admitted");
            answer(&calls, &id, LegRole::called(direction)).await;
            (id, direction)
        }
    });
    let ids: Vec<(CallId, Direction)> = futures::future::join_all(starts).await;
    assert_eq!(calls.active(), CALLS);
    assert_eq!(
        telemetry::metric_sum(telemetry::CALLS_ACTIVE, ""),
        CALLS as f64
    );
    assert_eq!(calls.ports().in_use(), 2 * CALLS);

    // 20 panics and 20 errors, spread over every kind of child.
    let children = [
        ChildRole::Leg(LegRole::WhatsApp),
        ChildRole::Leg(LegRole::Business),
        ChildRole::Media,
    ];
    let mut failed = Vec::new();
    for k in 0..40 {
        let (id, _) = &ids[k * 47 + 3];
        let fault = if k < 20 { Fault::Panic } else { Fault::Error };
        let child = children[k % 3];
        let supervisor = calls.registry().get(id).expect("live call");
        supervisor
            .send_message(CallMsg::Fault { child, fault })
            .expect("supervisor takes messages");
        failed.push(id.clone());
    }
    wait_until("40 failed calls to close", Duration::from_secs(30), || {
        calls.active() == CALLS - 40
    })
    .await;

    // Every other call still answers, through its supervisor, both legs and media.
    let survivors: Vec<_> = ids.iter().filter(|(id, _)| !failed.contains(id)).collect();
    assert_eq!(survivors.len(), CALLS - 40);
    let snaps = futures::future::join_all(survivors.iter().map(|(id, _)| calls.snapshot(id))).await;
    for (snap, (id, _)) in snaps.iter().zip(&survivors) {
        let snap = snap
            .as_ref()
            .unwrap_or_else(|| panic!("call {id} stopped answering"));
        assert_eq!(snap.whatsapp_leg, Some(LegState::Answered), "{id}");
        assert_eq!(snap.business_leg, Some(LegState::Answered), "{id}");
        assert!(snap.media.is_some(), "{id}");
        assert!(snap.answered_at.is_some(), "{id}");
    }
    let failures = telemetry::metric_sum(telemetry::ACTOR_FAILURES_TOTAL, "") - failures_before;
    assert_eq!(failures, 40.0, "waswitch_actor_failures_total");
    // Failed calls release their ports (a child's state is dropped as it stops).
    wait_until(
        "failed calls' ports to return",
        Duration::from_secs(10),
        || calls.ports().in_use() == 2 * (CALLS - 40),
    )
    .await;

    // The rest hang up: half by the customer, half by the business, a few by the API.
    for (n, (id, _)) in survivors.iter().enumerate() {
        match n % 3 {
            0 => assert!(calls.signal(
                id,
                LegRole::WhatsApp,
                LegSignal::HungUp {
                    cause: "normal_clearing".into()
                }
            )),
            1 => assert!(calls.signal(
                id,
                LegRole::Business,
                LegSignal::HungUp {
                    cause: "normal_clearing".into()
                }
            )),
            _ => assert!(calls.hangup(id, HangupParty::Business, "api_hangup").await),
        }
    }
    assert!(calls.wait_idle(Duration::from_secs(30)).await, "calls left");
    assert_eq!(calls.registry().len(), 0);
    assert_eq!(telemetry::metric_sum(telemetry::CALLS_ACTIVE, ""), 0.0);
    wait_until("every port to return", Duration::from_secs(10), || {
        calls.ports().in_use() == 0
    })
    .await;

    flush(&calls).await;
    let store = node.store().clone();
    let all = CdrFilter {
        limit: 10_000,
        ..CdrFilter::default()
    };
    assert_eq!(store.count(&all).await.expect("count"), CALLS as u64);
    let failed_filter = CdrFilter {
        outcome: Some(CallOutcome::Failed),
        limit: 10_000,
        ..CdrFilter::default()
    };
    let failed_cdrs = store.list(&failed_filter).await.expect("list");
    assert_eq!(failed_cdrs.len(), 40);
    let mut panicked = 0;
    for cdr in &failed_cdrs {
        assert!(failed.iter().any(|id| id.as_str() == cdr.call_id));
        let failure = cdr.failure.as_deref().expect("failure cause");
        assert!(
            ["wa_leg failed", "sip_leg failed", "media failed"]
                .iter()
                .any(|p| failure.starts_with(p)),
            "{failure}"
        );
        panicked += usize::from(failure.contains("panic injected"));
        assert_eq!(cdr.hangup_by, HangupParty::Switch);
        assert_eq!(cdr.end_cause, "internal_failure");
    }
    assert_eq!(panicked, 20);
    let answered = CdrFilter {
        outcome: Some(CallOutcome::Answered),
        limit: 10_000,
        ..CdrFilter::default()
    };
    let answered = store.list(&answered).await.expect("list");
    assert_eq!(answered.len(), CALLS - 40);
    assert!(answered
        .iter()
        .all(|c| c.failure.is_none() && c.answered_at.is_some()));
    assert_eq!(
        answered
            .iter()
            .filter(|c| c.hangup_by == HangupParty::Customer)
            .count(),
        survivors.len().div_ceil(3)
    );

    let report = node.drain_and_stop().await;
    assert!(report.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legs_are_coordinated_and_the_cdr_tells_the_story() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = test_node(dir.path(), Duration::from_secs(1)).await;
    let calls = node.calls().clone();

    // Customer calls the business; the agent rings, answers, the customer hangs up.
    let id = admit(&calls, Direction::UserInitiated).await;
    let snap = calls.snapshot(&id).await.expect("snapshot");
    assert_eq!(snap.whatsapp_leg, Some(LegState::Offered));
    calls.signal(&id, LegRole::Business, LegSignal::Ringing);
    calls.signal(&id, LegRole::Business, LegSignal::Answered);
    // A 180 overtaken by its 200 does nothing.
    calls.signal(&id, LegRole::Business, LegSignal::Ringing);
    let mut snap = calls.snapshot(&id).await.expect("snapshot");
    for _ in 0..100 {
        if snap.whatsapp_leg == Some(LegState::Answered) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        snap = calls.snapshot(&id).await.expect("snapshot");
    }
    assert_eq!(
        snap.whatsapp_leg,
        Some(LegState::Answered),
        "WA leg answered when the agent did"
    );
    assert_eq!(snap.business_leg, Some(LegState::Answered));
    assert!(snap.ringing_at.is_some() && snap.answered_at >= snap.ringing_at);
    tokio::time::sleep(Duration::from_millis(30)).await;
    calls.signal(
        &id,
        LegRole::WhatsApp,
        LegSignal::HungUp {
            cause: "normal_clearing".into(),
        },
    );
    assert!(calls.wait_idle(Duration::from_secs(5)).await);

    // Business calls a customer who declines.
    let declined = admit(&calls, Direction::BusinessInitiated).await;
    calls.signal(&declined, LegRole::WhatsApp, LegSignal::Ringing);
    calls.signal(
        &declined,
        LegRole::WhatsApp,
        LegSignal::HungUp {
            cause: "declined".into(),
        },
    );
    assert!(calls.wait_idle(Duration::from_secs(5)).await);
    assert!(!calls.signal(&declined, LegRole::WhatsApp, LegSignal::Answered));

    flush(&calls).await;
    let cdr = cdr_of(&node, &id).await;
    assert_eq!(cdr.outcome, CallOutcome::Answered);
    assert_eq!(cdr.hangup_by, HangupParty::Customer);
    assert_eq!(cdr.end_cause, "normal_clearing");
    assert_eq!(cdr.business_number.as_deref(), Some("15550001111"));
    assert!(cdr.duration_ms >= 30, "talk time {}", cdr.duration_ms);
    assert!(cdr.offered_at <= cdr.ringing_at.unwrap());
    assert!(cdr.answered_at.unwrap() <= cdr.ended_at);
    let cdr = cdr_of(&node, &declined).await;
    assert_eq!(cdr.outcome, CallOutcome::Unanswered);
    assert_eq!(cdr.hangup_by, HangupParty::Customer);
    assert_eq!(cdr.end_cause, "declined");
    assert_eq!(cdr.duration_ms, 0);
    assert!(node.drain_and_stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_call_supervisor_is_closed_out_by_the_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = test_node(dir.path(), Duration::from_secs(1)).await;
    let calls = node.calls().clone();
    let other = admit(&calls, Direction::UserInitiated).await;
    let id = admit(&calls, Direction::UserInitiated).await;
    let supervisor = calls.registry().get(&id).expect("live");
    // Killed from outside: post_stop does not run, children die with it.
    supervisor.kill();
    wait_until("the root to close the call", Duration::from_secs(5), || {
        calls.active() == 1
    })
    .await;
    assert!(
        calls.snapshot(&other).await.is_some(),
        "other call unaffected"
    );
    wait_until("ports released", Duration::from_secs(5), || {
        calls.ports().in_use() == 2
    })
    .await;
    flush(&calls).await;
    let cdr = cdr_of(&node, &id).await;
    assert_eq!(cdr.outcome, CallOutcome::Failed);
    assert!(
        cdr.failure
            .as_deref()
            .is_some_and(|f| f.starts_with("call_supervisor")),
        "{cdr:?}"
    );
    assert!(
        calls
            .hangup(&other, HangupParty::Customer, "normal_clearing")
            .await
    );
    assert!(node.drain_and_stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_cdr_writer_is_restarted_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = test_node(dir.path(), Duration::from_secs(1)).await;
    let calls = node.calls().clone();
    let writer = root(&calls)
        .call(RootMsg::CdrWriter, Some(Duration::from_secs(5)))
        .await
        .expect("root answers")
        .unwrap()
        .expect("writer");
    writer.send_message(CdrWriterMsg::Crash).expect("send");
    // Calls end while the writer is down.
    for _ in 0..25 {
        let id = admit(&calls, Direction::UserInitiated).await;
        assert!(calls.hangup(&id, HangupParty::Business, "api_hangup").await);
    }
    let restarted = || async {
        let r = root(&calls)
            .call(RootMsg::Restarts, Some(Duration::from_secs(5)))
            .await
            .expect("root")
            .unwrap();
        r.iter()
            .find(|(s, _)| *s == Service::CdrWriter)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while restarted().await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writer not restarted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flush(&calls).await;
    let n = node
        .store()
        .count(&CdrFilter::default())
        .await
        .expect("count");
    assert_eq!(n, 25);
    assert!(node.drain_and_stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_new_calls_then_hangs_up_after_grace_and_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = test_node(dir.path(), Duration::from_millis(300)).await;
    let calls = node.calls().clone();
    let store = node.store().clone();
    let http = node.http_addr();
    let id = admit(&calls, Direction::UserInitiated).await;
    answer(&calls, &id, LegRole::Business).await;

    let ready = || async {
        reqwest::get(format!("http://{http}/ready"))
            .await
            .expect("http")
            .status()
            .as_u16()
    };
    assert_eq!(ready().await, 200);
    let stopping = tokio::spawn(node.drain_and_stop());
    wait_until("drain to start", Duration::from_secs(5), || {
        calls.is_draining()
    })
    .await;
    assert_eq!(ready().await, 503);
    assert_eq!(
        calls
            .start(
                offer(Direction::UserInitiated),
                CallPlan::Signalled(Direction::UserInitiated)
            )
            .await,
        Err(CallRefused::Draining)
    );
    let report = stopping.await.expect("drain task");
    assert_eq!(report.hung_up, 1);
    assert!(report.clean());
    assert_eq!(calls.active(), 0);
    // The store was closed by the node; reopen it to read what was flushed.
    let reopened = crate::store::Store::open(&crate::config::StoreConfig {
        url: StoreUrl::Sqlite(sqlite_path(dir.path())),
        max_connections: 1,
        cdr_batch_size: 10,
        cdr_flush_interval: Duration::from_millis(10),
    })
    .await
    .expect("reopen");
    drop(store);
    let cdr = reopened
        .get(id.as_str())
        .await
        .expect("query")
        .expect("cdr flushed at stop");
    assert_eq!(cdr.end_cause, "shutdown");
    assert_eq!(cdr.hangup_by, HangupParty::Switch);
    assert_eq!(cdr.outcome, CallOutcome::Answered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_free_media_ports_are_refused_up_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = test_node_with(dir.path(), Duration::from_millis(50), |config| {
        config.media.port_min = 30000;
        config.media.port_max = 30004; // two port pairs: one call
    })
    .await;
    let calls = node.calls().clone();
    let first = calls
        .start(
            offer(Direction::UserInitiated),
            CallPlan::Signalled(Direction::UserInitiated),
        )
        .await;
    assert!(first.is_ok());
    // No free port pair: refused up front, before any actor or CDR exists.
    let second = calls
        .start(
            offer(Direction::UserInitiated),
            CallPlan::Signalled(Direction::UserInitiated),
        )
        .await;
    assert_eq!(second, Err(CallRefused::Overloaded));
    assert_eq!(calls.active(), 1);
    assert_eq!(calls.ports().in_use(), 2);
    // Pairs leased by something else count too.
    let first = calls.ids().into_iter().next().expect("call");
    assert!(
        calls
            .hangup(&first, HangupParty::Business, "api_hangup")
            .await
    );
    wait_until("ports back", Duration::from_secs(5), || {
        calls.ports().in_use() == 0
    })
    .await;
    let held = calls.ports().lease().expect("a pair");
    assert_eq!(
        calls
            .start(
                offer(Direction::UserInitiated),
                CallPlan::Signalled(Direction::UserInitiated)
            )
            .await,
        Err(CallRefused::Overloaded)
    );
    drop(held);
    admit(&calls, Direction::UserInitiated).await;
    flush(&calls).await;
    // Refused attempts leave no CDR; the answered-then-hung-up call has one.
    let all = node
        .store()
        .list(&CdrFilter::default())
        .await
        .expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].end_cause, "api_hangup");

    assert!(node.drain_and_stop().await.clean());
}

/// Collects everything a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn every_call_event_is_logged_inside_a_span_carrying_the_call_id() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // One thread: every actor task runs where the subscriber is installed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let id = rt.block_on(async {
        let node = test_node(dir.path(), Duration::from_millis(50)).await;
        let calls = node.calls().clone();
        let id = admit(&calls, Direction::UserInitiated).await;
        answer(&calls, &id, LegRole::Business).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while calls
            .snapshot(&id)
            .await
            .and_then(|s| s.answered_at)
            .is_none()
        {
            assert!(tokio::time::Instant::now() < deadline, "call not answered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            calls
                .hangup(&id, HangupParty::Customer, "normal_clearing")
                .await
        );
        assert!(node.drain_and_stop().await.clean());
        id
    });
    let text = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8");
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    let in_call: Vec<_> = events
        .iter()
        .filter(|e| {
            e["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["call_id"] == id.as_str()))
        })
        .map(|e| {
            e["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for expected in ["call started", "leg changed", "call answered", "call ended"] {
        assert!(
            in_call.iter().any(|m| m == expected),
            "{expected:?} not logged in the call's span; call events: {in_call:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_above_the_node_limit_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = test_node_with(dir.path(), Duration::from_millis(50), |c| {
        c.limits.max_calls = 3
    })
    .await;
    let calls = node.calls().clone();
    for _ in 0..3 {
        admit(&calls, Direction::UserInitiated).await;
    }
    assert_eq!(
        calls
            .start(
                offer(Direction::UserInitiated),
                CallPlan::Signalled(Direction::UserInitiated)
            )
            .await,
        Err(CallRefused::Overloaded)
    );
    let first = calls.ids().into_iter().next().expect("a call");
    assert!(
        calls
            .hangup(&first, HangupParty::Business, "api_hangup")
            .await
    );
    admit(&calls, Direction::BusinessInitiated).await;
    assert!(node.drain_and_stop().await.clean());
}

/// Power of `freq` Hz in `samples` at 8 kHz (Goertzel).
fn tone_power(samples: &[f64], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s = x + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_torn_down_by_a_panic_leaves_a_complete_stereo_recording() {
    use crate::media::g711;
    use crate::media::rtp::write_packet;
    use crate::media::types::{Remote, Side};
    use std::net::{SocketAddr, UdpSocket};

    let dir = tempfile::tempdir().expect("tempdir");
    let rec_dir = dir.path().join("recordings");
    let node = test_node_with(dir.path(), Duration::from_secs(1), |c| {
        c.recording.default = crate::config::RecordPolicy::All;
        c.recording.format = crate::media::record::Format::Wav;
        c.recording.dir = rec_dir.clone();
        c.media.port_min = 27_000;
        c.media.port_max = 27_999;
    })
    .await;
    let calls = node.calls().clone();
    let id = admit(&calls, Direction::UserInitiated).await;
    let anchor = calls.anchor_media(&id).await.expect("anchored");
    // Answered: the policy ("all") starts the recording (its file is there as `.part`).
    answer(&calls, &id, LegRole::Business).await;
    wait_until("the recording to start", Duration::from_secs(5), || {
        std::fs::read_dir(&rec_dir).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().extension().is_some_and(|x| x == "part"))
        })
    })
    .await;
    let (a, b) = (
        UdpSocket::bind("127.0.0.1:0").expect("bind"),
        UdpSocket::bind("127.0.0.1:0").expect("bind"),
    );
    for (side, socket) in [(Side::A, &a), (Side::B, &b)] {
        let remote = Remote {
            addr: Some(socket.local_addr().expect("addr")),
            rtcp_mux: false,
            clock: 8000,
            dtmf_pt: None,
            dtmf_clock: 8000,
            sends: true,
            codec_pt: Some(0),
            codec: None,
        };
        assert!(calls.media_remote(&id, side, remote));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // One second of 440 Hz from A and 1000 Hz from B, 20 ms packets, PCMU.
    let to = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let tone = |freq: f64, n: u32| -> Vec<u8> {
        (0..160)
            .map(|k| {
                let t = f64::from(n * 160 + k) / 8000.0;
                g711::ulaw_encode(((2.0 * std::f64::consts::PI * freq * t).sin() * 8000.0) as i16)
            })
            .collect()
    };
    let start = tokio::time::Instant::now();
    for n in 0..50u32 {
        let mut p = [0u8; 172];
        for (socket, port, freq) in [(&a, anchor.ports[0], 440.0), (&b, anchor.ports[1], 1000.0)] {
            let len =
                write_packet(&mut p, false, 0, n as u16, n * 160, 1, &tone(freq, n)).expect("fits");
            socket.send_to(&p[..len], to(port)).expect("send");
        }
        tokio::time::sleep_until(start + Duration::from_millis(20) * (n + 1)).await;
    }
    // A leg panics: the call is torn down, and the recording is finalised all the same.
    let supervisor = calls.registry().get(&id).expect("live call");
    supervisor
        .send_message(CallMsg::Fault {
            child: ChildRole::Leg(LegRole::WhatsApp),
            fault: Fault::Panic,
        })
        .expect("supervisor takes messages");
    let cdr = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(cdr)) = node.store().get(id.as_str()).await {
                break cdr;
            }
            assert!(tokio::time::Instant::now() < deadline, "no CDR");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let recording = cdr.recording.expect("the CDR names the recording");
    let wav = std::path::PathBuf::from(&recording.file);
    assert_eq!(wav.parent(), Some(rec_dir.as_path()));
    assert!(recording.id.starts_with(id.as_str()), "{recording:?}");
    assert!(!rec_dir.join(format!("{}.wav.part", recording.id)).exists());
    let (_, sha) = crate::call::recordings::digest(&wav).expect("recording");
    assert_eq!(sha, recording.sha256, "the CDR's digest is the file's");
    let bytes = std::fs::read(&wav).expect("recording");
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..16], b"WAVEfmt ");
    assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2, "stereo");
    assert_eq!(
        u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]),
        8000
    );
    let data_len = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]) as usize;
    assert_eq!(data_len, bytes.len() - 44);
    let frames: Vec<(f64, f64)> = bytes[44..]
        .chunks_exact(4)
        .map(|c| {
            (
                f64::from(i16::from_le_bytes([c[0], c[1]])),
                f64::from(i16::from_le_bytes([c[2], c[3]])),
            )
        })
        .collect();
    // One second of media, give or take the two sides' first packets arriving apart.
    let seconds = frames.len() as f64 / 8000.0;
    assert!((0.98..=1.06).contains(&seconds), "{seconds} s");
    let left: Vec<f64> = frames.iter().map(|f| f.0).collect();
    let right: Vec<f64> = frames.iter().map(|f| f.1).collect();
    assert!(
        tone_power(&left, 440.0) > 100.0 * tone_power(&left, 1000.0),
        "side A (440 Hz) on the left"
    );
    assert!(
        tone_power(&right, 1000.0) > 100.0 * tone_power(&right, 440.0),
        "side B (1000 Hz) on the right"
    );
    flush(&calls).await;
    assert_eq!(cdr_of(&node, &id).await.outcome, CallOutcome::Failed);
    node.drain_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_and_digits_reach_a_side_through_the_call() {
    use crate::media::dtmf::EventPayload;
    use crate::media::prompt::Prompt;
    use crate::media::rtp::RtpView;
    use crate::media::types::{Remote, Side};
    use std::net::UdpSocket;

    let dir = tempfile::tempdir().expect("tempdir");
    let node = test_node_with(dir.path(), Duration::from_secs(1), |c| {
        c.media.port_min = 27_100;
        c.media.port_max = 27_199;
    })
    .await;
    let calls = node.calls().clone();
    let id = admit(&calls, Direction::UserInitiated).await;
    calls.anchor_media(&id).await.expect("anchored");
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    a.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    for side in [Side::A, Side::B] {
        let remote = Remote {
            addr: Some(a.local_addr().expect("addr")),
            rtcp_mux: false,
            clock: 8000,
            dtmf_pt: Some(101),
            dtmf_clock: 8000,
            codec_pt: Some(8),
            codec: None,
            sends: true,
        };
        assert!(calls.media_remote(&id, side, remote));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(calls.play_prompt(&id, Side::A, Prompt::from_samples(vec![1000; 800]), false));
    let a2 = a.try_clone().expect("clone");
    let prompt = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 2048];
        (0..5)
            .map(|_| {
                let n = a2.recv(&mut buf).expect("prompt packet");
                RtpView::parse(&buf[..n]).expect("RTP").payload_type()
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("receiver");
    assert_eq!(prompt, [8; 5], "the prompt in side A's codec (PCMA)");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(calls.send_dtmf(&id, Side::A, '9', Duration::from_millis(100)));
    let digit = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 2048];
        loop {
            let n = a.recv(&mut buf).expect("telephone-event");
            let v = RtpView::parse(&buf[..n]).expect("RTP");
            if v.payload_type() == 101 {
                return EventPayload::parse(v.payload()).expect("event").event;
            }
        }
    })
    .await
    .expect("receiver");
    assert_eq!(digit, 9);
    assert!(calls.hangup(&id, HangupParty::Switch, "test").await);
    node.drain_and_stop().await;
}

/// Calls admitted together cannot count the same free ports: each call's two port pairs are
/// leased at admission, so with room for five calls exactly five of twenty simultaneous
/// calls are admitted and the others refused up front (overloaded, `media_ports`), none
/// failing halfway through its setup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_are_leased_at_admission_and_calls_beyond_them_are_refused_up_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = test_node_with(dir.path(), Duration::from_secs(1), |c| {
        // Ten port pairs: room for five calls.
        c.media.port_min = 54_200;
        c.media.port_max = 54_219;
    })
    .await;
    let calls = node.calls().clone();
    let refused_before = telemetry::metric_sum(telemetry::CALLS_REFUSED_TOTAL, "media_ports");
    // Each start on a task of its own, all at once.
    let starts: Vec<_> = (0..20)
        .map(|_| {
            let calls = calls.clone();
            tokio::spawn(async move {
                calls
                    .start(
                        offer(Direction::UserInitiated),
                        CallPlan::Signalled(Direction::UserInitiated),
                    )
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for s in starts {
        results.push(s.await.expect("start task"));
    }
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(CallRefused::Overloaded)))
        .count();
    assert_eq!((admitted, refused), (5, 15), "{results:?}");
    assert_eq!(calls.active(), 5);
    assert_eq!(calls.ports().in_use(), 10);
    assert_eq!(
        telemetry::metric_sum(telemetry::CALLS_REFUSED_TOTAL, "media_ports") - refused_before,
        15.0
    );
    node.drain_and_stop().await;
}
