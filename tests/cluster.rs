//! Permissions across the nodes of a cluster, against a real PostgreSQL server: three
//! permission services (three nodes' worth: each its own connection pool, cache and node
//! id) share one database, and act on the same pairs at the same moment. Whatever node an
//! attempt lands on, a grant's budget, the daily call limit, the request limits and a
//! reply's once-only hold; a do-not-call entry added on one node reaches another node's
//! calls; the audit trail stays one intact chain.
//!
//! PostgreSQL comes from `WASWITCH_TEST_PG_URL` (see `common::pg`).

mod common;

use std::time::Duration;

use common::pg::PgSchema;
use serde_json::Map;
use waswitch::permission::service::{Pair, PermissionError, Permissions};
use waswitch::permission::state::{Actor, AttemptOutcome, Blocked, Event, Rules, DAY_MS};
use waswitch::store::audit::{AuditRepository, Verified};
use waswitch::store::Store;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Three nodes' permission services on one schema.
async fn nodes(schema: &PgSchema, rules: &Rules) -> (Vec<Permissions>, Store) {
    let mut out = Vec::new();
    let mut first = None;
    for n in 1..=3 {
        let store = schema.open().await;
        first.get_or_insert_with(|| store.clone());
        out.push(
            Permissions::load(store, rules.clone(), &format!("node-{n}"))
                .await
                .expect("load"),
        );
    }
    (out, first.expect("a store"))
}

fn pair(wa_id: &str) -> Pair {
    Pair::new("15551112222", wa_id)
}

async fn grant(node: &Permissions, pair: &Pair, permanent: bool) {
    node.record(
        pair,
        Actor::Customer,
        Event::Granted {
            permanent,
            expires_at: (!permanent).then(|| now_ms() + DAY_MS / 2),
        },
        Map::new(),
    )
    .await
    .expect("grant");
}

/// `n` attempts at once, spread over the nodes in turn: how many were reserved, and the
/// reasons of the others.
async fn attempts(nodes: &[Permissions], pair: &Pair, n: usize) -> (usize, Vec<Blocked>) {
    let tries = (0..n).map(|i| {
        let node = nodes[i % nodes.len()].clone();
        let pair = pair.clone();
        async move {
            node.reserve_call(&pair, &format!("call-{i}"), Ok(()))
                .await
                .map(|r| (node, r))
        }
    });
    let mut reserved = 0;
    let mut blocked = Vec::new();
    for result in futures::future::join_all(tries).await {
        match result {
            Ok((node, r)) => {
                reserved += 1;
                node.finish_call(r, Some(AttemptOutcome::Connected), Map::new())
                    .await
                    .expect("finish");
            }
            Err(PermissionError::Blocked(b)) => blocked.push(b),
            Err(e) => panic!("attempt failed: {e}"),
        }
    }
    (reserved, blocked)
}

/// A one-call grant given on node 1 is known on nodes 2 and 3 at once; 30 attempts at the
/// same moment over the three nodes reserve it exactly once. A daily limit of 5 with 20
/// attempts over the nodes allows exactly 5. The chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_s_budget_and_the_daily_limit_hold_across_three_nodes() {
    let schema = PgSchema::create().await;
    let strict = Rules::strict();
    let (n, store) = nodes(&schema, &strict).await;
    let once = pair("4915100000001");
    grant(&n[0], &once, false).await;
    for node in &n[1..] {
        let view = node.view(&once).await;
        assert_eq!(
            view.status,
            waswitch::permission::Status::Granted,
            "{view:?}"
        );
    }
    let (reserved, blocked) = attempts(&n, &once, 30).await;
    assert_eq!(reserved, 1, "{blocked:?}");
    assert!(blocked.iter().all(|b| *b == Blocked::Used), "{blocked:?}");
    for node in &n {
        assert_eq!(node.view(&once).await.calls_used, 1);
    }

    // A permanent grant, at most 5 connected calls a day.
    let daily = Rules {
        connected_calls_per_day: 5,
        permanent_calls_per_day: None,
        ..Rules::meta()
    };
    let schema2 = PgSchema::create().await;
    let (n2, store2) = nodes(&schema2, &daily).await;
    let five = pair("4915100000002");
    grant(&n2[1], &five, true).await;
    let (reserved, blocked) = attempts(&n2, &five, 20).await;
    assert_eq!(reserved, 5, "{blocked:?}");
    assert!(
        blocked.iter().all(|b| *b == Blocked::CallLimit),
        "{blocked:?}"
    );
    for s in [&store, &store2] {
        assert!(
            matches!(s.verify_audit().await.expect("verify"), Verified::Intact(_)),
            "the chain broke"
        );
    }
    schema.drop().await;
    schema2.drop().await;
}

/// One permission request a day, asked for on three nodes at once: one is sent. A reply
/// delivered to all three nodes at once is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_limits_and_replies_hold_across_three_nodes() {
    let schema = PgSchema::create().await;
    let (n, store) = nodes(&schema, &Rules::meta()).await;
    let p = pair("4915100000003");
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let asks = n.iter().map(|node| {
        let (node, p, sent) = (node.clone(), p.clone(), sent.clone());
        async move {
            node.request(&p, "your order", None, Ok(()), || async move {
                let k = sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(format!("wamid.request.{k}"))
            })
            .await
        }
    });
    let results = futures::future::join_all(asks).await;
    assert_eq!(
        sent.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let replies = n.iter().map(|node| {
        let (node, p) = (node.clone(), p.clone());
        async move {
            node.reply(
                &p,
                "wamid.reply.1",
                &[Event::Granted {
                    permanent: true,
                    expires_at: None,
                }],
                Actor::Customer,
                Some(now_ms() / 1000),
                Map::new(),
            )
            .await
            .expect("reply")
        }
    });
    let applied = futures::future::join_all(replies).await;
    assert_eq!(
        applied.iter().filter(|a| **a).count(),
        1,
        "applied on {applied:?}"
    );
    let grants = store
        .audit_records(&waswitch::store::audit::AuditFilter {
            wa_id: Some(p.wa_id.clone()),
            ..Default::default()
        })
        .await
        .expect("records")
        .into_iter()
        .filter(|r| r.entry.kind == "granted")
        .count();
    assert_eq!(grants, 1);
    schema.drop().await;
}

/// A do-not-call entry added on node 1 is announced to node 2, which holds a call on the
/// pair, within a second; node 3 refuses the next attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_do_not_call_entry_on_one_node_cuts_off_a_call_held_on_another() {
    let schema = PgSchema::create().await;
    let (n, _store) = nodes(&schema, &Rules::meta()).await;
    let _listeners: Vec<_> = n
        .iter()
        .filter_map(|p| p.spawn_cluster_listener())
        .collect();
    let p = pair("4915100000004");
    grant(&n[0], &p, true).await;
    let held = n[1]
        .reserve_call(&p, "ringing-1", Ok(()))
        .await
        .expect("held");
    let mut cutoffs = n[1].cutoffs();
    let added = std::time::Instant::now();
    n[0].record(
        &p,
        Actor::Business,
        Event::DncAdded {
            reason: "asked by phone".into(),
        },
        Map::new(),
    )
    .await
    .expect("dnc");
    let heard = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match cutoffs.recv().await {
                Ok((pair, reason)) if pair == p => return reason,
                Ok(_) => continue,
                Err(e) => panic!("cut-offs: {e}"),
            }
        }
    })
    .await
    .expect("node 2 heard of the entry within 1 s");
    assert_eq!(heard, Blocked::DoNotCall);
    eprintln!("cut-off heard on another node after {:?}", added.elapsed());
    assert_eq!(n[1].cut_off(&p).await, Some(Blocked::DoNotCall));
    match n[2].reserve_call(&p, "next", Ok(())).await {
        Err(PermissionError::Blocked(Blocked::DoNotCall)) => {}
        other => panic!("{:?}", other.map(|r| r.call_id)),
    }
    n[1].finish_call(held, Some(AttemptOutcome::Failed), Map::new())
        .await
        .expect("finish");
    schema.drop().await;
}

/// What one node does in the interleaving property.
#[derive(Debug, Clone)]
enum Op {
    /// A call attempt, ended (if reserved) as this outcome.
    Attempt(AttemptOutcome),
    Grant,
    DncAdded,
    DncRemoved,
    Revoked,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => prop_oneof![
            Just(AttemptOutcome::Connected),
            Just(AttemptOutcome::Unanswered),
            Just(AttemptOutcome::Failed),
        ]
        .prop_map(Op::Attempt),
        2 => Just(Op::Grant),
        1 => Just(Op::DncAdded),
        1 => Just(Op::DncRemoved),
        1 => Just(Op::Revoked),
    ]
}

async fn run(node: Permissions, pair: Pair, op: Op, id: String) {
    let record = |event: Event, actor: Actor| {
        let (node, pair) = (node.clone(), pair.clone());
        async move {
            node.record(&pair, actor, event, Map::new())
                .await
                .expect("record");
        }
    };
    match op {
        Op::Attempt(outcome) => {
            if let Ok(r) = node.reserve_call(&pair, &id, Ok(())).await {
                node.finish_call(r, Some(outcome), Map::new())
                    .await
                    .expect("finish");
            }
        }
        Op::Grant => {
            record(
                Event::Granted {
                    permanent: false,
                    expires_at: Some(now_ms() + DAY_MS / 2),
                },
                Actor::Customer,
            )
            .await
        }
        Op::DncAdded => {
            record(
                Event::DncAdded {
                    reason: "property".into(),
                },
                Actor::Business,
            )
            .await
        }
        Op::DncRemoved => record(Event::DncRemoved, Actor::Business).await,
        Op::Revoked => record(Event::Revoked, Actor::Customer).await,
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Random interleavings of attempts, grants, revocations and do-not-call changes
    /// over three nodes, in batches that run at the same moment: the trail, read in order,
    /// never shows a reservation that the state before it forbade (a one-call grant used
    /// once, nothing on the do-not-call list or after a revocation), and every node ends
    /// with the state the trail gives.
    #[test]
    fn interleavings_over_three_nodes_agree_with_the_trail_read_in_order(
        batches in proptest::collection::vec(
            proptest::collection::vec((0usize..3, op()), 1..6),
            1..6,
        )
    ) {
        let rt = common::runtime();
        rt.block_on(async {
            let rules = Rules::strict();
            let schema = PgSchema::create().await;
            let (n, store) = nodes(&schema, &rules).await;
            let p = pair("4915100000005");
            let mut k = 0;
            for batch in &batches {
                let runs = batch.iter().map(|(node, op)| {
                    k += 1;
                    run(n[*node].clone(), p.clone(), op.clone(), format!("call-{k}"))
                });
                futures::future::join_all(runs).await;
            }
            let records = store
                .audit_records(&waswitch::store::audit::AuditFilter {
                    wa_id: Some(p.wa_id.clone()),
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .expect("records");
            let mut reference = waswitch::permission::PairState::new();
            for r in &records {
                let Ok(event) = serde_json::from_str::<Event>(&r.entry.detail) else {
                    continue;
                };
                if matches!(event, Event::CallReserved { .. }) {
                    assert_eq!(
                        reference.check_call(&rules, r.entry.at),
                        Ok(()),
                        "record {} reserved a call the trail forbade: {batches:?}",
                        r.seq
                    );
                }
                reference.apply(&rules, r.entry.at, &event);
            }
            for node in &n {
                let view = node.view(&p).await;
                assert_eq!(view.status, reference.status, "{view:?} {batches:?}");
                assert_eq!(view.dnc, reference.dnc, "{view:?}");
                assert_eq!(view.calls_in_progress, 0, "{view:?}");
                assert_eq!(
                    view.calls_used,
                    reference.grant.as_ref().map_or(0, |g| g.calls_used),
                    "{view:?}"
                );
            }
            assert!(matches!(
                store.verify_audit().await.expect("verify"),
                Verified::Intact(_)
            ));
            schema.drop().await;
        });
    }
}

// ---- whole nodes ----------------------------------------------------------------------

/// The sim as Meta for the cluster's business number, and where its Graph API listens.
async fn meta() -> (waswitch::sim::graph::SimGraph, std::net::SocketAddr) {
    let graph = waswitch::sim::graph::SimGraph::new(
        waswitch::config::Secret::new("tok"),
        vec![PNID.to_string()],
    );
    let sim = graph.serve_loopback().await.expect("sim");
    (graph, sim)
}

/// Asks `customer` for call permission through `via`'s API (the sim's users grant it), and
/// waits until every node of `nodes` knows of the grant.
async fn granted(
    http: &reqwest::Client,
    via: &waswitch::node::Node,
    nodes: &[&waswitch::node::Node],
    customer: &str,
) {
    let asked = common::api(
        http,
        format!(
            "http://{}/v1/permissions/{NUMBER}/{customer}/request",
            via.http_addr()
        ),
        TOKEN,
        reqwest::Method::POST,
        Some(serde_json::json!({"purpose": "your order"})),
    )
    .await;
    assert_eq!(asked.0, 201, "{asked:?}");
    for node in nodes {
        let mut known = false;
        for _ in 0..100 {
            if node.permissions().view(&pair(customer)).await.status
                == waswitch::permission::Status::Granted
            {
                known = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(known, "{customer}'s grant is not known on every node");
    }
}

/// Sim users who grant permission for good and answer a call after 200 ms, holding it
/// `hold`.
fn answering(hold: Duration) -> waswitch::sim::users::Behaviour {
    use waswitch::sim::users::{Behaviour, CallAnswer, PermissionAnswer};
    Behaviour {
        call: CallAnswer::Accept {
            after: Duration::from_millis(200),
            hold,
        },
        permission: PermissionAnswer::Grant { lasts: None },
        dtmf: None,
    }
}

/// The nodes' logs in a failed test's output (`RUST_LOG`).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

const SECRET: &str = "cluster-meta-secret";
const PNID: &str = "105615555715855";
const NUMBER: &str = "15551112222";
const TOKEN: &str = "cluster-operator-token";

/// Node `name` of a cluster on `schema`, its media on ports from `media_ports`, Meta being
/// the sim at `sim`.
async fn start_node(
    schema: &PgSchema,
    name: &str,
    media_ports: u16,
    sim: std::net::SocketAddr,
    dir: &std::path::Path,
) -> waswitch::node::Node {
    start_node_with(schema, name, media_ports, sim, dir, "").await
}

/// [`start_node`] with `extra` configuration.
async fn start_node_with(
    schema: &PgSchema,
    name: &str,
    media_ports: u16,
    sim: std::net::SocketAddr,
    dir: &std::path::Path,
    extra: &str,
) -> waswitch::node::Node {
    let toml = node_toml(media_ports, sim, extra);
    let mut config =
        waswitch::config::Config::loopback(&toml, &dir.join(format!("{name}.db"))).expect("config");
    config.store.url = waswitch::config::StoreUrl::Postgres(schema.url());
    config.node_id = name.to_string();
    waswitch::node::Node::start(config).await.expect("node")
}

/// A node's configuration: the cluster's business number driven by app `demo`, Meta the
/// sim at `sim`, media on ports from `media_ports`, with `extra` first.
fn node_toml(media_ports: u16, sim: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"{extra}
[http]
api_token = "{TOKEN}"
[media]
ip = "127.0.0.1"
shards = 1
port_min = {media_ports}
port_max = {port_max}
[meta]
graph_url = "http://{sim}"
access_token = "tok"
app_secret = "{SECRET}"
verify_token = "vt"
[[business_number]]
phone_number_id = "{PNID}"
display_number = "{NUMBER}"
country = "BR"
app = "demo"
[[app]]
name = "demo"
url = "http://127.0.0.1:9/"
secret = "cluster-app-secret-01"
timeout_ms = 500
fallback_message = "Sorry."
event_attempts = 1
"#,
        port_max = media_ports + 98,
    )
}

/// Node `name` as a process of its own (to be stopped or killed), on `schema`, Meta being
/// the sim at `sim`, with `extra` configuration: the process and its HTTP address, once
/// it is ready.
async fn node_process(
    schema: &PgSchema,
    name: &str,
    media_ports: u16,
    sim: std::net::SocketAddr,
    dir: &std::path::Path,
    extra: &str,
) -> (std::process::Child, std::net::SocketAddr) {
    let http_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, node_toml(media_ports, sim, extra)).expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_waswitch"))
        .args(["run", "--config", &config.to_string_lossy()])
        .env("WASWITCH_NODE_ID", name)
        .env("WASWITCH_HTTP_LISTEN", http_addr.to_string())
        .env(
            "WASWITCH_SIP_LISTEN",
            format!("127.0.0.1:{}", common::free_udp_port()),
        )
        .env("WASWITCH_STORE_URL", schema.url())
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node process");
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("http://{http_addr}/ready")).send().await {
            if r.status() == 200 {
                return (child, http_addr);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("node {name} did not become ready");
}

/// A call from the cluster's number to WhatsApp user `customer`, placed through the API of
/// the node at `node`, that pauses `ms` milliseconds once answered: its call id.
async fn place_call(
    http: &reqwest::Client,
    node: std::net::SocketAddr,
    customer: &str,
    ms: u64,
) -> String {
    let placed = common::api(
        http,
        format!("http://{node}/v1/calls"),
        TOKEN,
        reqwest::Method::POST,
        Some(
            serde_json::json!({"from": NUMBER, "to": {"whatsapp": customer},
                                "verbs": [{"pause": {"ms": ms}}]}),
        ),
    )
    .await;
    assert_eq!(placed.0, 201, "{placed:?}");
    placed.1["call_id"].as_str().expect("id").to_string()
}

async fn place(
    http: &reqwest::Client,
    node: &waswitch::node::Node,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    common::api(
        http,
        format!("http://{}/v1/calls", node.http_addr()),
        TOKEN,
        reqwest::Method::POST,
        Some(body),
    )
    .await
}

/// Meta sends every webhook to node A (one URL, as behind a load balancer); the calls are
/// placed on node B. Meta's `connect` (the customer's answer) and status webhooks reach B's
/// call through A, which forwards them; so does the customer's hang-up (`terminate`). A
/// do-not-call entry added through A's API cancels a call ringing on B within a second.
#[test]
fn webhooks_for_a_call_on_one_node_reach_it_through_another() {
    use waswitch::sim::users::{Behaviour, CallAnswer, PermissionAnswer, Users};
    logs();
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let schema = PgSchema::create().await;
        let (graph, sim) = meta().await;
        let a = start_node(&schema, "node-a", 61_000, sim, dir.path()).await;
        let b = start_node(&schema, "node-b", 61_200, sim, dir.path()).await;
        let ctx = common::sim_context(&graph, a.http_addr(), SECRET, PNID, NUMBER);
        let talk = Behaviour {
            call: CallAnswer::Accept {
                after: Duration::from_millis(300),
                hold: Duration::from_secs(2),
            },
            permission: PermissionAnswer::Grant { lasts: None },
            dtmf: None,
        };
        let (users, mut answered) = Users::start(ctx, talk);
        let http = reqwest::Client::new();
        let (talker, ringing) = ("4915100000011", "4915100000012");
        // The grant, recorded on A (Meta's reply reached A), is B's to use at once.
        for customer in [talker, ringing] {
            granted(&http, &a, &[&b], customer).await;
        }
        // The customer answers on B's call, talks 2 s and hangs up: their answer, its
        // status and their hang-up all came to A.
        let placed = place(
            &http,
            &b,
            serde_json::json!({"from": NUMBER, "to": {"whatsapp": talker},
                               "verbs": [{"pause": {"ms": 20000}}]}),
        )
        .await;
        assert_eq!(placed.0, 201, "{placed:?}");
        let call_id = placed.1["call_id"].as_str().expect("id").to_string();
        let call = tokio::time::timeout(Duration::from_secs(15), answered.recv())
            .await
            .expect("the call ended in time")
            .expect("a call");
        assert_eq!(call.user, talker);
        let media = call.media.expect("media");
        assert!(media.connected, "{media:?}");

        // A call left ringing on B is cancelled by a do-not-call entry added on A.
        users.set_behaviour(Behaviour {
            call: CallAnswer::Ignore {
                ring: Duration::from_secs(20),
            },
            permission: PermissionAnswer::Grant { lasts: None },
            dtmf: None,
        });
        let placed2 = place(
            &http,
            &b,
            serde_json::json!({"from": NUMBER, "to": {"whatsapp": ringing},
                               "verbs": [{"hangup": {}}]}),
        )
        .await;
        assert_eq!(placed2.0, 201, "{placed2:?}");
        let ringing_id = placed2.1["call_id"].as_str().expect("id").to_string();
        // Ringing: Meta was asked to place it.
        for _ in 0..100 {
            if graph
                .recorded()
                .iter()
                .any(|r| r.action.as_deref() == Some("connect") && r.body["to"] == ringing)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let terminates = || {
            graph
                .recorded()
                .iter()
                .filter(|r| r.action.as_deref() == Some("terminate"))
                .count()
        };
        let before = terminates();
        let added = std::time::Instant::now();
        let dnc = common::api(
            &http,
            format!("http://{}/v1/dnc/{NUMBER}/{ringing}", a.http_addr()),
            TOKEN,
            reqwest::Method::PUT,
            Some(serde_json::json!({"reason": "asked by phone"})),
        )
        .await;
        assert!(dnc.0 == 200 || dnc.0 == 201, "{dnc:?}");
        let mut cancelled = None;
        while added.elapsed() < Duration::from_secs(3) {
            if terminates() > before {
                cancelled = Some(added.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cancelled = cancelled.expect("B's ringing call was terminated");
        eprintln!("a call ringing on node B was cancelled {cancelled:?} after the entry on node A");
        assert!(cancelled < Duration::from_secs(1), "{cancelled:?}");

        let report_b = b.drain_and_stop().await;
        let _ = a.drain_and_stop().await;
        let _ = report_b;
        let store = schema.open().await;
        let cdrs =
            waswitch::store::CdrRepository::list(&store, &waswitch::store::CdrFilter::default())
                .await
                .expect("cdrs");
        let talked = cdrs.iter().find(|c| c.call_id == call_id).expect("B's CDR");
        assert_eq!(talked.node_id, "node-b");
        assert_eq!(
            talked.outcome,
            waswitch::store::CallOutcome::Answered,
            "{talked:?}"
        );
        assert_eq!(
            talked.hangup_by,
            waswitch::store::HangupParty::Customer,
            "{talked:?}"
        );
        let rang = cdrs.iter().find(|c| c.call_id == ringing_id).expect("CDR");
        assert_eq!(rang.end_cause, "do_not_call", "{rang:?}");
        schema.drop().await;
    });
}

/// 30 business-initiated INVITEs at the same moment, ten through each of three nodes, for
/// a customer whose grant allows one call: the customer is called once (one Graph
/// `connect`), answers, and hears the PBX; the 29 others are refused with the reason.
#[test]
fn thirty_invites_over_three_nodes_for_a_one_call_grant_connect_once() {
    use waswitch::sim::users::{Behaviour, CallAnswer, PermissionAnswer, Users};
    logs();
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let schema = PgSchema::create().await;
        let (graph, sim) = meta().await;
        let extra = "[permissions]\nprofile = \"strict\"\n\
                     [[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5999\"\n\
                     accept_from = [\"127.0.0.1/32\"]\nbusiness_calls = true\n\
                     options_interval_secs = 0\n";
        let mut nodes = Vec::new();
        for (i, name) in ["node-1", "node-2", "node-3"].iter().enumerate() {
            let ports = 61_400 + 200 * u16::try_from(i).expect("few");
            nodes.push(start_node_with(&schema, name, ports, sim, dir.path(), extra).await);
        }
        let ctx = common::sim_context(&graph, nodes[0].http_addr(), SECRET, PNID, NUMBER);
        let (_users, mut answered) = Users::start(
            ctx,
            Behaviour {
                call: CallAnswer::Accept {
                    after: Duration::from_millis(200),
                    hold: Duration::from_secs(2),
                },
                permission: PermissionAnswer::Grant {
                    lasts: Some(Duration::from_secs(3600)),
                },
                dtmf: None,
            },
        );
        let customer = "4915100000021";
        let http = reqwest::Client::new();
        granted(
            &http,
            &nodes[1],
            &nodes.iter().collect::<Vec<_>>(),
            customer,
        )
        .await;
        let dials = nodes.iter().map(|node| {
            let target = node.sip_udp_addr().expect("SIP over UDP");
            tokio::task::spawn_blocking(move || {
                common::run_sipp_with(
                    "bic_uac_either.xml",
                    "u1",
                    target,
                    10,
                    100,
                    &["-key", "biz", NUMBER, "-s", customer, "-rtp_echo"],
                )
            })
        });
        let results = futures::future::join_all(dials).await;
        for result in results {
            let (code, counters, log) = result.expect("sipp");
            common::assert_all_succeeded(code, &counters, &log, 10);
        }
        let call = tokio::time::timeout(Duration::from_secs(10), answered.recv())
            .await
            .expect("the customer was called")
            .expect("a call");
        assert!(call.media.is_some_and(|m| m.connected));
        let connects = graph
            .recorded()
            .iter()
            .filter(|r| r.action.as_deref() == Some("connect"))
            .count();
        assert_eq!(connects, 1, "the customer was called {connects} times");
        // Settled once the node that had the call has written its CDR.
        for node in &nodes {
            let mut view = node.permissions().view(&pair(customer)).await;
            for _ in 0..100 {
                if view.calls_in_progress == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                view = node.permissions().view(&pair(customer)).await;
            }
            assert_eq!(
                (view.calls_used, view.calls_in_progress),
                (1, 0),
                "{view:?}"
            );
        }
        for node in nodes {
            node.drain_and_stop().await;
        }
        let store = schema.open().await;
        assert!(matches!(
            store.verify_audit().await.expect("verify"),
            Verified::Intact(_)
        ));
        let blocked = store
            .audit_records(&waswitch::store::audit::AuditFilter {
                wa_id: Some(customer.to_string()),
                limit: 10_000,
                ..Default::default()
            })
            .await
            .expect("records")
            .into_iter()
            .filter(|r| r.entry.kind == "call_blocked")
            .count();
        assert_eq!(blocked, 29);
        schema.drop().await;
    });
}

/// A node killed with `-9` mid-call: a survivor notices within 5 s (3 s without its
/// heartbeat), writes the lost call's CDR with cause `node_lost` (its media went with the
/// node), and settles the permission the call held (answered: counted as used). The trail
/// still verifies. The CDR webhook, refusing while B lived, gets from the survivor both the
/// CDR B had not delivered and the lost call's, once each.
#[test]
fn a_node_killed_mid_call_is_closed_out_by_a_survivor() {
    use waswitch::sim::users::Users;
    logs();
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let schema = PgSchema::create().await;
        let (graph, sim) = meta().await;
        let (hook_url, hooked, gate) = common::webhook_gate().await;
        let hook = format!(
            "[cdr_webhook]\nurl = \"{hook_url}\"\nsecret = \"cdr-secret\"\ntimeout_ms = 1000\nmax_attempts = 20\n"
        );
        let a = start_node_with(&schema, "node-a", 62_000, sim, dir.path(), &hook).await;
        // Node B is a process of its own, to be killed.
        let (mut b, http_b) = node_process(&schema, "node-b", 62_200, sim, dir.path(), &hook).await;
        let http = reqwest::Client::new();
        let ctx = common::sim_context(&graph, a.http_addr(), SECRET, PNID, NUMBER);
        let (_users, _answered) = Users::start(ctx, answering(Duration::from_secs(30)));
        let customer = "4915100000031";
        granted(&http, &a, &[&a], customer).await;
        // A short call on B first: its CDR waits in B's outbox (the webhook refuses).
        let short = "4915100000032";
        granted(&http, &a, &[&a], short).await;
        let short_id = place_call(&http, http_b, short, 100).await;
        let store = schema.open().await;
        let mut waiting = false;
        for _ in 0..200 {
            if store.webhook_backlog(Some("node-b")).await.expect("backlog") == 1 {
                waiting = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(waiting, "the short call's CDR is not in B's outbox");
        let call_id = place_call(&http, http_b, customer, 30000).await;
        // Answered on B (the user picks up after 200 ms; the answer reaches B through A).
        let mut answered = false;
        for _ in 0..100 {
            let view = a.permissions().view(&pair(customer)).await;
            if view.calls_in_progress == 1 {
                let store = schema.open().await;
                let kinds: Vec<String> = store
                    .audit_records(&waswitch::store::audit::AuditFilter {
                        wa_id: Some(customer.to_string()),
                        ..Default::default()
                    })
                    .await
                    .expect("records")
                    .into_iter()
                    .map(|r| r.entry.kind)
                    .collect();
                if kinds.iter().any(|k| k == "call_connected") {
                    answered = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(answered, "the call was not answered on B");
        b.kill().expect("kill -9");
        let killed = std::time::Instant::now();
        let _ = b.wait();
        gate.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut closed = None;
        while killed.elapsed() < Duration::from_secs(10) {
            let cdrs = waswitch::store::CdrRepository::list(
                &store,
                &waswitch::store::CdrFilter::default(),
            )
            .await
            .expect("cdrs");
            if let Some(cdr) = cdrs.into_iter().find(|c| c.call_id == call_id) {
                closed = Some((killed.elapsed(), cdr));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (after, cdr) = closed.expect("the lost call's CDR was written");
        eprintln!("node B killed; its call closed out by node A after {after:?}");
        assert!(after < Duration::from_secs(5), "{after:?}");
        assert_eq!(cdr.end_cause, "node_lost", "{cdr:?}");
        assert_eq!(cdr.node_id, "node-b");
        assert!(cdr.answered_at.is_some(), "{cdr:?}");
        assert_eq!(cdr.customer_wa_id.as_deref(), Some(customer));
        // The call's hold on the permission is settled right after: answered, so used.
        let mut view = a.permissions().view(&pair(customer)).await;
        for _ in 0..50 {
            if view.calls_in_progress == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            view = a.permissions().view(&pair(customer)).await;
        }
        assert_eq!(view.calls_in_progress, 0, "{view:?}");
        let finished = store
            .audit_records(&waswitch::store::audit::AuditFilter {
                wa_id: Some(customer.to_string()),
                ..Default::default()
            })
            .await
            .expect("records")
            .into_iter()
            .rfind(|r| r.entry.kind == "call_finished")
            .expect("call_finished");
        let detail: serde_json::Value = serde_json::from_str(&finished.entry.detail).expect("json");
        assert_eq!(detail["outcome"], "connected", "{detail}");
        assert_eq!(detail["node_lost"], "node-b", "{detail}");
        assert_eq!(detail["settled_by"], "node-a", "{detail}");
        assert!(matches!(
            store.verify_audit().await.expect("verify"),
            Verified::Intact(_)
        ));
        // The webhook gets both CDRs from A, once each.
        let mut ids = Vec::new();
        for _ in 0..100 {
            ids = hooked
                .lock()
                .expect("sink")
                .iter()
                .map(|(_, _, body)| {
                    serde_json::from_slice::<waswitch::store::Cdr>(body)
                        .expect("a CDR")
                        .call_id
                })
                .collect::<Vec<_>>();
            if ids.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ids.sort();
        let mut expected = vec![short_id.clone(), call_id.clone()];
        expected.sort();
        assert_eq!(ids, expected, "the webhook got each CDR once");
        assert_eq!(store.webhook_backlog(None).await.expect("backlog"), 0);
        a.drain_and_stop().await;
        assert_eq!(hooked.lock().expect("sink").len(), 2, "nothing sent twice");
        schema.drop().await;
    });
}

/// A node that stalls (SIGSTOP) for longer than a heartbeat allows is taken for lost: a
/// survivor closes its call out (CDR `node_lost`, permission settled). When the node runs
/// again it finds out at its next heartbeat, hangs the call up (nobody else counts it any
/// more) and joins the cluster again; the call keeps its one CDR.
#[test]
fn a_node_taken_for_lost_while_it_ran_hangs_up_its_calls_and_joins_again() {
    use waswitch::sim::users::Users;
    logs();
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let schema = PgSchema::create().await;
        let (graph, sim) = meta().await;
        let a = start_node(&schema, "node-a", 62_800, sim, dir.path()).await;
        let (mut b, http_b) = node_process(&schema, "node-b", 61_800, sim, dir.path(), "").await;
        let ctx = common::sim_context(&graph, a.http_addr(), SECRET, PNID, NUMBER);
        let (_users, _answered) = Users::start(ctx, answering(Duration::from_secs(60)));
        let http = reqwest::Client::new();
        let customer = "4915100000051";
        granted(&http, &a, &[&a], customer).await;
        let call_id = place_call(&http, http_b, customer, 60000).await;
        let active = |addr: std::net::SocketAddr, name: &'static str| async move {
            common::metrics_text(addr)
                .await
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        let mut up = false;
        for _ in 0..100 {
            if a.permissions()
                .view(&pair(customer))
                .await
                .calls_in_progress
                == 1
                && active(http_b, "waswitch_calls_active").await == 1.0
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "the call did not start on B");
        // B stalls; A takes it for lost and closes its call out.
        let pid = b.id().to_string();
        let signal = |sig: &str| {
            let ok = std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .expect("kill")
                .success();
            assert!(ok, "kill {sig}");
        };
        signal("-STOP");
        let store = schema.open().await;
        let mut closed = None;
        for _ in 0..100 {
            if let Ok(Some(cdr)) = waswitch::store::CdrRepository::get(&store, &call_id).await {
                closed = Some(cdr);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cdr = closed.expect("the stalled node's call was closed out");
        assert_eq!(cdr.end_cause, "node_lost", "{cdr:?}");
        // B runs again: at its next heartbeat it hangs its call up and joins again.
        signal("-CONT");
        let mut fenced = false;
        for _ in 0..100 {
            if active(http_b, "waswitch_cluster_fenced_total").await == 1.0
                && active(http_b, "waswitch_calls_active").await == 0.0
            {
                fenced = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            fenced,
            "B did not hang up the call it was taken for lost with"
        );
        let mut joined = false;
        for _ in 0..50 {
            if store
                .node_heard("node-b", waswitch::clock::now_ms() - 3_000)
                .await
                .expect("nodes")
                .is_some()
            {
                joined = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(joined, "B did not join the cluster again");
        // Still one CDR, the survivor's; the permission holds nothing.
        let again = waswitch::store::CdrRepository::get(&store, &call_id)
            .await
            .expect("cdr")
            .expect("cdr");
        assert_eq!(again, cdr);
        assert_eq!(
            a.permissions()
                .view(&pair(customer))
                .await
                .calls_in_progress,
            0
        );
        assert!(matches!(
            store.verify_audit().await.expect("verify"),
            Verified::Intact(_)
        ));
        let _ = b.kill();
        let _ = b.wait();
        a.drain_and_stop().await;
        schema.drop().await;
    });
}

/// Kamailio (ops/kamailio/waswitch.cfg) in front of two nodes: a PBX's calls through it are
/// spread over both nodes, each dialog's ACK and BYE staying on its node (record-routing);
/// once a node drains and stops, every call goes to the other, none failing.
#[test]
fn kamailio_spreads_calls_over_the_nodes_and_leaves_a_stopped_one_out() {
    use waswitch::sim::users::Users;
    logs();
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let schema = PgSchema::create().await;
        let (graph, sim) = meta().await;
        let extra = "[shutdown]\ngrace_secs = 5\n\
                     [[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5999\"\n\
                     accept_from = [\"127.0.0.1/32\"]\nbusiness_calls = true\n\
                     options_interval_secs = 0\n";
        let a = start_node_with(&schema, "node-a", 62_400, sim, dir.path(), extra).await;
        let b = start_node_with(&schema, "node-b", 62_600, sim, dir.path(), extra).await;
        // Meta's webhooks go to B, which stays.
        let ctx = common::sim_context(&graph, b.http_addr(), SECRET, PNID, NUMBER);
        let (_users, _answered) = Users::start(ctx, answering(Duration::from_millis(800)));
        let customer = "4915100000041";
        let http = reqwest::Client::new();
        granted(&http, &b, &[&a, &b], customer).await;
        let list = dir.path().join("waswitch.list");
        std::fs::write(
            &list,
            format!(
                "1 sip:{}\n1 sip:{}\n",
                a.sip_udp_addr().expect("SIP"),
                b.sip_udp_addr().expect("SIP")
            ),
        )
        .expect("list");
        let proxy = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_udp_port()));
        let run = dir.path().join("kamailio");
        std::fs::create_dir_all(&run).expect("run dir");
        let _kamailio = Kamailio(
            std::process::Command::new("kamailio")
                .args(["-f"])
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/ops/kamailio/waswitch.cfg"
                ))
                .args(["-DD", "-E", "-Y"])
                .arg(&run)
                .arg("-w")
                .arg(&run)
                .arg("-A")
                .arg(format!("LISTEN=udp:{proxy}"))
                .arg("-A")
                .arg(format!("DISPATCHER_LIST=\"{}\"", list.display()))
                .args(["-A", "CHILDREN=2", "-m", "64", "-M", "8"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("kamailio (Debian package kamailio)"),
        );
        // Both nodes probed up.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let dial = |calls: u32| {
            tokio::task::spawn_blocking(move || {
                common::run_sipp_with(
                    "bic_uac_proxied.xml",
                    "u1",
                    proxy,
                    calls,
                    4,
                    // One call at a time: Meta refuses a second call to a user in a call.
                    &[
                        "-key",
                        "biz",
                        NUMBER,
                        "-s",
                        customer,
                        "-rtp_echo",
                        "-l",
                        "1",
                    ],
                )
            })
        };
        let store = schema.open().await;
        let nodes_of_calls = || async {
            let cdrs = waswitch::store::CdrRepository::list(
                &store,
                &waswitch::store::CdrFilter::default(),
            )
            .await
            .expect("cdrs");
            cdrs.into_iter()
                .map(|c| (c.node_id, c.outcome))
                .collect::<Vec<_>>()
        };
        let (code, counters, log) = dial(6).await.expect("sipp");
        common::assert_all_succeeded(code, &counters, &log, 6);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let first = nodes_of_calls().await;
        assert_eq!(first.len(), 6, "{first:?}");
        for node in ["node-a", "node-b"] {
            assert!(
                first
                    .iter()
                    .any(|(n, o)| n == node && *o == waswitch::store::CallOutcome::Answered),
                "no call answered on {node}: {first:?}"
            );
        }
        // A drains and stops; the proxy leaves it out, and no call fails.
        a.drain_and_stop().await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (code, counters, log) = dial(6).await.expect("sipp");
        common::assert_all_succeeded(code, &counters, &log, 6);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let all = nodes_of_calls().await;
        let on_b = all.iter().filter(|(n, _)| n == "node-b").count();
        let on_a = all.iter().filter(|(n, _)| n == "node-a").count();
        assert_eq!(on_a + on_b, 12, "{all:?}");
        assert_eq!(
            on_a,
            first.iter().filter(|(n, _)| n == "node-a").count(),
            "{all:?}"
        );
        assert!(
            all.iter()
                .all(|(_, o)| *o == waswitch::store::CallOutcome::Answered),
            "{all:?}"
        );
        b.drain_and_stop().await;
        schema.drop().await;
    });
}

/// Kamailio in the foreground (`-DD`), stopped with SIGTERM (which stops its workers too)
/// when the test ends, however it ends.
struct Kamailio(std::process::Child);

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Two nodes of one id would take each other's calls for their own: the second refuses to
/// start, and says why.
#[test]
fn a_second_node_with_the_same_id_refuses_to_start() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let schema = PgSchema::create().await;
        let (_graph, sim) = meta().await;
        let first = start_node(&schema, "node-a", 62_800, sim, dir.path()).await;
        let toml = node_toml(62_900, sim, "");
        let mut config =
            waswitch::config::Config::loopback(&toml, &dir.path().join("twin.db")).expect("config");
        config.store.url = waswitch::config::StoreUrl::Postgres(schema.url());
        config.node_id = "node-a".into();
        let refused = match waswitch::node::Node::start(config).await {
            Ok(_) => panic!("a second node-a started"),
            Err(e) => e.to_string(),
        };
        assert!(
            refused.contains("node id \"node-a\" is in use by the node at http://"),
            "{refused}"
        );
        first.drain_and_stop().await;
        schema.drop().await;
    });
}
